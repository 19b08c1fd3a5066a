"""Training loop: checkpoints and metrics, exact resume, device-count invariance, NaN stop, data
errors, the weight-decay mask and the TensorBoard events.

All runs share one tiny configuration (16x16 images, 8 channels, batch 8 = one example per fake
CPU device), so `train.jit_train_step` compiles the 8-device step once for the whole file.
"""

import functools
import io
import json
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image
from jax.sharding import NamedSharding, PartitionSpec as P
from tensorboard.backend.event_processing import event_accumulator

import vdm_mri
from conftest import REPO, load_config
from vdm_mri import data, optim, sampling, train, validation
from vdm_mri import workdir as workdir_lib
from vdm_mri import model as model_lib

NUM_STEPS = 4
TRAIN_KEYS = ("bpd", "prior", "recon", "diffusion", "grad_norm", "learning_rate", "gamma_0",
              "gamma_1", "ema_rate", "steps_per_s", "images_per_s")
EVAL_KEYS = ("bpd", "prior", "recon", "diffusion")


SIZE = 16  # image side: the bundled 128x128 slices reduced by 8x8 means


def _config(data_path, **training):
  config = load_config("tiny")
  config.data.path = str(data_path)
  config.data.image_size = SIZE
  config.model.update(ch=8, ch_mult=(1,))  # one level: the smallest program to compile
  config.schedule.hidden = 16
  config.training.update(batch_size=8, num_steps=NUM_STEPS, log_every=1, eval_every=2,
                         eval_batches=1, checkpoint_every=2, keep_checkpoints=3,
                         sample_every=NUM_STEPS)
  config.sampling.steps = 3
  config.training.update(training)
  return config


def _small_sample():
  """The bundled slices reduced to SIZE x SIZE (means of 8x8 blocks), 12-bit: (images,
  subject, slice_index)."""
  with np.load(vdm_mri.SAMPLE_DATA) as d:
    images, subject, slice_index = d["images"], d["subject"], d["slice_index"]
  f = images.shape[1] // SIZE
  small = images.reshape(-1, SIZE, f, SIZE, f).mean((2, 4)).round().astype(np.uint16)
  return small, subject, slice_index


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """x_train.npz: the 16 bundled slices (at SIZE) and their mirror images (4 batches an epoch);
  x_val.npz: the same slices."""
  path = tmp_path_factory.mktemp("data")
  images, subject, slice_index = _small_sample()
  np.savez(path / "x_train.npz", images=np.concatenate([images, images[:, :, ::-1]]),
           subject=np.concatenate([subject, subject]),
           slice_index=np.concatenate([slice_index, slice_index + 1000]))
  np.savez(path / "x_val.npz", images=images, subject=subject, slice_index=slice_index)
  return path


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
  """An uninterrupted NUM_STEPS run: (work dir, final state on the host)."""
  workdir = tmp_path_factory.mktemp("reference")
  state = train.train_and_evaluate(_config(data_dir), workdir)
  return workdir, jax.device_get(state)


def _hook_steps(monkeypatch, hook):
  """Wraps every jitted train step: hook(step_number, state, batch) -> batch, before it runs."""
  jit_train_step = train.jit_train_step
  count = [0]

  def wrapped(*args):
    step_fn = jit_train_step(*args)

    def hooked(state, batch):
      count[0] += 1
      return step_fn(state, hook(count[0], state, batch))
    return hooked
  monkeypatch.setattr(train, "jit_train_step", wrapped)


def _replicated(tree):
  return jax.device_put(tree, NamedSharding(sampling.make_mesh(jax.devices()), P()))


