"""Test set-up: 8 fake CPU devices (set before jax is imported) and shared fixtures."""

import os
import pathlib

# The tests' programs are small and run a few steps: XLA:CPU's LLVM optimisation and its MLIR
# fusion emitters cost most of their compile time (a tiny train step: 95 s -> 22 s on a 2-core
# AMD EPYC) and buy speed that a few steps do not use. The results are the same programs'.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           f" --xla_force_host_platform_device_count=8 {FAST_COMPILE}").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["VDM_MRI_COMPILATION_CACHE"] = ""  # CLIs called in-process: no cache writes in tests

import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


# The files that take longest (on 2 CPU cores) run first, so that the two xdist workers
# (`--dist loadfile`, pyproject.toml) finish together instead of one waiting on the last.
SLOWEST_FIRST = ("test_distributed.py", "test_experiments.py", "test_train.py",
                 "test_benchmarks.py", "test_recipe.py")


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order kept within


def load_config(name: str):
  """configs/<name>.py's get_config()."""
  from vdm_mri.model import load_config_file  # after XLA_FLAGS is set
  return load_config_file(REPO / "configs" / f"{name}.py")


@pytest.fixture(scope="session")
def shared_train_slices():
  """Real 128x128 training slices in [0, 1] from ../shared/data (skipped when it is absent)."""
  path = SHARED_DATA / "brain_t1w_train.npz"
  if not path.exists():
    pytest.skip(f"real training data not found at {path} (the shared data folder is absent)")
  with np.load(path) as d:
    return d["images"][::50].astype(np.float32) / 4095.0  # [~135, 128, 128]
