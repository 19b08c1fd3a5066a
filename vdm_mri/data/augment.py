"""Training-time augmentation inside the jitted step: left-right flips, random patches, and
non-leaking affine augmentation.

Patch training (Patch Diffusion, Wang et al. NeurIPS 2023): each step trains on random crops of
one size p drawn per step (sizes and probabilities from the config, e.g. 32/64/128 px with
0.2/0.3/0.5), and the network sees where each crop lies in the whole image through two
coordinate channels (`unet.full_coords` convention: pixel centres of the whole image in [-1, 1]).
A crop of the whole size is the whole image with the whole-image coordinates, so sampling, which
always runs on whole images, needs no coordinates from the caller.

Non-leaking affine augmentation (Karras et al., EDM, NeurIPS 2022, appendix C): a fraction of
the images is rotated, scaled and shifted (bilinear), and the network is told how through
`AUG_LABELS` numbers that are zero exactly for an image left as it is (`unet.UNet.aug_dim`).
Sampling gives zero labels, so the network generates untransformed images: the transforms' blur
and borders do not leak into the prior, while it sees more geometric variety than 72 subjects
hold.

The crop size is static (one compiled step per size); the host draws it from the step number
(`patch_size_for_step`), so a resumed run draws the same sizes. Offsets and flips are drawn per
image inside the step from its key.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class PatchSchedule:
  """Patch sizes and their probabilities; `sizes` ascending, the last may be the whole image."""

  sizes: tuple[int, ...]
  probs: tuple[float, ...]
  seed: int = 0

  def __post_init__(self):
    if len(self.sizes) != len(self.probs) or not self.sizes:
      raise ValueError(f"patch sizes {self.sizes} and probabilities {self.probs} must be "
                       "non-empty and of the same length")
    if any(p < 0 for p in self.probs) or not np.isclose(sum(self.probs), 1.0):
      raise ValueError(f"patch probabilities {self.probs} must be ≥ 0 and sum to 1")
    if any(s <= 0 for s in self.sizes):
      raise ValueError(f"patch sizes {self.sizes} must be positive")

  def size_for_step(self, step: int) -> int:
    """The crop size of step `step`: a deterministic draw from (seed, step)."""
    u = np.random.default_rng((self.seed, step)).random()
    return int(self.sizes[min(np.searchsorted(np.cumsum(self.probs), u, side="right"),
                              len(self.sizes) - 1)])

  def mean_pixels(self) -> float:
    """Expected pixels per crop (what a step costs, roughly)."""
    return float(sum(p * s * s for s, p in zip(self.sizes, self.probs)))


def parse_patch_schedule(sizes: str, probs: str, seed: int = 0) -> PatchSchedule | None:
  """'32,64,128' and '0.2,0.3,0.5' -> PatchSchedule; '' -> None (whole images)."""
  if not sizes.strip():
    return None
  try:
    s = tuple(int(v) for v in sizes.split(","))
    p = tuple(float(v) for v in probs.split(",")) if probs.strip() else (1.0 / len(s),) * len(s)
  except ValueError:
    raise ValueError(f"patch sizes {sizes!r} / probabilities {probs!r}: expected "
                     "comma-separated numbers") from None
  return PatchSchedule(tuple(sorted(s)), tuple(p for _, p in sorted(zip(s, p))), seed)


def random_flip(key, x):
  """Each image of x [B, H, W, C] mirrored left-right with probability ½."""
  flip = jax.random.bernoulli(key, 0.5, (x.shape[0],))
  return jnp.where(flip[:, None, None, None], x[:, :, ::-1], x)


def random_crop(key, x, size: int):
  """Random size×size crops of x [B, H, W, C] (uniform offsets) and their coordinates in the
  whole image: ([B, size, size, C], [B, size, size, 2])."""
  b, h, w, _ = x.shape
  if size > min(h, w):
    raise ValueError(f"patch size {size} exceeds the image {h}x{w}")
  key_r, key_c = jax.random.split(key)
  rows = jax.random.randint(key_r, (b,), 0, h - size + 1)
  cols = jax.random.randint(key_c, (b,), 0, w - size + 1)
  crop = jax.vmap(lambda im, r, c: jax.lax.dynamic_slice(im, (r, c, 0), (size, size, im.shape[-1])))
  patches = crop(x, rows, cols)
  pix = jnp.arange(size, dtype=jnp.float32)
  r = (2.0 * (rows[:, None].astype(jnp.float32) + pix) + 1.0) / h - 1.0  # [B, size]
  c = (2.0 * (cols[:, None].astype(jnp.float32) + pix) + 1.0) / w - 1.0
  coords = jnp.stack([jnp.broadcast_to(r[:, :, None], (b, size, size)),
                      jnp.broadcast_to(c[:, None, :], (b, size, size))], axis=-1)
  return patches, coords


AUG_LABELS = 4
"""Labels of `random_affine`: rotation, log-scale, row and column shift, each as a fraction of
its range (in [-1, 1]); all zero for an image left as it is."""


@dataclasses.dataclass(frozen=True)
class Affine:
  """Non-leaking affine augmentation: each image, with probability `prob`, rotated by an angle
  uniform in ±`degrees`, scaled by 2^u with u uniform in ±`log2_scale`, and shifted by a fraction
  uniform in ±`shift` of the image size along each axis."""

  prob: float
  degrees: float = 10.0
  log2_scale: float = 0.15
  shift: float = 0.0625

  def __post_init__(self):
    if not 0.0 <= self.prob <= 1.0:
      raise ValueError(f"augmentation probability {self.prob} must be in [0, 1]")
    if min(self.degrees, self.log2_scale, self.shift) < 0:
      raise ValueError(f"augmentation ranges must be ≥ 0: degrees {self.degrees}, log2_scale "
                       f"{self.log2_scale}, shift {self.shift}")


def affine_warp(image, degrees, log2_scale, shift_rows, shift_cols, fill):
  """`image` [H, W, C] rotated by `degrees` about its centre (counter-clockwise as displayed,
  row 0 at the top), scaled by 2^`log2_scale` and shifted by (`shift_rows`, `shift_cols`)
  pixels; bilinear, `fill` outside the image. Zero angle, zero scale and integer shifts are
  exact."""
  h, w, _ = image.shape
  theta = jnp.deg2rad(jnp.asarray(degrees, jnp.float32))
  inv_s = jnp.exp2(-jnp.asarray(log2_scale, jnp.float32))
  cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
  rr, cc = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32) - cy - shift_rows,
                        jnp.arange(w, dtype=jnp.float32) - cx - shift_cols, indexing="ij")
  cos, sin = jnp.cos(theta), jnp.sin(theta)
  # output pixel -> source pixel: the inverse rotation (rows point down) and scale
  src_r = (cos * rr + sin * cc) * inv_s + cy
  src_c = (cos * cc - sin * rr) * inv_s + cx
  # zero outside for image - fill (a static cval), so `fill` may be traced
  shifted = image.astype(jnp.float32) - fill
  channels = [jax.scipy.ndimage.map_coordinates(shifted[..., k], [src_r, src_c], order=1,
                                                mode="constant", cval=0.0)
              for k in range(image.shape[-1])]
  return (jnp.stack(channels, axis=-1) + fill).astype(image.dtype)


def random_affine(key, x, aug: Affine):
  """x [B, H, W, C] with `aug` applied to a random subset of the images, and their labels
  [B, AUG_LABELS] (zero for the others). Outside the image the warp fills in each image's own
  minimum (its background)."""
  b, h, w, _ = x.shape
  key_apply, key_params = jax.random.split(key)
  apply = jax.random.bernoulli(key_apply, aug.prob, (b,))
  u = jax.random.uniform(key_params, (b, AUG_LABELS), minval=-1.0, maxval=1.0)
  u = jnp.where(apply[:, None], u, 0.0)
  fill = jnp.min(x, axis=(1, 2, 3))
  warped = jax.vmap(affine_warp)(x, u[:, 0] * aug.degrees, u[:, 1] * aug.log2_scale,
                                 u[:, 2] * aug.shift * h, u[:, 3] * aug.shift * w, fill)
  return jnp.where(apply[:, None, None, None], warped, x), u
