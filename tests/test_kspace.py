"""Exact identities of the k-space forward model (vdm_mri/kspace.py, DESIGN §3)."""

import numpy as np
import pytest
import jax
import jax.numpy as jnp

from vdm_mri import kspace

FULL = (128, 128)
LOWRES = [(32, 32), (48, 48), (63, 63), (64, 128)]  # even, even, odd, anisotropic
SMALL_SHAPES = [(8, 8), (7, 9), (6, 5), (1, 4)]     # even, odd, mixed, degenerate


def _rng(seed=0):
  return np.random.default_rng(seed)


def _image(shape, seed=0):
  """A real float32 test image (nonnegative, like a magnitude image)."""
  return jnp.asarray(_rng(seed).random(shape), jnp.float32)


def _cplx(shape, seed=0):
  r = _rng(seed)
  return jnp.asarray(r.standard_normal(shape) + 1j * r.standard_normal(shape), jnp.complex64)


def _inner(a, b):
  """⟨a, b⟩ = Σ conj(a)·b in complex128."""
  return np.vdot(np.asarray(a, np.complex128), np.asarray(b, np.complex128))


def _hermitian_complete(k):
  """Fill every sample of a centred spectrum `[H, W]` whose mirror (-u, -v) is non-zero but which
  is itself zero with conj(mirror), so that F⁻¹ of the result is real (numpy, independent of W)."""
  k = np.asarray(k, np.complex128)
  H, W = k.shape
  rows = (2 * (H // 2) - np.arange(H)) % H  # index of -u for the sample at index u
  cols = (2 * (W // 2) - np.arange(W)) % W
  mirror = np.conj(k[rows][:, cols])
  return np.where(k != 0, k, mirror)


def _np_fft2c(x):
  k = np.fft.fft2(np.fft.ifftshift(x, axes=(-2, -1)), norm="ortho")
  return np.fft.fftshift(k, axes=(-2, -1))


# --- F, F⁻¹ --------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", SMALL_SHAPES)
def test_fft_round_trip_and_numpy_convention(shape):
  x = _cplx((3, *shape))
  k = kspace.fft2c(x)
  assert k.dtype == jnp.complex64 and k.shape == x.shape
  np.testing.assert_allclose(kspace.ifft2c(k), x, atol=1e-5)
  np.testing.assert_allclose(k, _np_fft2c(np.asarray(x)), atol=1e-5)


@pytest.mark.parametrize("shape", SMALL_SHAPES)
def test_spatial_origin_maps_to_flat_spectrum(shape):
  """A delta at the centred origin (H//2, W//2) has the flat spectrum 1/sqrt(HW): no phase ramp."""
  H, W = shape
  delta = jnp.zeros(shape).at[H // 2, W // 2].set(1.0)
  np.testing.assert_allclose(kspace.fft2c(delta), np.full(shape, 1 / np.sqrt(H * W)), atol=1e-6)


@pytest.mark.parametrize("shape", SMALL_SHAPES + [(128, 128)])
def test_parseval(shape):
  x = _image((2, *shape), seed=1)
  np.testing.assert_allclose(np.linalg.norm(kspace.fft2c(x)), np.linalg.norm(x), rtol=1e-5)


@pytest.mark.parametrize("shape", SMALL_SHAPES)
def test_fft_adjoint(shape):
  """⟨F x, k⟩ = ⟨x, F⁻¹ k⟩ (F unitary, so F⁻¹ = F^H)."""
  x, k = _cplx(shape, seed=2), _cplx(shape, seed=3)
  np.testing.assert_allclose(_inner(kspace.fft2c(x), k), _inner(x, kspace.ifft2c(k)), rtol=1e-5)


# --- p⁻¹(Λ), p(Λ), Λ -------------------------------------------------------------------------------

@pytest.mark.parametrize("full,low", [((8, 8), (4, 4)), ((8, 8), (3, 5)), ((7, 9), (4, 3)),
                                      ((7, 9), (7, 9)), ((128, 128), (63, 63)),
                                      ((128, 128), (64, 128))])
def test_crop_selects_centred_frequencies(full, low):
  """The crop of the frequency grid of H is the frequency grid of h, along each axis."""
  fu = np.fft.fftshift(np.fft.fftfreq(full[0], 1 / full[0]))
  fv = np.fft.fftshift(np.fft.fftfreq(full[1], 1 / full[1]))
  grid = jnp.asarray(fu[:, None] + 1j * fv[None, :], jnp.complex64)
  want_u = np.fft.fftshift(np.fft.fftfreq(low[0], 1 / low[0]))
  want_v = np.fft.fftshift(np.fft.fftfreq(low[1], 1 / low[1]))
  cropped = kspace.crop(grid, low)
  np.testing.assert_array_equal(np.real(cropped), np.broadcast_to(want_u[:, None], low))
  np.testing.assert_array_equal(np.imag(cropped), np.broadcast_to(want_v[None, :], low))


@pytest.mark.parametrize("low", LOWRES)
def test_crop_pad_identities(low):
  y, k = _cplx((2, *low), seed=4), _cplx((2, *FULL), seed=5)
  np.testing.assert_array_equal(kspace.crop(kspace.pad(y, FULL), low), y)  # exact
  np.testing.assert_array_equal(kspace.pad(kspace.crop(k, low), FULL), kspace.mask(FULL, low) * k)
  np.testing.assert_allclose(_inner(kspace.pad(y, FULL), k), _inner(y, kspace.crop(k, low)),
                             rtol=1e-6)


def test_mask_is_centred_block():
  m = np.asarray(kspace.mask((8, 9), (4, 3)))
  assert m.dtype == np.float32 and m.sum() == 12
  np.testing.assert_array_equal(np.argwhere(m).min(0), [4 - 2, 4 - 1])
  np.testing.assert_array_equal(np.argwhere(m).max(0), [4 + 1, 4 + 1])


@pytest.mark.parametrize("bad", [(129, 64), (64, 200), (0, 4), (4,), (4.5, 4)])
def test_shapes_are_validated(bad):
  with pytest.raises(ValueError):
    kspace.mask(FULL, bad)


def test_pad_and_crop_validate_against_array():
  with pytest.raises(ValueError, match="larger"):
    kspace.pad(jnp.zeros((4, 4), jnp.complex64), (3, 8))
  with pytest.raises(ValueError, match="larger"):
    kspace.crop(jnp.zeros((4, 4), jnp.complex64), (5, 4))


def test_hermitian_weight():
  np.testing.assert_array_equal(kspace.hermitian_weight((8, 8), (3, 5)), np.ones((3, 5)))
  np.testing.assert_array_equal(kspace.hermitian_weight((8, 8), (8, 8)), np.ones((8, 8)))
  w = np.asarray(kspace.hermitian_weight((8, 9), (4, 4)))
  np.testing.assert_array_equal(w[0], 2.0)        # u = -2 row (mirror +2 not measured)
  np.testing.assert_array_equal(w[:, 0], 2.0)     # v = -2 column
  np.testing.assert_array_equal(w[1:, 1:], 1.0)


# --- measurement -----------------------------------------------------------------------------------

@pytest.mark.parametrize("low", LOWRES)
def test_band_limited_image_measures_its_lowres_measurement(low):
  """x band-limited to Λ with low-res image x_lr: crop(F x) = sqrt(HW/hw)·F_hw(x_lr), and back."""
  x_lr = _image(low, seed=6)
  y = kspace.measurement_from_lowres(x_lr, FULL)                     # [h, w] complex64
  spectrum = _hermitian_complete(kspace.pad(y, FULL))
  x = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(spectrum), norm="ortho"))
  assert np.abs(x.imag).max() < 1e-6                                 # x is a real image
  x = jnp.asarray(x.real, jnp.float32)
  np.testing.assert_allclose(kspace.measure(x, low), y, atol=2e-5)
  np.testing.assert_allclose(kspace.lowres_from_measurement(kspace.measure(x, low), FULL), x_lr,
                             atol=2e-5)
  np.testing.assert_allclose(x.mean(), x_lr.mean(), rtol=1e-5)       # same intensity


@pytest.mark.parametrize("low", LOWRES)
def test_zero_fill_keeps_intensity(low):
  """The intensity trap: a constant low-res image c zero-fills to the constant c."""
  y = kspace.measurement_from_lowres(jnp.full(low, 0.7), FULL)
  np.testing.assert_allclose(kspace.ifft2c(kspace.pad(y, FULL)), np.full(FULL, 0.7), atol=1e-6)


def test_measurement_noise_statistics():
  x0 = jnp.zeros((4, 128, 128))  # 65536 samples: relative std of the estimates < 0.6 %
  y = np.asarray(kspace.measure(x0, (128, 128), key=jax.random.key(0), sigma_y=0.5))
  np.testing.assert_allclose(np.mean(np.abs(y) ** 2), 0.25, rtol=0.03)   # E|ε|² = σ_y²
  np.testing.assert_allclose(np.var(y.real), 0.125, rtol=0.03)            # σ_y²/2 each
  np.testing.assert_allclose(np.var(y.imag), 0.125, rtol=0.03)
  assert abs(np.mean(y.real * y.imag)) < 0.003                            # independent
  with pytest.raises(ValueError, match="key"):
    kspace.measure(x0, (32, 32), sigma_y=0.1)


def test_perturb_measurement_is_measurement_of_z_t():
  x0 = _image((2, *FULL), seed=7)
  eps = jnp.asarray(_rng(8).standard_normal((2, *FULL)), jnp.float32)
  alpha, sigma = 0.8, 0.6
  y_t = kspace.perturb_measurement(kspace.measure(x0, (48, 48)), eps, alpha, sigma)
  np.testing.assert_allclose(y_t, kspace.measure(alpha * x0 + sigma * eps, (48, 48)), atol=2e-4)


@pytest.mark.parametrize("low", [(32, 32), (63, 63), (64, 128)])
def test_encode_measurement(low):
  """Measuring f = 2x - 1 equals encoding the measurement of x; decode inverts it."""
  x = _image(FULL, seed=9)
  y = kspace.measure(x, low)
  y_f = kspace.encode_measurement(y, 2.0, -1.0, FULL)
  np.testing.assert_allclose(y_f, kspace.measure(2.0 * x - 1.0, low), atol=1e-4)
  np.testing.assert_allclose(kspace.decode_measurement(y_f, 2.0, -1.0, FULL), y, atol=1e-5)


# --- guidance, projection, residual --------------------------------------------------------------

def _case(low, seed=10):
  """(x_t, ŷ) with ŷ the measurement of a different real image (so the residual is large)."""
  x_t = jnp.asarray(_rng(seed).standard_normal((2, *FULL)), jnp.float32)
  return x_t, kspace.measure(_image((2, *FULL), seed=seed + 1), low)


@pytest.mark.parametrize("low", LOWRES)
def test_guide_lambda_zero_is_identity(low):
  x_t, y = _case(low)
  x_new = kspace.guide(x_t, y, 0.0)
  assert x_new.dtype == jnp.float32 and x_new.shape == x_t.shape
  np.testing.assert_array_equal(x_new, x_t)


@pytest.mark.parametrize("low", LOWRES)
def test_projection_is_exactly_data_consistent(low):
  x_t, y = _case(low)
  assert np.all(np.asarray(kspace.residual(x_t, y)) > 0.5)
  assert np.all(np.asarray(kspace.residual(kspace.project(x_t, y), y)) < 1e-5)


@pytest.mark.parametrize("low", [(32, 32), (64, 128)])
def test_naive_real_part_is_not_consistent_at_even_sizes(low):
  """Re F⁻¹[p(ŷ) + (I-Λ)F x] halves the correction on the unpaired edge: why W exists."""
  x_t, y = _case(low)
  k = kspace.fft2c(x_t)
  naive = jnp.real(kspace.ifft2c(kspace.pad(y, FULL) + (1 - kspace.mask(FULL, low)) * k))
  assert np.all(np.asarray(kspace.residual(naive, y)) > 1e-3)


@pytest.mark.parametrize("low", [(48, 48), (63, 63)])
def test_projection_is_orthogonal(low):
  """P is the closest consistent real image: x - Px ⟂ Px - x₀ for every consistent real x₀."""
  x_t, _ = _case(low)
  x0 = _image(FULL, seed=12)
  y = kspace.measure(x0, low)
  px = kspace.project(x_t[0], y)
  np.testing.assert_allclose(kspace.project(px, y), px, atol=1e-5)       # idempotent
  cos = _inner(x_t[0] - px, px - x0).real / (np.linalg.norm(x_t[0] - px) * np.linalg.norm(px - x0))
  assert abs(cos) < 1e-5


@pytest.mark.parametrize("low", LOWRES)
def test_guide_mixes_measured_kspace(low):
  """On Λ: crop F x_t' = λ ŷ + (1-λ) crop F x_t; off Λ and its mirror, F x_t is kept."""
  x_t, y = _case(low)
  lam = 0.3
  k_old, k_new = kspace.fft2c(x_t), kspace.fft2c(kspace.guide(x_t, y, lam))
  np.testing.assert_allclose(kspace.crop(k_new, low), lam * y + (1 - lam) * kspace.crop(k_old, low),
                             atol=1e-4)
  m = np.asarray(kspace.mask(FULL, low))
  mirror_m = m[::-1, ::-1]  # the mirror (-u, -v) of Λ, for even H, W at index (H - i) % H
  mirror_m = np.roll(mirror_m, (1, 1), axis=(0, 1))
  outside = (m == 0) & (mirror_m == 0)
  np.testing.assert_allclose(np.asarray(k_new)[:, outside], np.asarray(k_old)[:, outside],
                             atol=1e-4)


def test_guide_per_image_lambda_and_jit():
  x_t, y = _case((48, 48))
  lam = jnp.array([0.2, 0.9])[:, None, None]  # [B, 1, 1]
  batched = jax.jit(kspace.guide)(x_t, y, lam)
  for b in range(2):
    np.testing.assert_allclose(batched[b], kspace.guide(x_t[b], y[b], float(lam[b, 0, 0])),
                               atol=1e-5)


def test_residual():
  x = _image((3, *FULL), seed=13)
  y = kspace.measure(x, (32, 32))
  np.testing.assert_allclose(kspace.residual(x, y), 0.0, atol=1e-6)
  np.testing.assert_allclose(kspace.residual(jnp.zeros_like(x), y), 1.0, rtol=1e-6)
  np.testing.assert_allclose(kspace.residual(0.5 * x, y), 0.5, rtol=1e-5)


@pytest.mark.parametrize("text, size", [("32x32", (32, 32)), ("64X128", (64, 128)),
                                        (" 32 ", (32, 32)), ("7 x 5", (7, 5))])
def test_size_text_round_trips(text, size):
  assert kspace.parse_size(text) == size
  assert kspace.parse_size(kspace.size_name(size)) == size


@pytest.mark.parametrize("text", ["32by32", "0x32", "32x", "", None, "-4x4"])
def test_bad_size_text_is_refused(text):
  with pytest.raises(ValueError, match="must look like 32x32"):
    kspace.parse_size(text)
