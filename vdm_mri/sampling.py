"""k-space guided sampling of the VDM prior, one compiled program: the paper's ancestral sampler
and an x̂₀-projection sampler.

Notation as in kspace.py and vdm.py: f = scale·x + offset is the encoded image, z_t = α_t·f + σ_t·ε,
γ_t = -log SNR(t), α_t² = sigmoid(-γ_t), σ_t² = sigmoid(γ_t). On a grid of N steps, t = i/N and
s = t - 1/N (N < 1000 walks the same γ on a coarser grid). From z_1 ~ N(0, I), each step t → s:

  1. guidance    ŷ_t = α_t·ŷ₀ᶠ + σ_t·p⁻¹(Λ)F ε′,  z_t' = kspace.guide(z_t, ŷ_t, λ)
                 ŷ₀ᶠ = kspace.encode_measurement(ŷ₀, scale, offset): the measurement of f, not x
                 (F(scale·x + offset) = scale·F x + offset·F 1); ε′ ~ N(0, I) fresh per step.
  2. prediction  ε̂ = ε̂_θ(z_t', gamma_to_cond(γ_t))
  3. ancestral   z_s = (α_s/α_t)·(z_t' - σ_t·c·ε̂) + σ_s·sqrt(c)·ε,  c = -expm1(γ_s - γ_t),
                 α_s/α_t = exp((log α_s² - log α_t²)/2) (stable at both ends of the schedule).

At t = 0: x̂ = clip((z_0/α_0 - offset)/scale, 0, 1) (continuous, not rounded to the 12-bit grid),
then optionally the final projection x̂ ← kspace.project(x̂, ŷ₀) (λ = 1, intensity space).

Order of clipping and projection. We clip first and project last, so that the output is exactly
consistent with the measurement (‖p⁻¹(Λ)F x̂ - ŷ₀‖/‖ŷ₀‖ at float32 round-off, ~1e-7). The price:
the projection can move pixels slightly outside [0, 1] (ringing of the k-space correction on the
zero background, ~1e-3..1e-2); clipping after it would break consistency again.
Without the final projection x̂ ∈ [0, 1] and the residual is what the guidance left.

The real part after F⁻¹ is kspace.guide's Hermitian-consistent one (kspace.py, eq. (P)): even
crop sizes leave no half-residual on the unpaired edge row/column.

The projection sampler (`sampler="projection"`, DDNM / DDS) replaces steps 1-3 by: ε̂ at z_t;
x̂₀ = clip((z_t - σ_t·ε̂)/α_t, -1, 1) projected exactly onto ŷ₀ᶠ (kspace.project); z_s = α_s·x̂₀ +
sqrt(σ_s² - σ_η²)·ε̂ + σ_η·ε with σ_η² = η²·σ_s²·c. Either sampler can start warm
(`t_start` < 1): N steps on the grid t_start·i/N from z = α·f₀ + σ·ε, f₀ the encoded real
zero-filled image (kspace.project of zeros onto ŷ₀).

Guidance with λ = 0, or no measurement at all (`y0=None`), samples the unconditional prior with
the same code. Keys: one key per sample (`sample_keys`: fold_in(fold_in(key, n), k) for
measurement n, posterior sample k), folded with the step index every step, so a sample does not
depend on the batch it runs in or on the number of devices.

Antithetic pairs (`signs`): a sample also carries a sign s = ±1 that multiplies every noise draw
(z_1, each step's ε and the measurement noise ε′). Two chains with one key and opposite signs
see mirrored noise; for a prior whose sampler is affine in the noise (a Gaussian prior, and
locally any smooth one) their mean is the noise-free path, so the pair's mean estimates the
posterior mean with much less variance than two independent samples (`posterior_samples`,
`antithetic=True`: K/2 keys, each run with s = +1 and s = -1). s = +1 is the plain sample.
`make_sampler` jits the whole loop
(`lax.scan`, not unrolled) over a 1-D mesh of all local devices, batch sharded on 'data'.
"""

from __future__ import annotations

