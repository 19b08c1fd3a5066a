"""Training-recipe options: patches with coordinates, flips, non-leaking affine augmentation,
the sigmoid weighting, the warm start into a network with coordinate channels, extra blocks or
augmentation labels, and the per-band denoising evaluator."""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import load_config
from vdm_mri import model as model_lib
from vdm_mri import optim, pretrained, sampling, train, unet, validation, vdm
from vdm_mri.data import augment


# --------------------------------------------------------------------------------------------
# Patches and flips.
# --------------------------------------------------------------------------------------------
def test_random_crop_returns_the_pixels_its_coordinates_name():
  x = jnp.asarray(np.random.default_rng(0).random((6, 20, 24, 1)), jnp.float32)
  patches, coords = augment.random_crop(jax.random.key(3), x, 8)
  assert patches.shape == (6, 8, 8, 1) and coords.shape == (6, 8, 8, 2)
  full = np.asarray(unet.full_coords(6, 20, 24))
  for b in range(6):
    # The coordinates of the patch's top-left pixel locate it in the whole-image grid.
    r = int(np.argmin(np.abs(full[b, :, 0, 0] - coords[b, 0, 0, 0])))
    c = int(np.argmin(np.abs(full[b, 0, :, 1] - coords[b, 0, 0, 1])))
    np.testing.assert_array_equal(patches[b], x[b, r:r + 8, c:c + 8])
    np.testing.assert_allclose(coords[b], full[b, r:r + 8, c:c + 8], atol=1e-6)
  # A crop of the whole image is the image with the whole-image grid.
  same, grid = augment.random_crop(jax.random.key(0), x[:, :20, :20], 20)
  np.testing.assert_array_equal(same, x[:, :20, :20])
  np.testing.assert_allclose(grid, unet.full_coords(6, 20, 20), atol=1e-6)


def test_random_flip_mirrors_some_images_and_keeps_the_rest():
  x = jnp.asarray(np.random.default_rng(1).random((32, 5, 7, 1)), jnp.float32)
  y = np.asarray(augment.random_flip(jax.random.key(0), x))
  flipped = [bool(np.array_equal(y[i], x[i, :, ::-1])) for i in range(32)]
  kept = [bool(np.array_equal(y[i], x[i])) for i in range(32)]
  assert all(f or k for f, k in zip(flipped, kept))
  assert 4 < sum(flipped) < 28


def test_affine_warp_rotates_scales_and_shifts_about_the_centre():
  x = jnp.asarray(np.random.default_rng(2).random((7, 7, 2)), jnp.float32)
  warp = lambda deg, s, dr, dc: np.asarray(augment.affine_warp(x, deg, s, dr, dc, -1.0))
  np.testing.assert_allclose(warp(0.0, 0.0, 0.0, 0.0), x, atol=1e-6)
  # +90 degrees is counter-clockwise as displayed (np.rot90 with row 0 at the top).
  np.testing.assert_allclose(warp(90.0, 0.0, 0.0, 0.0), np.rot90(x, 1, axes=(0, 1)), atol=1e-5)
  # An integer shift moves the pixels and fills the uncovered rows and columns.
  shifted = warp(0.0, 0.0, 2.0, -1.0)
  np.testing.assert_allclose(shifted[2:, :6], x[:5, 1:], atol=1e-6)
  assert np.all(shifted[:2] == -1.0) and np.all(shifted[:, 6] == -1.0)
  # Twice the size about the centre pixel (3, 3): the output at offset 2 shows offset 1.
  zoom = warp(0.0, 1.0, 0.0, 0.0)
  np.testing.assert_allclose(zoom[3, 3], x[3, 3], atol=1e-6)
  np.testing.assert_allclose(zoom[3, 5], x[3, 4], atol=1e-6)
  np.testing.assert_allclose(zoom[1, 3], x[2, 3], atol=1e-6)


