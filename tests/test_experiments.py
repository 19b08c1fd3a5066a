"""The experiment scripts (paper figures and table) run end to end in --quick mode on a tiny
checkpoint, write their PNG/CSV/JSON, and report what the method guarantees."""

import csv
import importlib
import json
import pathlib
import shutil
import sys

import jax
import numpy as np
import pytest
from PIL import Image

import vdm_mri
from conftest import REPO, load_config, tiny_config_128, write_workdir

sys.path.insert(0, str(REPO / "experiments"))

# The scripts' logic is the subject here; sharding over devices is test_sampling's and
# test_distributed's.
pytestmark = pytest.mark.usefixtures("one_device_meshes")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  """A tiny model's work dir (its initial train state) to sample from."""
  config = tiny_config_128()
  config.data.path = str(vdm_mri.SAMPLE_DATA)
  return write_workdir(tmp_path_factory.mktemp("work"), config)


@pytest.fixture(scope="module")
def two_sets(tmp_path_factory):
  """Two small validation sets: the bundled sample as `stripped_val.npz` (set "stripped") and
  mirrored left-right as `mirrored.npz` (set "mirrored")."""
  folder = tmp_path_factory.mktemp("sets")
  with np.load(vdm_mri.SAMPLE_DATA) as d:
    arrays = {k: d[k] for k in d.files}
  np.savez(folder / "stripped_val.npz", **arrays)
  np.savez(folder / "mirrored.npz", **{**arrays, "images": arrays["images"][:, :, ::-1]})
  return f"{folder / 'stripped_val.npz'},{folder / 'mirrored.npz'}"


def _run(script, checkpoint, outdir, *extra, data=vdm_mri.SAMPLE_DATA):
  module = importlib.import_module(script)
  argv = [f"--checkpoint={checkpoint}", f"--outdir={outdir}", "--quick", "--steps=2",
          f"--data={data}", *extra]
  return module.main(*(["32x32", script, argv] if script == "_superres_figure" else [argv]))


def test_data_sets_default_to_the_shared_files_and_are_named_by_stem(tmp_path, monkeypatch):
  import _common
  stripped, skull = tmp_path / "brain_t1w_val.npz", tmp_path / "brain_t1w_skull_val.npz"
  monkeypatch.setattr(vdm_mri.data.loader, "default_data_dir", lambda: tmp_path)
  assert _common.data_paths(None) == [vdm_mri.SAMPLE_DATA]
  skull.write_bytes(b"")
  assert _common.data_paths(None) == [skull]
  stripped.write_bytes(b"")
  assert _common.data_paths(None) == [stripped, skull]  # stripped first
  assert _common.data_paths("b.npz,a_val.npz") == [pathlib.Path("b.npz"), pathlib.Path("a_val.npz")]
  assert [_common.set_name(p) for p in (stripped, skull, vdm_mri.SAMPLE_DATA, "x/val_set.npz")] == [
      "brain_t1w", "brain_t1w_skull", "brain_t1w_sample", "val_set"]


def test_two_files_with_one_set_name_are_exit_code_2(checkpoint, tmp_path, capsys):
  (tmp_path / "sub").mkdir()
  for path in (tmp_path / "a_val.npz", tmp_path / "sub" / "a.npz"):
    path.write_bytes(vdm_mri.SAMPLE_DATA.read_bytes())
  with pytest.raises(SystemExit) as e:
    _run("fig4_lambda", checkpoint, tmp_path / "out",
         data=f"{tmp_path / 'a_val.npz'},{tmp_path / 'sub' / 'a.npz'}")
  assert e.value.code == 2 and "'a'" in capsys.readouterr().err
  assert not (tmp_path / "out").exists()