import contextlib
import functools
import math
from typing import Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from vdm_mri import kspace, schedule, vdm

GammaFn = Callable[[jax.Array], jax.Array]
EpsFn = Callable[[jax.Array, jax.Array], jax.Array]


# --------------------------------------------------------------------------------------------
# One reverse step.
# --------------------------------------------------------------------------------------------
def guidance_step(z_t, y0_f, eps_y, gamma_t, lam):
  """z_t' = guide(z_t, ŷ_t, λ) with ŷ_t = α_t·ŷ₀ᶠ + σ_t·p⁻¹(Λ)F ε′.

  z_t, eps_y: [B, H, W] float32; y0_f: [B, h, w] complex64 (encoded space); gamma_t: scalar.
  """
  y_t = kspace.perturb_measurement(y0_f, eps_y, schedule.alpha(gamma_t), schedule.sigma(gamma_t))
  return kspace.guide(z_t, y_t, lam)


def ancestral_step(z_t, eps_hat, eps, gamma_t, gamma_s):
  """z_s = (α_s/α_t)·(z_t - σ_t·c·ε̂) + σ_s·sqrt(c)·ε, c = -expm1(γ_s - γ_t) (DESIGN §2)."""
  c = -jnp.expm1(gamma_s - gamma_t)
  alpha_s_over_t = jnp.exp(0.5 * (schedule.log_alpha2(gamma_s) - schedule.log_alpha2(gamma_t)))
  return (alpha_s_over_t * (z_t - schedule.sigma(gamma_t) * c * eps_hat)
          + schedule.sigma(gamma_s) * jnp.sqrt(c) * eps)


def _normal(keys, shape, signs=None):
  """One N(0, I) draw of `shape` per key: [B] keys -> [B, *shape] float32, times the per-sample
  sign `signs` [B] (±1; None: +1)."""
  draw = jax.vmap(lambda k: jax.random.normal(k, shape, jnp.float32))(keys)
  return draw if signs is None else draw * signs.reshape((-1,) + (1,) * len(shape))


def _step_keys(keys, i):
  """Per-sample keys of step i: (measurement noise ε′, step noise ε), each [B]."""
  split = jax.vmap(jax.random.split)(jax.vmap(jax.random.fold_in, (0, None))(keys, i))
  return split[:, 0], split[:, 1]


def reverse_step(z_t, keys, i, gamma_t, gamma_s, *, eps_fn: EpsFn, y0_f=None, lam=1.0,
                 gamma_min: float, gamma_max: float, signs=None):
  """Step t = i/N → s = (i-1)/N for a batch z_t [B, H, W]; `keys` [B], one per sample;
  `signs` [B] ±1 on the step's noise (antithetic pairs; None: +1).

  y0_f = None skips the guidance (prior sampling); the step's noise then stays the same as with
  guidance, since ε′ and ε come from separate keys.
  """
  key_y, key_eps = _step_keys(keys, i)
  if y0_f is not None:
    z_t = guidance_step(z_t, y0_f, _normal(key_y, z_t.shape[1:], signs), gamma_t, lam)
  cond = jnp.full(z_t.shape[:1], vdm.gamma_to_cond(gamma_t, gamma_min, gamma_max))  # [B]
  eps_hat = eps_fn(z_t[..., None], cond)[..., 0]  # the network sees [B, H, W, 1]
  return ancestral_step(z_t, eps_hat, _normal(key_eps, z_t.shape[1:], signs), gamma_t, gamma_s)


