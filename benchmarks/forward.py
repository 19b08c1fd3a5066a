"""Score-network forward pass: parameters, FLOPs per image (XLA cost analysis), time on this backend.

    python benchmarks/forward.py --config=configs/brain128.py --batch=1
    python benchmarks/forward.py --config=configs/brain128_unet.py --batch=1 --dtype=bfloat16
"""

import argparse
import time

import jax
import jax.numpy as jnp

from vdm_mri import model as model_lib


def flops_of(compiled) -> float:
  """Total FLOPs XLA counts for a compiled program (cost_analysis is a dict or a list of dicts)."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost.get("flops", float("nan")))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/brain128.py")
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--dtype", default=None, help="compute dtype override, e.g. bfloat16")
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()

  config = model_lib.load_config_file(args.config)
  if args.dtype:
    config.model.dtype = args.dtype
  vdm_model = model_lib.from_config(config)
  params = vdm_model.init(jax.random.key(0))
  n_params = sum(x.size for x in jax.tree.leaves(params["score"]))
  z = jax.random.normal(jax.random.key(1), (args.batch, *vdm_model.image_shape))
  g = jnp.full((args.batch,), 0.5)
  forward = jax.jit(vdm_model.network.apply)

  start = time.perf_counter()
  compiled = forward.lower({"params": params["score"]}, z, g).compile()
  compile_s = time.perf_counter() - start
  flops = flops_of(compiled)
  compiled({"params": params["score"]}, z, g).block_until_ready()  # warm-up
  times = []
  for _ in range(args.repeats):
    start = time.perf_counter()
    compiled({"params": params["score"]}, z, g).block_until_ready()
    times.append(time.perf_counter() - start)
  best = min(times)
  print(f"config={args.config} model={config.model.kind} dtype={config.model.dtype} "
        f"image={vdm_model.image_shape} batch={args.batch} backend={jax.default_backend()} "
        f"device={jax.devices()[0].device_kind}")
  print(f"parameters: {n_params:,}")
  print(f"forward GFLOP per image (XLA cost analysis): {flops / args.batch / 1e9:.1f}")
  print(f"compile: {compile_s:.1f} s; forward: best {best * 1e3:.1f} ms of {args.repeats} "
        f"({best / args.batch * 1e3:.1f} ms/image, {flops / best / 1e12:.3f} TFLOP/s)")


if __name__ == "__main__":
  main()
