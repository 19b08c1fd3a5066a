"""Super-resolution from Python: load a prior, super-resolve arrays.

    from vdm_mri import api
    prior = api.load_prior()                      # the shipped prior; or a work dir / params dir
    result = api.super_resolve(prior, lowres=x_lr, steps=10, num_samples=4)   # x_lr [N, h, w]
    result.mean, result.std                       # [N, H, W], in x_lr's intensity scale
    result.residual                               # [N] ‖p⁻¹(Λ)F mean - ŷ₀‖ / ‖ŷ₀‖

`lowres` are low-resolution magnitude images [h, w] or [N, h, w]; `kspace` instead is the
measured centre of k-space ŷ₀ [N, h, w] complex (kspace.measure's convention). The sampling
options (`SamplingOptions`: one field per option) default to the prior's config.sampling; any
field can be given as a keyword. `python -m vdm_mri.sample` is this module plus file formats.

Normalisation (`normalize=True`). The prior was trained on volumes divided by a percentile of
their foreground and clipped to [0, 1] (`data.slices.normalisation`). A user's data are
normalised by the same rule from the low-resolution data alone: per volume (`subject`), s of
|x_lr|, x_lr = kspace.lowres_from_measurement(ŷ₀); the sampler sees ŷ₀/s and every output is
multiplied back by s. The low-res percentile is ~1-3 % below the high-res one (partial volume);
no clipping is applied (it would make ŷ₀ inconsistent).

Bad arrays or options raise InputError (one-line message); a bad prior, workdir.CheckpointError.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from vdm_mri import baselines, distributed, sampling, workdir
from vdm_mri import kspace as kspace_lib
from vdm_mri import model as model_lib
from vdm_mri.data import slices as slices_lib


class InputError(ValueError):
  """Bad input arrays, files or options: a one-line message; the command exits with code 2."""


# --------------------------------------------------------------------------------------------
# Sampling options: the one definition; config.sampling and the CLI flags map onto it.
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SamplingOptions:
  """How the posterior is sampled. A field's default is used when a config lacks it (configs
  written before it existed); the CLI has one flag per field, named like it."""

  lam: float = 1.0  # guidance weight λ in [0, 1] (paper sampler)
  steps: int = 1000  # reverse steps
  num_samples: int = 1  # posterior samples K per slice
  batch_size: int = 16  # images per compiled call over all devices
  final_projection: bool = True  # project onto ŷ₀ after the last step
  sampler: str = "paper"  # paper (λ-mixed noisy measurement) or projection (x̂₀ onto ŷ₀, DDIM)
  eta: float = 0.85  # η of the projection sampler's re-noising, 0 … 1
  t_start: float = 1.0  # start at t ∈ (0, 1] from the noised zero-filled image (1: from noise)
  antithetic: bool = False  # K/2 pairs of chains with mirrored noise instead of K independent

  def __post_init__(self):
    for field in dataclasses.fields(self):  # config values arrive as any number type
      object.__setattr__(self, field.name, _TYPES[field.type](getattr(self, field.name)))
    if not 0.0 <= self.lam <= 1.0:
      raise InputError(f"lam must be in [0, 1], got {self.lam}")
    if self.sampler not in sampling.SAMPLERS:
      raise InputError(f"sampler must be one of {', '.join(sampling.SAMPLERS)}, got "
                       f"{self.sampler!r}")
    if not 0.0 <= self.eta <= 1.0:
      raise InputError(f"eta must be in [0, 1], got {self.eta}")
    if not 0.0 < self.t_start <= 1.0:
      raise InputError(f"t_start must be in (0, 1], got {self.t_start}")
    for name in ("steps", "num_samples", "batch_size"):
      if getattr(self, name) < 1:
        raise InputError(f"{name} must be at least 1, got {getattr(self, name)}")
    if self.antithetic and self.num_samples % 2:
      raise InputError(f"num_samples must be even when antithetic (sampled in pairs), got "
                       f"{self.num_samples}; or turn antithetic off")

  @classmethod
  def from_config(cls, cfg, **overrides) -> SamplingOptions:
    """The fields of `cfg` (config.sampling, or any mapping; other keys ignored), then the
    `overrides` that are not None (e.g. the CLI's flags)."""
    values = {f.name: cfg.get(f.name, f.default) for f in dataclasses.fields(cls)}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return cls(**values)

  def replace(self, **overrides) -> SamplingOptions:
    """A copy with the `overrides` that are not None."""
    return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})

  def with_setting(self, text: str) -> SamplingOptions:
    """These options with a setting `sampler:steps:K[:eta[:t_start]][:anti|:indep]` (e.g.
    "paper:10:16", "projection:20:2:0.85:1:anti"): the short form the experiments and
    benchmarks take. A trailing `anti` / `indep` sets antithetic pairs / independent samples."""
    parts = text.strip().split(":")
    pairing = {"anti": True, "indep": False}
    values = {}
    if parts and parts[-1] in pairing:
      values["antithetic"] = pairing[parts.pop()]
    names = ("sampler", "steps", "num_samples", "eta", "t_start")
    usage = f"setting {text!r} is not sampler:steps:K[:eta[:t_start]][:anti|:indep]"
    if not 3 <= len(parts) <= len(names):
      raise InputError(usage)
    try:
      values.update({name: _TYPES[_FIELDS[name].type](part) for name, part in zip(names, parts)})
    except ValueError:
      raise InputError(usage) from None
    return dataclasses.replace(self, **values)

  @property
  def setting(self) -> str:
    """The short form `sampler:steps:K:eta:t_start:anti|indep` (with_setting's)."""
    return (f"{self.sampler}:{self.steps}:{self.num_samples}:{self.eta:g}:{self.t_start:g}:"
            f"{'anti' if self.antithetic else 'indep'}")

  @property
  def nfe(self) -> int:
    """Network evaluations per slice: steps × K."""
    return self.steps * self.num_samples

  def posterior_kwargs(self) -> dict:
    """The keyword arguments of sampling.posterior_samples."""
    out = dataclasses.asdict(self)
    out["num_steps"] = out.pop("steps")
    return out


