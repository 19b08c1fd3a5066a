"""The Variational Diffusion Model's loss, as pure functions (Kingma et al. 2021).

Networks enter as callables, so this file knows nothing of Flax:

    gamma_fn(t) -> γ(t)                          t: [B] in [0, 1]
    eps_fn(z_t, g_t) -> ε̂                        z_t: [B, H, W, C], g_t = gamma_to_cond(γ_t): [B]

Data x are intensities in [0, 1] on a grid of 2^bits levels (the shared MR data are 12-bit). The
encoder maps level k = x·(2^bits - 1) to the bin centre f = 2·(k + ½)/2^bits - 1 ∈ (-1, 1), which is
affine in x: f = scale·x + offset (`encoder_affine`). The k-space guidance maps measurements with
the same affine map.

Loss, in bits per dimension (D = H·W·C), with γ_0 = γ(0), γ_1 = γ(1):
  1. prior      KL(q(z_1|x) ‖ N(0, I))
  2. recon      -log p(x | z_0), a discretised Gaussian N(z_0/α_0, σ_0²/α_0²) over the 2^bits bins,
                in closed form (differences of normal CDFs; no [..., 2^bits] tensor)
  3. diffusion  discrete T:   L_T = (T/2)·E_t[expm1(γ_t - γ_s)·‖ε - ε̂‖²],  s = t - 1/T
                continuous:   L_∞ = ½·E_t[γ'(t)·‖ε - ε̂‖²],  γ' by `jax.jvp`
with t drawn by antithetic (low-discrepancy) sampling over the batch.

Training may replace the bound's diffusion term by a weighted one (`Weighting`, Kingma & Gao
2023): ½·∫ w(γ)·E‖ε - ε̂‖² dγ over [γ_0, γ_1], which the bound is for w = 1. Evaluation keeps the
bound.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import flax
import jax
import jax.numpy as jnp
from jax.scipy.special import log_ndtr

from vdm_mri import schedule

GammaFn = Callable[[jax.Array], jax.Array]
EpsFn = Callable[[jax.Array, jax.Array], jax.Array]


# --------------------------------------------------------------------------------------------
# Encoder / decoder.
# --------------------------------------------------------------------------------------------
def encoder_affine(bits: int) -> tuple[float, float]:
  """(scale, offset) with f = scale·x + offset mapping level k/(2^bits-1) to its bin centre."""
  n = 2.0**bits
  return 2.0 * (n - 1.0) / n, 1.0 / n - 1.0


def encode(x, bits: int):
  """x ∈ [0, 1] (on or off the grid) -> f = scale·x + offset ∈ (-1, 1)."""
  scale, offset = encoder_affine(bits)
  return scale * x + offset


def decode(f, bits: int, quantize: bool = True):
  """f -> x ∈ [0, 1]; with `quantize`, rounded to the nearest of the 2^bits levels."""
  scale, offset = encoder_affine(bits)
  x = jnp.clip((f - offset) / scale, 0.0, 1.0)
  if quantize:
    levels = 2.0**bits - 1.0
    x = jnp.round(x * levels) / levels
  return x


def gamma_to_cond(gamma, gamma_min: float, gamma_max: float):
  """γ rescaled to [0, 1] over [γ_min, γ_max]: what the score network is conditioned on."""
  return (gamma - gamma_min) / (gamma_max - gamma_min)


# --------------------------------------------------------------------------------------------
# The three terms, in nats per image. Shapes: f, z: [B, H, W, C]; gamma: [B] or scalar.
# --------------------------------------------------------------------------------------------
def _per_image(gamma, ndim: int):
  """Broadcast a per-image [B] (or scalar) γ against [B, H, W, C]."""
  gamma = jnp.asarray(gamma, jnp.float32)
  return gamma.reshape(gamma.shape + (1,) * (ndim - gamma.ndim))


def prior_kl(f, gamma_1):
  """KL(N(α_1 f, σ_1² I) ‖ N(0, I)) = ½ Σ (σ_1² + α_1² f² - log σ_1² - 1): [B]."""
  g = _per_image(gamma_1, f.ndim)
  kl = 0.5 * (schedule.sigma2(g) + schedule.alpha2(g) * f**2 - schedule.log_sigma2(g) - 1.0)
  return kl.reshape(f.shape[0], -1).sum(-1)


def _log_diff_ndtr(a, b):
  """log(Φ(b) - Φ(a)) for a < b, accurate in either tail (reflect when both are positive)."""
  flip = a > 0.0
  lo, hi = jnp.where(flip, -b, a), jnp.where(flip, -a, b)
  log_hi, log_lo = log_ndtr(hi), log_ndtr(lo)
  return log_hi + _log1mexp(jnp.minimum(log_lo - log_hi, -1e-30))


def _log1mexp(x):
  """log(1 - exp(x)) for x < 0, accurate near 0 and for very negative x. Each branch gets a safe
  argument where it is not used, so that its gradient is finite there (jnp.where differentiates
  both branches)."""
  near_zero = x > -math.log(2.0)
  return jnp.where(near_zero, jnp.log(-jnp.expm1(jnp.where(near_zero, x, -1.0))),
                   jnp.log1p(-jnp.exp(jnp.where(near_zero, -1.0, x))))


def reconstruction_nll(f, z_0, gamma_0, bits: int):
  """-log p(x | z_0) for the discretised Gaussian over 2^bits bins: [B].

  Mean μ = z_0/α_0 and scale s = σ_0/α_0 = exp(γ_0/2) in the encoded space; bin k has width
  2/2^bits around its centre f_k, the first and last bins extend to ∓∞. P(k) = Φ(b⁺) - Φ(b⁻) with
  b± = (f_k ± 1/2^bits - μ)/s. For on-grid data P → 1 (0 bits) as γ_0 → -∞.
  """
  g = _per_image(gamma_0, f.ndim)
  mu = z_0 / schedule.alpha(g)
  inv_s = jnp.exp(-0.5 * g)
  half = 1.0 / 2.0**bits
  big = 1e4  # standardised ±∞, finite so that gradients stay finite
  upper = jnp.where(f > 1.0 - 2.0 * half, big, (f + half - mu) * inv_s)
  lower = jnp.where(f < -1.0 + 2.0 * half, -big, (f - half - mu) * inv_s)
  logp = _log_diff_ndtr(jnp.clip(lower, -big, big), jnp.clip(upper, -big, big))
  return -logp.reshape(f.shape[0], -1).sum(-1)


def diffusion_loss_discrete(eps, eps_hat, gamma_t, gamma_s, num_steps: int):
  """L_T per image: (T/2)·expm1(γ_t - γ_s)·‖ε - ε̂‖²: [B]."""
  sq = ((eps - eps_hat) ** 2).reshape(eps.shape[0], -1).sum(-1)
  return 0.5 * num_steps * jnp.expm1(gamma_t - gamma_s) * sq


def diffusion_loss_continuous(eps, eps_hat, dgamma_dt):
  """L_∞ per image: ½·γ'(t)·‖ε - ε̂‖²: [B]."""
  sq = ((eps - eps_hat) ** 2).reshape(eps.shape[0], -1).sum(-1)
  return 0.5 * dgamma_dt * sq


