"""Time to super-resolve one slice with the sampling defaults (steps, K) of a prior: the number
a user waits for per slice on this machine.

    python benchmarks/slice_time.py                       # the shipped prior, its defaults
    python benchmarks/slice_time.py --steps=50 --num_samples=4 --lowres=64x64
    python benchmarks/slice_time.py --checkpoint=runs/cpu_prior/best

One slice of the bundled sample is measured (centre of k-space, noise-free) and super-resolved
with K posterior samples in one batch, as `python -m vdm_mri.sample` does for a single slice.
The first call compiles (reported separately); the slice time is the best of --repeats further
calls, each ending when the result is on the host.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import vdm_mri
from vdm_mri import data, kspace, sample, sampling, sr_io
from vdm_mri import model as model_lib


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--checkpoint", default=None, help="work dir or params dir (default: the "
                      "shipped prior)")
  parser.add_argument("--steps", type=int, default=None, help="default: the prior's config")
  parser.add_argument("--num_samples", type=int, default=None, help="default: the prior's config")
  parser.add_argument("--lowres", default="32x32")
  parser.add_argument("--repeats", type=int, default=2)
  args = parser.parse_args()

  workdir = sample.resolve_workdir(args.checkpoint)
  config = sr_io.load_config(workdir, None)
  model = model_lib.from_config(config)
  params = sr_io.load_params(workdir, model)
  steps = args.steps or config.sampling.steps
  k = args.num_samples or config.sampling.num_samples
  h, _, w = args.lowres.partition("x")
  images = data.read_npz(vdm_mri.SAMPLE_DATA).images[:1].astype(np.float32) / data.QUANT_MAX
  y0 = kspace.measure(jnp.asarray(images), (int(h), int(w or h)))

  def run():
    start = time.perf_counter()
    sampling.posterior_samples(model, params, y0, key=jax.random.key(0), num_samples=k,
                               num_steps=steps, lam=config.sampling.lam,
                               final_projection=config.sampling.final_projection,
                               batch_size=config.sampling.batch_size)
    return time.perf_counter() - start

  first = run()
  best = min(run() for _ in range(args.repeats))
  print(f"prior {workdir}: {config.model.kind} ch={config.model.get('ch')}")
  print(f"one {args.lowres} slice -> {model.image_shape[0]}x{model.image_shape[1]}, K={k}, "
        f"{steps} steps, {jax.device_count()} {jax.devices()[0].platform} device(s): "
        f"{best:.1f} s (first call with compilation {first:.1f} s)")


if __name__ == "__main__":
  main()
