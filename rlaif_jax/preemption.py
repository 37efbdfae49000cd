"""Preemption: on SIGTERM a run finishes the step in flight, saves it, and exits 75.

SIGTERM is how a spot / preemptible Cloud TPU VM, a maintenance event or
`launch/tpu_pod.sh stop` asks a process to go. Every loop that checkpoints
(Trainer.fit for SFT / RM / DPO, the RL loop, the label stage's shards) does:

    with preemption.Watcher("sft") as watch:
      for step in ...:
        <run step>
        if watch.reached(step):
          <save exactly this step>
          watch.stop(step, saved_in)        # one log line, raises Preempted

`reached(step)` must be called once per step, on every process, with the same
increasing step numbers:

  * Under jax.distributed (pods, `launch/local.sh`) JAX's own notifier catches
    SIGTERM on whichever host got it, and the coordination service picks one
    step for all – the largest step any host has reached, plus one – so every
    host saves the same step (`multihost_utils.reached_preemption_sync_point`,
    which is what Orbax's `CheckpointManager.reached_preemption` asks).
  * In a single process without it, a handler of our own sets a flag and the
    step in flight is the one saved.

A second SIGTERM while saving changes nothing (the handler only logs it; JAX's
notifier only sets its flag again). Even a SIGKILL then cannot corrupt the last
good checkpoint: Orbax writes a step under a temporary name and renames it into
place when complete, and our JSON/JSONL artifacts are written atomically.

Exit status PREEMPTED_EXIT = 75 (sysexits' EX_TEMPFAIL: "try again later"):
`Preempted` is a SystemExit, so `finally` blocks run, no traceback is printed,
and a rerun of the same command with the same workdir resumes exactly.
`launch/tpu_pod.sh --spot` reruns on it.
"""
from __future__ import annotations

import logging
import shlex
import signal
import sys
import threading

import jax
from jax.experimental import multihost_utils

PREEMPTED_EXIT = 75
_LAUNCHER_FLAGS = ("--coordinator_address", "--num_processes", "--process_id")

# Set by our handler and never cleared: a SIGTERM that arrives after one loop's
# last check still stops the next loop of the process (the pipeline's next stage)
# at its first step.
_sigterm = threading.Event()


class Preempted(SystemExit):
  """Raised after the preemption checkpoint is saved; exits the process with 75."""

  def __init__(self, message: str):
    super().__init__(PREEMPTED_EXIT)
    self.message = message


class Watcher:
  """Turns SIGTERM into a step every process stops at (see the module docstring)."""

  def __init__(self, name: str):
    self.name = name
    self._previous = None
    self._distributed = jax.distributed.is_initialized()

  def __enter__(self) -> "Watcher":
    return self.start()

  def __exit__(self, *exc) -> None:
    self.close()

  def start(self) -> "Watcher":
    # Under jax.distributed, JAX's notifier owns SIGTERM: replacing its handler
    # would leave the other hosts uninformed.
    if not self._distributed and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
    return self

  def close(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

  def _on_sigterm(self, signum, frame) -> None:
    if _sigterm.is_set():
      logging.warning("%s: SIGTERM again; still finishing the preemption checkpoint", self.name)
      return
    _sigterm.set()
    logging.warning("%s: SIGTERM: finishing the step in flight, then saving it", self.name)

  def reached(self, step: int) -> bool:
    """True at the step to save and stop at (the same step on every process)."""
    if self._distributed:
      try:
        return multihost_utils.reached_preemption_sync_point(int(step))
      except RuntimeError:        # the preemption service is switched off
        return False
    return _sigterm.is_set()

  def stop(self, step: int, saved_in: str, unit: str = "step") -> None:
    """Logs where the run stopped and how to resume, then raises Preempted."""
    # The launcher's per-process flags are not the user's command: leave them out.
    args = [a for a in sys.argv[1:] if not a.startswith(_LAUNCHER_FLAGS)]
    cmd = shlex.join([sys.executable, "-m", "rlaif_jax.main", *args])
    where = f" on all {jax.process_count()} processes" if jax.process_count() > 1 else ""
    msg = (f"{self.name}: preempted after {unit} {step}, saved in {saved_in}; resume with the "
           f"same command and --workdir ({cmd}{where}); exit status {PREEMPTED_EXIT}")
    logging.warning("%s", msg)
    raise Preempted(msg)
