"""Ship a params dir as the package's prior: verify it, set its sampling defaults, re-export.

    python experiments/export_prior.py --src=runs/cpu_prior/best \
        --dst=vdm_mri/pretrained/brain128_cpu --steps=10 --num_samples=4 \
        --sampler=projection --eta=0.85 --t_start=0.6 --antithetic

The source (a work dir's best/, `vdm_mri.pretrained` format) is verified (SHA-256) and its
parameters checked against its config; the copy gets the given `config.sampling` fields (steps,
num_samples, sampler, eta, t_start, antithetic: the defaults `python -m vdm_mri.sample` uses) and a new
manifest that keeps the source's step, images seen and selection metrics, plus `--note`;
`--metrics_from=recipes.json` (experiments/recipe_eval.py's output for the source) stores that
run's scores (sr/…, den/…) as the selection metrics instead. Bad input: one line, exit 2.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from vdm_mri import api, pretrained, sampling
from vdm_mri import model as model_lib


def read_metrics(path) -> dict:
  """The scores (sr/…, den/…) of the one run in a recipe_eval recipes.json."""
  runs = json.loads(pathlib.Path(path).read_text())["runs"]
  if len(runs) != 1:
    raise ValueError(f"--metrics_from {path}: {len(runs)} runs, expected one")
  return {k: v for k, v in runs[0].items() if k.startswith(("sr/", "den/"))}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--src", required=True, help="params dir (e.g. WORKDIR/best)")
  p.add_argument("--dst", default=str(pretrained.DEFAULT))
  p.add_argument("--steps", type=int, default=None, help="default reverse steps")
  p.add_argument("--num_samples", type=int, default=None, help="default posterior samples K")
  p.add_argument("--sampler", default=None, choices=sampling.SAMPLERS, help="default sampler")
  p.add_argument("--eta", type=float, default=None, help="default η (projection sampler)")
  p.add_argument("--t_start", type=float, default=None, help="default warm start t₀ (1: none)")
  p.add_argument("--antithetic", action=argparse.BooleanOptionalAction, default=None,
                 help="default pairing: K/2 antithetic pairs (or --no-antithetic: independent)")
  p.add_argument("--note", default="", help="free text stored in the manifest")
  p.add_argument("--metrics_from", default=None, help="recipe_eval's recipes.json with one run: "
                 "its scores become the manifest's metrics")
  args = p.parse_args(argv)
  try:
    manifest = pretrained.verify(args.src)
    config = pretrained.load_config(args.src)
    params = pretrained.load_params(args.src, model_lib.from_config(config))
  except pretrained.PretrainedError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  fields = ("steps", "num_samples", "sampler", "eta", "t_start", "antithetic")
  try:
    opts = api.SamplingOptions.from_config(config.sampling,
                                           **{name: getattr(args, name) for name in fields})
    metrics = read_metrics(args.metrics_from) if args.metrics_from else None
  except (api.InputError, OSError, ValueError, KeyError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  for name in fields:
    config.sampling[name] = getattr(opts, name)
  # A state dir's data position belongs to the training run, not to the shipped prior.
  info = {k: v for k, v in manifest.items()
          if k not in ("format", "files", "data_seed", "data_state")}
  if args.note:
    info["note"] = args.note
  if metrics is not None:
    info["metrics"] = metrics
  dst = pretrained.export(pathlib.Path(args.dst), params, config, **info)
  pretrained.verify(dst)
  print(f"wrote {dst}: step {info.get('step')}, sampling {dict(config.sampling)}")
  return dst


if __name__ == "__main__":
  main()
