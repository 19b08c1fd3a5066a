"""Training loop: `python -m vdm_mri.train --config=configs/brain128.py --workdir=DIR`.

Flags: --config (with --config.a.b=… overrides), --workdir, --data_dir (overrides
config.data.path), --init_from (a params dir to start a new work dir from: the shipped prior
or another run's best/); several processes: --coordinator_address=HOST:PORT --num_processes=N
--process_id=I, or --multi_host to detect them (`vdm_mri.distributed`).

The work dir holds everything a run writes, and a run resumes from it automatically:
  checkpoints/   Orbax: TrainState + data-iterator position, the `keep_checkpoints` latest
  metrics.jsonl  one JSON object per log/eval step: {"step": …, "train/bpd": …, "eval/bpd": …}
  tb/            TensorBoard event files (tensorboardX): the same scalars, and the sample grids

Data parallel: `train_step` is jitted over a 1-D mesh ('data') of all devices, the batch sharded
on it, the state replicated; the loss noise is drawn for the whole global batch inside the jit
(partitionable threefry), so an update does not depend on the device count.

Exit codes of the command: 0 done; 1 non-finite loss (the last good checkpoint is kept);
2 no or bad data, or a bad --init_from params dir (one-line message); 128+signum = 143 (SIGTERM) / 130 (SIGINT) after saving a
checkpoint at the current step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import logging as py_logging
import os
import pathlib
import shutil
import signal
import sys
import threading
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import tqdm
from absl import app, flags, logging
from jax.sharding import NamedSharding, PartitionSpec as P
from ml_collections import config_flags

import vdm_mri
from vdm_mri import (atomic, baselines, data, distributed, figures, kspace, metric_writer,
                     pretrained, sampling, validation)
from vdm_mri import model as model_lib
from vdm_mri import vdm
from vdm_mri.data import augment


class NonFiniteLoss(RuntimeError):
  """The loss or gradient became NaN/Inf; no checkpoint was written after the step named."""


class TrainingInterrupted(RuntimeError):
  """SIGTERM/SIGINT arrived; a checkpoint at the current step was saved first."""

  def __init__(self, signum: int, step: int, state=None):
    super().__init__(f"stopped by {signal.Signals(signum).name} at step {step} (checkpoint saved)")
    self.signum, self.step, self.state = signum, step, state


# --------------------------------------------------------------------------------------------
# State and optimiser.
# --------------------------------------------------------------------------------------------
@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 [], updates done so far
  params: Any  # {"score": …, "gamma": …}
  ema_params: Any  # EMA of params (evaluation and sampling use these)
  opt_state: Any
  key: jax.Array  # uint32 [2], raw key data; step key = fold_in(key, step)


def decay_mask(params):
  """True where AdamW decays: everything but biases, norm scales and the schedule ("gamma")."""
  def decays(path, _):
    return path[0].key != "gamma" and path[-1].key not in ("bias", "scale")
  return jax.tree.map_with_path(decays, params)


def make_optimizer(opt) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Global-norm clipping + AdamW with linear warm-up; `opt` = config.optimizer."""
  lr_fn = (optax.linear_schedule(0.0, opt.learning_rate, opt.warmup_steps) if opt.warmup_steps
           else optax.constant_schedule(opt.learning_rate))
  tx = optax.chain(
      optax.clip_by_global_norm(opt.grad_clip) if opt.grad_clip > 0 else optax.identity(),
      optax.adamw(lr_fn, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay,
                  mask=decay_mask))
  return tx, lr_fn


def optimizer_steps(opt_state):
  """Updates the optimiser has made (its schedule's count): the training step, except after a
  warm start, which begins a fresh optimiser (and learning-rate warm-up) at a later step."""
  counts = [c for _, c in optax.tree_utils.tree_get_all_with_path(opt_state, "count")]
  return counts[-1] if counts else jnp.zeros((), jnp.int32)


