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

import contextlib
import dataclasses
import gzip
import json
import math
import os
import pathlib
import re
import sys
import tempfile
import zipfile
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import nibabel as nib
import numpy as np
import orbax.checkpoint as ocp
import tqdm
from absl import flags, logging
from ml_collections import config_flags
from PIL import Image, ImageDraw

import vdm_mri
from vdm_mri import baselines, figures, kspace, metrics, pretrained, sampling
from vdm_mri import model as model_lib
from vdm_mri.data import nifti as nifti_lib

DEFAULT_CHECKPOINT: str | None = (str(pretrained.DEFAULT) if pretrained.is_params_dir(
    pretrained.DEFAULT) else None)
"""Used without --checkpoint: the prior shipped in the package (vdm_mri/pretrained)."""


class InputError(ValueError):
  """Bad input, flags or checkpoint: a one-line message; the command exits with code 2."""


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


@dataclasses.dataclass(frozen=True)
class Options:
  lam: float
  steps: int
  num_samples: int
  batch_size: int
  final_projection: bool


def sampling_options(fv, config) -> Options:
  """Flags over config.sampling, validated."""
  pick = lambda name, field: getattr(config.sampling, field) if fv[name].value is None else (
      fv[name].value)
  opts = Options(lam=float(pick("lam", "lam")), steps=int(pick("steps", "steps")),
                 num_samples=int(pick("num_samples", "num_samples")),
                 batch_size=int(pick("batch_size", "batch_size")),
                 final_projection=bool(pick("final_projection", "final_projection")))
  if not 0.0 <= opts.lam <= 1.0:
    raise InputError(f"--lam must be in [0, 1], got {opts.lam}")
  for name in ("steps", "num_samples", "batch_size"):
    if getattr(opts, name) < 1:
      raise InputError(f"--{name} must be at least 1, got {getattr(opts, name)}")
  return opts


def parse_lowres(text: str | None) -> tuple[int, int]:
  """'32x32' / '64x128' / '32' -> (h, w)."""
  m = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+))?\s*", text or "")
  if not m or int(m.group(1)) < 1 or int(m.group(2) or m.group(1)) < 1:
    raise InputError(f"--lowres must look like 32x32 (positive h x w), got {text!r}")
  return int(m.group(1)), int(m.group(2) or m.group(1))


# --------------------------------------------------------------------------------------------
# Checkpoint and config.
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


def load_config(workdir: pathlib.Path, config) -> ml_collections.ConfigDict:
  """--config if given, else the config.json of the work dir or params dir (verified)."""
  if config is not None:
    return config
  if pretrained.is_params_dir(workdir):
    try:
      return pretrained.load_config(workdir)
    except pretrained.PretrainedError as e:
      raise InputError(str(e)) from e
  path = workdir / "config.json"
  if not path.is_file():
    raise InputError(f"{path} not found; pass --config=configs/<the training config>.py")
  try:
    return ml_collections.ConfigDict(pretrained.tuples_from_json(json.loads(path.read_text())))
  except (ValueError, TypeError) as e:
    raise InputError(f"{path}: not a readable config ({e})") from e


def latest_step(checkpoints: pathlib.Path) -> int:
  steps = [int(p.name) for p in checkpoints.glob("*") if p.name.isdigit()
           and (p / "state").is_dir()] if checkpoints.is_dir() else []
  if not steps:
    raise InputError(f"{checkpoints}: no Orbax checkpoint (expected checkpoints/<step>/state)")
  return max(steps)


def _param_mismatch(expected, found) -> str | None:
  """First difference between two {path: shape} dicts, as text, or None."""
  for path in sorted(set(expected) | set(found)):
    if expected.get(path) != found.get(path):
      return f"{path}: model {expected.get(path)} vs checkpoint {found.get(path)}"
  return None


@contextlib.contextmanager
def _quiet_absl():
  level = logging.get_verbosity()
  logging.set_verbosity(logging.ERROR)
  try:
    yield
  finally:
    logging.set_verbosity(level)


