"""DESIGN §5 baseline table: zero-filling, bilinear and bicubic at 64x64, 48x48, 32x32 → 128x128.

Simulates ŷ₀ = p⁻¹(Λ) F x₀ (σ_y = 0) from the validation slices, reconstructs with each baseline,
and reports PSNR / SSIM / NMSE per subject volume and averaged (fastMRI style).

    python experiments/baselines_table.py [--data PATH[,PATH...]] [--outdir DIR]

--data: comma-separated slice .npz files, one validation set each (default and set names as in
_common: the shared brain_t1w and brain_t1w_skull validation sets). Writes DIR/baselines_table.csv
(one row per set, low-res size, method and subject, plus "mean" rows) and DIR/baselines_table.json.
CPU, about half a minute per set. Expected means on brain_t1w (PSNR dB / SSIM):
64x64 zero-fill 34.74/0.921, bilinear 31.70/0.905, bicubic 33.53/0.917;
32x32 zero-fill 27.66/0.734, bilinear 26.12/0.711, bicubic 27.00/0.736.
"""

import argparse
from pathlib import Path

import numpy as np

import _common
from vdm_mri import baselines, kspace, metrics

REPO = Path(__file__).resolve().parents[1]
LOWRES_SHAPES = ((64, 64), (48, 48), (32, 32))
METHODS = {
    "zero_fill": baselines.zero_fill,
    "bilinear": baselines.bilinear,
    "bicubic": baselines.bicubic,            # cubic B-spline, the DESIGN §5 column
    "bicubic_keys": baselines.bicubic_keys,  # Keys a=-0.5, for reference
}


def load_volumes(path):
  """Magnitude images `[N, H, W]` float32 in [0, 1] and subject ids `[N]`."""
  data = np.load(path)
  return (data["images"] / 4095.0).astype(np.float32), data["subject"]


def baseline_table(x, subjects, lowres_shapes=LOWRES_SHAPES, methods=METHODS):
  """{(h, w): {method: metrics.evaluate(...)}} for σ_y = 0 measurements of x `[N, H, W]`."""
  full_shape = x.shape[-2:]
  table = {}
  for lowres_shape in lowres_shapes:
    y0 = kspace.measure(x, lowres_shape)  # [N, h, w] complex64
    table[lowres_shape] = {name: metrics.evaluate(x, np.asarray(fn(y0, full_shape)), subjects)
                           for name, fn in methods.items()}
  return table


def rows(table, set_name):
  """Flat CSV rows: set, lowres, method, subject ("mean" for the average), psnr, ssim, nmse."""
  for (h, w), by_method in table.items():
    for name, result in by_method.items():
      for sid, m in {**result["per_subject"], "mean": result}.items():
        yield {"set": set_name, "lowres": f"{h}x{w}", "method": name, "subject": sid,
               "psnr": m["psnr"], "ssim": m["ssim"], "nmse": m["nmse"]}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data", default=None, help="comma-separated slice .npz files "
                      "(default: the shared validation sets)")
  parser.add_argument("--outdir", type=Path, default=REPO / "results" / "baselines_table")
  args = parser.parse_args()

  paths = _common.data_paths(args.data)
  table_rows = []
  for path in paths:
    x, subjects = load_volumes(path)
    table_rows += rows(baseline_table(x, subjects), _common.set_name(path))

  print(f"{'set':16} {'low-res':8} {'method':13} {'PSNR':>7} {'SSIM':>7} {'NMSE':>8}")
  for r in table_rows:
    if r["subject"] == "mean":
      print(f"{r['set']:16} {r['lowres']:8} {r['method']:13} {r['psnr']:7.2f} "
            f"{r['ssim']:7.4f} {r['nmse']:8.5f}")

  args.outdir.mkdir(parents=True, exist_ok=True)
  _common.write_csv(args.outdir / "baselines_table.csv", table_rows)
  shown = {_common.set_name(p): _common.display_path(p) for p in paths}
  _common.write_json(args.outdir / "baselines_table.json",
                     {"data": shown, "sigma_y": 0.0, "rows": table_rows})


if __name__ == "__main__":
  main()
