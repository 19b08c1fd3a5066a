"""The three benchmark scripts, run as commands on one CPU device with a micro model: exit code 0,
and the numbers they print parse and agree with each other (FLOPs, never timings). The helpers
of benchmarks/_bench.py on fake devices and errors.
"""

import math
import os
import re
import subprocess
import sys
import types

import jax
import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import _bench  # noqa: E402

# configs/tiny.py made smaller still: 32x32 images (middle attention at 16x16), 8 channels;
# compiles in seconds. bf16_check.py reads the bundled 128x128 slices: it gets the 128 px one.
MICRO_CONFIG = """
from vdm_mri.model import load_config_file


def get_config():
  config = load_config_file({tiny!r})
  config.data.image_size = {size}
  config.model.ch, config.model.ch_mult = 8, {ch_mult}
  config.schedule.hidden = 16
  return config
"""
SAMPLE_BATCH, SAMPLE_STEPS = 2, 3


def _write_config(tmp_path_factory, size: int, ch_mult) -> str:
  path = tmp_path_factory.mktemp("configs") / f"micro{size}.py"
  path.write_text(MICRO_CONFIG.format(tiny=str(REPO / "configs" / "tiny.py"), size=size,
                                      ch_mult=ch_mult))
  return path


@pytest.fixture(scope="module")
def micro_config(tmp_path_factory):
  return _write_config(tmp_path_factory, 32, (1, 2))


@pytest.fixture(scope="module")
def micro_config_128(tmp_path_factory):
  return _write_config(tmp_path_factory, 128, (1, 1, 1, 1))


