"""The guided ancestral sampler (vdm_mri/sampling.py): step maths, guidance, keys, sharding."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_config
from vdm_mri import kspace, sampling, schedule, vdm
from vdm_mri import model as model_lib

SIZE = 16  # tiny images: every property here holds at any size


@pytest.fixture(scope="module")
def tiny():
  """(model, params): a randomly initialised UNet with 8 channels on 16x16 images."""
  config = load_config("tiny")
  config.data.image_size = SIZE
  config.model.ch, config.model.ch_mult = 8, (1, 2)
  config.schedule.hidden = 16
  model = model_lib.from_config(config)
  return model, model.init(jax.random.key(0))


def _images(n, seed=1):
  """Smooth-ish test images in [0.1, 0.9] (no clipping at decode): [n, SIZE, SIZE]."""
  return jax.random.uniform(jax.random.key(seed), (n, SIZE, SIZE), minval=0.1, maxval=0.9)


def _mesh(n):
  return sampling.make_mesh(jax.local_devices()[:n])


# --------------------------------------------------------------------------------------------
# The step: guidance and the ancestral update.
# --------------------------------------------------------------------------------------------
def _guided_input(lam, lowres=(7, 7)):
  """The z_t' that eps_fn receives inside one reverse_step, and the z_t it started from."""
  seen = []

  def spy(z, g):
    seen.append(z[..., 0])
    return jnp.zeros_like(z)

  @jax.jit
  def step(z_t, keys, y0_f):
    sampling.reverse_step(z_t, keys, 7, jnp.float32(-2.0), jnp.float32(-2.5), eps_fn=spy,
                          y0_f=y0_f, lam=lam, gamma_min=-13.3, gamma_max=5.0)
    return seen[0]

  z_t = jax.random.normal(jax.random.key(3), (2, SIZE, SIZE))
  y0 = kspace.measure(_images(2), lowres)
  y0_f = kspace.encode_measurement(y0, *vdm.encoder_affine(12), (SIZE, SIZE))
  keys = sampling.sample_keys(jax.random.key(4), 2, 1)[:, 0]
  return z_t, step(z_t, keys, y0_f)


def test_guidance_with_lam_0_leaves_kspace_unchanged():
  z_t, z_guided = _guided_input(lam=0.0)
  np.testing.assert_array_equal(kspace.fft2c(z_guided), kspace.fft2c(z_t))


def test_guidance_with_lam_1_replaces_only_the_measured_centre():
  z_t, z_guided = _guided_input(lam=1.0)  # odd 7x7: no unpaired edge, outer k-space exact
  outer = 1.0 - kspace.mask((SIZE, SIZE), (7, 7))
  k_t, k_g = kspace.fft2c(z_t), kspace.fft2c(z_guided)
  np.testing.assert_allclose(outer * k_g, outer * k_t, atol=1e-5)
  assert np.abs(kspace.crop(k_g - k_t, (7, 7))).max() > 0.1  # the centre did change


def test_ancestral_step_matches_the_variance_preserving_posterior():
  """z_s = (α_s/α_t)(z_t - σ_t c ε̂) + σ_s √c ε against α, σ computed directly (float64)."""
  g_t, g_s = 1.5, -12.0
  z_t, eps_hat, eps = (np.random.default_rng(i).standard_normal(5) for i in range(3))
  a = lambda g: np.sqrt(1 / (1 + np.exp(g)))
  s = lambda g: np.sqrt(1 / (1 + np.exp(-g)))
  c = 1 - np.exp(g_s - g_t)
  want = a(g_s) / a(g_t) * (z_t - s(g_t) * c * eps_hat) + s(g_s) * np.sqrt(c) * eps
  got = sampling.ancestral_step(jnp.asarray(z_t), jnp.asarray(eps_hat), jnp.asarray(eps),
                                jnp.float32(g_t), jnp.float32(g_s))
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Oracle: with the exact ε the sampler draws from q(z_0 | x), i.e. recovers x up to σ_0/α_0.
# --------------------------------------------------------------------------------------------
GAMMA_MIN, GAMMA_MAX = -13.3, 5.0