def test_superres_figure_writes_a_panel_per_set_and_consistent_vdm(checkpoint, two_sets,
                                                                   tmp_path):
  report = _run("_superres_figure", checkpoint, tmp_path, "--num_samples=2", data=two_sets)
  saved = json.loads((tmp_path / "superres_32x32.json").read_text())
  assert list(saved["sets"]) == list(report["sets"]) == ["stripped", "mirrored"]
  panels = {}
  for name, entry in saved["sets"].items():
    panels[name] = np.asarray(Image.open(tmp_path / f"superres_32x32_{name}.png"))
    assert panels[name].shape[0] == 5 * (128 + 2)  # LR, zero-fill, bilinear, VDM, truth
    assert entry["methods"].keys() >= {"zero-fill", "vdm_mean"}
    # The final projection makes every VDM output consistent with ŷ₀; magnitude baselines are not.
    assert entry["methods"]["vdm_mean"]["residual"] < 1e-5
    assert entry["methods"]["zero-fill"]["residual"] > 1e-3
    assert len(entry["subjects"]) == 2 and len(entry["slices"]) == 2  # --quick: 2 x 1 slice
  # Data files recorded relative to the repository: committed results name no machine's dirs.
  recorded = [saved["sets"][name]["data"] for name in ("stripped", "mirrored")]
  assert not any(pathlib.Path(r).is_absolute() for r in recorded)
  assert [str((REPO / r).resolve()) for r in recorded] == [
      str(pathlib.Path(p).resolve()) for p in two_sets.split(",")]
  # Each panel shows its own set: the truth row of "mirrored" is that of "stripped", flipped.
  truth = np.s_[4 * 130:4 * 130 + 128, 90:90 + 128]
  np.testing.assert_array_equal(panels["mirrored"][truth], panels["stripped"][truth][:, ::-1])


def test_lambda_sweep_moves_toward_the_measurement(checkpoint, tmp_path):
  rows = _run("fig4_lambda", checkpoint, tmp_path, "--lams=0,0.5,1")
  residuals = [r["residual_mean"] for r in rows]
  assert residuals[0] > residuals[1] > residuals[2]
  with open(tmp_path / "lambda_sweep.csv") as f:
    saved = list(csv.DictReader(f))
  assert [(r["set"], float(r["lam"])) for r in saved] == [
      ("brain_t1w_sample", lam) for lam in (0.0, 0.5, 1.0)]
  # 3 λ + truth columns
  assert Image.open(tmp_path / "lambda_sweep_brain_t1w_sample.png").size[0] > 4 * 128


def test_table_has_every_size_noise_and_method(checkpoint, tmp_path):
  rows = _run("table_val", checkpoint, tmp_path, "--sizes=32x32,48x48", "--noise=0,0.05",
              "--num_samples=2")
  methods = {"zero-fill", "bilinear", "bicubic", "vdm_sample", "vdm_mean_k2"}
  assert {(r["set"], r["lowres"], r["sigma_y"], r["method"]) for r in rows} == {
      ("brain_t1w_sample", s, n, m) for s in ("32x32", "48x48") for n in (0.0, 0.05)
      for m in methods}
  table = json.loads((tmp_path / "table_val.json").read_text())
  assert table["sets"]["brain_t1w_sample"]["num_slices"] == 2
  assert len(table["rows"]) == len(rows)
  with open(tmp_path / "table_val.csv") as f:
    assert {r["set"] for r in csv.DictReader(f)} == {"brain_t1w_sample"}
  for r in rows:
    assert np.isfinite([r["psnr"], r["ssim"], r["nmse"], r["residual"]]).all()
    if r["method"].startswith("vdm") and r["sigma_y"] == 0.0:
      assert r["residual"] < 1e-5 and r["posterior_std"] > 0.0


def test_nested_means_are_means_of_the_first_k_samples():
  import curves
  samples = np.random.default_rng(0).random((3, 4, 8, 8))
  means = curves.nested_means(samples, [1, 3, 4])
  np.testing.assert_array_equal(means[1], samples[:, 0])
  np.testing.assert_allclose(means[3], samples[:, :3].mean(1))
  np.testing.assert_allclose(means[4], samples.mean(1))
  with pytest.raises(ValueError):
    curves.nested_means(samples, [5])


def test_csv_keeps_every_column_when_rows_differ(tmp_path):
  import _common
  # a params dir first (no training speed), then a work dir: recipe_eval.py writes such rows
  rows = [{"run": "shipped", "sr/score": 1.9},
          {"run": "cool", "step": 22136, "sr/score": 2.0, "images_per_s": 1.3}]
  _common.write_csv(tmp_path / "r.csv", rows)
  with open(tmp_path / "r.csv") as f:
    read = list(csv.DictReader(f))
  assert list(read[0]) == ["run", "sr/score", "step", "images_per_s"]
  assert read[0]["step"] == "" and read[1]["step"] == "22136" and read[1]["images_per_s"] == "1.3"


