"""Slice sets: the 12-bit image stacks that every data source is turned into.

A slice set is three aligned arrays (the layout of `brain_t1w_{train,val}.npz`):

| name          | shape / dtype          | meaning                                        |
| ------------- | ---------------------- | ---------------------------------------------- |
| `images`      | [N, H, W] uint16       | magnitude x = images / QUANT_MAX, x in [0, 1]  |
| `subject`     | [N] str                | subject id; splits are made over these          |
| `slice_index` | [N] int64              | axial index in the subject's (RAS) volume       |

This module reads and validates `.npz` slice files, holds the shared processing rules
(12-bit quantisation, the near-empty-slice rule, exact area resampling, the per-volume
intensity normalisation that the data pipeline and the super-resolution of a user's volume
share) and splits by subject.
"""

from __future__ import annotations

import dataclasses
import pathlib
import zipfile

import numpy as np

DATASET_NAME = "brain_mri"
"""TFDS name of the built dataset (see builder.py)."""
QUANT_MAX = 4095
"""12-bit grid: x = images / QUANT_MAX."""
MIN_LEVEL = 0.1
MIN_AREA = 0.05
"""A slice is dropped when fewer than MIN_AREA of its pixels are above MIN_LEVEL."""
REQUIRED_KEYS = ("images", "subject", "slice_index")
FOREGROUND_FRACTION = 0.05
NORM_PERCENTILE = 99.5
"""Normalisation: a volume is divided by the NORM_PERCENTILE-th percentile of its foreground,
the values above FOREGROUND_FRACTION · (its 99.9th percentile)."""


class DataError(ValueError):
  """Bad input data. The message names the file (or array) and the problem."""


def normalisation(values: np.ndarray, name: str) -> tuple[np.floating, np.ndarray]:
  """(scale s, foreground mask) of one volume's magnitudes (any shape): the training data are
  x / s clipped to [0, 1] (nifti.py); a user's volume is normalised by the same rule applied to
  its low-res magnitude (api.volume_scales). Raises DataError naming `name` when the volume has
  no signal."""
  values = np.asarray(values)
  robust_max = np.percentile(values, 99.9)
  if not robust_max > 0:
    raise DataError(f"{name}: no signal to normalise (99.9th percentile {robust_max:.4g})")
  foreground = values > FOREGROUND_FRACTION * robust_max
  return np.percentile(values[foreground], NORM_PERCENTILE), foreground


@dataclasses.dataclass(frozen=True)
class Slices:
  """A stack of 12-bit slices with their subject ids and axial indices."""

  images: np.ndarray  # [N, H, W] uint16 on the 12-bit grid
  subject: np.ndarray  # [N] str
  slice_index: np.ndarray  # [N] int64

  def __len__(self) -> int:
    return len(self.images)

  def take(self, rows) -> Slices:
    """The slices selected by an index array or boolean mask."""
    return Slices(self.images[rows], self.subject[rows], self.slice_index[rows])

  def sorted(self) -> Slices:
    """Ordered by (subject, slice_index): volumes stay contiguous."""
    return self.take(np.lexsort((self.slice_index, self.subject)))

  @staticmethod
  def concat(parts: list[Slices]) -> Slices:
    return Slices(
        np.concatenate([p.images for p in parts]),
        np.concatenate([p.subject for p in parts]).astype(str),
        np.concatenate([p.slice_index for p in parts]),
    )

  @classmethod
  def from_arrays(cls, images, subject=None, slice_index=None, *, name="<arrays>",
                  quant_max=QUANT_MAX) -> Slices:
    """Validates arrays (images uint in [0, quant_max] or float in [0, 1]) into a slice set.

    `subject` defaults to "unknown" for every slice, `slice_index` to 0..N-1.
    """
    images = to_12bit(np.asarray(images), name=name, quant_max=quant_max)
    n = len(images)
    subject = np.full(n, "unknown") if subject is None else _subject_array(subject, n, name)
    slice_index = np.arange(n) if slice_index is None else _index_array(slice_index, n, name)
    return cls(images, subject, slice_index)


def to_12bit(images: np.ndarray, *, name: str, quant_max: int = QUANT_MAX) -> np.ndarray:
  """Checks an image stack and returns it on the 12-bit grid: uint16 [N, H, W].

  Integer input is read as x = images / quant_max; float input must already be in [0, 1].
  """
  if images.ndim == 4 and images.shape[-1] == 1:
    images = images[..., 0]
  if images.ndim != 3:
    raise DataError(f"{name}: images must be [N, H, W] (or [N, H, W, 1]), got shape {images.shape}")
  if images.shape[0] == 0 or min(images.shape[1:]) < 2:
    raise DataError(f"{name}: images hold no usable slices (shape {images.shape})")
  if images.dtype.kind in "ui":
    lo, hi = int(images.min()), int(images.max())
    if lo < 0 or hi > quant_max:
      raise DataError(f"{name}: integer images must lie in [0, {quant_max}], found [{lo}, {hi}]")
    if quant_max == QUANT_MAX:
      return images.astype(np.uint16)
    images = images / quant_max
  elif images.dtype.kind != "f":
    raise DataError(f"{name}: images must be unsigned integers or floats, got dtype {images.dtype}")
  bad = np.size(images) - np.count_nonzero(np.isfinite(images))
  if bad:
    raise DataError(f"{name}: images contain {bad} NaN/inf value(s)")
  lo, hi = float(images.min()), float(images.max())
  if lo < 0 or hi > 1:
    raise DataError(f"{name}: float images must lie in [0, 1], found [{lo:.4g}, {hi:.4g}]")
  return quantise(images)