def test_random_affine_labels_are_zero_exactly_for_the_images_it_leaves_alone():
  x = jnp.asarray(np.random.default_rng(3).random((32, 12, 12, 1)), jnp.float32)
  aug = augment.Affine(prob=0.5, degrees=20.0, log2_scale=0.2, shift=0.1)
  y, labels = augment.random_affine(jax.random.key(4), x, aug)
  y, labels = np.asarray(y), np.asarray(labels)
  assert labels.shape == (32, augment.AUG_LABELS) and np.all(np.abs(labels) <= 1.0)
  touched = np.any(labels != 0.0, axis=1)
  assert 4 < touched.sum() < 28
  for i in range(32):
    assert np.array_equal(y[i], x[i]) != touched[i]
  # The labels say how: the warp with the labelled parameters is the output.
  i = int(np.argmax(touched))
  u = labels[i]
  np.testing.assert_allclose(y[i], augment.affine_warp(
      x[i], u[0] * 20.0, u[1] * 0.2, u[2] * 0.1 * 12, u[3] * 0.1 * 12, float(x[i].min())),
      atol=1e-6)
  same, none = augment.random_affine(jax.random.key(4), x, augment.Affine(prob=0.0))
  np.testing.assert_array_equal(same, x)
  assert not np.any(np.asarray(none))
  with pytest.raises(ValueError, match="probability"):
    augment.Affine(prob=1.5)


def test_patch_schedule_is_a_deterministic_draw_with_the_given_probabilities():
  sched = augment.parse_patch_schedule("64,32,128", "0.3,0.2,0.5", seed=7)
  assert sched.sizes == (32, 64, 128) and sched.probs == (0.2, 0.3, 0.5)
  draws = [sched.size_for_step(i) for i in range(4000)]
  assert draws == [sched.size_for_step(i) for i in range(4000)]  # a resume draws the same
  for size, prob in zip(sched.sizes, sched.probs):
    assert abs(draws.count(size) / 4000 - prob) < 0.03
  assert augment.parse_patch_schedule("", "") is None
  with pytest.raises(ValueError, match="sum to 1"):
    augment.parse_patch_schedule("32,64", "0.5,0.6")
  with pytest.raises(ValueError, match="comma-separated"):
    augment.parse_patch_schedule("32,x", "")


def test_step_options_reject_patches_without_coordinate_channels():
  config = load_config("tiny")
  config.data.patch_sizes = "32,64"
  with pytest.raises(ValueError, match="coord_channels"):
    train.step_options(config)
  config.model.coord_channels = True
  config.data.patch_sizes = "32,256"
  with pytest.raises(ValueError, match="exceed the image size"):
    train.step_options(config)
  config.data.patch_sizes = ""
  config.loss.weighting = "edm"
  with pytest.raises(ValueError, match="weighting"):
    train.step_options(config)
  config.loss.weighting = "elbo"
  config.data.augment_prob = 0.2
  with pytest.raises(ValueError, match="aug_dim"):
    train.step_options(config)
  config.model.aug_dim = augment.AUG_LABELS
  assert train.step_options(config)[0].affine == augment.Affine(0.2)


# --------------------------------------------------------------------------------------------
# A network with coordinate channels.
# --------------------------------------------------------------------------------------------
def _small_config(coords: bool):
  config = load_config("tiny")
  config.data.image_size = 32
  config.model.update(ch=8, ch_mult=(1, 2, 2), attn_resolutions=(16,), coord_channels=coords)
  return config


def test_patches_run_the_whole_image_blocks_and_default_to_whole_image_coordinates():
  model = model_lib.from_config(_small_config(coords=True))
  params = model.init(jax.random.key(0))
  assert "down_1_0_attn" in params["score"]  # attention at the 16 px level of a 32 px image
  z = jax.random.normal(jax.random.key(1), (2, 32, 32, 1))
  g = jnp.full((2,), 0.5)
  eps = jax.jit(lambda z, g, coords=None: model.eps_fn(params, coords=coords)(z, g))
  whole = eps(z, g)
  np.testing.assert_allclose(eps(z, g, unet.full_coords(2, 32, 32)), whole, atol=1e-6)
  # A 16 px patch takes the same parameters (attention by level, not by patch resolution).
  patch, coords = augment.random_crop(jax.random.key(2), z, 16)
  assert jax.eval_shape(eps, patch, g, coords).shape == (2, 16, 16, 1)


