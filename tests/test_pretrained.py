"""Params dirs (vdm_mri.pretrained) and the prior shipped in the package: checksums verified,
tampering refused with exit code 2 and nothing written, parameter trees matching their config,
and a few-step super-resolution with the shipped prior through the command line."""

import json
import shutil

import jax
import numpy as np
import pytest

import vdm_mri
from conftest import tiny_config_128
from vdm_mri import pretrained, sample, workdir
from vdm_mri import model as model_lib


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  """(params dir, params, config) of a freshly initialised tiny model."""
  config = tiny_config_128()
  params = model_lib.from_config(config).init(jax.random.key(3))
  path = pretrained.export(tmp_path_factory.mktemp("prior") / "p", params, config, step=7,
                           metrics={"sr/score": 1.5})
  return path, params, config


def _copy(src, tmp_path):
  dst = tmp_path / "copy"
  shutil.copytree(src, dst)
  return dst


def test_export_round_trips_exactly(exported):
  path, params, config = exported
  manifest = pretrained.verify(path)
  assert manifest["step"] == 7 and manifest["metrics"]["sr/score"] == 1.5
  assert manifest["files"][pretrained.PARAMS_FILE]["sha256"] == pretrained.sha256(
      path / pretrained.PARAMS_FILE)
  loaded_config = pretrained.load_config(path)
  assert loaded_config.model.ch_mult == (1, 1, 1, 1)  # JSON lists back to tuples
  model = model_lib.from_config(loaded_config)
  loaded = pretrained.load_params(path, model)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(params), loaded)
  assert not list(path.glob(".*.tmp"))  # no temporary files left behind


@pytest.mark.parametrize("damage, problem", [
    ("flip", "SHA-256 differs"), ("truncate", "truncated or replaced"), ("delete", "missing"),
    ("config", "SHA-256 differs"), ("manifest", "cannot read the manifest")])
def test_damaged_params_dir_is_refused(exported, tmp_path, damage, problem):
  path = _copy(exported[0], tmp_path)
  target = path / pretrained.PARAMS_FILE
  if damage == "flip":
    payload = bytearray(target.read_bytes())
    payload[len(payload) // 2] ^= 0x01
    target.write_bytes(bytes(payload))
  elif damage == "truncate":
    target.write_bytes(target.read_bytes()[:-100])
  elif damage == "delete":
    target.unlink()
  elif damage == "config":
    text = (path / pretrained.CONFIG_FILE).read_text()
    (path / pretrained.CONFIG_FILE).write_text(text.replace('"ch": 8', '"ch": 9'))
  else:
    (path / pretrained.MANIFEST_FILE).write_text("{not json")
  with pytest.raises(pretrained.PretrainedError, match=problem):
    pretrained.load_params(path)


def test_params_that_do_not_fit_the_config_are_refused(exported):
  path, _, config = exported
  bigger = tiny_config_128()
  bigger.model.ch = 16
  with pytest.raises(pretrained.PretrainedError, match="do not match the config"):
    pretrained.load_params(path, model_lib.from_config(bigger))


# --------------------------------------------------------------------------------------------
# The shipped prior.
# --------------------------------------------------------------------------------------------
def test_shipped_prior_verifies_and_matches_its_config():
  assert workdir.DEFAULT == pretrained.DEFAULT  # what loads when no path is given
  manifest = pretrained.verify(pretrained.DEFAULT)
  assert (pretrained.DEFAULT / pretrained.PARAMS_FILE).stat().st_size <= 24 * 2**20
  config = pretrained.load_config(pretrained.DEFAULT)
  model = model_lib.from_config(config)
  params = pretrained.load_params(pretrained.DEFAULT, model)
  assert pretrained.param_shapes(params) == pretrained.param_shapes(model.abstract_params())
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))
  # The manifest records how it was selected: SR validation against zero-filling.
  assert manifest["images_seen"] > 0 and "sr/score" in manifest["metrics"]


@pytest.mark.usefixtures("one_device_meshes")  # 4 samples, not padded to 8
def test_shipped_prior_super_resolves_from_the_command_line(tmp_path):
  with np.load(vdm_mri.SAMPLE_DATA) as d:
    np.savez(tmp_path / "gt.npz", images=d["images"][6:8], subject=d["subject"][6:8])
  out = tmp_path / "sr.npz"
  # The CLI's main in this process, without --checkpoint: the shipped prior.
  assert sample.main(["sample", "--simulate", "--lowres=32x32", f"--input={tmp_path / 'gt.npz'}",
                      f"--output={out}", "--steps=4", "--num_samples=2"]) == 0
  with np.load(out) as f:
    assert f["mean"].shape == (2, 128, 128) and np.isfinite(f["mean"]).all()
  report = json.loads(out.with_suffix(".metrics.json").read_text())
  assert report["steps"] == 4 and np.isfinite(report["vdm_mean"]["psnr"])


def test_tampered_copy_of_the_shipped_prior_exits_2_and_writes_nothing(tmp_path, capsys):
  path = _copy(pretrained.DEFAULT, tmp_path)
  target = path / pretrained.PARAMS_FILE
  target.write_bytes(target.read_bytes()[:-1] + bytes([target.read_bytes()[-1] ^ 0xFF]))
  out = tmp_path / "out" / "sr.npz"
  # The CLI's main in this process (it exits before compiling: no process start needed).
  code = sample.main(["sample", f"--checkpoint={path}", "--simulate", "--lowres=32x32",
                      f"--output={out}", f"--png={tmp_path / 'png'}", "--steps=2"])
  assert code == 2
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1 and "SHA-256 differs" in lines[0], lines
  assert not out.parent.exists() and not (tmp_path / "png").exists()
