"""Ship a params dir as the package's prior: verify it, set its sampling defaults, re-export.

    python experiments/export_prior.py --src=runs/cpu_prior/best \
        --dst=vdm_mri/pretrained/brain128_cpu --steps=50 --num_samples=2

The source (a work dir's best/, `vdm_mri.pretrained` format) is verified (SHA-256) and its
parameters checked against its config; the copy gets `config.sampling.steps` / `num_samples`
(the defaults `python -m vdm_mri.sample` uses) and a new manifest that keeps the source's step,
images seen and selection metrics, plus `--note`. Bad input: one line, exit 2.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from vdm_mri import pretrained
from vdm_mri import model as model_lib


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--src", required=True, help="params dir (e.g. WORKDIR/best)")
  p.add_argument("--dst", default=str(pretrained.DEFAULT))
  p.add_argument("--steps", type=int, default=None, help="default reverse steps")
  p.add_argument("--num_samples", type=int, default=None, help="default posterior samples K")
  p.add_argument("--note", default="", help="free text stored in the manifest")
  args = p.parse_args(argv)
  try:
    manifest = pretrained.verify(args.src)
    config = pretrained.load_config(args.src)
    params = pretrained.load_params(args.src, model_lib.from_config(config))
  except pretrained.PretrainedError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  for name in ("steps", "num_samples"):
    value = getattr(args, name)
    if value is not None:
      if value < 1:
        print(f"error: --{name} must be at least 1", file=sys.stderr)
        sys.exit(2)
      config.sampling[name] = value
  # A state dir's data position belongs to the training run, not to the shipped prior.
  info = {k: v for k, v in manifest.items()
          if k not in ("format", "files", "data_seed", "data_state")}
  if args.note:
    info["note"] = args.note
  dst = pretrained.export(pathlib.Path(args.dst), params, config, **info)
  pretrained.verify(dst)
  print(f"wrote {dst}: step {info.get('step')}, sampling steps {config.sampling.steps}, "
        f"K {config.sampling.num_samples}")
  return dst


if __name__ == "__main__":
  main()