def test_warm_start_into_coordinate_channels_computes_the_same_function(tmp_path):
  plain_cfg, coord_cfg = _small_config(coords=False), _small_config(coords=True)
  plain, coord = model_lib.from_config(plain_cfg), model_lib.from_config(coord_cfg)
  params = jax.device_get(plain.init(jax.random.key(0)))
  # A non-zero head so that the outputs depend on the stem (it is zero-initialised).
  params = jax.tree.map(lambda a: a + 0.01, params)
  pretrained.export(tmp_path / "p", params, plain_cfg, step=5)
  with pytest.raises(pretrained.PretrainedError, match="do not match"):
    pretrained.load_params(tmp_path / "p", coord)
  loaded = pretrained.load_params(tmp_path / "p", coord, add_input_channels=True)
  kernel = loaded["score"]["Conv_0"]["kernel"]
  assert kernel.shape[2] == params["score"]["Conv_0"]["kernel"].shape[2] + 2
  np.testing.assert_array_equal(kernel[:, :, -2:], 0.0)
  z = jax.random.normal(jax.random.key(1), (2, 32, 32, 1))
  g = jnp.full((2,), 0.3)
  np.testing.assert_allclose(coord.eps_fn(loaded)(z, g), plain.eps_fn(params)(z, g),
                             rtol=1e-5, atol=1e-6)


def test_warm_start_into_extra_blocks_computes_the_same_function_and_trains_them(tmp_path):
  plain_cfg, deep_cfg = _small_config(coords=False), _small_config(coords=False)
  deep_cfg.model.extra_blocks = (0, 1, 2)  # none at 32 px, one at 16 px, two at 8 px
  plain, deep = model_lib.from_config(plain_cfg), model_lib.from_config(deep_cfg)
  params = jax.tree.map(lambda a: a + 0.01, jax.device_get(plain.init(jax.random.key(0))))
  pretrained.export(tmp_path / "p", params, plain_cfg, step=5)
  fresh = jax.device_get(deep.init(jax.random.key(7)))
  with pytest.raises(pretrained.PretrainedError, match="do not match"):
    pretrained.load_params(tmp_path / "p", deep)  # not a warm start: the blocks are missing
  grown = pretrained.load_params(tmp_path / "p", deep, grow_from=fresh)
  new = sorted(set(grown["score"]) - set(params["score"]))
  # After each of the level's blocks (one down, two up): 0·3 + 1·3 + 2·3 extra blocks.
  assert len(new) == 9 and all(unet.EXTRA_TAG in name for name in new)
  for name in params["score"]:  # every trained weight is the file's
    jax.tree.map(np.testing.assert_array_equal, grown["score"][name], params["score"][name])
  z = jax.random.normal(jax.random.key(1), (2, 32, 32, 1))
  g = jnp.full((2,), 0.3)
  np.testing.assert_allclose(deep.eps_fn(grown)(z, g), plain.eps_fn(params)(z, g),
                             rtol=1e-5, atol=1e-6)
  # The identity blocks learn: the loss has a gradient on their zero-initialised convolution.
  grads = jax.grad(lambda p: jnp.sum(deep.eps_fn(p)(z, g) ** 2))(grown)
  assert float(jnp.abs(grads["score"]["up_2_0_extra1"]["Conv_1"]["kernel"]).max()) > 0
  # Only extra blocks are grown: a network with more blocks per level is still refused.
  wider_cfg = _small_config(coords=False)
  wider_cfg.model.num_res_blocks = 2
  wider = model_lib.from_config(wider_cfg)
  with pytest.raises(pretrained.PretrainedError, match="do not match"):
    pretrained.load_params(tmp_path / "p", wider, grow_from=jax.device_get(
        wider.init(jax.random.key(7))))