def load_params(workdir: pathlib.Path, model: model_lib.VDM):
  """The EMA parameters of a params dir (verified checksums), or of a work dir's latest
  checkpoint; checked against the model's shapes."""
  if pretrained.is_params_dir(workdir):
    try:
      return pretrained.load_params(workdir, model)
    except pretrained.PretrainedError as e:
      raise InputError(str(e)) from e
  checkpoints = workdir / "checkpoints"
  step = latest_step(checkpoints)
  state_dir = checkpoints / str(step) / "state"
  try:
    with _quiet_absl():  # Orbax warns that the item dir has no step metadata: expected here
      saved = ocp.PyTreeCheckpointer().metadata(state_dir).item_metadata["ema_params"]
  except Exception as e:  # Orbax raises many types for unreadable checkpoints
    raise InputError(f"{state_dir}: cannot read checkpoint metadata ({type(e).__name__}: "
                     f"{e})".splitlines()[0]) from e
  expected = model.abstract_params()
  mismatch = _param_mismatch(pretrained.param_shapes(expected), pretrained.param_shapes(saved))
  if mismatch:
    raise InputError(f"checkpoint {state_dir} does not match the config: {mismatch}")
  args = ocp.args.PyTreeRestore(
      item={"ema_params": expected}, partial_restore=True,
      restore_args={"ema_params": jax.tree.map(
          lambda _: ocp.RestoreArgs(restore_type=np.ndarray), expected)})
  with ocp.CheckpointManager(checkpoints.absolute()) as mngr:
    restored = mngr.restore(step, args=ocp.args.Composite(state=args))
  return restored.state["ema_params"]


# --------------------------------------------------------------------------------------------
# Inputs: every kind becomes a measurement ŷ₀ [N, h, w] in the input's intensity scale.
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Problem:
  y0: np.ndarray  # [N, h, w] complex64, the measurement (input intensity scale)
  subject: np.ndarray  # [N] str: volume ids
  gt: np.ndarray | None = None  # [N, H, W] float32, with --simulate
  nifti: nib.Nifti1Image | None = None  # the RAS input volume (for the NIfTI output)


def _stack(a: np.ndarray, name: str, *, kspace_data: bool) -> np.ndarray:
  """Validate a 2D/3D image or k-space array -> [N, h, w] (complex64 or float32)."""
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


def _fits(shape, full_shape, name: str):
  if shape[0] > full_shape[0] or shape[1] > full_shape[1]:
    raise InputError(f"{name}: low-res size {shape[0]}x{shape[1]} is larger than the target "
                     f"{full_shape[0]}x{full_shape[1]}")


def _load_arrays(path: pathlib.Path) -> dict:
  """{'images' | 'kspace' | 'subject': array} from .npz or .npy (complex .npy is k-space)."""
  try:
    if path.suffix == ".npy":
      a = np.load(path, allow_pickle=False)
      return {"kspace" if a.dtype.kind == "c" else "images": a}
    with np.load(path, allow_pickle=False) as f:
      return {k: f[k] for k in f.files}
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise InputError(f"{path}: cannot read ({type(e).__name__}: {e})".splitlines()[0]) from e


def _subjects(arrays: dict, n: int, name: str) -> np.ndarray:
  subject = arrays.get("subject")
  if subject is None:
    return np.full(n, "volume")
  subject = np.asarray(subject).astype(str)
  if subject.shape != (n,):
    raise InputError(f"{name}: 'subject' must have one id per slice ({n}), got {subject.shape}")
  return subject


def read_arrays(path: pathlib.Path, full_shape) -> Problem:
  """Low-res magnitude images or k-space from .npz / .npy."""
  arrays = _load_arrays(path)
  if "kspace" in arrays:
    y0 = _stack(arrays["kspace"], f"{path} (kspace)", kspace_data=True)
    _fits(y0.shape[1:], full_shape, f"{path} (kspace)")
  elif "images" in arrays:
    x_lr = _stack(arrays["images"], f"{path} (images)", kspace_data=False)
    _fits(x_lr.shape[1:], full_shape, f"{path} (images)")
    y0 = np.asarray(kspace.measurement_from_lowres(jnp.asarray(x_lr), full_shape))
  else:
    raise InputError(f"{path}: expected key 'images' or 'kspace', found {sorted(arrays)}")
  return Problem(y0=y0, subject=_subjects(arrays, len(y0), str(path)))


