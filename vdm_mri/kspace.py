"""The k-space forward model of the paper (DESIGN.md §3), in pure jax.numpy.

Notation (paper → code):

| paper  | code      | meaning                                                          |
| ------ | --------- | ---------------------------------------------------------------- |
| F      | `fft2c`   | centred orthonormal 2D DFT over the last two axes                 |
| F⁻¹    | `ifft2c`  | its inverse (= its adjoint, F is unitary)                         |
| Λ      | `mask`    | H×W 0/1 mask of the measured centre h×w                           |
| p(Λ)   | `pad`     | zero-pad an h×w k-space to H×W                                    |
| p⁻¹(Λ) | `crop`    | centre h×w of an H×W k-space                                      |
| λ      | `lam`     | guidance weight in [0, 1]                                         |
| ŷ      | `y`       | measured k-space, h×w complex; ŷ₀ clean (+ε_y), ŷ_t noised to t   |
| x      | `x`       | real image, H×W (image space; the model space is f = scale·x + offset) |

Every function acts on the last two axes and broadcasts over any leading batch axes: images
`[..., H, W]` float32, spectra `[..., H, W]` / measurements `[..., h, w]` complex64.

Identities that hold exactly (and are tested in tests/test_kspace.py):
  F⁻¹F = I;  ‖F x‖ = ‖x‖;  ⟨F x, k⟩ = ⟨x, F⁻¹ k⟩;  crop(pad(y)) = y;  ⟨pad y, k⟩ = ⟨y, crop k⟩;
  pad(crop(k)) = Λ ⊙ k;  crop(F project(x, y)) = y for y = crop(F x₀), x₀ real.

Index convention. numpy's fftshift puts the DC sample at index N//2 for every N (even or odd),
so frequency u ∈ [-N//2, N - N//2 - 1] lives at index u + N//2, and the centred h-crop of an
H-axis starts at H//2 - h//2 and holds u ∈ [-(h//2), h - h//2 - 1].

Even sizes and the real part (DESIGN §3 "Even sizes"). For real x, F x is Hermitian:
(F x)[u, v] = conj((F x)[-u, -v]). For odd h the crop is closed under (u, v) → (-u, -v). For even
h < H it is not: the edge row u = -h/2 is measured but its mirror u = +h/2 lies outside the crop
(likewise the column v = -w/2 for even w < W). Call such samples *unpaired*; `hermitian_weight`
gives W = 2 on them and 1 elsewhere. Let A = crop∘F act on real images (a real-linear map into
C^{h×w}). With the real inner product ⟨a, b⟩ = Re Σ conj(a)·b, its adjoint is
A^T r = Re F⁻¹ pad(r), and on measurements of real images (the range of A)
A A^T r = r on paired samples and r/2 on unpaired ones (the half of Re F⁻¹ pad(r) that lands on
the mirror +h/2 is discarded by the crop). Hence (A A^T)⁻¹ = W ⊙ ·, and the orthogonal projection
onto {real x : crop(F x) = ŷ} is

    project(x, ŷ) = x + A^T (A A^T)⁻¹ (ŷ - A x) = x + Re F⁻¹ pad(W ⊙ (ŷ - crop F x)).     (P)

The naive real part, Re F⁻¹[pad(ŷ) + (I - Λ) F x], is (P) without W: it leaves half of the
residual on every unpaired sample. With W, the unmeasured mirror sample +h/2 is set by Hermitian
symmetry from the measured -h/2 one, which is the only way a real image can match it. For a ŷ
that no real image can produce (complex noise ε_y), (P) is the least-squares solution: it matches
the Hermitian part of ŷ on paired samples and ŷ itself on unpaired ones.
"""

import math
import numbers
import re

import jax
import jax.numpy as jnp

_AXES = (-2, -1)


# --- F, F⁻¹ -------------------------------------------------------------------------------------

