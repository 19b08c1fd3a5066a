"""Unguided samples of the prior beside real slices: is it a prior of brains?

    python experiments/prior_samples.py --checkpoint=WORKDIR --outdir=experiments/results/prior \
        --steps=250 --num=16

Draws `--num` samples from the unconditional prior (the paper's ancestral sampler, no
measurement, `--steps` reverse steps) and shows them in one row above a row of `--num` real
slices drawn at random (`--seed`) from all slices of the validation sets (each set's share:
`--set_weights`, e.g. the training mix `config.data.weights`), the whole stack of
each subject as the prior learnt it (top of the head and cerebellum included); each row is
sorted by head fraction, so that slices of like level stand one above the other. Writes
prior_<steps>.png and prior_<steps>.json: for the samples and for all validation slices, the
statistics a brain slice has (`image_stats`: the fraction of pixels above 0.05, the mean
intensity inside that region, the left-right correlation with the mirror image, the distance
of the head's centre from the image centre, the tilt of its symmetry axis and the mirror
correlation once the tilt and offset are undone, which tell a turned or shifted head from an
asymmetric one (`per_image_stats`); means and standard deviations over images, and each
sample's values under "per_sample", so that two checkpoints sampled with the same seed compare
sample by sample), and, where training slices are found, the correlation of each image with its
nearest training slice (`nearest_training`): a sample that is no brain scores
far below the validation slices (other subjects), a copy of a training slice scores near 1.
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np

import _common
from vdm_mri import api, data, figures, sampling

HEAD_THRESHOLD = 0.05
CHUNK = 1024  # training slices per matrix product in `nearest_training`
MAX_TILT = 30  # degrees either way searched for the head's symmetry axis
AXIS_CHUNK = 16  # images per compiled `symmetry_axis` call


def image_stats(images: np.ndarray, weights: np.ndarray | None = None,
                per_image: dict[str, np.ndarray] | None = None) -> dict:
  """Mean (and standard deviation, `<name>_sd`) over images, weighted by `weights` (default:
  equal), of `per_image_stats` (given, or computed here), the tilt as |tilt|."""
  per_image = dict(per_image_stats(images) if per_image is None else per_image)
  per_image["head_tilt"] = np.abs(per_image["head_tilt"])
  out = {}
  for name, values in per_image.items():
    out.update(_summary(name, values, weights))
  return out


def per_image_stats(images: np.ndarray) -> dict[str, np.ndarray]:
  """[N] per statistic: head fraction (pixels > HEAD_THRESHOLD); mean intensity inside the head;
  left-right Pearson correlation with the mirror image; the distance of the head's centre
  (centroid) from the image centre, pixels; and from `symmetry_axis`, the head's tilt (degrees,
  counter-clockwise positive as displayed) and the mirror correlation once that tilt and offset
  are undone. An image without head pixels has zero head statistics."""
  images = np.asarray(images, np.float32)
  _, height, width = images.shape
  head = images > HEAD_THRESHOLD
  any_head = head.any(axis=(1, 2))
  centre_r, centre_c = _head_centres(images)
  tilt, aligned = symmetry_axis(images)
  return {
      "head_fraction": head.mean(axis=(1, 2)),
      "head_intensity": np.array([im[h].mean() if h.any() else 0.0 for im, h in zip(images, head)]),
      "lr_symmetry": (_unit_rows(images) * _unit_rows(images[:, :, ::-1])).sum(axis=1),
      "head_offset": np.where(any_head, np.hypot(centre_r - (height - 1) / 2,
                                                 centre_c - (width - 1) / 2), 0.0),
      "head_tilt": np.where(any_head, tilt, 0.0),
      "aligned_symmetry": aligned,
  }


def _head_centres(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """[N] row and [N] column of each head region's centroid (the image centre without one)."""
  _, height, width = images.shape
  head = images > HEAD_THRESHOLD
  count = head.sum(axis=(1, 2))
  rows, cols = np.mgrid[:height, :width]
  safe = np.maximum(count, 1)
  centre_r = np.where(count > 0, (head * rows).sum(axis=(1, 2)) / safe, (height - 1) / 2)
  centre_c = np.where(count > 0, (head * cols).sum(axis=(1, 2)) / safe, (width - 1) / 2)
  return centre_r, centre_c