def _oracle_eps_fn(f):
  """ε̂(z, g) = (z - α_t f)/σ_t, γ_t recovered from the conditioning g: the exact noise."""
  def eps_fn(z, g):
    gamma = GAMMA_MIN + (GAMMA_MAX - GAMMA_MIN) * g[:, None, None, None]
    return (z - schedule.alpha(gamma) * f[..., None]) / schedule.sigma(gamma)
  return eps_fn


@pytest.mark.parametrize("num_steps,lowres", [(1000, None), (10, (6, 6))])
def test_oracle_eps_recovers_x(num_steps, lowres):
  x = _images(32)
  f = vdm.encode(x, 12)
  y0 = None if lowres is None else kspace.measure(x, lowres)
  run = jax.jit(lambda keys, y0: sampling.sample(
      keys, y0, 1.0, eps_fn=_oracle_eps_fn(f), gamma_fn=lambda t: GAMMA_MIN + (
          GAMMA_MAX - GAMMA_MIN) * t, bits=12, gamma_min=GAMMA_MIN, gamma_max=GAMMA_MAX,
      image_shape=(SIZE, SIZE), num_steps=num_steps))
  x_hat = run(sampling.sample_keys(jax.random.key(5), 32, 1)[:, 0], y0)
  # z_0 ~ N(α_0 f, σ_0²): x̂ - x = (σ_0/α_0)/scale·ε, rms exp(γ_0/2)/scale. Over 8192 pixels the
  # rms has a relative sd of 0.8 % (float32 over 1000 steps adds ~1 %): ±5 % is a wide band, and
  # a step that drops c or √c misses it by 13 % or more.
  expected_rms = np.exp(GAMMA_MIN / 2) / vdm.encoder_affine(12)[0]
  rms = float(jnp.sqrt(jnp.mean((x_hat - x) ** 2)))
  assert rms == pytest.approx(expected_rms, rel=0.05)


@pytest.mark.parametrize("t_start", [1.0, 0.6])
def test_oracle_eps_recovers_x_with_the_projection_sampler(t_start):
  x = _images(32)
  f = vdm.encode(x, 12)
  y0 = kspace.measure(x, (6, 6))
  run = jax.jit(lambda keys, y0: sampling.sample(
      keys, y0, eps_fn=_oracle_eps_fn(f), gamma_fn=lambda t: GAMMA_MIN + (
          GAMMA_MAX - GAMMA_MIN) * t, bits=12, gamma_min=GAMMA_MIN, gamma_max=GAMMA_MAX,
      image_shape=(SIZE, SIZE), num_steps=10, sampler="projection", eta=0.85,
      t_start=t_start))
  x_hat = run(sampling.sample_keys(jax.random.key(5), 32, 1)[:, 0], y0)
  # x̂₀ = f at every step; the last re-noising leaves z_0 ~ N(α_0 f, σ_0²) as the ancestral
  # sampler does (deterministic and fresh noise in quadrature): the same rms band.
  expected_rms = np.exp(GAMMA_MIN / 2) / vdm.encoder_affine(12)[0]
  assert float(jnp.sqrt(jnp.mean((x_hat - x) ** 2))) == pytest.approx(expected_rms, rel=0.05)


def test_projection_step_estimate_is_consistent_with_the_measurement():
  """ε̂ = 0 and η = 0 make z_s = α_s·x̂₀ exactly, which exposes the projected estimate."""
  x = _images(2)
  y0 = kspace.measure(x, (8, 8))  # even: the unpaired edge row and column
  y0_f = kspace.encode_measurement(y0, *vdm.encoder_affine(12), (SIZE, SIZE))
  z_t = 3.0 * jax.random.normal(jax.random.key(3), (2, SIZE, SIZE))  # x̂₀ clipped, then projected
  keys = sampling.sample_keys(jax.random.key(4), 2, 1)[:, 0]
  g_s = jnp.float32(-3.0)
  z_s = sampling.projection_step(z_t, keys, 4, jnp.float32(1.0), g_s,
                                 eps_fn=lambda z, g: jnp.zeros_like(z), y0_f=y0_f, eta=0.0,
                                 gamma_min=GAMMA_MIN, gamma_max=GAMMA_MAX)
  x0 = z_s / schedule.alpha(g_s)
  assert float(kspace.residual(x0, y0_f).max()) < 1e-6
  assert float(jnp.abs(x0 - jnp.clip(z_t / schedule.alpha(1.0), -1, 1)).max()) > 0.1  # it moved


