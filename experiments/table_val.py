"""Results table on the validation subjects: baselines vs the guided VDM, per low-res size and noise.

For each low-res size (64x64, 48x48, 32x32) and σ_y (0 and a noisy level): PSNR / SSIM / NMSE per
volume averaged over subjects, for zero-fill, bilinear, bicubic, one VDM sample and the mean of K
samples; the data-consistency residual; the mean posterior std. Slices: `--per_subject` slices
spread over the middle 60 % of each subject (fixed, see _common.pick_slices). One row per validation
set (`set` column), low-res size, σ_y and method; every set uses the same keys.

    python experiments/table_val.py --checkpoint=WORKDIR --outdir=experiments/results/table
"""

from __future__ import annotations

import pathlib

import jax

import _common
from vdm_mri import sampling


def main(argv=None):
  p = _common.parser(__doc__.splitlines()[0])
  p.add_argument("--sizes", default="64x64,48x48,32x32")
  p.add_argument("--noise", default="0,0.02", help="σ_y values (intensity units, k-space)")
  p.add_argument("--per_subject", type=int, default=8)
  _common.add_sampling_flags(p)
  args = p.parse_args(argv)
  with _common.exit_on_bad_input():
    vdm_model, params = _common.load_model(args)
    sets = _common.load_sets(args)
  per_subject, max_subjects = (1, 2) if args.quick else (args.per_subject, None)
  opts = _common.sampling_kwargs(args)
  rows, subsets = [], {}
  for set_name, (path, images, subjects) in sets.items():
    idx = _common.pick_slices(subjects, per_subject, max_subjects)
    x, subj = images[idx], subjects[idx]
    subsets[set_name] = {"data": str(path), "subjects": sorted(set(subj.tolist())),
                         "num_slices": len(idx), "slices": idx.tolist()}
    for size in args.sizes.split(","):
      for sigma_y in (float(v) for v in args.noise.split(",")):
        rows += _rows(args, vdm_model, params, x, subj, size, sigma_y, set_name, opts)
  outdir = pathlib.Path(args.outdir)
  _common.write_csv(outdir / "table_val.csv", rows)
  _common.write_json(outdir / "table_val.json", {
      "steps": opts["num_steps"], **opts,
      "slices_per_subject": per_subject, "sets": subsets, "rows": rows})
  return rows


def _rows(args, vdm_model, params, x, subj, size, sigma_y, set_name, opts) -> list[dict]:
  """The table rows of one set, low-res size and σ_y: baselines, one VDM sample, the K-mean."""
  y0 = _common.measure(x, _common.parse_size(size), sigma_y, jax.random.key(args.seed))
  post = sampling.posterior_samples(
      vdm_model, params, y0, key=jax.random.key(args.seed + 1), final_projection=True,
      batch_size=args.batch_size, **opts)
  methods = {**_common.baseline_images(y0, x.shape[1:]), "vdm_sample": post.samples[:, 0],
             f"vdm_mean_k{opts['num_samples']}": post.mean}
  rows = []
  for method, pred in methods.items():
    s = _common.scores(x, pred, subj, y0)
    rows.append({"set": set_name, "lowres": size, "sigma_y": sigma_y, "method": method,
                 **{k: round(v, 5) for k, v in s.items()},
                 "posterior_std": round(float(post.std.mean()), 5)
                 if method.startswith("vdm") else ""})
    print(f"{set_name:>16} {size:>6} σ_y={sigma_y:<5g} {method:>12}: PSNR {s['psnr']:.2f}  "
          f"SSIM {s['ssim']:.4f}  NMSE {s['nmse']:.4f}  residual {s['residual']:.2e}")
  return rows


if __name__ == "__main__":
  main()