def projection_step(z_t, keys, i, gamma_t, gamma_s, *, eps_fn: EpsFn, y0_f=None,
                    eta: float = 0.85, gamma_min: float, gamma_max: float, signs=None):
  """x̂₀-projection step t → s (DDNM / DDS) for a batch z_t [B, H, W]; `keys` [B]; `signs` as
  in reverse_step.

  x̂₀ = clip((z_t - σ_t·ε̂)/α_t, -1, 1) in the encoded space, projected onto the measurement
  (x̂₀ ← kspace.project(x̂₀, ŷ₀ᶠ): exact for a centre crop), then re-noised DDIM-style:
  z_s = α_s·x̂₀ + sqrt(σ_s² - σ_η²)·ε̂ + σ_η·ε with σ_η² = η²·σ_s²·c, c = -expm1(γ_s - γ_t)
  (η = 1: the ancestral step's variance; η = 0: deterministic DDIM). y0_f = None: plain DDIM.
  """
  _, key_eps = _step_keys(keys, i)
  cond = jnp.full(z_t.shape[:1], vdm.gamma_to_cond(gamma_t, gamma_min, gamma_max))  # [B]
  eps_hat = eps_fn(z_t[..., None], cond)[..., 0]
  x0 = jnp.clip((z_t - schedule.sigma(gamma_t) * eps_hat) / schedule.alpha(gamma_t), -1.0, 1.0)
  if y0_f is not None:
    x0 = kspace.project(x0, y0_f)
  var_eta = eta**2 * schedule.sigma2(gamma_s) * -jnp.expm1(gamma_s - gamma_t)
  direction = jnp.sqrt(jnp.maximum(schedule.sigma2(gamma_s) - var_eta, 0.0))
  return (schedule.alpha(gamma_s) * x0 + direction * eps_hat
          + jnp.sqrt(var_eta) * _normal(key_eps, z_t.shape[1:], signs))


SAMPLERS = ("paper", "projection")
"""`paper`: guided ancestral sampling with λ-mixing of the noised measurement (Song et al. 2022,
the paper's); `projection`: x̂₀-projection with DDIM re-noising (`projection_step`)."""


# --------------------------------------------------------------------------------------------
# Progress: a host callback every `progress_every` steps, dispatched to registered listeners.
# --------------------------------------------------------------------------------------------
_LISTENERS: list[Callable[[int], None]] = []


@contextlib.contextmanager
def progress_listener(fn: Callable[[int], None]):
  """Within the block, `fn(steps_done)` is called from samplers built with progress_every > 0.

  Calls are unordered and come from a runtime thread; steps_done counts within one compiled call.
  The compiled program does not depend on the listener, so it is built once.
  """
  _LISTENERS.append(fn)
  try:
    yield
  finally:
    _LISTENERS.remove(fn)


def _report_progress(steps_done):
  for fn in list(_LISTENERS):
    fn(int(steps_done))


def _maybe_report(i, num_steps: int, progress_every: int, axis_name: str | None = None):
  """Host callback with the number of steps done, after step i when it is a multiple of k.
  Inside shard_map over `axis_name`, only the first shard reports."""
  done = num_steps - i + 1
  due = (done % progress_every == 0) | (done == num_steps)
  if axis_name is not None:
    due = due & (jax.lax.axis_index(axis_name) == 0)
  jax.lax.cond(due,
               lambda: jax.debug.callback(_report_progress, done), lambda: None)


# --------------------------------------------------------------------------------------------
# The whole sampler.
# --------------------------------------------------------------------------------------------
def decode_image(z_0, gamma_0, bits: int):
  """x̂ = clip((z_0/α_0 - offset)/scale, 0, 1): [B, H, W], not rounded to the 2^bits grid."""
  return vdm.decode(z_0 / schedule.alpha(gamma_0), bits, quantize=False)


