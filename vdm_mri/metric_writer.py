"""Training metrics: JSON lines and TensorBoard scalar event files, without TensorFlow.

The event file is TFRecord-framed (length, masked CRC-32C) serialised `Event` protos written by
hand: wall_time (1), step (2), file_version (3) or summary (5) {value (1) {tag (1), simple_value
(2)}}; TensorBoard reads it like any other.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import struct
import time

from absl import logging


def _crc32c_table() -> list[int]:
  table = []
  for i in range(256):
    c = i
    for _ in range(8):
      c = (c >> 1) ^ (0x82F63B78 if c & 1 else 0)
    table.append(c)
  return table


_CRC32C = _crc32c_table()


def crc32c(data_bytes: bytes) -> int:
  """CRC-32C (Castagnoli), as TFRecord framing uses."""
  c = 0xFFFFFFFF
  for b in data_bytes:
    c = _CRC32C[(c ^ b) & 0xFF] ^ (c >> 8)
  return c ^ 0xFFFFFFFF


def _varint(n: int) -> bytes:
  out = bytearray()
  while True:
    out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
    n >>= 7
    if not n:
      return bytes(out)


def _bytes_field(number: int, payload: bytes) -> bytes:
  return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def scalar_event(step: int, values: dict, wall_time: float) -> bytes:
  """A serialised tensorboard Event{wall_time=1, step=2, summary=5{value=1{tag=1, simple=2}}}."""
  summary = b"".join(
      _bytes_field(1, _bytes_field(1, tag.encode()) + b"\x15" + struct.pack("<f", v))
      for tag, v in values.items())
  return (b"\x09" + struct.pack("<d", wall_time) + b"\x10" + _varint(step)
          + _bytes_field(5, summary))


def tf_record(payload: bytes) -> bytes:
  """TFRecord framing: length, masked CRC of length, payload, masked CRC of payload."""
  def masked(b):
    c = crc32c(b)
    return struct.pack("<I", ((c >> 15 | c << 17) + 0xA282EAD8) & 0xFFFFFFFF)
  length = struct.pack("<Q", len(payload))
  return length + masked(length) + payload + masked(payload)


class MetricWriter:
  """Appends {"step", …} lines to metrics.jsonl, scalars to a TensorBoard event file, and logs.

  With `resume_step`, lines of later steps (left by a run that died after its last checkpoint)
  are dropped from metrics.jsonl first, so that every step appears once.
  """

  def __init__(self, workdir: pathlib.Path, *, resume_step: int = 0, enabled: bool = True):
    self.enabled = enabled
    if not enabled:
      return
    (workdir / "tb").mkdir(parents=True, exist_ok=True)
    path = workdir / "metrics.jsonl"
    if path.exists():
      lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
      tmp = path.with_name(path.name + ".tmp")
      tmp.write_text("".join(l for l in lines if json.loads(l)["step"] <= resume_step),
                     encoding="utf-8")
      os.replace(tmp, path)  # never a half-rewritten metrics file
    self._jsonl = open(path, "a", encoding="utf-8")
    name = f"events.out.tfevents.{time.time():.0f}.{socket.gethostname()}"
    self._events = open(workdir / "tb" / name, "ab")
    version = b"\x09" + struct.pack("<d", time.time()) + _bytes_field(3, b"brain.Event:2")
    self._events.write(tf_record(version))

  def write(self, step: int, values: dict):
    if not self.enabled:
      return
    logging.info("step %d: %s", step, ", ".join(f"{k} {v:.5g}" for k, v in values.items()))
    self._jsonl.write(json.dumps({"step": step, **values}) + "\n")
    self._jsonl.flush()
    self._events.write(tf_record(scalar_event(step, values, time.time())))
    self._events.flush()

  def close(self):
    if self.enabled:
      self._jsonl.close()
      self._events.close()
