"""Score networks ε̂(z_t, g_t) for images [B, H, W, C]; they know nothing of diffusion.

Both networks share one call signature:

    eps_hat = net.apply(params, z, g, deterministic=True, rngs={"dropout": key})

z: [B, H, W, C] float32, the noisy image z_t in the encoded space.
g: [B] or scalar, the noise-level conditioning; the VDM passes γ_t rescaled to [0, 1]
   (`vdm.gamma_to_cond`), embedded like a DDPM time step (g·1000, sinusoidal).
Returns ε̂: [B, H, W, C] float32.

- `ScoreUNet`: the paper's "U-Net of depth 32", i.e. VDM's CIFAR-10 score network generalised to
  C channels and any H×W: no down-sampling, `n_layer` ResNet blocks down, a ResBlock-Attention-
  ResBlock middle, `n_layer + 1` blocks up with skip concatenation, Fourier features of z as extra
  input channels, and the input z added to the output ("base measure").
- `UNet`: a multi-resolution U-Net (DDPM-style channel multipliers, ResNet blocks per level,
  attention at chosen resolutions) with the same conditioning, Fourier features and output skip,
  about 20x cheaper per image at 128x128.

Attention uses `jax.nn.dot_product_attention`, so XLA can pick a fused kernel on the GPU.
`dtype` sets the compute dtype (for example bfloat16); parameters stay float32.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


def timestep_embedding(g, dim: int, max_period: float = 10000.0):
  """Sinusoidal embedding of g·1000: [B] -> [B, dim] (as DDPM / VDM embed time)."""
  g = jnp.asarray(g, jnp.float32) * 1000.0
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - 1))
  args = g[:, None] * freqs[None, :]
  emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


def fourier_features(z, exponents: Sequence[int] = (6, 7)):
  """[sin, cos](2^n·2π·z) for each exponent n and channel: [B, H, W, C] -> [B, H, W, 2·C·len(n)]."""
  w = 2.0 ** jnp.asarray(exponents, jnp.float32) * 2.0 * jnp.pi  # [n]
  h = (z[..., :, None] * w).reshape(*z.shape[:-1], -1)  # [B, H, W, C·n]
  return jnp.concatenate([jnp.sin(h), jnp.cos(h)], axis=-1)


def num_groups(channels: int) -> int:
  """GroupNorm groups: 32 as in VDM/DDPM once there are ≥ 4 channels per group, else fewer
  groups of 4 channels. Groups of one channel would erase the per-channel conditioning shift
  that every ResNet block adds just before its second GroupNorm."""
  return math.gcd(channels, min(32, max(1, channels // 4)))


def group_norm(channels: int, dtype: Dtype, name: str | None = None) -> nn.GroupNorm:
  """GroupNorm with `num_groups(channels)` groups."""
  return nn.GroupNorm(num_groups=num_groups(channels), dtype=dtype, name=name)


class ResnetBlock(nn.Module):
  """GroupNorm-swish-conv, + Dense(cond), GroupNorm-swish-dropout-conv(zero init), residual."""

  out_ch: int
  dropout: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, cond, deterministic: bool):  # x: [B, H, W, Cin], cond: [B, E]
    h = nn.swish(group_norm(x.shape[-1], self.dtype)(x))
    h = nn.Conv(self.out_ch, (3, 3), dtype=self.dtype)(h)
    h = h + nn.Dense(self.out_ch, kernel_init=nn.initializers.zeros, dtype=self.dtype)(
        cond)[:, None, None, :]
    h = nn.swish(group_norm(self.out_ch, self.dtype)(h))
    h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
    h = nn.Conv(self.out_ch, (3, 3), kernel_init=nn.initializers.zeros, dtype=self.dtype)(h)
    if x.shape[-1] != self.out_ch:
      x = nn.Dense(self.out_ch, dtype=self.dtype, name="skip")(x)
    return x + h


class AttnBlock(nn.Module):
  """Self-attention over the H·W positions, residual, zero-initialised output projection."""

  num_heads: int = 1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):  # [B, H, W, C]
    b, hgt, wid, c = x.shape
    if c % self.num_heads:
      raise ValueError(f"attention: {c} channels not divisible by {self.num_heads} heads")
    h = group_norm(c, self.dtype)(x).reshape(b, hgt * wid, c)
    qkv = nn.DenseGeneral((3, self.num_heads, c // self.num_heads), dtype=self.dtype)(h)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, T, N, c/N]
    h = jax.nn.dot_product_attention(q, k, v)  # [B, T, N, c/N]
    h = nn.DenseGeneral(c, axis=(-2, -1), kernel_init=nn.initializers.zeros, dtype=self.dtype)(h)
    return x + h.reshape(b, hgt, wid, c)


EXTRA_TAG = "_extra"
"""Module names of `UNet.extra_blocks` are a block's name + EXTRA_TAG + index."""


def _block(remat: bool):
  """ResnetBlock, optionally rematerialised (recomputed in the backward pass to save memory)."""
  return nn.remat(ResnetBlock, static_argnums=(3,)) if remat else ResnetBlock


