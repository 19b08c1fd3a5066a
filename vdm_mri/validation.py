"""Validation by the task: guided super-resolution of a fixed slice subset, scored against
zero-filling.

Training selects its best checkpoint with this, not with bits/dim: a lower bound on the
likelihood says little about the posterior mean the sampler returns. For every validation set,
`per_subject` slices per subject (`pick_slices`, fixed) are measured at each low resolution
(noise-free centre of k-space), super-resolved with `steps` guided steps and K samples, and
scored per subject volume with the fastMRI metrics (`metrics.evaluate`). The score that selects
checkpoints is the mean PSNR gain of the posterior mean over zero-filling, over sets and
resolutions.

    sr = SRValidation({"brain_t1w": (images, subjects)}, lowres=((64, 64), (32, 32)), steps=100,
                      num_samples=2, key=key)
    values = sr(model, params)   # {"sr/brain_t1w/32x32/psnr": ..., "sr/score": ...}
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from vdm_mri import baselines, kspace, metrics, sampling, schedule, vdm


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


def lowres_name(shape) -> str:
  return f"{shape[0]}x{shape[1]}"


@dataclasses.dataclass
class _Case:
  name: str  # "<set>/<h>x<w>"
  images: np.ndarray  # [N, H, W] ground truth
  subjects: np.ndarray  # [N]
  y0: jax.Array  # [N, h, w] complex64
  zero_fill: dict  # metrics of zero-filling


class SRValidation:
  """Guided SR of fixed validation slices: a callable (model, params) -> {metric name: value}."""

  def __init__(self, sets: dict, *, lowres=((64, 64), (32, 32)), steps: int = 100,
               num_samples: int = 2, lam: float = 1.0, final_projection: bool = True,
               batch_size: int = 8, key=None, sampler: str = "paper", eta: float = 0.85,
               t_start: float = 1.0):
    """`sets`: {name: (images [N, H, W] float in [0, 1], subjects [N])}, already subset;
    the sampling options as in `sampling.posterior_samples`."""
    self.steps, self.num_samples, self.lam = steps, num_samples, lam
    self.sampler, self.eta, self.t_start = sampler, eta, t_start
    self.final_projection, self.batch_size = final_projection, batch_size
    self.key = jax.random.key(0) if key is None else key
    self.cases = []
    for set_name, (images, subjects) in sets.items():
      images = np.asarray(images, np.float32)
      for shape in lowres:
        y0 = kspace.measure(jnp.asarray(images), tuple(shape))
        zf = np.asarray(baselines.zero_fill(y0, images.shape[1:]))
        self.cases.append(_Case(f"{set_name}/{lowres_name(shape)}", images,
                                np.asarray(subjects), y0, _scores(images, zf, subjects)))

  def baseline_values(self) -> dict:
    """Zero-filling's metrics, {"sr/<set>/<h>x<w>/zf_psnr": …} (constant over training)."""
    return {f"sr/{c.name}/zf_{k}": v for c in self.cases for k, v in c.zero_fill.items()}

  def __call__(self, model, params) -> dict:
    """Posterior-mean metrics of every case, their gains over zero-filling, and "sr/score"
    (mean PSNR gain in dB over all cases: the checkpoint-selection criterion)."""
    values, gains = {}, []
    for i, case in enumerate(self.cases):
      post = sampling.posterior_samples(
          model, params, case.y0, key=jax.random.fold_in(self.key, i),
          num_samples=self.num_samples, lam=self.lam, num_steps=self.steps,
          final_projection=self.final_projection, batch_size=self.batch_size,
          sampler=self.sampler, eta=self.eta, t_start=self.t_start)
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
    """`sets`: {name: images [N, H, W] in [0, 1]} (already subset)."""
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
      bound = 0.0
      for k, g in enumerate(self.gammas):
        a, s = float(schedule.alpha(g)), float(schedule.sigma(g))
        z = a * f + s * eps[k]
        cond = np.full((self.batch_size,), vdm.gamma_to_cond(g, self.gamma_min, self.gamma_max),
                       np.float32)
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
    out, b = [], self.batch_size
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