_TYPES = {"float": float, "int": int, "bool": bool, "str": str}
_FIELDS = {f.name: f for f in dataclasses.fields(SamplingOptions)}


# --------------------------------------------------------------------------------------------
# The prior.
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Prior:
  """A trained VDM: the model, its EMA parameters (numpy), its config, where it came from."""

  model: model_lib.VDM
  params: Any
  config: ml_collections.ConfigDict
  path: pathlib.Path

  @property
  def options(self) -> SamplingOptions:
    """The prior's own sampling defaults (config.sampling)."""
    return SamplingOptions.from_config(self.config.sampling)

  @property
  def image_shape(self) -> tuple[int, int]:
    """The target matrix H×W."""
    return tuple(self.model.image_shape[:2])


def load_prior(path=None, config=None) -> Prior:
  """The prior in `path` (a training work dir or a params dir; None: the shipped prior),
  built from `config` or the directory's config.json. Raises workdir.CheckpointError."""
  directory = workdir.resolve(path)
  config = workdir.load_config(directory, config)
  model = model_lib.from_config(config)
  return Prior(model=model, params=workdir.load_params(directory, model), config=config,
               path=directory)


# --------------------------------------------------------------------------------------------
# Input arrays -> the measurement ŷ₀.
# --------------------------------------------------------------------------------------------
def stack_slices(a, name: str, *, kspace_data: bool) -> np.ndarray:
  """Validate a 2D/3D image or k-space array -> [N, h, w] (complex64 or float32)."""
  a = np.asarray(a)
  what = "k-space" if kspace_data else "magnitude images"
  if a.dtype.kind == "c" and not kspace_data:
    raise InputError(f"{name}: complex data where magnitude images are expected (pass complex "
                     "k-space as .npy or under the .npz key 'kspace')")
  if kspace_data and a.dtype.kind != "c":
    raise InputError(f"{name}: k-space must be complex, got dtype {a.dtype}")
  if a.dtype.kind not in "uifc":
    raise InputError(f"{name}: {what} must be numeric, got dtype {a.dtype}")
  if a.size == 0:
    raise InputError(f"{name}: empty array, shape {a.shape}")
  if not kspace_data and a.ndim == 4 and a.shape[-1] == 1:
    a = a[..., 0]
  if a.ndim not in (2, 3):
    raise InputError(f"{name}: {what} must be [h, w] or [N, h, w], got shape {a.shape}")
  a = a[None] if a.ndim == 2 else a
  if not np.all(np.isfinite(a)):
    raise InputError(f"{name}: {a.size - np.count_nonzero(np.isfinite(a))} NaN/Inf value(s)")
  return a.astype(np.complex64 if kspace_data else np.float32)


def check_fits(shape, full_shape, name: str):
  """A low-res h×w must not exceed the target H×W."""
  if shape[0] > full_shape[0] or shape[1] > full_shape[1]:
    raise InputError(f"{name}: low-res size {shape[0]}x{shape[1]} is larger than the target "
                     f"{full_shape[0]}x{full_shape[1]}")


def measurement(full_shape, *, lowres=None, kspace_data=None) -> np.ndarray:
  """ŷ₀ [N, h, w] complex64 from low-res magnitude images or from k-space (exactly one)."""
  if (lowres is None) == (kspace_data is None):
    raise InputError("pass exactly one of lowres= (images) and kspace= (measured k-space)")
  if kspace_data is not None:
    y0 = stack_slices(kspace_data, "kspace", kspace_data=True)
    check_fits(y0.shape[1:], full_shape, "kspace")
    return y0
  x_lr = stack_slices(lowres, "lowres", kspace_data=False)
  check_fits(x_lr.shape[1:], full_shape, "lowres")
  return np.asarray(kspace_lib.measurement_from_lowres(jnp.asarray(x_lr), full_shape))


def volume_ids(subject, n: int, name: str = "subject") -> np.ndarray:
  """[N] str volume ids; None: all slices are one volume."""
  if subject is None:
    return np.full(n, "volume")
  subject = np.asarray(subject).astype(str)
  if subject.shape != (n,):
    raise InputError(f"{name}: 'subject' must have one id per slice ({n}), got {subject.shape}")
  return subject