def fft2c(x):
  """F: centred orthonormal DFT, fftshift(fft2(ifftshift(x), norm="ortho")) over the last two axes.

  `[..., H, W]` real or complex → `[..., H, W]` complex64. Unitary: ‖F x‖ = ‖x‖.
  """
  x = jnp.fft.ifftshift(x, axes=_AXES)
  return jnp.fft.fftshift(jnp.fft.fft2(x, axes=_AXES, norm="ortho"), axes=_AXES)


def ifft2c(k):
  """F⁻¹ = F^H: fftshift(ifft2(ifftshift(k), norm="ortho")) over the last two axes."""
  k = jnp.fft.ifftshift(k, axes=_AXES)
  return jnp.fft.fftshift(jnp.fft.ifft2(k, axes=_AXES, norm="ortho"), axes=_AXES)


# --- p⁻¹(Λ), p(Λ), Λ ----------------------------------------------------------------------------

def _check_shapes(full_shape, lowres_shape):
  """Validate (H, W) ⊇ (h, w); return both as int tuples."""
  full_shape, lowres_shape = tuple(full_shape), tuple(lowres_shape)
  for name, shape in (("full_shape", full_shape), ("lowres_shape", lowres_shape)):
    if len(shape) != 2 or any(int(n) != n or n < 1 for n in shape):
      raise ValueError(f"{name} must be two positive ints (H, W), got {shape}")
  if any(n > N for n, N in zip(lowres_shape, full_shape)):
    raise ValueError(f"low-res shape {lowres_shape} is larger than the target "
                     f"{full_shape} along some axis")
  return tuple(map(int, full_shape)), tuple(map(int, lowres_shape))