def read_nifti(path: pathlib.Path, full_shape) -> Problem:
  """A 2D/3D magnitude NIfTI, RAS, axial slices [Z, Y(anterior first), X(left first)]."""
  try:
    image = nib.load(path)
    if image.get_data_dtype().kind == "c":
      raise InputError(f"{path}: complex NIfTI where magnitude images are expected")
    if image.ndim == 4 and image.shape[3] == 1:
      image = image.slicer[..., 0]
    if image.ndim == 2:
      image = nib.Nifti1Image(np.asarray(image.dataobj)[..., None], image.affine, image.header)
    if image.ndim != 3:
      raise InputError(f"{path}: expected a 2D or 3D NIfTI, got shape {image.shape}")
    image = nib.as_closest_canonical(image)
    data = np.asarray(image.get_fdata(dtype=np.float32))
  except InputError:
    raise
  except Exception as e:  # nibabel raises many types for damaged files
    raise InputError(f"{path}: cannot read NIfTI ({type(e).__name__}: {e})".splitlines()[0]
                     ) from e
  x_lr = _stack(np.transpose(data[:, ::-1, :], (2, 1, 0)), str(path), kspace_data=False)
  _fits(x_lr.shape[1:], full_shape, str(path))
  y0 = np.asarray(kspace.measurement_from_lowres(jnp.asarray(x_lr), full_shape))
  return Problem(y0=y0, subject=np.full(len(y0), nifti_lib.subject_id(path)), nifti=image)


def ground_truth(images: np.ndarray, name: str, full_shape) -> np.ndarray:
  """High-res ground truth [N, H, W] float32 in [0, 1] (uint16 read as x·4095)."""
  x = _stack(images, name, kspace_data=False)
  if np.asarray(images).dtype.kind in "ui":
    if x.min() < 0 or x.max() > 4095:
      raise InputError(f"{name}: integer ground truth must lie in [0, 4095] (12-bit)")
    x = x / 4095.0
  elif x.min() < 0 or x.max() > 1:
    raise InputError(f"{name}: float ground truth must lie in [0, 1], found "
                     f"[{x.min():.4g}, {x.max():.4g}]")
  if tuple(x.shape[1:]) != tuple(full_shape):
    raise InputError(f"{name}: ground truth is {x.shape[1]}x{x.shape[2]}, the model's matrix "
                     f"is {full_shape[0]}x{full_shape[1]}")
  return x.astype(np.float32)


def simulate(path: pathlib.Path, lowres, sigma_y: float, key, full_shape) -> Problem:
  """ŷ₀ = kspace.measure(x, lowres, σ_y) from high-res ground truth `images`."""
  arrays = _load_arrays(path)
  if "images" not in arrays:
    raise InputError(f"{path}: --simulate needs high-res ground truth under key 'images'")
  gt = ground_truth(arrays["images"], f"{path} (images)", full_shape)
  _fits(lowres, full_shape, "--lowres")
  y0 = np.asarray(kspace.measure(jnp.asarray(gt), lowres, key, sigma_y))
  return Problem(y0=y0, subject=_subjects(arrays, len(gt), str(path)), gt=gt)


def read_problem(fv, full_shape, key) -> Problem:
  """The measurement from --input (or --simulate), validated."""
  if fv.simulate:
    if fv.noise < 0 or not math.isfinite(fv.noise):
      raise InputError(f"--noise must be a finite σ_y ≥ 0, got {fv.noise}")
    path = pathlib.Path(fv.input) if fv.input else vdm_mri.SAMPLE_DATA
    return simulate(_existing(path), parse_lowres(fv.lowres), fv.noise, key, full_shape)
  if fv.lowres is not None or fv.noise != 0:
    raise InputError("--lowres and --noise are only for --simulate (the input's own size and "
                     "noise are used)")
  if not fv.input:
    raise InputError("pass --input=FILE (low-res images, k-space or NIfTI) or --simulate")
  path = _existing(pathlib.Path(fv.input))
  if nifti_lib.is_nifti(path):
    return read_nifti(path, full_shape)
  if path.suffix not in (".npz", ".npy"):
    raise InputError(f"{path}: unsupported file type (expected .npz, .npy, .nii or .nii.gz)")
  return read_arrays(path, full_shape)


def _existing(path: pathlib.Path) -> pathlib.Path:
  if not path.is_file():
    raise InputError(f"--input {path}: no such file")
  return path


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

  def __init__(self, calls: int, steps: int):
    self.bar = tqdm.tqdm(total=calls * steps, unit="step", dynamic_ncols=True, disable=None)
    self.steps, self.base = steps, 0

  def __call__(self, done: int):
    self.bar.n = min(self.base + done, self.bar.total)
    self.bar.refresh()
    if done == self.steps:
      self.base += self.steps


