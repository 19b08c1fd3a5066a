"""Guided-sampling speed: compile time, wall time per batch and per step, images/s, FLOPs and
achieved TFLOP/s, peak device memory, and the cost of the k-space guidance and of the progress
callback (random weights: speed does not depend on them).

    python benchmarks/sample_speed.py --config=configs/tiny.py --batch=4 --steps=20
    python benchmarks/sample_speed.py --config=configs/brain128.py --batch=4 --steps=1000
    python benchmarks/sample_speed.py --config=configs/brain128.py --steps=1000 --dtype=bfloat16 \
        --batches=4,8,16,32

Variants at --batch, each compiled once (compile = lower + compile, timed separately), run once to
warm up, then timed in turns, best of --repeats, with block_until_ready:
  guided            the paper's sampler (guidance every step, final projection)
  guided+progress   the same with the host progress callback every --progress_every steps
  prior             no guidance (unconditional), to give the guidance's share of the step time
--batches=4,8,… then times the guided sampler alone at each batch size in turn (compiled, warmed
up, best of --repeats), stops at the first out-of-memory error, and reports the best images/s
(a batch size already compiled above reuses JAX's cached program: compile ~0 s). Peak device
memory is the allocator's peak since the process started (n/a on CPU), so in a sweep of growing
batches it is that of the largest batch so far.

FLOPs. XLA's cost analysis counts the body of the sampler's lax.scan once, not T times. So we
also compile one guided reverse step (the scan body, same batch and sharding) and, when the
sampler's count is below half of T steps, print the run's FLOPs as program + (T - 1) x step;
otherwise (an XLA that counts every iteration) the program's count as it is. FLOPs of the other
batch sizes are the per-image ones times the batch. --dtype overrides config.model.dtype (the
compute dtype; parameters stay float32).
"""

import argparse
import time

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

# benchmarks/_bench.py
from _bench import (flops_of, is_out_of_memory, load_config, memory_line,
                    throughput_line)
from vdm_mri import kspace, sampling, vdm
from vdm_mri import model as model_lib


def compile_variant(sampler, args):
  """(compiled program, compile seconds) of a jitted sampler on `args`; runs it once (warm-up)."""
  start = time.perf_counter()
  compiled = sampler.lower(*args).compile()
  compile_s = time.perf_counter() - start
  compiled(*args).block_until_ready()
  return compiled, compile_s


def best_times(programs: dict, repeats: int) -> dict:
  """Per variant: (best wall s, best process CPU s, all threads); the variants take turns, so
  load drift on a shared machine hits them alike."""
  best = {name: (float("inf"), float("inf")) for name in programs}
  for _ in range(repeats):
    for name, (compiled, args) in programs.items():
      wall, cpu = time.perf_counter(), time.process_time()
      compiled(*args).block_until_ready()
      wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
      best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
  return best


def step_flops(vdm_model, mesh, params, keys, y0) -> float:
  """FLOPs of one guided reverse step (the sampler's scan body) on all devices together."""
  kw = sampling.model_sampler_kwargs(vdm_model)
  y0_f = kspace.encode_measurement(y0, *vdm.encoder_affine(kw["bits"]), kw["image_shape"])
  z = jnp.zeros((keys.shape[0], *kw["image_shape"]), jnp.float32)  # [B, H, W]
  gammas = jnp.array([0.0, -0.1], jnp.float32)  # γ_t, γ_s: values do not change the FLOPs

  def one_step(params, z, keys, y0_f, gammas):
    return sampling.reverse_step(z, keys, 1, gammas[0], gammas[1],
                                 eps_fn=vdm_model.eps_fn(params), y0_f=y0_f,
                                 gamma_min=kw["gamma_min"], gamma_max=kw["gamma_max"])

  replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  step = jax.jit(one_step, in_shardings=(replicated, sharded, sharded, sharded, replicated))
  return flops_of(step.lower(params, z, keys, y0_f, gammas).compile()) * mesh.size


def run_flops(program: float, step: float, num_steps: int) -> tuple[float, bool]:
  """(FLOPs of one sampler run, whether XLA counted the scan body once) from the per-device-summed
  counts of the compiled sampler and of one step."""
  counted_once = program < 0.5 * num_steps * step
  return (program + (num_steps - 1) * step if counted_once else program), counted_once


def report_flops(program: float, step: float, *, batch: int, num_steps: int) -> float:
  """Print and return the FLOPs of one guided run of batch x num_steps (run_flops)."""
  flops, counted_once = run_flops(program, step, num_steps)
  how = (f"scan body counted once: program {program / 1e9:.4g} + ({num_steps} - 1) x step "
         f"{step / 1e9:.4g}" if counted_once else "all steps counted by XLA")
  print(f"guided sampling GFLOP per run of {batch} x {num_steps} steps (XLA cost analysis, "
        f"{how}): {flops / 1e9:.4g} = {flops / batch / num_steps / 1e9:.4g} per image per step")
  return flops