def _metrics(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _checkpoint_steps(workdir):
  return ocp.CheckpointManager((workdir / "checkpoints").absolute()).all_steps()


# --------------------------------------------------------------------------------------------
def test_run_writes_checkpoints_metrics_and_tensorboard(reference):
  workdir, state = reference
  assert int(state.step) == NUM_STEPS
  assert _checkpoint_steps(workdir) == [2, 4]
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state.params))
  lines = _metrics(workdir)
  train_lines = [l for l in lines if "train/bpd" in l]
  eval_lines = [l for l in lines if "eval/bpd" in l]
  assert [l["step"] for l in train_lines] == [1, 2, 3, 4]
  assert [l["step"] for l in eval_lines] == [2, 4]
  for line in train_lines:
    assert sorted(line) == sorted(["step"] + [f"train/{k}" for k in TRAIN_KEYS])
  for line in eval_lines:
    assert sorted(line) == sorted(["step"] + [f"eval/{k}" for k in EVAL_KEYS])
  values = [v for l in lines for k, v in l.items() if k != "step"]
  assert np.isfinite(values).all()
  assert train_lines[0]["train/learning_rate"] == 0.0  # warm-up starts at 0
  assert 0.0 < train_lines[-1]["train/learning_rate"] < 1e-3
  assert all(5.0 < l["train/bpd"] < 30.0 for l in train_lines)

  # The config that sampling rebuilds the model from, and the sample grid of the last step.
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["model"]["ch"] == 8 and saved["training"]["num_steps"] == NUM_STEPS
  assert [p.name for p in (workdir / "samples").iterdir()] == [f"step_{NUM_STEPS:08d}.png"]
  grid = np.asarray(Image.open(workdir / "samples" / f"step_{NUM_STEPS:08d}.png"))
  assert grid.shape[0] == 4 * (SIZE + 2)  # prior, zero-fill, guided, truth rows
  top = 3 * (SIZE + 2)
  truth_row = grid[top:top + SIZE, 90:90 + SIZE].astype(float) / 255
  np.testing.assert_allclose(truth_row, _small_sample()[0][0] / 4095, atol=1 / 255)

  events = list((workdir / "tb").glob("events.out.tfevents.*"))
  assert len(events) == 1
  scalars = _read_scalars(events[0])
  for line in lines:
    for tag, value in line.items():
      if tag != "step":
        assert scalars[(line["step"], tag)] == np.float32(value)
  # The sample grid is in TensorBoard too, pixel for pixel.
  images = _read_images(events[0])
  assert list(images) == [(NUM_STEPS, "samples")]
  logged = images[(NUM_STEPS, "samples")]  # tensorboardX stores grey as RGB
  for channel in range(logged.shape[-1]):
    np.testing.assert_array_equal(logged[..., channel], grid)


def test_sigterm_saves_and_resume_is_bit_identical(reference, data_dir, tmp_path, monkeypatch):
  def sigterm_at_2(n, state, batch):
    if n == 2:
      os.kill(os.getpid(), signal.SIGTERM)  # arrives during step 2
    return batch

  _hook_steps(monkeypatch, sigterm_at_2)
  with pytest.raises(train.TrainingInterrupted) as stop:
    train.train_and_evaluate(_config(data_dir), tmp_path)
  assert (stop.value.signum, stop.value.step) == (signal.SIGTERM, 2)
  assert _checkpoint_steps(tmp_path) == [2]
  monkeypatch.undo()

  # A run killed at step 3, after logging it and half-way through saving it, leaves a metrics
  # line and Orbax's temporary directory: resume must drop the one and ignore the other.
  junk = tmp_path / "checkpoints" / "3.orbax-checkpoint-tmp-1234" / "state"
  junk.mkdir(parents=True)
  (junk / "garbage").write_bytes(b"\0" * 10)
  with open(tmp_path / "metrics.jsonl", "a", encoding="utf-8") as f:
    f.write(json.dumps({"step": 3, "train/bpd": -1.0}) + "\n")
  state = jax.device_get(train.train_and_evaluate(_config(data_dir), tmp_path))
  jax.tree.map(np.testing.assert_array_equal, state, reference[1])
  lines = _metrics(tmp_path)
  assert [l["step"] for l in lines if "train/bpd" in l] == [1, 2, 3, 4]
  assert all(l["train/bpd"] > 0 for l in lines if "train/bpd" in l)  # the step-3 stub is gone


