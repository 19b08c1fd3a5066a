"""The on-disk layout of a run: work dirs and params dirs, read and written in one place.

A *work dir* is what `python -m vdm_mri.train --workdir=DIR` writes and resumes from:

  checkpoints/<step>/  Orbax: state (TrainState) and data (the data iterator's position)
  config.json          the training config (what `model.from_config` rebuilds the model from)
  best/                a params dir: the EMA parameters with the best SR validation score
  warm_start.json      started by --init_from: where from, and the data order (seed, position)
  metrics.jsonl, tb/, samples/   logs (metric_writer, validation)

A *params dir* (`manifest.json`, `ema_params.msgpack`, `config.json`: the format of
`vdm_mri.pretrained`) is an exported prior: a work dir's best/, the shipped prior `DEFAULT`, or
a state dir (raw parameters and the data position too). Everything that loads a prior — the
command line, the Python API, the experiments and the benchmarks — goes through `resolve`,
`load_config` and `load_params`, which take either kind of directory. Problems raise
`CheckpointError` with a one-line message (the commands exit with code 2).

A training run starts with `start_run` (resume from the latest checkpoint with the data
position, or `warm_start` from a params dir, or fresh) and exports its resumable state with
`StateExport` (a state dir: `export_state`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pathlib
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from vdm_mri import atomic, distributed, pretrained
from vdm_mri.data import loader

CHECKPOINTS, CONFIG_FILE, BEST = "checkpoints", "config.json", "best"
WARM_START_FILE = "warm_start.json"

DEFAULT: pathlib.Path | None = (pretrained.DEFAULT if pretrained.is_params_dir(pretrained.DEFAULT)
                                else None)
"""The prior loaded when no path is given: the one shipped in the package (None if absent)."""


class CheckpointError(pretrained.PretrainedError):
  """A work dir or params dir that is missing, unreadable or does not fit its config."""


@contextlib.contextmanager
def _as_checkpoint_error():
  try:
    yield
  except CheckpointError:
    raise
  except pretrained.PretrainedError as e:
    raise CheckpointError(str(e)) from e


# --------------------------------------------------------------------------------------------
# Reading a prior (work dir or params dir).
# --------------------------------------------------------------------------------------------
def resolve(path=None) -> pathlib.Path:
  """The absolute directory to load: `path`, else `DEFAULT` (the one place for a default)."""
  path = path or DEFAULT
  if path is None:
    raise CheckpointError("no --checkpoint given and no bundled pretrained model in "
                          f"{pretrained.DEFAULT}; pass --checkpoint=WORKDIR (a work dir written "
                          "by python -m vdm_mri.train, or its best/ params dir)")
  path = pathlib.Path(path)
  if not path.is_dir():
    raise CheckpointError(f"--checkpoint {path}: no such directory")
  return path.absolute()  # Orbax's metadata reader fails on relative paths


def load_config(directory, config=None) -> ml_collections.ConfigDict:
  """`config` if given, else the config.json of the work dir or params dir (verified)."""
  if config is not None:
    return config
  directory = pathlib.Path(directory)
  if pretrained.is_params_dir(directory):
    with _as_checkpoint_error():
      return pretrained.load_config(directory)
  path = directory / CONFIG_FILE
  if not path.is_file():
    raise CheckpointError(f"{path} not found; pass --config=configs/<the training config>.py")
  try:
    return ml_collections.ConfigDict(pretrained.tuples_from_json(json.loads(path.read_text())))
  except (ValueError, TypeError) as e:
    raise CheckpointError(f"{path}: not a readable config ({e})") from e


def save_config(config, directory):
  """DIR/config.json (what `load_config` rebuilds the model from)."""
  atomic.write_text(pathlib.Path(directory) / CONFIG_FILE, config.to_json_best_effort(indent=2))


def latest_step(checkpoints) -> int:
  """The newest complete step in an Orbax checkpoints/ dir."""
  checkpoints = pathlib.Path(checkpoints)
  steps = [int(p.name) for p in checkpoints.glob("*") if p.name.isdigit()
           and (p / "state").is_dir()] if checkpoints.is_dir() else []
  if not steps:
    raise CheckpointError(f"{checkpoints}: no Orbax checkpoint (expected checkpoints/<step>/state)")
  return max(steps)


@contextlib.contextmanager
def _quiet_absl():
  level = logging.get_verbosity()
  logging.set_verbosity(logging.ERROR)
  try:
    yield
  finally:
    logging.set_verbosity(level)


def load_params(directory, model, *, add_input_channels: bool = False, raw: bool = False):
  """The EMA parameters (numpy) of a params dir (checksums verified; `raw`: a state dir's raw
  parameters; `add_input_channels`: see `pretrained.load_params`), or of a work dir's latest
  checkpoint; checked against `model`'s parameter shapes (None: not checked, params dir only)."""
  directory = pathlib.Path(directory)
  if pretrained.is_params_dir(directory):
    with _as_checkpoint_error():
      return pretrained.load_params(directory, model, add_input_channels=add_input_channels,
                                    raw=raw)
  checkpoints = directory / CHECKPOINTS
  step = latest_step(checkpoints)
  state_dir = checkpoints / str(step) / "state"
  try:
    with _quiet_absl():  # Orbax warns that the item dir has no step metadata: expected here
      saved = ocp.PyTreeCheckpointer().metadata(state_dir).item_metadata["ema_params"]
  except Exception as e:  # Orbax raises many types for unreadable checkpoints
    raise CheckpointError(f"{state_dir}: cannot read checkpoint metadata ({type(e).__name__}: "
                          f"{e})".splitlines()[0]) from e
  expected = model.abstract_params()
  want, found = pretrained.param_shapes(expected), pretrained.param_shapes(saved)
  for path in sorted(set(want) | set(found)):
    if want.get(path) != found.get(path):
      raise CheckpointError(f"checkpoint {state_dir} does not match the config: {path}: model "
                            f"{want.get(path)} vs checkpoint {found.get(path)}")
  args = ocp.args.PyTreeRestore(
      item={"ema_params": expected}, partial_restore=True,
      restore_args={"ema_params": jax.tree.map(
          lambda _: ocp.RestoreArgs(restore_type=np.ndarray), expected)})
  with ocp.CheckpointManager(checkpoints.absolute()) as mngr:
    restored = mngr.restore(step, args=ocp.args.Composite(state=args))
  return restored.state["ema_params"]