def test_calibration_counts_errors_within_two_std_per_region():
  import curves
  rng = np.random.default_rng(1)
  gt = np.zeros((2, 16, 16))
  gt[:, :, 8:] = 0.5  # right half "head"
  std = rng.uniform(0.01, 0.1, gt.shape)
  scale = np.where(gt > 0.05, 1.9, 2.1)  # inside 2σ on the head, just outside elsewhere
  cal = curves.calibration(gt, gt + scale * std * rng.choice([-1, 1], gt.shape), std)
  assert cal["head"]["pixels"] == 256 and cal["all"]["pixels"] == 512
  assert cal["head"]["coverage"] == 1.0 and cal["all"]["coverage"] == 0.5
  assert cal["head"]["corr"] == pytest.approx(1.0)  # |error| = 1.9·std: perfectly correlated
  assert -1.0 <= cal["all"]["corr"] <= 1.0


def test_line_plot_ticks_cover_the_data_and_lines_are_drawn():
  import _plot
  ticks = _plot.nice_ticks(21.9, 33.8)
  assert ticks[0] <= 21.9 and ticks[-1] >= 33.8 and 3 <= len(ticks) <= 7
  assert len(set(np.round(np.diff(ticks), 9))) == 1  # evenly spaced round steps
  image = _plot.line_plot([_plot.Line("a", [1, 10, 100], [20.0, 25.0, float("nan")], ref=22.0),
                           _plot.Line("b", [1, 100], [30.0, 31.0])],
                          title="t", xlabel="x", ylabel="y", log_x=True, size=(300, 200))
  assert image.size == (300, 200 + 2 * 14 + 6)  # axes, then one legend row per line
  colours = {c for _, c in image.getcolors(1 << 16)}
  assert set(_plot.COLOURS[:2]) <= colours


def test_crowded_x_labels_keep_a_subset_that_does_not_overlap():
  import _plot
  centres, widths = [10.0 * k for k in range(30)], [36.0] * 30  # labels 36 px wide, 10 px apart
  keep = _plot.spread_labels(centres, widths)
  assert keep[0] == 0 and 1 < len(keep) < 30
  for a, b in zip(keep, keep[1:]):
    assert centres[b] - widths[b] / 2 >= centres[a] + widths[a] / 2 + 4  # no overprinting
    assert b - a == 4  # and no label left out that would have fitted
  assert _plot.spread_labels([0.0, 100.0, 200.0], [30.0] * 3) == [0, 1, 2]  # room: all drawn


def test_curves_have_every_point_per_set_and_a_nested_k_curve(checkpoint, two_sets, tmp_path):
  import _common
  from vdm_mri import sampling
  rows = _run("curves", checkpoint, tmp_path, "--num_samples=2", data=two_sets)
  with open(tmp_path / "curves.csv") as f:
    saved = list(csv.DictReader(f))
  assert len(saved) == len(rows)
  points = {("reference", "zero_fill"), ("steps", "2"), ("steps", "4"), ("k", "1"), ("k", "2"),
            ("calibration", "all"), ("calibration", "head")}
  keys = [(r["set"], r["lowres"], r["kind"], r["value"]) for r in saved]
  assert sorted(keys) == sorted((s, z, *p) for s in ("stripped", "mirrored")
                                for z in ("64x64", "32x32") for p in points)
  for r in saved:
    cols = ("corr", "coverage") if r["kind"] == "calibration" else ("psnr", "ssim")
    assert np.isfinite([float(r[c]) for c in cols]).all(), r
    if r["kind"] == "calibration":
      assert -1.0 <= float(r["corr"]) <= 1.0 and 0.0 <= float(r["coverage"]) <= 1.0
  result = json.loads((tmp_path / "curves.json").read_text())
  assert result["settings"]["steps_list"] == [2, 4] and result["settings"]["k_list"] == [1, 2]
  # The K curve at k = K_max is the PSNR of the mean of all K_max samples: recompute it.
  entry = result["sets"]["mirrored"]
  case = entry["sizes"]["32x32"]
  images, subjects = _common.load_sets(
      _common.parser("").parse_args([f"--data={two_sets}", "--outdir=."]))["mirrored"][1:]
  x, subj = images[entry["slices"]], subjects[entry["slices"]]
  model, params = _common.load_model(_common.parser("").parse_args(
      [f"--checkpoint={checkpoint}", "--outdir=."]))
  post = sampling.posterior_samples(
      model, params, _common.measure(x, (32, 32), 0.0, jax.random.key(0)),
      key=jax.random.key(1), num_samples=2, num_steps=2, final_projection=True)
  assert case["k"]["2"]["psnr"] == pytest.approx(_common.scores(x, post.mean, subj)["psnr"],
                                                 abs=1e-3)
  assert case["k"]["2"] == case["calibration"]["mean"]
  panel = Image.open(tmp_path / "curves.png")
  assert panel.size[0] >= 2 * 480 and panel.size[1] >= 320 + 4 * 14  # two panels, 4 legend rows


