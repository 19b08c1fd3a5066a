"""Score networks: shapes, dtypes, the base-measure output, pinned size of the paper's network."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_config
from vdm_mri import model as model_lib, unet

TINY_NETS = {
    "score_unet": dict(n_layer=2, n_embd=32, dropout=0.1),
    "unet": dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(6,), dropout=0.1),
}


def _init(net, shape):
  z = jnp.zeros(shape, jnp.float32)
  init = lambda k: net.init(k, z, jnp.zeros((shape[0],)))
  return model_lib.compile_unoptimised(init, jax.random.key(0))(jax.random.key(0))


@pytest.mark.parametrize("kind", sorted(TINY_NETS))
@pytest.mark.parametrize("shape", [(2, 12, 12, 1), (3, 12, 20, 3), (1, 11, 13, 1)])
def test_networks_keep_shape_and_dtype(kind, shape):
  # Shapes and dtypes by abstract evaluation (a wrong crop or concat fails while tracing, as it
  # would while compiling); the numbers of these networks are run by the tests below.
  net = unet.make_network(kind, **TINY_NETS[kind])
  z = jax.ShapeDtypeStruct(shape, jnp.float32)
  g = jax.ShapeDtypeStruct(shape[:1], jnp.float32)
  params = jax.eval_shape(net.init, jax.random.key(0), z, g)
  out = jax.eval_shape(
      lambda p, z, g, k: net.apply(p, z, g, deterministic=False, rngs={"dropout": k}),
      params, z, g, jax.random.key(2))
  assert out.shape == shape and out.dtype == jnp.float32


@pytest.mark.parametrize("kind", sorted(TINY_NETS))
def test_output_is_input_at_init_then_depends_on_conditioning(kind):
  """The last conv is zero-initialised, so ε̂ = z (VDM's base measure) until it trains."""
  net = unet.make_network(kind, **TINY_NETS[kind])
  shape = (2, 12, 12, 1)
  params = _init(net, shape)
  z = jax.random.normal(jax.random.key(1), shape)
  apply = jax.jit(net.apply)
  np.testing.assert_array_equal(apply(params, z, jnp.array([0.2, 0.7])), z)
  # Perturb every parameter: now the output must depend on g and on z beyond the skip.
  params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(3), p.shape),
                        params)
  a = apply(params, z, jnp.array([0.2, 0.2]))
  b = apply(params, z, jnp.array([0.9, 0.9]))
  assert float(jnp.abs(a - b).max()) > 1e-4
  assert float(jnp.abs(a - z).max()) > 1e-4


@pytest.mark.parametrize("kind", sorted(TINY_NETS))
def test_bfloat16_compute_returns_float32_close_to_float32(kind):
  shape = (2, 12, 12, 1)
  net32 = unet.make_network(kind, **TINY_NETS[kind])
  net16 = unet.make_network(kind, **TINY_NETS[kind], dtype=jnp.bfloat16)
  params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(3), p.shape),
                        _init(net32, shape))
  z = jax.random.normal(jax.random.key(1), shape)
  out32 = jax.jit(net32.apply)(params, z, jnp.array([0.3, 0.6]))
  out16 = jax.jit(net16.apply)(params, z, jnp.array([0.3, 0.6]))
  assert out16.dtype == jnp.float32
  assert jax.tree.leaves(params)[0].dtype == jnp.float32
  rel = float(jnp.linalg.norm(out16 - out32) / jnp.linalg.norm(out32 - z))
  assert 0.0 < rel < 0.1, rel


def test_multires_unet_handles_odd_sizes_across_levels():
  net = unet.UNet(ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(), dropout=0.0)
  shape = (1, 13, 18, 1)  # 13 -> 7 -> 4 and back, cropping at each up-sample
  params = _init(net, shape)
  out = jax.jit(net.apply)(params, jnp.ones(shape), jnp.zeros((1,)))
  assert out.shape == shape and bool(jnp.all(jnp.isfinite(out)))


def test_remat_gives_the_same_gradients():
  shape = (2, 8, 8, 1)
  kw = dict(n_layer=2, n_embd=32, dropout=0.0)
  plain, remat = unet.ScoreUNet(**kw), unet.ScoreUNet(**kw, remat=True)
  params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(3), p.shape),
                        _init(plain, shape))
  z = jax.random.normal(jax.random.key(1), shape)
  loss = lambda net: jax.jit(jax.grad(lambda p: jnp.sum(net.apply(p, z, jnp.array([0.1, 0.5])) ** 2)))
  g_plain, g_remat = loss(plain)(params), loss(remat)(params)
  # Recomputed activations may be summed in another order (last bits: up to ~1e-6 of a leaf's
  # scale); a remat bug (wrong inputs or dropout key in the recomputation) changes them at O(1).
  jax.tree.map(lambda a, b: np.testing.assert_allclose(
      a, b, rtol=1e-5, atol=1e-5 * float(np.abs(a).max())), g_plain, g_remat)


def _param_count(config_name):
  vdm_model = model_lib.from_config(load_config(config_name))
  shapes = vdm_model.abstract_params()
  return (sum(x.size for x in jax.tree.leaves(shapes["score"])),
          sum(x.size for x in jax.tree.leaves(shapes["gamma"])))


def test_paper_score_unet_parameter_count_is_pinned():
  score, gamma = _param_count("brain128")
  print(f"brain128 ScoreUNet (depth 32, 128 ch, 1 channel): {score:,} parameters; "
        f"schedule network: {gamma:,}")
  assert score == 30_572_417
  assert gamma == 3 * 1024 + 3  # l1 (1+1), l2 (1024+1024), l3 (1024+1)


def test_multires_unet_parameter_count_is_pinned():
  score, _ = _param_count("brain128_unet")
  print(f"brain128_unet U-Net (64 ch, mult 1,2,2,4): {score:,} parameters")
  assert score == 18_204_801


def test_unknown_network_is_a_clear_error():
  with pytest.raises(ValueError, match="unknown score network 'resnet'"):
    unet.make_network("resnet")
