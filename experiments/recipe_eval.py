"""Score training recipes by one protocol: held-out denoising error per noise band, guided SR,
and training speed.

    python experiments/recipe_eval.py --outdir=experiments/results/recipes \
        --runs=shipped=runs/cmp/A_shipped,patch=runs/cmp/B_patch

Every run (a training work dir: its latest checkpoint's EMA parameters; or a params dir) is
scored on the same validation slices (`--per_subject` fixed slices per subject of every set,
`validation.pick_slices`): (a) `validation.DenoisingBands` (8 bands over [γ_min, γ_max], one
fixed noise draw per slice and band), (b) `validation.SRValidation` (64→128 and 32→128, `--steps`
reverse steps, K = `--num_samples`, noise-free; the mean PSNR gain over zero-filling is the
score; skipped with --no-sr), (c) images seen and the median training images/s from the run's
metrics.jsonl. Writes recipes.json and recipes.csv (one row per run; the band columns per set).
The generalisation gap of a prior: the bands of training slices beside validation slices,

    python experiments/recipe_eval.py --no-sr --outdir=runs/gap --per_subject=4 \
        --data=../shared/data/brain_t1w_skull_train.npz,../shared/data/brain_t1w_skull_val.npz \
        --runs=best=experiments/results/training/best
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import jax
import numpy as np

import _common
from vdm_mri import api, validation


def training_stats(workdir: pathlib.Path) -> dict:
  """Step, images seen and the median images/s of the run's logged intervals (metrics.jsonl)."""
  path = workdir / "metrics.jsonl"
  if not path.is_file():
    return {}
  rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
  speeds = [r["train/images_per_s"] for r in rows if "train/images_per_s" in r]
  step = max((r["step"] for r in rows), default=0)
  config = json.loads((workdir / "config.json").read_text()) if (
      workdir / "config.json").is_file() else {}
  batch = config.get("training", {}).get("batch_size", 0)
  return {"step": step, "images_seen": step * batch,
          "images_per_s": float(np.median(speeds)) if speeds else float("nan")}


def main(argv=None):
  p = _common.parser(__doc__.splitlines()[0], steps=10, quick_steps=5)
  p.add_argument("--runs", required=True,
                 help="comma-separated NAME=DIR (training work dirs or params dirs)")
  p.add_argument("--per_subject", type=int, default=2)
  p.add_argument("--num_samples", type=int, default=4)
  p.add_argument("--sr", action=argparse.BooleanOptionalAction, default=True,
                 help="score guided SR (--no-sr: the denoising bands only, e.g. of training "
                 "slices against validation slices for the generalisation gap)")
  args = p.parse_args(argv)
  with _common.exit_on_bad_input():
    runs = []
    for part in args.runs.split(","):
      name, sep, path = part.partition("=")
      if not sep or not name or not path:
        raise _common.api.InputError(f"--runs: {part!r} is not NAME=DIR")
      runs.append((name, pathlib.Path(path)))
    sets = _common.load_sets(args)
    picked = {n: (imgs[_common.pick_slices(subj, args.per_subject)],
                  subj[_common.pick_slices(subj, args.per_subject)])
              for n, (_, imgs, subj) in sets.items()}
  outdir = pathlib.Path(args.outdir)
  rows = []
  for name, path in runs:
    args.checkpoint = str(path)
    with _common.exit_on_bad_input():
      model, params = _common.load_model(args)
    start = time.perf_counter()
    bands = validation.DenoisingBands({n: v[0] for n, v in picked.items()},
                                      gamma_min=model.gamma_min, gamma_max=model.gamma_max,
                                      bits=model.bits, key=jax.random.key(args.seed + 1))
    values = bands(model, params)
    if args.sr:
      options = api.SamplingOptions(steps=_common.num_steps(args), num_samples=args.num_samples,
                                    batch_size=8)  # the paper's sampler
      sr = validation.SRValidation(picked, options=options, key=jax.random.key(args.seed))
      values.update(sr(model, params))
    row = {"run": name, "dir": _common.display_path(path), **training_stats(path), **values,
           "seconds": time.perf_counter() - start}
    print(f"{name}: " + (f"SR score {row['sr/score']:+.3f} dB, " if args.sr else "")
          + ", ".join(f"{n} diffusion {row[f'den/{n}/diffusion_bpd']:.3f} bpd" for n in picked))
    rows.append(row)
  meta = {"protocol": {"per_subject": args.per_subject, "sr": args.sr,
                       "steps": _common.num_steps(args) if args.sr else None,
                       "num_samples": args.num_samples if args.sr else None, "seed": args.seed,
                       "bands": bands.band_gammas(),
                       "sets": {n: v[0] for n, v in sets.items()}},
          "runs": rows}
  _common.write_json(outdir / "recipes.json", meta)
  _common.write_csv(outdir / "recipes.csv", rows)


if __name__ == "__main__":
  main()
