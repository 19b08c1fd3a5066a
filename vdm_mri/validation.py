"""What training measures while it runs: held-out bits/dim, validation by the task (guided
super-resolution of a fixed slice subset, scored against zero-filling), the best parameters by
that score, the held-out denoising error per noise band, and sample grids.

    evaluate(eval_fn, params, source, …)   # {"eval/bpd": …}: the bound on validation batches
    BestBySR(sr, workdir, writer, config, bands)(step, model, params)   # logs; keeps best/
    SampleGrid(model, images, key, cfg, workdir, writer)(step, params)  # samples/step_N.png

Training selects its best checkpoint with this, not with bits/dim: a lower bound on the
likelihood says little about the posterior mean the sampler returns. For every validation set,
`per_subject` slices per subject (`pick_slices`, fixed) are measured at each low resolution
(noise-free centre of k-space), super-resolved with `steps` guided steps and K samples, and
scored per subject volume with the fastMRI metrics (`metrics.evaluate`). The score that selects
checkpoints is the mean PSNR gain of the posterior mean over zero-filling, over sets and
resolutions.

    sr = SRValidation({"brain_t1w": (images, subjects)}, lowres=((64, 64), (32, 32)),
                      options=SamplingOptions(steps=100, num_samples=2), key=key)
    values = sr(model, params)   # {"sr/brain_t1w/32x32/psnr": ..., "sr/score": ...}
"""

from __future__ import annotations

import dataclasses
import functools
import math
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from vdm_mri import (baselines, data, distributed, figures, kspace, metrics, sampling, schedule,
                     vdm, workdir)
from vdm_mri.api import SamplingOptions
from vdm_mri.loop import Periodic


def pick_slices(subjects: np.ndarray, per_subject: int, max_subjects: int | None = None):
  """Indices of `per_subject` slices at the centres of equal parts of the middle 60 % of each
  subject's slices (one slice: the middle one), subjects in first-appearance order: a fixed,
  stated subset."""
  subjects = np.asarray(subjects)
  picked = []
  for sid in list(dict.fromkeys(subjects.tolist()))[:max_subjects]:
    idx = np.flatnonzero(subjects == sid)
    centres = 0.2 + 0.6 * (np.arange(per_subject) + 0.5) / per_subject  # fractions of the stack
    picked += idx[np.unique((centres * len(idx)).astype(int))].tolist()
  return np.asarray(picked, np.int64)


@dataclasses.dataclass
class _Case:
  name: str  # "<set>/<h>x<w>"
  images: np.ndarray  # [N, H, W] ground truth
  subjects: np.ndarray  # [N]
  y0: jax.Array  # [N, h, w] complex64
  zero_fill: dict  # metrics of zero-filling


class SRValidation:
  """Guided SR of fixed validation slices: a callable (model, params) -> {metric name: value}."""

  def __init__(self, sets: dict, *, lowres=((64, 64), (32, 32)),
               options: SamplingOptions | None = None, key=None):
    """`sets`: {name: (images [N, H, W] float in [0, 1], subjects [N])}, already subset;
    `options`: how the posterior is sampled (default: 100 paper steps, K = 2)."""
    self.options = SamplingOptions(steps=100, num_samples=2) if options is None else options
    self.key = jax.random.key(0) if key is None else key
    self.cases = []
    for set_name, (images, subjects) in sets.items():
      images = np.asarray(images, np.float32)
      for shape in lowres:
        y0 = kspace.measure(jnp.asarray(images), tuple(shape))
        zf = np.asarray(baselines.zero_fill(y0, images.shape[1:]))
        self.cases.append(_Case(f"{set_name}/{kspace.size_name(shape)}", images,
                                np.asarray(subjects), y0, _scores(images, zf, subjects)))

  def baseline_values(self) -> dict:
    """Zero-filling's metrics, {"sr/<set>/<h>x<w>/zf_psnr": …} (constant over training)."""
    return {f"sr/{c.name}/zf_{k}": v for c in self.cases for k, v in c.zero_fill.items()}

  def __call__(self, model, params) -> dict:
    """Posterior-mean metrics of every case, their gains over zero-filling, and "sr/score"
    (mean PSNR gain in dB over all cases: the checkpoint-selection criterion)."""
    values, gains = {}, []
    for i, case in enumerate(self.cases):
      post = sampling.posterior_samples(model, params, case.y0,
                                        key=jax.random.fold_in(self.key, i),
                                        **self.options.posterior_kwargs())
      got = _scores(case.images, post.mean, case.subjects)
      for k, v in got.items():
        values[f"sr/{case.name}/{k}"] = v
      gain = got["psnr"] - case.zero_fill["psnr"]
      values[f"sr/{case.name}/psnr_gain"] = gain
      values[f"sr/{case.name}/ssim_gain"] = got["ssim"] - case.zero_fill["ssim"]
      gains.append(gain)
    values["sr/score"] = float(np.mean(gains))
    return values


