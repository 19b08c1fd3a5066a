"""Figures 2 and 3 of the paper: LR | zero-fill | bilinear | guided VDM | ground truth, per set.

Writes superres_<h>x<w>_<set>.png for every validation set and superres_<h>x<w>.json with the
metrics of every set under "sets". Every set uses the same keys (its results do not depend on
the other sets listed). The paper's sampler unless --sampler says otherwise; steps and K are
the checkpoint's defaults.
"""

from __future__ import annotations

import pathlib

import jax

import _common
from vdm_mri import figures, sampling


def main(lowres_text: str, description: str, argv=None):
  p = _common.parser(description, sampler="paper")  # the paper's figures: its sampler
  p.add_argument("--lowres", default=lowres_text, help="low-resolution matrix, e.g. 32x32")
  p.add_argument("--per_subject", type=int, default=1, help="slices per validation subject")
  _common.add_sampling_flags(p)
  args = p.parse_args(argv)
  with _common.exit_on_bad_input():
    vdm_model, params = _common.load_model(args)
    sets = _common.load_sets(args)
  lowres = _common.parse_size(args.lowres)
  opts = _common.sampling_kwargs(args)
  k = opts["num_samples"]
  outdir = pathlib.Path(args.outdir)
  name = f"superres_{lowres[0]}x{lowres[1]}"
  report = {"lowres": args.lowres, "steps": opts["num_steps"], **opts, "sets": {}}
  for set_name, (path, images, subjects) in sets.items():
    idx = _common.pick_slices(subjects, args.per_subject, max_subjects=2 if args.quick else None)
    x, subj = images[idx], subjects[idx]
    full = x.shape[1:]
    y0 = _common.measure(x, lowres, 0.0, jax.random.key(args.seed))
    post = sampling.posterior_samples(
        vdm_model, params, y0, key=jax.random.key(args.seed + 1), final_projection=True,
        batch_size=args.batch_size, **opts)
    base = _common.baseline_images(y0, full)
    rows = {f"LR {args.lowres}": _common.lowres_display(y0, full), "zero-fill": base["zero-fill"],
            "bilinear": base["bilinear"], f"VDM (K={k})": post.mean, "truth": x}
    png = figures.save_png(figures.grid(rows), outdir / f"{name}_{set_name}.png")
    print(f"wrote {png}")
    report["sets"][set_name] = {
        "data": str(path), "slices": idx.tolist(), "subjects": sorted(set(subj.tolist())),
        "methods": {k: _common.scores(x, v, subj, y0) for k, v in
                    {**base, "vdm_mean": post.mean, "vdm_sample": post.samples[:, 0]}.items()},
        "mean_posterior_std": float(post.std.mean())}
    for method, s in report["sets"][set_name]["methods"].items():
      print(f"{set_name:>16} {method:>10}: PSNR {s['psnr']:.2f} dB  SSIM {s['ssim']:.4f}  "
            f"NMSE {s['nmse']:.4f}  residual {s['residual']:.2e}")
  _common.write_json(outdir / f"{name}.json", report)
  return report
