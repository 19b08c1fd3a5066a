"""The experiment scripts (paper figures and table) run end to end in --quick mode on a tiny
checkpoint, write their PNG/CSV/JSON, and report what the method guarantees."""

import csv
import importlib
import json
import pathlib
import sys

import numpy as np
import pytest
from PIL import Image

import vdm_mri
from conftest import REPO, load_config
from vdm_mri import train

sys.path.insert(0, str(REPO / "experiments"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  """A 1-step tiny training run on the bundled sample: a real work dir to sample from."""
  workdir = tmp_path_factory.mktemp("work")
  config = load_config("tiny")
  config.data.path = str(vdm_mri.SAMPLE_DATA)
  config.model.ch = 8
  config.model.ch_mult = (1, 1, 1, 1)  # middle attention at 16x16: fast on CPU
  config.training.update(num_steps=1, checkpoint_every=1, sample_every=1000, log_every=1)
  train.train_and_evaluate(config, workdir)
  return workdir


def _run(script, checkpoint, outdir, *extra):
  module = importlib.import_module(script)
  argv = [f"--checkpoint={checkpoint}", f"--outdir={outdir}", "--quick", "--steps=2",
          f"--data={vdm_mri.SAMPLE_DATA}", *extra]
  return module.main(*(["32x32", script, argv] if script == "_superres_figure" else [argv]))


def test_superres_figure_writes_panel_and_consistent_vdm(checkpoint, tmp_path):
  report = _run("_superres_figure", checkpoint, tmp_path, "--num_samples=2")
  panel = Image.open(tmp_path / "superres_32x32.png")
  assert panel.size[1] == 5 * (128 + 2)  # LR, zero-fill, bilinear, VDM, truth
  saved = json.loads((tmp_path / "superres_32x32.json").read_text())
  assert saved["methods"].keys() == report["methods"].keys() >= {"zero-fill", "vdm_mean"}
  # The final projection makes every VDM output consistent with ŷ₀; magnitude baselines are not.
  assert saved["methods"]["vdm_mean"]["residual"] < 1e-5
  assert saved["methods"]["zero-fill"]["residual"] > 1e-3
  assert len(saved["subjects"]) == 2  # --quick: two subjects, one slice each


def test_lambda_sweep_moves_toward_the_measurement(checkpoint, tmp_path):
  rows = _run("fig4_lambda", checkpoint, tmp_path, "--lams=0,0.5,1")
  residuals = [r["residual_mean"] for r in rows]
  assert residuals[0] > residuals[1] > residuals[2]
  with open(tmp_path / "lambda_sweep.csv") as f:
    assert [float(r["lam"]) for r in csv.DictReader(f)] == [0.0, 0.5, 1.0]
  assert Image.open(tmp_path / "lambda_sweep.png").size[0] > 4 * 128  # 3 λ + truth columns


def test_table_has_every_size_noise_and_method(checkpoint, tmp_path):
  rows = _run("table_val", checkpoint, tmp_path, "--sizes=32x32,48x48", "--noise=0,0.05",
              "--num_samples=2")
  methods = {"zero-fill", "bilinear", "bicubic", "vdm_sample", "vdm_mean_k2"}
  assert {(r["lowres"], r["sigma_y"], r["method"]) for r in rows} == {
      (s, n, m) for s in ("32x32", "48x48") for n in (0.0, 0.05) for m in methods}
  table = json.loads((tmp_path / "table_val.json").read_text())
  assert table["num_slices"] == 2 and len(table["rows"]) == len(rows)
  for r in rows:
    assert np.isfinite([r["psnr"], r["ssim"], r["nmse"], r["residual"]]).all()
    if r["method"].startswith("vdm") and r["sigma_y"] == 0.0:
      assert r["residual"] < 1e-5 and r["posterior_std"] > 0.0


def test_missing_checkpoint_is_exit_code_2(tmp_path, capsys):
  module = importlib.import_module("fig4_lambda")
  with pytest.raises(SystemExit) as e:
    module.main([f"--checkpoint={tmp_path / 'nowhere'}", f"--outdir={tmp_path}"])
  assert e.value.code == 2
  assert "no such directory" in capsys.readouterr().err
  assert not any(pathlib.Path(tmp_path).iterdir())
