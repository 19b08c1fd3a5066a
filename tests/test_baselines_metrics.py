"""Baselines (grid alignment, kernels, borders) and fastMRI metrics; DESIGN §5 table."""

from pathlib import Path

import numpy as np
import pytest
import jax.numpy as jnp

from vdm_mri import baselines, kspace, metrics

FULL = (128, 128)
INTERPOLATORS = [baselines.bilinear, baselines.bicubic, baselines.bicubic_keys]
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "brain_t1w_val.npz"


def _lowres_measurement(x_lr, full_shape=FULL):
  return kspace.measurement_from_lowres(jnp.asarray(x_lr, jnp.float32), full_shape)


# --- baselines -----------------------------------------------------------------------------------

def test_grid_coords_put_origin_on_origin():
  c = baselines.grid_coords(128, 32)
  assert c[64] == 16                              # DC pixel H//2 ↦ h//2
  np.testing.assert_allclose(np.diff(c), 0.25)    # step h/H
  assert baselines.grid_coords(128, 63)[64] == 31


def test_zero_fill_of_odd_band_limited_image_is_exact():
  """For odd h, F⁻¹ p(ŷ₀) of a band-limited real x is x itself, so zero-fill = |x|."""
  x_lr = np.random.default_rng(0).random((63, 63))
  y = _lowres_measurement(x_lr)
  x = jnp.real(kspace.ifft2c(kspace.pad(y, FULL)))
  np.testing.assert_allclose(baselines.zero_fill(kspace.measure(x, (63, 63)), FULL), np.abs(x),
                             atol=1e-5)


@pytest.mark.parametrize("method", INTERPOLATORS)
@pytest.mark.parametrize("low", [(32, 32), (64, 128)])
def test_interpolators_pass_through_lowres_samples(method, low):
  """High-res pixel H//2 + k·H/h sits exactly on low-res pixel h//2 + k (grid alignment)."""
  x_lr = np.random.default_rng(1).random(low)
  out = np.asarray(method(_lowres_measurement(x_lr), FULL))
  rh, rw = FULL[0] // low[0], FULL[1] // low[1]
  np.testing.assert_allclose(out[::rh, ::rw], x_lr, atol=1e-5)


@pytest.mark.parametrize("method", INTERPOLATORS)
@pytest.mark.parametrize("low", [(63, 63), (48, 48), (5, 7)])
def test_interpolators_keep_constants_up_to_the_border(method, low):
  out = method(_lowres_measurement(np.full(low, 0.3)), FULL)
  np.testing.assert_allclose(out, np.full(FULL, 0.3), atol=1e-5)


def test_half_pixel_kernels():
  """At 2x the new pixels sit halfway: bilinear (f₀+f₁)/2, Keys (-f₋₁+9f₀+9f₁-f₂)/16."""
  x_lr = np.random.default_rng(2).random((64, 64))
  y = _lowres_measurement(x_lr)
  lin, keys = np.asarray(baselines.bilinear(y, FULL)), np.asarray(baselines.bicubic_keys(y, FULL))
  f = x_lr[10, :]                                  # row 10 ↦ high-res row 20 (even: on grid)
  np.testing.assert_allclose(lin[20, 21:119:2], (f[10:59] + f[11:60]) / 2, atol=1e-5)
  keys_want = (-f[9:58] + 9 * f[10:59] + 9 * f[11:60] - f[12:61]) / 16
  np.testing.assert_allclose(keys[20, 21:119:2], keys_want, atol=1e-5)


def _keys(s, a=-0.5):
  s = abs(s)
  if s <= 1:
    return (a + 2) * s**3 - (a + 3) * s**2 + 1
  return a * s**3 - 5 * a * s**2 + 8 * a * s - 4 * a if s < 2 else 0.0


@pytest.mark.parametrize("method,kernel", [(baselines.bilinear, lambda s: max(0.0, 1 - abs(s))),
                                           (baselines.bicubic_keys, _keys)])
