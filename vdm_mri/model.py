"""Glue between a config and the pure VDM functions: build the two modules, bind their params.

Only the entry points (train, sample, benchmarks, experiments) call `from_config`; everything
below them takes explicit arguments. Parameters live in one tree {"score": …, "gamma": …}.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp

from vdm_mri import schedule, unet, vdm


@dataclasses.dataclass(frozen=True)
class VDM:
  """A score network, a noise schedule and the data format: everything a loss or sampler needs."""

  network: nn.Module
  gamma: nn.Module
  bits: int  # intensity levels 2^bits (12 for the shared MR data)
  image_shape: tuple[int, int, int]  # (H, W, C)
  gamma_min: float
  gamma_max: float

  def init(self, key):
    """Fresh parameters {"score", "gamma"} for this model.

    One compiled program rather than op by op, and compiled without backend optimisation: it
    only draws random numbers once, and XLA's CPU optimiser would otherwise spend ~10x longer
    compiling it (16 s vs 2 s for the tiny config) than it saves.
    """
    return compile_unoptimised(self._init, key)(key)

  def abstract_params(self):
    """Shapes and dtypes of `init`'s parameters (jax.ShapeDtypeStruct leaves), computing nothing."""
    return jax.eval_shape(self._init, jax.random.key(0))

  def _init(self, key):
    key_score, key_gamma = jax.random.split(key)
    z = jnp.zeros((1, *self.image_shape), jnp.float32)
    return {
        "score": self.network.init(key_score, z, jnp.zeros((1,)), deterministic=True)["params"],
        "gamma": self.gamma.init(key_gamma, jnp.zeros((1,)))["params"] if _has_params(
            self.gamma) else {},
    }

  def gamma_fn(self, params):
    """t -> γ(t) with the schedule parameters bound."""
    return lambda t: self.gamma.apply({"params": params["gamma"]}, t)

  def eps_fn(self, params, key=None, coords=None, aug=None):
    """(z_t, g_t) -> ε̂ with the network parameters bound; a `key` turns dropout on. `coords`
    [B, h, w, 2]: where the input patch lies in the whole image (networks with coordinate
    channels; None: the input is the whole image). `aug` [B, aug_dim]: augmentation labels
    (networks with `aug_dim`; None: an untransformed image)."""
    rngs = {} if key is None else {"dropout": key}
    extra = {} if coords is None else {"coords": coords}
    if aug is not None:
      extra["aug"] = aug
    return lambda z, g: self.network.apply({"params": params["score"]}, z, g,
                                           deterministic=key is None, rngs=rngs, **extra)

  def loss_terms(self, params, key, x, *, num_steps: int, train: bool,
                 antithetic: bool = True, coords=None, aug=None,
                 weighting: vdm.Weighting | None = None) -> vdm.LossTerms:
    """vdm.loss_terms for this model; `train` enables dropout; `coords` as in `eps_fn` for
    patches x, `aug` for augmented x; `weighting` None: the variational bound."""
    key, key_dropout = jax.random.split(key)
    return vdm.loss_terms(
        key, x, gamma_fn=self.gamma_fn(params),
        eps_fn=self.eps_fn(params, key_dropout if train else None, coords, aug), bits=self.bits,
        num_steps=num_steps, gamma_min=self.gamma_min, gamma_max=self.gamma_max,
        antithetic=antithetic, weighting=weighting)


def compile_unoptimised(fn, *args):
  """`fn` jit-compiled for `args` without XLA backend optimisation (for init-like programs)."""
  lowered = jax.jit(fn).lower(*args)
  return lowered.compile(compiler_options={"xla_backend_optimization_level": 0})


def _has_params(module: nn.Module) -> bool:
  return not isinstance(module, schedule.FixedLinearSchedule)


def _dtype_fields(kwargs: dict) -> dict:
  """Config dtype strings ('bfloat16') -> numpy dtypes for Flax."""
  return {k: (jnp.dtype(v) if k == "dtype" else v) for k, v in kwargs.items()}


def load_config_file(path):
  """`get_config()` of a config file such as configs/brain128.py (for scripts without absl)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"config file {path} not found")
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def from_config(config) -> VDM:
  """Build the VDM described by `config.model`, `config.schedule` and `config.data`."""
  model_kw = _dtype_fields(dict(config.model))
  if model_kw.get("coord_channels") and model_kw["kind"] == "unet":
    model_kw.setdefault("base_resolution", config.data.image_size)  # patches: same blocks
  network = unet.make_network(model_kw.pop("kind"), **model_kw)
  sched_kw = dict(config.schedule)
  gamma = schedule.make_schedule(sched_kw.pop("kind"), **sched_kw)
  return VDM(network=network, gamma=gamma, bits=config.data.bits,
             image_shape=(config.data.image_size, config.data.image_size, config.data.channels),
             gamma_min=config.schedule.gamma_min, gamma_max=config.schedule.gamma_max)