def make_inputs(batch: int, lowres: int, image_shape):
  """Per-sample keys [B] and a measurement y0 [B, h, w] of random images."""
  keys = sampling.sample_keys(jax.random.key(1), batch, 1)[:, 0]
  x = jax.random.uniform(jax.random.key(2), (batch, *image_shape))
  return keys, kspace.measure(x, (lowres, lowres))


def batch_sweep(sampler, params, mesh, batches, *, image_shape, lowres: int, repeats: int,
                flops_per_image: float, dtype):
  """Guided sampling at each batch size in turn until the first out-of-memory error."""
  device, best = jax.devices()[0], None
  for requested in batches:
    batch = sampling.padded_batch_size(requested, mesh)
    try:
      keys, y0 = make_inputs(batch, lowres, image_shape)
      call_args = (params, keys, y0, 1.0)
      compiled, compile_s = compile_variant(sampler, call_args)
      run_s = best_times({"guided": (compiled, call_args)}, repeats)["guided"][0]
    except jax.errors.JaxRuntimeError as error:
      if not is_out_of_memory(error):
        raise
      print(f"batch {batch:4d}: out of memory, stopping: {str(error).splitlines()[0][:200]}")
      break
    line = throughput_line(flops_per_image * batch, run_s, device, dtype, mesh.size)
    print(f"batch {batch:4d}: compile {compile_s:6.1f} s | run {run_s:7.3f} s | "
          f"{batch / run_s:8.2f} images/s | {line} | {memory_line(device)}")
    if best is None or batch / run_s > best[1]:
      best = (batch, batch / run_s)
  if best:
    print(f"best: batch {best[0]}, {best[1]:.2f} images/s")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/tiny.py")
  parser.add_argument("--batch", type=int, default=4, help="global batch (all devices)")
  parser.add_argument("--batches", default="", help="comma-separated batch sizes to sweep")
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--lowres", type=int, default=32, help="measured centre h = w")
  parser.add_argument("--progress_every", type=int, default=10)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--dtype", default=None, help="compute dtype override, e.g. bfloat16")
  args = parser.parse_args()

  config = load_config(args.config, args.dtype)
  vdm_model = model_lib.from_config(config)
  params = vdm_model.init(jax.random.key(0))
  mesh = sampling.make_mesh()
  batch = sampling.padded_batch_size(args.batch, mesh)
  H, W = vdm_model.image_shape[:2]
  keys, y0 = make_inputs(batch, args.lowres, (H, W))
  make = lambda **kw: sampling.make_sampler(vdm_model, mesh, num_steps=args.steps, **kw)
  variants = {
      "guided": (make(guided=True, final_projection=True), (params, keys, y0, 1.0)),
      "guided+progress": (make(guided=True, final_projection=True,
                               progress_every=args.progress_every), (params, keys, y0, 1.0)),
      "prior": (make(guided=False), (params, keys)),
  }
  device = jax.devices()[0]
  print(f"config={args.config} model={config.model.kind} dtype={config.model.dtype} "
        f"image={H}x{W} batch={batch} steps={args.steps} lowres={args.lowres} "
        f"backend={jax.default_backend()} devices={mesh.size} ({device.device_kind})")
  calls = []
  with sampling.progress_listener(calls.append):
    programs, compile_s = {}, {}
    for name, (sampler, call_args) in variants.items():
      compiled, compile_s[name] = compile_variant(sampler, call_args)
      programs[name] = (compiled, call_args)
    times = best_times(programs, args.repeats)
  for name, (run_s, cpu_s) in times.items():
    print(f"{name:16s} compile {compile_s[name]:6.1f} s | run {run_s:7.3f} s | "
          f"{run_s / args.steps * 1e3:8.2f} ms/step wall, {cpu_s / args.steps * 1e3:8.2f} ms/step "
          f"CPU | {batch / run_s:8.2f} images/s")
  for clock, i in (("wall", 0), ("CPU", 1)):
    guided, progress, prior = (times[k][i] for k in ("guided", "guided+progress", "prior"))
    print(f"{clock:4s}: guidance share of the guided step {(guided - prior) / guided:+.1%}, "
          f"progress callback overhead {(progress - guided) / guided:+.1%}")
  print(f"{len(calls)} progress callbacks in {args.repeats + 1} runs")

  program = flops_of(programs["guided"][0]) * mesh.size
  flops = report_flops(program, step_flops(vdm_model, mesh, params, keys, y0), batch=batch,
                       num_steps=args.steps)
  print(f"guided achieved: "
        f"{throughput_line(flops, times['guided'][0], device, config.model.dtype, mesh.size)}; "
        f"{memory_line(device)}")
  if args.batches:
    batch_sweep(variants["guided"][0], params, mesh, [int(b) for b in args.batches.split(",")],
                image_shape=(H, W), lowres=args.lowres, repeats=args.repeats,
                flops_per_image=flops / batch, dtype=config.model.dtype)


if __name__ == "__main__":
  main()