def make_ema_rate(opt):
  """The EMA decay per step: `opt.ema_rate`, or with `opt.ema_halflife_images` > 0 an EMA whose
  half-life grows with the images seen (Karras et al. 2022, EDM): half-life
  h = min(ema_halflife_images, ema_rampup_ratio·images seen) images, rate = 0.5^(batch / h).
  A fixed rate such as 0.9999 averages over ~7000 steps and barely moves in a short CPU run;
  the growing half-life always averages over the latest fraction of training."""
  halflife = float(opt.get("ema_halflife_images", 0.0))
  if halflife <= 0:
    return opt.ema_rate
  ratio = float(opt.get("ema_rampup_ratio", 0.05))

  def rate(step, batch: int):
    seen = (step.astype(jnp.float32) + 1.0) * batch
    h = jnp.minimum(halflife, ratio * seen) if ratio > 0 else jnp.float32(halflife)
    return jnp.power(0.5, batch / jnp.maximum(h, 1e-8))
  return rate


def create_train_state(model: model_lib.VDM, tx, key) -> TrainState:
  """Fresh parameters, EMA = parameters, optimiser state; `key` (typed) seeds init and steps."""
  key_init, key_train = jax.random.split(key)
  params = model.init(key_init)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
                    opt_state=tx.init(params), key=jax.random.key_data(key_train))


# --------------------------------------------------------------------------------------------
# Steps (pure) and their jitted, data-parallel forms.
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class StepOptions:
  """What a train step does beyond the bound on whole images; static (one program each)."""

  patch: int = 0  # crop size of this step (0: whole images; needs coordinate channels)
  flip: bool = False  # random left-right flips
  weighting: vdm.Weighting | None = None  # None: the variational bound


def step_options(config) -> tuple[StepOptions, augment.PatchSchedule | None]:
  """The config's step options (`data.flip`, `loss.weighting`) and its patch schedule
  (`data.patch_sizes`, `data.patch_probs`; None: whole images)."""
  kind = config.loss.get("weighting", "elbo")
  if kind not in ("elbo", "sigmoid"):
    raise ValueError(f"loss.weighting {kind!r}: expected 'elbo' or 'sigmoid'")
  weighting = vdm.Weighting(config.loss.sigmoid_bias) if kind == "sigmoid" else None
  patches = augment.parse_patch_schedule(config.data.get("patch_sizes", ""),
                                         config.data.get("patch_probs", ""), config.seed)
  if patches is not None:
    if not config.model.get("coord_channels", False):
      raise ValueError("patch training needs config.model.coord_channels = True")
    if max(patches.sizes) > config.data.image_size:
      raise ValueError(f"patch sizes {patches.sizes} exceed the image size "
                       f"{config.data.image_size}")
  return StepOptions(flip=bool(config.data.get("flip", False)), weighting=weighting), patches


