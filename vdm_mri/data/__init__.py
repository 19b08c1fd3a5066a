"""Brain MR slice data: readers, the `brain_mri` TFDS builder and grain input pipelines.

Images are magnitude slices x in [0, 1] stored on a 12-bit grid (uint16 x·4095), axial,
row 0 = anterior, column 0 = patient left; splits are always by subject.

Training (what `train.py` needs):
  source = open_split("train", data_dir)        # data_dir=None: default_data_dir()
  it = train_iterator(source, global_batch=128, seed=0)   # per-process {'image': f32 [B,H,W,1]}
  batch = next(it); state = it.get_state(); it.set_state(state)
  mngr.save(step, args=ocp.args.Composite(..., data=checkpoint_args(it)))
  mngr.restore(step, args=ocp.args.Composite(..., data=checkpoint_args(it, restore=True)))
  for batch in eval_batches(open_split("validation", data_dir), batch_size=64): ...
                                                # + 'subject', 'slice_index', 'valid' (padding)
Small runs and tests need no build step: `ArraySource(images)` or `ArraySource(read_npz(path))`.

API:
  default_data_dir() -> Path | None          `<repo root>/../shared/data` if present
  open_split(split, data_dir=None, *, name=None) -> source   TFDS build, else *_train/_val.npz
  find_datasets(paths="") -> [DataSet(name, train, validation)]   several sets (comma list)
  parse_weights(text, num_sets) -> mixing weights | None     "0.7,0.3" (train_iterator weights=)
  validation_files(paths=None) -> [Path]     --data, else the shared validation sets, else the
                                              bundled sample (the experiments' default)
  ArraySource(slices_or_images, subject=None, slice_index=None)   in-memory source
  train_iterator(source, *, global_batch, seed, process_index=None, process_count=None,
                 num_epochs=None, num_threads=4, weights=None) -> grain.DatasetIterator
                                              (source: one, or a list mixed by weights)
  eval_batches(source, *, batch_size, process_index=None, process_count=None) -> Iterator[dict]
  checkpoint_args(iterator, *, restore=False) -> Orbax args (grain's per-process JSON handler)
  read_npz(path) -> Slices                    validated slice file
  read_sources(paths, *, matrix=128, fov_mm=240.0, skip_bad=False) -> (Slices, ReadReport)
                                              .npz files, NIfTI folders/files
  split_by_subject(subjects, val_fraction, seed) -> (train ids, val ids)
  DataError                                   bad input; the message names the file
  builder.BrainMri, builder.BrainMriConfig, builder.build(config, data_dir)   (imports tfds)
Command line: `python -m vdm_mri.data.prepare --source=... --data_dir=...` (see prepare.py).
process_index/process_count default to jax.process_index()/jax.process_count().
"""

from vdm_mri.data.loader import ArraySource
from vdm_mri.data.loader import DataSet
from vdm_mri.data.loader import find_datasets
from vdm_mri.data.loader import parse_weights
from vdm_mri.data.loader import checkpoint_args
from vdm_mri.data.loader import default_data_dir
from vdm_mri.data.loader import eval_batches
from vdm_mri.data.loader import open_split
from vdm_mri.data.loader import train_iterator
from vdm_mri.data.loader import validation_files
from vdm_mri.data.loader import NO_DATA
from vdm_mri.data.slices import DataError
from vdm_mri.data.slices import QUANT_MAX
from vdm_mri.data.slices import read_npz
from vdm_mri.data.slices import Slices
from vdm_mri.data.slices import split_by_subject
from vdm_mri.data.sources import read_sources

__all__ = [
    "ArraySource", "DataSet", "find_datasets", "parse_weights", "checkpoint_args", "default_data_dir", "eval_batches", "open_split",
    "train_iterator", "DataError", "QUANT_MAX", "read_npz", "Slices", "split_by_subject",
    "read_sources", "validation_files", "NO_DATA",
]
