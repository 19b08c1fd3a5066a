"""Shared plumbing of the experiment scripts: flags, the model, validation slices, outputs.

Every script: `--checkpoint=WORKDIR` (a training work dir; default: the bundled pretrained prior),
`--data` (comma-separated slice .npz files, one validation set each; default: the shared
validation sets ../shared/data/brain_t1w_val.npz and brain_t1w_skull_val.npz that exist, else the
bundled 16-slice sample), `--outdir`, `--quick` (a few slices and steps: minutes on a CPU). Every
script reports per set; a set is named by its file stem without a trailing `_val`
(brain_t1w, brain_t1w_skull, brain_t1w_sample). Bad input: one line, exit 2.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import json
import os
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

from vdm_mri import (api, atomic, baselines, data, kspace, metrics, sampling, validation,
                     workdir)
from vdm_mri import model as model_lib

REPO = pathlib.Path(__file__).resolve().parents[1]


def parser(description: str, *, steps: int | None = None, quick_steps: int = 20,
           sampler: str | None = None) -> argparse.ArgumentParser:
  """The flags every script shares. `steps`: the default --steps (None: the checkpoint's
  config.sampling.steps, resolved by `load_model`); `sampler`: the default --sampler of a
  script that has it (None: the checkpoint's config.sampling.sampler); a script with its own
  sampler (the paper's figures) also draws independent samples unless --antithetic."""
  p = argparse.ArgumentParser(description=description)
  p.add_argument("--checkpoint", default=None, help="training work dir (orbax checkpoints)")
  p.add_argument("--config", default=None, help="config file; default: WORKDIR/config.json")
  p.add_argument("--data", default=None, help="comma-separated validation slice .npz files, "
                 "one set each (default: the shared validation sets, else the bundled sample)")
  p.add_argument("--outdir", required=True, help="folder for the PNG and CSV/JSON outputs")
  p.add_argument("--quick", action="store_true", help="few slices and steps (CPU smoke run)")
  p.add_argument("--steps", type=int, default=None,
                 help=f"reverse steps (default {steps or 'the checkpoint config.sampling.steps'}, "
                 f"--quick {quick_steps}; the paper: 1000)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--batch_size", type=int, default=8, help="images per compiled sampler call")
  p.set_defaults(default_steps=steps, quick_steps=quick_steps, default_sampler=sampler)
  return p


def add_sampling_flags(p: argparse.ArgumentParser):
  """--num_samples, --lam, --sampler, --eta, --t_start, --antithetic; each defaults to the checkpoint's
  config.sampling (as `python -m vdm_mri.sample` does)."""
  p.add_argument("--num_samples", type=int, default=None,
                 help="posterior samples K (default: config.sampling.num_samples)")
  p.add_argument("--lam", type=float, default=None, help="guidance weight λ (paper sampler)")
  p.add_argument("--sampler", default=None, choices=sampling.SAMPLERS, help="sampler")
  p.add_argument("--eta", type=float, default=None, help="η of the projection sampler")
  p.add_argument("--t_start", type=float, default=None, help="warm start t (1: from noise)")
  p.add_argument("--antithetic", action=argparse.BooleanOptionalAction, default=None,
                 help="K/2 antithetic pairs instead of K independent samples")


def num_steps(args) -> int:
  """--steps, else the --quick steps, else the script's default, else the checkpoint's."""
  if args.steps is not None:
    return args.steps
  if args.quick:
    return args.quick_steps
  if args.default_steps is not None:
    return args.default_steps
  return args.checkpoint_sampling.steps


def sampling_kwargs(args) -> dict:
  """Keyword arguments of sampling.posterior_samples from the flags over config.sampling
  (api.SamplingOptions); batch size and final projection are the script's own. Bad options
  (e.g. an odd K with antithetic pairs) exit with code 2."""
  flags = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(api.SamplingOptions)
           if f.name not in ("steps", "batch_size", "final_projection")}
  flags["sampler"] = flags.get("sampler") or args.default_sampler
  if flags.get("antithetic") is None and args.default_sampler:
    flags["antithetic"] = False  # the paper's figures: its sampler, independent samples
  with exit_on_bad_input():
    opts = args.checkpoint_sampling.replace(**flags, steps=num_steps(args)).posterior_kwargs()
  return {k: v for k, v in opts.items() if k not in ("batch_size", "final_projection")}


@contextlib.contextmanager
def exit_on_bad_input():
  """InputError / CheckpointError / DataError from loading -> one line on stderr, exit code 2."""
  try:
    yield
  except (api.InputError, workdir.CheckpointError, data.DataError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def load_model(args):
  """(model.VDM, EMA params) from --checkpoint (and --config); the prior's sampling defaults
  go to args.checkpoint_sampling (api.SamplingOptions)."""
  config = model_lib.load_config_file(args.config) if args.config else None
  prior = api.load_prior(args.checkpoint, config)
  args.checkpoint_sampling = prior.options
  return prior.model, prior.params


data_paths = data.validation_files  # --data, else the shared validation sets, else the sample


def set_name(path) -> str:
  """A validation set's name: the file stem without a trailing `_val`."""
  stem = pathlib.Path(path).stem
  return stem[:-len("_val")] if stem.endswith("_val") and stem != "_val" else stem


def display_path(path) -> str:
  """`path` relative to the repository (e.g. ../shared/data/x.npz): what outputs record, so that
  committed results name no machine's directories."""
  return os.path.relpath(pathlib.Path(path).resolve(), REPO)


def load_sets(args) -> dict[str, tuple[str, np.ndarray, np.ndarray]]:
  """{set name: (path relative to the repository, images [N, H, W] float32 in [0, 1],
  subjects [N])} from --data, in order."""
  sets = {}
  for path in data_paths(args.data):
    name = set_name(path)
    if name in sets:
      raise api.InputError(f"--data: two files give the set name {name!r} "
                              f"({sets[name][0]} and {path})")
    slices = data.read_npz(path)
    images = slices.images.astype(np.float32) / data.QUANT_MAX
    shown = display_path(path)
    print(f"data {name}: {shown} ({images.shape[0]} slices, {len(set(slices.subject))} subjects)")
    sets[name] = (shown, images, np.asarray(slices.subject))
  return sets


pick_slices = validation.pick_slices  # the fixed, stated subset that training validates on


parse_size = kspace.parse_size  # "32x32" -> (32, 32)


def baseline_images(y0, full_shape) -> dict[str, np.ndarray]:
  """Zero-filling, bilinear and bicubic (grid-aligned) from the measurement: {name: [N, H, W]}."""
  return {name: np.asarray(fn(y0, full_shape), np.float32) for name, fn in (
      ("zero-fill", baselines.zero_fill), ("bilinear", baselines.bilinear),
      ("bicubic", baselines.bicubic))}


def lowres_display(y0, full_shape) -> np.ndarray:
  """|low-res image|, nearest-neighbour enlarged on the centred-DFT grid: [N, H, W]."""
  x_lr = np.abs(np.asarray(kspace.lowres_from_measurement(jnp.asarray(y0), full_shape)))
  return baselines.nearest_enlarge(x_lr, full_shape)


def scores(gt, pred, subjects, y0=None) -> dict:
  """Per-volume PSNR / SSIM / NMSE averaged over subjects, and the mean data-consistency
  residual when the measurement is given."""
  out = metrics.evaluate(gt, pred, subjects)
  out.pop("per_subject")
  if y0 is not None:
    out["residual"] = float(np.mean(metrics.data_consistency(jnp.asarray(pred), y0)))
  return out


_atomic_write = atomic.write_text


def write_json(path: pathlib.Path, obj):
  _atomic_write(path, json.dumps(obj, indent=2, default=float) + "\n")
  print(f"wrote {path}")


def write_text(path: pathlib.Path, text: str):
  _atomic_write(path, text)
  print(f"wrote {path}")


def write_csv(path: pathlib.Path, rows: list[dict]):
  import io
  buf = io.StringIO()
  # every key of every row, in order of first appearance: rows may differ (a params dir has no
  # training speed, a work dir has); a missing value is an empty cell (DictWriter's restval)
  writer = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for row in rows for k in row)))
  writer.writeheader()
  writer.writerows(rows)
  _atomic_write(path, buf.getvalue())
  print(f"wrote {path}")


def measure(images, lowres, sigma_y: float, key):
  """ŷ₀ for each image: [N, h, w] complex64 (σ_y complex noise, per-image keys)."""
  keys = jax.random.split(key, images.shape[0])
  return jax.vmap(lambda x, k: kspace.measure(x, lowres, key=k, sigma_y=sigma_y))(
      jnp.asarray(images), keys)
