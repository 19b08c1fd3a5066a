"""The super-resolution command's files: low-resolution data in, result files out.

Readers turn every kind of input into a `Problem` (the measurement ŷ₀ [N, h, w] in the input's
intensity scale, volume ids, and the ground truth or NIfTI header where there is one); writers
stage every output in a temporary file beside its target and rename them all at the end
(`Staged`), so a failed run leaves nothing half-written. The file formats are described in
`vdm_mri.sample`. Bad input raises InputError with a one-line message.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import math
import os
import pathlib
import zipfile
from typing import Callable

import jax.numpy as jnp
import nibabel as nib
import numpy as np

import vdm_mri
from vdm_mri import atomic, baselines, figures, kspace
from vdm_mri.api import InputError, check_fits as _fits, stack_slices as _stack, volume_ids
from vdm_mri.data import nifti as nifti_lib


# --------------------------------------------------------------------------------------------
# Inputs: every kind becomes a measurement ŷ₀ [N, h, w] in the input's intensity scale.
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Problem:
  y0: np.ndarray  # [N, h, w] complex64, the measurement (input intensity scale)
  subject: np.ndarray  # [N] str: volume ids
  gt: np.ndarray | None = None  # [N, H, W] float32, with --simulate
  nifti: nib.Nifti1Image | None = None  # the RAS input volume (for the NIfTI output)


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
  return volume_ids(arrays.get("subject"), n, name)


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


def read_problem(input_path: str | None, *, simulated: bool, lowres: str | None, noise: float,
                 full_shape, key) -> Problem:
  """The measurement from `input_path`, or simulated (`lowres`, σ_y = `noise`, `key`) from the
  ground truth in it; validated. The CLI's --input, --simulate, --lowres and --noise."""
  if simulated:
    if noise < 0 or not math.isfinite(noise):
      raise InputError(f"--noise must be a finite σ_y ≥ 0, got {noise}")
    path = pathlib.Path(input_path) if input_path else vdm_mri.SAMPLE_DATA
    return simulate(_existing(path), parse_lowres(lowres), noise, key, full_shape)
  if lowres is not None or noise != 0:
    raise InputError("--lowres and --noise are only for --simulate (the input's own size and "
                     "noise are used)")
  if not input_path:
    raise InputError("pass --input=FILE (low-res images, k-space or NIfTI) or --simulate")
  path = _existing(pathlib.Path(input_path))
  if nifti_lib.is_nifti(path):
    return read_nifti(path, full_shape)
  if path.suffix not in (".npz", ".npy"):
    raise InputError(f"{path}: unsupported file type (expected .npz, .npy, .nii or .nii.gz)")
  return read_arrays(path, full_shape)


def _existing(path: pathlib.Path) -> pathlib.Path:
  if not path.is_file():
    raise InputError(f"--input {path}: no such file")
  return path


def parse_lowres(text: str | None) -> tuple[int, int]:
  """--lowres '32x32' / '64x128' / '32' -> (h, w) (kspace.parse_size)."""
  try:
    return kspace.parse_size(text)
  except ValueError as e:
    raise InputError(f"--lowres {e}") from None


# --------------------------------------------------------------------------------------------
# Outputs: staged in temporary files, renamed together at the end.
# --------------------------------------------------------------------------------------------
class Staged:
  """Write files to temporaries beside their targets; `commit` renames them all."""

  def __init__(self):
    self.pending: list[tuple[pathlib.Path, pathlib.Path]] = []

  def add(self, path: pathlib.Path, write: Callable[[object], None]):
    fd, tmp = atomic.temp_beside(path)
    self.pending.append((tmp, path))
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


def output_paths(output: str, png_dir: str | None, problem: Problem) -> dict[str, pathlib.Path]:
  """Every file a run would write, by role: --output (.npz) and what goes beside it, and one
  PNG per slice in `png_dir`."""
  out = pathlib.Path(output)
  stem = out.with_suffix("")
  paths = {"npz": out}
  if problem.nifti is not None:
    paths |= {"nifti_mean": pathlib.Path(f"{stem}.nii.gz"),
              "nifti_std": pathlib.Path(f"{stem}_std.nii.gz")}
  if problem.gt is not None:
    paths["metrics"] = pathlib.Path(f"{stem}.metrics.json")
  if png_dir:
    paths |= {f"png_{i}": pathlib.Path(png_dir) / f"slice_{i:04d}.png"
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
    image = figures.panel_row(panels, hi, float(out["std"][i].max()))
    staged.add(paths[f"png_{i}"], lambda f, im=image: im.save(f, format="PNG"))
