"""vdm_mri.atomic: the one rule for files a reader must never see half-written."""

import os

import pytest

from vdm_mri import atomic


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
  path = tmp_path / "sub" / "out.json"
  atomic.write_text(path, "old")
  assert path.read_text() == "old"

  def fail_half_way(f):
    f.write(b"new, but not all of it")
    raise RuntimeError("disk full")

  with pytest.raises(RuntimeError, match="disk full"):
    atomic.write_with(path, fail_half_way)
  assert path.read_text() == "old"
  assert sorted(p.name for p in path.parent.iterdir()) == ["out.json"]
  atomic.write_bytes(path, b"new")
  assert path.read_bytes() == b"new"
  umask = os.umask(0)
  os.umask(umask)
  assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # readable by others, as before
  assert sorted(p.name for p in path.parent.iterdir()) == ["out.json"]
