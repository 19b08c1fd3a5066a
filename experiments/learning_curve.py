"""Learning curve of a training run: guided-SR validation and bits/dim against images seen.

    python experiments/learning_curve.py --workdir=runs/cpu_prior --outdir=experiments/results/training

Reads WORKDIR/metrics.jsonl and WORKDIR/config.json (the global batch) and writes
learning_curve.csv (one row per SR validation: step, images seen, per set and low-res size the
posterior-mean PSNR/SSIM and their gains over zero-filling, the score, the latest eval bpd, and
the held-out denoising error per noise band where the run logged it, den/…),
learning_curve.png (PSNR gain over zero-filling vs images seen, one line per set and size) and a
copy of metrics.jsonl (the raw curve, kept with the results across machines).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import _common
import _plot
from vdm_mri import figures


def read_rows(workdir: pathlib.Path) -> tuple[list[dict], int]:
  """(one dict per SR validation, with the latest eval bpd before it; the global batch)."""
  metrics, config = workdir / "metrics.jsonl", workdir / "config.json"
  if not metrics.is_file() or not config.is_file():
    raise FileNotFoundError(f"{workdir}: no metrics.jsonl / config.json (not a training work dir)")
  batch = int(json.loads(config.read_text())["training"]["batch_size"])
  rows, bpd = [], None
  for line in metrics.read_text().splitlines():
    record = json.loads(line)
    if "eval/bpd" in record:
      bpd = record["eval/bpd"]
    if "sr/score" in record:
      row = {"step": record["step"], "images_seen": record["step"] * batch,
             "sr_score": record["sr/score"], "eval_bpd": bpd}
      for key, value in record.items():
        if key.startswith("sr/") and key.count("/") == 3:  # sr/<set>/<size>/<metric>
          _, set_name, size, metric = key.split("/")
          row[f"{set_name}/{size}/{metric}"] = value
        elif key.startswith("den/"):  # den/<set>/band<k>/<metric>, den/<set>/diffusion_bpd
          row[key] = value
      rows.append(row)
  return rows, batch


def figure(rows: list[dict]):
  keys = sorted({k.rsplit("/", 1)[0] for r in rows for k in r if k.endswith("/psnr_gain")})
  lines = [_plot.Line(key, [r["images_seen"] for r in rows],
                      [r.get(f"{key}/psnr_gain", float("nan")) for r in rows], ref=0.0)
           for key in keys]
  return _plot.line_plot(lines, title="posterior-mean PSNR gain over zero-filling (dashed: 0)",
                         xlabel="images seen", ylabel="dB")


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workdir", required=True, help="training work dir")
  p.add_argument("--outdir", required=True)
  args = p.parse_args(argv)
  workdir, outdir = pathlib.Path(args.workdir), pathlib.Path(args.outdir)
  try:
    rows, _ = read_rows(workdir)
  except (FileNotFoundError, ValueError, KeyError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  if not rows:
    print(f"error: {workdir / 'metrics.jsonl'} has no SR validation yet", file=sys.stderr)
    sys.exit(2)
  _common.write_csv(outdir / "learning_curve.csv", rows)
  print(f"wrote {figures.save_png(figure(rows), outdir / 'learning_curve.png')}")
  _common.write_text(outdir / "metrics.jsonl", (workdir / "metrics.jsonl").read_text())
  for r in rows:
    print(f"step {r['step']:>7} ({r['images_seen']:>8} images): score {r['sr_score']:+.3f} dB")
  return rows


if __name__ == "__main__":
  main()