def volume_scales(y0: np.ndarray, subject: np.ndarray, full_shape) -> np.ndarray:
  """Per-slice scale s [N]: the training normalisation of each volume's low-res magnitude."""
  x_lr = np.abs(np.asarray(kspace_lib.lowres_from_measurement(jnp.asarray(y0), full_shape)))
  scales = np.empty(len(y0), np.float32)
  for sid in dict.fromkeys(subject.tolist()):
    sel = subject == sid
    try:
      scales[sel] = slices_lib.normalisation(x_lr[sel], f"volume {sid!r}")[0]
    except slices_lib.DataError as e:
      raise InputError(str(e)) from e
  return scales


# --------------------------------------------------------------------------------------------
# Super-resolution.
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Result:
  """Posterior summary and baselines of N slices, all in the input's intensity scale."""

  mean: np.ndarray  # [N, H, W] posterior mean over K samples
  std: np.ndarray  # [N, H, W] per-pixel standard deviation (ddof 0)
  residual: np.ndarray  # [N] data consistency of `mean`: ‖p⁻¹(Λ)F mean - ŷ₀‖ / ‖ŷ₀‖
  scale: np.ndarray  # [N] the normalisation s of each slice's volume (1 without normalize)
  lowres: np.ndarray  # [N, h, w] |x_lr|, the low-res magnitude
  zero_fill: np.ndarray  # [N, H, W] grid-aligned baselines
  bilinear: np.ndarray
  bicubic: np.ndarray
  samples: np.ndarray | None = None  # [N, K, H, W] with keep_samples

  def arrays(self) -> dict[str, np.ndarray]:
    """{name: array} of every field that is present (the CLI's .npz keys)."""
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
            if getattr(self, f.name) is not None}


class StepBar:
  """A tqdm bar over all steps of all compiled calls, fed by sampling.progress_listener."""

  def __init__(self, calls: int, steps: int, enabled: bool = True):
    self.bar = tqdm.tqdm(total=calls * steps, unit="step", dynamic_ncols=True,
                         disable=None if enabled else True)  # None: off when not a terminal
    self.steps, self.base = steps, 0

  def __call__(self, done: int):
    self.bar.n = min(self.base + done, self.bar.total)
    self.bar.refresh()
    if done == self.steps:
      self.base += self.steps


def super_resolve(prior: Prior, *, lowres=None, kspace=None, subject=None,
                  normalize: bool = True, key=None, keep_samples: bool = False,
                  progress: bool = False, options: SamplingOptions | None = None,
                  **overrides) -> Result:
  """Guided posterior samples of the prior for each slice of `lowres` or `kspace` (module doc).

  `subject` [N]: volume ids (normalisation is per volume; None: one volume). `key`: a typed
  PRNG key (None: key(0)); keys are per slice, so a slice's samples do not depend on the
  others. `options` (default: the prior's) with `overrides` (SamplingOptions fields, e.g.
  steps=10). `progress`: a progress bar. With several processes each samples a contiguous
  share of the slices on its own devices and every process returns all results.
  """
  opts = (prior.options if options is None else options).replace(**overrides)
  full_shape = prior.image_shape
  y0 = measurement(full_shape, lowres=lowres, kspace_data=kspace)
  n = len(y0)
  subject = volume_ids(subject, n)
  scale = volume_scales(y0, subject, full_shape) if normalize else np.ones(n, np.float32)
  key = jax.random.key(0) if key is None else key
  lo, hi, per = distributed.process_share(n)
  mesh = sampling.make_mesh()  # this process's devices
  samples = np.zeros((0, opts.num_samples, *full_shape), np.float32)
  if hi > lo:
    batch = sampling.padded_batch_size(min(opts.batch_size, (hi - lo) * opts.num_samples), mesh)
    bar = StepBar(math.ceil((hi - lo) * opts.num_samples / batch), opts.steps,
                  enabled=progress and distributed.is_primary())
    kwargs = {**opts.posterior_kwargs(), "batch_size": batch}
    with sampling.progress_listener(bar):
      samples = sampling.posterior_samples(
          prior.model, prior.params, y0[lo:hi] / scale[lo:hi, None, None], key=key,
          progress_every=max(1, opts.steps // 100), mesh=mesh, first_index=lo,
          **kwargs).samples
    bar.bar.close()
  samples = distributed.gather_rows(samples, n, per) * scale[:, None, None, None]
  y0 = jnp.asarray(y0)
  mean = np.asarray(samples.mean(1), np.float32)
  f32 = lambda a: np.asarray(a, np.float32)
  return Result(
      mean=mean, std=f32(samples.std(1)), scale=scale,
      residual=np.asarray(kspace_lib.residual(mean, y0)),
      lowres=f32(jnp.abs(kspace_lib.lowres_from_measurement(y0, full_shape))),
      zero_fill=f32(baselines.zero_fill(y0, full_shape)),
      bilinear=f32(baselines.bilinear(y0, full_shape)),
      bicubic=f32(baselines.bicubic(y0, full_shape)),
      samples=f32(samples) if keep_samples else None)