def test_curves_reject_a_k_list_that_splits_antithetic_pairs(checkpoint, tmp_path, capsys):
  for k_list in ("1", "1,3", "2,3"):
    with pytest.raises(SystemExit) as e:
      _run("curves", checkpoint, tmp_path, "--antithetic", "--num_samples=2",
           f"--k_list={k_list}")
    assert e.value.code == 2 and "antithetic pairs" in capsys.readouterr().err, k_list
  assert not tmp_path.joinpath("curves.csv").exists()


def test_missing_checkpoint_is_exit_code_2(tmp_path, capsys):
  module = importlib.import_module("fig4_lambda")
  with pytest.raises(SystemExit) as e:
    module.main([f"--checkpoint={tmp_path / 'nowhere'}", f"--outdir={tmp_path}"])
  assert e.value.code == 2
  assert "no such directory" in capsys.readouterr().err
  assert not any(pathlib.Path(tmp_path).iterdir())


def test_learning_curve_reads_sr_validations_against_images_seen(tmp_path, capsys):
  work = tmp_path / "work"
  work.mkdir()
  (work / "config.json").write_text(json.dumps({"training": {"batch_size": 8}}))
  records = [{"step": 50, "train/bpd": 9.0}, {"step": 100, "eval/bpd": 7.5},
             {"step": 100, "sr/score": -0.5, "sr/a/32x32/psnr": 26.0,
              "sr/a/32x32/psnr_gain": -0.5, "sr/a/32x32/zf_psnr": 26.5},
             {"step": 200, "eval/bpd": 6.5},
             {"step": 200, "sr/score": 0.25, "sr/a/32x32/psnr": 26.75,
              "sr/a/32x32/psnr_gain": 0.25, "sr/a/32x32/zf_psnr": 26.5,
              "den/a/band3/eps_mse": 0.15}]
  (work / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  module = importlib.import_module("learning_curve")
  rows = module.main([f"--workdir={work}", f"--outdir={tmp_path / 'out'}"])
  assert [(r["step"], r["images_seen"], r["eval_bpd"], r["a/32x32/psnr_gain"]) for r in rows] == [
      (100, 800, 7.5, -0.5), (200, 1600, 6.5, 0.25)]
  assert "den/a/band3/eps_mse" not in rows[0] and rows[1]["den/a/band3/eps_mse"] == 0.15
  with open(tmp_path / "out" / "learning_curve.csv") as f:
    assert [float(r["sr_score"]) for r in csv.DictReader(f)] == [-0.5, 0.25]
  assert Image.open(tmp_path / "out" / "learning_curve.png").size[0] >= 400
  assert (tmp_path / "out" / "metrics.jsonl").read_text() == (work / "metrics.jsonl").read_text()
  with pytest.raises(SystemExit) as e:
    module.main([f"--workdir={tmp_path / 'nowhere'}", f"--outdir={tmp_path / 'out2'}"])
  assert e.value.code == 2 and "not a training work dir" in capsys.readouterr().err


def test_export_prior_sets_sampling_defaults_and_keeps_the_selection(tmp_path, capsys):
  import jax  # pylint: disable=g-import-not-at-top
  from vdm_mri import model as model_lib, pretrained  # pylint: disable=g-import-not-at-top
  config = tiny_config_128()
  params = model_lib.from_config(config).init(jax.random.key(0))
  src = pretrained.export(tmp_path / "best", params, config, step=12, images_seen=96,
                          metrics={"sr/score": 0.3})
  module = importlib.import_module("export_prior")
  dst = module.main([f"--src={src}", f"--dst={tmp_path / 'ship'}", "--steps=7",
                     "--num_samples=3", "--sampler=projection", "--eta=0.5",
                     "--t_start=0.6", "--note=test"])
  manifest = pretrained.verify(dst)
  assert (manifest["step"], manifest["images_seen"], manifest["note"]) == (12, 96, "test")
  assert manifest["metrics"]["sr/score"] == 0.3
  shipped = pretrained.load_config(dst)
  assert (shipped.sampling.steps, shipped.sampling.num_samples, shipped.sampling.sampler,
          shipped.sampling.eta, shipped.sampling.t_start, shipped.sampling.antithetic) == (
              7, 3, "projection", 0.5, 0.6, False)
  paired = module.main([f"--src={dst}", f"--dst={tmp_path / 'pairs'}", "--num_samples=2",
                        "--antithetic"])
  assert (pretrained.load_config(paired).sampling.antithetic,
          pretrained.load_config(paired).sampling.steps) == (True, 7)
  with pytest.raises(SystemExit) as e:  # pairs need an even K
    module.main([f"--src={dst}", f"--dst={tmp_path / 'odd'}", "--antithetic"])
  assert e.value.code == 2 and "must be even" in capsys.readouterr().err
  assert not (tmp_path / "odd").exists()
  assert shipped.model.to_dict() == pretrained.load_config(src).model.to_dict()
  jax.tree.map(np.testing.assert_array_equal, pretrained.load_params(dst),
               pretrained.load_params(src))
  (src / pretrained.PARAMS_FILE).write_bytes(b"changed")
  with pytest.raises(SystemExit) as e:
    module.main([f"--src={src}", f"--dst={tmp_path / 'ship2'}"])
  assert e.value.code == 2 and "manifest says" in capsys.readouterr().err
  assert not (tmp_path / "ship2").exists()
  with pytest.raises(SystemExit) as e:
    module.main([f"--src={dst}", f"--dst={tmp_path / 'ship3'}", "--t_start=0"])
  assert e.value.code == 2 and "t_start must be in" in capsys.readouterr().err
  assert not (tmp_path / "ship3").exists()
  scores = tmp_path / "recipes.json"
  scores.write_text(json.dumps({"runs": [{"run": "a", "sr/score": 1.5, "den/x": 0.1, "dir": "d"}]}))
  module.main([f"--src={dst}", f"--dst={tmp_path / 'ship4'}", f"--metrics_from={scores}"])
  assert pretrained.verify(tmp_path / "ship4")["metrics"] == {"sr/score": 1.5, "den/x": 0.1}


def test_scripts_default_to_the_checkpoints_sampling_config(checkpoint):
  import _common
  args = _common.parser("")
  _common.add_sampling_flags(args)
  parsed = args.parse_args([f"--checkpoint={checkpoint}", "--outdir=."])
  _common.load_model(parsed)
  config = load_config("tiny").sampling
  opts = _common.sampling_kwargs(parsed)
  assert (opts["num_steps"], opts["num_samples"], opts["lam"], opts["sampler"]) == (
      config.steps, config.num_samples, config.lam, config.sampler)
  parsed = args.parse_args([f"--checkpoint={checkpoint}", "--outdir=.", "--steps=1000",
                            "--sampler=projection", "--num_samples=3"])
  _common.load_model(parsed)
  opts = _common.sampling_kwargs(parsed)
  assert (opts["num_steps"], opts["num_samples"], opts["sampler"]) == (1000, 3, "projection")
  assert config.sampler == "paper"  # a script's own default sampler overrides the checkpoint's
  args = _common.parser("", sampler="projection")
  _common.add_sampling_flags(args)
  for extra, expected in (([], "projection"), (["--sampler=paper"], "paper")):
    parsed = args.parse_args([f"--checkpoint={checkpoint}", "--outdir=.", *extra])
    _common.load_model(parsed)
    assert _common.sampling_kwargs(parsed)["sampler"] == expected
  # a checkpoint that samples in antithetic pairs: followed by the scripts without their own
  # sampler; a script with its own (the paper's figures) draws independent samples
  paired = _common.api.SamplingOptions(num_samples=4, antithetic=True)
  for own_sampler, extra, expected in ((None, [], True), ("paper", [], False),
                                       ("paper", ["--antithetic"], True),
                                       (None, ["--no-antithetic"], False)):
    args = _common.parser("", sampler=own_sampler)
    _common.add_sampling_flags(args)
    parsed = args.parse_args([f"--checkpoint={checkpoint}", "--outdir=.", *extra])
    parsed.checkpoint_sampling = paired
    assert _common.sampling_kwargs(parsed)["antithetic"] is expected
  parsed = args.parse_args([f"--checkpoint={checkpoint}", "--outdir=.", "--num_samples=3"])
  parsed.checkpoint_sampling = paired
  with pytest.raises(SystemExit) as e:  # an odd K for pairs: exit 2, no traceback
    _common.sampling_kwargs(parsed)
  assert e.value.code == 2


def test_sampler_comparison_reports_cost_quality_and_calibration(checkpoint, tmp_path):
  rows = _run("sampler_compare", checkpoint, tmp_path,
              "--settings=paper:2:2,projection:2:2:0.85:1:anti,projection:2:1:0:0.6")
  assert {(r["set"], r["lowres"]) for r in rows} == {("brain_t1w_sample", "64x64"),
                                                     ("brain_t1w_sample", "32x32")}
  for r in rows:
    assert r["nfe"] == r["steps"] * r["k"]
    np.testing.assert_allclose(r["psnr"] - r["zf_psnr"], r["psnr_gain"], atol=1e-9)
    if r["k"] > 1:
      assert 0.0 <= r["coverage"] <= 1.0 and -1.0 <= r["corr"] <= 1.0
    else:
      assert r["coverage"] == ""  # no std from one sample
  with open(tmp_path / "samplers.csv") as f:
    assert len(list(csv.DictReader(f))) == len(rows)
  assert Image.open(tmp_path / "samplers.png").size[0] > 0
  assert (tmp_path / "samplers.md").read_text().count("\n| paper:2:2:") == 1
  assert {r["antithetic"] for r in rows if r["setting"].endswith(":anti")} == {True}
  # a comparison written before pairs existed: its rows had no pairing (independent samples)
  saved = json.loads((tmp_path / "samplers.json").read_text())
  saved["rows"] = [{k: v for k, v in r.items() if k != "antithetic"} | {
      "setting": r["setting"].removesuffix(":indep")} for r in saved["rows"] if not r["antithetic"]]
  (tmp_path / "samplers.json").write_text(json.dumps(saved))
  rows = [r for r in rows if not r["antithetic"]]
  # --append keeps the other settings' rows and replaces a setting that is run again
  more = _run("sampler_compare", checkpoint, tmp_path, "--settings=paper:1:2,paper:2:2",
              "--append")
  again = [r for r in rows if r["setting"] == "paper:2:2:0.85:1:indep"]
  assert {r["setting"] for r in more} == {r["setting"] for r in rows} | {"paper:1:2:0.85:1:indep"}
  assert len(more) == len(rows) + 2 and all(r["antithetic"] is False for r in more)
  assert [r["psnr"] for r in more if r["setting"] == "paper:2:2:0.85:1:indep"] == [
      r["psnr"] for r in again]  # the same keys: the same result
  with pytest.raises(SystemExit) as e:
    _run("sampler_compare", checkpoint, tmp_path / "none", "--settings=paper:1:2", "--append")
  assert e.value.code == 2
  with pytest.raises(SystemExit) as e:
    _run("sampler_compare", checkpoint, tmp_path / "bad", "--settings=ddpm:2:2")
  assert e.value.code == 2 and not (tmp_path / "bad").exists()
  with pytest.raises(SystemExit) as e:  # one weight per validation set, and there is one set
    _run("prior_samples", checkpoint, tmp_path / "bad", "--set_weights=0.65,0.35")
  assert e.value.code == 2 and not (tmp_path / "bad").exists()


def test_recipe_eval_scores_each_run_by_bands_and_sr(checkpoint, tmp_path):
  import recipe_eval
  # Run a: the work dir with a training log of 3 steps (batch 8), as MetricWriter writes it.
  logged = shutil.copytree(checkpoint, tmp_path / "a")
  (logged / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in [
      {"step": 1, "train/bpd": 9.0, "train/images_per_s": 3.0}, {"step": 2, "eval/bpd": 8.5},
      {"step": 3, "train/bpd": 8.0, "train/images_per_s": 5.0},
      {"step": 3, "train/images_per_s": 4.5}]))
  argv = [f"--outdir={tmp_path}", f"--runs=a={logged},b={checkpoint}", "--quick",
          "--steps=2", "--num_samples=1", "--per_subject=1", f"--data={vdm_mri.SAMPLE_DATA}"]
  recipe_eval.main(argv)
  result = json.loads((tmp_path / "recipes.json").read_text())
  a, b = result["runs"]
  assert (a["step"], a["images_seen"], a["images_per_s"]) == (3, 24, 4.5)  # median images/s
  assert "step" not in b  # no training log: no training statistics
  bands = [k for k in a if k.startswith("den/brain_t1w_sample/band") and k.endswith("eps_mse")]
  assert len(bands) == 8 and len(result["protocol"]["bands"]) == 8
  for k in bands + ["sr/score", "den/brain_t1w_sample/diffusion_bpd"]:
    assert a[k] == b[k]  # one protocol: the same run scores the same


