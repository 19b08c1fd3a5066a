"""Several JAX processes: the CLIs' multi-process flags, and real local processes (gloo
collectives over localhost) training and super-resolving exactly as one process does.

The multi-process tests start `python -m vdm_mri.train` / `python -m vdm_mri.sample` as
subprocesses with 1 CPU device each (XLA_FLAGS replaced, not conftest's 8), a free localhost
port as coordinator, and a timeout, so a hung peer fails the test instead of hanging CI.
"""

import json
import os
import socket
import subprocess
import sys
import tempfile

import jax
import numpy as np
import pytest

import vdm_mri
from conftest import FAST_COMPILE, REPO
from vdm_mri import distributed, sample
from vdm_mri import workdir as workdir_lib
from vdm_mri import model as model_lib

TIMEOUT_S = 420


# ---------------------------------------------------------------------------------------------
# Flags.

@pytest.mark.parametrize("kwargs, message", [
    (dict(num_processes=2, process_id=0), "--coordinator_address missing"),
    (dict(coordinator_address="localhost:1234", process_id=0), "--num_processes missing"),
    (dict(coordinator_address="localhost:1234"), "--num_processes, --process_id missing"),
    (dict(coordinator_address="localhost:1234", num_processes=2, process_id=2),
     "ids run from 0 to 1"),
    (dict(coordinator_address="localhost:1234", num_processes=2, process_id=-1),
     "--process_id=-1"),
    (dict(coordinator_address="localhost:1234", num_processes=0, process_id=0),
     "--num_processes=0"),
    (dict(coordinator_address="localhost", num_processes=2, process_id=0), "HOST:PORT"),
    (dict(coordinator_address="localhost:99999", num_processes=2, process_id=0), "HOST:PORT"),
])
def test_bad_flag_combinations_are_named(kwargs, message):
  with pytest.raises(distributed.DistributedError, match=message):
    distributed.cluster_spec(**kwargs)


def test_flag_combinations_that_start_the_runtime():
  assert not distributed.cluster_spec().enabled
  explicit = distributed.cluster_spec(coordinator_address="node001:12355", num_processes=4,
                                      process_id=3)
  assert explicit.enabled and (explicit.num_processes, explicit.process_id) == (4, 3)
  assert distributed.cluster_spec(multi_host=True).enabled  # auto-detected
  # --multi_host with some values given: those override detection, the rest is detected.
  partial = distributed.cluster_spec(multi_host=True, process_id=1)
  assert partial.enabled and partial.coordinator_address is None
  assert distributed.check_address("[::1]:8476") == "[::1]:8476"


def test_clis_reject_a_bad_combination_with_exit_2(tmp_path, capsys):
  bad = ["--coordinator_address=localhost:1234", "--num_processes=2", "--process_id=5"]
  assert sample.main(["sample", "--simulate", "--lowres=32x32",
                      f"--output={tmp_path / 'o.npz'}", *bad]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "ids run from 0 to 1" in err[0]
  proc = subprocess.run([sys.executable, "-m", "vdm_mri.train", "--config=configs/tiny.py",
                         f"--workdir={tmp_path / 'w'}", *bad], cwd=REPO, env=_env(1),
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert proc.stderr.strip().splitlines()[-1].startswith("error: --process_id=5")
  assert not (tmp_path / "w").exists() and not list(tmp_path.iterdir())


def test_process_share_splits_rows_in_order():
  for n, count in [(7, 2), (5, 3), (2, 4), (8, 1)]:
    shares = [distributed.process_share(n, p, count) for p in range(count)]
    rows = sum((list(range(lo, hi)) for lo, hi, _ in shares), [])
    assert rows == list(range(n))
    assert all(hi - lo <= per for lo, hi, per in shares)


# ---------------------------------------------------------------------------------------------
# Real processes.

def _env(devices: int, cache: str = "") -> dict:
  env = dict(os.environ)
  env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE}",
             JAX_PLATFORMS="cpu", VDM_MRI_COMPILATION_CACHE=str(cache))
  return env


@pytest.fixture(scope="module")
def cache(compilation_cache):
  """The run's compilation cache (conftest), empty at its start, for these launches: a resumed
  run loads the programs its first launch compiled, as a user's resumed run does (the test
  compares its numbers with an uninterrupted run's all the same)."""
  return compilation_cache


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _launch(module: str, args: list[str], processes: int, devices: int = 1, cache=""):
  """Run `python -m module args` as `processes` processes (one alone: no distributed flags);
  fails with the output of the first failing process. Each process writes to its own log file
  (a pipe that nobody drains while waiting on a peer could block it and hang both)."""
  port = _free_port()
  extra = lambda i: ([f"--coordinator_address=localhost:{port}", f"--num_processes={processes}",
                      f"--process_id={i}"] if processes > 1 else [])
  logs = [tempfile.TemporaryFile(mode="w+") for _ in range(processes)]
  procs = [subprocess.Popen([sys.executable, "-m", module, *args, *extra(i)], cwd=REPO,
                            env=_env(devices, cache), stdout=log, stderr=subprocess.STDOUT,
                            text=True)
           for i, log in enumerate(logs)]
  try:
    for p in procs:
      p.wait(timeout=TIMEOUT_S)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  outputs = []
  for log in logs:
    log.seek(0)
    outputs.append(log.read())
    log.close()
  for i, (p, out) in enumerate(zip(procs, outputs)):
    assert p.returncode == 0, f"process {i} of {processes} exited {p.returncode}:\n{out[-3000:]}"
  return outputs


