"""Input pipelines: random-access sources -> grain training iterator and eval batches.

A *source* is anything with `len()` and `source[i] -> {'image': uint16 [H, W, 1] (12-bit),
'subject': str | bytes, 'slice_index': int}`: a TFDS array_record data source or an ArraySource.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from collections.abc import Iterator, Sequence
from typing import Any

import grain
import numpy as np

import vdm_mri
from vdm_mri.data import slices as slices_lib
from vdm_mri.data.slices import DataError, QUANT_MAX, Slices

SPLITS = {"train": ("train",), "validation": ("val", "validation")}
PREPARE_HINT = ("prepare data with: python -m vdm_mri.data.prepare --source=<slice .npz files or "
                "a folder of NIfTI volumes> --data_dir={data_dir}")
NO_DATA = ("no data path given (config.data.path, --data_dir, --data) and no <repo>/../shared/data; "
           + PREPARE_HINT.format(data_dir="DIR") + ", then pass --data_dir=DIR")
"""The one message for "no data anywhere" (training, the experiments)."""
VALIDATION_FILES = ("brain_t1w_val.npz", "brain_t1w_skull_val.npz")
"""The validation sets in the shared data dir, skull-stripped first."""


class ArraySource:
  """In-memory slices as a grain random-access source (no build step)."""

  def __init__(self, data: Slices | np.ndarray, subject=None, slice_index=None):
    """`data`: a Slices, or images ([N, H, W(, 1)] uint in [0, 4095] or float in [0, 1])."""
    self.slices = data if isinstance(data, Slices) else Slices.from_arrays(
        data, subject, slice_index)

  def __len__(self) -> int:
    return len(self.slices)

  def __getitem__(self, i: int) -> dict:
    s = self.slices
    return {"image": s.images[i, :, :, None], "subject": str(s.subject[i]),
            "slice_index": int(s.slice_index[i])}

  def __repr__(self) -> str:
    return f"ArraySource({len(self)} slices of {self.slices.images.shape[1:]})"


def default_data_dir() -> pathlib.Path | None:
  """`<repo root>/../shared/data` when it exists (repo root = parent of the package), else None."""
  path = pathlib.Path(vdm_mri.__file__).resolve().parent.parent.parent / "shared" / "data"
  return path if path.is_dir() else None


def open_split(split: str = "train", data_dir=None, *, name: str | None = None):
  """The source of one split ('train' or 'validation'/'val') found in `data_dir`.

  Looks for, in order: a TFDS build `brain_mri/<config>/<version>/` (`name` = 'brain_mri/<config>'
  picks one when there are several), then slice files `*_train.npz` / `*_val.npz` (read into an
  ArraySource). `data_dir` defaults to `default_data_dir()`. Raises DataError with the
  `python -m vdm_mri.data.prepare ...` command when nothing is found.
  """
  split = "validation" if split == "val" else split
  if split not in SPLITS:
    raise DataError(f"unknown split {split!r}; use one of {sorted(SPLITS)}")
  data_dir = default_data_dir() if data_dir is None else pathlib.Path(data_dir)
  if data_dir is None:
    raise DataError(NO_DATA)
  if not data_dir.is_dir():
    raise DataError(f"data directory {data_dir} does not exist; "
                    + PREPARE_HINT.format(data_dir="<dir>"))
  builds = _find_builds(data_dir, name)
  if len(builds) > 1:
    raise DataError(f"{data_dir}: several builds {[str(b) for b in builds]}; pick one with "
                    "name='brain_mri/<config>'")
  if builds:
    return _tfds_split(builds[0], split)
  npz = sorted(p for suffix in SPLITS[split] for p in data_dir.glob(f"*_{suffix}.npz"))
  if len(npz) > 1:
    raise DataError(f"{data_dir}: several {split} files {[p.name for p in npz]}")
  if npz:
    return ArraySource(slices_lib.read_npz(npz[0]))
  raise DataError(f"{data_dir}: no brain MR data for split {split!r} (no TFDS build "
                  "brain_mri/<config>/<version>/, no *_train.npz / *_val.npz); "
                  + PREPARE_HINT.format(data_dir=data_dir))


def validation_files(paths: str | None = None) -> list[pathlib.Path]:
  """Slice files to validate on: `paths` (comma-separated), else the shared validation sets
  (VALIDATION_FILES in `default_data_dir()`) that exist, else the bundled 16-slice sample."""
  if paths:
    return [pathlib.Path(part.strip()) for part in paths.split(",") if part.strip()]
  shared = default_data_dir()
  found = [shared / name for name in VALIDATION_FILES] if shared is not None else []
  return [p for p in found if p.exists()] or [vdm_mri.SAMPLE_DATA]


@dataclasses.dataclass(frozen=True)
class DataSet:
  """One named data set: its training source and its validation source (None if absent)."""

  name: str
  train: Any
  validation: Any | None


def find_datasets(paths: str | Sequence[str] = "") -> list[DataSet]:
  """The data sets named by `paths` (a list, or one comma-separated string; "" means
  `default_data_dir()`), in order.

  Each entry is a slice `.npz` file (training only, named by its stem), a TFDS build directory
  (one set, both splits), or a folder of slice files where every `<name>_train.npz` is one set,
  paired with `<name>_val.npz` when present (`../shared/data` holds two: `brain_t1w` and
  `brain_t1w_skull`). Raises DataError naming the entry that holds no data.
  """
  entries = [p.strip() for p in (paths.split(",") if isinstance(paths, str) else paths)]
  entries = [p for p in entries if p]
  if not entries:
    default = default_data_dir()
    if default is None:
      raise DataError(NO_DATA)
    entries = [str(default)]
  sets = []
  for entry in entries:
    where = pathlib.Path(entry)
    if where.suffix == ".npz":
      if not where.is_file():
        raise DataError(f"{where}: no such slice file")
      sets.append(DataSet(_set_name(where.stem), ArraySource(slices_lib.read_npz(where)), None))
      continue
    if where.is_dir() and not _find_builds(where, None):
      pairs = sorted(where.glob("*_train.npz"), key=lambda p: p.name[:-len("_train.npz")])
      if len(pairs) > 1:
        for train_file in pairs:
          stem = train_file.name[:-len("_train.npz")]
          val = [where / f"{stem}_{s}.npz" for s in SPLITS["validation"]]
          val = [v for v in val if v.is_file()]
          sets.append(DataSet(stem, ArraySource(slices_lib.read_npz(train_file)),
                              ArraySource(slices_lib.read_npz(val[0])) if val else None))
        continue
    train = open_split("train", where)
    try:
      validation = open_split("validation", where)
    except DataError:
      validation = None
    sets.append(DataSet(where.name or str(where), train, validation))
  names = [s.name for s in sets]
  if len(set(names)) != len(names):
    raise DataError(f"data sets with the same name {names}; rename the files or folders")
  return sets


def _set_name(stem: str) -> str:
  for suffix in ("_train", "_val", "_validation"):
    if stem.endswith(suffix):
      return stem[:-len(suffix)]
  return stem


def parse_weights(text: str | Sequence[float], num_sets: int) -> list[float] | None:
  """Mixing weights from a config value ("" or "0.7,0.3" or a sequence): None (mix in
  proportion to the sets' sizes) or `num_sets` positive floats. Raises DataError."""
  if isinstance(text, str):
    items = [w.strip() for w in text.split(",") if w.strip()]
    try:
      weights = [float(w) for w in items]
    except ValueError:
      raise DataError(f"data weights {text!r}: not comma-separated numbers") from None
  else:
    weights = [float(w) for w in text]
  if not weights:
    return None
  if len(weights) != num_sets:
    raise DataError(f"{len(weights)} data weights {weights} for {num_sets} data sets")
  if not all(math.isfinite(w) and w > 0 for w in weights):
    raise DataError(f"data weights {weights} must be positive")
  return weights


def _find_builds(data_dir: pathlib.Path, name: str | None) -> list[pathlib.Path]:
  pattern = f"{name or slices_lib.DATASET_NAME + '/*'}/*/dataset_info.json"
  return sorted(p.parent for p in data_dir.glob(pattern))


def _tfds_split(build_dir: pathlib.Path, split: str):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder_from_directory(build_dir)
  if split not in builder.info.splits:
    raise DataError(f"{build_dir}: no split {split!r} (has {sorted(builder.info.splits)})")
  return builder.as_data_source(split=split)


def _process(process_index, process_count) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  return process_index, process_count


def _image_only(example: dict) -> np.ndarray:
  return example["image"]  # [H, W, 1] uint16


def _to_float(images: np.ndarray) -> dict:
  return {"image": images.astype(np.float32) / QUANT_MAX}  # [B, H, W, 1] on the 12-bit grid


def train_iterator(source, *, global_batch: int, seed: int, process_index: int | None = None,
                   process_count: int | None = None, num_epochs: int | None = None,
                   num_threads: int = 4,
                   weights: Sequence[float] | None = None) -> grain.DatasetIterator:
  """Shuffled, repeated, per-process batches `{'image': float32 [B, H, W, 1]}`, B = global/count.

  `source` may be a list of sources: each is shuffled and repeated as below (seed + its
  position) and they are interleaved in the proportions `weights` (default: their sizes), so a
  batch draws set i with probability weights[i] / sum(weights) (deterministic interleaving,
  grain's `MapDataset.mix`); `num_epochs` must then be None.

  Every epoch is a fresh permutation (seed + epoch) of the whole source. All processes define
  the same stream of global batches; process p reads only rows p·B … (p+1)·B - 1 of each, so the
  processes' batches, concatenated in process order (`jax.make_array_from_process_local_data`),
  are the global batch of a single process: its images and their order do not depend on the
  number of processes. Batches run across epoch boundaries; with `num_epochs` the final partial
  global batch is dropped. `process_index`/`process_count` default to
  `jax.process_index()`/`jax.process_count()`. The iterator's `get_state()`/`set_state()` resume
  exactly (see `checkpoint_args`).
  """
  index, count = _process(process_index, process_count)
  if global_batch % count:
    raise ValueError(f"global_batch {global_batch} is not divisible by {count} processes")
  batch = global_batch // count
  sources = list(source) if isinstance(source, (list, tuple)) else [source]
  if len(sources) > 1 and num_epochs is not None:
    raise ValueError("num_epochs is undefined for a mixture of several sources")

  def shuffled(src, seed_i):
    if len(src) < batch:
      raise DataError(f"{len(src)} examples, fewer than the per-process batch {batch}")
    return grain.MapDataset.source(src).shuffle(seed=seed_i).repeat(num_epochs).map(_image_only)

  if len(sources) == 1:
    ds = shuffled(sources[0], seed)
  else:
    weights = [len(s) for s in sources] if weights is None else list(weights)
    if len(weights) != len(sources):
      raise ValueError(f"{len(weights)} weights for {len(sources)} sources")
    ds = grain.MapDataset.mix([shuffled(s, seed + i) for i, s in enumerate(sources)],
                              [float(w) for w in weights])
  # Local batch k of the stream is rows (k mod count)·B … of global batch k // count.
  ds = ds.batch(batch, drop_remainder=True)
  ds = ds[index:len(ds) - len(ds) % count:count].map(_to_float)
  options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * num_threads)
  return iter(ds.to_iter_dataset(options))


