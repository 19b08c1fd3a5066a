"""Tests for vdm_mri.data: readers, NIfTI processing, the TFDS builder, the grain loader."""

import json
import sys

import grain
import nibabel as nib
import numpy as np
import pytest

import vdm_mri
from vdm_mri import data
from vdm_mri.data import prepare
from vdm_mri.data import slices as slices_lib
from vdm_mri.data.slices import DataError

# ---------------------------------------------------------------------------------------------
# Synthetic heads: an ellipsoid of intensity `level` with a cubic hole at anterior-left.

ZOOMS = (4.0, 3.5, 6.0)  # mm, RAS voxel axes
SHAPE = (48, 60, 24)
CENTRE = (84.0, 115.0, 72.0)  # mm; off the volume centre, so the FOV must follow the head
HOLE = (slice(12, 18), slice(40, 48), slice(10, 14))  # voxel ranges: left of centre, anterior
SPOT = (slice(20, 22), slice(32, 34), slice(11, 13))  # 8 bright voxels, < 0.5 % of the head


def _head(level=100.0):
  """RAS array [X, Y, Z] float32: ellipsoid (radii 70, 90, 50 mm) of `level`, zero at HOLE,
  5·level at SPOT (so the 99.5th percentile, not the maximum, sets the scale)."""
  centres = [(np.arange(n) + 0.5) * z for n, z in zip(SHAPE, ZOOMS)]
  x, y, z = np.meshgrid(*centres, indexing="ij")
  c = CENTRE
  inside = ((x - c[0]) / 70) ** 2 + ((y - c[1]) / 90) ** 2 + ((z - c[2]) / 50) ** 2 <= 1
  volume = np.where(inside, level, 0.0).astype(np.float32)
  volume[HOLE] = 0
  volume[SPOT] = 5 * level
  return volume


def _save(volume, path, axcodes):
  """Stores a RAS volume in another voxel orientation (same world coordinates)."""
  ras = nib.Nifti1Image(volume, np.diag([*ZOOMS, 1.0]))
  transform = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"),
                                              nib.orientations.axcodes2ornt(axcodes))
  image = ras.as_reoriented(transform)
  assert nib.aff2axcodes(image.affine) == tuple(axcodes)
  nib.save(image, path)


@pytest.fixture
def nifti_dir(tmp_path):
  folder = tmp_path / "nifti"
  folder.mkdir()
  _save(_head(100.0), folder / "sub-01_T1w.nii.gz", "LPS")
  _save(_head(2500.0), folder / "sub-02_T1w.nii.gz", "PSL")
  _save(_head(7.0), folder / "sub-03.nii", "ASR")
  return folder


def _expected_hole(matrix, fov_mm=240.0):
  """Rows/columns of the output pixels that lie wholly inside the hole, by RAS geometry."""
  inside = _head() > 0
  pixel = fov_mm / matrix
  ranges = []
  for axis, sl in enumerate(HOLE[:2]):
    idx = np.flatnonzero(inside.any(axis=tuple(a for a in range(3) if a != axis)))
    start = (idx[0] + idx[-1] + 1) * ZOOMS[axis] / 2 - fov_mm / 2  # FOV centred on the head box
    lo, hi = (sl.start * ZOOMS[axis] - start) / pixel, (sl.stop * ZOOMS[axis] - start) / pixel
    ranges.append(np.arange(int(np.ceil(lo)), int(np.floor(hi))))
  cols, ys = ranges
  return matrix - 1 - ys, cols  # row 0 = anterior (largest y), column 0 = left (smallest x)


# ---------------------------------------------------------------------------------------------
# Slice files


def _write_npz(path, **arrays):
  np.savez(path, **arrays)
  return path


def test_read_npz_matches_sample():
  s = data.read_npz(vdm_mri.SAMPLE_DATA)
  raw = np.load(vdm_mri.SAMPLE_DATA)
  np.testing.assert_array_equal(s.images, raw["images"])
  np.testing.assert_array_equal(s.subject, raw["subject"])
  np.testing.assert_array_equal(s.slice_index, raw["slice_index"])