class ConditioningMLP(nn.Module):
  """g -> timestep embedding -> two swish Dense layers of width 4·n_embd."""

  n_embd: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, g, batch: int):
    g = jnp.broadcast_to(jnp.asarray(g, jnp.float32), (batch,))
    cond = timestep_embedding(g, self.n_embd)
    cond = nn.swish(nn.Dense(4 * self.n_embd, dtype=self.dtype)(cond))
    return nn.swish(nn.Dense(4 * self.n_embd, dtype=self.dtype)(cond))


AUG_MODULE = "aug_embed"
"""Module name of the augmentation-label embedding (`aug_dim` > 0)."""


def _add_aug_labels(cond, aug_dim: int, aug, dtype: Dtype):
  """`cond` [B, E] plus a linear embedding (no bias, zero-initialised) of the augmentation
  labels `aug` [B, aug_dim] (data.augment.random_affine; None: zeros, an untransformed image, as
  in sampling). With zero labels the network computes what it computes without them, whatever
  the embedding's weights, so a network warm-started without it is unchanged and sampling is
  unconditional."""
  if not aug_dim:
    if aug is not None:
      raise ValueError("augmentation labels given to a network without aug_dim")
    return cond
  if aug is None:
    aug = jnp.zeros((cond.shape[0], aug_dim), jnp.float32)
  if aug.shape != (cond.shape[0], aug_dim):
    raise ValueError(f"augmentation labels of shape {aug.shape}, expected "
                     f"{(cond.shape[0], aug_dim)}")
  emb = nn.Dense(cond.shape[-1], use_bias=False, kernel_init=nn.initializers.zeros, dtype=dtype,
                 name=AUG_MODULE)(aug.astype(jnp.float32))
  return cond + emb.astype(cond.dtype)


def full_coords(batch: int, height: int, width: int):
  """Pixel-centre coordinates of a whole image in [-1, 1] (row, column): [B, H, W, 2]."""
  rows = (2.0 * jnp.arange(height, dtype=jnp.float32) + 1.0) / height - 1.0
  cols = (2.0 * jnp.arange(width, dtype=jnp.float32) + 1.0) / width - 1.0
  grid = jnp.stack(jnp.meshgrid(rows, cols, indexing="ij"), axis=-1)  # [H, W, 2]
  return jnp.broadcast_to(grid, (batch, height, width, 2))


def _stem(z, with_fourier_features: bool, dtype: Dtype, coords=None):
  """Network input: z, plus its Fourier features (2^6, 2^7) and, for a network with coordinate
  channels, the pixels' coordinates in the whole image (`coords` [B, H, W, 2]; Patch Diffusion)."""
  parts = [z] + ([fourier_features(z)] if with_fourier_features else [])
  if coords is not None:
    parts.append(coords.astype(z.dtype))
  return jnp.concatenate(parts, axis=-1).astype(dtype)


def _coords_input(z, coord_channels: bool, coords):
  """The coordinate channels to feed: `coords` of a patch, or the whole-image grid by default."""
  if not coord_channels:
    if coords is not None:
      raise ValueError("coords given to a network without coordinate channels")
    return None
  return full_coords(*z.shape[:3]) if coords is None else coords


def _head(h, z, dtype: Dtype):
  """GroupNorm-swish-conv(zero init) to C channels, then + z (VDM's base measure)."""
  h = nn.swish(group_norm(h.shape[-1], dtype)(h))
  eps = nn.Conv(z.shape[-1], (3, 3), kernel_init=nn.initializers.zeros, dtype=dtype)(h)
  return z + eps.astype(jnp.float32)


class ScoreUNet(nn.Module):
  """The paper's "U-Net of depth 32": VDM's CIFAR-10 score network, full resolution throughout."""

  n_layer: int = 32  # ResNet blocks on the way down (n_layer + 1 on the way up)
  n_embd: int = 128  # channels of every block; the conditioning MLP is 4·n_embd wide
  dropout: float = 0.1
  with_fourier_features: bool = True
  with_attention: bool = False  # attention after every block (the middle always has one)
  coord_channels: bool = False  # two coordinate channels as extra inputs (patch training)
  aug_dim: int = 0  # augmentation labels as conditioning (non-leaking augmentation); 0: none
  remat: bool = False  # rematerialise each ResNet block in the backward pass
  dtype: Dtype = jnp.float32  # compute dtype; parameters stay float32

  @nn.compact
  def __call__(self, z, g, deterministic: bool = True, coords=None, aug=None):
    cond = ConditioningMLP(self.n_embd, self.dtype)(g, z.shape[0])
    cond = _add_aug_labels(cond, self.aug_dim, aug, self.dtype)
    Block = _block(self.remat)
    kw = dict(out_ch=self.n_embd, dropout=self.dropout, dtype=self.dtype)

    stem = _stem(z, self.with_fourier_features, self.dtype,
                 _coords_input(z, self.coord_channels, coords))
    h = nn.Conv(self.n_embd, (3, 3), dtype=self.dtype)(stem)
    hs = [h]
    for i in range(self.n_layer):
      h = Block(**kw, name=f"down_{i}")(h, cond, deterministic)
      if self.with_attention:
        h = AttnBlock(dtype=self.dtype, name=f"down_attn_{i}")(h)
      hs.append(h)

    h = Block(**kw, name="mid_0")(h, cond, deterministic)
    h = AttnBlock(dtype=self.dtype, name="mid_attn")(h)
    h = Block(**kw, name="mid_1")(h, cond, deterministic)

    for i in range(self.n_layer + 1):
      h = Block(**kw, name=f"up_{i}")(jnp.concatenate([h, hs.pop()], axis=-1), cond,
                                       deterministic)
      if self.with_attention:
        h = AttnBlock(dtype=self.dtype, name=f"up_attn_{i}")(h)
    return _head(h, z, self.dtype)


