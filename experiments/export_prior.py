"""Ship a params dir as the package's prior: verify it, set its sampling defaults, re-export.

    python experiments/export_prior.py --src=runs/cpu_prior/best \
        --dst=vdm_mri/pretrained/brain128_cpu --steps=10 --num_samples=4 \
        --sampler=projection --eta=0.85 --t_start=0.6

The source (a work dir's best/, `vdm_mri.pretrained` format) is verified (SHA-256) and its
parameters checked against its config; the copy gets the given `config.sampling` fields (steps,
num_samples, sampler, eta, t_start: the defaults `python -m vdm_mri.sample` uses) and a new
manifest that keeps the source's step, images seen and selection metrics, plus `--note`.
Bad input: one line, exit 2.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from vdm_mri import pretrained, sampling
from vdm_mri import model as model_lib


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--src", required=True, help="params dir (e.g. WORKDIR/best)")
  p.add_argument("--dst", default=str(pretrained.DEFAULT))
  p.add_argument("--steps", type=int, default=None, help="default reverse steps")
  p.add_argument("--num_samples", type=int, default=None, help="default posterior samples K")
  p.add_argument("--sampler", default=None, choices=sampling.SAMPLERS, help="default sampler")
  p.add_argument("--eta", type=float, default=None, help="default η (projection sampler)")
  p.add_argument("--t_start", type=float, default=None, help="default warm start t₀ (1: none)")
  p.add_argument("--note", default="", help="free text stored in the manifest")
  args = p.parse_args(argv)
  try:
    manifest = pretrained.verify(args.src)
    config = pretrained.load_config(args.src)
    params = pretrained.load_params(args.src, model_lib.from_config(config))
  except pretrained.PretrainedError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  valid = {"steps": lambda v: v >= 1, "num_samples": lambda v: v >= 1,
           "sampler": lambda v: True, "eta": lambda v: 0 <= v <= 1, "t_start": lambda v: 0 < v <= 1}
  for name, ok in valid.items():
    value = getattr(args, name)
    if value is not None:
      if not ok(value):
        print(f"error: --{name}={value} is out of range", file=sys.stderr)
        sys.exit(2)
      config.sampling[name] = value
  # A state dir's data position belongs to the training run, not to the shipped prior.
  info = {k: v for k, v in manifest.items()
          if k not in ("format", "files", "data_seed", "data_state")}
  if args.note:
    info["note"] = args.note
  dst = pretrained.export(pathlib.Path(args.dst), params, config, **info)
  pretrained.verify(dst)
  print(f"wrote {dst}: step {info.get('step')}, sampling {dict(config.sampling)}")
  return dst


if __name__ == "__main__":
  main()
