"""Samplers and estimators of the posterior mean at equal cost: network evaluations per slice
(steps × K) against PSNR / SSIM of the mean and the calibration of the posterior std.

Every setting is `sampler:steps:K[:eta[:t_start]][:anti]` (sampler `paper` or `projection`; eta
only used by `projection`; t_start < 1 is a warm start from the noised zero-filled image; `anti`:
K/2 antithetic pairs instead of K independent samples), run on the
fixed slice subset of every validation set (`--per_subject` slices per subject,
_common.pick_slices) at every `--sizes` low-res matrix, noise-free:

    python experiments/sampler_compare.py --outdir=experiments/results/samplers

`--append` adds the settings to the comparison already in --outdir (same checkpoint and slices;
a setting run again replaces its rows). Writes samplers.csv (set, lowres, setting, sampler,
steps, k, eta, t_start, antithetic, nfe, psnr, ssim, psnr_gain, ssim_gain, coverage, corr; coverage =
P(|mean - gt| ≤ 2·std) and corr = r(std, |mean - gt|) over head pixels, blank for K = 1),
samplers.json (with the settings and subsets),
samplers.png (PSNR gain over zero-filling against network evaluations, one panel per set and
size, one line per sampler family) and samplers.md (the table of the results document: per
setting the PSNR / SSIM gain in every case, their mean and the mean ±2σ coverage, by cost).
"""

from __future__ import annotations

import json
import pathlib
import time

import jax
import numpy as np

import _common
import _plot
import curves
from vdm_mri import figures, sampling

DEFAULT_SETTINGS = (
    # the paper's sampler from noise: today's default (10 × 16) and cheaper splits
    "paper:10:16", "paper:10:8", "paper:5:16", "paper:10:4", "paper:5:8", "paper:20:2",
    "paper:10:2", "paper:5:4", "paper:10:1", "paper:5:2",
    # the paper's sampler, warm-started
    "paper:10:4:0.85:0.6", "paper:5:8:0.85:0.6", "paper:5:4:0.85:0.6", "paper:5:2:0.85:0.6",
    # x̂₀-projection, DDIM re-noising
    "projection:10:4:0.85:0.6", "projection:10:4:0.85:1", "projection:5:8:0.85:0.6",
    "projection:10:4:1:0.6", "projection:10:8:0.85:0.6", "projection:10:2:0.85:0.6",
    "projection:5:4:1:0.6", "projection:20:8:0.85:1",
    # antithetic pairs
    "projection:20:2:0.85:1:anti", "projection:10:2:0.85:1:anti", "projection:20:4:0.85:1:anti",
    "paper:10:2:0.85:1:anti",
)


def parse_setting(text: str, batch_size: int) -> _common.api.SamplingOptions:
  """A setting `sampler:steps:K[:eta[:t_start]][:anti]` (api.SamplingOptions.with_setting), the
  final projection on, `batch_size` images per compiled call."""
  return _common.api.SamplingOptions(batch_size=batch_size).with_setting(text)


def family(setting) -> str:
  """The curve a setting belongs to: its sampler, η (projection), warm start and pairing."""
  warm = f", t0={setting.t_start:g}" if setting.t_start < 1 else ""
  eta = f" eta={setting.eta:g}" if setting.sampler == "projection" else ""
  return f"{setting.sampler}{eta}{warm}{', pairs' if setting.antithetic else ''}"


def run_setting(model, params, x, subj, y0, zf_scores, setting, key):
  post = sampling.posterior_samples(model, params, y0, key=key, **setting.posterior_kwargs())
  got = {k: float(v) for k, v in _common.scores(x, post.mean, subj).items()}
  row = {"setting": setting.setting, "sampler": setting.sampler, "steps": setting.steps,
         "k": setting.num_samples, "eta": setting.eta, "t_start": setting.t_start,
         "antithetic": setting.antithetic, "nfe": setting.nfe,
         "psnr": got["psnr"], "ssim": got["ssim"],
         "psnr_gain": got["psnr"] - zf_scores["psnr"], "ssim_gain": got["ssim"] - zf_scores["ssim"],
         "coverage": "", "corr": ""}
  if setting.num_samples > 1:
    cal = curves.calibration(x, post.mean, post.std)["head"]
    row.update(coverage=cal["coverage"], corr=cal["corr"])
  return row


def figure(rows: list[dict]):
  panels = []
  for case in dict.fromkeys((r["set"], r["lowres"]) for r in rows):
    sel = [r for r in rows if (r["set"], r["lowres"]) == case]
    lines = []
    for fam in dict.fromkeys(r["family"] for r in sel):
      pts = sorted((r["nfe"], r["psnr_gain"]) for r in sel if r["family"] == fam)
      best = {}
      for nfe, gain in pts:  # the best split at each cost
        best[nfe] = max(best.get(nfe, -np.inf), gain)
      lines.append(_plot.Line(fam, list(best), list(best.values()), ref=0.0))
    panels.append(_plot.line_plot(lines, title=f"{case[0]} {case[1]}: best split per cost",
                                  xlabel="network evaluations per slice (steps x K)",
                                  ylabel="PSNR gain over zero-fill (dB)", log_x=True))
  return _plot.hstack(panels)