def _starts(full_shape, lowres_shape):
  """First index of the centred crop along each axis: N//2 - n//2 (DC at N//2 and n//2)."""
  return tuple(N // 2 - n // 2 for N, n in zip(full_shape, lowres_shape))


def crop(k, lowres_shape):
  """p⁻¹(Λ): the centre h×w of an H×W k-space. `[..., H, W]` → `[..., h, w]`."""
  full_shape, (h, w) = _check_shapes(k.shape[-2:], lowres_shape)
  r0, c0 = _starts(full_shape, (h, w))
  return k[..., r0:r0 + h, c0:c0 + w]


def pad(y, full_shape):
  """p(Λ): zero-pad an h×w k-space to H×W, DC at (h//2, w//2) → (H//2, W//2).

  `[..., h, w]` → `[..., H, W]`. crop(pad(y)) = y exactly; pad is the adjoint of crop.
  """
  (H, W), (h, w) = _check_shapes(full_shape, y.shape[-2:])
  r0, c0 = _starts((H, W), (h, w))
  widths = [(0, 0)] * (y.ndim - 2) + [(r0, H - h - r0), (c0, W - w - c0)]
  return jnp.pad(y, widths)


def mask(full_shape, lowres_shape):
  """Λ: `[H, W]` float32, 1 on the measured centre h×w, 0 elsewhere; Λ = pad(1_{h×w})."""
  _, lowres_shape = _check_shapes(full_shape, lowres_shape)
  return pad(jnp.ones(lowres_shape, jnp.float32), full_shape)


def hermitian_weight(full_shape, lowres_shape):
  """W: `[h, w]` float32, 2 on unpaired samples (mirror outside the crop), 1 elsewhere.

  Along an axis cropped from N to n, the first crop index (frequency -n/2) is unpaired iff n is
  even and n < N (for n = N even, -N/2 is its own mirror modulo N). A sample is unpaired if its
  row or its column is. See the module docstring for why (A A^T)⁻¹ = W ⊙ ·.
  """
  (H, W), (h, w) = _check_shapes(full_shape, lowres_shape)
  row = jnp.zeros(h, bool).at[0].set(h % 2 == 0 and h < H)
  col = jnp.zeros(w, bool).at[0].set(w % 2 == 0 and w < W)
  return jnp.where(row[:, None] | col[None, :], 2.0, 1.0).astype(jnp.float32)


# --- measurement ŷ₀, ŷ_t --------------------------------------------------------------------------

def measure(x0, lowres_shape, key=None, sigma_y=0.0):
  """ŷ₀ = p⁻¹(Λ) F x₀ + ε_y (DESIGN §3). `[..., H, W]` → `[..., h, w]` complex64.

  ε_y is circular complex Gaussian of std σ_y: real and imaginary parts each N(0, σ_y²/2),
  independent per sample, so E|ε_y|² = σ_y² (the same per-sample energy as a real image-space
  noise of std σ_y after the unitary F). `key` is required whenever σ_y may be non-zero.
  """
  y0 = crop(fft2c(x0), lowres_shape)  # [..., h, w] complex64
  if key is None:
    if isinstance(sigma_y, numbers.Real) and sigma_y == 0:
      return y0
    raise ValueError("measure: sigma_y != 0 (or a traced sigma_y) needs a PRNG key")
  key_re, key_im = jax.random.split(key)
  eps_re = jax.random.normal(key_re, y0.shape, jnp.float32)
  eps_im = jax.random.normal(key_im, y0.shape, jnp.float32)
  eps_y = (sigma_y / math.sqrt(2.0)) * jax.lax.complex(eps_re, eps_im)
  return y0 + eps_y.astype(y0.dtype)


def perturb_measurement(y0, eps_image, alpha_t, sigma_t):
  """ŷ_t = α_t·ŷ₀ + σ_t·p⁻¹(Λ) F ε, with ε an image-space N(0, I) draw `[..., H, W]`.

  This is the measurement of z_t = α_t·x₀ + σ_t·ε (forward diffusion of the measured image), so
  it has the same noise level as z_t on Λ. α_t, σ_t: scalars or arrays broadcastable against
  `[..., h, w]` (e.g. `[B, 1, 1]`). Returns `[..., h, w]` complex64.
  """
  return alpha_t * y0 + sigma_t * crop(fft2c(eps_image), y0.shape[-2:])


# --- intensity scale and model space --------------------------------------------------------------

def measurement_from_lowres(x_lr, full_shape):
  """ŷ₀ = sqrt(HW/hw)·F_hw(x_lr): a user's h×w image as a measurement of the H×W image.

  With orthonormal FFTs, the same object at the same intensity has k-space
  sqrt(hw/HW)·p⁻¹F(x) at size h×w (DESIGN §3), so this ŷ₀ makes zero-filling F⁻¹p(ŷ₀) come out
  at x_lr's intensity, and equals crop(F x) for the band-limited x whose low-res image is x_lr.
  `[..., h, w]` → `[..., h, w]` complex64.
  """
  (H, W), (h, w) = _check_shapes(full_shape, x_lr.shape[-2:])
  return math.sqrt(H * W / (h * w)) * fft2c(x_lr)


def lowres_from_measurement(y, full_shape):
  """x_lr = sqrt(hw/HW)·F_hw⁻¹(ŷ), the inverse of `measurement_from_lowres`; complex64.

  Complex in general: for even h the unpaired edge row of crop(F x) is not Hermitian at size h.
  Take |·| (or Re) for a magnitude image. `[..., h, w]` → `[..., h, w]`.
  """
  (H, W), (h, w) = _check_shapes(full_shape, y.shape[-2:])
  return math.sqrt(h * w / (H * W)) * ifft2c(y)


def _dc_spike(full_shape, lowres_shape):
  """p⁻¹(Λ) F(1): `[h, w]` with sqrt(HW) at the DC sample (h//2, w//2) and 0 elsewhere."""
  (H, W), (h, w) = _check_shapes(full_shape, lowres_shape)
  return jnp.zeros((h, w), jnp.complex64).at[h // 2, w // 2].set(math.sqrt(H * W))


def encode_measurement(y, scale, offset, full_shape):
  """Measurement of f = scale·x + offset given ŷ of x: scale·ŷ + offset·p⁻¹(Λ)F(1).

  F is linear and F(1) = sqrt(HW)·δ_DC (DESIGN §3 "Model space vs image space"), so
  crop(F(scale·x + offset)) = encode_measurement(crop(F x), scale, offset, (H, W)) exactly.
  scale, offset: scalars (or broadcastable against `[..., h, w]`).
  """
  return scale * y + offset * _dc_spike(full_shape, y.shape[-2:])


def decode_measurement(y_f, scale, offset, full_shape):
  """Inverse of `encode_measurement`: ŷ = (ŷ_f - offset·p⁻¹(Λ)F(1)) / scale."""
  return (y_f - offset * _dc_spike(full_shape, y_f.shape[-2:])) / scale


# --- guidance, projection, residual --------------------------------------------------------------

def guide(x_t, y_t, lam):
  """The paper's k-space guidance, returning a real image `[..., H, W]` float32.

      x_t' = F⁻¹[λ·p(ŷ_t) + (1-λ)·Λ·F x_t + (I-Λ)·F x_t] = x_t + λ·F⁻¹ p(ŷ_t - p⁻¹F x_t),

  with the real part taken Hermitian-consistently (module docstring, eq. (P)):

      x_t' = x_t + Re F⁻¹ p(W ⊙ λ(ŷ_t - p⁻¹ F x_t)).

  For ŷ_t the measurement of a real image, p⁻¹F x_t' = λ·ŷ_t + (1-λ)·p⁻¹F x_t exactly on Λ; the
  outer k-space (I-Λ)F x_t is kept except the mirror row/column (+h/2, +w/2) of unpaired edge
  samples, which Hermitian symmetry ties to the measured ones. λ=0 returns x_t; λ=1 is
  `project`. λ: scalar or broadcastable against `[..., h, w]` (e.g. `[B, 1, 1]`).
  """
  full_shape, lowres_shape = x_t.shape[-2:], y_t.shape[-2:]
  w = hermitian_weight(full_shape, lowres_shape)  # [h, w]
  r = y_t - crop(fft2c(x_t), lowres_shape)        # [..., h, w] complex64
  return x_t + jnp.real(ifft2c(pad(w * lam * r, full_shape))).astype(x_t.dtype)


def project(x, y0):
  """Orthogonal projection onto {real x : p⁻¹(Λ) F x = ŷ₀} = `guide` with λ=1 (eq. (P)).

  The optional final step after sampling (DESIGN §3); residual(project(x, ŷ₀), ŷ₀) is at
  round-off for ŷ₀ measured from a real image at even and odd sizes.
  """
  return guide(x, y0, 1.0)


def residual(x, y0):
  """Data-consistency ‖p⁻¹(Λ) F x̂ - ŷ₀‖ / ‖ŷ₀‖ per image.

  x `[..., H, W]` real, ŷ₀ `[..., h, w]` complex → `[...]` float32.
  """
  r = crop(fft2c(x), y0.shape[-2:]) - y0  # [..., h, w] complex64
  norm = lambda k: jnp.sqrt(jnp.sum(jnp.abs(k) ** 2, axis=_AXES))
  return norm(r) / norm(y0)


def parse_size(text) -> tuple[int, int]:
  """A low-res matrix h×w written as text: '32x32' / '64x128' / '32' (square) -> (h, w).
  Raises ValueError for anything else (the inverse of `size_name`)."""
  m = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+))?\s*", text or "")
  if not m or int(m.group(1)) < 1 or int(m.group(2) or m.group(1)) < 1:
    raise ValueError(f"must look like 32x32 (positive h x w), got {text!r}")
  return int(m.group(1)), int(m.group(2) or m.group(1))


def size_name(shape) -> str:
  """(h, w) -> 'hxw', e.g. '32x32'."""
  return f"{shape[0]}x{shape[1]}"