# --------------------------------------------------------------------------------------------
# Time sampling and the full loss.
# --------------------------------------------------------------------------------------------
def sample_times(key, batch: int, num_steps: int = 0, antithetic: bool = True):
  """t ∈ (0, 1]: [B]. Antithetic: one uniform u, t_i = (u + i/B) mod 1. Discrete T: snapped up
  to the grid {1/T, …, 1}, so that s = t - 1/T ≥ 0."""
  if antithetic:
    u = jax.random.uniform(key, ())
    t = jnp.mod(u + jnp.arange(batch, dtype=jnp.float32) / batch, 1.0)
  else:
    t = jax.random.uniform(key, (batch,))
  if num_steps > 0:
    t = jnp.maximum(jnp.ceil(t * num_steps), 1.0) / num_steps
  return t


@dataclasses.dataclass(frozen=True)
class Weighting:
  """The monotone sigmoid weighting w(γ) = sigmoid(γ + bias) of the diffusion term (Kingma & Gao,
  NeurIPS 2023; γ = -log SNR, so w → 1 at high noise and w → 0 at high SNR; w = ½ at γ = -bias).

  Estimated with importance sampling: γ is drawn from the density w/Z over [γ_0, γ_1]
  (`sample_gammas`, inverse CDF: ∫ w dγ = softplus(γ + bias)), each draw weighted ½·Z, so the
  objective ½·Z·E_{γ∼w/Z}‖ε - ε̂‖² has the variance of an unweighted loss. The draw depends on
  the endpoints only, not on the schedule's shape.
  """

  bias: float

  def normaliser(self, gamma_0, gamma_1):
    """Z = ∫ w dγ over [γ_0, γ_1]."""
    return jax.nn.softplus(gamma_1 + self.bias) - jax.nn.softplus(gamma_0 + self.bias)

  def sample_gammas(self, u, gamma_0, gamma_1):
    """γ with density w/Z on [γ_0, γ_1] from u ∈ [0, 1] (inverse CDF)."""
    lo = jax.nn.softplus(gamma_0 + self.bias)
    y = lo + u * self.normaliser(gamma_0, gamma_1)  # softplus(γ + bias), > 0
    return y + jnp.log(-jnp.expm1(-y)) - self.bias  # softplus⁻¹(y) - bias