def sample(keys, y0=None, lam=1.0, *, eps_fn: EpsFn, gamma_fn: GammaFn, bits: int,
           gamma_min: float, gamma_max: float, image_shape: tuple[int, int], num_steps: int,
           final_projection: bool = False, progress_every: int = 0,
           axis_name: str | None = None, sampler: str = "paper", eta: float = 0.85,
           t_start: float = 1.0, signs=None):
  """Guided sampling, N = num_steps steps: x̂ [B, H, W] float32 intensities.

  keys: [B] typed PRNG keys, one per sample. signs: [B] float32 ±1 multiplying all of a
  sample's noise (antithetic pairs, module doc), or None (all +1). y0: [B, h, w] complex64
  measurement of the image
  in intensity space (kspace.measure / measurement_from_lowres), or None for the prior.
  lam: λ (scalar or [B, 1, 1]; the paper sampler). final_projection: project x̂ onto ŷ₀ after
  clipping (module doc). sampler: one of SAMPLERS; eta: η of the projection sampler.
  t_start < 1: a warm start, the N steps on the grid t_start·i/N from z = α·f₀ + σ·ε at
  t_start, f₀ the encoded minimum-norm image consistent with ŷ₀ (the real zero-filled image,
  kspace.project of zeros); t_start = 1 starts from pure noise z_1 ~ N(0, I).
  """
  if final_projection and y0 is None:
    raise ValueError("final_projection needs a measurement y0")
  if sampler not in SAMPLERS:
    raise ValueError(f"unknown sampler {sampler!r}; expected one of {SAMPLERS}")
  if not 0.0 < t_start <= 1.0:
    raise ValueError(f"t_start must be in (0, 1], got {t_start}")
  if t_start < 1.0 and y0 is None:
    raise ValueError("a warm start (t_start < 1) needs a measurement y0")
  scale, offset = vdm.encoder_affine(bits)
  y0_f = None if y0 is None else kspace.encode_measurement(y0, scale, offset, image_shape)
  grid = jnp.arange(num_steps + 1, dtype=jnp.float32) / num_steps  # i/N
  gammas = gamma_fn(grid * t_start if t_start < 1.0 else grid)  # [N+1], γ(t_start·i/N)
  split = jax.vmap(jax.random.split)(keys)  # [B, 2]
  key_init, key_loop = split[:, 0], split[:, 1]
  z_1 = _normal(key_init, tuple(image_shape), signs)  # [B, H, W]
  if t_start < 1.0:
    f_0 = scale * kspace.project(jnp.zeros((y0.shape[0], *image_shape), jnp.float32), y0) + offset
    z_1 = schedule.alpha(gammas[-1]) * f_0 + schedule.sigma(gammas[-1]) * z_1
  if sampler == "paper":
    step = functools.partial(reverse_step, eps_fn=eps_fn, y0_f=y0_f, lam=lam,
                             gamma_min=gamma_min, gamma_max=gamma_max, signs=signs)
  else:
    step = functools.partial(projection_step, eps_fn=eps_fn, y0_f=y0_f, eta=eta,
                             gamma_min=gamma_min, gamma_max=gamma_max, signs=signs)

  def body(z_t, i):
    z_s = step(z_t, key_loop, i, gammas[i], gammas[i - 1])
    if progress_every:
      _maybe_report(i, num_steps, progress_every, axis_name)
    return z_s, None

  steps = num_steps - jnp.arange(num_steps)  # i = N, …, 1
  z_0, _ = jax.lax.scan(body, z_1, steps)
  x = decode_image(z_0, gammas[0], bits)
  return kspace.project(x, y0) if final_projection else x


def model_sampler_kwargs(model) -> dict:
  """The keyword arguments of `sample` that a model.VDM fixes (all but eps_fn/gamma_fn)."""
  if model.image_shape[2] != 1:
    raise ValueError(f"k-space guidance needs one channel, the model has {model.image_shape}")
  return dict(bits=model.bits, gamma_min=model.gamma_min, gamma_max=model.gamma_max,
              image_shape=tuple(model.image_shape[:2]))


def make_mesh(devices=None) -> jax.sharding.Mesh:
  """1-D mesh 'data' over `devices` (default: all local devices)."""
  return jax.sharding.Mesh(np.asarray(jax.local_devices() if devices is None else devices),
                           ("data",))


