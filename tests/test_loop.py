"""The loop's machinery without a model: periodic actions run at their steps in order, checked
actions only after finite metrics were logged, the final action at the last step and on a
signal (then TrainingInterrupted), and a NaN stops the run before anything is saved."""

import signal

import numpy as np
import pytest

from vdm_mri import loop


class _Writer:
  enabled = False

  def __init__(self):
    self.lines = []

  def write(self, step, values):
    self.lines.append((step, values))


class _State:
  def __init__(self, step):
    self.step = step


def _run(events, num_steps, actions, *, nan_at=None, signals=(), every=3) -> _Writer:
  """`loop.run` over a fake step (bpd 1, NaN at step `nan_at`); each action appends
  (name, step) to `events`. Returns the metrics writer."""
  writer = _Writer()

  def step_fn(state, batch, step):
    value = np.nan if step + 1 == nan_at else 1.0
    return _State(state.step + 1), {"bpd": value, "learning_rate": 0.1,
                                    "finite": np.isfinite(value)}

  periodic = [loop.Periodic(a.every, lambda s, st, n=name: events.append((n, s)), a.checked,
                            a.final) for name, a in actions.items()]
  with loop.TrainLog(writer, every=every, batch_size=2, step=0, num_steps=num_steps) as log:
    loop.run(_State(0), step_fn, iter(range(100)), log, periodic, list(signals),
                num_steps=num_steps)
  return writer


def test_actions_run_at_their_steps_in_order_and_the_final_one_last():
  actions = {"eval": loop.Periodic(2, None, checked=True), "grid": loop.Periodic(5, None),
             "never": loop.Periodic(0, None), "save": loop.Periodic(4, None, True, True)}
  events = []
  writer = _run(events, 10, actions)
  assert events == [("eval", 2), ("eval", 4), ("save", 4), ("grid", 5), ("eval", 6),
                    ("eval", 8), ("save", 8), ("eval", 10), ("grid", 10), ("save", 10)]
  # Train metrics: every 3 steps and before each checked action (eval, save).
  assert [s for s, _ in writer.lines] == [2, 3, 4, 6, 8, 9, 10]
  assert writer.lines[0][1]["train/bpd"] == 1.0 and "train/images_per_s" in writer.lines[0][1]


def test_non_finite_loss_stops_before_a_checked_action():
  events = []
  actions = {"grid": loop.Periodic(1, None), "save": loop.Periodic(2, None, True, True)}
  with pytest.raises(loop.NonFiniteLoss, match="at step 3"):
    _run(events, 6, actions, nan_at=3, every=10)
  # Step 3 is not checked and runs; step 4's save follows the NaN and does not.
  assert events == [("grid", 1), ("grid", 2), ("save", 2), ("grid", 3)]


def test_a_signal_runs_the_final_action_at_the_current_step_then_stops():
  events = []
  with pytest.raises(loop.TrainingInterrupted) as stop:
    _run(events, 10, {"save": loop.Periodic(100, None, True, True)}, signals=[signal.SIGTERM])
  assert (stop.value.signum, stop.value.step) == (signal.SIGTERM, 1)
  assert events == [("save", 1)]


class _Pending:
  """A metric that is computed once waited for (as a device array's block_until_ready)."""

  def __init__(self, events, step):
    self.events, self.step = events, step

  def block_until_ready(self):
    if ("ready", self.step) not in self.events:
      self.events.append(("ready", self.step))
    return self


def test_the_host_waits_for_each_step_before_dispatching_two_ahead():
  """Asynchronous dispatch may queue steps; a loop that never waits between flushes acts on a
  signal only after every queued step has run (minutes on a CPU). Step k + 2 is dispatched only
  after step k finished, so a stop takes effect within two steps."""
  events = []

  def step_fn(state, batch, step):
    events.append(("dispatch", step + 1))
    return _State(state.step + 1), {"pending": _Pending(events, step + 1)}

  class _Log:
    every = 100

    def add(self, metrics):
      pass

  loop.run(_State(0), step_fn, iter(range(100)), _Log(), [], [], num_steps=8)
  for k in range(1, 7):
    assert events.index(("ready", k)) < events.index(("dispatch", k + 2))