def table(rows: list[dict]) -> str:
  """Markdown: one row per setting, most expensive first, best mean PSNR gain first."""
  cases = list(dict.fromkeys((r["set"], r["lowres"]) for r in rows))
  by_setting: dict[str, dict] = {}
  for r in rows:
    by_setting.setdefault(r["setting"], {})[(r["set"], r["lowres"])] = r
  lines = ["| setting (sampler:steps:K:η:t₀:pairing) | NFE | " + " | ".join(
      f"{name} {size}" for name, size in cases) + " | mean PSNR gain | coverage (head, mean) |",
           "|" + " --- |" * (len(cases) + 4)]
  entries = []
  for name, got in by_setting.items():
    if set(got) != set(cases):
      continue  # not run on every case
    gains = [got[c]["psnr_gain"] for c in cases]
    coverage = [got[c]["coverage"] for c in cases if got[c]["coverage"] != ""]
    cells = " | ".join(f"{got[c]['psnr_gain']:+.2f} / {got[c]['ssim_gain']:+.3f}" for c in cases)
    entries.append((-got[cases[0]]["nfe"], -np.mean(gains), (
        f"| {name} | {got[cases[0]]['nfe']} | {cells} | {np.mean(gains):+.3f} | "
        + (f"{np.mean(coverage):.2f}" if coverage else "–") + " |")))
  return "\n".join(lines + [line for *_, line in sorted(entries)]) + "\n"


def previous_rows(outdir: pathlib.Path, checkpoint: str, subsets: dict, settings) -> list[dict]:
  """The rows of the comparison in `outdir` that `settings` do not recompute; the checkpoint and
  the slice subsets must be the same."""
  path = outdir / "samplers.json"
  if not path.exists():
    raise _common.api.InputError(f"--append: no {path}")
  old = json.loads(path.read_text())
  if old["checkpoint"] != checkpoint or old["subsets"] != subsets:
    raise _common.api.InputError(f"--append: {path} was run with another checkpoint or slices "
                                   f"({old['checkpoint']})")
  names = {s.setting for s in settings}
  rows = []
  for r in old["rows"]:
    if "antithetic" not in r:  # written before pairs existed: independent samples
      r = {**r, "antithetic": False, "setting": r["setting"] + ":indep"}
    if r["setting"] not in names:
      rows.append(r)
  return rows


def main(argv=None):
  p = _common.parser(__doc__.splitlines()[0], steps=10, quick_steps=2)
  p.add_argument("--sizes", default="64x64,32x32", help="low-res matrices")
  p.add_argument("--settings", default=",".join(DEFAULT_SETTINGS),
                 help="comma-separated sampler:steps:K[:eta[:t_start]][:anti]")
  p.add_argument("--per_subject", type=int, default=1, help="slices per subject")
  p.add_argument("--append", action="store_true",
                 help="add to the comparison in --outdir instead of replacing it")
  args = p.parse_args(argv)
  with _common.exit_on_bad_input():
    settings = [parse_setting(t, args.batch_size) for t in args.settings.split(",") if t.strip()]
    vdm_model, params = _common.load_model(args)
    sets = _common.load_sets(args)
  if args.quick:
    settings = [s.replace(steps=min(s.steps, 2), num_samples=min(s.num_samples, 2))
                for s in settings[:3]]
  outdir = pathlib.Path(args.outdir)
  checkpoint = _common.display_path(_common.workdir.resolve(args.checkpoint))
  picked = {name: _common.pick_slices(subjects, args.per_subject, 2 if args.quick else None)
            for name, (_, _, subjects) in sets.items()}
  subsets = {name: {"data": str(sets[name][0]), "slices": idx.tolist()}
             for name, idx in picked.items()}
  with _common.exit_on_bad_input():
    kept = previous_rows(outdir, checkpoint, subsets, settings) if args.append else []
  rows = []
  for set_name, (path, images, subjects) in sets.items():
    idx = picked[set_name]
    x, subj = images[idx], subjects[idx]
    for size in args.sizes.split(","):
      y0 = _common.measure(x, _common.parse_size(size), 0.0, jax.random.key(args.seed))
      zf = _common.scores(x, _common.baseline_images(y0, x.shape[1:])["zero-fill"], subj)
      for setting in settings:
        start = time.perf_counter()
        row = run_setting(vdm_model, params, x, subj, y0, zf, setting,
                          jax.random.key(args.seed + 1))
        row.update(set=set_name, lowres=size, family=family(setting),
                   seconds=time.perf_counter() - start, zf_psnr=zf["psnr"], zf_ssim=zf["ssim"])
        rows.append(row)
        print(f"{set_name:>16} {size:>6} {setting.setting:>26} nfe {setting.nfe:>4}: "
              f"{row['psnr']:.2f} dB ({row['psnr_gain']:+.2f}), SSIM {row['ssim']:.4f} "
              f"({row['ssim_gain']:+.4f}), coverage {row['coverage'] or '-'}", flush=True)
  order = ["set", "lowres", "family"]
  rows = kept + [{**{k: r[k] for k in order}, **{k: v for k, v in r.items() if k not in order}}
                 for r in rows]
  _common.write_csv(outdir / "samplers.csv", rows)
  _common.write_json(outdir / "samplers.json", {
      "settings": list(dict.fromkeys(r["setting"] for r in rows)),
      "per_subject": args.per_subject, "checkpoint": checkpoint, "subsets": subsets,
      "rows": rows})
  _common.write_text(outdir / "samplers.md", table(rows))
  print(f"wrote {figures.save_png(figure(rows), outdir / 'samplers.png')}")
  return rows


if __name__ == "__main__":
  main()
