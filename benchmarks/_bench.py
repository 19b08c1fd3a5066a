"""Helpers shared by the benchmarks: FLOPs from XLA's cost analysis, peak device memory, and
achieved TFLOP/s as a fraction of the device's dense peak.
"""

from __future__ import annotations

import math

import jax

# Dense (no 2:4 sparsity) peak TFLOP/s of the tensor cores (bf16, tf32) and of the CUDA cores
# (fp32), from NVIDIA's data sheets. Keyed by a substring of `device.device_kind`; the first match
# wins, so "H100 PCIe" must come before "H100" (the SXM part reports "NVIDIA H100 80GB HBM3").
# H200 has the H100 SXM's compute (only its memory differs).
_H100_SXM = {"bfloat16": 989.0, "tf32": 495.0, "float32": 67.0}
PEAK_TFLOPS = (
    ("H100 PCIe", {"bfloat16": 756.0, "tf32": 378.0, "float32": 51.0}),
    ("H100", _H100_SXM),
    ("H200", _H100_SXM),
    ("A100", {"bfloat16": 312.0, "tf32": 156.0, "float32": 19.5}),
)


def flops_of(compiled) -> float:
  """FLOPs XLA counts for a compiled program, per device (an SPMD program is one device's share);
  nan where the backend gives none. cost_analysis() is a dict, a list of dicts or None.

  XLA counts the body of a while loop (lax.scan, fori_loop) once, not once per iteration.
  """
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  flops = float((cost or {}).get("flops", math.nan))
  return flops if flops > 0 else math.nan  # some backends report -1 for "unknown"


def peak_memory_bytes(device) -> int | None:
  """The device allocator's peak bytes in use since the process started; None where unsupported
  (CPU)."""
  try:
    stats = device.memory_stats()
  except (NotImplementedError, RuntimeError, jax.errors.JaxRuntimeError):
    return None
  return (stats or {}).get("peak_bytes_in_use")


def memory_line(device) -> str:
  """'peak device memory X.XX GiB' or 'n/a'."""
  peak = peak_memory_bytes(device)
  return "peak device memory " + ("n/a" if peak is None else f"{peak / 2**30:.2f} GiB")


def peak_key(dtype) -> str:
  """Which peak a compute dtype runs at: float32 convolutions and matmuls use TF32 tensor cores
  unless the matmul precision is set to 'highest'/'float32'."""
  if str(dtype) == "bfloat16":
    return "bfloat16"
  precision = str(jax.config.jax_default_matmul_precision or "default").lower()
  return "float32" if precision in ("highest", "float32") else "tf32"


def device_peak_tflops(device, dtype) -> float | None:
  """Dense peak TFLOP/s of one `device` for compute `dtype` (PEAK_TFLOPS); None when unknown."""
  for kind, peaks in PEAK_TFLOPS:
    if kind in device.device_kind:
      return peaks.get(peak_key(dtype))
  return None


def is_out_of_memory(error: Exception) -> bool:
  """An XLA allocation failure (RESOURCE_EXHAUSTED), as opposed to any other error."""
  return isinstance(error, jax.errors.JaxRuntimeError) and (
      "RESOURCE_EXHAUSTED" in str(error) or "out of memory" in str(error).lower())


def throughput_line(flops: float, seconds: float, device, dtype, num_devices: int = 1) -> str:
  """'X TFLOP/s (Y % of the dense tf32 peak of 1x NVIDIA H100 80GB HBM3)' or '(peak unknown)';
  `flops` in total over `num_devices` devices."""
  achieved = flops / seconds / 1e12
  peak = device_peak_tflops(device, dtype)
  if peak is None or not math.isfinite(achieved):
    return f"{achieved:.4g} TFLOP/s (peak unknown)"
  return (f"{achieved:.4g} TFLOP/s ({achieved / (peak * num_devices):.1%} of the dense "
          f"{peak_key(dtype)} peak, {peak:g} TFLOP/s x {num_devices} {device.device_kind})")


def load_config(path: str, dtype: str | None):
  """configs/*.py's config, with the compute dtype overridden when `dtype` is given."""
  from vdm_mri import model as model_lib  # pylint: disable=g-import-not-at-top
  config = model_lib.load_config_file(path)
  if dtype:
    config.model.dtype = dtype
  return config
