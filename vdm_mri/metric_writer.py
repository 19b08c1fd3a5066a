"""Training metrics: JSON lines (metrics.jsonl) and TensorBoard event files (tensorboardX).

TensorBoard gets every scalar (`write`) and the PNG sample grids (`write_image`); tensorboardX
writes the event files without TensorFlow or PyTorch.
"""

from __future__ import annotations

import json
import pathlib
import time

import numpy as np
from absl import logging
from tensorboardX import SummaryWriter

from vdm_mri import atomic


class MetricWriter:
  """Appends {"step", …} lines to metrics.jsonl, scalars (and images) to TensorBoard in tb/,
  and logs. Disabled (`enabled=False`, every process but 0) it writes nothing.

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
      atomic.write_text(path, "".join(  # never a half-rewritten metrics file
          l for l in lines if json.loads(l)["step"] <= resume_step))
    self._jsonl = open(path, "a", encoding="utf-8")
    self._tb = SummaryWriter(logdir=str(workdir / "tb"))

  def write(self, step: int, values: dict):
    if not self.enabled:
      return
    logging.info("step %d: %s", step, ", ".join(f"{k} {v:.5g}" for k, v in values.items()))
    self._jsonl.write(json.dumps({"step": step, **values}) + "\n")
    self._jsonl.flush()
    now = time.time()
    for tag, value in values.items():
      self._tb.add_scalar(tag, float(value), step, walltime=now)
    self._tb.flush()

  def write_image(self, step: int, tag: str, image: np.ndarray):
    """A uint8 grey [H, W] or RGB [H, W, 3] image (a PNG grid) to TensorBoard under `tag`."""
    if not self.enabled:
      return
    image = np.asarray(image)
    self._tb.add_image(tag, image, step, dataformats="HW" if image.ndim == 2 else "HWC")
    self._tb.flush()

  def close(self):
    if self.enabled:
      self._jsonl.close()
      self._tb.close()
