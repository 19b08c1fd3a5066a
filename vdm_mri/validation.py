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

import jax
import jax.numpy as jnp
import numpy as np

from vdm_mri import baselines, kspace, metrics, sampling


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
               batch_size: int = 8, key=None):
    """`sets`: {name: (images [N, H, W] float in [0, 1], subjects [N])}, already subset."""
    self.steps, self.num_samples, self.lam = steps, num_samples, lam
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
          final_projection=self.final_projection, batch_size=self.batch_size)
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