def train_step(state: TrainState, batch, *, model: model_lib.VDM, tx, lr_fn, num_steps: int,
               ema_rate, options: StepOptions = StepOptions()):
  """One AdamW update on the mean loss of the global batch {'image': [B, H, W, 1]}: the bpd
  bound, or `options.weighting`'s objective, on whole images or `options.patch` crops.

  `ema_rate`: a float, or fn(step, global batch) -> rate (`make_ema_rate`)."""
  key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)
  images, coords = batch["image"], None
  if options.flip or options.patch:
    key_flip, key_crop = jax.random.split(jax.random.fold_in(key, 0x5A17))
    if options.flip:
      images = augment.random_flip(key_flip, images)
    if options.patch and options.patch < min(images.shape[1:3]):
      images, coords = augment.random_crop(key_crop, images, options.patch)

  def loss_fn(params):
    terms = model.loss_terms(params, key, images, num_steps=num_steps, train=True,
                             coords=coords, weighting=options.weighting)
    return terms.bpd.mean(), terms

  (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  rate = ema_rate(state.step, batch["image"].shape[0]) if callable(ema_rate) else ema_rate
  ema_params = jax.tree.map(lambda e, p: rate * e + (1.0 - rate) * p, state.ema_params, params)
  grad_norm = optax.tree.norm(grads)
  gamma_01 = model.gamma_fn(state.params)(jnp.array([0.0, 1.0], jnp.float32))
  metrics = {
      "bpd": loss, "prior": terms.prior.mean(), "recon": terms.recon.mean(),
      "diffusion": terms.diffusion.mean(), "grad_norm": grad_norm,
      "learning_rate": lr_fn(optimizer_steps(state.opt_state)), "gamma_0": gamma_01[0], "gamma_1": gamma_01[1],
      "ema_rate": jnp.asarray(rate, jnp.float32),
      "finite": jnp.isfinite(loss) & jnp.isfinite(grad_norm),
  }
  new_state = state.replace(step=state.step + 1, params=params, ema_params=ema_params,
                            opt_state=opt_state)
  return new_state, metrics


def eval_step(params, images, valid, key, *, model: model_lib.VDM, num_steps: int):
  """Sums over the valid examples of the bound's terms (bits/dim), and their count."""
  terms = model.loss_terms(params, key, images, num_steps=num_steps, train=False)
  w = valid.astype(jnp.float32)  # [B]
  sums = {name: jnp.sum(getattr(terms, name) * w)
          for name in ("bpd", "prior", "recon", "diffusion")}
  return {**sums, "count": jnp.sum(w)}


def make_mesh(devices) -> jax.sharding.Mesh:
  """1-D data-parallel mesh over `devices`, axis 'data'."""
  return jax.sharding.Mesh(np.asarray(devices), ("data",))


@functools.lru_cache(maxsize=8)
def jit_train_step(mesh, model: model_lib.VDM, optimizer, num_steps: int,
                   options: StepOptions = StepOptions()):
  """`train_step` jitted on `mesh`: state replicated and donated, batch sharded on 'data'.

  `optimizer`: FrozenConfigDict(config.optimizer). Cached on its (hashable) arguments, so that
  runs in one process (tests, benchmarks) trace and compile once (once per patch size).
  """
  tx, lr_fn = make_optimizer(optimizer)
  step = functools.partial(train_step, model=model, tx=tx, lr_fn=lr_fn, num_steps=num_steps,
                           ema_rate=make_ema_rate(optimizer), options=options)
  replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  return jax.jit(step, in_shardings=(replicated, sharded), out_shardings=(replicated, replicated),
                 donate_argnums=0)


@functools.lru_cache(maxsize=8)
def jit_eval_step(mesh, model: model_lib.VDM, num_steps: int):
  """`eval_step` jitted on `mesh`: params replicated, images and mask sharded on 'data'."""
  replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  return jax.jit(functools.partial(eval_step, model=model, num_steps=num_steps),
                 in_shardings=(replicated, sharded, sharded, replicated),
                 out_shardings=replicated)


def make_global_batch(local, sharding):
  """Per-process host arrays (pytree) -> global jax.Arrays sharded by `sharding`."""
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local)


def evaluate(eval_fn, params, source, *, batch_size: int, num_batches: int, key,
             sharding) -> dict:
  """Mean bits/dim (and terms) over `num_batches` validation batches spread evenly over the
  ordered validation pass (so every subject is represented, not just the first), fixed keys."""
  local = batch_size // jax.process_count()
  n_total = max(1, math.ceil(len(source) / batch_size))
  wanted = set(np.linspace(0, n_total - 1, min(num_batches, n_total)).round().astype(int))
  totals = None
  for i, batch in enumerate(data.eval_batches(source, batch_size=local)):
    if i > max(wanted):
      break
    if i not in wanted:
      continue
    images, valid = make_global_batch((batch["image"], batch["valid"]), sharding)
    sums = eval_fn(params, images, valid, jax.random.fold_in(key, i))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  count = totals.pop("count")
  return {f"eval/{k}": float(v / count) for k, v in totals.items()}


# reported at the log step, the rest averaged
def evaluate_sets(eval_fn, params, *, sets: dict, **kwargs) -> dict:
  """`evaluate` on each validation set: 'eval/bpd', … for one set; 'eval/<name>/bpd', … and
  their mean over sets as 'eval/bpd', … for several."""
  if len(sets) == 1:
    return evaluate(eval_fn, params, next(iter(sets.values())), **kwargs)
  out, per_set = {}, []
  for name, source in sets.items():
    values = evaluate(eval_fn, params, source, **kwargs)
    per_set.append(values)
    out.update({k.replace("eval/", f"eval/{name}/", 1): v for k, v in values.items()})
  out.update({k: float(np.mean([v[k] for v in per_set])) for k in per_set[0]})
  return out