def test_recipe_eval_without_sr_scores_the_bands_of_every_set(checkpoint, tmp_path):
  import recipe_eval
  # The same slices under two set names, as training and validation files give them.
  other = tmp_path / "brain_t1w_sample_train.npz"
  shutil.copy(vdm_mri.SAMPLE_DATA, other)
  argv = [f"--outdir={tmp_path}", f"--runs=b={checkpoint}", "--no-sr", "--per_subject=1",
          f"--data={vdm_mri.SAMPLE_DATA},{other}"]
  recipe_eval.main(argv)
  result = json.loads((tmp_path / "recipes.json").read_text())
  (row,) = result["runs"]
  assert not any(k.startswith("sr/") for k in row) and result["protocol"]["sr"] is False
  for k in range(8):  # one noise draw per set and band: the same slices score alike
    a = row[f"den/brain_t1w_sample/band{k}/eps_mse"]
    b = row[f"den/brain_t1w_sample_train/band{k}/eps_mse"]
    assert np.isfinite(a) and a == pytest.approx(b, rel=0.5)


def test_prior_samples_panel_and_brain_statistics(checkpoint, tmp_path):
  import prior_samples
  # The bundled sample as its own training data: every validation slice is a training slice.
  report = _run("prior_samples", checkpoint, tmp_path, "--num=2",
                f"--train_data={vdm_mri.SAMPLE_DATA}")
  assert report["steps"] == 2 and report["num"] == 2
  image = Image.open(tmp_path / "prior_2.png")
  assert image.size[1] == 2 * (128 + 2)  # a row of samples above a row of real slices
  real = report["validation"]
  assert report["validation_slices"] == 16  # statistics over every validation slice
  assert 0.0 < real["head_fraction"] < 1.0 and real["head_intensity"] > 0.05
  assert real["head_fraction_sd"] > 0.0  # slices of the whole stack differ
  assert real["nearest_training"] == pytest.approx(1.0, abs=1e-5)
  # An untrained network's samples are noise: far from every brain slice.
  assert report["samples"]["nearest_training"] < 0.5
  per_sample = report["per_sample"]  # each sample's values, in the order drawn
  assert all(len(v) == 2 for v in per_sample.values())
  assert np.mean(per_sample["lr_symmetry"]) == pytest.approx(report["samples"]["lr_symmetry"],
                                                             abs=1e-4)
  assert np.mean(per_sample["nearest_training"]) == pytest.approx(
      report["samples"]["nearest_training"], abs=1e-4)
  with pytest.raises(SystemExit) as e:  # a missing training file: exit 2 before sampling
    _run("prior_samples", checkpoint, tmp_path / "bad", f"--train_data={tmp_path / 'no.npz'}")
  assert e.value.code == 2 and not (tmp_path / "bad").exists()
  with pytest.raises(SystemExit) as e:  # one weight per validation set, and there is one set
    _run("prior_samples", checkpoint, tmp_path / "bad", "--set_weights=0.65,0.35")
  assert e.value.code == 2 and not (tmp_path / "bad").exists()
  # The statistics mean what they say: a mirror-symmetric image scores 1, its flip-sign twin -1.
  sym = np.random.default_rng(0).random((1, 8, 8))
  sym = sym + sym[:, :, ::-1]
  assert prior_samples.image_stats(sym)["lr_symmetry"] == pytest.approx(1.0)
  ramp = np.tile(np.arange(8.0), (1, 8, 1))
  assert prior_samples.image_stats(ramp)["lr_symmetry"] == pytest.approx(-1.0)