def _scores(gt, pred, subjects) -> dict:
  out = metrics.evaluate(gt, np.asarray(pred), subjects)
  return {"psnr": float(out["psnr"]), "ssim": float(out["ssim"])}


# --------------------------------------------------------------------------------------------
# Held-out denoising error per noise band.
# --------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def _jit_eps(model):
  return jax.jit(lambda params, z, cond: model.eps_fn(params)(z, cond))


class DenoisingBands:
  """Denoising error of fixed validation slices at fixed noise levels: where a recipe wins.

  The range [γ_min, γ_max] is cut into `num_bands` equal bands; at each band's centre γ_k every
  slice x gets one fixed noise draw ε (from `key`), z = α_k·f(x) + σ_k·ε, and the network's ε̂ is
  scored: ε-MSE per pixel, and the PSNR (intensity range 1) of the denoised image
  x̂ = (z - σ_k·ε̂)/α_k. With the same slices, noise and levels for every recipe, the numbers are
  comparable across recipes and training steps, whatever the training objective.
  `"den/<set>/diffusion_bpd"` is the continuous bound's diffusion term on these slices by the
  midpoint rule over the bands, ½·Σ_k Δγ·E‖ε - ε̂‖²/D, in bits per dimension.

      bands = DenoisingBands({"brain_t1w": images}, gamma_min=-13.3, gamma_max=5.0, key=key)
      values = bands(model, params)   # {"den/brain_t1w/band0/eps_mse": …, …}
  """

  def __init__(self, sets: dict, *, gamma_min: float, gamma_max: float, bits: int,
               num_bands: int = 8, batch_size: int = 8, key=None):
    """`sets`: {name: images [N, H, W] in [0, 1]} (already subset). A set is scored in batches
    of min(batch_size, N) slices (one compiled program per batch size; a set smaller than
    `batch_size` is not padded up to it)."""
    key = jax.random.key(1) if key is None else key
    self.width = (gamma_max - gamma_min) / num_bands
    self.gammas = gamma_min + self.width * (np.arange(num_bands) + 0.5)
    self.gamma_min, self.gamma_max, self.bits = gamma_min, gamma_max, bits
    self.batch_size = batch_size
    self.sets = {}
    for i, (name, images) in enumerate(sets.items()):
      images = np.asarray(images, np.float32)
      eps = np.asarray(jax.random.normal(jax.random.fold_in(key, i),
                                         (num_bands, *images.shape), jnp.float32))
      self.sets[name] = (images, eps)

  def __call__(self, model, params) -> dict:
    eps_fn = _jit_eps(model)
    scale, offset = vdm.encoder_affine(self.bits)
    values = {}
    for name, (images, eps) in self.sets.items():
      f = scale * images + offset
      bound, batch = 0.0, min(self.batch_size, len(images))
      for k, g in enumerate(self.gammas):
        a, s = float(schedule.alpha(g)), float(schedule.sigma(g))
        z = a * f + s * eps[k]
        cond = np.full((batch,), vdm.gamma_to_cond(g, self.gamma_min, self.gamma_max), np.float32)
        eps_hat = self._predict(eps_fn, params, z, cond)
        mse = float(np.mean((eps_hat - eps[k]) ** 2))
        x_hat = ((z - s * eps_hat) / a - offset) / scale
        values[f"den/{name}/band{k}/eps_mse"] = mse
        mse_x = max(float(np.mean((x_hat - images) ** 2)), 1e-12)  # ≤ 120 dB
        values[f"den/{name}/band{k}/psnr"] = float(-10.0 * np.log10(mse_x))
        bound += 0.5 * self.width * mse / np.log(2.0)
      values[f"den/{name}/diffusion_bpd"] = float(bound)
    return values

  def _predict(self, eps_fn, params, z, cond):
    """ε̂ for z [N, H, W] in fixed-size batches (one compiled program): [N, H, W]."""
    out, b = [], len(cond)
    for i in range(0, len(z), b):
      chunk = z[i:i + b, ..., None]
      out.append(np.asarray(eps_fn(params, _pad_rows(chunk, b), cond))[:len(chunk), ..., 0])
    return np.concatenate(out)

  def band_gammas(self) -> dict:
    """{"den/band<k>/gamma": γ_k}: the band centres."""
    return {f"den/band{k}/gamma": float(g) for k, g in enumerate(self.gammas)}


