"""Exact resume: a run SIGKILLed mid-way and restarted ends bit-identical to an
uninterrupted one (params, via real subprocesses of the entry point)."""
import os
import pathlib
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", NPROC="16",
           JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


def command(config, workdir, steps, extra=()):
  return [sys.executable, "-m", "rlaif_jax.main", f"--config={ROOT / 'configs' / config}",
          f"--workdir={workdir}", f"--config.train.steps={steps}",
          "--config.train.checkpoint_every=20", "--config.train.log_every=20",
          "--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=2", *extra]


def run_to_end(cmd, timeout=300):
  out = subprocess.run(cmd, env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
  assert out.returncode == 0, out.stderr[-3000:]


def final_params(workdir):
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(os.path.abspath(os.path.join(workdir, "model", "params")))


def checkpoint_steps(workdir):
  d = pathlib.Path(workdir) / "checkpoints"
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.exists() else []


@pytest.mark.parametrize("config", ["sft.py:toy", "rm.py:toy"])
def test_sigkill_and_restart_is_bit_identical(config, tmp_path):
  steps = 120
  ref, broken = tmp_path / "ref", tmp_path / "broken"
  run_to_end(command(config, ref, steps))

  proc = subprocess.Popen(command(config, broken, steps), env=ENV, cwd=ROOT,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          start_new_session=True)
  try:
    deadline = time.time() + 240
    while not checkpoint_steps(broken) and time.time() < deadline and proc.poll() is None:
      time.sleep(0.05)
    time.sleep(random.Random(0).uniform(0.0, 0.5))   # somewhere between checkpoints
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
  killed_at = checkpoint_steps(broken)
  assert killed_at and max(killed_at) < steps, f"the run was not interrupted: {killed_at}"
  assert not (broken / "model").exists()

  run_to_end(command(config, broken, steps))
  a, b = final_params(ref), final_params(broken)
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b) > 0
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
