"""The optimiser and the EMA of a training run: AdamW with global-norm clipping, linear warm-up
and an optional linear cool-down (biases, norm scales and the noise schedule not decayed), and
the EMA decay per step, fixed or with a half-life that grows with the images seen."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def decay_mask(params):
  """True where AdamW decays: everything but biases, norm scales and the schedule ("gamma")."""
  def decays(path, _):
    return path[0].key != "gamma" and path[-1].key not in ("bias", "scale")
  return jax.tree.map_with_path(decays, params)


def learning_rate_schedule(opt) -> optax.Schedule:
  """Linear warm-up from 0 to `opt.learning_rate` over `opt.warmup_steps`, then constant, or
  with `opt.decay_steps` > 0 constant for `opt.hold_steps` (default 0) and then a linear
  cool-down to 0 over `decay_steps` (then 0). Counted in optimiser updates: a warm start (a
  fresh optimiser) runs warm-up and cool-down again, so a cool-down branch of a long
  constant-rate run is a warm start from its state."""
  peak = opt.learning_rate
  warmup = int(opt.warmup_steps)
  decay = int(opt.get("decay_steps", 0))
  hold = int(opt.get("hold_steps", 0)) if decay > 0 else 0
  if hold < 0:
    raise ValueError(f"optimizer.hold_steps = {hold}: must be >= 0")
  pieces, bounds = [], []
  if warmup > 0:
    pieces.append(optax.linear_schedule(0.0, peak, warmup))
    bounds.append(warmup)
  if hold > 0:
    pieces.append(optax.constant_schedule(peak))
    bounds.append((bounds[-1] if bounds else 0) + hold)
  pieces.append(optax.linear_schedule(peak, 0.0, decay) if decay > 0
                else optax.constant_schedule(peak))
  return optax.join_schedules(pieces, bounds) if bounds else pieces[0]


def make_optimizer(opt) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Global-norm clipping + AdamW with `learning_rate_schedule`; `opt` = config.optimizer."""
  lr_fn = learning_rate_schedule(opt)
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