def make_sr_validation(val_sets: dict, cfg, key) -> validation.SRValidation:
  """The fixed SR validation subset of `config.sr_eval`: `per_subject` slices of every subject
  of every validation set."""
  subsets = {}
  for name, source in val_sets.items():
    batch = next(iter(data.eval_batches(source, batch_size=len(source), process_index=0,
                                        process_count=1)))
    idx = validation.pick_slices(batch["subject"], cfg.per_subject)
    subsets[name] = (batch["image"][idx, ..., 0], batch["subject"][idx])
  lowres = [tuple(int(v) for v in item.strip().split("x")) for item in cfg.lowres.split(",")]
  return validation.SRValidation(subsets, lowres=lowres, steps=cfg.steps,
                                 num_samples=cfg.num_samples, batch_size=cfg.batch_size, key=key,
                                 sampler=cfg.get("sampler", "paper"), eta=cfg.get("eta", 0.85),
                                 t_start=cfg.get("t_start", 1.0))


class BestBySR:
  """Runs the SR validation, logs it, and keeps the EMA parameters with the best "sr/score" as
  a params dir in workdir/best/ (`vdm_mri.pretrained`: msgpack parameters, config, manifest
  with checksums and the metrics; `python -m vdm_mri.sample --checkpoint=WORKDIR/best`)."""

  def __init__(self, sr: validation.SRValidation, workdir: pathlib.Path, writer, config,
               bands: validation.DenoisingBands | None = None):
    """`bands`: also log the held-out denoising error per noise band (den/…) each time."""
    self.sr, self.dir, self.writer = sr, pathlib.Path(workdir) / "best", writer
    self.config, self.bands = config, bands
    self.best = self._saved_score()

  def _saved_score(self) -> float:
    if not pretrained.is_params_dir(self.dir):
      return -math.inf
    return float(pretrained.read_manifest(self.dir).get("metrics", {}).get("sr/score", -math.inf))

  def __call__(self, step: int, model, params):
    start = time.perf_counter()
    values = {**self.sr(model, params), **self.sr.baseline_values()}
    values["sr/seconds"] = time.perf_counter() - start
    if self.bands is not None:
      values.update(self.bands(model, params))
    self.writer.write(step, values)
    logging.info("step %d: SR validation score %.3f dB over zero-filling (best %.3f), %.0f s",
                 step, values["sr/score"], self.best, values["sr/seconds"])
    if values["sr/score"] > self.best:
      self.best = values["sr/score"]
      pretrained.export(self.dir, params, self.config, step=step,
                        images_seen=step * self.config.training.batch_size, metrics=values)


_LAST = ("learning_rate", "gamma_0", "gamma_1", "ema_rate")


def summarise(history: list[dict], first_step: int) -> dict:
  """Host copies of per-step device metrics -> {'train/…': mean over the steps}.

  Raises NonFiniteLoss naming the first step (1-based update count) whose loss or gradient
  norm is not finite.
  """
  history = jax.device_get(history)
  finite = np.array([h["finite"] for h in history])
  if not finite.all():
    bad = first_step + int(np.argmin(finite))
    raise NonFiniteLoss(f"non-finite loss or gradient at step {bad} (bpd "
                        f"{float(history[bad - first_step]['bpd'])}); training stopped")
  names = [k for k in history[0] if k != "finite"]
  return {f"train/{k}": float(history[-1][k] if k in _LAST else np.mean([h[k] for h in history]))
          for k in names}


# --------------------------------------------------------------------------------------------
# Data, checkpoints, signals.
# --------------------------------------------------------------------------------------------
NO_DATA = ("no training data: config.data.path and --data_dir are empty and there is no "
           "<repo>/../shared/data; prepare data with: python -m vdm_mri.data.prepare "
           "--source=<slice .npz files or a folder of NIfTI volumes> --data_dir=DIR, then pass "
           "--data_dir=DIR")


def open_data(path: str) -> list[data.DataSet]:
  """The data sets of `path` ("" = `data.default_data_dir()`; one or several comma-separated
  slice .npz files, TFDS builds or folders: `data.find_datasets`). A single .npz file is
  training data only; ../shared/data holds two sets (skull-stripped and with skull)."""
  if not path:
    where = data.default_data_dir()
    if where is None:
      raise data.DataError(NO_DATA)
    path = str(where)
  sets = data.find_datasets(path)
  for s in sets:
    if s.validation is None:
      logging.warning("data set %s has no validation split: it is not evaluated", s.name)
  return sets


