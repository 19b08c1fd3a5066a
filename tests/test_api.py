"""The Python API (vdm_mri.api): sampling options with one definition, a prior loaded from a
params dir or the package, super-resolution of arrays, and the per-volume normalisation that
the data pipeline and the super-resolution share."""

import dataclasses
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags

from conftest import load_config
from vdm_mri import api, kspace, pretrained, sample, sampling, workdir
from vdm_mri import model as model_lib
from vdm_mri.data import nifti, slices

FAST = dict(steps=2, num_samples=2, batch_size=8)


@pytest.fixture(scope="module")
def prior(tmp_path_factory):
  """A randomly initialised 32x32 prior exported as a params dir, loaded through the API."""
  config = load_config("tiny")
  config.data.image_size = 32
  config.model.ch, config.model.ch_mult = 8, (1, 2)
  config.schedule.hidden = 16
  config.sampling.update(lam=1.0, steps=3, num_samples=2, final_projection=True)
  params = model_lib.from_config(config).init(jax.random.key(0))
  path = pretrained.export(tmp_path_factory.mktemp("prior") / "p", params, config, step=1)
  return api.load_prior(path)


def _lowres(n=3, seed=0):
  """Smooth positive 16x16 images [n, 16, 16] (two volumes' worth)."""
  yy, xx = np.mgrid[:16, :16] / 15.0
  rng = np.random.default_rng(seed)
  return np.stack([0.2 + np.exp(-((yy - rng.uniform(0.3, 0.7)) ** 2 + (xx - 0.5) ** 2) * 6)
                   for _ in range(n)]).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Sampling options.
# --------------------------------------------------------------------------------------------
def test_options_take_config_values_then_overrides_and_fill_missing_fields():
  old_config = {"lam": 0.5, "steps": 7, "num_samples": 3, "batch_size": 4,
                "final_projection": False, "every": 100}  # no sampler/eta/t_start; extra key
  opts = api.SamplingOptions.from_config(old_config, steps=None, eta=0.2)
  assert (opts.lam, opts.steps, opts.num_samples, opts.final_projection) == (0.5, 7, 3, False)
  assert (opts.sampler, opts.eta, opts.t_start) == ("paper", 0.2, 1.0)  # field defaults
  assert opts.replace(lam=None, steps=2).steps == 2 and opts.replace(lam=None).lam == 0.5


@pytest.mark.parametrize("bad, message", [
    (dict(lam=1.5), "lam must be in"), (dict(steps=0), "steps must be at least 1"),
    (dict(sampler="euler"), "sampler must be one of"), (dict(eta=-0.1), "eta must be in"),
    (dict(t_start=0.0), "t_start must be in"), (dict(batch_size=0), "batch_size"),
    (dict(num_samples=3, antithetic=True), "num_samples must be even")])
def test_options_reject_values_out_of_range(bad, message):
  with pytest.raises(api.InputError, match=message):
    api.SamplingOptions(**bad)


def test_a_setting_string_sets_sampler_steps_k_eta_t_start_pairing_and_round_trips():
  base = api.SamplingOptions(lam=0.5, steps=7, num_samples=3, eta=0.3)
  opts = base.with_setting("projection:20:8")
  assert (opts.sampler, opts.steps, opts.num_samples, opts.nfe) == ("projection", 20, 8, 160)
  assert (opts.lam, opts.eta, opts.t_start) == (0.5, 0.3, 1.0)  # the rest stays
  full = base.with_setting("paper:10:16:0.85:0.6")
  assert (full.eta, full.t_start) == (0.85, 0.6)
  assert base.with_setting(full.setting) == full
  assert not full.antithetic
  pairs = base.with_setting("projection:20:2:0.85:1:anti")
  assert pairs.antithetic and pairs.nfe == 40 and base.with_setting(pairs.setting) == pairs
  assert not pairs.with_setting("paper:10:16:indep").antithetic
  assert pairs.with_setting("paper:10:4").antithetic  # no suffix: the pairing stays
  for bad, message in (("paper:10", "is not sampler:steps:K"), ("paper:ten:4", "is not"),
                       ("paper:10:4:0.85:1:2", "is not"), ("ddpm:10:4", "sampler must be"),
                       ("paper:10:0", "num_samples must be at least 1"),
                       ("paper:10:3:anti", "num_samples must be even"), ("anti", "is not")):
    with pytest.raises(api.InputError, match=message):
      base.with_setting(bad)


def test_every_option_reaches_the_sampler_and_has_a_flag():
  """Adding a field is one line here plus one flag: both are checked."""
  accepted = inspect.signature(sampling.posterior_samples).parameters
  assert set(api.SamplingOptions().posterior_kwargs()) <= set(accepted)
  fv = flags.FlagValues()
  sample.define_flags(fv)
  for field in dataclasses.fields(api.SamplingOptions):
    assert field.name in fv, f"no --{field.name} flag"