def eval_batches(source, *, batch_size: int, process_index: int | None = None,
                 process_count: int | None = None) -> Iterator[dict]:
  """One ordered pass: `{'image' float32 [B, H, W, 1], 'subject' str [B], 'slice_index' [B],
  'valid' bool [B]}`, B = `batch_size` per process.

  Global batch g holds examples g·B·count … in order; process p takes its rows p·B … (p+1)·B - 1,
  so the global batches do not depend on the number of processes. Rows past the end are padding
  (image 0, subject '', slice_index -1, valid False) and every process yields the same number of
  batches, so collective eval steps stay in lock step.
  """
  index, count = _process(process_index, process_count)
  n_batches = math.ceil(len(source) / (batch_size * count))
  for b in range(n_batches):
    start = (b * count + index) * batch_size
    rows = [source[int(i)] for i in range(start, min(start + batch_size, len(source)))]
    shape = np.shape(rows[0]["image"]) if rows else np.shape(source[0]["image"])
    images = np.zeros((batch_size, *shape), np.uint16)
    subject = np.full(batch_size, "", dtype=object)
    slice_index = np.full(batch_size, -1, np.int64)
    for j, row in enumerate(rows):
      images[j] = row["image"]
      s = row["subject"]
      subject[j] = s.decode() if isinstance(s, bytes) else str(s)
      slice_index[j] = row["slice_index"]
    valid = np.arange(batch_size) < len(rows)
    yield {**_to_float(images), "subject": subject.astype(str), "slice_index": slice_index,
           "valid": valid}


def checkpoint_args(iterator: grain.DatasetIterator, *, restore: bool = False):
  """Orbax args that save (or restore in place) the iterator state inside a checkpoint.

  Uses grain's own Orbax handler: one JSON file per process (`process_<i>-of-<n>.json`), so it
  works multi-host. Usage with an `ocp.CheckpointManager`:
    save:    args=ocp.args.Composite(state=..., data=checkpoint_args(it))
    restore: args=ocp.args.Composite(state=..., data=checkpoint_args(it, restore=True))
  The restored iterator must be built with the same source, seed, batch and process count.
  """
  return (grain.checkpoint.CheckpointRestore if restore else grain.checkpoint.CheckpointSave)(
      iterator)