def checkpoint_manager(directory: pathlib.Path, keep: int) -> ocp.CheckpointManager:
  """Async Orbax manager keeping the `keep` latest steps; each step is finalised atomically."""
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                         enable_async_checkpointing=True)
  return ocp.CheckpointManager(directory.absolute(), options=options)


def save_checkpoint(mngr, state: TrainState, iterator):
  mngr.save(int(state.step), args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), data=data.checkpoint_args(iterator)))


def restore_checkpoint(mngr, state: TrainState, iterator, step: int | None = None):
  """The state at `step` (default: latest) with `state`'s shapes and shardings; the iterator is
  moved to the saved data position in place."""
  step = mngr.latest_step() if step is None else step
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
  restored = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract),
      data=data.checkpoint_args(iterator, restore=True)))
  return restored.state


@contextlib.contextmanager
def stop_on_signals():
  """Within the block, SIGTERM/SIGINT append their number to the yielded list (the loop then
  saves and stops); the same signal a second time acts as it would outside the block."""
  received: list[int] = []
  if threading.current_thread() is not threading.main_thread():
    yield received
    return

  def handler(signum, _):
    if signum in received:
      signal.signal(signum, previous[signum])
      signal.raise_signal(signum)
      return
    logging.warning("received %s: saving a checkpoint at the end of this step, then stopping "
                    "(send it again to stop at once)", signal.Signals(signum).name)
    received.append(signum)

  previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    yield received
  finally:
    for s, h in previous.items():
      signal.signal(s, h)


def stop_requested(signals: list[int], check_all: bool) -> bool:
  """Whether a signal asks to stop now. Several processes must agree (a collective that waits
  for the running step), so they only compare notes when `check_all`."""
  if jax.process_count() == 1:
    return bool(signals)
  if not check_all:
    return False
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(multihost_utils.process_allgather(np.array(bool(signals))).any())


# --------------------------------------------------------------------------------------------
# Config and sample grids in the work dir.
# --------------------------------------------------------------------------------------------
def save_config(config, workdir: pathlib.Path):
  """workdir/config.json (what `python -m vdm_mri.sample --checkpoint=workdir` rebuilds from)."""
  atomic.write_text(workdir / "config.json", config.to_json_best_effort(indent=2))


def _first_images(source, n: int) -> np.ndarray:
  """The first n images of a source as [n, H, W] float32 in [0, 1]."""
  batch = next(iter(data.eval_batches(source, batch_size=n, process_index=0, process_count=1)))
  return np.asarray(batch["image"][..., 0], np.float32)