@functools.lru_cache(maxsize=16)
def make_sampler(model, mesh: jax.sharding.Mesh, *, num_steps: int, guided: bool,
                 final_projection: bool = False, progress_every: int = 0,
                 sampler: str = "paper", eta: float = 0.85, t_start: float = 1.0,
                 antithetic: bool = False):
  """`sample` for a model.VDM, jitted on `mesh`: fn(params, keys, y0, lam) -> x̂ [B, H, W].

  Guided=False gives fn(params, keys) (the prior). antithetic=True adds the per-sample signs
  after the keys: fn(params, keys, signs, y0, lam) / fn(params, keys, signs). params and λ are
  replicated, keys, signs [B] and y0 [B, h, w] sharded on 'data' (B a multiple of mesh.size).
  λ is traced: a λ sweep compiles once. Cached on its (hashable) arguments.
  """
  kwargs = dict(model_sampler_kwargs(model), num_steps=num_steps,
                final_projection=final_projection, progress_every=progress_every,
                axis_name="data", sampler=sampler, eta=eta, t_start=t_start)

  def fn(params, keys, signs=None, y0=None, lam=1.0):
    return sample(keys, y0, lam, eps_fn=model.eps_fn(params), gamma_fn=model.gamma_fn(params),
                  signs=signs, **kwargs)

  # The positional inputs, in order, and whether each is sharded on 'data'.
  names = ["params", "keys"] + (["signs"] if antithetic else []) + (
      ["y0", "lam"] if guided else [])
  sharded_names = {"keys", "signs", "y0"}

  def per_shard(*args):
    return fn(**dict(zip(names, args)))

  # Every sample is independent, so each device runs the whole sampler on its own shard
  # (shard_map): no cross-device traffic, and the batched FFTs of the guidance stay local
  # (left to the SPMD partitioner they were all-gathered onto every device).
  specs = tuple(P("data") if n in sharded_names else P() for n in names)
  per_device = jax.shard_map(per_shard, mesh=mesh, in_specs=specs, out_specs=P("data"))
  in_shardings = tuple(NamedSharding(mesh, spec) for spec in specs)
  return jax.jit(per_device, in_shardings=in_shardings,
                 out_shardings=NamedSharding(mesh, P("data")))


# --------------------------------------------------------------------------------------------
# Host-side drivers: per-sample keys, fixed-size padded batches, posterior statistics.
# --------------------------------------------------------------------------------------------
def sample_keys(key, num_measurements: int, num_samples: int, first_index: int = 0):
  """[N, K] keys: fold_in(fold_in(key, n), k) for n = first_index … first_index + N - 1,
  independent of how they are batched or split across processes."""
  per_n = jax.vmap(jax.random.fold_in, (None, 0))(
      key, first_index + jnp.arange(num_measurements))
  return jax.vmap(lambda k: jax.vmap(jax.random.fold_in, (None, 0))(k, jnp.arange(num_samples))
                  )(per_n)


def padded_batch_size(batch_size: int, mesh: jax.sharding.Mesh) -> int:
  """batch_size rounded up to a multiple of the device count."""
  return mesh.size * math.ceil(max(batch_size, 1) / mesh.size)


def _pad_to(a, size: int):
  """Pad axis 0 to `size` by repeating the last row (padding is dropped after sampling)."""
  return jnp.concatenate([a, jnp.repeat(a[-1:], size - a.shape[0], axis=0)]) if (
      a.shape[0] < size) else a


def run_batched(sampler, params, keys, y0=None, lam=1.0, *, batch_size: int,
                mesh: jax.sharding.Mesh, signs=None):
  """Run a `make_sampler` fn over keys [M] (signs [M] for an antithetic sampler, and y0
  [M, h, w]) in padded batches: [M, H, W] numpy.

  Every call has the same batch size, so the sampler compiles once; params are placed on the
  mesh once, not sent with every call.
  """
  replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  params = jax.device_put(params, replicated)
  outputs = []
  for start in range(0, keys.shape[0], batch_size):
    stop = min(start + batch_size, keys.shape[0])
    args = [_pad_to(keys[start:stop], batch_size)]
    if signs is not None:
      args.append(_pad_to(jnp.asarray(signs[start:stop], jnp.float32), batch_size))
    if y0 is not None:
      args.append(_pad_to(jnp.asarray(y0[start:stop], jnp.complex64), batch_size))
    args = [jax.device_put(a, sharded) for a in args]
    if y0 is not None:
      args.append(jax.device_put(jnp.float32(lam), replicated))
    outputs.append(np.asarray(jax.device_get(sampler(params, *args)))[:stop - start])
  return np.concatenate(outputs)


