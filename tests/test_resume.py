"""Exact resume: a run SIGKILLed mid-way and restarted ends bit-identical to an
uninterrupted one (final params, through real subprocesses of the entry point)."""
import json
import os
import pathlib
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
STEPS, EVERY = 60, 10


def launch(config, workdir, log):
  cmd = [sys.executable, "-m", "rlaif_jax.main", f"--config={ROOT / 'configs' / config}",
         f"--workdir={workdir}", f"--config.train.steps={STEPS}",
         f"--config.train.checkpoint_every={EVERY}", f"--config.train.log_every={EVERY}",
         "--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=2"]
  return subprocess.Popen(cmd, env=ENV, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                          start_new_session=True)


def params(workdir):
  with ocp.StandardCheckpointer() as ckptr:
    restored = ckptr.restore(os.path.abspath(os.path.join(workdir, "model", "params")))
  return [np.asarray(x) for x in jax.tree.leaves(restored)]


def checkpoint_steps(workdir):
  d = pathlib.Path(workdir) / "checkpoints"
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.exists() else []


@pytest.mark.parametrize("config,stage", [("sft.py:toy", "sft"), ("rm.py:toy", "rm"),
                                          ("dpo.py:toy", "dpo")])
def test_sigkill_and_restart_is_bit_identical(config, stage, tmp_path):
  full, killed = tmp_path / "full", tmp_path / "killed"
  logs = {n: open(tmp_path / f"{n}.log", "wb") for n in ("full", "killed", "resumed")}
  read = lambda n: (tmp_path / f"{n}.log").read_text()[-3000:]
  procs = []
  try:
    # The uninterrupted run and the one to be killed run side by side.
    procs = [launch(config, full, logs["full"]), launch(config, killed, logs["killed"])]
    deadline = time.monotonic() + 200
    while not checkpoint_steps(killed):
      assert procs[1].poll() is None, read("killed")
      assert time.monotonic() < deadline, "no checkpoint within 200 s"
      time.sleep(0.02)
    os.killpg(procs[1].pid, signal.SIGKILL)
    assert procs[1].wait(30) == -signal.SIGKILL
    saved = checkpoint_steps(killed)
    assert saved and saved[-1] < STEPS and not (killed / "model").exists(), saved
    metrics = killed / "metrics" / f"{stage}.jsonl"
    logged_before = len(metrics.read_text().splitlines()) if metrics.exists() else 0
    procs.append(launch(config, killed, logs["resumed"]))
    assert procs[2].wait(240) == 0, read("resumed")
    assert procs[0].wait(240) == 0, read("full")
  finally:
    for p in procs:
      if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    for f in logs.values():
      f.close()
  # the restarted run picked up after its last checkpoint, not from scratch
  rows = [json.loads(l) for l in metrics.read_text().splitlines()[logged_before:]]
  assert [r["step"] for r in rows if "loss" in r] == list(range(saved[-1] + EVERY, STEPS + 1, EVERY))
  a, b = params(full), params(killed)
  assert len(a) == len(b) > 0
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
