r"""Builds the `brain_mri` TFDS dataset (array_record) from slice files or NIfTI volumes.

  python -m vdm_mri.data.prepare --source=/data/brain_t1w_train.npz \
      --val_source=/data/brain_t1w_val.npz --data_dir=~/tensorflow_datasets
  python -m vdm_mri.data.prepare --source=/my/nifti_folder --data_dir=/my/tfds \
      --matrix=128 --val_fraction=0.1 --seed=0 --skip_bad

Prints what it found; bad input gives a one-line error and exit code 2 with nothing written.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import pathlib
import sys
import warnings

from vdm_mri.data.slices import DataError


def parse_args(argv):
  p = argparse.ArgumentParser(prog="python -m vdm_mri.data.prepare", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--source", action="extend", nargs="+", required=True,
                 help="slice .npz file(s), NIfTI folder(s) or files; repeat or comma-separate")
  p.add_argument("--val_source", action="extend", nargs="+", default=[],
                 help="validation sources; if given, --val_fraction is not used")
  p.add_argument("--data_dir", required=True, help="TFDS data dir to write into")
  p.add_argument("--matrix", type=int, default=128, help="in-plane size of the slices")
  p.add_argument("--fov_mm", type=float, default=240.0,
                 help="square field of view for NIfTI input; 0 = tight around the head")
  p.add_argument("--val_fraction", type=float, default=0.1,
                 help="fraction of subjects held out for validation (0: no validation split)")
  p.add_argument("--seed", type=int, default=0, help="seed of the subject split")
  p.add_argument("--skip_bad", action="store_true", help="skip bad files with a warning")
  p.add_argument("--name", default=None, help="config name (default: npz_<matrix>/nifti_<matrix>)")
  p.add_argument("--overwrite", action="store_true", help="replace an existing build")
  args = p.parse_args(argv)
  args.source = _split_commas(args.source)
  args.val_source = _split_commas(args.val_source)
  return args


def _split_commas(values):
  return tuple(v for value in values for v in value.split(",") if v)


def main(argv=None) -> int:
  args = parse_args(argv)
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (slow import)
  from vdm_mri.data import builder as builder_lib  # pylint: disable=g-import-not-at-top
  tfds.disable_progress_bar()
  logging.getLogger("absl").setLevel(logging.ERROR)  # TFDS chatter ("custom data configuration")
  if args.matrix < 8:
    print(f"error: --matrix must be at least 8, got {args.matrix}", file=sys.stderr)
    return 2
  config = builder_lib.BrainMriConfig(
      name=args.name or builder_lib.default_config_name(args.source, args.matrix),
      source=args.source, val_source=args.val_source, matrix=args.matrix,
      fov_mm=args.fov_mm or None, val_fraction=args.val_fraction, seed=args.seed,
      skip_bad=args.skip_bad)
  try:
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always")
      with contextlib.redirect_stdout(io.StringIO()):  # TFDS prints the temporary build path
        built = builder_lib.build(config, args.data_dir, overwrite=args.overwrite)
  except DataError as e:
    print("error: " + " ".join(str(e).split()), file=sys.stderr)
    return 2
  for w in caught:  # skipped files are listed in the summary
    if not str(w.message).startswith("skipping ") and issubclass(w.category, UserWarning):
      print(f"warning: {w.message}", file=sys.stderr)
  print(summary(built.info.metadata, pathlib.Path(built.data_dir)))
  return 0


def summary(metadata, path) -> str:
  read, splits = metadata["read"], metadata["splits"]
  lines = [f"read {len(read['files'])} file(s): {read['volumes']} volume(s)/subject(s), "
           f"{read['slices_kept']} slices kept, {read['slices_dropped']} dropped "
           f"(< 5% of pixels above 0.1)"]
  lines += [f"skipped {name}: {why}" for name, why in read["skipped"]]
  for split, s in splits.items():
    lines.append(f"{split}: {len(s['subjects'])} subject(s), {s['slices']} slices")
  name = f"{path.parent.parent.name}/{path.parent.name}"
  lines.append(f"wrote {path}\nread it with tfds.data_source('{name}', "
               f"data_dir='{path.parent.parent.parent}') or vdm_mri.data.open_split(...)")
  return "\n".join(lines)


if __name__ == "__main__":
  sys.exit(main())
