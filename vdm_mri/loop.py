"""The machinery of a training loop, model-free: periodic actions, the metrics log with its
stop on a non-finite loss, and a stop on SIGTERM/SIGINT that lets the loop save first.

    actions = [Periodic(100, evaluate, checked=True), Periodic(1000, save, checked=True,
               final=True)]
    with stop_on_signals() as signals, TrainLog(writer, every=10, …) as log:
      for each step: log.add(metrics); due = [a for a in actions if a.due(step, last)] …

`run` is the loop itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging as py_logging
import signal
import threading
import time
from typing import Any, Callable

import jax
import numpy as np
import tqdm
from absl import logging


class NonFiniteLoss(RuntimeError):
  """The loss or gradient became NaN/Inf; no checkpoint was written after the step named."""


class TrainingInterrupted(RuntimeError):
  """SIGTERM/SIGINT arrived; a checkpoint at the current step was saved first."""

  def __init__(self, signum: int, step: int, state=None):
    super().__init__(f"stopped by {signal.Signals(signum).name} at step {step} (checkpoint saved)")
    self.signum, self.step, self.state = signum, step, state


@dataclasses.dataclass(frozen=True)
class Periodic:
  """`fn(step, state)` after every `every`-th step (0: never).

  `checked`: the training metrics so far are logged, and checked to be finite, before it runs
  (so that nothing is evaluated or saved after a NaN). `final`: it also runs after the last
  step and when a signal stops the run (the checkpoint)."""

  every: int
  fn: Callable[[int, Any], None]
  checked: bool = False
  final: bool = False

  def due(self, step: int, last: bool) -> bool:
    return (self.every > 0 and step % self.every == 0) or (self.final and last)


_LAST = ("learning_rate", "gamma_0", "gamma_1", "ema_rate")
"""Train metrics reported at the log step; the rest are averaged over the steps since the last."""


def summarise(history: list[dict], first_step: int) -> dict:
  """Host copies of per-step device metrics -> {'train/…': mean over the steps}.

  Raises NonFiniteLoss naming the first step (1-based update count) whose loss or gradient
  norm is not finite (metrics["finite"] false).
  """
  history = jax.device_get(history)
  finite = np.array([h["finite"] for h in history])
  if not finite.all():
    bad = first_step + int(np.argmin(finite))
    raise NonFiniteLoss(f"non-finite loss or gradient at step {bad} (bpd "
                        f"{float(history[bad - first_step]['bpd'])}); training stopped")
  names = [k for k in history[0] if k != "finite"]
  return {f"train/{k}": float(history[-1][k] if k in _LAST else np.mean([h[k] for h in history]))
          for k in names}


class TrainLog:
  """The per-step metrics (kept on the device until a flush), the progress bar and the training
  speed: `flush(step)` writes their summary ('train/…', steps and images per second)."""

  def __init__(self, writer, *, every: int, batch_size: int, step: int, num_steps: int):
    self.writer, self.every, self.batch_size = writer, every, batch_size
    self.history: list[dict] = []
    self.tick = (time.perf_counter(), step)
    self.bar = tqdm.tqdm(total=num_steps, initial=step, unit="step", dynamic_ncols=True,
                         disable=None if writer.enabled else True)  # None: off if no terminal

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.bar.close()

  def add(self, metrics: dict):
    self.history.append(metrics)
    self.bar.update()

  def flush(self, step: int):
    """Summarise and write the steps since the last flush; raises NonFiniteLoss."""
    values = summarise(self.history, step - len(self.history) + 1)
    values["train/steps_per_s"] = (step - self.tick[1]) / (time.perf_counter() - self.tick[0])
    values["train/images_per_s"] = values["train/steps_per_s"] * self.batch_size
    self.writer.write(step, values)
    self.bar.set_postfix(bpd=f"{values['train/bpd']:.4f}")
    self.history = []

  def restart_clock(self, step: int):
    """The next interval times training only (not the actions after a flush)."""
    self.tick = (time.perf_counter(), step)


@contextlib.contextmanager
def stop_on_signals():
  """Within the block, SIGTERM/SIGINT append their number to the yielded list (the loop then
  saves and stops); the same signal a second time acts as it would outside the block."""
  received: list[int] = []
  if threading.current_thread() is not threading.main_thread():
    yield received
    return

  def handler(signum, _):
    if signum in received:
      signal.signal(signum, previous[signum])
      signal.raise_signal(signum)
      return
    logging.warning("received %s: saving a checkpoint at the end of this step, then stopping "
                    "(send it again to stop at once)", signal.Signals(signum).name)
    received.append(signum)

  previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    yield received
  finally:
    for s, h in previous.items():
      signal.signal(s, h)


def stop_requested(signals: list[int], check_all: bool) -> bool:
  """Whether a signal asks to stop now. Several processes must agree (a collective that waits
  for the running step), so they only compare notes when `check_all`."""
  if jax.process_count() == 1:
    return bool(signals)
  if not check_all:
    return False
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(multihost_utils.process_allgather(np.array(bool(signals))).any())


def run(state, step_fn, batches, log: TrainLog, actions: list[Periodic], signals, *,
        num_steps: int):
  """Steps until `num_steps`: each step's metrics go to `log` (flushed every `log.every` steps
  and before a checked action), then the actions due run; a signal stops the run after the
  final actions (the checkpoint) with TrainingInterrupted.

  Steps are dispatched asynchronously, but the loop waits for each step's predecessor before it
  goes on: the host stays at most one step ahead of the device, so a signal is acted on after
  one or two steps rather than after every step queued since the last flush (minutes on a CPU;
  a preempted machine's grace period may be shorter)."""
  step = int(state.step)
  previous = None
  while step < num_steps:
    state, metrics = step_fn(state, next(batches), step)
    step += 1
    log.add(metrics)
    jax.block_until_ready(previous)  # the step before this one has finished
    previous = metrics
    stopping = stop_requested(signals, check_all=step % log.every == 0)
    due = [a for a in actions if a.due(step, last=stopping or step == num_steps)]
    flush = step % log.every == 0 or any(a.checked for a in due)
    if flush:
      log.flush(step)  # NonFiniteLoss: nothing evaluated or saved
    for action in due:
      action.fn(step, state)
    if stopping:
      raise TrainingInterrupted(signals[0], step, state)
    if flush:
      log.restart_clock(step)
  return state


class QuietLibraries(py_logging.Filter):
  """Drops INFO records from Orbax (dozens per checkpoint); warnings and errors pass."""

  def filter(self, record):
    return record.levelno >= py_logging.WARNING or "orbax" not in record.pathname
