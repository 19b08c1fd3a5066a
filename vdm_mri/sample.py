"""Batch super-resolution with a trained VDM prior and k-space guidance.

    python -m vdm_mri.sample --checkpoint=runs/brain128 --input=lowres.nii.gz --output=sr.npz
    python -m vdm_mri.sample --checkpoint=runs/brain128 --simulate --lowres=32x32 \
        --input=brain_t1w_val.npz --output=sr32.npz --png=sr32_png

Inputs (`--input`), one file; the target matrix H×W is the model's (128x128 for the paper):
  .npz key `images` / real .npy   low-resolution magnitude images [h, w] or [N, h, w]
  .npz key `kspace` / complex .npy measured centre of k-space ŷ₀ [h, w] or [N, h, w], in the
                                  convention ŷ₀ = p⁻¹(Λ)F x of kspace.measure (orthonormal centred
                                  DFT of the H×W image): its zero-filled image has x's intensity
  .nii / .nii.gz (2D or 3D)       magnitude, reoriented to RAS, processed as axial slices
  --simulate                      `images` are high-resolution ground truth [N, H, W] (float in
                                  [0, 1] or uint16 x·4095 as in the shared data; default: the
                                  bundled sample); ŷ₀ = kspace.measure(x, --lowres, σ_y=--noise)
An .npz may carry `subject` [N] (volume ids: normalisation and metrics are per volume; without
it the whole file is one volume).

Normalisation (--normalize, default on): per volume, from the low-resolution data alone, by the
rule the training data were made with; outputs are scaled back to the input's intensity scale
(`vdm_mri.api`, whose `super_resolve` this command calls).

Output (`--output=FILE.npz`): `mean`, `std` [N, H, W] (per-pixel over --num_samples posterior
samples, ddof 0), `zero_fill`, `bilinear`, `bicubic` [N, H, W] (grid-aligned baselines),
`lowres` [N, h, w] (|x_lr|), `scale` [N], `residual` [N] (data consistency of `mean`),
`samples` [N, K, H, W] with --samples, `ground_truth` with --simulate. NIfTI input also gives
FILE.nii.gz (mean) and FILE_std.nii.gz on the input's field of view, reoriented to RAS, voxel
size scaled by h/H, w/W in-plane, origin kept on the centred-DFT grid. With ground truth:
FILE.metrics.json (PSNR/SSIM/NMSE per volume and mean, and the residual ‖p⁻¹(Λ)F x̂ - ŷ₀‖/‖ŷ₀‖,
per method), and a table on stdout.
`--png=DIR`: one PNG per slice: LR | zero-fill | bicubic | VDM mean | std | ground truth.

Exit codes: 0 done; 2 bad input, flags, checkpoint or an existing output without --overwrite
(one line `error: …`, nothing written). Outputs are written to temporary files and renamed only
when all of them are complete.
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags, logging
from ml_collections import config_flags

import vdm_mri
from vdm_mri import api, distributed, metrics, sr_io, workdir
from vdm_mri import model as model_lib
from vdm_mri.api import InputError
from vdm_mri.sr_io import Problem


# --------------------------------------------------------------------------------------------
# Flags.
# --------------------------------------------------------------------------------------------
def define_flags(fv: flags.FlagValues):
  config_flags.DEFINE_config_file("config", None, "config file (configs/*.py); default: the "
                                  "config.json of the --checkpoint work dir", flag_values=fv)
  s, b, f, i = flags.DEFINE_string, flags.DEFINE_bool, flags.DEFINE_float, flags.DEFINE_integer
  s("checkpoint", None, "training work dir (Orbax checkpoints/ and config.json) or params dir "
    "(manifest.json, e.g. WORKDIR/best); default: the prior shipped in the package",
    flag_values=fv)
  s("input", None, "low-res .npz/.npy/.nii(.gz), k-space .npz/.npy, or with --simulate "
    "high-res ground truth .npz (default: the bundled sample)", flag_values=fv)
  s("output", None, "output .npz (NIfTI, metrics JSON beside it)", flag_values=fv)
  s("png", None, "directory for per-slice PNG panels", flag_values=fv)
  b("simulate", False, "simulate ŷ₀ from high-res ground truth (--lowres, --noise)",
    flag_values=fv)
  s("lowres", None, "simulated low-res matrix, e.g. 32x32 or 64x128", flag_values=fv)
  f("noise", 0.0, "σ_y of the simulated complex k-space noise (intensity units)", flag_values=fv)
  f("lam", None, "guidance weight λ in [0, 1] (default: config.sampling.lam)", flag_values=fv)
  i("steps", None, "reverse steps (default: config.sampling.steps)", flag_values=fv)
  s("sampler", None, "paper (ancestral, λ-mixed noisy measurement) or projection (x̂₀ "
    "projected onto ŷ₀, DDIM re-noising; default: config.sampling.sampler)", flag_values=fv)
  f("eta", None, "η of the projection sampler's re-noising, 0 (deterministic) … 1 "
    "(default: config.sampling.eta)", flag_values=fv)
  f("t_start", None, "start at this t ∈ (0, 1] from the noised zero-filled image (1: from "
    "noise; default: config.sampling.t_start)", flag_values=fv)
  i("num_samples", None, "posterior samples per slice (default: config)", flag_values=fv)
  b("antithetic", None, "draw the samples as num_samples/2 antithetic pairs (mirrored noise; "
    "a better mean for the cost) instead of independently (default: config)", flag_values=fv)
  i("batch_size", None, "images per compiled call over all devices (default: config)",
    flag_values=fv)
  b("final_projection", None, "project onto ŷ₀ after the last step (default: config)",
    flag_values=fv)
  b("normalize", True, "normalise per volume from the low-res data and scale back",
    flag_values=fv)
  b("samples", False, "also save all samples [N, K, H, W]", flag_values=fv)
  i("seed", 0, "PRNG seed (sampling; simulated noise)", flag_values=fv)
  b("overwrite", False, "replace existing outputs", flag_values=fv)
  distributed.define_flags(fv)


def sampling_options(fv, config) -> api.SamplingOptions:
  """The flag of each api.SamplingOptions field over config.sampling, validated."""
  given = {f.name: fv[f.name].value for f in dataclasses.fields(api.SamplingOptions)}
  try:
    return api.SamplingOptions.from_config(config.sampling, **given)
  except InputError as e:
    raise InputError(f"--{e}") from None


def evaluate(out: dict, problem: Problem) -> dict:
  """Per method: PSNR/SSIM/NMSE per volume and mean (metrics.evaluate) and the mean residual."""
  y0 = jnp.asarray(problem.y0)
  report = {}
  for method in ("zero_fill", "bilinear", "bicubic", "mean"):
    m = metrics.evaluate(problem.gt, out[method], problem.subject)
    m["residual"] = float(np.mean(metrics.data_consistency(jnp.asarray(out[method]), y0)))
    report["vdm_mean" if method == "mean" else method] = m
  samples = out["samples"].reshape(-1, *out["samples"].shape[2:])
  k = out["samples"].shape[1]
  report["vdm_samples_residual"] = float(np.mean(metrics.data_consistency(
      jnp.asarray(samples), jnp.repeat(y0, k, axis=0))))
  return report

# --------------------------------------------------------------------------------------------
# Command line.
# --------------------------------------------------------------------------------------------
def summary(report: dict) -> str:
  lines = [f"{'method':<10} {'PSNR dB':>8} {'SSIM':>7} {'NMSE':>8} {'residual':>9}"]
  for name, m in report.items():
    if isinstance(m, dict):
      lines.append(f"{name:<10} {m['psnr']:8.2f} {m['ssim']:7.4f} {m['nmse']:8.5f} "
                   f"{m['residual']:9.2e}")
  lines.append(f"VDM samples: mean residual {report['vdm_samples_residual']:.2e}")
  return "\n".join(lines)


def run(fv) -> int:
  """The command, after flag parsing: checkpoint → measurement → posterior samples → metrics →
  files. Raises InputError for anything the user must fix. With several processes all of them
  read and sample; process 0 alone reports and writes."""
  if not fv.output or not fv.output.endswith(".npz"):
    raise InputError(f"--output must name an .npz file, got {fv.output!r}")
  sr_io.check_overwrite([pathlib.Path(fv.output)], fv.overwrite)
  directory = workdir.resolve(fv.checkpoint)
  config = workdir.load_config(directory, fv.config)
  opts = sampling_options(fv, config)
  full_shape = model_lib.from_config(config).image_shape[:2]
  key_noise, key_sample = jax.random.split(jax.random.key(fv.seed))
  problem = sr_io.read_problem(fv.input, simulated=fv.simulate, lowres=fv.lowres, noise=fv.noise,
                               full_shape=full_shape, key=key_noise)
  paths = sr_io.output_paths(fv.output, fv.png, problem)
  sr_io.check_overwrite(paths.values(), fv.overwrite)
  prior = api.load_prior(directory, config)
  model = prior.model
  primary = distributed.is_primary()
  say = (lambda text: print(text, file=sys.stderr)) if primary else (lambda text: None)
  say(f"super-resolving {len(problem.y0)} slice(s) {problem.y0.shape[1]}x{problem.y0.shape[2]}"
      f" -> {model.image_shape[0]}x{model.image_shape[1]}: {opts.sampler} sampler"
      f"{f' (η={opts.eta})' if opts.sampler == 'projection' else f' (λ={opts.lam})'}, "
      f"{opts.steps} steps{f' from t={opts.t_start}' if opts.t_start < 1 else ''}, "
      f"{opts.num_samples} sample(s){' in antithetic pairs' if opts.antithetic else ''}, "
      f"final projection {opts.final_projection}, "
      f"{jax.device_count()} device(s) in {jax.process_count()} process(es)")
  out = api.super_resolve(prior, kspace=problem.y0, subject=problem.subject,
                          normalize=fv.normalize, key=key_sample, options=opts, progress=True,
                          keep_samples=fv.samples or problem.gt is not None).arrays()
  if not primary:
    return 0
  report = None
  if problem.gt is not None:
    report = {"lowres": list(problem.y0.shape[1:]), "noise": fv.noise,
              **dataclasses.asdict(opts), **evaluate(out, problem)}
    print(summary(report))
  staged = sr_io.Staged()
  try:
    sr_io.stage_outputs(staged, paths, out, problem, report, fv.samples)
    staged.commit()
  finally:
    staged.abort()
  files = [str(p) for role, p in paths.items() if not role.startswith("png_")]
  pngs = f" and {len(problem.y0)} PNG(s) in {fv.png}" if fv.png else ""
  say(f"wrote {', '.join(files)}{pngs}")
  return 0


def main(argv=None) -> int:
  """Parse flags, run; exit code 2 with a one-line message on bad input."""
  argv = sys.argv if argv is None else argv
  fv = flags.FlagValues()
  define_flags(fv)
  if any(a in ("--help", "-h", "--helpfull") for a in argv[1:]):
    print(fv.get_help())
    return 0
  logging.set_verbosity(logging.WARNING)
  try:
    rest = fv(argv)
    if len(rest) > 1:
      raise InputError(f"unexpected arguments {rest[1:]}")
    distributed.initialize_from_flags(fv)  # before any other JAX call
    vdm_mri.enable_compilation_cache()
    return run(fv)
  except (InputError, workdir.CheckpointError, distributed.DistributedError, flags.Error) as e:
    print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
