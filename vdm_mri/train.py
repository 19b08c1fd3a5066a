"""Training: `python -m vdm_mri.train --config=configs/brain128.py --workdir=DIR`.

The train state (its optimiser and EMA are `optim`'s), the pure train and eval steps and
their jitted, data-parallel forms, the run with its periodic actions (`loop.Periodic`:
evaluate, validate by SR, sample grid — `validation` — and checkpoint; `loop.run` steps), and
the command. The work dir's layout (checkpoints, config.json, best/, warm starts, state
exports) and the start of a run (resume, warm start, data position) are `workdir`'s.

Flags: --config (with --config.a.b=… overrides), --workdir, --data_dir (overrides
config.data.path), --init_from (a params dir to start a new work dir from: the shipped prior
or another run's best/); several processes: --coordinator_address=HOST:PORT --num_processes=N
--process_id=I, or --multi_host to detect them (`vdm_mri.distributed`).

The work dir (`vdm_mri.workdir`) holds everything a run writes, and a run resumes from it
automatically; metrics.jsonl has one JSON object per log/eval step ({"step": …, "train/bpd": …,
"eval/bpd": …}), tb/ the same scalars and the sample grids as TensorBoard event files.

Data parallel: `train_step` is jitted over a 1-D mesh ('data') of all devices, the batch sharded
on it, the state replicated; the loss noise is drawn for the whole global batch inside the jit
(partitionable threefry), so an update does not depend on the device count.

Exit codes of the command: 0 done; 1 non-finite loss (the last good checkpoint is kept);
2 no or bad data, or a bad --init_from params dir (one-line message); 128+signum = 143
(SIGTERM) / 130 (SIGINT) after saving a checkpoint at the current step.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import sys
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import app, flags, logging
from jax.sharding import NamedSharding, PartitionSpec as P
from ml_collections import config_flags

import vdm_mri
from vdm_mri import data, distributed, loop, metric_writer, optim, sampling, validation, vdm
from vdm_mri import workdir
from vdm_mri import model as model_lib
from vdm_mri.data import augment
from vdm_mri.distributed import host_copy, make_global_batch
from vdm_mri.loop import NonFiniteLoss, Periodic, TrainingInterrupted


# --------------------------------------------------------------------------------------------
# State.
# --------------------------------------------------------------------------------------------
@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 [], updates done so far
  params: Any  # {"score": …, "gamma": …}
  ema_params: Any  # EMA of params (evaluation and sampling use these)
  opt_state: Any
  key: jax.Array  # uint32 [2], raw key data; step key = fold_in(key, step)


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
  affine: augment.Affine | None = None  # non-leaking affine augmentation (needs model.aug_dim)
  weighting: vdm.Weighting | None = None  # None: the variational bound


def step_options(config) -> tuple[StepOptions, augment.PatchSchedule | None]:
  """The config's step options (`data.flip`, `data.augment_*`, `loss.weighting`) and its patch
  schedule (`data.patch_sizes`, `data.patch_probs`; None: whole images)."""
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
  prob = float(config.data.get("augment_prob", 0.0))
  affine = None
  if prob > 0.0:
    if config.model.get("aug_dim", 0) != augment.AUG_LABELS:
      raise ValueError(f"data.augment_prob {prob} needs model.aug_dim = {augment.AUG_LABELS} "
                       f"(augmentation labels), got {config.model.get('aug_dim', 0)}")
    ranges = {k: float(config.data[f"augment_{k}"]) for k in ("degrees", "log2_scale", "shift")
              if f"augment_{k}" in config.data}
    affine = augment.Affine(prob, **ranges)
  return StepOptions(flip=bool(config.data.get("flip", False)), affine=affine,
                     weighting=weighting), patches


def train_step(state: TrainState, batch, *, model: model_lib.VDM, tx, lr_fn, num_steps: int,
               ema_rate, options: StepOptions = StepOptions()):
  """One AdamW update on the mean loss of the global batch {'image': [B, H, W, 1]}: the bpd
  bound, or `options.weighting`'s objective, on whole images or `options.patch` crops.

  `ema_rate`: a float, or fn(step, global batch) -> rate (`optim.make_ema_rate`)."""
  key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)
  images, coords, aug = batch["image"], None, None
  if options.flip or options.patch or options.affine:
    key_flip, key_crop = jax.random.split(jax.random.fold_in(key, 0x5A17))
    if options.flip:
      images = augment.random_flip(key_flip, images)
    if options.affine:
      images, aug = augment.random_affine(jax.random.fold_in(key_flip, 1), images,
                                          options.affine)
    if options.patch and options.patch < min(images.shape[1:3]):
      images, coords = augment.random_crop(key_crop, images, options.patch)

  def loss_fn(params):
    terms = model.loss_terms(params, key, images, num_steps=num_steps, train=True,
                             coords=coords, aug=aug, weighting=options.weighting)
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
      "learning_rate": lr_fn(optim.optimizer_steps(state.opt_state)),
      "gamma_0": gamma_01[0], "gamma_1": gamma_01[1],
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


@functools.lru_cache(maxsize=8)
def jit_train_step(mesh, model: model_lib.VDM, optimizer, num_steps: int,
                   options: StepOptions = StepOptions()):
  """`train_step` jitted on `mesh`: state replicated and donated, batch sharded on 'data'.

  `optimizer`: FrozenConfigDict(config.optimizer). Cached on its (hashable) arguments, so that
  runs in one process (tests, benchmarks) trace and compile once (once per patch size).
  """
  tx, lr_fn = optim.make_optimizer(optimizer)
  step = functools.partial(train_step, model=model, tx=tx, lr_fn=lr_fn, num_steps=num_steps,
                           ema_rate=optim.make_ema_rate(optimizer), options=options)
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


# --------------------------------------------------------------------------------------------
# The run.
# --------------------------------------------------------------------------------------------
def train_and_evaluate(config, workdir_path, init_from: str | None = None,
                       validate_first: bool = False, state_dir: str | None = None) -> TrainState:
  """Train `config` in `workdir_path` (resuming from its latest checkpoint); returns the final
  state.

  `init_from`: a params dir to start from when the work dir has no checkpoint yet (see
  `workdir.warm_start`); ignored once the run has checkpoints. `validate_first`: run the SR
  validation (and keep best/) on the starting state before any step, e.g. to score the checkpoint that a
  SIGTERM saved between validations (with num_steps = that step, nothing else runs).
  `state_dir`: with every checkpoint and at every stop (done or interrupted) the resumable
  state is exported there (`workdir.export_state`; one process only).

  Raises data.DataError (no/bad data), NonFiniteLoss, TrainingInterrupted (after saving).
  """
  directory = pathlib.Path(workdir_path)
  sets = data.find_datasets(config.data.path)  # "" = ../shared/data
  for s in sets:
    if s.validation is None:
      logging.warning("data set %s has no validation split: it is not evaluated", s.name)
  weights = data.parse_weights(config.data.get("weights", ""), len(sets))
  model = model_lib.from_config(config)
  tx, _ = optim.make_optimizer(config.optimizer)
  mesh = sampling.make_mesh(jax.devices())
  if config.training.batch_size % mesh.size:
    raise ValueError(f"batch_size {config.training.batch_size} is not divisible by the "
                     f"{mesh.size} devices")

  key_state, key_eval = jax.random.split(jax.random.key(config.seed))
  state, mngr, iterator, data_seed = workdir.start_run(
      directory, config, create_train_state(model, tx, key_state), sets, weights, model, tx,
      NamedSharding(mesh, P()), init_from)
  writer = metric_writer.MetricWriter(directory, resume_step=int(state.step),
                                      enabled=distributed.is_primary())
  if distributed.is_primary():
    workdir.save_config(config, directory)
  actions, best = validation.training_actions(
      config, model, sets, directory, writer, key_eval,
      jit_eval_step(mesh, model, config.loss.num_steps), NamedSharding(mesh, P("data")))
  actions.append(Periodic(config.training.checkpoint_every, lambda step, state: (
      workdir.save_checkpoint(mngr, state, iterator)), checked=True, final=True))
  export = (workdir.StateExport(state_dir, config, data_seed, iterator)
            if state_dir and jax.process_count() == 1 else None)
  if export is not None:  # with every checkpoint too: never far behind, even without a signal
    actions.append(Periodic(config.training.checkpoint_every,
                            lambda step, state: export(state), checked=True))
  options, patches = step_options(config)
  optimizer = ml_collections.FrozenConfigDict(config.optimizer)

  def step_fn(state, batch, step: int):
    opts = options if patches is None else dataclasses.replace(
        options, patch=patches.size_for_step(step))
    return jit_train_step(mesh, model, optimizer, config.loss.num_steps, opts)(state, batch)
  sharded = NamedSharding(mesh, P("data"))
  batches = (make_global_batch(batch, sharded) for batch in iterator)
  if validate_first and best is not None:
    best(int(state.step), model, host_copy(state.ema_params))
  final = None
  try:
    with loop.stop_on_signals() as signals, loop.TrainLog(
        writer, every=config.training.log_every, batch_size=config.training.batch_size,
        step=int(state.step), num_steps=config.training.num_steps) as log:
      state = final = loop.run(state, step_fn, batches, log, actions, signals,
                            num_steps=config.training.num_steps)
  except NonFiniteLoss as e:
    mngr.wait_until_finished()
    raise NonFiniteLoss(f"{e}; last good checkpoint: step {mngr.latest_step()} in "
                        f"{mngr.directory}") from None
  except TrainingInterrupted as e:
    final = e.state
    raise
  finally:
    if export is not None and final is not None:
      export(final)
    mngr.wait_until_finished()
    mngr.close()
    writer.close()
  logging.info("done: step %d; checkpoints in %s", int(state.step), mngr.directory)
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
  flags.DEFINE_string("state_dir", None, "with every checkpoint and at every stop, export the "
                      "resumable state (EMA and raw parameters, step, data position) to this "
                      "dir, replacing it; --init_from=STATE_DIR continues the run on another "
                      "machine")
  flags.DEFINE_bool("validate_first", False, "run the SR validation on the restored state "
                    "before training (keeps best/ if it is the best so far)")
  flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  logging.get_absl_handler().addFilter(loop.QuietLibraries())
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
  except (data.DataError, workdir.CheckpointError) as e:
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
