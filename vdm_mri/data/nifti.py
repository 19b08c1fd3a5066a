"""NIfTI volumes -> 12-bit axial slices, made the way the training data were made.

Per volume (one volume per subject):
1. `nib.as_closest_canonical`: voxel axes become (x→Right, y→Anterior, z→Superior). Only axis
   permutations and flips are applied; an oblique affine is treated as its closest RAS grid.
2. Foreground: voxels above FOREGROUND_FRACTION · (99.9th percentile of the volume).
3. Axial slices z; a square field of view of `fov_mm` (240 mm by default; None = the larger side
   of the foreground box) centred on the in-plane foreground bounding box of the whole volume.
4. Exact area (box-integral) resampling to matrix x matrix (zero outside the volume).
5. Divide by the 99.5th percentile of the foreground voxels (native grid), clip to [0, 1].
6. Drop slices with fewer than 5 % of pixels above 0.1; quantise to 12 bits.

Image orientation matches the bundled data: row 0 = anterior, column 0 = patient left.
The subject id is the file name without `.nii`/`.nii.gz`; a BIDS name (`sub-01_T1w.nii.gz`)
gives its `sub-<label>` entity.
"""

from __future__ import annotations

import dataclasses
import pathlib
import warnings

import nibabel as nib
import numpy as np

from vdm_mri.data import slices as slices_lib
from vdm_mri.data.slices import DataError, Slices

FOREGROUND_FRACTION, NORM_PERCENTILE = slices_lib.FOREGROUND_FRACTION, slices_lib.NORM_PERCENTILE
NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclasses.dataclass
class ReadReport:
  """What a read found: files, volumes read, files skipped (name, reason), slices kept/dropped."""

  files: list[str] = dataclasses.field(default_factory=list)
  volumes: int = 0
  skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)
  slices_kept: int = 0
  slices_dropped: int = 0


def is_nifti(path: pathlib.Path) -> bool:
  return path.name.endswith(NIFTI_SUFFIXES)


def subject_id(path: pathlib.Path) -> str:
  stem = path.name.removesuffix(".gz").removesuffix(".nii")
  return stem.split("_")[0] if stem.startswith("sub-") else stem


def load_volume(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
  """Reads one volume in RAS voxel order: (data float32 [X, Y, Z], voxel size mm [3])."""
  try:
    image = nib.as_closest_canonical(nib.load(path))
    if image.ndim == 4 and image.shape[3] == 1:
      image = image.slicer[..., 0]
    if image.ndim != 3:
      raise DataError(f"{path}: expected a 3D volume, got shape {image.shape}")
    data = np.asarray(image.get_fdata(dtype=np.float32))
    zooms = np.asarray(image.header.get_zooms()[:3], dtype=np.float64)
  except DataError:
    raise
  except Exception as e:  # nibabel raises many types for damaged files; all mean "unreadable"
    raise DataError(f"{path}: cannot read NIfTI volume ({type(e).__name__}: {e})") from e
  if not np.all(np.isfinite(zooms) & (zooms > 0)):
    raise DataError(f"{path}: invalid voxel size {zooms.tolist()}")
  bad = data.size - np.count_nonzero(np.isfinite(data))
  if bad:
    raise DataError(f"{path}: volume contains {bad} NaN/inf voxel(s)")
  return data, zooms


def volume_to_slices(data: np.ndarray, zooms: np.ndarray, *, matrix: int, fov_mm: float | None,
                     name: str) -> tuple[np.ndarray, np.ndarray, int]:
  """RAS volume -> (kept slices float32 [K, m, m] in [0, 1], their z indices [K], number dropped)."""
  scale, foreground = slices_lib.normalisation(data, name)  # foreground [X, Y, Z]
  xs = np.flatnonzero(foreground.any(axis=(1, 2)))
  ys = np.flatnonzero(foreground.any(axis=(0, 2)))
  extent = np.array([(xs[-1] + 1 - xs[0]) * zooms[0], (ys[-1] + 1 - ys[0]) * zooms[1]])
  centre = np.array([(xs[0] + xs[-1] + 1) * zooms[0], (ys[0] + ys[-1] + 1) * zooms[1]]) / 2
  fov = float(extent.max()) if fov_mm is None else float(fov_mm)
  if extent.max() > fov * 1.001:
    warnings.warn(f"{name}: head extent {extent.round(1).tolist()} mm exceeds the {fov:g} mm "
                  "field of view; the edges are cropped", stacklevel=2)
  pixel = fov / matrix
  w_x = slices_lib.area_weights(data.shape[0], zooms[0], matrix, pixel, centre[0] - fov / 2)
  w_y = slices_lib.area_weights(data.shape[1], zooms[1], matrix, pixel, centre[1] - fov / 2)
  planes = np.einsum("px,xyz,qy->zqp", w_x.astype(np.float32), data, w_y.astype(np.float32))
  x = np.clip(planes[:, ::-1, :] / scale, 0.0, 1.0)  # [Z, m(y: anterior first), m(x: left first)]
  keep = slices_lib.keep_mask(x)
  return x[keep], np.flatnonzero(keep), int(len(keep) - keep.sum())


def read_nifti_files(paths: list[pathlib.Path], *, matrix: int = 128, fov_mm: float | None = 240.0,
                     skip_bad: bool = False, report: ReadReport | None = None) -> Slices | None:
  """Reads NIfTI volumes into one slice set (None if nothing was kept).

  A file that cannot be read or is inconsistent raises DataError naming it, or with `skip_bad`
  is skipped with a warning (and listed in `report.skipped`).
  """
  report = ReadReport() if report is None else report
  parts, owner = [], {}
  for path in sorted(paths):
    report.files.append(str(path))
    try:
      subject = subject_id(path)
      if subject in owner:
        raise DataError(f"{path}: subject id {subject!r} already taken by {owner[subject]} "
                        "(one volume per subject)")
      data, zooms = load_volume(path)
      x, z, n_dropped = volume_to_slices(data, zooms, matrix=matrix, fov_mm=fov_mm, name=str(path))
    except DataError as e:
      if not skip_bad:
        raise
      warnings.warn(f"skipping {e}", stacklevel=2)
      report.skipped.append((str(path), str(e)))
      continue
    owner[subject] = path
    report.volumes += 1
    report.slices_kept += len(z)
    report.slices_dropped += n_dropped
    parts.append(Slices(slices_lib.quantise(x), np.full(len(z), subject), z.astype(np.int64)))
  return Slices.concat(parts) if parts else None


def find_nifti(folder: pathlib.Path) -> list[pathlib.Path]:
  """The `.nii`/`.nii.gz` files directly inside `folder` (not recursive)."""
  if not folder.is_dir():
    raise DataError(f"{folder}: not a directory")
  files = sorted(p for p in folder.iterdir() if p.is_file() and is_nifti(p))
  if not files:
    raise DataError(f"{folder}: no .nii or .nii.gz files found")
  return files