def test_state_dir_continues_the_run_with_its_parameters_and_data_stream(data_dir, tmp_path,
                                                                         monkeypatch):
  exports = []
  real_export = workdir_lib.export_state
  monkeypatch.setattr(workdir_lib, "export_state", lambda *a, **k: (
      exports.append(k["step"]), real_export(*a, **k))[1])
  first = jax.device_get(train.train_and_evaluate(_config(data_dir, num_steps=4),
                                                  tmp_path / "a", state_dir=tmp_path / "state"))
  assert exports == [2, 4]  # with each checkpoint; step 4 (checkpoint and stop) once
  manifest = json.loads((tmp_path / "state" / "manifest.json").read_text())
  assert manifest["step"] == 4 and manifest["data_seed"] == 0 and manifest["data_state"]
  raw = vdm_mri.pretrained.load_params(tmp_path / "state", raw=True)
  jax.tree.map(np.testing.assert_array_equal, raw, first.params)
  ema = vdm_mri.pretrained.load_params(tmp_path / "state")
  jax.tree.map(np.testing.assert_array_equal, ema, first.ema_params)

  seen = []

  def record(n, state, batch):
    seen.append((int(state.step), jax.device_get(state.params), np.asarray(batch["image"])))
    return batch

  _hook_steps(monkeypatch, record)
  train.train_and_evaluate(_config(data_dir, num_steps=5), tmp_path / "b",
                           init_from=tmp_path / "state")
  assert [s for s, _, _ in seen] == [4]
  jax.tree.map(np.testing.assert_array_equal, seen[0][1], first.params)  # the raw parameters
  # The data stream goes on where it stopped: batch 5 of the run's own stream.
  config = _config(data_dir)
  stream = data.train_iterator([s.train for s in data.find_datasets(config.data.path)],
                               global_batch=8, seed=config.seed)
  expected = [next(stream)["image"] for _ in range(5)][4:]
  for (_, _, got), want in zip(seen, expected):
    np.testing.assert_array_equal(got, want)
  record_file = json.loads((tmp_path / "b" / workdir_lib.WARM_START_FILE).read_text())
  assert record_file["data_seed"] == 0  # a resume of b reads the same stream


def test_same_update_on_one_and_eight_devices(reference, data_dir):
  config = _config(data_dir)
  model = model_lib.from_config(config)
  optimizer = ml_collections.FrozenConfigDict(config.optimizer)
  images = data.read_npz(data_dir / "x_val.npz").images[:8, :, :, None] / data.QUANT_MAX
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    assert len(devices) in (1, 8)
    mesh = sampling.make_mesh(devices)
    step = train.jit_train_step(mesh, model, optimizer, config.loss.num_steps,
                                train.step_options(config)[0])  # 8 devices: the run's program
    state = jax.device_put(reference[1], NamedSharding(mesh, P()))
    batch = {"image": jax.device_put(images.astype(np.float32), NamedSharding(mesh, P("data")))}
    results.append(jax.device_get(step(state, batch)))
  (state_1, metrics_1), (state_8, metrics_8) = results
  for name in ("bpd", "prior", "recon", "diffusion"):
    # (A float32 mean over the batch summed in another order: 1.4e-5 seen at 32x32.)
    np.testing.assert_allclose(metrics_1[name], metrics_8[name], rtol=5e-5, err_msg=name)
  # The gradient norm sums ~1e5 squares in a device-count-dependent order (1.2e-5 seen on an
  # AVX2 CPU).
  np.testing.assert_allclose(metrics_1["grad_norm"], metrics_8["grad_norm"], rtol=5e-5)
  # The score network's update must agree. (γ's gradient is a sum over the batch that nearly
  # cancels, about 1e-4 of the score's, so its float32 summation order shows; Adam then
  # amplifies that for its parameters, as it does on one device for any reordering.)
  update_1 = jax.tree.map(np.subtract, state_1.params["score"], reference[1].params["score"])
  update_8 = jax.tree.map(np.subtract, state_8.params["score"], reference[1].params["score"])
  lr = float(metrics_1["learning_rate"])
  assert lr > 0
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(update_1),
                          jax.tree.leaves(update_8)):
    np.testing.assert_allclose(a, b, atol=1e-3 * lr, rtol=0, err_msg=jax.tree_util.keystr(path))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(reference, data_dir, tmp_path,
                                                       monkeypatch):
  def poison_step_3(n, state, batch):
    return {"image": batch["image"] * np.nan} if n == 3 else batch

  _hook_steps(monkeypatch, poison_step_3)
  npz = data_dir / "x_val.npz"
  config = _config(npz, num_steps=6, log_every=10)  # one .npz file: no eval
  with pytest.raises(train.NonFiniteLoss, match="at step 3 .*last good checkpoint: step 2"):
    train.train_and_evaluate(config, tmp_path)
  assert _checkpoint_steps(tmp_path) == [2]  # step 4 was due, but follows the NaN
  mngr = workdir_lib.checkpoint_manager(tmp_path / "checkpoints", 3)
  iterator = data.train_iterator(data.ArraySource(data.read_npz(npz)), global_batch=8, seed=0)
  restored = workdir_lib.restore_checkpoint(mngr, _replicated(reference[1]), iterator)
  mngr.close()
  assert int(restored.step) == 2
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(restored)))
  assert iterator.get_state() != data.train_iterator(
      data.ArraySource(data.read_npz(npz)), global_batch=8, seed=0).get_state()