# --------------------------------------------------------------------------------------------
# Training checkpoints.
# --------------------------------------------------------------------------------------------
def checkpoint_manager(directory, keep: int) -> ocp.CheckpointManager:
  """Async Orbax manager of `directory` (a work dir's checkpoints/) keeping the `keep` latest
  steps; each step is finalised atomically."""
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                         enable_async_checkpointing=True)
  return ocp.CheckpointManager(pathlib.Path(directory).absolute(), options=options)


def save_checkpoint(mngr, state, iterator):
  """`state` (a TrainState; its step names the checkpoint) and the data iterator's position."""
  mngr.save(int(state.step), args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), data=loader.checkpoint_args(iterator)))


def restore_checkpoint(mngr, state, iterator, step: int | None = None):
  """The state at `step` (default: latest) with `state`'s shapes and shardings; the iterator is
  moved to the saved data position in place."""
  step = mngr.latest_step() if step is None else step
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
  restored = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract),
      data=loader.checkpoint_args(iterator, restore=True)))
  return restored.state


# --------------------------------------------------------------------------------------------
# best/, warm starts and state dirs.
# --------------------------------------------------------------------------------------------
def best_score(directory) -> float:
  """The "sr/score" recorded in the params dir DIR/best/ (-inf when there is none)."""
  best = pathlib.Path(directory) / BEST
  if not pretrained.is_params_dir(best):
    return -math.inf
  return float(pretrained.read_manifest(best).get("metrics", {}).get("sr/score", -math.inf))


def save_best(directory, params, config, *, step: int, metrics: dict) -> pathlib.Path:
  """The EMA parameters as the params dir DIR/best/ with their step, images seen and metrics."""
  return pretrained.export(pathlib.Path(directory) / BEST, params, config, step=step,
                           images_seen=step * config.training.batch_size, metrics=metrics)


def load_warm_start(params_dir, model, fresh_params=None):
  """(EMA parameters, raw parameters, step) of a params dir to start a run from: a state dir
  gives its raw parameters, any other params dir its EMA for both. A network with coordinate
  channels takes one without them (zero weights on the new inputs); one with extra blocks
  (`UNet.extra_blocks`) takes one without them, the blocks from `fresh_params` (its fresh
  initialisation, under which they are the identity)."""
  kw = dict(add_input_channels=True, grow_from=fresh_params)
  with _as_checkpoint_error():
    ema = pretrained.load_params(params_dir, model, **kw)
    params = ema
    if pretrained.is_state_dir(params_dir):
      params = pretrained.load_params(params_dir, model, raw=True, **kw)
    return ema, params, int(pretrained.read_manifest(params_dir).get("step", 0))


def warm_start(state, params_dir, model, tx):
  """The train `state` with parameters and EMA from a params dir (the shipped prior, a work
  dir's best/ or a state dir, `load_warm_start`; extra blocks the dir lacks keep `state`'s
  fresh values), its step count, and a fresh optimiser state (so the learning-rate warm-up
  runs again). Raises CheckpointError."""
  ema, params, step = load_warm_start(params_dir, model, jax.device_get(state.params))
  ema, params = jax.tree.map(jnp.asarray, ema), jax.tree.map(jnp.asarray, params)
  return state.replace(step=jnp.asarray(step, jnp.int32), params=params, ema_params=ema,
                       opt_state=tx.init(params))