def run_script(name: str, *flags: str) -> str:
  """stdout of `python benchmarks/<name>.py <flags>` on one CPU device (no 8-device flag)."""
  xla_flags = os.environ.get("XLA_FLAGS", "").replace(
      "--xla_force_host_platform_device_count=8", "").strip()
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags)
  result = subprocess.run([sys.executable, str(REPO / "benchmarks" / f"{name}.py"), *flags],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


def number(pattern: str, text: str) -> float:
  """The float captured by `pattern` in `text`."""
  match = re.search(pattern, text)
  assert match, f"{pattern!r} not in:\n{text}"
  return float(match.group(1))


def positive(x: float) -> bool:
  return math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def forward_fp32(micro_config):
  return run_script("forward", f"--config={micro_config}", "--batch=1", "--repeats=1")


def forward_gflop(out: str) -> float:
  return number(r"forward GFLOP per image \(XLA cost analysis\): ([\d.e+-]+)", out)


def test_forward_prints_parameters_flops_speed_and_na_peaks_on_cpu(forward_fp32):
  assert "dtype=float32" in forward_fp32
  assert number(r"parameters: (\d+)", forward_fp32.replace(",", "")) > 0
  assert positive(forward_gflop(forward_fp32))
  assert positive(number(r"([\d.]+) images/s", forward_fp32))
  assert positive(number(r"achieved: ([\d.e+-]+) TFLOP/s", forward_fp32))
  assert "(peak unknown)" in forward_fp32  # no peak table entry for a CPU
  assert "peak device memory n/a" in forward_fp32  # CPU devices have no memory_stats


def test_sampling_flops_are_forward_flops_times_batch_times_steps(micro_config, forward_fp32):
  # XLA counts the sampler's scan body once; the script must scale it to all T steps.
  out = run_script("sample_speed", f"--config={micro_config}", f"--batch={SAMPLE_BATCH}",
                   f"--steps={SAMPLE_STEPS}", "--lowres=16", "--repeats=1", "--progress_every=1",
                   f"--batches={SAMPLE_BATCH}")
  total = number(r"guided sampling GFLOP per run of \d+ x \d+ steps \(.*\): ([\d.e+-]+)", out)
  expected = forward_gflop(forward_fp32) * SAMPLE_BATCH * SAMPLE_STEPS
  assert total == pytest.approx(expected, rel=0.2)
  for variant in ("guided", "guided+progress", "prior"):
    assert positive(number(rf"{re.escape(variant)} +compile .* \| +([\d.]+) images/s", out))
  assert positive(number(r"guided achieved: ([\d.e+-]+) TFLOP/s", out))
  # progress every step: T callbacks in each of the 2 runs (warm-up + 1 repeat)
  assert number(r"(\d+) progress callbacks", out) == 2 * SAMPLE_STEPS
  # the --batches sweep: one line per batch size, then the best
  assert positive(number(rf"batch +{SAMPLE_BATCH}: .* \| +([\d.]+) images/s", out))
  assert f"best: batch {SAMPLE_BATCH}," in out


@pytest.mark.slow
def test_bfloat16_forward_counts_the_same_flops(micro_config, forward_fp32):
  out = run_script("forward", f"--config={micro_config}", "--batch=1", "--repeats=1",
                   "--dtype=bfloat16")
  assert "dtype=bfloat16" in out
  # the same convolutions; XLA's CPU count adds a few elementwise ops around the bfloat16 parts
  # (+4 % on configs/tiny.py, +10 % on this micro model, whose convolutions weigh less)
  assert forward_gflop(out) == pytest.approx(forward_gflop(forward_fp32), rel=0.25)


@pytest.mark.slow
def test_train_step_flops_are_two_to_four_forwards_per_image(micro_config, forward_fp32):
  # forward + backward (~2 forwards) + the optimiser; per image, so the batch divides out
  out = run_script("train_speed", f"--config={micro_config}", "--batch_size=2", "--steps=1",
                   "--warmup=1")
  per_image = number(r"train step GFLOP per image \(.*\): ([\d.e+-]+)", out)
  assert 2 < per_image / forward_gflop(forward_fp32) < 4
  assert positive(number(r"([\d.]+) images/s", out))
  assert positive(number(r"achieved: ([\d.e+-]+) TFLOP/s", out))


# --------------------------------------------------------------------------------------------
# benchmarks/_bench.py
# --------------------------------------------------------------------------------------------
def fake_device(kind: str):
  return types.SimpleNamespace(device_kind=kind)


@pytest.mark.parametrize("kind, dtype, peak", [
    ("NVIDIA H100 80GB HBM3", "bfloat16", 989), ("NVIDIA H100 80GB HBM3", "float32", 495),
    ("NVIDIA H100 PCIe", "bfloat16", 756),  # not the SXM's: the PCIe row must match first
    ("NVIDIA H200", "bfloat16", 989), ("NVIDIA A100-SXM4-80GB", "bfloat16", 312),
    ("cpu", "bfloat16", None),
])
def test_device_peak_table(kind, dtype, peak):
  assert _bench.device_peak_tflops(fake_device(kind), dtype) == peak


def test_float32_at_highest_precision_uses_the_fp32_peak():
  with jax.default_matmul_precision("highest"):
    assert _bench.device_peak_tflops(fake_device("NVIDIA H100 80GB HBM3"), "float32") == 67


def test_throughput_line_fraction_of_all_devices_peak():
  line = _bench.throughput_line(2 * 98.9e12, 1.0, fake_device("NVIDIA H100 80GB HBM3"),
                                "bfloat16", num_devices=2)
  assert line.startswith("197.8 TFLOP/s (10.0% of the dense bfloat16 peak")
  assert _bench.throughput_line(1e12, 1.0, fake_device("cpu"), "float32").endswith(
      "(peak unknown)")


@pytest.mark.parametrize("cost, flops", [
    ({"flops": 5.0}, 5.0), ([{"flops": 5.0}], 5.0), (None, math.nan), ({"flops": -1.0}, math.nan),
    ({}, math.nan),
])
def test_flops_of_any_cost_analysis_shape(cost, flops):
  result = _bench.flops_of(types.SimpleNamespace(cost_analysis=lambda: cost))
  assert result == flops or (math.isnan(flops) and math.isnan(result))


def test_out_of_memory_is_told_from_other_runtime_errors():
  oom = jax.errors.JaxRuntimeError(
      "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 34359738368 bytes.")
  assert _bench.is_out_of_memory(oom)
  assert not _bench.is_out_of_memory(jax.errors.JaxRuntimeError("INVALID_ARGUMENT: bad shape"))
  assert not _bench.is_out_of_memory(ValueError("RESOURCE_EXHAUSTED"))


def test_bf16_check_compares_dtype_and_seed_differences(micro_config_128):
  out = run_script("bf16_check", f"--config={micro_config_128}", "--num_images=1",
                   "--num_samples=1", "--steps=2", "--batch_size=1")
  d_dtype = number(r"bf16 vs fp32 \(same seed\) ([\d.e+-]+)", out)
  d_seed = number(r"fp32 seed B vs seed A ([\d.e+-]+)", out)
  assert positive(d_dtype) and positive(d_seed)  # bf16 really changes the computation
  assert re.search(r"bf16 within seed-to-seed variation: (yes|no)", out)


def test_slice_time_times_the_priors_default_and_the_reference(tmp_path, capsys):
  import numpy as np  # pylint: disable=g-import-not-at-top
  import slice_time  # pylint: disable=g-import-not-at-top
  from conftest import tiny_config_128  # pylint: disable=g-import-not-at-top
  from vdm_mri import model as model_lib, pretrained  # pylint: disable=g-import-not-at-top
  config = tiny_config_128()
  config.sampling.update(steps=2, num_samples=2, sampler="projection", batch_size=4,
                         antithetic=True)
  prior = pretrained.export(tmp_path / "prior", model_lib.from_config(config).init(
      jax.random.key(0)), config)
  rows = slice_time.main([f"--checkpoint={prior}", "--reference=paper:1:3:0.85:1:indep",
                          "--repeats=1", "--lowres=16x16", "--num_slices=2"])
  assert [(r["role"], r["setting"], r["nfe"], r["num_slices"]) for r in rows] == [
      ("default", "projection:2:2:0.85:1:anti", 4, 2),
      ("reference", "paper:1:3:0.85:1:indep", 3, 2)]
  assert all(np.isfinite(r["seconds"]) and r["seconds"] > 0 for r in rows)
  for bad, message in (("--settings=paper:1", "is not sampler:steps:K"),
                       ("--settings=paper:1:3", "must be even"),  # the prior's pairs, odd K
                       ("--num_slices=0", "--num_slices must be in")):
    with pytest.raises(SystemExit) as e:
      slice_time.main([f"--checkpoint={prior}", bad])
    assert e.value.code == 2 and message in capsys.readouterr().err, bad
