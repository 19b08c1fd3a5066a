"""Noise schedules γ(t) = -log SNR(t) and the α, σ, SNR helpers of VDM.

Kingma et al. (2021), "Variational Diffusion Models", §3:

    z_t = α_t·f + σ_t·ε,   α_t² = sigmoid(-γ_t),   σ_t² = sigmoid(γ_t),   SNR(t) = exp(-γ_t),

with γ monotone increasing on t ∈ [0, 1]. Every schedule is a Flax module mapping t (any shape) to
γ(t) of the same shape, so that the loss can take γ' = dγ/dt with `jax.jvp`.

The helpers work on γ, never on 1 - α²: α² = sigmoid(-γ) keeps full relative precision where σ² is
tiny (γ = -13.3 gives σ² ≈ 1.7e-6) and σ² = sigmoid(γ) where α² is tiny, so α² + σ² = 1 holds to
float32 round-off at both ends.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


# --------------------------------------------------------------------------------------------
# α, σ, SNR as functions of γ.
# --------------------------------------------------------------------------------------------
def alpha2(gamma):
  """α² = sigmoid(-γ)."""
  return jax.nn.sigmoid(-gamma)


def sigma2(gamma):
  """σ² = sigmoid(γ)."""
  return jax.nn.sigmoid(gamma)


def alpha(gamma):
  """α = sqrt(sigmoid(-γ))."""
  return jnp.sqrt(jax.nn.sigmoid(-gamma))


def sigma(gamma):
  """σ = sqrt(sigmoid(γ))."""
  return jnp.sqrt(jax.nn.sigmoid(gamma))


def log_alpha2(gamma):
  """log α² = log_sigmoid(-γ), accurate for any γ."""
  return jax.nn.log_sigmoid(-gamma)


def log_sigma2(gamma):
  """log σ² = log_sigmoid(γ), accurate for any γ."""
  return jax.nn.log_sigmoid(gamma)


def snr(gamma):
  """SNR = α²/σ² = exp(-γ)."""
  return jnp.exp(-gamma)


# --------------------------------------------------------------------------------------------
# Schedules. Each maps t -> γ(t), elementwise, t ∈ [0, 1].
# --------------------------------------------------------------------------------------------
class FixedLinearSchedule(nn.Module):
  """γ(t) = γ_min + (γ_max - γ_min)·t, no parameters."""

  gamma_min: float = -13.3
  gamma_max: float = 5.0

  @nn.compact
  def __call__(self, t):
    t = jnp.asarray(t, jnp.float32)
    return self.gamma_min + (self.gamma_max - self.gamma_min) * t


class LearnedScalarSchedule(nn.Module):
  """γ(t) = b + |w|·t, initialised to the linear schedule (VDM's "learnable scalar")."""

  gamma_min: float = -13.3
  gamma_max: float = 5.0

  @nn.compact
  def __call__(self, t):
    t = jnp.asarray(t, jnp.float32)
    b = self.param("b", nn.initializers.constant(self.gamma_min), ())
    w = self.param("w", nn.initializers.constant(self.gamma_max - self.gamma_min), ())
    return b + jnp.abs(w) * t


class MonotoneDense(nn.Module):
  """Dense layer whose kernel enters through |W|, so the map is monotone non-decreasing."""

  features: int
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
  bias_init: nn.initializers.Initializer = nn.initializers.zeros

  @nn.compact
  def __call__(self, x):  # x: [N, in]
    kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features))
    bias = self.param("bias", self.bias_init, (self.features,))
    return x @ jnp.abs(kernel) + bias


class MonotoneNetSchedule(nn.Module):
  """VDM's learnable monotone network: γ̃(t) = l1(t) + l3(φ(l2(t))), all kernels |W| ≥ 0.

  l1: 1 -> 1 linear (initialised to the linear schedule), l2: 1 -> `hidden` with sigmoid,
  l3: `hidden` -> 1, scaled by 1/hidden; as in the original, φ(h) = 2·(sigmoid(h) - ½).

  pin_endpoints (default True): the original's endpoints γ(0), γ(1) drift during training, which
  moves the prior and reconstruction terms and the sampler's end points. We rescale

      u(t) = (γ̃(t) - γ̃(0)) / (γ̃(1) - γ̃(0)),    γ(t) = γ_min·(1 - u) + γ_max·u,

  which is still monotone, learns only the *shape* of the schedule, and gives γ(0) = γ_min and
  γ(1) = γ_max exactly in float32 (u is exactly 0 at t=0 and exactly 1 at t=1). With
  pin_endpoints=False the module is the original, unconstrained network.
  """

  gamma_min: float = -13.3
  gamma_max: float = 5.0
  hidden: int = 1024
  pin_endpoints: bool = True

  def setup(self):
    init_scale = self.gamma_max - self.gamma_min
    self.l1 = MonotoneDense(
        1,
        kernel_init=nn.initializers.constant(init_scale),
        bias_init=nn.initializers.constant(self.gamma_min),
    )
    self.l2 = MonotoneDense(self.hidden, kernel_init=nn.initializers.normal(1.0))
    self.l3 = MonotoneDense(1, kernel_init=nn.initializers.normal(1.0))

  def unpinned(self, t):
    """γ̃(t), the original network's output, elementwise."""
    t = jnp.asarray(t, jnp.float32)
    x = t.reshape(-1, 1)  # [N, 1]
    h = self.l1(x)
    h = h + self.l3(2.0 * (jax.nn.sigmoid(self.l2(x)) - 0.5)) / self.hidden
    return h.reshape(t.shape)

  def __call__(self, t):
    gamma_tilde = self.unpinned(t)
    if not self.pin_endpoints:
      return gamma_tilde
    ends = self.unpinned(jnp.array([0.0, 1.0], jnp.float32))  # [2]
    u = (gamma_tilde - ends[0]) / (ends[1] - ends[0])
    return self.gamma_min * (1.0 - u) + self.gamma_max * u


SCHEDULES = {
    "fixed_linear": FixedLinearSchedule,
    "learned_scalar": LearnedScalarSchedule,
    "learned_nn": MonotoneNetSchedule,
}
"""Config name -> schedule module (`configs/*.py` field `schedule.kind`)."""


def make_schedule(kind: str, **kwargs) -> nn.Module:
  """The schedule module named `kind` (one of SCHEDULES), built with explicit keyword arguments."""
  if kind not in SCHEDULES:
    raise ValueError(f"unknown noise schedule {kind!r}; expected one of {sorted(SCHEDULES)}")
  return SCHEDULES[kind](**kwargs)
