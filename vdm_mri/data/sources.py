"""Source paths (slice .npz files, NIfTI folders or files) -> one slice set, and its splits."""

from __future__ import annotations

import pathlib
import warnings

import numpy as np

from vdm_mri.data import nifti
from vdm_mri.data import slices as slices_lib
from vdm_mri.data.slices import DataError, Slices


def read_sources(paths, *, matrix: int = 128, fov_mm: float | None = 240.0,
                 skip_bad: bool = False) -> tuple[Slices, nifti.ReadReport]:
  """Reads every source into one slice set at matrix x matrix, sorted by (subject, slice_index).

  A source is a slice `.npz` (area-resampled when its size differs from `matrix`), a folder of
  NIfTI volumes, or one NIfTI file. A subject may appear in only one source. Bad files raise
  DataError naming them, or with `skip_bad` are skipped with a warning.
  """
  report = nifti.ReadReport()
  parts, owner = [], {}
  for path in map(pathlib.Path, paths):
    if path.is_dir() or nifti.is_nifti(path):
      files = nifti.find_nifti(path) if path.is_dir() else [path]
      part = nifti.read_nifti_files(files, matrix=matrix, fov_mm=fov_mm, skip_bad=skip_bad,
                                    report=report)
    else:
      part = _read_npz(path, matrix, skip_bad, report)
    if part is None:
      continue
    clash = sorted(set(part.subject) & set(owner))
    if clash:
      e = DataError(f"{path}: subject(s) {clash[:5]} also in {owner[clash[0]]}")
      if not skip_bad:
        raise e
      warnings.warn(f"skipping {e}", stacklevel=2)
      report.skipped.append((str(path), str(e)))
      continue
    owner.update(dict.fromkeys(set(part.subject), path))
    parts.append(part)
  if not parts:
    raise DataError(f"no usable slices in {[str(p) for p in paths]}")
  return Slices.concat(parts).sorted(), report


def _read_npz(path, matrix, skip_bad, report) -> Slices | None:
  report.files.append(str(path))
  try:
    if not path.is_file():
      raise DataError(f"{path}: no such file")
    part = slices_lib.read_npz(path)
    part, n_dropped = slices_lib.resample(part, matrix)
  except DataError as e:
    if not skip_bad:
      raise
    warnings.warn(f"skipping {e}", stacklevel=2)
    report.skipped.append((str(path), str(e)))
    return None
  report.volumes += len(set(part.subject))
  report.slices_kept += len(part)
  report.slices_dropped += n_dropped
  return part


def make_splits(train_source: Slices, val_source: Slices | None, *, val_fraction: float,
                seed: int) -> dict[str, Slices]:
  """{'train': ..., 'validation': ...}: given sets, or one set split by subject.

  With `val_source` the two sets are used as they are (their subjects must not overlap);
  otherwise `val_fraction` of the subjects (by `split_by_subject`) form the validation split,
  which is left out when val_fraction == 0.
  """
  if val_source is not None:
    overlap = sorted(set(train_source.subject) & set(val_source.subject))
    if overlap:
      raise DataError(f"subject(s) {overlap[:5]} are in both the train and validation sources")
    return {"train": train_source, "validation": val_source}
  _, val_ids = slices_lib.split_by_subject(train_source.subject, val_fraction, seed)
  is_val = np.isin(train_source.subject, val_ids)
  splits = {"train": train_source.take(~is_val)}
  if val_ids:
    splits["validation"] = train_source.take(is_val)
  return splits
