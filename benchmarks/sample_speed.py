"""Guided-sampling speed: compile time, wall time per batch and per step, images/s, and the cost
of the k-space guidance and of the progress callback (random weights: speed does not depend on
them).

    python benchmarks/sample_speed.py --config=configs/tiny.py --batch=4 --steps=20
    python benchmarks/sample_speed.py --config=configs/brain128.py --batch=4 --steps=1000

Variants, each compiled once (compile = lower + compile, timed separately), run once to warm up,
then timed in turns, best of --repeats, with block_until_ready:
  guided            the paper's sampler (guidance every step, final projection)
  guided+progress   the same with the host progress callback every --progress_every steps
  prior             no guidance (unconditional), to give the guidance's share of the step time
"""

import argparse
import time

import jax

from vdm_mri import kspace, sampling
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


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/tiny.py")
  parser.add_argument("--batch", type=int, default=4, help="global batch (all devices)")
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--lowres", type=int, default=32, help="measured centre h = w")
  parser.add_argument("--progress_every", type=int, default=10)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()

  config = model_lib.load_config_file(args.config)
  vdm_model = model_lib.from_config(config)
  params = vdm_model.init(jax.random.key(0))
  mesh = sampling.make_mesh()
  batch = sampling.padded_batch_size(args.batch, mesh)
  H, W = vdm_model.image_shape[:2]
  keys = sampling.sample_keys(jax.random.key(1), batch, 1)[:, 0]
  x = jax.random.uniform(jax.random.key(2), (batch, H, W))
  y0 = kspace.measure(x, (args.lowres, args.lowres))
  make = lambda **kw: sampling.make_sampler(vdm_model, mesh, num_steps=args.steps, **kw)
  variants = {
      "guided": (make(guided=True, final_projection=True), (params, keys, y0, 1.0)),
      "guided+progress": (make(guided=True, final_projection=True,
                               progress_every=args.progress_every), (params, keys, y0, 1.0)),
      "prior": (make(guided=False), (params, keys)),
  }
  print(f"config={args.config} model={config.model.kind} image={H}x{W} batch={batch} "
        f"steps={args.steps} lowres={args.lowres} backend={jax.default_backend()} "
        f"devices={mesh.size} ({jax.devices()[0].device_kind})")
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


if __name__ == "__main__":
  main()