def reconstruct(model, params, problem: Problem, opts: Options, key, normalize: bool) -> dict:
  """Posterior samples and baselines, all in the input's intensity scale."""
  full_shape = model.image_shape[:2]
  scale = (volume_scales(problem.y0, problem.subject, full_shape) if normalize
           else np.ones(len(problem.y0), np.float32))
  mesh = sampling.make_mesh()
  batch = sampling.padded_batch_size(min(opts.batch_size, len(problem.y0) * opts.num_samples),
                                     mesh)
  bar = StepBar(math.ceil(len(problem.y0) * opts.num_samples / batch), opts.steps)
  with sampling.progress_listener(bar):
    post = sampling.posterior_samples(
        model, params, problem.y0 / scale[:, None, None], key=key, num_samples=opts.num_samples,
        lam=opts.lam, num_steps=opts.steps, final_projection=opts.final_projection,
        batch_size=batch, progress_every=max(1, opts.steps // 100), mesh=mesh)
  bar.bar.close()
  s3, y0 = scale[:, None, None], jnp.asarray(problem.y0)
  out = {"mean": post.mean * s3, "std": post.std * s3, "samples": post.samples * s3[:, None],
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
# Outputs: staged in temporary files, renamed together at the end.
# --------------------------------------------------------------------------------------------
class Staged:
  """Write files to temporaries beside their targets; `commit` renames them all."""

  def __init__(self):
    self.pending: list[tuple[pathlib.Path, pathlib.Path]] = []

  def add(self, path: pathlib.Path, write: Callable[[object], None]):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    self.pending.append((pathlib.Path(tmp), path))
    with os.fdopen(fd, "wb") as f:
      write(f)

  def commit(self):
    for tmp, path in self.pending:
      os.replace(tmp, path)
    self.pending = []

  def abort(self):
    for tmp, _ in self.pending:
      tmp.unlink(missing_ok=True)
    self.pending = []


def output_paths(fv, problem: Problem) -> dict[str, pathlib.Path]:
  """Every file this run would write, by role."""
  out = pathlib.Path(fv.output)
  stem = out.with_suffix("")
  paths = {"npz": out}
  if problem.nifti is not None:
    paths |= {"nifti_mean": pathlib.Path(f"{stem}.nii.gz"),
              "nifti_std": pathlib.Path(f"{stem}_std.nii.gz")}
  if problem.gt is not None:
    paths["metrics"] = pathlib.Path(f"{stem}.metrics.json")
  if fv.png:
    paths |= {f"png_{i}": pathlib.Path(fv.png) / f"slice_{i:04d}.png"
              for i in range(len(problem.y0))}
  return paths


def check_overwrite(paths, overwrite: bool):
  existing = [str(p) for p in paths if p.exists()]
  if existing and not overwrite:
    more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
    raise InputError(f"output {existing[0]} exists{more}; pass --overwrite to replace it")


def nifti_output(volume: np.ndarray, source: nib.Nifti1Image) -> nib.Nifti1Image:
  """[Z, H, W] slices -> RAS volume [W, H, Z] on the input's field of view at the new matrix.

  High-res index I sits at low-res coordinate (I - N//2)·n/N + n//2 (the centred-DFT grid,
  baselines.py); rows run anterior→posterior, so the y axis is mirrored before and after.
  """
  _, H, W = volume.shape
  w, h = source.shape[:2]
  data = np.transpose(volume, (2, 1, 0))[:, ::-1, :]  # [X, Y, Z]
  m = np.eye(4)
  m[0, 0], m[0, 3] = w / W, w // 2 - (W // 2) * w / W
  y_row = lambda R: (R - H // 2) * h / H + h // 2  # low-res row of high-res row R
  m[1, 1], m[1, 3] = h / H, (h - 1) - y_row(H - 1)  # y = h-1 - row, Y = H-1 - R
  header = source.header.copy()
  header.set_data_dtype(np.float32)
  image = nib.Nifti1Image(data.astype(np.float32), source.affine @ m, header)
  image.header.set_zooms(tuple(np.asarray(source.header.get_zooms()[:3]) * [w / W, h / H, 1.0]))
  return image


def png_panel(panels: dict[str, np.ndarray], hi: float, std_hi: float) -> Image.Image:
  """One row of labelled H×W grey panels; the std panel has its own window."""
  label_h = 14
  images = [figures.to_uint8(p, max(std_hi if name == "std" else hi, 1e-12)) for name, p in panels.items()]
  H, W = images[0].shape
  canvas = Image.new("L", (W * len(images), H + label_h), 0)
  draw = ImageDraw.Draw(canvas)
  for j, (name, im) in enumerate(zip(panels, images)):
    canvas.paste(Image.fromarray(im), (j * W, label_h))
    draw.text((j * W + 2, 1), name, fill=255)
  return canvas


def stage_outputs(staged: Staged, paths: dict, out: dict, problem: Problem, report, save_samples):
  arrays = {k: v for k, v in out.items() if k != "samples" or save_samples}
  if problem.gt is not None:
    arrays["ground_truth"] = problem.gt
  staged.add(paths["npz"], lambda f: np.savez(f, **arrays))
  if problem.nifti is not None:
    for key, name in (("nifti_mean", "mean"), ("nifti_std", "std")):
      image = nifti_output(out[name], problem.nifti)
      staged.add(paths[key], lambda f, im=image: f.write(gzip.compress(im.to_bytes())))
  if report is not None:
    staged.add(paths["metrics"], lambda f: f.write(json.dumps(report, indent=1).encode()))
  full_shape = out["mean"].shape[1:]
  for i in range(len(problem.y0)):
    if f"png_{i}" not in paths:
      break
    panels = {"LR": baselines.nearest_enlarge(out["lowres"][i], full_shape),
              "zero-fill": out["zero_fill"][i],
              "bicubic": out["bicubic"][i], "VDM mean": out["mean"][i], "std": out["std"][i]}
    if problem.gt is not None:
      panels["ground truth"] = problem.gt[i]
    hi = np.percentile(problem.gt[i] if problem.gt is not None else out["mean"][i], 99.5)
    image = png_panel(panels, hi, float(out["std"][i].max()))
    staged.add(paths[f"png_{i}"], lambda f, im=image: im.save(f, format="PNG"))


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
  """The command, after flag parsing. Raises InputError for anything the user must fix."""
  if not fv.output or not fv.output.endswith(".npz"):
    raise InputError(f"--output must name an .npz file, got {fv.output!r}")
  check_overwrite([pathlib.Path(fv.output)], fv.overwrite)
  workdir = resolve_workdir(fv.checkpoint)
  config = load_config(workdir, fv.config)
  opts = sampling_options(fv, config)
  model = model_lib.from_config(config)
  key_noise, key_sample = jax.random.split(jax.random.key(fv.seed))
  problem = read_problem(fv, model.image_shape[:2], key_noise)
  paths = output_paths(fv, problem)
  check_overwrite(paths.values(), fv.overwrite)
  params = load_params(workdir, model)
  print(f"super-resolving {len(problem.y0)} slice(s) {problem.y0.shape[1]}x{problem.y0.shape[2]}"
        f" -> {model.image_shape[0]}x{model.image_shape[1]}: λ={opts.lam}, {opts.steps} steps, "
        f"{opts.num_samples} sample(s), final projection {opts.final_projection}, "
        f"{jax.device_count()} device(s)", file=sys.stderr)
  out = reconstruct(model, params, problem, opts, key_sample, fv.normalize)
  report = None
  if problem.gt is not None:
    report = {"lowres": list(problem.y0.shape[1:]), "noise": fv.noise,
              **dataclasses.asdict(opts), **evaluate(out, problem)}
    print(summary(report))
  staged = Staged()
  try:
    stage_outputs(staged, paths, out, problem, report, fv.samples)
    staged.commit()
  finally:
    staged.abort()
  files = [str(p) for role, p in paths.items() if not role.startswith("png_")]
  pngs = f" and {len(problem.y0)} PNG(s) in {fv.png}" if fv.png else ""
  print(f"wrote {', '.join(files)}{pngs}", file=sys.stderr)
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
  vdm_mri.enable_compilation_cache()
  try:
    rest = fv(argv)
    if len(rest) > 1:
      raise InputError(f"unexpected arguments {rest[1:]}")
    return run(fv)
  except (InputError, flags.Error) as e:
    print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