@pytest.fixture(scope="module")
def data32(tmp_path_factory):
  """x_train.npz / x_val.npz: the bundled slices reduced to 32x32 (4x4 means), 12-bit."""
  path = tmp_path_factory.mktemp("data32")
  with np.load(vdm_mri.SAMPLE_DATA) as d:
    images, subject, slice_index = d["images"], d["subject"], d["slice_index"]
  small = images.reshape(-1, 32, 4, 32, 4).mean((2, 4)).round().astype(np.uint16)
  np.savez(path / "x_train.npz", images=np.concatenate([small, small[:, :, ::-1]]),
           subject=np.concatenate([subject, subject]),
           slice_index=np.concatenate([slice_index, slice_index + 1000]))
  np.savez(path / "x_val.npz", images=small, subject=subject, slice_index=slice_index)
  return path


def _train_args(data_dir, workdir, num_steps: int, sample_every: int = 4) -> list[str]:
  return ["--config=configs/tiny.py", f"--workdir={workdir}", f"--data_dir={data_dir}",
          "--config.data.image_size=32", "--config.model.ch=8", "--config.model.ch_mult=(1,2)",
          "--config.schedule.hidden=16", f"--config.training.num_steps={num_steps}",
          "--config.training.log_every=1", "--config.training.eval_every=2",
          "--config.training.eval_batches=1", "--config.training.checkpoint_every=2",
          f"--config.training.sample_every={sample_every}", "--config.sampling.steps=2",
          "--config.optimizer.warmup_steps=2"]


def _logged(workdir, name: str) -> dict:
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return {r["step"]: r[name] for r in rows if name in r}


def _ema_params(workdir):
  model = model_lib.from_config(workdir_lib.load_config(workdir))
  return workdir_lib.load_params(workdir, model)


@pytest.fixture(scope="module")
def one_process_run(data32, cache, tmp_path_factory):
  """4 steps in one process with 2 devices (the same mesh size as 2 processes x 1 device); no
  sample grid (the comparison reads the numbers, and the grid uses none of the run's keys)."""
  workdir = tmp_path_factory.mktemp("one_process")
  _launch("vdm_mri.train", _train_args(data32, workdir, 4, sample_every=100), processes=1,
          devices=2, cache=cache)
  return workdir


def test_two_processes_train_and_resume_like_one(data32, one_process_run, cache, tmp_path):
  """2 processes: 2 steps, stop, resume from their checkpoint to step 4; the logged bpd of
  every step, the eval bpd and the final EMA parameters equal one process's uninterrupted run.
  Only process 0 writes metrics and the sample grid."""
  workdir = tmp_path / "two_processes"
  _launch("vdm_mri.train", _train_args(data32, workdir, 2), processes=2, cache=cache)
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == ["2"]
  _launch("vdm_mri.train", _train_args(data32, workdir, 4), processes=2, cache=cache)  # resumes
  # Cross-process sums (gloo) and in-process ones differ in the last bits, and Adam scales the
  # updates of near-zero gradients up to the learning rate: after 3 updates the bpd agree to
  # ~2e-5 on some CPUs (measured on an AMD EPYC), so the tolerance is 1e-4: a wrong shard or
  # batch changes the bpd in its first digits.
  for name in ("train/bpd", "train/grad_norm", "eval/bpd"):
    one, two = _logged(one_process_run, name), _logged(workdir, name)
    assert sorted(two) == sorted(one) and len(one) >= 2, name
    np.testing.assert_allclose([two[s] for s in sorted(two)], [one[s] for s in sorted(one)],
                               rtol=1e-4, err_msg=name)
  # Process 0 sampled the grid on its own devices from the global (replicated) parameters.
  assert [p.name for p in (workdir / "samples").iterdir()] == ["step_00000004.png"]
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  train_steps = [r["step"] for r in rows if "train/bpd" in r]
  assert train_steps == [1, 2, 3, 4]  # one writer: each step logged once
  one, two = _ema_params(one_process_run), _ema_params(workdir)
  for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(two)):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)


def test_two_processes_super_resolve_like_one(data32, one_process_run, cache, tmp_path):
  """The same slices split over 2 processes (5 slices: shares of 3 and 2) give the posterior
  samples of one process; process 0 alone writes the outputs."""
  with np.load(data32 / "x_val.npz") as d:
    np.savez(tmp_path / "five.npz", images=d["images"][:5], subject=d["subject"][:5])
  common = [f"--checkpoint={one_process_run}", "--simulate", f"--input={tmp_path / 'five.npz'}",
            "--lowres=16x16", "--steps=3", "--num_samples=2", "--batch_size=2", "--samples"]
  _launch("vdm_mri.sample", [*common, f"--output={tmp_path / 'one.npz'}"], processes=1,
          cache=cache)
  _launch("vdm_mri.sample", [*common, f"--output={tmp_path / 'two.npz'}"], processes=2,
          cache=cache)
  with np.load(tmp_path / "one.npz") as one, np.load(tmp_path / "two.npz") as two:
    assert one["samples"].shape == (5, 2, 32, 32)
    for key in ("samples", "mean", "std", "residual"):
      np.testing.assert_allclose(two[key], one[key], rtol=1e-5, atol=1e-6, err_msg=key)
  metrics_one = json.loads((tmp_path / "one.metrics.json").read_text())
  metrics_two = json.loads((tmp_path / "two.metrics.json").read_text())
  assert metrics_two["vdm_mean"]["psnr"] == pytest.approx(metrics_one["vdm_mean"]["psnr"],
                                                          abs=1e-4)
  assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [
      "five.npz", "one.metrics.json", "one.npz", "two.metrics.json", "two.npz"]
