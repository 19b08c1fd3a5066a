"""Unguided samples of the prior beside real slices: is it a prior of brains?

    python experiments/prior_samples.py --checkpoint=WORKDIR --outdir=experiments/results/prior \
        --steps=250 --num=16

Draws `--num` samples from the unconditional prior (the paper's ancestral sampler, no
measurement, `--steps` reverse steps) and shows them in one row above a row of `--num` real
slices drawn at random (`--seed`) from all slices of the validation sets, the whole stack of
each subject as the prior learnt it (top of the head and cerebellum included); each row is
sorted by head fraction, so that slices of like level stand one above the other. Writes
prior_<steps>.png and prior_<steps>.json: for the samples and for all validation slices, the
statistics a brain slice has (`image_stats`: the fraction of pixels above 0.05, the mean
intensity inside that region, the left-right correlation with the mirror image; means and
standard deviations over images), and, where training slices are found, the correlation of each
image with its nearest training slice (`nearest_training`): a sample that is no brain scores
far below the validation slices (other subjects), a copy of a training slice scores near 1.
"""

from __future__ import annotations

import pathlib

import jax
import numpy as np

import _common
from vdm_mri import data, figures, sampling

HEAD_THRESHOLD = 0.05
CHUNK = 1024  # training slices per matrix product in `nearest_training`


def image_stats(images: np.ndarray) -> dict:
  """Mean (and standard deviation, `<name>_sd`) over images of: head fraction
  (> HEAD_THRESHOLD), mean head intensity, left-right Pearson correlation with the mirror."""
  images = np.asarray(images, np.float32)
  head = images > HEAD_THRESHOLD
  per_image = {
      "head_fraction": head.mean(axis=(1, 2)),
      "head_intensity": np.array([im[h].mean() if h.any() else 0.0 for im, h in zip(images, head)]),
      "lr_symmetry": np.array([_pearson(im, im[:, ::-1]) for im in images]),
  }
  out = {}
  for name, values in per_image.items():
    out[name] = float(values.mean())
    out[f"{name}_sd"] = float(values.std())
  return out


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
  a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
  den = np.sqrt((a * a).sum() * (b * b).sum())
  return float((a * b).sum() / den) if den > 0 else 0.0


def _unit_rows(images: np.ndarray) -> np.ndarray:
  """[N, H*W] rows with zero mean and unit norm (a constant image: a zero row)."""
  rows = np.asarray(images, np.float32).reshape(len(images), -1)
  rows = rows - rows.mean(axis=1, keepdims=True)
  norm = np.linalg.norm(rows, axis=1, keepdims=True)
  return rows / np.where(norm > 0, norm, 1.0)


def nearest_training(images: np.ndarray, train_images) -> np.ndarray:
  """[N]: each image's largest Pearson correlation with any slice of `train_images` (an
  iterable of [M, H, W] arrays, streamed in chunks of CHUNK slices)."""
  queries = _unit_rows(images)
  best = np.full(len(queries), -1.0, np.float32)
  for block in train_images:
    for start in range(0, len(block), CHUNK):
      corr = _unit_rows(block[start:start + CHUNK]) @ queries.T
      best = np.maximum(best, corr.max(axis=0))
  return best


def training_files(arg: str | None, val_paths) -> list[pathlib.Path]:
  """--train_data (comma-separated; "none": no files), else the `<set>_train.npz` beside each
  `<set>_val.npz` that has one."""
  if arg is not None:
    return [pathlib.Path(p.strip()) for p in arg.split(",") if p.strip() and p.strip() != "none"]
  found = []
  for path in map(pathlib.Path, val_paths):
    if path.stem.endswith("_val"):
      twin = path.with_name(path.stem[:-len("_val")] + "_train.npz")
      if twin.is_file():
        found.append(twin)
  return found


def _read_images(path: pathlib.Path) -> np.ndarray:
  return data.read_npz(path).images.astype(np.float32) / data.QUANT_MAX


def _by_head_fraction(images: np.ndarray) -> np.ndarray:
  return images[np.argsort((images > HEAD_THRESHOLD).mean(axis=(1, 2)), kind="stable")]


def main(argv=None):
  p = _common.parser(__doc__.splitlines()[0], steps=250, quick_steps=4)
  p.add_argument("--num", type=int, default=16, help="samples (and real slices) shown")
  p.add_argument("--train_data", default=None,
                 help="comma-separated training slice .npz files for `nearest_training` "
                 "(default: the <set>_train.npz beside each <set>_val.npz; none: skip it)")
  args = p.parse_args(argv)
  if args.num < 1:
    p.error("--num must be at least 1")
  with _common.exit_on_bad_input():
    vdm_model, params = _common.load_model(args)
    sets = _common.load_sets(args)
    train_paths = training_files(args.train_data, [path for path, _, _ in sets.values()])
    for path in train_paths:
      if not path.is_file():
        raise FileNotFoundError(f"--train_data: no such file {path}")
  steps = _common.num_steps(args)
  pool = np.concatenate([images for _, images, _ in sets.values()])
  rng = np.random.default_rng(args.seed)
  real = pool[rng.choice(len(pool), args.num, replace=args.num > len(pool))]
  samples = sampling.prior_samples(vdm_model, params, key=jax.random.key(args.seed),
                                   num=args.num, num_steps=steps, batch_size=args.batch_size)
  samples = np.asarray(samples, np.float32)
  outdir = pathlib.Path(args.outdir)
  png = figures.save_png(
      figures.grid({f"prior, {steps} steps": _by_head_fraction(samples),
                    "validation": _by_head_fraction(real)}), outdir / f"prior_{steps}.png")
  print(f"wrote {png}")
  report = {"checkpoint": _common.display_path(_common.workdir.resolve(args.checkpoint)),
            "steps": steps, "num": args.num, "seed": args.seed,
            "validation_slices": int(len(pool)),
            "samples": image_stats(samples), "validation": image_stats(pool)}
  if train_paths:
    nearest = nearest_training(np.concatenate([samples, pool]),
                               (_read_images(path) for path in train_paths))
    report["train_data"] = [_common.display_path(path) for path in train_paths]
    for key, values in (("samples", nearest[:len(samples)]), ("validation", nearest[len(samples):])):
      report[key].update(nearest_training=float(values.mean()),
                         nearest_training_sd=float(values.std()),
                         nearest_training_max=float(values.max()))
  else:
    print("nearest_training: no training slices found (--train_data), not computed")
  for k in ("samples", "validation"):
    print(f"{k:>10}: " + ", ".join(f"{n} {v:.3f}" for n, v in report[k].items()
                                   if not n.endswith("_sd")))
  _common.write_json(outdir / f"prior_{steps}.json", report)
  return report


if __name__ == "__main__":
  main()