@flax.struct.dataclass
class Posterior:
  """K posterior samples per measurement and their per-pixel mean and std (ddof=0)."""

  samples: np.ndarray  # [N, K, H, W]
  mean: np.ndarray  # [N, H, W]
  std: np.ndarray  # [N, H, W]


def posterior_keys(key, num_measurements: int, num_samples: int, first_index: int = 0, *,
                   antithetic: bool = False):
  """Keys [N, K] and signs [N, K] of K posterior samples per measurement (sample_keys).

  Independent samples: K keys, signs None (all +1). Antithetic: K/2 keys (K even), sample 2j
  and 2j+1 both run key j, with signs +1 and -1, so sample 2j is the independent sample of key j."""
  if not antithetic:
    return sample_keys(key, num_measurements, num_samples, first_index), None
  if num_samples % 2:
    raise ValueError(f"antithetic sampling draws pairs: num_samples must be even, got "
                     f"{num_samples}")
  keys = jnp.repeat(sample_keys(key, num_measurements, num_samples // 2, first_index), 2,
                    axis=1)
  signs = jnp.tile(jnp.asarray([1.0, -1.0], jnp.float32), (num_measurements, num_samples // 2))
  return keys, signs


def posterior_samples(model, params, y0, *, key, num_samples: int, lam: float = 1.0,
                      num_steps: int = 1000, final_projection: bool = True,
                      batch_size: int = 4, progress_every: int = 0, mesh=None,
                      first_index: int = 0, sampler: str = "paper", eta: float = 0.85,
                      t_start: float = 1.0, antithetic: bool = False) -> Posterior:
  """K = num_samples guided samples for each measurement y0 [N, h, w] (intensity space).

  Batches hold min(batch_size, N·K) samples (rounded up to the device count), so a single
  slice does not pay for a padded batch. `first_index`: the index of y0[0] in the whole set
  (its keys are `posterior_keys(key, …, first_index)`), so a process given a share of the
  measurements draws exactly what one process given all of them would. `sampler`, `eta`,
  `t_start` as in `sample`; `antithetic`: K/2 antithetic pairs (module doc) instead of K
  independent samples."""
  mesh = make_mesh() if mesh is None else mesh
  n = y0.shape[0]
  keys, signs = posterior_keys(key, n, num_samples, first_index, antithetic=antithetic)
  y0_flat = jnp.repeat(jnp.asarray(y0, jnp.complex64), num_samples, axis=0)  # [N·K, h, w]
  fn = make_sampler(model, mesh, num_steps=num_steps, guided=True,
                    final_projection=final_projection, progress_every=progress_every,
                    sampler=sampler, eta=float(eta), t_start=float(t_start),
                    antithetic=antithetic)
  x = run_batched(fn, params, keys.reshape(-1), y0_flat, lam,  # measurement-major
                  batch_size=padded_batch_size(min(batch_size, n * num_samples), mesh),
                  mesh=mesh, signs=None if signs is None else signs.reshape(-1))
  samples = x.reshape(n, num_samples, *x.shape[1:])
  return Posterior(samples=samples, mean=samples.mean(1), std=samples.std(1))


def prior_samples(model, params, *, key, num: int, num_steps: int = 1000, batch_size: int = 4,
                  progress_every: int = 0, mesh=None):
  """`num` unconditional samples of the prior: [num, H, W] numpy (keys sample_keys(key, num, 1))."""
  mesh = make_mesh() if mesh is None else mesh
  sampler = make_sampler(model, mesh, num_steps=num_steps, guided=False,
                         progress_every=progress_every)
  return run_batched(sampler, params, sample_keys(key, num, 1).reshape(-1),
                     batch_size=padded_batch_size(min(batch_size, num), mesh), mesh=mesh)
