"""Paper Fig. 4: the guidance weight λ from 0 (prior samples, unrelated to the measurement) to 1.

Columns: one validation slice per row, one λ per column, the same noise for every λ; the last
column is the ground truth. Prints PSNR and the data-consistency residual per λ. Per validation
set: lambda_sweep_<set>.png, and one CSV lambda_sweep.csv with a `set` column.

    python experiments/fig4_lambda.py --checkpoint=WORKDIR --outdir=experiments/results/fig4
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np

import _common
from vdm_mri import figures, metrics, sampling

LAMBDAS = (0.0, 0.01, 0.05, 0.1, 0.3, 0.6, 1.0)


def sweep(sampler, params, mesh, x, y0, lams, key):
  """The guided sample of every slice x [S, H, W] for each λ with the same keys:
  ({"lam=λ": [S, H, W]}, [{"lam", "psnr_mean", "residual_mean"}])."""
  keys = sampling.sample_keys(key, x.shape[0], 1).reshape(-1)
  batch = sampling.padded_batch_size(x.shape[0], mesh)
  columns, stats = {}, []
  for lam in lams:  # λ is traced: one compilation for the whole sweep
    out = sampling.run_batched(sampler, params, keys, y0, jnp.float32(lam), batch_size=batch,
                               mesh=mesh)
    columns[f"lam={lam:g}"] = out
    psnr = [metrics.psnr(x[i], out[i]) for i in range(x.shape[0])]
    residual = metrics.data_consistency(jnp.asarray(out), y0)
    stats.append({"lam": lam, "psnr_mean": float(np.mean(psnr)),
                  "residual_mean": float(residual.mean())})
  return columns, stats


def main(argv=None):
  p = _common.parser(__doc__.splitlines()[0])
  p.add_argument("--lowres", default="32x32")
  p.add_argument("--lams", default=",".join(map(str, LAMBDAS)), help="comma-separated λ")
  p.add_argument("--num_slices", type=int, default=2, help="validation slices (rows), per set")
  args = p.parse_args(argv)
  with _common.exit_on_bad_input():
    vdm_model, params = _common.load_model(args)
    sets = _common.load_sets(args)
  lams = [float(v) for v in args.lams.split(",")]
  mesh = sampling.make_mesh()
  sampler = sampling.make_sampler(vdm_model, mesh, num_steps=_common.num_steps(args), guided=True)
  outdir = pathlib.Path(args.outdir)
  rows = []
  for set_name, (_, images, subjects) in sets.items():
    idx = _common.pick_slices(subjects, 1)[:args.num_slices]
    x = images[idx]
    y0 = _common.measure(x, _common.parse_size(args.lowres), 0.0, jax.random.key(args.seed))
    columns, stats = sweep(sampler, params, mesh, x, y0, lams, jax.random.key(args.seed + 1))
    for r in stats:
      rows.append({"set": set_name, **r})
      print(f"{set_name:>16} λ={r['lam']:<5g} PSNR {r['psnr_mean']:.2f} dB  "
            f"residual {r['residual_mean']:.3e}")
    columns["truth"] = x
    # One row per slice: transpose {λ: [S, H, W]} into {slice: [len(λ)+1, H, W]}.
    grid_rows = {f"slice {int(i)}": np.stack([c[r] for c in columns.values()])
                 for r, i in enumerate(idx)}
    png = figures.save_png(figures.grid(grid_rows), outdir / f"lambda_sweep_{set_name}.png")
    print(f"wrote {png} (columns: {', '.join(columns)})")
  _common.write_csv(outdir / "lambda_sweep.csv", rows)
  return rows


if __name__ == "__main__":
  main()
