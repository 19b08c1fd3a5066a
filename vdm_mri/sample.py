"""Batch super-resolution with a trained VDM prior and k-space guidance.

    python -m vdm_mri.sample --checkpoint=runs/brain128 --input=lowres.nii.gz --output=sr.npz
    python -m vdm_mri.sample --checkpoint=runs/brain128 --simulate --lowres=32x32 \
        --input=brain_t1w_val.npz --output=sr32.npz --png=sr32_png

Inputs (`--input`), one file; the target matrix H×W is the model's (128x128 for the paper):
  .npz key `images` / real .npy   low-resolution magnitude images [h, w] or [N, h, w]
  .npz key `kspace` / complex .npy measured centre of k-space ŷ₀ [h, w] or [N, h, w], in the
                                  convention ŷ₀ = p⁻¹(Λ)F x of kspace.measure (orthonormal centred
                                  DFT of the H×W image): its zero-filled image has x's intensity
  .nii / .nii.gz (2D or 3D)       magnitude, reoriented to RAS, processed as axial slices
  --simulate                      `images` are high-resolution ground truth [N, H, W] (float in
                                  [0, 1] or uint16 x·4095 as in the shared data; default: the
                                  bundled sample); ŷ₀ = kspace.measure(x, --lowres, σ_y=--noise)
An .npz may carry `subject` [N] (volume ids: normalisation and metrics are per volume; without
it the whole file is one volume).

Normalisation (--normalize, default on). The prior was trained on volumes divided by the 99.5th
percentile of their foreground voxels (foreground: above 5 % of the 99.9th percentile) and clipped
to [0, 1] (data/nifti.py). A user's data are normalised the same way from the low-resolution data
alone: per volume, s = that percentile of |x_lr|, x_lr = kspace.lowres_from_measurement(ŷ₀); the
sampler sees ŷ₀/s and every output is multiplied back by s, so outputs have the input's
intensity scale. The low-res percentile is ~1-3 % below the high-res one (partial volume); no
clipping is applied to the input (it would make ŷ₀ inconsistent).

Output (`--output=FILE.npz`): `mean`, `std` [N, H, W] (per-pixel over --num_samples posterior
samples, ddof 0), `zero_fill`, `bilinear`, `bicubic` [N, H, W] (grid-aligned baselines),
`lowres` [N, h, w] (|x_lr|), `scale` [N], `residual` [N] (data consistency of `mean`),
`samples` [N, K, H, W] with --samples, `ground_truth` with --simulate. NIfTI input also gives
FILE.nii.gz (mean) and FILE_std.nii.gz on the input's field of view, reoriented to RAS, voxel
size scaled by h/H, w/W in-plane, origin kept on the centred-DFT grid. With ground truth:
FILE.metrics.json (PSNR/SSIM/NMSE per volume and mean, and the residual ‖p⁻¹(Λ)F x̂ - ŷ₀‖/‖ŷ₀‖,
per method), and a table on stdout.
`--png=DIR`: one PNG per slice: LR | zero-fill | bicubic | VDM mean | std | ground truth.

Exit codes: 0 done; 2 bad input, flags, checkpoint or an existing output without --overwrite
(one line `error: …`, nothing written). Outputs are written to temporary files and renamed only
when all of them are complete.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from absl import flags, logging
from ml_collections import config_flags

import vdm_mri
from vdm_mri import baselines, distributed, kspace, metrics, pretrained, sampling, sr_io
from vdm_mri import model as model_lib
from vdm_mri.data import nifti as nifti_lib
from vdm_mri.sr_io import InputError, Problem

DEFAULT_CHECKPOINT: str | None = (str(pretrained.DEFAULT) if pretrained.is_params_dir(
    pretrained.DEFAULT) else None)
"""Used without --checkpoint: the prior shipped in the package (vdm_mri/pretrained)."""


# --------------------------------------------------------------------------------------------
# Flags.
# --------------------------------------------------------------------------------------------
def define_flags(fv: flags.FlagValues):
  config_flags.DEFINE_config_file("config", None, "config file (configs/*.py); default: the "
                                  "config.json of the --checkpoint work dir", flag_values=fv)
  s, b, f, i = flags.DEFINE_string, flags.DEFINE_bool, flags.DEFINE_float, flags.DEFINE_integer
  s("checkpoint", None, "training work dir (Orbax checkpoints/ and config.json) or params dir "
    "(manifest.json, e.g. WORKDIR/best); default: the prior shipped in the package",
    flag_values=fv)
  s("input", None, "low-res .npz/.npy/.nii(.gz), k-space .npz/.npy, or with --simulate "
    "high-res ground truth .npz (default: the bundled sample)", flag_values=fv)
  s("output", None, "output .npz (NIfTI, metrics JSON beside it)", flag_values=fv)
  s("png", None, "directory for per-slice PNG panels", flag_values=fv)
  b("simulate", False, "simulate ŷ₀ from high-res ground truth (--lowres, --noise)",
    flag_values=fv)
  s("lowres", None, "simulated low-res matrix, e.g. 32x32 or 64x128", flag_values=fv)
  f("noise", 0.0, "σ_y of the simulated complex k-space noise (intensity units)", flag_values=fv)
  f("lam", None, "guidance weight λ in [0, 1] (default: config.sampling.lam)", flag_values=fv)
  i("steps", None, "reverse steps (default: config.sampling.steps)", flag_values=fv)
  s("sampler", None, "paper (ancestral, λ-mixed noisy measurement) or projection (x̂₀ "
    "projected onto ŷ₀, DDIM re-noising; default: config.sampling.sampler)", flag_values=fv)
  f("eta", None, "η of the projection sampler's re-noising, 0 (deterministic) … 1 "
    "(default: config.sampling.eta)", flag_values=fv)
  f("t_start", None, "start at this t ∈ (0, 1] from the noised zero-filled image (1: from "
    "noise; default: config.sampling.t_start)", flag_values=fv)
  i("num_samples", None, "posterior samples per slice (default: config)", flag_values=fv)
  i("batch_size", None, "images per compiled call over all devices (default: config)",
    flag_values=fv)
  b("final_projection", None, "project onto ŷ₀ after the last step (default: config)",
    flag_values=fv)
  b("normalize", True, "normalise per volume from the low-res data and scale back",
    flag_values=fv)
  b("samples", False, "also save all samples [N, K, H, W]", flag_values=fv)
  i("seed", 0, "PRNG seed (sampling; simulated noise)", flag_values=fv)
  b("overwrite", False, "replace existing outputs", flag_values=fv)
  distributed.define_flags(fv)


@dataclasses.dataclass(frozen=True)
class Options:
  lam: float
  steps: int
  num_samples: int
  batch_size: int
  final_projection: bool
  sampler: str = "paper"
  eta: float = 0.85
  t_start: float = 1.0


SAMPLING_DEFAULTS = {"sampler": "paper", "eta": 0.85, "t_start": 1.0}
"""config.sampling fields that configs written before they existed lack."""


def sampling_options(fv, config) -> Options:
  """Flags over config.sampling, validated."""
  pick = lambda name, field: config.sampling.get(field, SAMPLING_DEFAULTS.get(field)) if (
      fv[name].value is None) else fv[name].value
  opts = Options(lam=float(pick("lam", "lam")), steps=int(pick("steps", "steps")),
                 num_samples=int(pick("num_samples", "num_samples")),
                 batch_size=int(pick("batch_size", "batch_size")),
                 final_projection=bool(pick("final_projection", "final_projection")),
                 sampler=str(pick("sampler", "sampler")), eta=float(pick("eta", "eta")),
                 t_start=float(pick("t_start", "t_start")))
  if not 0.0 <= opts.lam <= 1.0:
    raise InputError(f"--lam must be in [0, 1], got {opts.lam}")
  if opts.sampler not in sampling.SAMPLERS:
    raise InputError(f"--sampler must be one of {', '.join(sampling.SAMPLERS)}, got "
                     f"{opts.sampler!r}")
  if not 0.0 <= opts.eta <= 1.0:
    raise InputError(f"--eta must be in [0, 1], got {opts.eta}")
  if not 0.0 < opts.t_start <= 1.0:
    raise InputError(f"--t_start must be in (0, 1], got {opts.t_start}")
  for name in ("steps", "num_samples", "batch_size"):
    if getattr(opts, name) < 1:
      raise InputError(f"--{name} must be at least 1, got {getattr(opts, name)}")
  return opts


# --------------------------------------------------------------------------------------------
# Checkpoint.
# --------------------------------------------------------------------------------------------
def resolve_workdir(flag: str | None) -> pathlib.Path:
  """The work dir to load: --checkpoint, else DEFAULT_CHECKPOINT (the one place for a default)."""
  path = flag or DEFAULT_CHECKPOINT
  if path is None:
    raise InputError("no --checkpoint given and no bundled pretrained model in "
                     f"{pretrained.DEFAULT}; pass --checkpoint=WORKDIR (a work dir written by "
                     "python -m vdm_mri.train, or its best/ params dir)")
  path = pathlib.Path(path)
  if not path.is_dir():
    raise InputError(f"--checkpoint {path}: no such directory")
  return path.absolute()  # Orbax's metadata reader fails on relative paths


# --------------------------------------------------------------------------------------------
# Normalisation (module docstring) and the reconstruction.
# --------------------------------------------------------------------------------------------
def volume_scales(y0: np.ndarray, subject: np.ndarray, full_shape) -> np.ndarray:
  """Per-slice scale s [N]: the training normalisation of each volume's low-res magnitude."""
  x_lr = np.abs(np.asarray(kspace.lowres_from_measurement(jnp.asarray(y0), full_shape)))
  scales = np.empty(len(y0), np.float32)
  for sid in dict.fromkeys(subject.tolist()):
    sel = subject == sid
    robust_max = np.percentile(x_lr[sel], 99.9)
    if not robust_max > 0:
      raise InputError(f"volume {sid!r}: no signal to normalise (low-res image is all zero)")
    foreground = x_lr[sel][x_lr[sel] > nifti_lib.FOREGROUND_FRACTION * robust_max]
    scales[sel] = np.percentile(foreground, nifti_lib.NORM_PERCENTILE)
  return scales


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