@flax.struct.dataclass
class LossTerms:
  """VDM loss terms, bits per dimension, each [B]; `bpd` is their sum."""

  bpd: jax.Array
  prior: jax.Array
  recon: jax.Array
  diffusion: jax.Array


def loss_terms(key, x, *, gamma_fn: GammaFn, eps_fn: EpsFn, bits: int, num_steps: int,
               gamma_min: float, gamma_max: float, antithetic: bool = True,
               weighting: Weighting | None = None) -> LossTerms:
  """The VDM variational bound for a batch x: [B, H, W, C] in [0, 1] (on the 2^bits grid).

  num_steps = T > 0 gives the discrete-time L_T (the paper's T = 1000), 0 the continuous L_∞.
  gamma_min/gamma_max only rescale γ for the network's conditioning (`gamma_to_cond`).
  `weighting`: the diffusion term becomes that weighted objective (then `bpd` is not the bound).
  """
  batch = x.shape[0]
  key_t, key_eps, key_0 = jax.random.split(key, 3)
  f = encode(x, bits)  # [B, H, W, C]
  n_dims = math.prod(x.shape[1:])

  # 1. Prior loss, KL(q(z_1 | x) ‖ N(0, I)).
  gamma_ends = gamma_fn(jnp.array([0.0, 1.0], jnp.float32))  # [2]
  gamma_0, gamma_1 = gamma_ends[0], gamma_ends[1]
  loss_prior = prior_kl(f, jnp.full((batch,), gamma_1))

  # 2. Reconstruction loss, -log p(x | z_0) with z_0 ~ q(z_0 | x).
  eps_0 = jax.random.normal(key_0, x.shape)
  z_0 = schedule.alpha(gamma_0) * f + schedule.sigma(gamma_0) * eps_0
  loss_recon = reconstruction_nll(f, z_0, jnp.full((batch,), gamma_0), bits)

  # 3. Diffusion loss at t ~ antithetic uniform.
  t = sample_times(key_t, batch, 0 if weighting else num_steps, antithetic)  # [B]
  if weighting is not None:  # γ from w/Z instead (t is then only the uniform variate)
    g0, g1 = jax.lax.stop_gradient(gamma_0), jax.lax.stop_gradient(gamma_1)
    gamma_t = weighting.sample_gammas(t, g0, g1)
  elif num_steps > 0:
    gamma_t = gamma_fn(t)
    gamma_s = gamma_fn(t - 1.0 / num_steps)
  else:
    gamma_t, dgamma_dt = jax.jvp(gamma_fn, (t,), (jnp.ones_like(t),))
  eps = jax.random.normal(key_eps, x.shape)
  g = _per_image(gamma_t, x.ndim)
  z_t = schedule.alpha(g) * f + schedule.sigma(g) * eps
  eps_hat = eps_fn(z_t, gamma_to_cond(gamma_t, gamma_min, gamma_max))
  if weighting is not None:
    sq = ((eps - eps_hat) ** 2).reshape(batch, -1).sum(-1)
    loss_diff = 0.5 * jax.lax.stop_gradient(weighting.normaliser(g0, g1)) * sq
  elif num_steps > 0:
    loss_diff = diffusion_loss_discrete(eps, eps_hat, gamma_t, gamma_s, num_steps)
  else:
    loss_diff = diffusion_loss_continuous(eps, eps_hat, dgamma_dt)

  to_bpd = 1.0 / (n_dims * math.log(2.0))
  prior, recon, diff = loss_prior * to_bpd, loss_recon * to_bpd, loss_diff * to_bpd
  return LossTerms(bpd=prior + recon + diff, prior=prior, recon=recon, diffusion=diff)