# --------------------------------------------------------------------------------------------
# Prior and super-resolution.
# --------------------------------------------------------------------------------------------
def test_default_prior_is_the_shipped_one():
  assert workdir.resolve() == pretrained.DEFAULT.absolute()
  with pytest.raises(workdir.CheckpointError, match="no such directory"):
    api.load_prior("/nonexistent/prior")


def test_super_resolve_is_consistent_posterior_summary(prior):
  x_lr = _lowres()
  result = api.super_resolve(prior, lowres=x_lr, keep_samples=True, key=jax.random.key(1),
                             **FAST)
  assert result.mean.shape == result.std.shape == (3, 32, 32)
  assert result.samples.shape == (3, 2, 32, 32) and result.lowres.shape == (3, 16, 16)
  np.testing.assert_allclose(result.mean, result.samples.mean(1), atol=1e-6)
  np.testing.assert_allclose(result.std, result.samples.std(1), atol=1e-6)
  np.testing.assert_allclose(result.lowres, x_lr, atol=1e-5)  # |x_lr| of its own measurement
  assert float(result.residual.max()) < 1e-5  # the final projection, in the input's scale
  y0 = kspace.measurement_from_lowres(jnp.asarray(x_lr), (32, 32))
  # The same measurement given as k-space, and the same key: the same samples.
  again = api.super_resolve(prior, kspace=np.asarray(y0), key=jax.random.key(1), **FAST)
  np.testing.assert_array_equal(again.mean, result.mean)
  assert again.samples is None and "samples" not in again.arrays()


def test_normalisation_is_per_volume_and_outputs_scale_back(prior):
  x_lr = _lowres(4)
  subject = np.array(["a", "a", "b", "b"])
  base = api.super_resolve(prior, lowres=x_lr, subject=subject, **FAST)
  scaled = x_lr * np.array([1.0, 1.0, 7.0, 7.0], np.float32)[:, None, None]
  result = api.super_resolve(prior, lowres=scaled, subject=subject, **FAST)
  # Volume b is 7x brighter: its scale is 7x, the sampler sees the same data, the mean is 7x.
  np.testing.assert_allclose(result.scale, base.scale * [1, 1, 7, 7], rtol=1e-5)
  np.testing.assert_allclose(result.mean[2:], 7 * base.mean[2:], rtol=1e-3, atol=1e-4)
  np.testing.assert_allclose(result.mean[:2], base.mean[:2], rtol=1e-4, atol=1e-5)
  raw = api.super_resolve(prior, lowres=x_lr, normalize=False, **FAST)
  np.testing.assert_array_equal(raw.scale, 1.0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(), "exactly one of"), (dict(lowres=np.ones((1, 40, 16))), "larger than the target"),
    (dict(kspace=np.ones((1, 16, 16))), "k-space must be complex"),
    (dict(lowres=np.zeros((1, 16, 16))), "no signal"),
    (dict(lowres=np.ones((2, 16, 16)), subject=["a"]), "one id per slice"),
    (dict(lowres=np.ones((1, 16, 16)), lam=2.0), "lam must be in")])
def test_bad_arrays_and_options_are_input_errors(prior, kwargs, message):
  with pytest.raises(api.InputError, match=message):
    api.super_resolve(prior, **kwargs)


# --------------------------------------------------------------------------------------------
# One normalisation rule for the data pipeline and the super-resolution of a user's volume.
# --------------------------------------------------------------------------------------------
def test_data_pipeline_and_super_resolution_normalise_a_volume_alike():
  rng = np.random.default_rng(0)
  volume = rng.uniform(0.5, 1.0, (16, 16, 6)).astype(np.float32)  # RAS [X, Y, Z], 1 mm voxels
  volume[4:12, 4:12, :] *= 40.0  # the foreground, centred; its top percentiles are clipped
  # The pipeline on the native grid (16 mm field of view at 16 px, centred on the foreground:
  # the resampling is the identity).
  x, z, _ = nifti.volume_to_slices(volume, np.ones(3), matrix=16, fov_mm=16.0, name="v")
  slices_ras = np.transpose(volume, (2, 1, 0))[:, ::-1, :][z]  # [Z, y anterior first, x]
  scale, _ = slices.normalisation(volume, "v")
  kept = x < 1.0
  np.testing.assert_allclose(x[kept] * scale, slices_ras[kept], rtol=1e-5)
  # The CLI's rule on the same volume, measured at full resolution (so |x_lr| is the volume).
  y0 = np.asarray(kspace.measure(jnp.asarray(np.transpose(volume, (2, 1, 0))), (16, 16)))
  cli = api.volume_scales(y0, np.full(len(y0), "v"), (16, 16))
  np.testing.assert_allclose(cli, scale, rtol=1e-5)