def test_head_pose_statistics_follow_the_augmentation_rotation_and_shift():
  # Tilt and offset measure what the affine augmentation does to a head, in its convention: a
  # mirror-symmetric head warped by +20 degrees (counter-clockwise) and shifted has tilt +20 and
  # moves by the shift; undone, it is symmetric again, though its plain mirror correlation fell.
  import prior_samples
  from vdm_mri.data import augment
  rows, cols = np.mgrid[:64, :64] - 31.5
  head = 0.5 * ((rows / 24.0) ** 2 + (cols / 16.0) ** 2 <= 1.0)
  for r, c in ((-12, -7), (-12, 7), (8, 0)):  # symmetric about the vertical axis only
    head = head + 0.5 * ((rows - r) ** 2 + (cols - c) ** 2 <= 16.0)
  head = head.astype(np.float32)
  warp = lambda deg, dr, dc: np.asarray(augment.affine_warp(
      head[..., None], deg, 0.0, dr, dc, 0.0))[..., 0]
  images = np.stack([head, warp(20.0, 0.0, 0.0), warp(-12.0, 3.0, -4.0), np.zeros_like(head)])
  per = prior_samples.per_image_stats(images)
  np.testing.assert_allclose(per["head_tilt"], [0.0, 20.0, -12.0, 0.0], atol=1.0)
  np.testing.assert_allclose(per["head_offset"], [0.0, 0.0, 5.0, 0.0], atol=0.3)
  assert per["aligned_symmetry"][:3].min() > 0.95
  assert per["lr_symmetry"][1] < 0.9 and per["lr_symmetry"][2] < 0.9
  stats = prior_samples.image_stats(images)
  assert stats["head_tilt"] == pytest.approx((0 + 20 + 12 + 0) / 4, abs=0.5)


