"""Time to super-resolve a slice with the sampling defaults of a prior, and with a reference
setting beside it: the number a user waits for per slice on this machine.

    python benchmarks/slice_time.py                       # the shipped prior: its default and
                                                          # the paper's sampler at 10 x 16
    python benchmarks/slice_time.py --settings=projection:10:4,paper:5:8 --lowres=64x64
    python benchmarks/slice_time.py --checkpoint=runs/cpu_prior/best --reference=""
    python benchmarks/slice_time.py --num_slices=4        # per slice, 4 slices in one call

A setting is `sampler:steps:K[:eta[:t_start]][:anti|:indep]` (api.SamplingOptions.with_setting)
over the prior's defaults. --num_slices slices of the bundled sample are measured (centre of
k-space, noise-free) and super-resolved together (api.super_resolve, batched as `python -m
vdm_mri.sample` does) with K posterior samples each; the time is per slice. The first call of
each setting compiles (reported separately); its time is the best of --repeats further calls,
each ending when the result is on the host.
"""

import argparse
import os
import pathlib
import sys
import time

import jax
import numpy as np

import vdm_mri
from vdm_mri import api, data, kspace, workdir


def time_setting(prior, y0, opts: api.SamplingOptions, repeats: int) -> tuple[float, float]:
  """(first call with compilation, best of `repeats` further calls) in seconds."""

  def run():
    start = time.perf_counter()
    api.super_resolve(prior, kspace=y0, key=jax.random.key(0), options=opts)
    return time.perf_counter() - start

  first = run()
  return first, min(run() for _ in range(repeats))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--checkpoint", default=None, help="work dir or params dir (default: the "
                      "shipped prior)")
  parser.add_argument("--settings", default="", help="comma-separated settings to time instead "
                      "of the prior's default")
  parser.add_argument("--reference", default="paper:10:16:0.85:1:indep",
                      help="a setting timed beside them (empty: none)")
  parser.add_argument("--num_slices", type=int, default=1, help="slices per call (1 … 16)")
  parser.add_argument("--lowres", default="32x32")
  parser.add_argument("--repeats", type=int, default=2)
  args = parser.parse_args(argv)
  try:
    prior = api.load_prior(args.checkpoint)
    base = prior.options
    named = [("default", base)] if not args.settings else [
        ("setting", base.with_setting(t)) for t in args.settings.split(",") if t.strip()]
    if args.reference:
      named.append(("reference", base.with_setting(args.reference)))
    h, w = kspace.parse_size(args.lowres)
    if not 1 <= args.num_slices <= 16:
      raise ValueError(f"--num_slices must be in 1 … 16 (the bundled sample), got "
                       f"{args.num_slices}")
  except (api.InputError, workdir.CheckpointError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  images = data.read_npz(vdm_mri.SAMPLE_DATA).images[:args.num_slices].astype(
      np.float32) / data.QUANT_MAX
  full = prior.image_shape
  y0 = np.asarray(kspace.measure(images, (h, w)))
  shown = os.path.relpath(prior.path) if prior.path.is_relative_to(pathlib.Path.cwd()) else (
      prior.path.name)  # no machine's directories in printed (and committed) output
  print(f"prior {shown}: {prior.config.model.kind} ch={prior.config.model.get('ch')}; "
        f"{len(images)} {h}x{w} slice(s) -> {full[0]}x{full[1]} on {jax.device_count()} "
        f"{jax.devices()[0].platform} device(s)")
  rows = []
  for role, opts in named:
    first, best = (t / len(images) for t in time_setting(prior, y0, opts, args.repeats))
    rows.append({"role": role, "setting": opts.setting, "nfe": opts.nfe, "seconds": best,
                 "first_seconds": first, "num_slices": len(images)})
    print(f"{role:>9} {opts.setting:<30} {opts.nfe:>4} NFE: {best:.2f} s per slice (first call "
          f"with compilation {first:.1f} s per slice)", flush=True)
  return rows


if __name__ == "__main__":
  main()