def write_sample_grid(step: int, params, *, model: model_lib.VDM, images: np.ndarray, key, cfg,
                      workdir: pathlib.Path, writer=None):
  """workdir/samples/step_N.png (and the image "samples" in TensorBoard): prior samples, and 4x
  (H/4 x W/4 k-space centre) guided reconstructions of fixed validation images beside
  zero-filling and the ground truth."""
  full = images.shape[1:]
  y0 = kspace.measure(jnp.asarray(images), (full[0] // 4, full[1] // 4))
  kwargs = dict(num_steps=cfg.steps, batch_size=len(images))
  guided = sampling.posterior_samples(model, params, y0, key=key, num_samples=1, lam=cfg.lam,
                                      final_projection=cfg.final_projection, **kwargs)
  prior = sampling.prior_samples(model, params, key=jax.random.fold_in(key, 1),
                                 num=len(images), **kwargs)
  rows = {"prior": prior, "zero-fill": np.asarray(baselines.zero_fill(y0, full)),
          "guided 4x": guided.mean, "truth": images}
  image = figures.grid(rows)
  path = figures.save_png(image, workdir / "samples" / f"step_{step:08d}.png")
  if writer is not None:
    writer.write_image(step, "samples", np.asarray(image))
  logging.info("wrote %s", path)


def host_copy(params):
  """Numpy copies of replicated parameters, also of arrays that span other processes' devices
  (process 0 samples the grids and the SR validation on its own devices)."""
  return jax.tree.map(lambda a: np.asarray(a.addressable_data(0)), params)


# --------------------------------------------------------------------------------------------
# The loop.
# --------------------------------------------------------------------------------------------
def warm_start(state: TrainState, params_dir, model: model_lib.VDM, tx) -> TrainState:
  """`state` with parameters and EMA from a params dir (`vdm_mri.pretrained`, e.g. the shipped
  prior or a work dir's best/), its step count from the manifest, and a fresh optimiser state
  (so the learning-rate warm-up runs again). A state dir also gives the raw parameters (else
  they start as the EMA). A network with coordinate channels starts from one without them
  (zero weights on the new inputs). Raises pretrained.PretrainedError."""
  ema = jax.tree.map(jnp.asarray, pretrained.load_params(params_dir, model,
                                                         add_input_channels=True))
  params = ema
  if pretrained.is_state_dir(params_dir):
    params = jax.tree.map(jnp.asarray, pretrained.load_params(
        params_dir, model, add_input_channels=True, raw=True))
  step = int(pretrained.read_manifest(params_dir).get("step", 0))
  return state.replace(step=jnp.asarray(step, jnp.int32), params=params, ema_params=ema,
                       opt_state=tx.init(params))


WARM_START_FILE = "warm_start.json"
"""In a work dir started by --init_from: where it started and its data order (seed, position),
so that a resume reads the same stream."""


def _data_order(workdir: pathlib.Path, config, init_from, step: int) -> tuple[int, dict | None]:
  """(data seed, iterator state to start from or None) of this run, recorded in the work dir
  at its start: config.seed for a fresh run; config.seed + step for a warm start (a new order),
  or a state dir's own seed and position (the same stream continues)."""
  path = workdir / WARM_START_FILE
  if path.is_file():
    record = json.loads(path.read_text())
    return int(record["data_seed"]), None
  if not init_from:
    return int(config.seed), None
  manifest = pretrained.read_manifest(init_from)
  if "data_seed" in manifest:
    seed, position = int(manifest["data_seed"]), manifest.get("data_state")
  else:
    seed, position = int(config.seed) + step, None
  if distributed.is_primary():
    workdir.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, json.dumps({"from": str(init_from), "step": step, "data_seed": seed,
                                    "data_state": position}, indent=2) + "\n")
  return seed, position


def export_state(directory, state: TrainState, config, *, data_seed: int, data_state,
                 **info) -> pathlib.Path:
  """The run's resumable state as a state dir (pretrained module doc: EMA and raw parameters,
  step, data seed and position; no optimiser moments), replacing `directory` as a whole: the
  new dir is written beside it and renamed into place, so an interrupted export leaves the old
  one intact."""
  directory = pathlib.Path(directory)
  tmp = directory.with_name(f".{directory.name}.new")
  old = directory.with_name(f".{directory.name}.old")
  for leftover in (tmp, old):
    if leftover.exists():
      shutil.rmtree(leftover)
  step = int(state.step)
  pretrained.export(tmp, host_copy(state.ema_params), config,
                    raw_params=host_copy(state.params), step=step,
                    images_seen=step * config.training.batch_size, data_seed=data_seed,
                    data_state=data_state, **info)
  if directory.exists():
    os.replace(directory, old)
  os.replace(tmp, directory)
  if old.exists():
    shutil.rmtree(old)
  return directory


def train_and_evaluate(config, workdir, init_from: str | None = None,
                       validate_first: bool = False, state_dir: str | None = None) -> TrainState:
  """Train `config` in `workdir` (resuming from its latest checkpoint); returns the final state.

  `init_from`: a params dir to start from when the work dir has no checkpoint yet (see
  `warm_start`); ignored once the run has checkpoints. `validate_first`: run the SR validation
  (and keep best/) on the starting state before any step, e.g. to score the checkpoint that a
  SIGTERM saved between validations (with num_steps = that step, nothing else runs).
  `state_dir`: at every stop (done or interrupted) the resumable state is exported there
  (`export_state`; one process only).

  Raises data.DataError (no/bad data), NonFiniteLoss, TrainingInterrupted (after saving).
  """
  workdir = pathlib.Path(workdir)
  sets = open_data(config.data.path)
  weights = data.parse_weights(config.data.get("weights", ""), len(sets))
  model = model_lib.from_config(config)
  tx, _ = make_optimizer(config.optimizer)
  mesh = make_mesh(jax.devices())
  if config.training.batch_size % mesh.size:
    raise ValueError(f"batch_size {config.training.batch_size} is not divisible by the "
                     f"{mesh.size} devices")

  key_state, key_eval = jax.random.split(jax.random.key(config.seed))
  state = create_train_state(model, tx, key_state)
  mngr = checkpoint_manager(workdir / "checkpoints", config.training.keep_checkpoints)
  if mngr.latest_step() is None and init_from:
    state = warm_start(state, init_from, model, tx)
    logging.info("warm start from %s at step %d (fresh optimiser state)", init_from,
                 int(state.step))
  state = jax.device_put(jax.device_get(state), NamedSharding(mesh, P()))
  # A warm start continues the step count; its data order is a new one (seed + step), or a
  # state dir's own; either is recorded in the work dir, so a resume reads the same stream.
  data_seed, position = _data_order(workdir, config, init_from if mngr.latest_step() is None
                                    else None, int(state.step))
  iterator = data.train_iterator([s.train for s in sets], weights=weights,
                                 global_batch=config.training.batch_size, seed=data_seed)
  if position is not None and mngr.latest_step() is None:
    iterator.set_state(position)
  logging.info("training data: %s", ", ".join(
      f"{s.name} ({len(s.train)} slices{'' if weights is None else f', weight {w:g}'})"
      for s, w in zip(sets, weights or [None] * len(sets))))
  if mngr.latest_step() is not None:
    state = restore_checkpoint(mngr, state, iterator)
    logging.info("restored checkpoint step %d from %s; data iterator state %s",
                 int(state.step), mngr.directory, iterator.get_state())
  writer = metric_writer.MetricWriter(workdir, resume_step=int(state.step),
                        enabled=distributed.is_primary())
  val_sets = {s.name: s.validation for s in sets if s.validation is not None}
  sample_fn = sr_fn = None
  if distributed.is_primary():  # sampling runs on this process's devices only
    save_config(config, workdir)
    first = next(iter(val_sets.values()), sets[0].train)
    sample_fn = functools.partial(
        write_sample_grid, model=model, images=_first_images(first, 4),
        key=jax.random.fold_in(key_eval, 1), cfg=config.sampling, workdir=workdir,
        writer=writer)
    sr_cfg = config.get("sr_eval")
    if sr_cfg is not None and sr_cfg.every > 0 and val_sets:
      sr = make_sr_validation(val_sets, sr_cfg, jax.random.fold_in(key_eval, 2))
      bands = validation.DenoisingBands(
          {case.name.split("/")[0]: case.images for case in sr.cases}, gamma_min=model.gamma_min,
          gamma_max=model.gamma_max, bits=model.bits, key=jax.random.fold_in(key_eval, 3))
      sr_fn = BestBySR(sr, workdir, writer, config, bands)
  options, patches = step_options(config)
  optimizer = ml_collections.FrozenConfigDict(config.optimizer)

  def step_fn(state, batch, step: int):
    opts = options if patches is None else dataclasses.replace(
        options, patch=patches.size_for_step(step))
    return jit_train_step(mesh, model, optimizer, config.loss.num_steps, opts)(state, batch)
  sharded = NamedSharding(mesh, P("data"))
  eval_fn = None
  if val_sets:
    eval_fn = functools.partial(
        evaluate_sets, jit_eval_step(mesh, model, config.loss.num_steps), sets=val_sets,
        batch_size=config.training.batch_size, num_batches=config.training.eval_batches,
        key=key_eval, sharding=sharded)
  if validate_first and sr_fn is not None:
    sr_fn(int(state.step), model, host_copy(state.ema_params))
  final = None
  try:
    with stop_on_signals() as signals:
      state = final = _loop(state, config.training, step_fn, iterator, sharded, eval_fn, mngr,
                            writer, signals, sample_fn, sr_fn, model=model,
                            sr_every=config.sr_eval.every if sr_fn else 0)
  except NonFiniteLoss as e:
    mngr.wait_until_finished()
    raise NonFiniteLoss(f"{e}; last good checkpoint: step {mngr.latest_step()} in "
                        f"{mngr.directory}") from None
  except TrainingInterrupted as e:
    final = e.state
    raise
  finally:
    if state_dir and final is not None and jax.process_count() == 1:
      export_state(state_dir, final, config, data_seed=data_seed,
                   data_state=iterator.get_state())
      logging.info("resumable state at step %d exported to %s", int(final.step), state_dir)
    mngr.wait_until_finished()
    mngr.close()
    writer.close()
  logging.info("done: step %d; checkpoints in %s", int(state.step), mngr.directory)
  return state


def _loop(state, cfg, step_fn, iterator, sharding, eval_fn, mngr, writer, signals,
          sample_fn=None, sr_fn=None, *, model=None, sr_every: int = 0) -> TrainState:
  """Steps until cfg.num_steps with periodic logs, evaluations and checkpoints."""
  step = int(state.step)
  history, tick = [], (time.perf_counter(), step)
  bar = tqdm.tqdm(total=cfg.num_steps, initial=step, unit="step", dynamic_ncols=True,
                  disable=None if writer.enabled else True)  # None: off when not a terminal
  with bar:
    while step < cfg.num_steps:
      state, metrics = step_fn(state, make_global_batch(next(iterator), sharding), step)
      step += 1
      history.append(metrics)
      bar.update()
      stopping = stop_requested(signals, check_all=step % cfg.log_every == 0)
      due_eval = eval_fn is not None and step % cfg.eval_every == 0
      due_save = step % cfg.checkpoint_every == 0 or step == cfg.num_steps or stopping
      flush = step % cfg.log_every == 0 or due_eval or due_save
      if flush:
        values = summarise(history, step - len(history) + 1)  # NonFiniteLoss: nothing saved
        values["train/steps_per_s"] = (step - tick[1]) / (time.perf_counter() - tick[0])
        values["train/images_per_s"] = values["train/steps_per_s"] * cfg.batch_size
        writer.write(step, values)
        bar.set_postfix(bpd=f"{values['train/bpd']:.4f}")
        history = []
      if due_eval:
        writer.write(step, eval_fn(state.ema_params))
      if sample_fn is not None and step % cfg.sample_every == 0:
        sample_fn(step, host_copy(state.ema_params))
      if sr_fn is not None and step % sr_every == 0:
        sr_fn(step, model, host_copy(state.ema_params))
      if due_save:
        save_checkpoint(mngr, state, iterator)
      if stopping:
        raise TrainingInterrupted(signals[0], step, state)
      if flush:  # the next interval times training only
        tick = (time.perf_counter(), step)
  return state


# --------------------------------------------------------------------------------------------
# Command line.
# --------------------------------------------------------------------------------------------
def define_flags():
  """The command's flags (defined only when run as a command, so importing defines none)."""
  config_flags.DEFINE_config_file("config", None, "configuration file (configs/*.py)")
  flags.DEFINE_string("workdir", None, "work directory: checkpoints, metrics; resumed from")
  flags.DEFINE_string("data_dir", None, "data directory or slice .npz file (overrides "
                      "config.data.path)")
  distributed.define_flags(flags.FLAGS)
  flags.DEFINE_string("init_from", None, "params dir (manifest.json: the shipped prior "
                      "vdm_mri/pretrained/…, or WORKDIR/best) to start a new work dir from; "
                      "ignored when the work dir has checkpoints")
  flags.DEFINE_string("state_dir", None, "at every stop, export the resumable state (EMA and "
                      "raw parameters, step, data position) to this dir, replacing it; "
                      "--init_from=STATE_DIR continues the run on another machine")
  flags.DEFINE_bool("validate_first", False, "run the SR validation on the restored state "
                    "before training (keeps best/ if it is the best so far)")
  flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries(py_logging.Filter):
  """Drops INFO records from Orbax (dozens per checkpoint); warnings and errors pass."""

  def filter(self, record):
    return record.levelno >= py_logging.WARNING or "orbax" not in record.pathname


def main(argv):
  logging.get_absl_handler().addFilter(_QuietLibraries())
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  flag_values = flags.FLAGS
  try:
    distributed.initialize_from_flags(flag_values)  # before any other JAX call
  except distributed.DistributedError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  vdm_mri.enable_compilation_cache()
  config = flag_values.config
  if flag_values.data_dir is not None:
    config.data.path = flag_values.data_dir
  try:
    train_and_evaluate(config, flag_values.workdir, init_from=flag_values.init_from,
                       validate_first=flag_values.validate_first,
                       state_dir=flag_values.state_dir)
  except (data.DataError, pretrained.PretrainedError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except NonFiniteLoss as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  except TrainingInterrupted as e:
    logging.warning("%s", e)
    sys.exit(128 + e.signum)


if __name__ == "__main__":
  define_flags()
  app.run(main)
