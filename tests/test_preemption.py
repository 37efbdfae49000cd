"""SIGTERM (a preemption notice) through real subprocesses of the entry point:
the step in flight is finished and saved, the process exits 75 with one line
saying where it stopped and how to resume, and the resumed run ends
bit-identical to an uninterrupted one."""
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from rlaif_jax.preemption import PREEMPTED_EXIT

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", NPROC="16",
           JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
MESH = ["--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=2"]
STOPPED = re.compile(r"(\w+): preempted after (step|iteration|shard) (\d+), saved in (\S+); resume")


def start(args, workdir, log, env=ENV, cmd=None):
  cmd = cmd or [sys.executable, "-m", "rlaif_jax.main"]
  return subprocess.Popen([*cmd, *args, f"--workdir={workdir}"], env=env, cwd=ROOT,
                          stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for(pattern, log_path, proc, timeout=240):
  deadline = time.monotonic() + timeout
  while True:
    text = log_path.read_text(errors="replace") if log_path.exists() else ""
    if re.search(pattern, text):
      return text
    assert proc.poll() is None, f"exited {proc.returncode} before {pattern!r}:\n{text[-3000:]}"
    assert time.monotonic() < deadline, f"no {pattern!r} within {timeout} s:\n{text[-3000:]}"
    time.sleep(0.01)


def checkpoint_steps(workdir):
  d = pathlib.Path(workdir) / "checkpoints"
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.exists() else []


def final_params(workdir):
  with ocp.StandardCheckpointer() as ckptr:
    restored = ckptr.restore(os.path.abspath(os.path.join(workdir, "model", "params")))
  return [np.asarray(x) for x in jax.tree.leaves(restored)]


def finish(proc, log_path, timeout=300):
  try:
    rc = proc.wait(timeout)
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
      proc.wait()
  return rc, log_path.read_text(errors="replace")


def preempt_and_resume(tmp_path, args, line_of, signal_after, total, metrics_name,
                       steps_per_unit=1):
  """Runs `args` uninterrupted and, beside it, once more with SIGTERM sent when
  `line_of(signal_after)` is logged (and a second SIGTERM when the first is
  acknowledged, i.e. while the step finishes and saves); then resumes the latter."""
  full, cut = tmp_path / "full", tmp_path / "cut"
  logs = {n: tmp_path / f"{n}.log" for n in ("full", "cut", "resumed")}
  files = {n: open(p, "wb") for n, p in logs.items()}
  try:
    p_full = start(args, full, files["full"])
    p_cut = start(args, cut, files["cut"])
    wait_for(re.escape(line_of(signal_after)), logs["cut"], p_cut)
    os.kill(p_cut.pid, signal.SIGTERM)
    wait_for(r"SIGTERM: finishing the step in flight", logs["cut"], p_cut)
    os.kill(p_cut.pid, signal.SIGTERM)      # a second one, while it finishes and saves
    rc, out = finish(p_cut, logs["cut"])
    assert rc == PREEMPTED_EXIT, out[-3000:]
    stops = STOPPED.findall(out)
    assert len(stops) == 1, out[-3000:]                           # exactly one such line
    unit = int(stops[0][2])
    assert signal_after < unit < total, (signal_after, unit)      # it stopped mid-run
    # The checkpoint is of the step in flight: the last one that ran (its
    # metrics row is the last), none after it, and no other checkpoint was due.
    assert checkpoint_steps(cut) == [unit * steps_per_unit]
    rows = [json.loads(l) for l in (cut / "metrics" / f"{metrics_name}.jsonl").read_text()
            .splitlines()]
    assert max(r["step"] for r in rows) == unit
    assert line_of(unit + 1) not in out and line_of(unit) in out
    assert not (cut / "model").exists()

    p_res = start(args, cut, files["resumed"])
    rc, out = finish(p_res, logs["resumed"])
    assert rc == 0, out[-3000:]
    assert f"resumed from step {unit * steps_per_unit}" in out
    rc, out = finish(p_full, logs["full"])
    assert rc == 0, out[-3000:]
  finally:
    for f in files.values():
      f.close()
  a, b = final_params(full), final_params(cut)
  assert len(a) == len(b) > 0
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("stage", ["sft", "rm", "dpo"])
def test_sigterm_saves_the_step_in_flight_and_resumes_exactly(stage, tmp_path):
  """SFT, RM and DPO: the one training loop (Trainer.fit) handles the notice."""
  steps = 60
  args = [f"--config={ROOT / 'configs' / f'{stage}.py'}:toy", f"--config.train.steps={steps}",
          "--config.train.log_every=1", "--config.train.checkpoint_every=1000",
          "--config.train.eval_every=0", *MESH]
  preempt_and_resume(tmp_path, args, lambda s: f"{stage} step {s}: loss", 5, steps, stage)


def test_rl_sigterm_saves_the_iteration_in_flight_and_resumes_exactly(tmp_path):
  iterations, updates = 12, 4      # ppo: 2 epochs x 2 minibatches per iteration
  args = [f"--config={ROOT / 'configs' / 'rl.py'}:toy", f"--config.train.steps={iterations}",
          "--config.train.log_every=1", "--config.train.checkpoint_every=1000",
          "--config.rl.algorithm=ppo", "--config.rl.minibatches=2", "--config.rl.ppo_epochs=2",
          "--config.rl.adaptive_kl=True", "--config.rl.reward_norm=running",
          "--config.rl.reward_fn=rlaif_jax.learners.rl_rewards:lowercase_fraction", *MESH]
  preempt_and_resume(tmp_path, args, lambda s: f"rl {s}: reward", 2, iterations, "rl",
                     steps_per_unit=updates)


def children(pid):
  with open(f"/proc/{pid}/task/{pid}/children") as f:
    return [int(c) for c in f.read().split()]


def two_processes_preempted(tmp_path, args, line_of, total, metrics_name, steps_per_unit=1):
  """2 processes x 4 devices (launch/local.sh); SIGTERM reaches only process 1, as
  when one host of a pod gets the notice. JAX's preemption sync makes both
  finish and save the same step, both exit 75, and a 2-process rerun resumes
  from it. Returns the metrics rows of the resumed 2-process run and of an
  uninterrupted 1-process x 8-device run beside it."""
  env = dict(ENV, PYTHON=sys.executable, RLAIF_COORDINATOR_PORT=str(20000 + os.getpid() % 20000))
  local = [str(ROOT / "launch" / "local.sh"), "-n", "2", "-d", "4", "--"]
  ref, two = tmp_path / "ref", tmp_path / "two"
  logs = {n: tmp_path / f"{n}.log" for n in ("ref", "two", "resumed")}
  files = {n: open(p, "wb") for n, p in logs.items()}
  try:
    p_ref = start(args, ref, files["ref"])
    p_two = start(args, two, files["two"], env=env, cmd=local)
    wait_for(re.escape(line_of(2)), logs["two"], p_two)
    kids = {int(re.search(rb"--process_id=(\d)", open(f"/proc/{c}/cmdline", "rb").read())[1]): c
            for c in children(p_two.pid)}
    os.kill(kids[1], signal.SIGTERM)
    rc, out = finish(p_two, logs["two"])
    assert rc == PREEMPTED_EXIT, out[-4000:]
    stops = STOPPED.findall(out)
    assert len(stops) == 2 and stops[0][2] == stops[1][2], stops      # one line per process
    unit = int(stops[0][2])
    assert 2 < unit < total and checkpoint_steps(two) == [unit * steps_per_unit]
    assert line_of(unit + 1) not in out

    p_res = start(args, two, files["resumed"], env=env, cmd=local)
    rc, out = finish(p_res, logs["resumed"])
    assert rc == 0, out[-4000:]
    assert f"resumed from step {unit * steps_per_unit}" in out
    rc, out = finish(p_ref, logs["ref"])
    assert rc == 0, out[-3000:]
  finally:
    for f in files.values():
      f.close()
  rows = lambda d: [json.loads(l) for l in (d / "metrics" / f"{metrics_name}.jsonl").read_text()
                    .splitlines()]
  return rows(two), rows(ref)


def test_two_processes_stop_at_the_same_step_when_one_is_signalled(tmp_path):
  """SFT: the resumed 2-process run's losses are the 1-process run's (to float32
  reduction order: the process count changes how sums are split)."""
  steps = 40
  args = [f"--config={ROOT / 'configs' / 'sft.py'}:toy", f"--config.train.steps={steps}",
          "--config.train.log_every=1", "--config.train.checkpoint_every=1000",
          "--config.train.eval_every=0", *MESH]
  two, ref = two_processes_preempted(tmp_path, args, lambda s: f"sft step {s}: loss", steps, "sft")
  a, b = [r for r in ref if "loss" in r], [r for r in two if "loss" in r]
  assert [r["step"] for r in b] == list(range(1, steps + 1))   # none lost or run twice
  np.testing.assert_allclose([r["loss"] for r in b], [r["loss"] for r in a], rtol=2e-5)


def test_rl_two_processes_stop_at_the_same_iteration_when_one_is_signalled(tmp_path):
  """RL (PPO, 2 updates per iteration): both processes save the same iteration;
  the resumed run samples the same responses and gets the same rewards as an
  uninterrupted 1-process run, iteration by iteration."""
  iterations, updates = 8, 2
  args = [f"--config={ROOT / 'configs' / 'rl.py'}:toy", f"--config.train.steps={iterations}",
          "--config.train.log_every=1", "--config.train.checkpoint_every=1000",
          "--config.train.eval_every=0",
          "--config.rl.algorithm=ppo", "--config.rl.minibatches=2", "--config.rl.ppo_epochs=1",
          "--config.rl.reward_fn=rlaif_jax.learners.rl_rewards:lowercase_fraction", *MESH]
  two, ref = two_processes_preempted(tmp_path, args, lambda s: f"rl {s}: reward", iterations,
                                     "rl", steps_per_unit=updates)
  a = [r for r in ref if "reward" in r]
  b = [r for r in two if "reward" in r]
  assert [r["step"] for r in b] == [r["step"] for r in a] == list(range(1, iterations + 1))
  for x, y in zip(a, b):
    assert [s["response"] for s in x["samples"]] == [s["response"] for s in y["samples"]]
    for key in ("reward", "kl", "loss"):
      np.testing.assert_allclose(y[key], x[key], rtol=1e-4, atol=1e-5, err_msg=(x["step"], key))


@pytest.mark.parametrize("procs", [1, 2])
def test_label_stage_sigterm_writes_the_shard_in_flight_and_resumes(procs, tmp_path):
  """The label stage: the shard being labeled when SIGTERM comes is finished and
  written, no later one is started, exit 75; the rerun labels only the rest and
  the labels equal an uninterrupted 1-process run's. On 2 processes x 4 devices
  the signal reaches process 1 only and both stop after the same shard (more
  shards there: JAX's notifier took ~10 s to act on this machine)."""
  n_shards = 8 if procs == 1 else 32
  args = [f"--config={ROOT / 'configs' / 'label.py'}:toy",
          f"--config.labeler.max_pairs={8 * n_shards}", "--config.labeler.shard_size=8"]
  env, cmd = ENV, None
  if procs == 2:
    env = dict(ENV, PYTHON=sys.executable, RLAIF_COORDINATOR_PORT=str(20000 + os.getpid() % 20000))
    cmd = [str(ROOT / "launch" / "local.sh"), "-n", "2", "-d", "4", "--"]
  full, cut = tmp_path / "full", tmp_path / "cut"
  logs = {n: tmp_path / f"{n}.log" for n in ("full", "cut", "resumed")}
  files = {n: open(p, "wb") for n, p in logs.items()}
  try:
    p_full = start(args, full, files["full"])
    p_cut = start(args, cut, files["cut"], env=env, cmd=cmd)
    wait_for(re.escape("label: shard 1 (8 pairs) done"), logs["cut"], p_cut)
    if procs == 2:
      kids = {int(re.search(rb"--process_id=(\d)", open(f"/proc/{c}/cmdline", "rb").read())[1]): c
              for c in children(p_cut.pid)}
      os.kill(kids[1], signal.SIGTERM)
    else:
      os.kill(p_cut.pid, signal.SIGTERM)
    rc, out = finish(p_cut, logs["cut"])
    assert rc == PREEMPTED_EXIT, out[-3000:]
    stops = STOPPED.findall(out)
    assert len(stops) == procs and len(set(stops)) == 1, stops     # the same shard on each
    assert "--process_id" not in out.split("preempted after")[-1]   # the user's command, not ours
    assert stops[0][:2] == ("label", "shard")
    k = int(stops[0][2])
    assert 1 < k < n_shards - 1                 # stopped mid-job, after the signal
    shards = sorted(p.name for p in (cut / "labels").glob("shard-*.jsonl"))
    assert shards == [f"shard-{i:05d}.jsonl" for i in range(k + 1)]   # through the one in flight
    assert not (cut / "labels.jsonl").exists()
    p_res = start(args, cut, files["resumed"], env=env, cmd=cmd)
    rc, out = finish(p_res, logs["resumed"])
    assert rc == 0, out[-3000:]
    assert f"label: {8 * n_shards} pairs in {n_shards} shards, {n_shards - 1 - k} to do" in out
    rc, out = finish(p_full, logs["full"])
    assert rc == 0, out[-3000:]
  finally:
    for f in files.values():
      f.close()
  rows = lambda d: [{k: v for k, v in json.loads(l).items() if k != "id"}
                    for l in (d / "labels.jsonl").read_text().splitlines()]
  if procs == 1:
    assert rows(cut) == rows(full)
    return
  a, b = rows(full), rows(cut)          # 2 processes: equal to float32 reduction order
  assert len(a) == len(b) == 8 * n_shards
  for x, y in zip(a, b):
    assert {k: v for k, v in x.items() if not isinstance(v, float)} == \
        {k: v for k, v in y.items() if not isinstance(v, float)}
    for key, v in x.items():
      if isinstance(v, float):
        np.testing.assert_allclose(y[key], v, atol=1e-5, err_msg=key)
