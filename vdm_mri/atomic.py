"""Files that must never be seen half-written: write a temporary file beside, then rename.

A reader (or a run killed mid-write) sees the old file or the new one, never a mixture; the
temporary name is unique, hidden (`.name.*.tmp`) and removed when the write fails.
"""

from __future__ import annotations

import os
import pathlib
import tempfile
from typing import Callable, IO


def temp_beside(path) -> tuple[int, pathlib.Path]:
  """(fd, temporary path) in `path`'s folder (created if needed), for a later os.replace."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  umask = os.umask(0)
  os.umask(umask)
  os.fchmod(fd, 0o666 & ~umask)  # a normal file's mode, not mkstemp's private 0600
  return fd, pathlib.Path(tmp)


def write_with(path, write: Callable[[IO[bytes]], None]) -> pathlib.Path:
  """`write(f)` into a temporary file, renamed to `path` once it is complete."""
  path = pathlib.Path(path)
  fd, tmp = temp_beside(path)
  try:
    with os.fdopen(fd, "wb") as f:
      write(f)
    os.replace(tmp, path)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise
  return path


def write_bytes(path, payload: bytes) -> pathlib.Path:
  return write_with(path, lambda f: f.write(payload))


def write_text(path, text: str) -> pathlib.Path:
  return write_bytes(path, text.encode("utf-8"))