def test_nearest_training_slice_is_the_best_correlation_over_all_chunks(tmp_path, monkeypatch):
  import prior_samples
  monkeypatch.setattr(prior_samples, "CHUNK", 3)  # several chunks per block
  rng = np.random.default_rng(0)
  train = rng.random((7, 8, 8)).astype(np.float32)
  query = 2.0 * train[5] + 1.0  # Pearson correlation is blind to gain and offset
  other = rng.random((8, 8)).astype(np.float32)
  best = prior_samples.nearest_training(np.stack([query, other]), [train[:2], train[2:]])
  assert best[0] == pytest.approx(1.0, abs=1e-5)
  expect = max(np.corrcoef(other.ravel(), t.ravel())[0, 1] for t in train)
  assert best[1] == pytest.approx(expect, abs=1e-5)
  # Default training files: the <set>_train.npz beside each <set>_val.npz that has one.
  for name in ("a_val.npz", "a_train.npz", "b_val.npz"):
    (tmp_path / name).write_bytes(b"")
  found = prior_samples.training_files(None, [tmp_path / "a_val.npz", tmp_path / "b_val.npz"])
  assert found == [tmp_path / "a_train.npz"]
  assert prior_samples.training_files("none", [tmp_path / "a_val.npz"]) == []


def test_set_weights_split_each_share_over_its_slices_and_weight_the_statistics():
  import prior_samples
  from vdm_mri import api
  assert prior_samples.set_weights(None, [2, 3]) == pytest.approx([0.2] * 5)
  assert prior_samples.set_weights("1,3", [2, 3]) == pytest.approx([0.125] * 2 + [0.25] * 3)
  for bad in ("1", "1,2,3", "-1,2", "0,0", "a,b", "nan,1"):
    with pytest.raises(api.InputError, match="--set_weights"):
      prior_samples.set_weights(bad, [2, 3])
  # A zero-weight image is left out of the mean and the spread.
  images = np.zeros((3, 4, 4), np.float32)
  images[0, :2] = 1.0  # head fraction 0.5
  images[1, :1] = 1.0  # head fraction 0.25
  stats = prior_samples.image_stats(images, np.array([0.5, 0.5, 0.0]))
  assert stats["head_fraction"] == pytest.approx(0.375)
  assert stats["head_fraction_sd"] == pytest.approx(0.125)


