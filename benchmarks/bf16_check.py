"""Does bfloat16 compute change guided super-resolution more than a different seed does?

Posterior means of the same measurements (validation slices, simulated low-res k-space) for
float32 seed A, float32 seed B and bfloat16 seed A, from the same (random or trained) weights:
prints the relative differences ‖bf16_A − fp32_A‖/‖fp32_A‖ and ‖fp32_B − fp32_A‖/‖fp32_A‖. bf16 is
acceptable for sampling when the first is at most the second.

    python benchmarks/bf16_check.py --config=configs/brain128_unet.py [--checkpoint=WORKDIR]
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np

import vdm_mri
from vdm_mri import data, kspace, sampling, workdir
from vdm_mri import model as model_lib

# benchmarks/_bench.py
from _bench import load_config


def posterior_mean(config, params, y0, seed: int, args) -> np.ndarray:
  vdm_model = model_lib.from_config(config)
  post = sampling.posterior_samples(vdm_model, params, y0, key=jax.random.key(seed),
                                    num_samples=args.num_samples, num_steps=args.steps,
                                    batch_size=args.batch_size)
  return post.mean


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/tiny.py")
  parser.add_argument("--checkpoint", default=None,
                      help="work dir (default: random weights, perturbed init)")
  parser.add_argument("--lowres", type=int, default=32)
  parser.add_argument("--num_images", type=int, default=4)
  parser.add_argument("--num_samples", type=int, default=4)
  parser.add_argument("--steps", type=int, default=1000)
  parser.add_argument("--batch_size", type=int, default=16)
  args = parser.parse_args()

  fp32, bf16 = load_config(args.config, "float32"), load_config(args.config, "bfloat16")
  vdm_model = model_lib.from_config(fp32)
  if args.checkpoint:
    params = workdir.load_params(workdir.resolve(args.checkpoint), vdm_model)
  else:  # init + noise: a fresh network is the identity (its last conv starts at zero)
    params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(1), p.shape),
                          vdm_model.init(jax.random.key(0)))
  images = data.read_npz(vdm_mri.SAMPLE_DATA).images[::4][:args.num_images] / data.QUANT_MAX
  y0 = kspace.measure(jnp.asarray(images, jnp.float32), (args.lowres, args.lowres))

  a32 = posterior_mean(fp32, params, y0, 1, args)
  b32 = posterior_mean(fp32, params, y0, 2, args)
  a16 = posterior_mean(bf16, params, y0, 1, args)
  rel = lambda u, v: float(np.linalg.norm(u - v) / np.linalg.norm(v))
  d_dtype, d_seed = rel(a16, a32), rel(b32, a32)
  print(f"config={args.config} weights={'checkpoint' if args.checkpoint else 'random'} "
        f"lowres={args.lowres} images={len(images)} K={args.num_samples} steps={args.steps} "
        f"backend={jax.default_backend()}")
  print(f"relative difference of posterior means: bf16 vs fp32 (same seed) {d_dtype:.4g}; "
        f"fp32 seed B vs seed A {d_seed:.4g}")
  print(f"bf16 within seed-to-seed variation: {'yes' if d_dtype <= d_seed else 'no'}")


if __name__ == "__main__":
  main()
