"""fastMRI-style image metrics (DESIGN §5), numpy float64, per volume then averaged over subjects.

A *volume* is all slices of one subject, `[S, H, W]` magnitude images. Definitions (fastMRI's
`evaluate.py`, scikit-image defaults):

  NMSE = ‖gt - pred‖² / ‖gt‖²                              over the whole volume (0 if identical)
  PSNR = 10·log10(R² / mean((gt - pred)²)),  R = max(gt)   over the whole volume (+inf if identical)
  SSIM = mean over slices of mean over the valid interior of the SSIM map with a 7x7 uniform
         window, K1 = 0.01, K2 = 0.03, C_i = (K_i·R)², R = max(gt) of the volume, and the sample
         covariance (factor N/(N-1), N = 49): for local means μ, variances σ², covariance σ_xy
         SSIM = (2μ_xμ_y + C1)(2σ_xy + C2) / ((μ_x² + μ_y² + C1)(σ_x² + σ_y² + C2)).
         "Valid interior" = windows lying fully inside the slice, (H-6)×(W-6) values: exactly the
         map scikit-image's structural_similarity averages (it crops (7-1)//2 = 3 px per border).

An all-zero gt volume gives NMSE = nan (0/0) or inf and PSNR/SSIM relative to R = 0: undefined,
not guarded.
"""

import numpy as np

from vdm_mri import kspace

_WIN = 7
_K1, _K2 = 0.01, 0.03


def nmse(gt, pred):
  """‖gt - pred‖² / ‖gt‖² over the volume `[S, H, W]` (or any shape)."""
  gt, pred = np.asarray(gt, np.float64), np.asarray(pred, np.float64)
  return float(np.sum((gt - pred) ** 2) / np.sum(gt**2))


def psnr(gt, pred):
  """10·log10(max(gt)² / MSE) over the volume, in dB; +inf when pred == gt."""
  gt, pred = np.asarray(gt, np.float64), np.asarray(pred, np.float64)
  mse = np.mean((gt - pred) ** 2)
  if mse == 0:
    return float("inf")
  return float(10 * np.log10(gt.max() ** 2 / mse))


def _box_mean(a, k=_WIN):
  """Mean over every fully-inside k×k window of `[..., H, W]` → `[..., H-k+1, W-k+1]`."""
  c = np.cumsum(np.cumsum(a, axis=-2), axis=-1)
  c = np.pad(c, [(0, 0)] * (a.ndim - 2) + [(1, 0), (1, 0)])  # c[i, j] = Σ a[:i, :j]
  s = c[..., k:, k:] - c[..., :-k, k:] - c[..., k:, :-k] + c[..., :-k, :-k]
  return s / (k * k)


def ssim_map(gt, pred, data_range):
  """SSIM on the valid interior of each slice: `[..., H, W]` → `[..., H-6, W-6]` float64."""
  x, y = np.asarray(gt, np.float64), np.asarray(pred, np.float64)
  c1, c2 = (_K1 * data_range) ** 2, (_K2 * data_range) ** 2
  cov_norm = _WIN**2 / (_WIN**2 - 1)  # sample covariance
  mu_x, mu_y = _box_mean(x), _box_mean(y)
  var_x = cov_norm * (_box_mean(x * x) - mu_x**2)
  var_y = cov_norm * (_box_mean(y * y) - mu_y**2)
  cov_xy = cov_norm * (_box_mean(x * y) - mu_x * mu_y)
  num = (2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)
  den = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
  return num / den


def ssim(gt, pred):
  """Mean over slices of the mean SSIM map, R = max of the gt volume `[S, H, W]`."""
  gt = np.asarray(gt, np.float64)
  if gt.ndim == 2:
    gt, pred = gt[None], np.asarray(pred)[None]
  return float(np.mean(ssim_map(gt, pred, gt.max()).mean(axis=(-2, -1))))


def evaluate(gt, pred, subjects):
  """Metrics per subject volume, then averaged over subjects.

  gt, pred `[N, H, W]` magnitude; subjects `[N]` ids (slices of a volume in their given order).
  Returns {"psnr", "ssim", "nmse": subject means, "per_subject": {id: {"psnr", "ssim", "nmse"}}}.
  """
  gt, pred, subjects = np.asarray(gt), np.asarray(pred), np.asarray(subjects)
  if not gt.shape == pred.shape or gt.shape[0] != subjects.shape[0]:
    raise ValueError(f"shapes differ: gt {gt.shape}, pred {pred.shape}, "
                     f"subjects {subjects.shape}")
  per_subject = {}
  for sid in dict.fromkeys(subjects.tolist()):  # first-appearance order
    sel = subjects == sid
    per_subject[sid] = {name: fn(gt[sel], pred[sel]) for name, fn in _METRICS.items()}
  means = {name: float(np.mean([m[name] for m in per_subject.values()])) for name in _METRICS}
  return {**means, "per_subject": per_subject}


_METRICS = {"psnr": psnr, "ssim": ssim, "nmse": nmse}


def data_consistency(x, y0):
  """‖p⁻¹(Λ) F x̂ - ŷ₀‖ / ‖ŷ₀‖ per image (`kspace.residual`), as numpy float64."""
  return np.asarray(kspace.residual(x, y0), np.float64)