def test_missing_data_is_a_one_line_error(tmp_path, monkeypatch):
  monkeypatch.setattr(data.loader, "default_data_dir", lambda: None)
  with pytest.raises(data.DataError, match="python -m vdm_mri.data.prepare"):
    train.train_and_evaluate(_config(""), tmp_path / "run")
  assert not (tmp_path / "run").exists()

  result = subprocess.run(
      [sys.executable, "-m", "vdm_mri.train", "--config=configs/tiny.py",
       f"--workdir={tmp_path / 'run'}", f"--data_dir={tmp_path / 'nowhere'}"],
      cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 2, result.stderr
  assert "Traceback" not in result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and "python -m vdm_mri.data.prepare" in last


def test_weight_decay_skips_biases_norm_scales_and_schedule(reference):
  params = reference[1].params
  mask = optim.decay_mask(params)
  names = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
  assert any("GroupNorm" in k and k.endswith("['scale']") for k in names)
  assert any(k.endswith("['bias']") and np.ndim(x) == 3  # the attention's qkv bias
             for k, x in zip(names, jax.tree.leaves(params)))
  for name, decays in zip(names, jax.tree.leaves(mask)):
    expected = not (name.startswith("['gamma']") or name.endswith(("['bias']", "['scale']")))
    assert decays == expected, name
  # From zero moments and zero gradients, AdamW's update is the decay alone: -lr·wd·p or 0.
  opt = load_config("tiny").optimizer
  opt.warmup_steps = 0  # no warm-up: the full learning rate from step 0
  tx, lr_fn = optim.make_optimizer(opt)
  first_update = jax.jit(lambda p: tx.update(jax.tree.map(jnp.zeros_like, p), tx.init(p), p)[0])
  updates = first_update(params)
  decay = float(lr_fn(0)) * opt.weight_decay
  assert decay == pytest.approx(opt.learning_rate * opt.weight_decay)
  for name, u, p, m in zip(names, jax.tree.leaves(updates), jax.tree.leaves(params),
                           jax.tree.leaves(mask)):
    np.testing.assert_allclose(u, -decay * p if m else 0.0, rtol=1e-6, atol=0, err_msg=name)


def test_parameterless_schedule_trains_state_and_checkpoints(tmp_path):
  """fixed_linear: params["gamma"] == {} must survive the optimiser and a checkpoint."""
  params = {"score": {"Conv_0": {"kernel": np.ones((3, 3, 1, 2), np.float32),
                                 "bias": np.ones((2,), np.float32)}}, "gamma": {}}
  tx, _ = optim.make_optimizer(load_config("tiny").optimizer)
  state = train.TrainState(step=np.int32(3), params=params, ema_params=params,
                           opt_state=tx.init(params), key=np.array([1, 2], np.uint32))
  state = _replicated(state)
  iterator = data.train_iterator(data.ArraySource(np.zeros((8, 4, 4), np.uint16)),
                                 global_batch=8, seed=0)
  mngr = workdir_lib.checkpoint_manager(tmp_path, 1)
  workdir_lib.save_checkpoint(mngr, state, iterator)
  mngr.wait_until_finished()
  restored = workdir_lib.restore_checkpoint(mngr, state, iterator)
  mngr.close()
  assert restored.params["gamma"] == {}
  assert jax.tree.structure(restored) == jax.tree.structure(state)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), jax.device_get(state))