def test_augmentation_labels_leave_the_unaugmented_network_unchanged(tmp_path):
  plain_cfg, aug_cfg = _small_config(coords=False), _small_config(coords=False)
  aug_cfg.model.aug_dim = augment.AUG_LABELS
  plain, augmented = model_lib.from_config(plain_cfg), model_lib.from_config(aug_cfg)
  # Noisy weights: the fresh network's zero-initialised layers would hide the conditioning.
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda a: a + 0.1 * rng.standard_normal(a.shape).astype(a.dtype),
                        jax.device_get(plain.init(jax.random.key(0))))
  pretrained.export(tmp_path / "p", params, plain_cfg, step=5)
  fresh = jax.device_get(augmented.init(jax.random.key(7)))
  grown = pretrained.load_params(tmp_path / "p", augmented, grow_from=fresh)
  assert sorted(set(grown["score"]) - set(params["score"])) == [unet.AUG_MODULE]
  z = jax.random.normal(jax.random.key(1), (2, 32, 32, 1))
  g = jnp.full((2,), 0.3)
  want = plain.eps_fn(params)(z, g)
  np.testing.assert_allclose(augmented.eps_fn(grown)(z, g), want, rtol=1e-5, atol=1e-6)
  labels = jnp.asarray([[0.0] * augment.AUG_LABELS, [0.5, -0.3, 0.2, 0.9]], jnp.float32)
  # The embedding learns from labelled images...
  grads = jax.grad(lambda p: jnp.sum(augmented.eps_fn(p, aug=labels)(z, g) ** 2))(grown)
  assert float(jnp.abs(grads["score"][unet.AUG_MODULE]["kernel"]).max()) > 0
  # ...and whatever it learnt, zero labels (sampling) give the unaugmented network's output,
  # while non-zero labels change it.
  trained = jax.tree.map(lambda a: a, grown)
  trained["score"][unet.AUG_MODULE]["kernel"] = rng.standard_normal(
      grown["score"][unet.AUG_MODULE]["kernel"].shape).astype(np.float32)
  np.testing.assert_allclose(augmented.eps_fn(trained)(z, g), want, rtol=1e-5, atol=1e-6)
  out = np.asarray(augmented.eps_fn(trained, aug=labels)(z, g))
  np.testing.assert_allclose(out[0], want[0], rtol=1e-5, atol=1e-6)
  assert float(np.abs(out[1] - want[1]).max()) > 1e-2
  with pytest.raises(ValueError, match="without aug_dim"):
    plain.eps_fn(params, aug=labels)(z, g)


def test_extra_blocks_need_one_count_per_level():
  config = _small_config(coords=False)
  config.model.extra_blocks = (1, 1)  # three levels
  with pytest.raises(ValueError, match="one count per level"):
    model_lib.from_config(config).init(jax.random.key(0))


# --------------------------------------------------------------------------------------------
# The sigmoid weighting.
# --------------------------------------------------------------------------------------------
def test_sigmoid_weighting_draws_noise_levels_by_inverse_cdf():
  w = vdm.Weighting(bias=4.0)
  g0, g1 = -13.3, 5.0
  u = jnp.linspace(0.0, 1.0, 101)
  gam = w.sample_gammas(u, g0, g1)
  np.testing.assert_allclose(np.asarray(gam)[[0, -1]], [g0, g1], atol=1e-3)
  assert np.all(np.diff(np.asarray(gam)) > 0)
  # CDF(γ) = (softplus(γ + b) - softplus(γ0 + b)) / Z is u again.
  cdf = (jax.nn.softplus(gam + 4.0) - jax.nn.softplus(g0 + 4.0)) / w.normaliser(g0, g1)
  np.testing.assert_allclose(cdf, u, atol=1e-5)
  # Half of the draws lie above the weight's midpoint γ = -b (most of the weight is there).
  assert float(w.sample_gammas(0.5, g0, g1)) > -4.0


def test_weighted_objective_is_half_z_times_the_squared_error():
  """With ε̂ = 0 the objective is ½·Z·‖ε‖², ½·Z/ln 2 bits per dimension on average, whatever
  levels were drawn; the levels spread over [γ_min, γ_max], not over the grid of t."""
  w = vdm.Weighting(bias=2.0)
  x = jnp.full((4, 32, 32, 1), 0.5)
  seen = {}

  def eps_fn(z, g):
    seen["g"] = g
    return jnp.zeros_like(z)

  terms = vdm.loss_terms(jax.random.key(0), x, gamma_fn=lambda t: -13.3 + 18.3 * t,
                         eps_fn=eps_fn, bits=12, num_steps=1000, gamma_min=-13.3,
                         gamma_max=5.0, weighting=w)
  expected = 0.5 * float(w.normaliser(-13.3, 5.0)) / np.log(2.0)
  np.testing.assert_allclose(np.asarray(terms.diffusion), expected, rtol=0.15)
  gam = -13.3 + np.asarray(seen["g"]) * 18.3
  assert gam.min() >= -13.3 - 1e-4 and gam.max() <= 5.0 + 1e-4 and len(set(gam.round(4))) == 4


