"""Noise schedules: monotone γ, exact pinned endpoints, accurate α², σ² at both ends."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm_mri import schedule

GAMMA_MIN, GAMMA_MAX = -13.3, 5.0


def _perturbed_params(module, key):
  """Parameters moved well away from their initial values (so the test is not about the init)."""
  params = module.init(jax.random.key(0), jnp.zeros((1,)))
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  leaves = [p + 0.5 * jnp.abs(p).mean() * jax.random.normal(k, p.shape) + 0.3 * jax.random.normal(
      k, p.shape) for p, k in zip(leaves, keys)]
  return jax.tree.unflatten(treedef, leaves)


@pytest.mark.parametrize("kind", sorted(schedule.SCHEDULES))
def test_gamma_is_monotone_increasing(kind):
  module = schedule.make_schedule(kind, gamma_min=GAMMA_MIN, gamma_max=GAMMA_MAX)
  params = _perturbed_params(module, jax.random.key(1))
  t = jnp.linspace(0.0, 1.0, 2001)
  gamma_fn = jax.jit(lambda s: module.apply(params, s))
  gamma = gamma_fn(t)
  assert gamma.shape == t.shape
  assert bool(jnp.all(jnp.diff(gamma) >= 0.0)), "γ(t) decreases somewhere"
  _, dgamma = jax.jit(lambda t: jax.jvp(gamma_fn, (t,), (jnp.ones_like(t),)))(t)
  assert bool(jnp.all(dgamma > 0.0))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_pinned_network_endpoints_are_exact(seed):
  pinned = schedule.MonotoneNetSchedule(GAMMA_MIN, GAMMA_MAX, hidden=64, pin_endpoints=True)
  free = schedule.MonotoneNetSchedule(GAMMA_MIN, GAMMA_MAX, hidden=64, pin_endpoints=False)
  params = _perturbed_params(pinned, jax.random.key(seed))
  ends = np.asarray(pinned.apply(params, jnp.array([0.0, 1.0])))
  assert ends.dtype == np.float32
  assert ends[0] == np.float32(GAMMA_MIN) and ends[1] == np.float32(GAMMA_MAX)
  # The same parameters without pinning drift (the original's behaviour), so pinning matters.
  free_ends = np.asarray(free.apply(params, jnp.array([0.0, 1.0])))
  assert abs(free_ends[0] - GAMMA_MIN) > 1e-3 or abs(free_ends[1] - GAMMA_MAX) > 1e-3


def test_fixed_and_scalar_schedules_hit_their_endpoints_at_init():
  for kind in ("fixed_linear", "learned_scalar"):
    module = schedule.make_schedule(kind, gamma_min=GAMMA_MIN, gamma_max=GAMMA_MAX)
    params = module.init(jax.random.key(0), jnp.zeros((1,)))
    np.testing.assert_allclose(module.apply(params, jnp.array([0.0, 0.5, 1.0])),
                               [GAMMA_MIN, (GAMMA_MIN + GAMMA_MAX) / 2, GAMMA_MAX], rtol=1e-6)


@pytest.mark.parametrize("gamma", [GAMMA_MIN, GAMMA_MAX, -30.0, 30.0, 0.0])
def test_alpha_sigma_accurate_in_float32(gamma):
  g = jnp.float32(gamma)
  a2, s2 = schedule.alpha2(g), schedule.sigma2(g)
  assert a2.dtype == jnp.float32 and s2.dtype == jnp.float32
  assert abs(float(a2 + s2) - 1.0) <= 1.2e-7  # one float32 ulp of 1
  # Relative accuracy of the *small* one, where 1 - x would lose all digits.
  ref_s2 = 1.0 / (1.0 + np.exp(-np.float64(gamma)))
  ref_a2 = 1.0 / (1.0 + np.exp(np.float64(gamma)))
  np.testing.assert_allclose(float(s2), ref_s2, rtol=1e-6)
  np.testing.assert_allclose(float(a2), ref_a2, rtol=1e-6)
  np.testing.assert_allclose(float(schedule.log_sigma2(g)), -np.log1p(np.exp(-np.float64(gamma))),
                             rtol=1e-6)
  np.testing.assert_allclose(float(schedule.snr(g)), ref_a2 / ref_s2, rtol=1e-5)
  np.testing.assert_allclose(float(schedule.alpha(g) ** 2), ref_a2, rtol=1e-6)


def test_unknown_schedule_is_a_clear_error():
  with pytest.raises(ValueError, match="unknown noise schedule 'cosine'"):
    schedule.make_schedule("cosine")