# --------------------------------------------------------------------------------------------
# TensorBoard event files, read with TensorBoard's own reader.
# --------------------------------------------------------------------------------------------
def _accumulator(path) -> event_accumulator.EventAccumulator:
  acc = event_accumulator.EventAccumulator(
      str(path), size_guidance={event_accumulator.SCALARS: 0, event_accumulator.IMAGES: 0})
  acc.Reload()
  return acc


def _read_scalars(path) -> dict:
  """{(step, tag): float32 value} of the scalars of an event file."""
  acc = _accumulator(path)
  return {(e.step, tag): np.float32(e.value) for tag in acc.Tags()["scalars"]
          for e in acc.Scalars(tag)}


def _read_images(path) -> dict:
  """{(step, tag): decoded image array} of the image summaries of an event file."""
  acc = _accumulator(path)
  return {(e.step, tag): np.asarray(Image.open(io.BytesIO(e.encoded_image_string)))
          for tag in acc.Tags()["images"] for e in acc.Images(tag)}


def test_evaluation_batches_span_the_whole_validation_set():
  # 5 subjects x 8 slices, batch 8, 2 eval batches: the first and the last subject, not 0 and 1.
  images = np.repeat(np.arange(5, dtype=np.uint16) * 100, 8)[:, None, None] * np.ones(
      (1, 4, 4), np.uint16)
  source = data.ArraySource(images, subject=np.repeat([f"s{i}" for i in range(5)], 8),
                            slice_index=np.tile(np.arange(8), 5))
  seen = []

  def eval_fn(params, images, valid, key):
    seen.append(int(round(float(images[0, 0, 0, 0]) * 4095 / 100)))
    return {"bpd": jnp.sum(images[..., 0, 0, 0] * valid), "count": jnp.sum(valid)}

  mesh = sampling.make_mesh(jax.devices()[:1])
  validation.evaluate(eval_fn, None, source, batch_size=8, num_batches=2, key=jax.random.key(0),
                 sharding=NamedSharding(mesh, P("data")))
  assert seen == [0, 4]


# --------------------------------------------------------------------------------------------
# EMA with a growing half-life; several data sets; SR validation and the best parameters.
def test_ema_half_life_grows_with_images_seen():
  opt = ml_collections.ConfigDict(dict(ema_rate=0.9999, ema_halflife_images=1000.0,
                                       ema_rampup_ratio=0.1))
  rate = optim.make_ema_rate(opt)
  for step, batch in [(0, 8), (99, 8), (5000, 8), (10**6, 4)]:
    halflife = min(1000.0, 0.1 * (step + 1) * batch)
    # The rate halves the weight of the past every `halflife` images.
    assert float(rate(jnp.int32(step), batch)) ** (halflife / batch) == pytest.approx(0.5, 1e-4)
  assert optim.make_ema_rate(ml_collections.ConfigDict(dict(ema_rate=0.99))) == 0.99