def test_warm_start_runs_exactly_the_steps_below_t_start():
  seen = []

  def spy(z, g):
    jax.debug.callback(lambda v: seen.append(float(v[0])), g)
    return jnp.zeros_like(z)

  gamma_fn = lambda t: GAMMA_MIN + (GAMMA_MAX - GAMMA_MIN) * t
  y0 = kspace.measure(_images(1), (8, 8))
  for sampler in sampling.SAMPLERS:
    seen.clear()
    sampling.sample(sampling.sample_keys(jax.random.key(0), 1, 1)[:, 0], y0, eps_fn=spy,
                    gamma_fn=gamma_fn, bits=12, gamma_min=GAMMA_MIN, gamma_max=GAMMA_MAX,
                    image_shape=(SIZE, SIZE), num_steps=5, sampler=sampler, t_start=0.6)
    jax.effects_barrier()
    t_seen = np.asarray(seen)  # the conditioning is (γ - γ_min)/(γ_max - γ_min) = t here
    np.testing.assert_allclose(np.sort(t_seen)[::-1], 0.6 * np.arange(5, 0, -1) / 5, atol=1e-6)


def test_sample_rejects_bad_sampler_options():
  kw = dict(eps_fn=lambda z, g: jnp.zeros_like(z), gamma_fn=lambda t: t, bits=12,
            gamma_min=GAMMA_MIN, gamma_max=GAMMA_MAX, image_shape=(SIZE, SIZE), num_steps=2)
  keys = sampling.sample_keys(jax.random.key(0), 1, 1)[:, 0]
  with pytest.raises(ValueError, match="unknown sampler"):
    sampling.sample(keys, None, sampler="ddpm", **kw)
  with pytest.raises(ValueError, match="needs a measurement"):
    sampling.sample(keys, None, t_start=0.5, **kw)
  with pytest.raises(ValueError, match="t_start"):
    sampling.sample(keys, None, t_start=1.5, **kw)


# --------------------------------------------------------------------------------------------
# Final projection, keys, batch and device independence, program size.
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("lowres", [(8, 8), (5, 7)])  # even (unpaired edge) and odd
def test_final_projection_leaves_roundoff_residual(tiny, lowres):
  model, params = tiny
  y0 = kspace.measure(_images(2), lowres)
  post = sampling.posterior_samples(model, params, y0, key=jax.random.key(0), num_samples=2,
                                    num_steps=3, final_projection=True, batch_size=8)
  residual = kspace.residual(jnp.asarray(post.samples.reshape(4, SIZE, SIZE)),
                             jnp.repeat(y0, 2, axis=0))
  assert float(residual.max()) < 1e-6
  np.testing.assert_allclose(kspace.residual(jnp.asarray(post.mean), y0), 0.0, atol=1e-6)


def test_without_final_projection_the_residual_is_what_guidance_left(tiny):
  """The projection test above could fail: without it the residual is far above round-off."""
  model, params = tiny
  y0 = kspace.measure(_images(8), (8, 8))
  keys = sampling.sample_keys(jax.random.key(0), 8, 1)[:, 0]
  x = sampling.make_sampler(model, _mesh(8), num_steps=3, guided=True)(params, keys, y0, 1.0)
  assert float(kspace.residual(x, y0).min()) > 1e-3
  assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0  # clipped, not projected


def test_same_key_gives_identical_samples(tiny):
  model, params = tiny
  y0 = kspace.measure(_images(2), (8, 8))
  run = lambda seed: sampling.posterior_samples(
      model, params, y0, key=jax.random.key(seed), num_samples=2, num_steps=3, batch_size=8)
  a, b, c = run(0), run(0), run(1)
  np.testing.assert_array_equal(a.samples, b.samples)
  assert np.abs(a.samples - c.samples).max() > 1e-2
  assert np.abs(a.samples[:, 0] - a.samples[:, 1]).max() > 1e-2  # K samples differ
  np.testing.assert_allclose(a.mean, a.samples.mean(1), atol=1e-7)


