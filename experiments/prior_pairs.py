"""Two priors' unguided samples compared draw by draw: which one drifts from the data, and where?

    python experiments/prior_pairs.py A/prior_100.json B/prior_100.json [--out=pairs.json]

Reads two reports of experiments/prior_samples.py made with the same `--seed`, `--steps` and
`--num`, so that sample i of both started from the same noise, and prints for every per-sample
statistic (`per_sample`: head fraction, mirror correlation, head offset, tilt, ...) the mean of
A, the mean of B and the mean paired difference B - A with its standard error (the standard
deviation of the differences over sqrt(n)) and their ratio. Pairing removes the variance the
two share through the noise, which is most of it for priors cut from one run: a difference of a
few standard errors is then a difference of the priors, not of the draws. The tilt is compared
as |tilt| (a head turned either way is turned). Reports made with different seeds, steps or
numbers of samples are refused (exit code 2).
"""

from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np

import _common
from vdm_mri import api

PAIRED_KEYS = ("seed", "steps", "num")  # what must agree for sample i to share its noise
ABSOLUTE = ("head_tilt",)  # compared by magnitude


def paired_differences(a: dict, b: dict) -> dict[str, dict[str, float]]:
  """Per statistic in both reports' `per_sample`: mean of A, mean of B, mean of B - A, its
  standard error and their ratio z (error and z are 0 where the differences do not vary: a
  single pair, or every pair alike). Raises api.InputError (a ValueError) if the reports were
  not drawn alike."""
  for key in PAIRED_KEYS:
    if a.get(key) != b.get(key):
      raise api.InputError(f"the reports differ in {key} ({a.get(key)} against {b.get(key)}): "
                       "their samples are not paired")
  if "per_sample" not in a or "per_sample" not in b:
    raise api.InputError("a report without per_sample (made before prior_samples wrote it)")
  out = {}
  for name in a["per_sample"]:
    if name not in b["per_sample"]:
      continue
    va = np.asarray(a["per_sample"][name], np.float64)
    vb = np.asarray(b["per_sample"][name], np.float64)
    if va.shape != vb.shape:
      raise api.InputError(f"{name}: {va.size} samples against {vb.size}")
    if name in ABSOLUTE:
      va, vb = np.abs(va), np.abs(vb)
    diff = vb - va
    se = float(diff.std(ddof=1) / np.sqrt(diff.size)) if diff.size > 1 else 0.0
    mean = float(diff.mean())
    out[name] = {"a": float(va.mean()), "b": float(vb.mean()), "difference": mean,
                 "standard_error": se, "z": mean / se if se > 0 else 0.0}
  return out


def _read(path: str) -> dict:
  try:
    report = json.loads(pathlib.Path(path).read_text())
  except OSError as e:
    raise FileNotFoundError(f"{path}: {e.strerror}") from e
  except json.JSONDecodeError as e:
    raise api.InputError(f"{path}: not a JSON report ({e})") from e
  if not isinstance(report, dict):
    raise api.InputError(f"{path}: not a prior_samples report (a JSON object)")
  return report


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("a", help="prior_samples report A (prior_<steps>.json)")
  p.add_argument("b", help="prior_samples report B, drawn with A's seed, steps and num")
  p.add_argument("--out", default=None, help="also write the comparison to this JSON file")
  args = p.parse_args(argv)
  with _common.exit_on_bad_input():
    a, b = _read(args.a), _read(args.b)
    result = paired_differences(a, b)
  print(f"A: {a.get('checkpoint')}  B: {b.get('checkpoint')}  "
        f"({a['num']} pairs, {a['steps']} steps, seed {a['seed']})")
  print(f"{'statistic':<20}{'A':>10}{'B':>10}{'B - A':>10}{'s.e.':>9}{'z':>7}")
  for name, r in result.items():
    print(f"{name:<20}{r['a']:>10.4f}{r['b']:>10.4f}{r['difference']:>+10.4f}"
          f"{r['standard_error']:>9.4f}{r['z']:>+7.1f}")
  if args.out:
    _common.write_json(pathlib.Path(args.out),
                       {"a": args.a, "b": args.b, "pairs": a["num"], "statistics": result})
  return result


if __name__ == "__main__":
  main()