class UNet(nn.Module):
  """Multi-resolution U-Net: levels with `ch·ch_mult[i]` channels, 2x down/up between levels."""

  ch: int = 64
  ch_mult: Sequence[int] = (1, 2, 2, 4)
  num_res_blocks: int = 2
  # per level: identity-initialised ResNet blocks after each of its blocks (down and up), the
  # same channels, no attention; () = none. A grown network (`grow`) computes exactly what the
  # network without them computed, so it can be warm-started from its weights
  extra_blocks: Sequence[int] = ()
  attn_resolutions: Sequence[int] = (16,)  # attention where min(H, W) of the level is listed
  num_heads: int = 1
  dropout: float = 0.1
  with_fourier_features: bool = True
  coord_channels: bool = False  # two coordinate channels as extra inputs (patch training)
  aug_dim: int = 0  # augmentation labels as conditioning (non-leaking augmentation); 0: none
  # > 0: a level's resolution for `attn_resolutions` is base_resolution / 2^level whatever the
  # input size, so that patches of a whole image run the same blocks (patch training)
  base_resolution: int = 0
  remat: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z, g, deterministic: bool = True, coords=None, aug=None):
    if len(self.extra_blocks) not in (0, len(self.ch_mult)):
      raise ValueError(f"extra_blocks {tuple(self.extra_blocks)}: one count per level of "
                       f"ch_mult {tuple(self.ch_mult)} (or none)")
    cond = ConditioningMLP(self.ch, self.dtype)(g, z.shape[0])
    cond = _add_aug_labels(cond, self.aug_dim, aug, self.dtype)
    Block = _block(self.remat)

    def block(h, out_ch, name, lvl):
      h = Block(out_ch=out_ch, dropout=self.dropout, dtype=self.dtype, name=name)(
          h, cond, deterministic)
      res = self.base_resolution // 2**lvl if self.base_resolution else min(h.shape[1:3])
      if res in self.attn_resolutions:
        h = AttnBlock(self.num_heads, self.dtype, name=f"{name}_attn")(h)
      for j in range(self.extra_blocks[lvl] if self.extra_blocks else 0):
        h = Block(out_ch=out_ch, dropout=self.dropout, dtype=self.dtype,
                  name=f"{name}{EXTRA_TAG}{j}")(h, cond, deterministic)
      return h

    stem = _stem(z, self.with_fourier_features, self.dtype,
                 _coords_input(z, self.coord_channels, coords))
    h = nn.Conv(self.ch, (3, 3), dtype=self.dtype)(stem)
    hs = [h]
    for lvl, mult in enumerate(self.ch_mult):
      for i in range(self.num_res_blocks):
        h = block(h, self.ch * mult, f"down_{lvl}_{i}", lvl)
        hs.append(h)
      if lvl != len(self.ch_mult) - 1:
        h = nn.Conv(h.shape[-1], (3, 3), strides=(2, 2), dtype=self.dtype,
                    name=f"downsample_{lvl}")(h)
        hs.append(h)

    h = Block(out_ch=h.shape[-1], dropout=self.dropout, dtype=self.dtype, name="mid_0")(
        h, cond, deterministic)
    h = AttnBlock(self.num_heads, self.dtype, name="mid_attn")(h)
    h = Block(out_ch=h.shape[-1], dropout=self.dropout, dtype=self.dtype, name="mid_1")(
        h, cond, deterministic)

    for lvl, mult in reversed(list(enumerate(self.ch_mult))):
      for i in range(self.num_res_blocks + 1):
        h = block(jnp.concatenate([h, hs.pop()], axis=-1), self.ch * mult, f"up_{lvl}_{i}",
                  lvl)
      if lvl != 0:
        target = hs[-1].shape[1:3]  # nearest 2x up, cropped for odd sizes
        h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)[:, :target[0], :target[1]]
        h = nn.Conv(h.shape[-1], (3, 3), dtype=self.dtype, name=f"upsample_{lvl}")(h)
    assert not hs
    return _head(h, z, self.dtype)


NETWORKS = {"score_unet": ScoreUNet, "unet": UNet}
"""Config name -> score network module (`configs/*.py` field `model.kind`)."""


def make_network(kind: str, **kwargs) -> nn.Module:
  """The score network named `kind` (one of NETWORKS), built with explicit keyword arguments."""
  if kind not in NETWORKS:
    raise ValueError(f"unknown score network {kind!r}; expected one of {sorted(NETWORKS)}")
  return NETWORKS[kind](**kwargs)
