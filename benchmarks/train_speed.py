"""Training speed: images/s and step time of `vdm_mri.train`'s jitted step, FLOPs per image.

    python benchmarks/train_speed.py --config=configs/tiny.py
    python benchmarks/train_speed.py --config=configs/brain128_unet.py --batch_size=2 --steps=3
    python benchmarks/train_speed.py --config=configs/brain128_unet.py --dtype=bfloat16

The step is the one training runs (data parallel over every device of the default backend, state
donated); the batch is random on-grid images already on the devices, so the input pipeline is not
timed. Compilation and warm-up steps are excluded; each timed step ends in
`block_until_ready`. FLOPs per image are XLA's cost analysis of the same step compiled for one
device, divided by the batch size (forward + backward + optimiser); achieved TFLOP/s are those
FLOPs over the mean step time, as a fraction of the peak of all devices together. --dtype overrides
config.model.dtype (the compute dtype; parameters and optimiser state stay float32).
"""

import argparse
import time

import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

# benchmarks/_bench.py
from _bench import flops_of, memory_line, throughput_line, load_config
from vdm_mri import model as model_lib
from vdm_mri import optim, sampling, train


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/tiny.py")
  parser.add_argument("--steps", type=int, default=5, help="timed steps")
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (compiles)")
  parser.add_argument("--batch_size", type=int, default=None, help="global batch override")
  parser.add_argument("--dtype", default=None, help="compute dtype override, e.g. bfloat16")
  args = parser.parse_args()

  config = load_config(args.config, args.dtype)
  if args.batch_size:
    config.training.batch_size = args.batch_size
  batch_size = config.training.batch_size
  model = model_lib.from_config(config)
  optimizer = ml_collections.FrozenConfigDict(config.optimizer)
  tx, _ = optim.make_optimizer(optimizer)
  state = jax.device_get(train.create_train_state(model, tx, jax.random.key(0)))
  levels = 2**config.data.bits - 1
  images = np.random.default_rng(0).integers(0, levels + 1, (batch_size, *model.image_shape))
  images = (images / levels).astype(np.float32)

  def placed(mesh):
    return (jax.device_put(state, NamedSharding(mesh, P())),
            {"image": jax.device_put(images, NamedSharding(mesh, P("data")))})

  def compiled_step(mesh):
    step = train.jit_train_step(mesh, model, optimizer, config.loss.num_steps)
    return step.lower(*placed(mesh)).compile()

  mesh = sampling.make_mesh(jax.devices())
  if batch_size % mesh.size:
    raise SystemExit(f"batch_size {batch_size} is not divisible by {mesh.size} devices")
  start = time.perf_counter()
  step = compiled_step(mesh)
  compile_s = time.perf_counter() - start
  one_device = step if mesh.size == 1 else compiled_step(sampling.make_mesh(jax.devices()[:1]))
  flops = flops_of(one_device)
  run_state, batch = placed(mesh)
  start = time.perf_counter()
  for _ in range(args.warmup):
    run_state, metrics = step(run_state, batch)
  jax.block_until_ready(metrics)
  warmup_s = time.perf_counter() - start
  times = []
  for _ in range(args.steps):
    start = time.perf_counter()
    run_state, metrics = step(run_state, batch)
    jax.block_until_ready((run_state, metrics))
    times.append(time.perf_counter() - start)
  mean = float(np.mean(times))
  device = jax.devices()[0]
  print(f"config={args.config} model={config.model.kind} dtype={config.model.dtype} "
        f"image={model.image_shape} batch={batch_size} backend={jax.default_backend()} "
        f"devices={mesh.size}x{device.device_kind}")
  print(f"train step GFLOP per image (XLA cost analysis, fwd+bwd+update): "
        f"{flops / batch_size / 1e9:.4g}")
  print(f"compile {compile_s:.1f} s; warm-up {args.warmup} steps {warmup_s:.1f} s")
  print(f"step time: mean {mean * 1e3:.1f} ms, min {min(times) * 1e3:.1f} ms over {args.steps} "
        f"steps; {batch_size / mean:.2f} images/s")
  print(f"achieved: {throughput_line(flops, mean, device, config.model.dtype, mesh.size)}; "
        f"{memory_line(device)}")


if __name__ == "__main__":
  main()
