"""Quality curves per validation set and low-res size: the posterior mean vs the number of reverse
steps N and vs the number K of averaged samples, and the calibration of the posterior std.

On the fixed slice subset of each set (`--per_subject` slices per subject, _common.pick_slices),
with the noise-free measurement ŷ₀ of each low-res size; PSNR / SSIM per volume, mean over subjects:

  steps        the mean of K = --num_samples samples for each N in --steps_list; zero-filling as the
               reference row (kind "reference", value "zero_fill")
  k            one run of K_max = max(--k_list) samples at N = --steps; for each k the mean of its
               first k samples (nested: keys are per sample, so these are the samples a K = k run
               draws; with antithetic pairs, k/2 whole pairs for an even k, the first chain of a
               pair for k = 1). The steps point N = --steps reuses this run's first K samples.
  calibration  from the K_max run, per pixel over the subset: Pearson r between the posterior std
               and |mean - gt|, and the coverage, the fraction with |mean - gt| ≤ 2·std; over all
               pixels (value "all") and the head (value "head": gt > 0.05)

    python experiments/curves.py --checkpoint=WORKDIR --outdir=experiments/results/curves

Writes curves.csv (set, lowres, kind, value, steps, k, psnr, ssim, corr, coverage: one row per set,
size, kind and value; blank where a column does not apply), curves.json (all of it with the
settings and the slice subsets) and curves.png (PSNR vs N and vs K, one line per set and size,
the dashed line of the same colour is zero-filling). --quick: N ∈ {2, 4}, k ∈ {1, 2}, two subjects
x one slice per set.
"""

from __future__ import annotations

import pathlib

import jax
import numpy as np

import _common
import _plot
from vdm_mri import figures, sampling

HEAD_THRESHOLD = 0.05  # gt intensity above which a pixel counts as head


def nested_means(samples: np.ndarray, ks) -> dict[int, np.ndarray]:
  """{k: mean of the first k samples} for samples [N, K, H, W]: {k: [N, H, W]}."""
  if max(ks) > samples.shape[1]:
    raise ValueError(f"k up to {max(ks)} but only {samples.shape[1]} samples")
  return {k: samples[:, :k].mean(1) for k in ks}


def pearson(a: np.ndarray, b: np.ndarray) -> float:
  """Pearson correlation of two equally long arrays; nan when either is constant."""
  a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
  a, b = a - a.mean(), b - b.mean()
  den = np.sqrt(np.sum(a * a) * np.sum(b * b))
  return float(np.sum(a * b) / den) if den > 0 else float("nan")


def calibration(gt, mean, std, head_threshold: float = HEAD_THRESHOLD) -> dict:
  """{"all" | "head": {"corr": r(std, |mean - gt|), "coverage": P(|mean - gt| ≤ 2·std),
  "pixels": count}} over every pixel of gt, mean, std [N, H, W] and over gt > head_threshold."""
  gt, mean, std = (np.asarray(a, np.float64) for a in (gt, mean, std))
  err = np.abs(mean - gt)
  out = {}
  for region, sel in (("all", np.ones(gt.shape, bool)), ("head", gt > head_threshold)):
    out[region] = {"corr": pearson(std[sel], err[sel]),
                   "coverage": float(np.mean(err[sel] <= 2.0 * std[sel])),
                   "pixels": int(sel.sum())}
  return out


def _scores(gt, pred, subjects) -> dict:
  return {k: float(v) for k, v in _common.scores(gt, pred, subjects).items()}


def one_case(vdm_model, params, x, subj, lowres, s: dict, key) -> dict:
  """All curves of one set and low-res size (module doc); s: the settings."""
  y0 = _common.measure(x, lowres, 0.0, jax.random.key(s["seed"]))

  def posterior(num_samples, steps):
    return sampling.posterior_samples(
        vdm_model, params, y0, key=key, num_samples=num_samples, lam=s["lam"], num_steps=steps,
        final_projection=True, batch_size=s["batch_size"], sampler=s["sampler"], eta=s["eta"],
        t_start=s["t_start"], antithetic=s["antithetic"])

  k_max = max(s["k_list"])
  post = posterior(k_max, s["steps"])
  by_k = {k: _scores(x, m, subj) for k, m in nested_means(post.samples, s["k_list"]).items()}
  by_steps = {}
  for steps in s["steps_list"]:
    if steps == s["steps"] and s["num_samples"] <= k_max:
      mean = post.samples[:, :s["num_samples"]].mean(1)  # the same keys: the same samples
    else:
      mean = posterior(s["num_samples"], steps).mean
    by_steps[steps] = _scores(x, mean, subj)
  zero_fill = _common.baseline_images(y0, x.shape[1:])["zero-fill"]
  return {"zero_fill": _scores(x, zero_fill, subj), "steps": by_steps, "k": by_k,
          "calibration": {"k": k_max, "steps": s["steps"], "mean": _scores(x, post.mean, subj),
                          **calibration(x, post.mean, post.std)}}


def csv_rows(set_name: str, size: str, case: dict, s: dict) -> list[dict]:
  """The CSV rows of one set and size: reference, steps, k, calibration (module doc)."""
  def row(kind, value, steps="", k="", psnr="", ssim="", corr="", coverage=""):
    return {"set": set_name, "lowres": size, "kind": kind, "value": value, "steps": steps,
            "k": k, "psnr": psnr, "ssim": ssim, "corr": corr, "coverage": coverage}
  zf = case["zero_fill"]
  rows = [row("reference", "zero_fill", psnr=zf["psnr"], ssim=zf["ssim"])]
  rows += [row("steps", n, n, s["num_samples"], m["psnr"], m["ssim"])
           for n, m in case["steps"].items()]
  rows += [row("k", k, s["steps"], k, m["psnr"], m["ssim"]) for k, m in case["k"].items()]
  cal = case["calibration"]
  rows += [row("calibration", region, cal["steps"], cal["k"], corr=cal[region]["corr"],
               coverage=cal[region]["coverage"]) for region in ("all", "head")]
  return rows