def test_learning_rate_warms_up_then_holds_or_cools_down_to_zero():
  opt = ml_collections.ConfigDict(dict(learning_rate=1e-3, warmup_steps=10))
  constant = optim.learning_rate_schedule(opt)  # no decay_steps (an older config): constant
  assert [float(constant(s)) for s in (0, 5, 10, 10**6)] == pytest.approx([0, 5e-4, 1e-3, 1e-3])
  opt.decay_steps = 20
  cool = optim.learning_rate_schedule(opt)
  # Warm-up unchanged, then a straight line from the peak at step 10 to 0 at step 30, and 0 after.
  assert [float(cool(s)) for s in (5, 10, 15, 20, 29, 30, 500)] == pytest.approx(
      [5e-4, 1e-3, 7.5e-4, 5e-4, 5e-5, 0.0, 0.0], abs=1e-9)
  opt.hold_steps = 5
  hold = optim.learning_rate_schedule(opt)
  # Warm-up, 5 steps at the peak (10 … 15), then the same line shifted by 5 steps.
  assert [float(hold(s)) for s in (5, 10, 15, 20, 25, 34, 35, 500)] == pytest.approx(
      [5e-4, 1e-3, 1e-3, 7.5e-4, 5e-4, 5e-5, 0.0, 0.0], abs=1e-9)
  opt.warmup_steps = 0
  assert [float(optim.learning_rate_schedule(opt)(s)) for s in (0, 5, 15)] == pytest.approx(
      [1e-3, 1e-3, 5e-4])  # starts at the peak
  opt.hold_steps = 0
  assert float(optim.learning_rate_schedule(opt)(0)) == pytest.approx(1e-3)  # starts at the peak
  # The optimiser runs on the schedule: after the cool-down an update moves nothing.
  cfg = load_config("tiny").optimizer
  cfg.update(warmup_steps=0, decay_steps=1, weight_decay=0.0)
  tx, _ = optim.make_optimizer(cfg)
  params = {"w": jnp.ones((3,))}
  state = tx.init(params)
  grads = {"w": jnp.ones((3,))}
  first, state = tx.update(grads, state, params)
  second, _ = tx.update(grads, state, params)
  assert np.abs(first["w"]).min() > 0 and np.abs(second["w"]).max() == 0


def test_cooldown_branch_config_continues_the_long_run_and_ends_at_rate_zero():
  long_run, branch = load_config("brain128_cpu_deep"), load_config("brain128_cpu_cooldown")
  # The same network, data and loss as the run it branches from (its state dir warm-starts it).
  for field in ("model", "schedule", "data", "loss", "training"):
    assert branch[field].to_dict() == long_run[field].to_dict(), field
  lr = optim.learning_rate_schedule(branch.optimizer)
  peak = long_run.optimizer.learning_rate
  assert float(lr(50)) == pytest.approx(peak) and float(lr(400)) == 0.0
  assert float(lr(225)) == pytest.approx(peak / 2)
  # Its EMA forgets the constant-rate weights within the branch: half-life 50 steps of 400.
  rate = optim.make_ema_rate(branch.optimizer)(jnp.int32(17441), branch.training.batch_size)
  assert float(rate) ** 400 < 1e-2


def test_ema_update_uses_the_scheduled_rate():
  opt = ml_collections.ConfigDict(dict(ema_rate=0.5, ema_halflife_images=64.0,
                                       ema_rampup_ratio=0.0))
  config = _config("unused")
  config.data.image_size = 8  # a program of its own (its EMA rate): the smallest one
  config.model.update(ch=4, attn_resolutions=())
  model = model_lib.from_config(config)
  tx, lr_fn = optim.make_optimizer(config.optimizer)
  state = train.create_train_state(model, tx, jax.random.key(0))
  batch = {"image": jnp.full((8, 8, 8, 1), 0.5)}
  step = jax.jit(functools.partial(train.train_step, model=model, tx=tx, lr_fn=lr_fn,
                                   num_steps=10, ema_rate=optim.make_ema_rate(opt)))
  state, _ = step(state, batch)  # EMA != parameters from here on
  new, metrics = step(state, batch)
  rate = 0.5 ** (8 / 64)
  assert float(metrics["ema_rate"]) == pytest.approx(rate, 1e-6)
  e0, p1, e1 = (jax.tree.leaves(t)[3] for t in (state.ema_params, new.params, new.ema_params))
  assert np.abs(e0 - p1).max() > 0
  np.testing.assert_allclose(e1, rate * e0 + (1 - rate) * p1, rtol=1e-5, atol=1e-7)


@pytest.fixture(scope="module")
def two_set_dir(data_dir, tmp_path_factory):
  """Two data sets (a_*, b_*), b's images mirrored, each with train and validation files."""
  path = tmp_path_factory.mktemp("two_sets")
  for split in ("train", "val"):
    with np.load(data_dir / f"x_{split}.npz") as d:
      arrays = dict(d)
    np.savez(path / f"a_{split}.npz", **arrays)
    np.savez(path / f"b_{split}.npz", **{**arrays, "images": arrays["images"][:, ::-1]})
  return path