@pytest.mark.parametrize("sampler,t_start", [("paper", 1.0), ("projection", 0.6)])
def test_samples_do_not_depend_on_batch_size_or_devices(tiny, sampler, t_start):
  model, params = tiny
  y0 = kspace.measure(_images(3), (8, 8))
  run = lambda batch, devices: sampling.posterior_samples(
      model, params, y0, key=jax.random.key(2), num_samples=2, num_steps=3, lam=0.7,
      batch_size=batch, mesh=_mesh(devices), sampler=sampler, t_start=t_start).samples
  reference = run(1, 1)
  for batch, devices in [(5, 1), (5, 8)]:  # 5 on 8 devices is padded to 8 (6 samples: 1 call)
    np.testing.assert_allclose(run(batch, devices), reference, atol=2e-5, rtol=0)


def test_lam_0_samples_the_prior(tiny):
  """λ = 0 guidance is the identity: the guided sampler gives the prior's samples, key for key."""
  model, params = tiny
  mesh = _mesh(8)
  keys = sampling.sample_keys(jax.random.key(3), 8, 1)[:, 0]
  y0 = kspace.measure(_images(8), (8, 8))
  guided = sampling.make_sampler(model, mesh, num_steps=3, guided=True)(params, keys, y0, 0.0)
  prior = sampling.make_sampler(model, mesh, num_steps=3, guided=False)(params, keys)
  np.testing.assert_allclose(guided, prior, atol=1e-6)


def test_prior_sampling(tiny):
  model, params = tiny
  x = sampling.prior_samples(model, params, key=jax.random.key(0), num=3, num_steps=3,
                             batch_size=1, mesh=_mesh(1))
  assert x.shape == (3, SIZE, SIZE) and np.all(np.isfinite(x))
  assert x.min() >= 0.0 and x.max() <= 1.0  # decoded and clipped, no projection
  assert np.abs(x[0] - x[1]).max() > 1e-2
  again = sampling.prior_samples(model, params, key=jax.random.key(0), num=3, num_steps=3,
                                 batch_size=8, mesh=_mesh(8))
  np.testing.assert_allclose(again, x, atol=2e-5)


@pytest.mark.parametrize("sampler", sampling.SAMPLERS)
def test_program_size_does_not_depend_on_the_number_of_steps(tiny, sampler):
  """lax.scan, not unrolled: 10 and 1000 steps lower to the same program up to constants."""
  model, params = tiny
  mesh = _mesh(8)
  keys = sampling.sample_keys(jax.random.key(0), 8, 1)[:, 0]
  y0 = jnp.zeros((8, 8, 8), jnp.complex64)

  def program(num_steps):
    sampler_fn = sampling.make_sampler(model, mesh, num_steps=num_steps, guided=True,
                                       final_projection=True, progress_every=5,
                                       sampler=sampler, t_start=0.7)
    text = sampler_fn.lower(params, keys, y0, 1.0).as_text()
    return re.sub(r"\d+(\.\d+)?(e[-+]?\d+)?", "#", text)  # shapes and constants differ

  short, long = program(10), program(1000)
  assert len(short.splitlines()) == len(long.splitlines())
  assert short == long


def test_progress_callback_reports_every_k_steps_once(tiny):
  model, params = tiny
  calls = []
  with sampling.progress_listener(calls.append):
    sampling.posterior_samples(model, params, kspace.measure(_images(1), (8, 8)),
                               key=jax.random.key(0), num_samples=1, num_steps=3, batch_size=8,
                               progress_every=2, mesh=_mesh(8))
  assert sorted(calls) == [2, 3]  # once per step reported, not once per device


# --------------------------------------------------------------------------------------------
# Antithetic pairs: one key, mirrored noise.
# --------------------------------------------------------------------------------------------
GAUSS_MEAN, GAUSS_SD = 0.1, 0.05  # the Gaussian prior of the pair test, encoded space