def quantise(x: np.ndarray) -> np.ndarray:
  """x in [0, 1] (clipped) -> uint16 round(x * QUANT_MAX)."""
  return np.round(np.clip(x, 0.0, 1.0) * QUANT_MAX).astype(np.uint16)


def keep_mask(x: np.ndarray) -> np.ndarray:
  """[N, H, W] in [0, 1] -> [N] bool: at least MIN_AREA of the pixels above MIN_LEVEL."""
  return np.mean(x > MIN_LEVEL, axis=(1, 2)) >= MIN_AREA


def area_weights(n_in: int, d_in: float, n_out: int, d_out: float, start: float) -> np.ndarray:
  """Exact area (box-integral) resampling matrix W [n_out, n_in] along one axis.

  Input sample i covers [i·d_in, (i+1)·d_in), output pixel o covers
  [start + o·d_out, start + (o+1)·d_out) (same units, e.g. mm). W[o, i] is the overlap of the two
  divided by d_out, so `W @ v` is the mean of the piecewise-constant input over each output pixel;
  outside the input it is zero. The 2D resampling is separable: Wr @ image @ Wc.T.
  """
  e_in = np.arange(n_in + 1) * d_in
  e_out = start + np.arange(n_out + 1) * d_out
  lo = np.maximum(e_out[:-1, None], e_in[None, :-1])
  hi = np.minimum(e_out[1:, None], e_in[None, 1:])
  return np.clip(hi - lo, 0.0, None) / d_out


def resample(slices: Slices, matrix: int) -> tuple[Slices, int]:
  """Area-resamples square slices to matrix x matrix over the same field of view.

  Re-applies the near-empty rule at the new size; returns (slices kept, number dropped).
  """
  n, h, w = slices.images.shape
  if (h, w) == (matrix, matrix):
    return slices, 0
  if h != w:
    raise DataError(f"cannot resample non-square {h}x{w} slices to {matrix}x{matrix}")
  weights = area_weights(h, 1.0 / h, matrix, 1.0 / matrix, 0.0).astype(np.float32)
  x = slices.images.astype(np.float32) / QUANT_MAX
  x = np.einsum("ph,nhw,qw->npq", weights, x, weights)  # [N, m, m]
  keep = keep_mask(x)
  out = Slices(quantise(x[keep]), slices.subject[keep], slices.slice_index[keep])
  return out, int(n - keep.sum())


def read_npz(path) -> Slices:
  """Reads and validates a slice file (`images`, `subject`, `slice_index`; optional `quant_max`)."""
  path = pathlib.Path(path)
  try:
    f = np.load(path, allow_pickle=False)
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise DataError(f"{path}: cannot read as .npz ({e})") from e
  if not isinstance(f, np.lib.npyio.NpzFile):
    raise DataError(f"{path}: not an .npz archive (np.load gave {type(f).__name__})")
  try:
    with f:
      arrays = {k: f[k] for k in f.files}
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise DataError(f"{path}: cannot read as .npz ({e})") from e
  missing = [k for k in REQUIRED_KEYS if k not in arrays]
  if missing:
    raise DataError(f"{path}: missing key(s) {missing}; found {sorted(arrays)}")
  quant_max = int(arrays.get("quant_max", QUANT_MAX))
  return Slices.from_arrays(arrays["images"], arrays["subject"], arrays["slice_index"],
                            name=str(path), quant_max=quant_max)


def _subject_array(subject, n: int, name: str) -> np.ndarray:
  subject = np.asarray(subject)
  if subject.dtype.kind == "S":
    subject = np.char.decode(subject, "utf-8")
  if subject.dtype.kind != "U" or subject.shape != (n,):
    raise DataError(f"{name}: subject must be {n} strings (one per image), "
                    f"got dtype {subject.dtype}, shape {subject.shape}")
  if np.any(np.char.str_len(subject) == 0):
    raise DataError(f"{name}: subject contains empty ids")
  return subject


def _index_array(slice_index, n: int, name: str) -> np.ndarray:
  slice_index = np.asarray(slice_index)
  if slice_index.dtype.kind not in "ui" or slice_index.shape != (n,):
    raise DataError(f"{name}: slice_index must be {n} integers (one per image), "
                    f"got dtype {slice_index.dtype}, shape {slice_index.shape}")
  return slice_index.astype(np.int64)


def split_by_subject(subjects, val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
  """Deterministic subject-level split: (train ids, validation ids), each sorted.

  round(val_fraction · #subjects) subjects (at least one when val_fraction > 0) are drawn for
  validation with `np.random.default_rng(seed)` from the sorted unique ids; never split by slice.
  """
  ids = sorted(set(np.asarray(subjects).tolist()))
  if not 0.0 <= val_fraction < 1.0:
    raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
  n_val = int(round(val_fraction * len(ids)))
  if val_fraction > 0:
    n_val = max(n_val, 1)
  if n_val >= len(ids):
    raise DataError(f"cannot hold out {n_val} of {len(ids)} subject(s) for validation and "
                    "keep any for training; lower --val_fraction or add subjects")
  order = np.random.default_rng(seed).permutation(len(ids))
  val = sorted(ids[i] for i in order[:n_val])
  train = sorted(set(ids) - set(val))
  return train, val