def figure(results: dict, s: dict):
  """PSNR vs N and PSNR vs K, one line per set and size, zero-filling dashed."""
  lines = {"steps": [], "k": []}
  for set_name, entry in results.items():
    for size, case in entry["sizes"].items():
      for kind in lines:
        xs = list(case[kind])
        lines[kind].append(_plot.Line(f"{set_name} {size}", xs,
                                      [case[kind][v]["psnr"] for v in xs],
                                      ref=case["zero_fill"]["psnr"]))
  return _plot.hstack([
      _plot.line_plot(lines["steps"], title=f"posterior mean, K={s['num_samples']} "
                      "(dashed: zero-fill)", xlabel="reverse steps N", ylabel="PSNR (dB)",
                      log_x=True),
      _plot.line_plot(lines["k"], title=f"mean of k samples, N={s['steps']} (dashed: zero-fill)",
                      xlabel="samples k", ylabel="PSNR (dB)", log_x=True)])


def _int_list(p, flag: str, text: str) -> list[int]:
  try:
    values = [int(v) for v in text.split(",")]
  except ValueError:
    values = []
  if not values or min(values) < 1:
    p.error(f"--{flag}: expected comma-separated positive integers, got {text!r}")
  return values


def settings(p, args) -> dict:
  """The resolved settings: explicit flags win, else the --quick or the full defaults."""
  quick = args.quick
  opts = _common.sampling_kwargs(args)
  k_list = sorted(set(_int_list(p, "k_list", args.k_list or ("1,2" if quick else "1,2,4,8"))))
  if opts["antithetic"] and (max(k_list) % 2 or any(k > 1 and k % 2 for k in k_list)):
    p.error(f"--k_list: with antithetic pairs each K is 1 (the first chain of a pair) or even, "
            f"and the largest even, got {k_list}")
  return {
      "steps_list": _int_list(p, "steps_list", args.steps_list or
                              ("2,4" if quick else "25,50,100,250,1000")),
      "k_list": k_list,
      "steps": opts["num_steps"], "num_samples": opts["num_samples"], "lam": opts["lam"],
      "sampler": opts["sampler"], "eta": opts["eta"], "t_start": opts["t_start"],
      "antithetic": opts["antithetic"],
      "sizes": args.sizes.split(","), "seed": args.seed, "batch_size": args.batch_size,
      "per_subject": args.per_subject or (1 if quick else 4),
      "max_subjects": 2 if quick else None, "head_threshold": HEAD_THRESHOLD}


def main(argv=None):
  p = _common.parser(__doc__.splitlines()[0], quick_steps=4)
  p.add_argument("--sizes", default="64x64,32x32", help="low-res matrices")
  p.add_argument("--steps_list", default=None, help="N of the steps curve (default "
                 "25,50,100,250,1000; --quick 2,4)")
  p.add_argument("--k_list", default=None, help="k of the K curve (default 1,2,4,8; --quick 1,2)")
  p.add_argument("--per_subject", type=int, default=None, help="slices per subject (default 4, "
                 "--quick 1 of 2 subjects)")
  _common.add_sampling_flags(p)  # --num_samples: K of the steps curve
  args = p.parse_args(argv)
  with _common.exit_on_bad_input():
    vdm_model, params = _common.load_model(args)
    sets = _common.load_sets(args)
  s = settings(p, args)
  results, rows = {}, []
  for set_name, (path, images, subjects) in sets.items():
    idx = _common.pick_slices(subjects, s["per_subject"], s["max_subjects"])
    x, subj = images[idx], subjects[idx]
    entry = results[set_name] = {"data": str(path), "slices": idx.tolist(),
                                 "subjects": sorted(set(subj.tolist())), "sizes": {}}
    for size in s["sizes"]:
      case = one_case(vdm_model, params, x, subj, _common.parse_size(size), s,
                      jax.random.key(args.seed + 1))
      entry["sizes"][size] = case
      rows += csv_rows(set_name, size, case, s)
      _print_case(set_name, size, case)
  outdir = pathlib.Path(args.outdir)
  _common.write_csv(outdir / "curves.csv", rows)
  _common.write_json(outdir / "curves.json", {"settings": s, "sets": results})
  print(f"wrote {figures.save_png(figure(results, s), outdir / 'curves.png')}")
  return rows


def _print_case(set_name, size, case):
  head = f"{set_name:>16} {size:>6}"
  print(f"{head} zero-fill: PSNR {case['zero_fill']['psnr']:.2f}  "
        f"SSIM {case['zero_fill']['ssim']:.4f}")
  for kind, label in (("steps", "N"), ("k", "k")):
    print(f"{head} " + "  ".join(f"{label}={v}: {m['psnr']:.2f}/{m['ssim']:.4f}"
                                 for v, m in case[kind].items()))
  cal = case["calibration"]
  print(f"{head} calibration (K={cal['k']}): r {cal['all']['corr']:.3f} (head "
        f"{cal['head']['corr']:.3f}), coverage {cal['all']['coverage']:.3f} "
        f"(head {cal['head']['coverage']:.3f})")


if __name__ == "__main__":
  main()
