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


# Test files from the longest to the shortest (after each: its seconds on one core of a 2-core
# AMD EPYC), the order in which the two xdist workers take them (`--dist loadfile
# --no-loadscope-reorder`, pyproject.toml): the long files first, so that the workers finish
# together instead of one running a long file alone at the end.
SLOWEST_FIRST = ("test_distributed.py",  # 187
                 "test_experiments.py",  # 135
                 "test_train.py",  # 116
                 "test_benchmarks.py",  # 92
                 "test_sampling.py",  # 83
                 "test_unet.py",  # 51
                 "test_recipe.py",  # 49
                 "test_vdm.py",  # 46
                 "test_sample_cli.py",  # 38
                 "test_baselines_metrics.py",  # 31
                 "test_kspace.py",  # 19
                 "test_pretrained.py",  # 16
                 "test_api.py",  # 9
                 "test_data.py",  # 9
                 "test_schedule.py")  # 7; the rest take less than a second


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
  """One JAX compilation cache for the whole run, empty at its start: a program that several
  tests build (the same sampler or train step of the same model) compiles once. With xdist the
  workers share it (the run's base folder). Programs that compile in under half a second (the
  single operations of eager code: over a thousand in a run) are not written to it. In-process
  CLIs leave it as it is (VDM_MRI_COMPILATION_CACHE is empty); subprocesses are handed its
  path."""
  import jax  # pylint: disable=g-import-not-at-top  # after XLA_FLAGS is set
  base = tmp_path_factory.getbasetemp()
  path = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "jax_cache"
  path.mkdir(exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", str(path))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  return path


@pytest.fixture
def one_device_meshes(monkeypatch):
  """Samplers on a mesh of this process's first device: with the 8 fake CPU devices every batch
  is padded to a multiple of 8 samples, all computed on the same cores. For tests whose subject
  is not the sharding."""
  from vdm_mri import sampling  # pylint: disable=g-import-not-at-top  # after XLA_FLAGS is set
  import jax  # pylint: disable=g-import-not-at-top
  make_mesh = sampling.make_mesh
  monkeypatch.setattr(sampling, "make_mesh", lambda devices=None: make_mesh(
      jax.local_devices()[:1] if devices is None else devices))


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order kept within


def load_config(name: str):
  """configs/<name>.py's get_config()."""
  from vdm_mri.model import load_config_file  # after XLA_FLAGS is set
  return load_config_file(REPO / "configs" / f"{name}.py")


def tiny_config_128():
  """configs/tiny.py at the bundled sample's 128x128 with 8 channels (middle attention at
  16x16): the cheapest model that samples full-size slices."""
  config = load_config("tiny")
  config.model.ch, config.model.ch_mult = 8, (1, 1, 1, 1)
  config.schedule.hidden = 16
  return config


def write_workdir(directory, config):
  """A work dir laid out as train.py writes it (checkpoints/<step>/{state,data}, config.json),
  by the functions it writes it with, holding `config`'s initial train state at step 0; a first
  training step would not move it (the learning rate warms up from 0)."""
  import jax  # pylint: disable=g-import-not-at-top
  from vdm_mri import data, model as model_lib, optim, train  # pylint: disable=g-import-not-at-top
  from vdm_mri import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  model = model_lib.from_config(config)
  tx, _ = optim.make_optimizer(config.optimizer)
  state = train.create_train_state(model, tx, jax.random.key(config.seed))
  size = config.data.image_size
  iterator = data.train_iterator(data.ArraySource(np.zeros((8, size, size), np.uint16)),
                                 global_batch=8, seed=0)
  mngr = workdir_lib.checkpoint_manager(pathlib.Path(directory) / "checkpoints", keep=1)
  workdir_lib.save_checkpoint(mngr, state, iterator)
  mngr.wait_until_finished()
  mngr.close()
  workdir_lib.save_config(config, directory)
  return directory


@pytest.fixture(scope="session")
def shared_train_slices():
  """Real 128x128 training slices in [0, 1] from ../shared/data (skipped when it is absent)."""
  path = SHARED_DATA / "brain_t1w_train.npz"
  if not path.exists():
    pytest.skip(f"real training data not found at {path} (the shared data folder is absent)")
  with np.load(path) as d:
    return d["images"][::50].astype(np.float32) / 4095.0  # [~135, 128, 128]