def test_read_npz_float_images_go_to_12_bit_grid(tmp_path):
  x = np.random.default_rng(0).random((3, 8, 8))
  path = _write_npz(tmp_path / "f.npz", images=x, subject=np.array(["a", "a", "b"]),
                    slice_index=np.arange(3))
  np.testing.assert_array_equal(data.read_npz(path).images, np.round(x * 4095))


GOOD = dict(images=np.zeros((2, 8, 8), np.uint16), subject=np.array(["a", "b"]),
            slice_index=np.arange(2))


@pytest.mark.parametrize("change, problem", [
    (dict(images=None), "missing key"),
    (dict(images=np.zeros((2, 8), np.uint16)), "shape"),
    (dict(images=np.full((2, 8, 8), np.nan)), "NaN"),
    (dict(images=np.full((2, 8, 8), 1.5)), "[0, 1]"),
    (dict(images=np.full((2, 8, 8), 4096, np.uint16)), "[0, 4095]"),
    (dict(subject=np.array(["a", "b", "c"])), "2 strings"),
    (dict(slice_index=np.arange(5)), "2 integers"),
])
def test_read_npz_rejects_bad_files_naming_them(tmp_path, change, problem):
  arrays = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
  path = _write_npz(tmp_path / "bad_slices.npz", **arrays)
  with pytest.raises(DataError) as e:
    data.read_npz(path)
  assert "bad_slices.npz" in str(e.value) and problem in str(e.value)


def test_read_npz_rejects_a_non_npz_file(tmp_path):
  path = tmp_path / "junk.npz"
  path.write_bytes(b"not a zip archive")
  with pytest.raises(DataError, match="junk.npz"):
    data.read_npz(path)


def test_area_weights_are_exact_box_integrals():
  w = slices_lib.area_weights(8, 1.0, 4, 2.0, 0.0)  # 2x downsampling = pair means
  v = np.arange(8.0)
  np.testing.assert_allclose(w @ v, [0.5, 2.5, 4.5, 6.5])
  w = slices_lib.area_weights(10, 0.7, 9, 1.1, -1.5)  # arbitrary grids: mass is conserved
  v = np.random.default_rng(1).random(10)
  np.testing.assert_allclose((w @ v).sum() * 1.1, v.sum() * 0.7)


def test_split_by_subject_is_deterministic_and_disjoint():
  subjects = np.repeat([f"s{i:02d}" for i in range(20)], 3)
  train, val = data.split_by_subject(subjects, 0.2, seed=3)
  assert (train, val) == data.split_by_subject(subjects[::-1], 0.2, seed=3)
  assert len(val) == 4 and not set(train) & set(val) and len(train) + len(val) == 20
  assert val != data.split_by_subject(subjects, 0.2, seed=4)[1]
  with pytest.raises(DataError, match="val_fraction"):
    data.split_by_subject(["a"], 0.5, seed=0)


# ---------------------------------------------------------------------------------------------
# NIfTI folders


def test_nifti_orientation_geometry_and_normalisation(nifti_dir):
  s, report = data.read_sources([nifti_dir], matrix=32)
  assert s.images.shape[1:] == (32, 32) and s.images.dtype == np.uint16
  assert sorted(set(s.subject)) == ["sub-01", "sub-02", "sub-03"] and report.volumes == 3
  rows, cols = _expected_hole(32)
  for subject in ["sub-01", "sub-02", "sub-03"]:  # three orientations, three intensity scales
    x = s.images[(s.subject == subject) & (s.slice_index == 12)][0] / 4095
    assert x.max() == 1.0  # body normalised by its 99.5th percentile
    np.testing.assert_array_equal(x[np.ix_(rows, cols)], 0.0)  # hole at anterior-left ...
    assert x[np.ix_(rows, 31 - cols)].min() > 0.99  # ... not mirrored left/right
    assert x[np.ix_(31 - rows, cols)].min() > 0.99  # ... nor anterior/posterior
  per_subject = [s.images[s.subject == k] for k in ["sub-01", "sub-02", "sub-03"]]
  np.testing.assert_array_equal(per_subject[0], per_subject[1])  # scale invariant
  np.testing.assert_array_equal(per_subject[0], per_subject[2])