def _pad_rows(a, size: int):
  """a [n, …] padded to `size` rows with zeros (the padding is dropped after the call)."""
  if len(a) >= size:
    return a
  return np.concatenate([a, np.zeros((size - len(a), *a.shape[1:]), a.dtype)])


# --------------------------------------------------------------------------------------------
# During training: bits/dim, SR validation and best/, sample grids.
# --------------------------------------------------------------------------------------------
def evaluate(eval_fn, params, source, *, batch_size: int, num_batches: int, key,
             sharding) -> dict:
  """Mean bits/dim (and terms) over `num_batches` validation batches spread evenly over the
  ordered validation pass (so every subject is represented, not just the first), fixed keys.
  `eval_fn(params, images, valid, key)` -> sums and "count" (train.eval_step, jitted)."""
  local = batch_size // jax.process_count()
  n_total = max(1, math.ceil(len(source) / batch_size))
  wanted = set(np.linspace(0, n_total - 1, min(num_batches, n_total)).round().astype(int))
  totals = None
  for i, batch in enumerate(data.eval_batches(source, batch_size=local)):
    if i > max(wanted):
      break
    if i not in wanted:
      continue
    images, valid = distributed.make_global_batch((batch["image"], batch["valid"]), sharding)
    sums = eval_fn(params, images, valid, jax.random.fold_in(key, i))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  count = totals.pop("count")
  return {f"eval/{k}": float(v / count) for k, v in totals.items()}


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


def first_images(source, n: int) -> np.ndarray:
  """The first n images of a source as [n, H, W] float32 in [0, 1]."""
  batch = next(iter(data.eval_batches(source, batch_size=n, process_index=0, process_count=1)))
  return np.asarray(batch["image"][..., 0], np.float32)


def make_sr_validation(val_sets: dict, cfg, key) -> SRValidation:
  """The fixed SR validation subset of `config.sr_eval`: `per_subject` slices of every subject
  of every validation set."""
  subsets = {}
  for name, source in val_sets.items():
    batch = next(iter(data.eval_batches(source, batch_size=len(source), process_index=0,
                                        process_count=1)))
    idx = pick_slices(batch["subject"], cfg.per_subject)
    subsets[name] = (batch["image"][idx, ..., 0], batch["subject"][idx])
  lowres = [kspace.parse_size(item) for item in cfg.lowres.split(",")]
  return SRValidation(subsets, lowres=lowres, options=SamplingOptions.from_config(cfg), key=key)


class BestBySR:
  """Runs the SR validation, logs it, and keeps the EMA parameters with the best "sr/score" as
  the params dir workdir/best/ (`vdm_mri.workdir`; `python -m vdm_mri.sample
  --checkpoint=WORKDIR/best`)."""

  def __init__(self, sr: SRValidation, directory, writer, config,
               bands: DenoisingBands | None = None):
    """`bands`: also log the held-out denoising error per noise band (den/…) each time."""
    self.sr, self.dir, self.writer = sr, pathlib.Path(directory), writer
    self.config, self.bands = config, bands
    self.best = workdir.best_score(self.dir)

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
      workdir.save_best(self.dir, params, self.config, step=step, metrics=values)