def start_run(directory, config, state, sets, weights, model, tx, sharding, init_from):
  """(train state placed with `sharding`, checkpoint manager, data iterator, data seed) of a
  run in `directory`: its latest checkpoint with the data position, else a warm start of the
  fresh `state` from `init_from`, else `state` itself; `sets`, `weights` its training data."""
  mngr = checkpoint_manager(directory / CHECKPOINTS, config.training.keep_checkpoints)
  fresh = mngr.latest_step() is None
  if fresh and init_from:
    state = warm_start(state, init_from, model, tx)
    logging.info("warm start from %s at step %d (fresh optimiser state)", init_from,
                 int(state.step))
  state = jax.device_put(jax.device_get(state), sharding)
  # A warm start continues the step count; its data order is a new one (seed + step), or a
  # state dir's own; either is recorded in the work dir, so a resume reads the same stream.
  data_seed, position = data_order(directory, config.seed, init_from if fresh else None,
                                   int(state.step))
  iterator = loader.train_iterator([s.train for s in sets], weights=weights,
                                   global_batch=config.training.batch_size, seed=data_seed)
  if position is not None and fresh:
    iterator.set_state(position)
  logging.info("training data: %s", ", ".join(
      f"{s.name} ({len(s.train)} slices{'' if weights is None else f', weight {w:g}'})"
      for s, w in zip(sets, weights or [None] * len(sets))))
  if not fresh:
    state = restore_checkpoint(mngr, state, iterator)
    logging.info("restored checkpoint step %d from %s; data iterator state %s",
                 int(state.step), mngr.directory, iterator.get_state())
  return state, mngr, iterator, data_seed


def data_order(directory, seed: int, init_from, step: int) -> tuple[int, dict | None]:
  """(data seed, iterator position to start from or None) of a run, recorded in the work dir
  at its start (DIR/warm_start.json): `seed` for a fresh run; `seed` + step for a warm start
  from a params dir (a new order), or a state dir's own seed and position (the same stream
  continues). `init_from`: the params dir the run starts from (None: not a warm start)."""
  path = pathlib.Path(directory) / WARM_START_FILE
  if path.is_file():
    return int(json.loads(path.read_text())["data_seed"]), None
  if not init_from:
    return int(seed), None
  with _as_checkpoint_error():
    manifest = pretrained.read_manifest(init_from)
  if "data_seed" in manifest:
    seed, position = int(manifest["data_seed"]), manifest.get("data_state")
  else:
    seed, position = int(seed) + step, None
  if distributed.is_primary():
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, json.dumps({"from": str(init_from), "step": step, "data_seed": seed,
                                        "data_state": position}, indent=2) + "\n")
  return seed, position


def export_state(directory, *, ema_params, params, step: int, config, data_seed: int,
                 data_state, **info) -> pathlib.Path:
  """A run's resumable state as a state dir (EMA and raw parameters on the host, step, data
  seed and position; no optimiser moments), replacing `directory` as a whole: the new dir is
  written beside it and renamed into place, so an interrupted export leaves the old one."""
  directory = pathlib.Path(directory)
  tmp = directory.with_name(f".{directory.name}.new")
  old = directory.with_name(f".{directory.name}.old")
  for leftover in (tmp, old):
    if leftover.exists():
      shutil.rmtree(leftover)
  pretrained.export(tmp, ema_params, config, raw_params=params, step=step,
                    images_seen=step * config.training.batch_size, data_seed=data_seed,
                    data_state=data_state, **info)
  if directory.exists():
    os.replace(directory, old)
  os.replace(tmp, directory)
  if old.exists():
    shutil.rmtree(old)
  return directory


class StateExport:
  """`export_state` of a training run's state into `directory`, at most once per step (after a
  checkpoint, and at the stop): `export(state)`; `state` a train state (its step, params and
  EMA), `iterator` the run's data iterator (its position)."""

  def __init__(self, directory, config, data_seed: int, iterator):
    self.directory, self.config = directory, config
    self.data_seed, self.iterator = data_seed, iterator
    self.step = None  # of the last export

  def __call__(self, state):
    step = int(state.step)
    if step == self.step:
      return
    export_state(self.directory, ema_params=distributed.host_copy(state.ema_params),
                 params=distributed.host_copy(state.params), step=step, config=self.config,
                 data_seed=self.data_seed, data_state=self.iterator.get_state())
    self.step = step
    logging.info("resumable state at step %d exported to %s", step, self.directory)
