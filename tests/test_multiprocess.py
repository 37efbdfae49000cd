"""Multi-host proof on one machine: 2 processes x 4 CPU devices joined by
jax.distributed over loopback (gloo) compute what 1 process x 8 devices does,
and their checkpoints restore in a single process."""
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _path_without_python() -> str:
  """A PATH with bash and env only: as for `/abs/venv/bin/python -m pytest` with the
  venv not activated, no `python` there is ours (here: none at all), so the
  launcher must use the interpreter it is given ($PYTHON)."""
  import shutil
  import tempfile
  bare = tempfile.mkdtemp(prefix="rlaif_bare_path_")
  for tool in ("bash", "env"):
    os.symlink(shutil.which(tool), os.path.join(bare, tool))
  return bare


ENV = dict(os.environ, JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
           RLAIF_COORDINATOR_PORT=str(20000 + os.getpid() % 20000), PYTHON=sys.executable,
           PATH=_path_without_python())
ARGS = ["--config=configs/sft.py:toy", "--config.train.log_every=1",
        "--config.train.checkpoint_every=4", "--config.mesh.data=2", "--config.mesh.fsdp=2",
        "--config.mesh.tensor=2"]


def one_process(args, workdir):
  """`python -m rlaif_jax.main *args` as 1 process x 8 devices (started, not awaited)."""
  env = dict(ENV, XLA_FLAGS="--xla_force_host_platform_device_count=8", NPROC="16")
  return subprocess.Popen([sys.executable, "-m", "rlaif_jax.main", *args, f"--workdir={workdir}"],
                          env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          start_new_session=True)


def single(workdir, steps):
  return one_process([*ARGS, f"--config.train.steps={steps}"], workdir)


def run_two_processes(args, workdir, timeout=300):
  """Runs `python -m rlaif_jax.main *args` as 2 processes x 4 devices and waits.

  No retries: a process that dies makes its peer fail at the next collective
  ("Gloo context initialization failed: DEADLINE_EXCEEDED"), so that message
  means look for the other process's traceback above it.
  """
  shutil.rmtree(workdir, ignore_errors=True)
  p = subprocess.Popen([str(ROOT / "launch" / "local.sh"), "-n", "2", "-d", "4", "--", *args,
                        f"--workdir={workdir}"], env=ENV, cwd=ROOT, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, start_new_session=True)
  try:
    out, _ = p.communicate(timeout=timeout)
  finally:
    if p.poll() is None:
      os.killpg(p.pid, signal.SIGKILL)
  assert p.returncode == 0, out.decode()[-6000:]


def finish(*procs, timeout=300):
  try:
    for p in procs:
      out, _ = p.communicate(timeout=timeout)
      assert p.returncode == 0, out.decode()[-3000:]
  finally:
    for p in procs:
      if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)


def losses(workdir):
  rows = [json.loads(l) for l in (workdir / "metrics" / "sft.jsonl").read_text().splitlines()]
  return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_two_processes_match_one_and_checkpoints_cross_over(tmp_path):
  one, two = tmp_path / "one", tmp_path / "two"
  finish(single(one, 8))
  run_two_processes([*ARGS, "--config.train.steps=8"], two)
  a, b = losses(one), losses(two)
  assert sorted(a) == sorted(b) == list(range(1, 9))
  # Same global batches (each host reads its share), same program: the losses
  # agree to float32 reduction-order noise.
  np.testing.assert_allclose([b[s] for s in a], [a[s] for s in a], rtol=2e-5)
  assert a[8] < a[1]

  # The 2-process checkpoint (step 8) restores in a single process, which goes on
  # exactly as the single-process run resumed from its own step-8 checkpoint.
  finish(single(one, 12), single(two, 12))
  a, b = losses(one), losses(two)
  np.testing.assert_allclose([b[s] for s in range(9, 13)], [a[s] for s in range(9, 13)], rtol=2e-5)
  # and the process count never changed what the final model holds beyond noise
  import orbax.checkpoint as ocp
  import jax
  with ocp.StandardCheckpointer() as ck:
    pa = jax.tree.leaves(ck.restore(str(one / "model" / "params")))
    pb = jax.tree.leaves(ck.restore(str(two / "model" / "params")))
  for x, y in zip(pa, pb):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-5)


def test_labeling_batch_two_processes_match_one(tmp_path):
  """The label stage (toy labeler, both orders) gives the same labels on 2 x 4 as on 1 x 8."""
  args = ["--config=configs/label.py:toy", "--config.labeler.max_pairs=16",
          "--config.labeler.shard_size=8"]
  one, two = tmp_path / "one", tmp_path / "two"
  finish(one_process(args, one))
  run_two_processes(args, two)
  rows = lambda d: [json.loads(l) for l in (d / "labels.jsonl").read_text().splitlines()]
  a, b = rows(one), rows(two)
  assert len(a) == len(b) == 16
  for x, y in zip(a, b):
    assert (x["prompt"], x["response_a"], x["response_b"]) == (y["prompt"], y["response_a"], y["response_b"])
    np.testing.assert_allclose(x["p_ab"] + x["p_ba"], y["p_ab"] + y["p_ba"], atol=1e-5)
    assert x["same_position_won"] == y["same_position_won"]


def test_rl_two_processes_match_one(tmp_path):
  """An RL run (PPO, RM-free callable reward) on 2 processes x 4 devices samples
  the same responses and takes the same steps as on 1 process x 8 devices:
  every process holds the whole rollout and trains on its own block of rows."""
  args = ["--config=configs/rl.py:toy", "--config.train.steps=4", "--config.train.log_every=1",
          "--config.train.eval_every=2", "--config.train.eval_batches=1",
          "--config.rl.algorithm=ppo", "--config.rl.minibatches=2", "--config.rl.ppo_epochs=1",
          "--config.rl.reward_fn=rlaif_jax.learners.rl_rewards:lowercase_fraction",
          "--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=2"]
  one, two = tmp_path / "one", tmp_path / "two"
  finish(one_process(args, one))
  run_two_processes(args, two)
  rows = lambda d: [json.loads(l) for l in (d / "metrics" / "rl.jsonl").read_text().splitlines()]
  a, b = rows(one), rows(two)
  assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3, 4]
  for x, y in zip(a, b):
    assert [s["response"] for s in x["samples"]] == [s["response"] for s in y["samples"]]
    for key in ("reward", "kl", "response_length", "loss", "eval/reward"):
      if key in x:
        np.testing.assert_allclose(y[key], x[key], rtol=1e-4, atol=1e-5, err_msg=key)
  assert "eval/reward" in a[1] and "eval/reward" in a[3]
