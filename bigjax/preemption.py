"""Preemption: SIGTERM is the notice a TPU VM, SLURM or Kubernetes sends before reclaiming a machine.

The trainer asks `requested(step)` after every step. On one process, a SIGTERM handler sets a
flag. On several, JAX's preemption service (started by jax.distributed.initialize, which takes
over SIGTERM) tells every process the same step to stop at, so all of them save that step's
checkpoint together. The trainer then saves, waits for the save and exits with EXIT_PREEMPTED.
"""

import signal

import jax
from jax.experimental import multihost_utils

EXIT_PREEMPTED = 143  # 128 + SIGTERM: what schedulers expect of a process SIGTERM ended


class Watcher:
  """A context manager: inside it, SIGTERM no longer kills the process, it asks the loop to stop."""

  def __init__(self):
    self.signal_name = None
    self._previous = None

  def __enter__(self):
    if jax.process_count() == 1:
      self._previous = signal.signal(signal.SIGTERM, self._on_signal)
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def _on_signal(self, signum, frame):
    self.signal_name = signal.Signals(signum).name

  def requested(self, step: int) -> bool:
    """True at the step where every process should checkpoint and stop."""
    if jax.process_count() == 1:
      return self.signal_name is not None
    if multihost_utils.reached_preemption_sync_point(step):
      self.signal_name = 'a preemption notice'
      return True
    return False