def _gaussian_eps_fn(z, g):
  """The exact ε̂ = E[ε | z_t] of the prior f ~ N(GAUSS_MEAN, GAUSS_SD² I): affine in z_t."""
  gamma = GAMMA_MIN + (GAMMA_MAX - GAMMA_MIN) * g[:, None, None, None]
  a, s = schedule.alpha(gamma), schedule.sigma(gamma)
  return s * (z - a * GAUSS_MEAN) / (a**2 * GAUSS_SD**2 + s**2)


@pytest.mark.parametrize("sampler,t_start", [("paper", 1.0), ("projection", 1.0),
                                             ("projection", 0.6)])
def test_an_antithetic_pair_of_a_gaussian_prior_averages_to_the_same_mean_for_every_key(
    sampler, t_start):
  """Every step is affine in the noise for a Gaussian prior (no clipping is reached), so the
  mean of a pair is the noise-free path: the same for every key, while single samples are not.
  A sign dropped on any one noise draw (z_1, ε, ε′) leaves a key-dependent pair mean."""
  y0 = kspace.measure(_images(1), (6, 6))
  run = jax.jit(lambda keys, signs: sampling.sample(
      keys, jnp.repeat(y0, keys.shape[0], 0), 0.7, eps_fn=_gaussian_eps_fn,
      gamma_fn=lambda t: GAMMA_MIN + (GAMMA_MAX - GAMMA_MIN) * t, bits=12,
      gamma_min=GAMMA_MIN, gamma_max=GAMMA_MAX, image_shape=(SIZE, SIZE), num_steps=8,
      sampler=sampler, eta=0.85, t_start=t_start, signs=signs))
  keys, signs = sampling.posterior_keys(jax.random.key(7), 1, 8, antithetic=True)
  x = np.asarray(run(keys[0], signs[0])).reshape(4, 2, SIZE, SIZE)  # 4 pairs
  assert np.abs(x[:, 0] - x[:, 1]).max() > 1e-2 and np.abs(x[0, 0] - x[1, 0]).max() > 1e-2
  pair_means = x.mean(1)
  np.testing.assert_allclose(pair_means, np.broadcast_to(pair_means[:1], pair_means.shape),
                             atol=1e-5)


def test_posterior_keys_pair_each_key_with_opposite_signs():
  keys, signs = sampling.posterior_keys(jax.random.key(1), 3, 4, first_index=2, antithetic=True)
  indep = sampling.sample_keys(jax.random.key(1), 3, 2, first_index=2)
  data = jax.random.key_data
  np.testing.assert_array_equal(data(keys[:, 0::2]), data(indep))
  np.testing.assert_array_equal(data(keys[:, 1::2]), data(indep))
  np.testing.assert_array_equal(signs, np.tile([1.0, -1.0], (3, 2)))
  with pytest.raises(ValueError, match="must be even"):
    sampling.posterior_keys(jax.random.key(1), 3, 3, antithetic=True)


@pytest.mark.parametrize("sampler", sampling.SAMPLERS)
def test_the_first_chain_of_a_pair_is_the_independent_sample_of_its_key(tiny, sampler):
  """Sample 2j of an antithetic run is sample j of an independent run with K/2 samples, on any
  batch and device split; its partner differs from it."""
  model, params = tiny
  y0 = kspace.measure(_images(3), (8, 8))
  run = lambda k, anti, batch, devices: sampling.posterior_samples(
      model, params, y0, key=jax.random.key(2), num_samples=k, num_steps=3, lam=0.7,
      batch_size=batch, mesh=_mesh(devices), sampler=sampler, antithetic=anti).samples
  pairs = run(4, True, 12, 8)
  np.testing.assert_allclose(pairs[:, 0::2], run(2, False, 6, 1), atol=2e-5, rtol=0)
  np.testing.assert_allclose(run(4, True, 3, 1), pairs, atol=2e-5, rtol=0)
  assert np.abs(pairs[:, 0] - pairs[:, 1]).max() > 1e-2
