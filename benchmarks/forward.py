"""Score-network forward pass: parameters, FLOPs per image (XLA cost analysis), time on this backend.

    python benchmarks/forward.py --config=configs/brain128.py --batch=1
    python benchmarks/forward.py --config=configs/brain128_unet.py --batch=8 --dtype=bfloat16

One device. Compile (lower + compile) is timed separately, then one warm-up call, then the best of
--repeats calls, each ending in block_until_ready. --dtype overrides config.model.dtype (the
compute dtype; parameters stay float32).
"""

import argparse
import time

import jax
import jax.numpy as jnp

# benchmarks/_bench.py
from _bench import flops_of, memory_line, throughput_line, load_config
from vdm_mri import model as model_lib


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/brain128.py")
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--dtype", default=None, help="compute dtype override, e.g. bfloat16")
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()

  config = load_config(args.config, args.dtype)
  vdm_model = model_lib.from_config(config)
  params = vdm_model.init(jax.random.key(0))
  n_params = sum(x.size for x in jax.tree.leaves(params["score"]))
  z = jax.random.normal(jax.random.key(1), (args.batch, *vdm_model.image_shape))
  g = jnp.full((args.batch,), 0.5)
  forward = jax.jit(vdm_model.network.apply)
  device = jax.devices()[0]

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
        f"device={device.device_kind}")
  print(f"parameters: {n_params:,}")
  print(f"forward GFLOP per image (XLA cost analysis): {flops / args.batch / 1e9:.4g}")
  print(f"compile: {compile_s:.1f} s; forward: best {best * 1e3:.1f} ms of {args.repeats} "
        f"({best / args.batch * 1e3:.2f} ms/image, {args.batch / best:.2f} images/s)")
  print(f"achieved: {throughput_line(flops, best, device, config.model.dtype)}; "
        f"{memory_line(device)}")


if __name__ == "__main__":
  main()
