"""vdm_mri: MR image super-resolution with a k-space guided Variational Diffusion Model."""

from __future__ import annotations

import pathlib

__version__ = "0.1.0"

SAMPLE_DATA = pathlib.Path(__file__).parent / "sample_data" / "brain_t1w_sample.npz"
"""16 real 128x128 validation slices (2 subjects x 8, CC0, see README) bundled for demos and tests."""


def enable_compilation_cache() -> str | None:
  """Turn on JAX's persistent compilation cache for the command-line entry points.

  XLA compiles the training step or the sampler afresh in every process (tens of seconds on a
  CPU, longer for the paper's network); the cache makes the second run of a command skip it.
  Directory: $VDM_MRI_COMPILATION_CACHE, default ~/.cache/vdm_mri/jax; an empty value turns it
  off. Returns the directory used, or None.
  """
  import os  # pylint: disable=g-import-not-at-top

  import jax  # pylint: disable=g-import-not-at-top

  path = os.environ.get("VDM_MRI_COMPILATION_CACHE",
                        os.path.join(os.path.expanduser("~"), ".cache", "vdm_mri", "jax"))
  if not path:
    return None
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.0)
  return path
