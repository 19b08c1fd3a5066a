"""The VDM loss terms: oracle and closed-form checks, Monte-Carlo means, training signal."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vdm_mri import schedule, vdm

GAMMA_MIN, GAMMA_MAX = -13.3, 5.0
BITS = 12


def _images(key, shape=(16, 8, 8, 1), bits=BITS):
  """Random on-grid images in [0, 1]."""
  levels = 2**bits - 1
  return jax.random.randint(key, shape, 0, levels + 1).astype(jnp.float32) / levels


def _pinned_net_gamma():
  """A pinned monotone-network γ with parameters far from init (γ' varies strongly with t)."""
  module = schedule.MonotoneNetSchedule(GAMMA_MIN, GAMMA_MAX, hidden=32)
  params = module.init(jax.random.key(0), jnp.zeros((1,)))
  params = jax.tree.map(lambda p: p + 2.0 * jax.random.normal(jax.random.key(3), p.shape),
                        params)
  return lambda t: module.apply(params, t)


def _linear_gamma(t):
  return GAMMA_MIN + (GAMMA_MAX - GAMMA_MIN) * t


def _loss(key, x, gamma_fn, eps_fn, num_steps):
  return vdm.loss_terms(key, x, gamma_fn=gamma_fn, eps_fn=eps_fn, bits=BITS,
                        num_steps=num_steps, gamma_min=GAMMA_MIN, gamma_max=GAMMA_MAX)


def test_encoder_maps_levels_to_bin_centres_and_back():
  x = _images(jax.random.key(0), (4, 8, 8, 1))
  f = vdm.encode(x, BITS)
  k = jnp.round(x * (2**BITS - 1))
  np.testing.assert_allclose(f, 2.0 * (k + 0.5) / 2**BITS - 1.0, atol=2e-7)
  assert float(f.min()) > -1.0 and float(f.max()) < 1.0
  np.testing.assert_array_equal(vdm.decode(f, BITS), x)
  scale, offset = vdm.encoder_affine(BITS)
  np.testing.assert_allclose(vdm.encode(jnp.array([0.0, 1.0]), BITS),
                             [offset, scale + offset], rtol=1e-7)


@pytest.mark.parametrize("num_steps", [0, 1000])
def test_diffusion_loss_vanishes_for_oracle_eps(num_steps):
  x = _images(jax.random.key(1))
  f = vdm.encode(x, BITS)

  def oracle(z, g):  # recovers ε = (z - α f)/σ exactly from the conditioning
    gamma = (GAMMA_MIN + g * (GAMMA_MAX - GAMMA_MIN))[:, None, None, None]
    return (z - schedule.alpha(gamma) * f) / schedule.sigma(gamma)

  zero = lambda z, g: jnp.zeros_like(z)
  oracle_loss = _loss(jax.random.key(2), x, _linear_gamma, oracle, num_steps).diffusion
  zero_loss = _loss(jax.random.key(2), x, _linear_gamma, zero, num_steps).diffusion
  assert float(zero_loss.mean()) > 1.0
  assert float(jnp.abs(oracle_loss).max()) < 1e-4 * float(zero_loss.mean())


def _mc_mean(gamma_fn, num_steps, n_batches=200):
  """Mean and standard error of the diffusion bpd with ε̂ = 0, over independent batches."""
  x = _images(jax.random.key(0))
  fn = jax.jit(lambda key: _loss(key, x, gamma_fn, lambda z, g: jnp.zeros_like(z),
                                 num_steps).diffusion.mean())
  vals = np.array([fn(k) for k in jax.random.split(jax.random.key(5), n_batches)])
  return vals.mean(), vals.std(ddof=1) / math.sqrt(n_batches)


@pytest.mark.parametrize("gamma_fn", [_linear_gamma, _pinned_net_gamma()],
                         ids=["linear", "pinned_net"])
def test_continuous_loss_with_zero_eps_has_closed_form_mean(gamma_fn):
  # ε̂ = 0: L_∞ = ½ γ'(t) ‖ε‖², so E = ½ (γ_max - γ_min) D nats, for any schedule shape.
  mean, se = _mc_mean(gamma_fn, num_steps=0)
  expected = 0.5 * (GAMMA_MAX - GAMMA_MIN) / math.log(2.0)  # bits per dimension
  assert abs(mean - expected) < 3 * se + 1e-6, (mean, expected, se)


@pytest.mark.parametrize("gamma_fn", [_linear_gamma, _pinned_net_gamma()],
                         ids=["linear", "pinned_net"])
def test_discrete_loss_with_zero_eps_has_closed_form_mean(gamma_fn):
  # ε̂ = 0: E L_T = (T/2)·(1/T) Σ_i expm1(γ(i/T) - γ((i-1)/T))·D nats.
  num_steps = 10
  mean, se = _mc_mean(gamma_fn, num_steps=num_steps)
  grid = np.asarray(gamma_fn(jnp.linspace(0.0, 1.0, num_steps + 1)), np.float64)
  expected = 0.5 * np.expm1(np.diff(grid)).sum() / math.log(2.0)
  assert abs(mean - expected) < 3 * se + 1e-6, (mean, expected, se)
  # ... and it is not the continuous value: the test tells the two apart.
  assert abs(expected - 0.5 * (GAMMA_MAX - GAMMA_MIN) / math.log(2.0)) > 10 * se


def test_prior_kl_matches_hand_formula():
  x = _images(jax.random.key(7), (3, 5, 4, 2))
  f = np.asarray(vdm.encode(x, BITS), np.float64)
  for gamma_1 in (5.0, 0.0, -2.0):
    a2, s2 = 1 / (1 + math.exp(gamma_1)), 1 / (1 + math.exp(-gamma_1))
    # KL(N(μ, s²) ‖ N(0, 1)) = -log s + (s² + μ²)/2 - 1/2, μ = α f, s = σ.
    kl = (-0.5 * math.log(s2) + 0.5 * (s2 + a2 * f**2) - 0.5).reshape(3, -1).sum(-1)
    np.testing.assert_allclose(vdm.prior_kl(jnp.asarray(f, jnp.float32), jnp.full((3,), gamma_1)),
                               kl, rtol=2e-5)


def _ref_log_bin_prob(f, mu, s, bits):
  """float64 log P(bin of f) for N(mu, s²), with erfc (edge bins open)."""
  half = 1.0 / 2**bits
  hi = math.inf if f > 1 - 2 * half else (f + half - mu) / s
  lo = -math.inf if f < -1 + 2 * half else (f - half - mu) / s
  if lo > 0:  # reflect for accuracy in the upper tail
    lo, hi = -hi, -lo
  cdf = lambda v: 0.5 * math.erfc(-v / math.sqrt(2.0))
  return math.log(cdf(hi) - cdf(lo))


@pytest.mark.parametrize("gamma_0", [-13.3, -6.0, 0.0])
def test_reconstruction_matches_explicit_bin_probabilities(gamma_0):
  bits = 4
  x = _images(jax.random.key(8), (2, 4, 4, 1), bits=bits)
  f = vdm.encode(x, bits)
  a, s = math.sqrt(1 / (1 + math.exp(gamma_0))), math.exp(0.5 * gamma_0)
  # z_0/α placed up to ~12 standard deviations from f, so both tails are exercised.
  z_0 = a * (f + 4.0 * s * jax.random.normal(jax.random.key(9), f.shape))
  nll = vdm.reconstruction_nll(f, z_0, jnp.full((2,), gamma_0), bits)
  ref = [-sum(_ref_log_bin_prob(fi, zi / a, s, bits) for fi, zi in zip(
      np.asarray(f[b], np.float64).ravel(), np.asarray(z_0[b], np.float64).ravel()))
         for b in range(2)]
  np.testing.assert_allclose(nll, ref, rtol=1e-4)


def test_bin_probabilities_sum_to_one():
  bits = 3
  levels = jnp.arange(2**bits, dtype=jnp.float32) / (2**bits - 1)
  f = vdm.encode(levels, bits).reshape(1, -1, 1, 1)  # every bin once
  z_0 = jnp.full_like(f, 0.3) * schedule.alpha(jnp.float32(-1.0))
  logp = -jax.vmap(lambda fi: vdm.reconstruction_nll(fi.reshape(1, 1, 1, 1), z_0[:, :1],
                                                      jnp.array([-1.0]), bits))(f.ravel())
  np.testing.assert_allclose(float(jnp.exp(logp).sum()), 1.0, atol=1e-5)


def test_reconstruction_goes_to_zero_bits_as_gamma_0_decreases():
  x = _images(jax.random.key(10), (4, 8, 8, 1))
  f = vdm.encode(x, BITS)
  eps = jax.random.normal(jax.random.key(11), f.shape)
  bits = []
  for gamma_0 in (-10.0, -15.0, -20.0, -25.0, -30.0):
    g = jnp.float32(gamma_0)
    z_0 = schedule.alpha(g) * f + schedule.sigma(g) * eps
    nll = vdm.reconstruction_nll(f, z_0, jnp.full((4,), gamma_0), BITS)
    bits.append(float(nll.mean()) / (64 * math.log(2.0)))
  assert all(b1 >= b2 for b1, b2 in zip(bits, bits[1:])), bits
  assert bits[-1] < 1e-4 and bits[0] > 0.5, bits


def test_sample_times_antithetic_and_on_grid():
  t = vdm.sample_times(jax.random.key(0), 8, num_steps=1000)
  assert t.shape == (8,) and float(t.min()) >= 1e-3 and float(t.max()) <= 1.0
  np.testing.assert_allclose(t * 1000, jnp.round(t * 1000), atol=1e-3)
  spread = np.sort(np.asarray(vdm.sample_times(jax.random.key(1), 8)))
  np.testing.assert_allclose(np.diff(spread), 1 / 8, atol=1e-6)  # one per 1/B stratum


def test_jitted_loss_compiles_once():
  traces = []

  def loss(key, x):
    traces.append(1)
    return _loss(key, x, _linear_gamma, lambda z, g: 0.5 * z, 1000).bpd.mean()

  fn = jax.jit(loss)
  x = _images(jax.random.key(0), (4, 8, 8, 1))
  values = [float(fn(k, x)) for k in jax.random.split(jax.random.key(1), 5)]
  values.append(float(fn(jax.random.key(2), _images(jax.random.key(3), (4, 8, 8, 1)))))
  assert len(traces) == 1
  assert len(set(values)) == len(values)  # the key and data really change the result


def test_tiny_model_loss_falls_on_real_slices(shared_train_slices):
  from vdm_mri import model as model_lib, unet

  # Real slices, area-pooled 8x to 16x16 and re-quantised, keep the test to seconds.
  x = shared_train_slices.reshape(-1, 16, 8, 16, 8).mean((2, 4))
  x = (np.round(x * 4095) / 4095)[..., None].astype(np.float32)
  train_x, test_x = x[:-16], x[-16:]
  vdm_model = model_lib.VDM(
      network=unet.UNet(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
                        dropout=0.0),
      gamma=schedule.MonotoneNetSchedule(GAMMA_MIN, GAMMA_MAX, hidden=16), bits=BITS,
      image_shape=(16, 16, 1), gamma_min=GAMMA_MIN, gamma_max=GAMMA_MAX)
  params = vdm_model.init(jax.random.key(0))
  opt = optax.adam(2e-3)
  opt_state = opt.init(params)

  @jax.jit
  def step(params, opt_state, key, batch):
    loss, grads = jax.value_and_grad(
        lambda p: vdm_model.loss_terms(p, key, batch, num_steps=1000, train=True).bpd.mean())(
            params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  @jax.jit
  def eval_bpd(params):
    keys = jax.random.split(jax.random.key(123), 8)
    return jnp.mean(jax.vmap(lambda k: vdm_model.loss_terms(
        params, k, test_x, num_steps=1000, train=False).bpd.mean())(keys))

  before = float(eval_bpd(params))
  rng = np.random.default_rng(0)
  for i in range(30):
    batch = train_x[rng.choice(len(train_x), 16, replace=False)]
    params, opt_state, _ = step(params, opt_state, jax.random.key(i), batch)
  after = float(eval_bpd(params))
  assert after < before - 0.5, (before, after)


def test_reconstruction_gradient_is_finite_far_in_the_tails():
  # z_0/α_0 many bin widths away from f (both tails, edge bins included) at several γ_0.
  f = vdm.encode(jnp.array([0.0, 0.5, 1.0]), BITS).reshape(1, 3, 1, 1)
  for gamma_0 in (-13.3, 0.0, 17.0):
    for z in (-14.0, -2.0, 2.0, 14.0):
      grad = jax.grad(lambda z0: vdm.reconstruction_nll(f, z0, jnp.array([gamma_0]), BITS).sum())(
          jnp.full_like(f, z))
      assert bool(jnp.all(jnp.isfinite(grad))), (gamma_0, z, grad)
