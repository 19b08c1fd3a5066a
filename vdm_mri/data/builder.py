"""TFDS builder `brain_mri`: slice sets -> array_record files, built and read without TensorFlow.

Features: `image` uint16 [m, m, 1] (x = image / 4095, zlib-compressed), `subject` text,
`slice_index` int32. Splits `train` and (unless val_fraction == 0) `validation`, each ordered by
(subject, slice_index). The build settings and what the read found are in `info.metadata`.

Built files: `<data_dir>/brain_mri/<config name>/1.0.0/`. Read them back with
`tfds.data_source('brain_mri/<config name>', data_dir=...)` or `vdm_mri.data.open_split`.
"""

from __future__ import annotations

import dataclasses
import pathlib
import shutil
import tempfile

import numpy as np
import tensorflow_datasets as tfds

from vdm_mri.data import sources as sources_lib
from vdm_mri.data.slices import DATASET_NAME as NAME
from vdm_mri.data.slices import DataError, QUANT_MAX

VERSION = "1.0.0"


@dataclasses.dataclass(eq=False)
class BrainMriConfig(tfds.core.BuilderConfig):
  """Where the slices come from and how they are made (see `sources.read_sources`)."""

  source: tuple[str, ...] = ()  # .npz files, NIfTI folders or files
  val_source: tuple[str, ...] = ()  # if given: the validation split, and val_fraction is unused
  matrix: int = 128  # target in-plane size
  fov_mm: float | None = 240.0  # square field of view for NIfTI input (None: tight)
  val_fraction: float = 0.1  # fraction of subjects held out for validation
  seed: int = 0  # seed of the subject split
  skip_bad: bool = False  # skip unreadable/inconsistent files with a warning


class BrainMri(tfds.core.GeneratorBasedBuilder):
  """128x128 (configurable) axial brain MR magnitude slices on a 12-bit grid."""

  VERSION = tfds.core.Version(VERSION)
  RELEASE_NOTES = {"1.0.0": "Slices from .npz slice files or NIfTI folders."}

  def _info(self) -> tfds.core.DatasetInfo:
    m = self.builder_config.matrix
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__.splitlines()[0],
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(m, m, 1), dtype=np.uint16,
                                          encoding=tfds.features.Encoding.ZLIB),
            "subject": tfds.features.Text(),
            "slice_index": tfds.features.Scalar(dtype=np.int32),
        }),
        metadata=tfds.core.MetadataDict(),
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # everything is local
    c = self.builder_config
    read = dict(matrix=c.matrix, fov_mm=c.fov_mm, skip_bad=c.skip_bad)
    train, report = sources_lib.read_sources(c.source, **read)
    val = None
    if c.val_source:
      val, val_report = sources_lib.read_sources(c.val_source, **read)
      _merge(report, val_report)
    splits = sources_lib.make_splits(train, val, val_fraction=c.val_fraction, seed=c.seed)
    self.info.metadata.update({
        "config": {f.name: getattr(c, f.name) for f in dataclasses.fields(BrainMriConfig)
                   if f.name not in ("version", "release_notes", "supported_versions", "tags")},
        "quant_max": QUANT_MAX,
        "orientation": "row0=anterior, col0=patient left",
        "read": dataclasses.asdict(report),
        "splits": {k: {"subjects": sorted(set(v.subject.tolist())), "slices": len(v)}
                   for k, v in splits.items()},
    })
    return {k: self._generate_examples(v) for k, v in splits.items()}

  def _generate_examples(self, slices):
    for i in range(len(slices)):
      yield i, {"image": slices.images[i, :, :, None], "subject": str(slices.subject[i]),
                "slice_index": int(slices.slice_index[i])}


def _merge(report, other):
  report.files += other.files
  report.volumes += other.volumes
  report.skipped += other.skipped
  report.slices_kept += other.slices_kept
  report.slices_dropped += other.slices_dropped


def default_config_name(source, matrix: int) -> str:
  """`npz_128`, `nifti_128` or `mixed_128` after the kinds of source paths."""
  kinds = {"npz" if str(p).endswith(".npz") else "nifti" for p in source}
  return f"{kinds.pop() if len(kinds) == 1 else 'mixed'}_{matrix}"


def build(config: BrainMriConfig, data_dir, *, overwrite: bool = False) -> tfds.core.DatasetBuilder:
  """Builds the dataset into `data_dir` atomically and returns a builder reading the result.

  The build runs in a temporary folder inside `data_dir` and is renamed into place only when
  complete, so a failed build (DataError) leaves nothing behind. An existing build of the same
  config is an error unless `overwrite`.
  """
  data_dir = pathlib.Path(data_dir)
  final = data_dir / NAME / config.name / VERSION
  if final.exists() and not overwrite:
    raise DataError(f"{final} already exists (pass --overwrite to rebuild)")
  created = not data_dir.exists()
  data_dir.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{NAME}-building-", dir=data_dir))
  try:
    builder = BrainMri(config=config, data_dir=tmp, file_format="array_record")
    builder.download_and_prepare(download_dir=tmp / "downloads")
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
      old = tmp / "replaced"
      final.rename(old)
    (tmp / NAME / config.name / VERSION).rename(final)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    if created:
      shutil.rmtree(data_dir, ignore_errors=True)
    raise
  shutil.rmtree(tmp, ignore_errors=True)
  return tfds.builder_from_directory(final)
