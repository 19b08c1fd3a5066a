"""Unguided samples of the prior beside real validation slices: is it a prior of brains?

    python experiments/prior_samples.py --checkpoint=WORKDIR --outdir=experiments/results/prior \
        --steps=250 --num=8

Draws `--num` samples from the unconditional prior (the paper's ancestral sampler, no
measurement, `--steps` reverse steps) and shows them in one row above a row of `--num` real
slices (one per subject of the validation sets, cycling, `pick_slices`). Writes
prior_<steps>.png and prior_<steps>.json (statistics a brain slice has: the fraction of pixels
above 0.05, the mean intensity inside that region, and the left-right correlation of each image
with its mirror, for the samples and for the real slices).
"""

from __future__ import annotations

import pathlib

import jax
import numpy as np

import _common
from vdm_mri import figures, sampling

HEAD_THRESHOLD = 0.05


def image_stats(images: np.ndarray) -> dict:
  """Mean over images of: head fraction (> HEAD_THRESHOLD), mean head intensity, left-right
  Pearson correlation with the mirror image."""
  head = images > HEAD_THRESHOLD
  frac = head.mean(axis=(1, 2))
  inten = np.array([im[h].mean() if h.any() else 0.0 for im, h in zip(images, head)])
  sym = []
  for im in images:
    a, b = im.ravel() - im.mean(), im[:, ::-1].ravel() - im.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    sym.append(float((a * b).sum() / den) if den > 0 else 0.0)
  return {"head_fraction": float(frac.mean()), "head_intensity": float(inten.mean()),
          "lr_symmetry": float(np.mean(sym))}


def main(argv=None):
  p = _common.parser(__doc__.splitlines()[0], steps=250, quick_steps=4)
  p.add_argument("--num", type=int, default=8, help="samples (and real slices) shown")
  args = p.parse_args(argv)
  if args.num < 1:
    p.error("--num must be at least 1")
  with _common.exit_on_bad_input():
    vdm_model, params = _common.load_model(args)
    sets = _common.load_sets(args)
  steps = _common.num_steps(args)
  real = []
  for _, images, subjects in sets.values():
    real += list(images[_common.pick_slices(subjects, 1)])
  real = np.stack([real[i % len(real)] for i in range(args.num)])
  samples = sampling.prior_samples(vdm_model, params, key=jax.random.key(args.seed),
                                   num=args.num, num_steps=steps, batch_size=args.batch_size)
  outdir = pathlib.Path(args.outdir)
  png = figures.save_png(figures.grid({f"prior, {steps} steps": samples, "validation": real}),
                         outdir / f"prior_{steps}.png")
  print(f"wrote {png}")
  report = {"checkpoint": _common.display_path(_common.workdir.resolve(args.checkpoint)),
            "steps": steps, "num": args.num, "seed": args.seed,
            "samples": image_stats(samples), "validation": image_stats(real)}
  for k in ("samples", "validation"):
    print(f"{k:>10}: " + ", ".join(f"{n} {v:.3f}" for n, v in report[k].items()))
  _common.write_json(outdir / f"prior_{steps}.json", report)
  return report


if __name__ == "__main__":
  main()