def best_by_sr(config, model, val_sets: dict, directory, writer, key) -> BestBySR | None:
  """The SR validation of `config.sr_eval` (with the denoising bands on its slices) keeping
  directory/best/; None when it is off (sr_eval.every = 0) or there is no validation data."""
  cfg = config.get("sr_eval")
  if cfg is None or cfg.every <= 0 or not val_sets:
    return None
  sr = make_sr_validation(val_sets, cfg, jax.random.fold_in(key, 2))
  bands = DenoisingBands({case.name.split("/")[0]: case.images for case in sr.cases},
                         gamma_min=model.gamma_min, gamma_max=model.gamma_max, bits=model.bits,
                         key=jax.random.fold_in(key, 3))
  return BestBySR(sr, directory, writer, config, bands)


@dataclasses.dataclass
class SampleGrid:
  """workdir/samples/step_N.png (and the image "samples" in TensorBoard): prior samples, and 4x
  (H/4 x W/4 k-space centre) guided reconstructions of fixed validation images beside
  zero-filling and the ground truth; `cfg` = config.sampling (one sample per image)."""

  model: object
  images: np.ndarray  # [n, H, W] in [0, 1]
  key: jax.Array
  cfg: object
  directory: pathlib.Path
  writer: object = None

  def __call__(self, step: int, params):
    full = self.images.shape[1:]
    y0 = kspace.measure(jnp.asarray(self.images), (full[0] // 4, full[1] // 4))
    options = SamplingOptions.from_config(self.cfg, num_samples=1, antithetic=False,
                                          batch_size=len(self.images))
    guided = sampling.posterior_samples(self.model, params, y0, key=self.key,
                                        **options.posterior_kwargs())
    prior = sampling.prior_samples(self.model, params, key=jax.random.fold_in(self.key, 1),
                                   num=len(self.images), num_steps=options.steps,
                                   batch_size=options.batch_size)
    rows = {"prior": prior, "zero-fill": np.asarray(baselines.zero_fill(y0, full)),
            "guided 4x": guided.mean, "truth": self.images}
    image = figures.grid(rows)
    path = figures.save_png(image, pathlib.Path(self.directory) / "samples" /
                            f"step_{step:08d}.png")
    if self.writer is not None:
      self.writer.write_image(step, "samples", np.asarray(image))
    logging.info("wrote %s", path)


def training_actions(config, model, sets, directory, writer, key, eval_fn, sharding):
  """The evaluations of a training run as the loop's actions, in the order they run at a step:
  bits/dim on the validation sets (`eval_fn` = the jitted train.eval_step), the sample grid and
  the SR validation keeping best/ (these two on process 0; they sample on its own devices).
  Returns (actions, the BestBySR or None)."""
  cfg, actions = config.training, []
  val_sets = {s.name: s.validation for s in sets if s.validation is not None}
  if val_sets:
    bpd = functools.partial(evaluate_sets, eval_fn, sets=val_sets, batch_size=cfg.batch_size,
                            num_batches=cfg.eval_batches, key=key, sharding=sharding)
    actions.append(Periodic(cfg.eval_every, lambda step, state: writer.write(
        step, bpd(state.ema_params)), checked=True))
  best = None
  if distributed.is_primary():
    grid = SampleGrid(model, first_images(next(iter(val_sets.values()), sets[0].train), 4),
                      jax.random.fold_in(key, 1), config.sampling, directory, writer)
    actions.append(Periodic(cfg.sample_every, lambda step, state: grid(
        step, distributed.host_copy(state.ema_params))))
    best = best_by_sr(config, model, val_sets, directory, writer, key)
    if best is not None:
      actions.append(Periodic(config.sr_eval.every, lambda step, state: best(
          step, model, distributed.host_copy(state.ema_params))))
  return actions, best
