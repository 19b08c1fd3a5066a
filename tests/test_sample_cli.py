"""`python -m vdm_mri.sample` end to end with a tiny checkpoint, and every bad-input case."""

import json
import pathlib

import jax.numpy as jnp
import nibabel as nib
import numpy as np
import pytest
from PIL import Image

import vdm_mri
from conftest import REPO, tiny_config_128, write_workdir
from vdm_mri import baselines, kspace, sample
from vdm_mri import workdir as workdir_lib

STEPS = ["--steps=2", "--num_samples=2", "--batch_size=8"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  return write_workdir(tmp_path_factory.mktemp("work"), tiny_config_128())


def _run(*args):
  return sample.main(["sample", *args])


def _sample_gt(n=None):
  with np.load(vdm_mri.SAMPLE_DATA) as d:
    return d["images"][:n].astype(np.float32) / 4095.0, d["subject"][:n]


# --------------------------------------------------------------------------------------------
# End to end.
# --------------------------------------------------------------------------------------------
def test_simulated_32x32_on_the_bundled_sample(workdir, tmp_path, capsys, monkeypatch):
  out = tmp_path / "sr.npz"
  monkeypatch.chdir(workdir.parent)  # a relative --checkpoint, as users type it
  assert _run(f"--checkpoint={workdir.name}", "--simulate", "--lowres=32x32", f"--output={out}",
              f"--png={tmp_path / 'png'}", "--samples", *STEPS) == 0
  gt, subject = _sample_gt()
  with np.load(out) as r:
    assert r["mean"].shape == r["std"].shape == r["zero_fill"].shape == (16, 128, 128)
    assert r["samples"].shape == (16, 2, 128, 128) and r["lowres"].shape == (16, 32, 32)
    np.testing.assert_allclose(r["mean"], r["samples"].mean(1), atol=1e-6)
    y0 = kspace.measure(jnp.asarray(gt), (32, 32))
    np.testing.assert_allclose(r["zero_fill"], baselines.zero_fill(y0, (128, 128)), atol=1e-6)
    # Final projection in the normalised space, scaled back: consistent with ŷ₀ of the input.
    assert float(kspace.residual(jnp.asarray(r["mean"]), y0).max()) < 1e-5
    assert 0.9 < r["scale"].min() and r["scale"].max() < 1.1  # the sample is normalised data
  report = json.loads((tmp_path / "sr.metrics.json").read_text())
  for method in ("zero_fill", "bicubic", "vdm_mean"):
    assert set(report[method]["per_subject"]) == set(subject)
    assert {"psnr", "ssim", "nmse", "residual"} <= set(report[method])
  assert report["zero_fill"]["psnr"] == pytest.approx(27.5, abs=1.5)  # DESIGN §5: 27.66 dB
  assert report["vdm_mean"]["residual"] < 1e-5 < report["bicubic"]["residual"]
  assert "vdm_mean" in capsys.readouterr().out
  pngs = sorted((tmp_path / "png").glob("*.png"))
  assert len(pngs) == 16 and Image.open(pngs[0]).size[0] == 6 * 128


def test_magnitude_input_is_normalised_and_scaled_back(workdir, tmp_path):
  """Low-res magnitude images at an arbitrary scale: outputs scale with the input."""
  gt, _ = _sample_gt(4)
  x_lr = np.abs(kspace.lowres_from_measurement(kspace.measure(jnp.asarray(gt), (32, 32)),
                                               (128, 128)))
  means = []
  for factor in (1.0, 37.0):
    np.savez(tmp_path / f"lr{factor}.npz", images=np.asarray(x_lr) * factor)
    out = tmp_path / f"sr{factor}.npz"
    assert _run(f"--checkpoint={workdir}", f"--input={tmp_path / f'lr{factor}.npz'}",
                f"--output={out}", *STEPS) == 0
    with np.load(out) as r:
      means.append(r["mean"])
      np.testing.assert_allclose(r["lowres"], np.asarray(x_lr) * factor, rtol=1e-4,
                                 atol=1e-4 * factor)
  np.testing.assert_allclose(means[1], 37.0 * means[0], rtol=1e-4, atol=1e-4 * 37)


def test_nifti_in_nifti_out(workdir, tmp_path):
  """A 3D low-res NIfTI in LPS orientation: the output is RAS, 128x128 in-plane, same field of
  view (voxel 7.5 mm -> 1.875 mm), and its mean image sits where the input's object was."""
  gt, _ = _sample_gt(3)
  x_lr = np.abs(np.asarray(kspace.lowres_from_measurement(
      kspace.measure(jnp.asarray(gt), (32, 32)), (128, 128))))  # [Z, rows A→P, cols L→R]
  ras = np.transpose(x_lr, (2, 1, 0))[:, ::-1, :]  # [X (L→R), Y (P→A), Z]
  lps = ras[::-1, ::-1, :]  # voxel axes pointing left, posterior, superior
  affine = np.diag([-7.5, -7.5, 3.0, 1.0])
  affine[:3, 3] = [120.0, 120.0, -10.0]
  nib.save(nib.Nifti1Image(lps.astype(np.float32), affine), tmp_path / "lr.nii.gz")
  out = tmp_path / "sr.npz"
  assert _run(f"--checkpoint={workdir}", f"--input={tmp_path / 'lr.nii.gz'}",
              f"--output={out}", *STEPS) == 0
  image = nib.load(tmp_path / "sr.nii.gz")
  assert image.shape == (128, 128, 3)
  np.testing.assert_allclose(image.header.get_zooms(), (1.875, 1.875, 3.0))
  assert nib.aff2axcodes(image.affine) == ("R", "A", "S")
  with np.load(out) as r:
    np.testing.assert_allclose(np.asarray(image.dataobj)[:, ::-1, :].transpose(2, 1, 0),
                               r["mean"], atol=1e-6)
    np.testing.assert_allclose(r["lowres"], x_lr, rtol=1e-4, atol=1e-5)
  assert nib.load(tmp_path / "sr_std.nii.gz").shape == (128, 128, 3)

  def centroid_mm(img):  # intensity-weighted centre in world coordinates (mm)
    vol = np.clip(np.asarray(img.dataobj, np.float64), 0, None)
    idx = np.stack(np.meshgrid(*map(np.arange, vol.shape), indexing="ij"), -1)
    voxel = (idx * vol[..., None]).sum((0, 1, 2)) / vol.sum()
    return nib.affines.apply_affine(img.affine, voxel)

  np.testing.assert_allclose(centroid_mm(image), centroid_mm(nib.load(tmp_path / "lr.nii.gz")),
                             atol=1.0)


def test_without_checkpoint_or_shipped_prior_exits_2(tmp_path, capsys, monkeypatch):
  monkeypatch.setattr(workdir_lib, "DEFAULT", None)  # an install without the prior
  assert _run("--simulate", "--lowres=32", f"--output={tmp_path / 'sr.npz'}") == 2
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1 and "no bundled pretrained model" in lines[0]
  assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------------------------
# Bad input: exit code 2, one line naming the problem, nothing written.
# --------------------------------------------------------------------------------------------
def _write_inputs(d: pathlib.Path, workdir: pathlib.Path) -> dict:
  """name -> (extra flags, expected message fragment)."""
  lr = np.ones((2, 32, 32), np.float32)
  np.savez(d / "rank.npz", images=np.ones((2, 3, 32, 32), np.float32))
  np.savez(d / "large.npz", images=np.ones((1, 160, 128), np.float32))
  np.savez(d / "nan.npz", images=np.where(np.eye(32, dtype=bool), np.nan, lr))
  np.savez(d / "inf.npz", kspace=np.full((1, 32, 32), np.inf, np.complex64))
  np.savez(d / "empty.npz", images=np.ones((0, 32, 32), np.float32))
  np.savez(d / "complex.npz", images=lr.astype(np.complex64))
  np.save(d / "kspace_large.npy", np.ones((1, 130, 64), np.complex64))
  np.savez(d / "kspace_real.npz", kspace=lr)
  np.savez(d / "nokey.npz", pictures=lr)
  np.savez(d / "zeros.npz", images=np.zeros_like(lr))
  np.savez(d / "gt64.npz", images=np.ones((2, 64, 64), np.float32))
  np.savez(d / "gt_range.npz", images=np.full((2, 128, 128), 1.5, np.float32))
  np.savez(d / "ok.npz", images=lr)
  nib.save(nib.Nifti1Image(np.ones((32, 32, 2), np.complex64), np.eye(4)), d / "c.nii.gz")
  nib.save(nib.Nifti1Image(np.ones((32, 32, 2, 2), np.float32), np.eye(4)), d / "4d.nii.gz")
  (d / "broken.nii.gz").write_bytes(b"not a nifti")
  (d / "empty_work").mkdir()
  (d / "no_config").mkdir()
  (d / "no_config" / "checkpoints").symlink_to(workdir / "checkpoints")
  bigger = tiny_config_128()
  bigger.model.ch = 16
  (d / "bigger.py").write_text(
      "import ml_collections, json\n"
      f"def get_config():\n  return ml_collections.ConfigDict(json.loads({bigger.to_json()!r}))\n")
  ck, inp = f"--checkpoint={workdir}", lambda name: f"--input={d / name}"
  tiny_py = REPO / "configs" / "tiny.py"
  return {
      "no checkpoint": ([inp("ok.npz")], "no bundled pretrained model"),
      "missing work dir": (["--checkpoint=/nonexistent/work", inp("ok.npz")], "no such directory"),
      "no checkpoints": ([f"--checkpoint={d / 'empty_work'}", f"--config={tiny_py}",
                          inp("ok.npz")], "no Orbax checkpoint"),
      "no config.json": ([f"--checkpoint={d / 'no_config'}", inp("ok.npz")], "config.json"),
      "mismatched checkpoint": ([ck, f"--config={d / 'bigger.py'}", inp("ok.npz")],
                                "does not match"),
      "wrong rank": ([ck, inp("rank.npz")], "must be [h, w] or [N, h, w]"),
      "larger than target": ([ck, inp("large.npz")], "larger than the target"),
      "NaN": ([ck, inp("nan.npz")], "NaN/Inf"),
      "Inf k-space": ([ck, inp("inf.npz")], "NaN/Inf"),
      "empty": ([ck, inp("empty.npz")], "empty array"),
      "complex magnitude": ([ck, inp("complex.npz")], "complex data where magnitude"),
      "k-space too large": ([ck, inp("kspace_large.npy")], "larger than the target"),
      "real k-space": ([ck, inp("kspace_real.npz")], "k-space must be complex"),
      "no known key": ([ck, inp("nokey.npz")], "expected key 'images' or 'kspace'"),
      "all zero": ([ck, inp("zeros.npz")], "no signal"),
      "complex NIfTI": ([ck, inp("c.nii.gz")], "complex NIfTI"),
      "4D NIfTI": ([ck, inp("4d.nii.gz")], "2D or 3D NIfTI"),
      "broken NIfTI": ([ck, inp("broken.nii.gz")], "cannot read NIfTI"),
      "missing input": ([ck, inp("absent.npz")], "no such file"),
      "unsupported type": ([ck, f"--input={d / 'bigger.py'}"], "unsupported file type"),
      "bad lowres": ([ck, "--simulate", "--lowres=32by32"], "--lowres must look like"),
      "lowres too large": ([ck, "--simulate", "--lowres=256x256"], "larger than the target"),
      "gt size": ([ck, "--simulate", "--lowres=32", inp("gt64.npz")], "model's matrix"),
      "gt range": ([ck, "--simulate", "--lowres=32", inp("gt_range.npz")], "must lie in [0, 1]"),
      "negative noise": ([ck, "--simulate", "--lowres=32", "--noise=-1"], "--noise"),
      "lowres without simulate": ([ck, inp("ok.npz"), "--lowres=32"], "only for --simulate"),
      "noise without simulate": ([ck, inp("ok.npz"), "--noise=0.01"], "only for --simulate"),
      "lam out of range": ([ck, inp("ok.npz"), "--lam=1.5"], "--lam must be in [0, 1]"),
      "zero steps": ([ck, inp("ok.npz"), "--steps=0"], "--steps must be at least 1"),
      "odd pairs": ([ck, inp("ok.npz"), "--num_samples=3", "--antithetic"],
                    "--num_samples must be even when antithetic"),
      "unknown flag": ([ck, inp("ok.npz"), "--lamda=1"], "lamda"),
  }


def test_bad_inputs_exit_2_with_one_line_and_write_nothing(workdir, tmp_path, capsys,
                                                          monkeypatch):
  monkeypatch.setattr(workdir_lib, "DEFAULT", None)  # for the "no checkpoint" case
  cases = _write_inputs(tmp_path, workdir)
  out = tmp_path / "out" / "sr.npz"
  for name, (args, message) in cases.items():
    code = _run(*args, f"--output={out}", f"--png={tmp_path / 'png'}")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, name
    assert err and err[-1].startswith("error: ") and message in err[-1], (name, err)
    assert not (tmp_path / "out").exists() and not (tmp_path / "png").exists(), name


def test_existing_output_is_not_overwritten(workdir, tmp_path, capsys):
  np.savez(tmp_path / "lr.npz", images=np.ones((1, 32, 32), np.float32))
  for existing in ("sr.npz", "sr.metrics.json"):
    (tmp_path / existing).write_bytes(b"precious")
    args = ([f"--input={tmp_path / 'lr.npz'}"] if existing == "sr.npz"
            else ["--simulate", "--lowres=32"])
    assert _run(f"--checkpoint={workdir}", *args, f"--output={tmp_path / 'sr.npz'}") == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / existing).read_bytes() == b"precious"
    (tmp_path / existing).unlink()
  assert sorted(p.name for p in tmp_path.iterdir()) == ["lr.npz"]  # no temporaries left