def test_prior_pairs_compare_draw_by_draw_and_refuse_unpaired_reports(tmp_path, capsys):
  import prior_pairs
  # Draw-to-draw spread (shared by both priors through their noise) is 100x the shift; pairing
  # removes it, so the shift stands out by many standard errors, as it would not unpaired.
  rng = np.random.default_rng(0)
  shared = rng.normal(0.0, 10.0, 32)
  tilt = rng.normal(0.0, 8.0, 32)

  def report(path, offset, tilt, seed=2):
    path.write_text(json.dumps({"checkpoint": str(path), "seed": seed, "steps": 100, "num": 32,
                                "per_sample": {"head_offset": list(offset),
                                               "head_tilt": list(tilt)}}))
    return str(path)

  a = report(tmp_path / "a.json", shared, tilt)
  b = report(tmp_path / "b.json", shared + 0.1 + rng.normal(0.0, 0.01, 32), -tilt)
  out = tmp_path / "pairs.json"
  result = prior_pairs.main([a, b, f"--out={out}"])
  offset = result["head_offset"]
  assert offset["difference"] == pytest.approx(0.1, abs=0.01)
  assert offset["standard_error"] < 0.01 < 10.0 / np.sqrt(32)  # below the unpaired error
  assert offset["z"] > 20
  assert result["head_tilt"]["difference"] == pytest.approx(0.0)  # mirrored tilts: same |tilt|
  assert json.loads(out.read_text())["statistics"]["head_offset"] == offset
  # Reports drawn with another seed are not pairs: exit code 2, nothing written.
  other = report(tmp_path / "c.json", shared, tilt, seed=3)
  with pytest.raises(SystemExit) as e:
    prior_pairs.main([a, other, f"--out={tmp_path / 'bad.json'}"])
  assert e.value.code == 2 and "seed" in capsys.readouterr().err
  assert not (tmp_path / "bad.json").exists()