@pytest.mark.parametrize("n", [32, 63])
def test_kernel_interpolators_edge_clamp(method, kernel, n):
  """Direct sum Σ_j f_ext[j]·K(c - j) over the edge-replicated profile, borders included."""
  f = np.random.default_rng(8).random(n)
  y = _lowres_measurement(np.repeat(f[:, None], 4, axis=1), (128, 4))  # [n, 4], flat along v
  out = np.asarray(method(y, (128, 4)))
  f_ext = np.pad(f, 4, mode="edge")                           # f_ext[j + 4] = f[clip(j)]
  want = [sum(f_ext[j + 4] * kernel(c - j) for j in range(-4, n + 4))
          for c in baselines.grid_coords(128, n)]
  np.testing.assert_allclose(out[:, 0], want, atol=1e-5)


@pytest.mark.parametrize("low", [(32, 32), (63, 63), (64, 128), (5, 7)])
def test_bicubic_is_cubic_spline_with_edge_clamp(low):
  """Reference: scipy's prefiltered cubic spline, mode="nearest" (a test oracle only)."""
  ndimage = pytest.importorskip("scipy.ndimage")
  x_lr = np.random.default_rng(3).random(low)
  coords = np.meshgrid(baselines.grid_coords(FULL[0], low[0]),
                       baselines.grid_coords(FULL[1], low[1]), indexing="ij")
  want = ndimage.map_coordinates(x_lr, coords, order=3, mode="nearest")
  np.testing.assert_allclose(baselines.bicubic(_lowres_measurement(x_lr), FULL), want, atol=2e-5)


def test_baselines_broadcast_over_batch():
  x_lr = np.random.default_rng(4).random((2, 3, 32, 32))
  y = _lowres_measurement(x_lr)
  for method in INTERPOLATORS + [baselines.zero_fill]:
    out = method(y, FULL)
    assert out.shape == (2, 3, *FULL) and out.dtype == jnp.float32
    np.testing.assert_allclose(out[1, 2], method(y[1, 2], FULL), atol=1e-6)


# --- metrics -------------------------------------------------------------------------------------

def _brute_ssim_slice(x, y, data_range):
  """SSIM by an explicit loop over every fully-inside 7x7 window (ddof=1 statistics)."""
  c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
  vals = []
  for i in range(x.shape[0] - 6):
    for j in range(x.shape[1] - 6):
      a, b = x[i:i + 7, j:j + 7].ravel(), y[i:i + 7, j:j + 7].ravel()
      cov = np.cov(a, b)  # ddof = 1
      vals.append((2 * a.mean() * b.mean() + c1) * (2 * cov[0, 1] + c2)
                  / ((a.mean() ** 2 + b.mean() ** 2 + c1) * (cov[0, 0] + cov[1, 1] + c2)))
  return np.mean(vals)


def test_identical_images():
  x = np.random.default_rng(5).random((3, 16, 16))
  assert metrics.ssim(x, x) == pytest.approx(1.0, abs=1e-12)
  assert metrics.nmse(x, x) == 0.0
  assert metrics.psnr(x, x) == float("inf")


def test_psnr_and_nmse_known_values():
  gt = np.zeros((2, 8, 8))
  gt[0, 0, 0] = 2.0                                           # volume max 2
  gt[1] = 1.0
  pred = gt + 0.1                                             # MSE 0.01
  assert metrics.psnr(gt, pred) == pytest.approx(10 * np.log10(4 / 0.01))
  assert metrics.nmse(gt, pred) == pytest.approx(128 * 0.01 / (4 + 64))


def test_ssim_matches_brute_force_with_volume_range():
  rng = np.random.default_rng(6)
  gt = rng.random((2, 12, 13))
  gt[1] *= 0.5                                                # slice max ≠ volume max
  pred = gt + 0.1 * rng.standard_normal(gt.shape)
  want = np.mean([_brute_ssim_slice(gt[s], pred[s], gt.max()) for s in range(2)])
  assert metrics.ssim(gt, pred) == pytest.approx(want, rel=1e-10)