def reconstruct(model, params, problem: Problem, opts: Options, key, normalize: bool) -> dict:
  """Posterior samples and baselines, all in the input's intensity scale.

  With several processes each samples a contiguous share of the slices on its own devices
  (keys by slice index, so the split changes nothing) and every process ends with all results.
  """
  full_shape = model.image_shape[:2]
  n = len(problem.y0)
  scale = (volume_scales(problem.y0, problem.subject, full_shape) if normalize
           else np.ones(n, np.float32))
  lo, hi, per = distributed.process_share(n)
  mesh = sampling.make_mesh()  # this process's devices
  shape = (0, opts.num_samples, *full_shape)
  samples = np.zeros(shape, np.float32)
  if hi > lo:
    batch = sampling.padded_batch_size(min(opts.batch_size, (hi - lo) * opts.num_samples), mesh)
    bar = StepBar(math.ceil((hi - lo) * opts.num_samples / batch), opts.steps,
                  enabled=distributed.is_primary())
    with sampling.progress_listener(bar):
      samples = sampling.posterior_samples(
          model, params, problem.y0[lo:hi] / scale[lo:hi, None, None], key=key,
          num_samples=opts.num_samples, lam=opts.lam, num_steps=opts.steps,
          final_projection=opts.final_projection, batch_size=batch,
          progress_every=max(1, opts.steps // 100), mesh=mesh, first_index=lo,
          sampler=opts.sampler, eta=opts.eta, t_start=opts.t_start).samples
    bar.bar.close()
  samples = distributed.gather_rows(samples, n, per) * scale[:, None, None, None]
  y0 = jnp.asarray(problem.y0)
  out = {"mean": samples.mean(1), "std": samples.std(1), "samples": samples,
         "zero_fill": baselines.zero_fill(y0, full_shape),
         "bilinear": baselines.bilinear(y0, full_shape),
         "bicubic": baselines.bicubic(y0, full_shape),
         "lowres": jnp.abs(kspace.lowres_from_measurement(y0, full_shape)), "scale": scale}
  out = {k: np.asarray(v, np.float32) for k, v in out.items()}
  out["residual"] = np.asarray(kspace.residual(jnp.asarray(out["mean"]), y0))
  return out


def evaluate(out: dict, problem: Problem) -> dict:
  """Per method: PSNR/SSIM/NMSE per volume and mean (metrics.evaluate) and the mean residual."""
  y0 = jnp.asarray(problem.y0)
  report = {}
  for method in ("zero_fill", "bilinear", "bicubic", "mean"):
    m = metrics.evaluate(problem.gt, out[method], problem.subject)
    m["residual"] = float(np.mean(metrics.data_consistency(jnp.asarray(out[method]), y0)))
    report["vdm_mean" if method == "mean" else method] = m
  samples = out["samples"].reshape(-1, *out["samples"].shape[2:])
  k = out["samples"].shape[1]
  report["vdm_samples_residual"] = float(np.mean(metrics.data_consistency(
      jnp.asarray(samples), jnp.repeat(y0, k, axis=0))))
  return report

# --------------------------------------------------------------------------------------------
# Command line.
# --------------------------------------------------------------------------------------------
def summary(report: dict) -> str:
  lines = [f"{'method':<10} {'PSNR dB':>8} {'SSIM':>7} {'NMSE':>8} {'residual':>9}"]
  for name, m in report.items():
    if isinstance(m, dict):
      lines.append(f"{name:<10} {m['psnr']:8.2f} {m['ssim']:7.4f} {m['nmse']:8.5f} "
                   f"{m['residual']:9.2e}")
  lines.append(f"VDM samples: mean residual {report['vdm_samples_residual']:.2e}")
  return "\n".join(lines)


def run(fv) -> int:
  """The command, after flag parsing: checkpoint → measurement → posterior samples → metrics →
  files. Raises InputError for anything the user must fix. With several processes all of them
  read and sample; process 0 alone reports and writes."""
  if not fv.output or not fv.output.endswith(".npz"):
    raise InputError(f"--output must name an .npz file, got {fv.output!r}")
  sr_io.check_overwrite([pathlib.Path(fv.output)], fv.overwrite)
  workdir = resolve_workdir(fv.checkpoint)
  config = sr_io.load_config(workdir, fv.config)
  opts = sampling_options(fv, config)
  model = model_lib.from_config(config)
  key_noise, key_sample = jax.random.split(jax.random.key(fv.seed))
  problem = sr_io.read_problem(fv.input, simulated=fv.simulate, lowres=fv.lowres, noise=fv.noise,
                               full_shape=model.image_shape[:2], key=key_noise)
  paths = sr_io.output_paths(fv.output, fv.png, problem)
  sr_io.check_overwrite(paths.values(), fv.overwrite)
  params = sr_io.load_params(workdir, model)
  primary = distributed.is_primary()
  say = (lambda text: print(text, file=sys.stderr)) if primary else (lambda text: None)
  say(f"super-resolving {len(problem.y0)} slice(s) {problem.y0.shape[1]}x{problem.y0.shape[2]}"
      f" -> {model.image_shape[0]}x{model.image_shape[1]}: {opts.sampler} sampler"
      f"{f' (η={opts.eta})' if opts.sampler == 'projection' else f' (λ={opts.lam})'}, "
      f"{opts.steps} steps{f' from t={opts.t_start}' if opts.t_start < 1 else ''}, "
      f"{opts.num_samples} sample(s), final projection {opts.final_projection}, "
      f"{jax.device_count()} device(s) in {jax.process_count()} process(es)")
  out = reconstruct(model, params, problem, opts, key_sample, fv.normalize)
  if not primary:
    return 0
  report = None
  if problem.gt is not None:
    report = {"lowres": list(problem.y0.shape[1:]), "noise": fv.noise,
              **dataclasses.asdict(opts), **evaluate(out, problem)}
    print(summary(report))
  staged = sr_io.Staged()
  try:
    sr_io.stage_outputs(staged, paths, out, problem, report, fv.samples)
    staged.commit()
  finally:
    staged.abort()
  files = [str(p) for role, p in paths.items() if not role.startswith("png_")]
  pngs = f" and {len(problem.y0)} PNG(s) in {fv.png}" if fv.png else ""
  say(f"wrote {', '.join(files)}{pngs}")
  return 0


def main(argv=None) -> int:
  """Parse flags, run; exit code 2 with a one-line message on bad input."""
  argv = sys.argv if argv is None else argv
  fv = flags.FlagValues()
  define_flags(fv)
  if any(a in ("--help", "-h", "--helpfull") for a in argv[1:]):
    print(fv.get_help())
    return 0
  logging.set_verbosity(logging.WARNING)
  try:
    rest = fv(argv)
    if len(rest) > 1:
      raise InputError(f"unexpected arguments {rest[1:]}")
    distributed.initialize_from_flags(fv)  # before any other JAX call
    vdm_mri.enable_compilation_cache()
    return run(fv)
  except (InputError, distributed.DistributedError, flags.Error) as e:
    print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