# --------------------------------------------------------------------------------------------
# Denoising error per band.
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _ConstantImageModel:
  """A stand-in for model.VDM whose ε̂ is exact for images equal to `value` (oracle) or 0."""

  oracle: bool
  value: float = 0.25
  gamma_min: float = -13.3
  gamma_max: float = 5.0

  def eps_fn(self, params):
    def fn(z, cond):
      gamma = self.gamma_min + cond * (self.gamma_max - self.gamma_min)
      gamma = gamma[:, None, None, None]
      f = vdm.encode(self.value, 12)
      eps = (z - jnp.sqrt(jax.nn.sigmoid(-gamma)) * f) / jnp.sqrt(jax.nn.sigmoid(gamma))
      return eps if self.oracle else jnp.zeros_like(z)
    return fn


def test_denoising_bands_score_an_oracle_perfect_and_a_zero_predictor_at_unit_error():
  images = np.full((5, 32, 32), 0.25, np.float32)
  bands = validation.DenoisingBands({"s": images}, gamma_min=-13.3, gamma_max=5.0, bits=12,
                                    num_bands=4, batch_size=2)
  np.testing.assert_allclose(list(bands.band_gammas().values()),
                             -13.3 + 18.3 / 4 * (np.arange(4) + 0.5))
  exact = bands(_ConstantImageModel(oracle=True), None)
  zero = bands(_ConstantImageModel(oracle=False), None)
  for k in range(4):
    assert exact[f"den/s/band{k}/eps_mse"] < 1e-6
    assert exact[f"den/s/band{k}/psnr"] > zero[f"den/s/band{k}/psnr"]
    np.testing.assert_allclose(zero[f"den/s/band{k}/eps_mse"], 1.0, rtol=0.1)  # 5120 px: sd 2 %
  # The midpoint-rule bound: ½·Σ Δγ·mse / ln 2 = ½·18.3/ln 2 for unit errors.
  np.testing.assert_allclose(zero["den/s/diffusion_bpd"], 0.5 * 18.3 / np.log(2.0), rtol=0.1)
  # Fixed noise: the same numbers on a second call.
  assert bands(_ConstantImageModel(oracle=False), None) == zero


def test_train_step_with_patches_flips_affine_and_weighting_updates_every_size():
  config = _small_config(coords=True)
  # One level at 16 px (8 px patches and the whole image): the step's smallest programs.
  config.data.image_size = 16
  config.model.update(ch_mult=(1,), attn_resolutions=(), aug_dim=augment.AUG_LABELS)
  config.data.update(patch_sizes="8,16", patch_probs="0.5,0.5", flip=True, augment_prob=0.5)
  config.loss.weighting = "sigmoid"
  config.optimizer.warmup_steps = 0  # the first update moves the parameters
  options, patches = train.step_options(config)
  assert options.flip and options.weighting == vdm.Weighting(config.loss.sigmoid_bias)
  assert options.affine.prob == 0.5
  model = model_lib.from_config(config)
  tx, _ = optim.make_optimizer(config.optimizer)
  state = jax.device_get(train.create_train_state(model, tx, jax.random.key(0)))
  # Noisy weights, as if trained: the fresh network's zero-initialised layers would block the
  # gradient of everything behind them, the label embedding included.
  rng = np.random.default_rng(1)
  params = jax.tree.map(lambda a: a + 0.05 * rng.standard_normal(a.shape).astype(a.dtype),
                        state.params)
  params["score"][unet.AUG_MODULE]["kernel"] *= 0.0  # as fresh: only its gradient can move it
  state = state.replace(params=params)
  mesh = sampling.make_mesh(jax.devices()[:1])
  optimizer = ml_collections.FrozenConfigDict(config.optimizer)
  x = jnp.asarray(np.random.default_rng(0).integers(0, 4096, (8, 16, 16, 1)) / 4095.0,
                  jnp.float32)
  for size in patches.sizes:
    step = train.jit_train_step(mesh, model, optimizer, config.loss.num_steps,
                                dataclasses.replace(options, patch=size))
    new, metrics = step(jax.device_put(state), {"image": x})
    assert np.isfinite(float(metrics["bpd"]))
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), new.params, state.params)
    assert max(jax.tree.leaves(moved)) > 0
    # The augmented images' labels reach the network: their embedding trains.
    assert max(jax.tree.leaves(moved["score"][unet.AUG_MODULE])) > 0
    state = jax.device_get(new)