def test_two_data_sets_sr_validation_and_best_params(two_set_dir, tmp_path, monkeypatch):
  from vdm_mri import pretrained  # pylint: disable=g-import-not-at-top
  scores = iter([0.5, -1.0, 0.75])  # the second validation is worse: best/ keeps step 2
  real_call = validation.SRValidation.__call__

  def scored(self, model, params):
    values = real_call(self, model, params)
    return {**values, "sr/score": next(scores)}
  monkeypatch.setattr(validation.SRValidation, "__call__", scored)
  config = _config(two_set_dir, sample_every=100)
  config.data.weights = "3,1"
  config.sr_eval.update(every=2, per_subject=1, lowres="8x8", steps=2, num_samples=1)
  train.train_and_evaluate(config, tmp_path)

  lines = _metrics(tmp_path)
  evals = [l for l in lines if "eval/bpd" in l]
  assert [l["step"] for l in evals] == [2, 4]
  for name in ("a", "b"):
    assert {f"eval/{name}/{k}" for k in EVAL_KEYS} <= set(evals[0])
  assert evals[0]["eval/bpd"] == pytest.approx(
      (evals[0]["eval/a/bpd"] + evals[0]["eval/b/bpd"]) / 2)
  srs = [l for l in lines if "sr/score" in l]
  assert [l["step"] for l in srs] == [2, 4]
  for name in ("a", "b"):  # 2 subjects x 1 slice each, scored against zero-filling
    line = srs[0]
    sr = f"sr/{name}/8x8"
    assert line[f"{sr}/psnr_gain"] == pytest.approx(line[f"{sr}/psnr"] - line[f"{sr}/zf_psnr"])
    assert 10 < line[f"{sr}/zf_psnr"] < 60 and 0 < line[f"{sr}/ssim"] <= 1
    # The denoising error per band is logged beside it, on the same validation slices.
    errors = [line[f"den/{name}/band{k}/eps_mse"] for k in range(8)]
    assert all(np.isfinite(errors)) and min(errors) > 0
    assert np.isfinite(line[f"den/{name}/diffusion_bpd"])

  best = tmp_path / "best"
  manifest = pretrained.verify(best)
  assert manifest["step"] == 2 and manifest["metrics"]["sr/score"] == 0.5
  assert manifest["images_seen"] == 16
  # The best dir is what `python -m vdm_mri.sample --checkpoint=...` and the package load.
  model = model_lib.from_config(workdir_lib.load_config(best))
  params = workdir_lib.load_params(best, model)
  assert pretrained.param_shapes(params) == pretrained.param_shapes(model.abstract_params())
  # A restarted run continues to compare against the saved best score.
  assert validation.BestBySR(None, tmp_path, None, config).best == 0.5
  # Validating the last checkpoint (step 4, saved between validations) before training: better.
  state = train.train_and_evaluate(config, tmp_path, validate_first=True)
  assert int(state.step) == NUM_STEPS
  manifest = pretrained.verify(best)
  assert manifest["step"] == NUM_STEPS and manifest["metrics"]["sr/score"] == 0.75
  params = workdir_lib.load_params(best, model)

  # Warm start of a new work dir from the best params: step and parameters carried over, a fresh
  # optimiser (its warm-up restarts), and training goes on from there.
  warm = tmp_path / "warm"
  config.sr_eval.every = 0
  config.training.num_steps = NUM_STEPS + 2  # two more steps
  state = train.train_and_evaluate(config.copy_and_resolve_references(), warm,
                                   init_from=str(best))
  assert int(state.step) == NUM_STEPS + 2
  lines = _metrics(warm)
  assert [l["step"] for l in lines if "train/bpd" in l] == [NUM_STEPS + 1, NUM_STEPS + 2]
  assert [l["train/learning_rate"] for l in lines if "train/bpd" in l][0] == 0.0
  config.training.num_steps = NUM_STEPS  # nothing to do: the state is the warm start itself
  state = train.train_and_evaluate(config, tmp_path / "warm2", init_from=str(best))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), params)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.ema_params), params)