def symmetry_axis(images: np.ndarray, max_tilt: int = MAX_TILT) -> tuple[np.ndarray, np.ndarray]:
  """[N] tilt and [N] aligned symmetry: each image is turned about its head's centroid by every
  whole degree in [-max_tilt, max_tilt], the centroid brought to the image centre (bilinear,
  zero outside), and the turn with the largest mirror correlation kept. The tilt (degrees) is
  minus that turn, in the sense of `augment.affine_warp`: a head rotated by +20 degrees has tilt
  +20; the aligned symmetry is that largest correlation."""
  images = np.asarray(images, np.float32)
  centre_r, centre_c = _head_centres(images)
  angles = jnp.arange(-max_tilt, max_tilt + 1, dtype=jnp.float32)
  tilt, aligned = [], []
  for start in range(0, len(images), AXIS_CHUNK):
    stop = start + AXIS_CHUNK
    best, corr = _best_turn(jnp.asarray(images[start:stop]), jnp.asarray(centre_r[start:stop]),
                            jnp.asarray(centre_c[start:stop]), angles)
    tilt.append(-np.asarray(best))
    aligned.append(np.asarray(corr))
  return np.concatenate(tilt), np.concatenate(aligned)


@jax.jit
def _best_turn(images, centre_r, centre_c, angles):
  _, height, width = images.shape
  rr, cc = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32) - (height - 1) / 2,
                        jnp.arange(width, dtype=jnp.float32) - (width - 1) / 2, indexing="ij")

  def mirror_corr(image, r0, c0, degrees):
    theta = jnp.deg2rad(degrees)
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    src = [cos * rr + sin * cc + r0, cos * cc - sin * rr + c0]  # as in augment.affine_warp
    turned = jax.scipy.ndimage.map_coordinates(image, src, order=1, mode="constant", cval=0.0)
    a = turned - turned.mean()
    b = a[:, ::-1]
    return (a * b).sum() / jnp.maximum((a * a).sum(), 1e-12)

  per_angle = jax.vmap(mirror_corr, in_axes=(None, None, None, 0))
  corr = jax.vmap(per_angle, in_axes=(0, 0, 0, None))(images, centre_r, centre_c, angles)
  best = jnp.argmax(corr, axis=1)
  return angles[best], jnp.take_along_axis(corr, best[:, None], axis=1)[:, 0]


def _summary(name: str, values: np.ndarray, weights: np.ndarray | None) -> dict:
  mean = np.average(values, weights=weights)
  sd = np.sqrt(np.average((values - mean) ** 2, weights=weights))
  return {name: float(mean), f"{name}_sd": float(sd)}


def _unit_rows(images: np.ndarray) -> np.ndarray:
  """[N, H*W] rows with zero mean and unit norm (a constant image: a zero row)."""
  rows = np.asarray(images, np.float32).reshape(len(images), -1)
  rows = rows - rows.mean(axis=1, keepdims=True)
  norm = np.linalg.norm(rows, axis=1, keepdims=True)
  return rows / np.where(norm > 0, norm, 1.0)


def nearest_training(images: np.ndarray, train_images) -> np.ndarray:
  """[N]: each image's largest Pearson correlation with any slice of `train_images` (an
  iterable of [M, H, W] arrays, streamed in chunks of CHUNK slices)."""
  queries = _unit_rows(images)
  best = np.full(len(queries), -1.0, np.float32)
  for block in train_images:
    for start in range(0, len(block), CHUNK):
      corr = _unit_rows(block[start:start + CHUNK]) @ queries.T
      best = np.maximum(best, corr.max(axis=0))
  return best


def training_files(arg: str | None, val_paths) -> list[pathlib.Path]:
  """--train_data (comma-separated; "none": no files), else the `<set>_train.npz` beside each
  `<set>_val.npz` that has one."""
  if arg is not None:
    return [pathlib.Path(p.strip()) for p in arg.split(",") if p.strip() and p.strip() != "none"]
  found = []
  for path in map(pathlib.Path, val_paths):
    if path.stem.endswith("_val"):
      twin = path.with_name(path.stem[:-len("_val")] + "_train.npz")
      if twin.is_file():
        found.append(twin)
  return found