def test_nifti_near_empty_slices_are_dropped(nifti_dir):
  s, report = data.read_sources([nifti_dir / "sub-01_T1w.nii.gz"], matrix=32)
  occupied = np.flatnonzero(_head().any(axis=(0, 1)))
  assert set(s.slice_index) <= set(occupied) and len(s) < len(occupied) + 1
  assert {0, 1, SHAPE[2] - 1} & set(s.slice_index) == set()  # empty slices gone
  assert np.all(np.mean(s.images > 0.1 * 4095, axis=(1, 2)) >= 0.05)
  assert report.slices_kept + report.slices_dropped == SHAPE[2]


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_nifti_is_named_or_skipped(nifti_dir, damage):
  bad = nifti_dir / "sub-09_T1w.nii.gz"
  if damage == "garbage":
    bad.write_bytes(b"this is not a NIfTI file")
  else:
    good = (nifti_dir / "sub-01_T1w.nii.gz").read_bytes()
    bad.write_bytes(good[: len(good) // 2])
  with pytest.raises(DataError, match="sub-09_T1w.nii.gz"):
    data.read_sources([nifti_dir], matrix=32)
  with pytest.warns(UserWarning, match="sub-09_T1w.nii.gz"):
    s, report = data.read_sources([nifti_dir], matrix=32, skip_bad=True)
  assert sorted(set(s.subject)) == ["sub-01", "sub-02", "sub-03"]
  assert [name for name, _ in report.skipped] == [str(bad)]


def test_nifti_with_nan_is_rejected(tmp_path):
  volume = _head()
  volume[20, 20, 12] = np.nan
  _save(volume, tmp_path / "sub-07.nii.gz", "RAS")
  with pytest.raises(DataError, match="sub-07.nii.gz.*NaN"):
    data.read_sources([tmp_path], matrix=32)


# ---------------------------------------------------------------------------------------------
# TFDS builder (array_record, no TensorFlow)


def _build(data_dir, **config):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from vdm_mri.data import builder  # pylint: disable=g-import-not-at-top
  tfds.disable_progress_bar()
  config = builder.BrainMriConfig(name="test", **config)
  return builder.build(config, data_dir)


def _by_key(source):
  rows = [source[i] for i in range(len(source))]
  return {(r["subject"].decode() if isinstance(r["subject"], bytes) else r["subject"],
           int(r["slice_index"])): r["image"][..., 0] for r in rows}


def test_builder_from_npz_round_trips_through_data_source(tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  built = _build(tmp_path, source=(str(vdm_mri.SAMPLE_DATA),), val_fraction=0.5, seed=0)
  assert built.info.features["image"].shape == (128, 128, 1)
  raw = data.read_npz(vdm_mri.SAMPLE_DATA)
  expected = {(s, int(k)): im for s, k, im in zip(raw.subject, raw.slice_index, raw.images)}
  ds = tfds.data_source("brain_mri/test", data_dir=tmp_path)
  train, val = _by_key(ds["train"]), _by_key(ds["validation"])
  assert len(train) == len(val) == 8
  assert not {s for s, _ in train} & {s for s, _ in val}  # split by subject
  for key, image in {**train, **val}.items():
    np.testing.assert_array_equal(image, expected[key])
  assert "tensorflow" not in sys.modules
  assert not list(tmp_path.glob(".brain_mri-building-*"))  # temporary build dir removed


def test_builder_from_nifti_folder(nifti_dir, tmp_path):
  built = _build(tmp_path / "tfds", source=(str(nifti_dir),), matrix=32, val_fraction=0.34,
                 seed=1)
  meta = built.info.metadata
  train, val = data.open_split("train", tmp_path / "tfds"), data.open_split("val", tmp_path / "tfds")
  assert train[0]["image"].shape == (32, 32, 1) and train[0]["image"].dtype == np.uint16
  train_subjects = {k for k, _ in _by_key(train)}
  val_subjects = {k for k, _ in _by_key(val)}
  assert len(val_subjects) == 1 and len(train_subjects) == 2 and not train_subjects & val_subjects
  assert len(train) + len(val) == meta["read"]["slices_kept"] > 0
  assert sorted(meta["splits"]["validation"]["subjects"]) == sorted(val_subjects)
  assert "tensorflow" not in sys.modules


# ---------------------------------------------------------------------------------------------
# prepare CLI


def test_prepare_prints_summary(nifti_dir, tmp_path, capsys):
  rc = prepare.main([f"--source={nifti_dir}", f"--data_dir={tmp_path / 'out'}", "--matrix=32",
                     "--val_fraction=0.34"])
  out = capsys.readouterr().out
  assert rc == 0
  assert "3 volume(s)" in out and "validation: 1 subject(s)" in out and "train: 2 subject(s)" in out
  assert (tmp_path / "out" / "brain_mri" / "nifti_32" / "1.0.0" / "dataset_info.json").exists()


def test_prepare_bad_input_exits_2_and_writes_nothing(nifti_dir, tmp_path, capsys):
  (nifti_dir / "sub-09.nii.gz").write_bytes(b"garbage")
  out_dir = tmp_path / "out"
  rc = prepare.main([f"--source={nifti_dir}", f"--data_dir={out_dir}", "--matrix=32"])
  err = capsys.readouterr().err.strip()
  assert rc == 2 and len(err.splitlines()) == 1 and "sub-09.nii.gz" in err
  assert not out_dir.exists()
  rc = prepare.main([f"--source={nifti_dir}", f"--data_dir={out_dir}", "--matrix=32",
                     "--skip_bad", "--val_fraction=0.34"])
  assert rc == 0 and "skipped" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# Loader


def _indexed_source(n=37, size=8):
  """Example i is a constant image of value i (12-bit), so batches reveal their examples."""
  images = np.broadcast_to(np.arange(n, dtype=np.uint16)[:, None, None], (n, size, size))
  return data.ArraySource(images, np.array([f"s{i % 5}" for i in range(n)]), np.arange(n))


def _ids(batch):
  return np.round(batch["image"][:, 0, 0, 0] * 4095).astype(int).tolist()


def _take(it, n):
  return [next(it) for _ in range(n)]


def test_train_iterator_batches_and_determinism():
  source = _indexed_source()
  kw = dict(global_batch=6, process_index=0, process_count=1, num_threads=0)
  a = _take(data.train_iterator(source, seed=5, **kw), 14)
  b = _take(data.train_iterator(source, seed=5, **kw), 14)
  c = _take(data.train_iterator(source, seed=6, **kw), 14)
  assert a[0]["image"].shape == (6, 8, 8, 1) and a[0]["image"].dtype == np.float32
  assert all(_ids(x) == _ids(y) for x, y in zip(a, b))
  assert any(_ids(x) != _ids(y) for x, y in zip(a, c))
  ids = sum((_ids(x) for x in a), [])
  assert sorted(ids[:37]) == list(range(37))  # an epoch is a permutation
  assert ids[:37] != ids[37:74]  # reshuffled per epoch
  assert ids[:37] != sorted(ids[:37])


def test_train_iterator_state_resumes_exactly(tmp_path):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  source = _indexed_source()
  kw = dict(global_batch=4, seed=0, process_index=0, process_count=1, num_threads=2)
  it = data.train_iterator(source, **kw)
  _take(it, 5)
  state = it.get_state()
  json.dumps(state)  # plain JSON-able
  expected = [_ids(b) for b in _take(it, 12)]  # crosses an epoch boundary
  resumed = data.train_iterator(source, **kw)
  resumed.set_state(state)
  assert [_ids(b) for b in _take(resumed, 12)] == expected
  # ... and through an Orbax checkpoint.
  it = data.train_iterator(source, **kw)
  _take(it, 7)
  with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
    mngr.save(7, args=ocp.args.Composite(data=data.checkpoint_args(it)))
    mngr.wait_until_finished()
    expected = [_ids(b) for b in _take(it, 3)]
    fresh = data.train_iterator(source, **kw)
    mngr.restore(7, args=ocp.args.Composite(data=data.checkpoint_args(fresh, restore=True)))
  assert [_ids(b) for b in _take(fresh, 3)] == expected


@pytest.mark.parametrize("count", [2, 3])
def test_train_iterator_processes_split_the_one_process_batches(count):
  """The processes' batches, concatenated in process order, are the one-process global batches
  (same images, same order), for one source and for a mixture; within a global batch the
  processes read disjoint rows."""
  for sources, weights in [(_indexed_source(37), None),
                           ([_offset_source(20, 0), _offset_source(50, 1000)], [0.6, 0.4])]:
    kw = dict(global_batch=6, seed=2, num_threads=0, weights=weights)
    single = [_ids(b) for b in _take(data.train_iterator(
        sources, process_index=0, process_count=1, **kw), 15)]
    parts = [[_ids(b) for b in _take(data.train_iterator(
        sources, process_index=p, process_count=count, **kw), 15)] for p in range(count)]
    assert all(len(parts[p][k]) == 6 // count for p in range(count) for k in range(15))
    assert [sum((parts[p][k] for p in range(count)), []) for k in range(15)] == single


def test_train_iterator_one_process_order_matches_earlier_checkpoints():
  """One process reads the same stream as the earlier pipeline (strided per-process shuffle),
  so a work dir trained before keeps its data order when it resumes."""
  source = _indexed_source(37)
  earlier = (grain.MapDataset.source(source).shuffle(seed=4)[0:37:1].repeat(None)
             .map(lambda e: e["image"]).batch(4, drop_remainder=True))
  got = _take(data.train_iterator(source, global_batch=4, seed=4, process_index=0,
                                  process_count=1, num_threads=0), 20)
  assert [_ids(b) for b in got] == [
      np.round(earlier[k][:, 0, 0, 0]).astype(int).tolist() for k in range(20)]


def test_train_iterator_final_global_batch_in_lock_step():
  source = _indexed_source(37)
  kw = dict(global_batch=6, seed=2, process_count=2, num_epochs=1, num_threads=0)
  seen = [[_ids(b) for b in data.train_iterator(source, process_index=p, **kw)] for p in (0, 1)]
  assert len(seen[0]) == len(seen[1]) == 6  # 37 // 6 global batches, none half-read
  flat = [sum(part, []) for part in seen]
  assert not set(flat[0]) & set(flat[1]) and len(set(flat[0]) | set(flat[1])) == 36


def test_eval_batches_cover_every_example_once():
  source = _indexed_source(37)
  batches = [list(data.eval_batches(source, batch_size=8, process_index=p, process_count=2))
             for p in (0, 1)]
  assert len(batches[0]) == len(batches[1]) == 3  # lock step across processes
  ids, subjects = [], []
  for b in batches[0] + batches[1]:
    assert b["image"].shape == (8, 8, 8, 1)
    ids += [i for i, v in zip(_ids(b), b["valid"]) if v]
    subjects += b["subject"][b["valid"]].tolist()
    assert np.all(b["image"][~b["valid"]] == 0) and np.all(b["slice_index"][~b["valid"]] == -1)
  assert sorted(ids) == list(range(37))
  assert subjects.count("s0") == 8
  # The global batches (process rows concatenated) are those of one process with batch 16.
  single = list(data.eval_batches(source, batch_size=16, process_index=0, process_count=1))
  for k, one in enumerate(single):
    both = np.concatenate([batches[0][k]["image"], batches[1][k]["image"]])
    assert np.array_equal(both, one["image"])
    assert np.array_equal(np.concatenate([batches[0][k]["valid"], batches[1][k]["valid"]]),
                          one["valid"])


def test_open_split_reads_npz_pairs_and_explains_missing_data(tmp_path):
  with pytest.raises(DataError, match="python -m vdm_mri.data.prepare"):
    data.open_split("train", tmp_path)
  raw = np.load(vdm_mri.SAMPLE_DATA)
  for split, rows in [("train", slice(0, 8)), ("val", slice(8, 16))]:
    _write_npz(tmp_path / f"brain_{split}.npz", images=raw["images"][rows],
               subject=raw["subject"][rows], slice_index=raw["slice_index"][rows])
  val = data.open_split("validation", tmp_path)
  assert len(val) == 8 and val[0]["subject"] == "sub-15"


def test_default_data_dir(tmp_path, monkeypatch):
  package = tmp_path / "repo" / "vdm_mri"
  package.mkdir(parents=True)
  monkeypatch.setattr(vdm_mri, "__file__", str(package / "__init__.py"))
  assert data.default_data_dir() is None
  (tmp_path / "shared" / "data").mkdir(parents=True)
  assert data.default_data_dir() == tmp_path / "shared" / "data"


# ---------------------------------------------------------------------------------------------
# Several data sets: discovery, mixing weights.

def _offset_source(n, offset):
  """Slices whose corner pixel encodes offset + index (ids tell the sets apart)."""
  images = np.zeros((n, 8, 8), np.uint16)
  images[:, 0, 0] = offset + np.arange(n)
  return data.ArraySource(images, subject=[f"s{i % 3}" for i in range(n)])


def test_train_iterator_mixes_sets_in_proportion_and_resumes():
  small, large = _offset_source(20, 0), _offset_source(200, 1000)
  kw = dict(global_batch=8, seed=3, process_index=0, process_count=1, num_threads=0,
            weights=[0.75, 0.25])
  ids = sum((_ids(b) for b in _take(data.train_iterator([small, large], **kw), 100)), [])
  from_small = np.array(ids) < 1000
  assert abs(from_small.mean() - 0.75) < 0.03  # the weights, not the sizes (20:200)
  assert sorted(np.array(ids)[from_small][:20]) == list(range(20))  # each set still permuted
  # Default weights: in proportion to the sizes.
  ids = sum((_ids(b) for b in _take(data.train_iterator(
      [small, large], **{**kw, "weights": None}), 50)), [])
  assert abs((np.array(ids) < 1000).mean() - 20 / 220) < 0.03
  # Exact resume of the mixture.
  it = data.train_iterator([small, large], **kw)
  _take(it, 9)
  state = it.get_state()
  expected = [_ids(b) for b in _take(it, 6)]
  resumed = data.train_iterator([small, large], **kw)
  resumed.set_state(state)
  assert [_ids(b) for b in _take(resumed, 6)] == expected


def test_find_datasets_pairs_files_by_name_in_order(tmp_path):
  raw = np.load(vdm_mri.SAMPLE_DATA)
  # File-name order (brain_skull_train < brain_train) differs from set-name order.
  for name, rows in [("brain_train", slice(0, 6)), ("brain_val", slice(6, 8)),
                     ("brain_skull_train", slice(8, 14)), ("brain_skull_val", slice(14, 16))]:
    _write_npz(tmp_path / f"{name}.npz", images=raw["images"][rows],
               subject=raw["subject"][rows], slice_index=raw["slice_index"][rows])
  sets = data.find_datasets(str(tmp_path))
  assert [s.name for s in sets] == ["brain", "brain_skull"]
  assert [len(s.train) for s in sets] == [6, 6] and [len(s.validation) for s in sets] == [2, 2]
  assert sets[1].train[0]["slice_index"] == raw["slice_index"][8]
  # A comma-separated list of files: training only, named by stem.
  sets = data.find_datasets(f"{tmp_path / 'brain_skull_train.npz'}, {tmp_path / 'brain_val.npz'}")
  assert [(s.name, len(s.train), s.validation) for s in sets] == [
      ("brain_skull", 6, None), ("brain", 2, None)]
  with pytest.raises(DataError, match="same name"):
    data.find_datasets([str(tmp_path / "brain_train.npz"), str(tmp_path / "brain_val.npz")])
  with pytest.raises(DataError, match="nowhere.npz: no such slice file"):
    data.find_datasets(str(tmp_path / "nowhere.npz"))


@pytest.mark.parametrize("text, problem", [("1,x", "not comma-separated numbers"),
                                           ("1", "1 data weights"), ("1,0", "must be positive"),
                                           ("1,nan", "must be positive")])
def test_parse_weights_rejects_bad_values(text, problem):
  with pytest.raises(DataError, match=problem):
    data.parse_weights(text, 2)


def test_parse_weights_accepts_strings_and_sequences():
  assert data.parse_weights("", 2) is None
  assert data.parse_weights(" 0.65, 0.35 ", 2) == [0.65, 0.35]
  assert data.parse_weights((2, 1), 2) == [2.0, 1.0]