def test_ssim_of_constant_slices():
  """Flat windows: SSIM = (2ab + C1)/(a² + b² + C1), C1 = (0.01·a)² for R = a."""
  a, b = 0.8, 0.6
  c1 = (0.01 * a) ** 2
  got = metrics.ssim(np.full((1, 9, 9), a), np.full((1, 9, 9), b))
  assert got == pytest.approx((2 * a * b + c1) / (a**2 + b**2 + c1), rel=1e-9)


def test_evaluate_averages_per_subject():
  gt = np.ones((5, 8, 8))
  pred = gt.copy()
  pred[:2] += 0.1                                             # subject "a": MSE 0.01
  pred[2:] += 0.01                                            # subject "b": MSE 1e-4
  result = metrics.evaluate(gt, pred, np.array(["a", "a", "b", "b", "b"]))
  assert list(result["per_subject"]) == ["a", "b"]
  assert result["per_subject"]["a"]["psnr"] == pytest.approx(20.0)
  assert result["per_subject"]["b"]["psnr"] == pytest.approx(40.0)
  assert result["psnr"] == pytest.approx(30.0)                # mean of volumes, not pooled
  assert result["nmse"] == pytest.approx((0.01 + 1e-4) / 2)


def test_data_consistency_reexports_residual():
  x = np.random.default_rng(7).random((2, *FULL)).astype(np.float32)
  y0 = kspace.measure(jnp.asarray(x), (32, 32))
  np.testing.assert_allclose(metrics.data_consistency(np.zeros_like(x), y0), [1.0, 1.0], rtol=1e-6)


# --- DESIGN §5 table -----------------------------------------------------------------------------

DESIGN_TABLE = {  # (h, w): {method: (PSNR dB, SSIM)}
    (64, 64): {"zero_fill": (34.74, 0.921), "bilinear": (31.70, 0.905), "bicubic": (33.53, 0.917)},
    (32, 32): {"zero_fill": (27.66, 0.734), "bilinear": (26.12, 0.711), "bicubic": (27.00, 0.736)},
}


@pytest.mark.parametrize("low", list(DESIGN_TABLE))  # ~6 s each on 2 CPU cores
def test_design_table_is_reproduced(low):
  if not DATA.exists():
    pytest.skip(f"validation data not found at {DATA} (see shared/data/README.md)")
  data = np.load(DATA)
  x = (data["images"] / 4095.0).astype(np.float32)  # [N, 128, 128]
  y0 = kspace.measure(jnp.asarray(x), low)
  for name, (want_psnr, want_ssim) in DESIGN_TABLE[low].items():
    pred = np.asarray(getattr(baselines, name)(y0, FULL))
    got = metrics.evaluate(x, pred, data["subject"])
    assert got["psnr"] == pytest.approx(want_psnr, abs=0.05), name
    assert got["ssim"] == pytest.approx(want_ssim, abs=0.002), name


def test_nearest_enlarge_sits_on_the_fft_grid():
  # 4x: the DC pixel H//2 shows low-res h//2 (a pixel-centre resize would put it 1.5 px away)
  # and every interior low-res row fills 4 high-res rows; batched, non-square input.
  x_lr = np.arange(2 * 8 * 4, dtype=np.float32).reshape(2, 8, 4)
  big = baselines.nearest_enlarge(x_lr, (32, 16))
  assert big.shape == (2, 32, 16)
  np.testing.assert_array_equal(big[:, 16, 8], x_lr[:, 4, 2])
  # Low-res row k covers high-res rows 4k-2 … 4k+1 (pixel-centre resizing: 4k … 4k+3).
  np.testing.assert_array_equal(big[:, 14, 8], x_lr[:, 4, 2])
  np.testing.assert_array_equal(big[:, 13, 8], x_lr[:, 3, 2])
  rows_per_lowres = np.bincount((big[0, :, 0] // 4).astype(int), minlength=8)  # x_lr[0,k,0]=4k
  assert rows_per_lowres[1:-1].tolist() == [4] * 6 and rows_per_lowres.sum() == 32