def set_weights(arg: str | None, sizes: list[int]) -> np.ndarray:
  """Per-slice weights [sum(sizes)], summing to 1, from --set_weights (one per validation set:
  a set's share of the pool, split equally over its slices; default: equal per slice)."""
  if arg is None:
    share = np.asarray(sizes, np.float64)
  else:
    try:
      share = np.asarray([float(w) for w in arg.split(",")], np.float64)
    except ValueError:
      raise api.InputError(f"--set_weights={arg!r}: not comma-separated numbers") from None
    if (len(share) != len(sizes) or not np.isfinite(share).all() or (share < 0).any()
        or share.sum() <= 0):
      raise api.InputError(f"--set_weights={arg!r}: need {len(sizes)} non-negative weights, "
                           "one per validation set, not all zero")
  share = share / share.sum()
  return np.concatenate([np.full(n, s / n) for s, n in zip(share, sizes)])


def _read_images(path: pathlib.Path) -> np.ndarray:
  return data.read_npz(path).images.astype(np.float32) / data.QUANT_MAX


def _by_head_fraction(images: np.ndarray) -> np.ndarray:
  return images[np.argsort((images > HEAD_THRESHOLD).mean(axis=(1, 2)), kind="stable")]


def main(argv=None):
  p = _common.parser(__doc__.splitlines()[0], steps=250, quick_steps=4)
  p.add_argument("--num", type=int, default=16, help="samples (and real slices) shown")
  p.add_argument("--train_data", default=None,
                 help="comma-separated training slice .npz files for `nearest_training` "
                 "(default: the <set>_train.npz beside each <set>_val.npz; none: skip it)")
  p.add_argument("--set_weights", default=None,
                 help="comma-separated share of each validation set in the real row and the "
                 "validation statistics, e.g. the training mix config.data.weights "
                 "(default: every slice alike)")
  args = p.parse_args(argv)
  if args.num < 1:
    p.error("--num must be at least 1")
  with _common.exit_on_bad_input():
    vdm_model, params = _common.load_model(args)
    sets = _common.load_sets(args)
    train_paths = training_files(args.train_data, [path for path, _, _ in sets.values()])
    for path in train_paths:
      if not path.is_file():
        raise FileNotFoundError(f"--train_data: no such file {path}")
    weights = set_weights(args.set_weights, [len(images) for _, images, _ in sets.values()])
  steps = _common.num_steps(args)
  pool = np.concatenate([images for _, images, _ in sets.values()])
  set_of = np.concatenate([np.full(len(images), name) for name, (_, images, _) in sets.items()])
  rng = np.random.default_rng(args.seed)
  real = pool[rng.choice(len(pool), args.num, replace=args.num > np.count_nonzero(weights),
                        p=weights)]
  samples = sampling.prior_samples(vdm_model, params, key=jax.random.key(args.seed),
                                   num=args.num, num_steps=steps, batch_size=args.batch_size)
  samples = np.asarray(samples, np.float32)
  outdir = pathlib.Path(args.outdir)
  png = figures.save_png(
      figures.grid({f"prior, {steps} steps": _by_head_fraction(samples),
                    "validation": _by_head_fraction(real)}), outdir / f"prior_{steps}.png")
  print(f"wrote {png}")
  per_sample = per_image_stats(samples)
  report = {"checkpoint": _common.display_path(_common.workdir.resolve(args.checkpoint)),
            "steps": steps, "num": args.num, "seed": args.seed,
            "validation_slices": int(len(pool)),
            "validation_set_shares": {name: float(weights[set_of == name].sum()) for name in sets},
            "samples": image_stats(samples, per_image=per_sample),
            "validation": image_stats(pool, weights),
            "per_sample": {name: [round(float(v), 5) for v in values]
                           for name, values in per_sample.items()}}
  if train_paths:
    nearest = nearest_training(np.concatenate([samples, pool]),
                               (_read_images(path) for path in train_paths))
    report["train_data"] = [_common.display_path(path) for path in train_paths]
    for key, values, w in (("samples", nearest[:len(samples)], None),
                           ("validation", nearest[len(samples):], weights)):
      report[key].update(_summary("nearest_training", values, w),
                         nearest_training_max=float(values.max()))
    report["per_sample"]["nearest_training"] = [round(float(v), 5) for v in nearest[:len(samples)]]
  else:
    print("nearest_training: no training slices found (--train_data), not computed")
  for k in ("samples", "validation"):
    print(f"{k:>10}: " + ", ".join(f"{n} {v:.3f}" for n, v in report[k].items()
                                   if not n.endswith("_sd")))
  _common.write_json(outdir / f"prior_{steps}.json", report)
  return report


if __name__ == "__main__":
  main()
