"""The RL learner end to end on a tiny model: learning under both algorithms
with a programmatic reward (the user-callable path), the adaptive KL
controller inside the loop, the labeler's direct score as the reward, EOS
handling in real rollouts, and exact resume after SIGKILL of a real run."""
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

from rlaif_jax.config import load_config_file
from rlaif_jax.learners import common, rl
from rlaif_jax.learners.metrics import read_jsonl

ROOT = pathlib.Path(__file__).resolve().parents[1]
TARGET = "rlaif_jax.learners.rl_rewards:lowercase_fraction"


def toy_config(**rl_overrides):
  c = load_config_file(f"{ROOT / 'configs' / 'rl.py'}:toy")
  with c.unlocked():
    c.rl.update(reward_fn=TARGET, **rl_overrides)
    c.train.update(steps=30, lr=3e-3, log_every=1, checkpoint_every=1000)
  return c


def learner(c, workdir, mesh):
  rl.validate(c, mesh)
  common.prepare_data(c, str(workdir), kind="sft")
  tok = common.tokenizer(c)
  return rl.RLLearner(c, str(workdir), mesh, tok, rl.build_models(c, mesh, tok),
                      rl.make_reward(c, mesh))


@pytest.mark.parametrize("algorithm,extra", [
    ("reinforce_baseline", {}),                       # the paper's: separate value model
    ("ppo", dict(shared_value_head=True, minibatches=2, ppo_epochs=2, adaptive_kl=True,
                 kl_target=4.0, kl_horizon=200)),
])
def test_target_token_reward_rises_with_bounded_kl(algorithm, extra, mesh, tmp_path):
  c = toy_config(algorithm=algorithm, **extra)
  learner(c, tmp_path, mesh).fit()
  rows = read_jsonl(tmp_path / "metrics" / "rl.jsonl")
  assert len(rows) == 30
  reward = np.array([r["reward"] for r in rows])
  first, last = reward[:5].mean(), reward[-5:].mean()
  assert last > first + 0.1 and last > 1.5 * first, reward.round(3)
  assert max(r["kl"] for r in rows) < 10.0                       # nats per response
  assert all(r["sampler_logp_gap"] < 1e-3 for r in rows)         # sampler = training forward
  assert all(0 <= r["ended_rate"] <= 1 and 1 <= r["response_length"] <= 12 for r in rows)
  assert "samples" in rows[-1] and rows[-1]["samples"][0]["response"] is not None
  if c.rl.adaptive_kl:  # β moves toward the target: up after KL > target, down after below
    for a, b in zip(rows, rows[1:]):
      assert np.sign(b["kl_coef"] - a["kl_coef"]) == np.sign(a["kl"] - c.rl.kl_target)
  else:
    assert all(r["kl_coef"] == c.rl.kl_coef for r in rows)


def test_direct_labeler_reward_and_eos_in_rollouts(mesh, tmp_path):
  """The loop sends the decoded text to the labeler's direct scorer and uses its
  scores unchanged; the score lands on each response's last real token."""
  c = toy_config(reward="labeler", shared_value_head=True, missing_eos_penalty=0.0)
  with c.unlocked():
    c.rl.labeler.model.arch.update(d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=16,
                                   d_ff=64, max_seq_len=1024)
    c.rl.labeler.update(batch_size=8, bucket=64, max_context_tokens=128)
  lrn = learner(c, tmp_path, mesh)
  state = rl.RolloutState(common.data_iterator(c, lrn.tok, "prompts"), c.rl.kl_coef)
  ro = lrn.rollout(next(state), 0, state)
  labeler = lrn.reward.fn.__self__
  decoded = [lrn.tok.decode(t[:n], skip_special_tokens=True)
             for t, n in zip(ro["tokens"][:, -lrn.n_new:], ro["lengths"])]
  assert ro["responses"] == decoded
  np.testing.assert_array_equal(ro["raw"], labeler.reward_fn(ro["prompts"], decoded))
  assert np.all(np.abs(ro["raw"]) <= 1) and np.ptp(ro["raw"]) > 0

  m, beta = ro["response_mask"], c.rl.kl_coef
  np.testing.assert_array_equal(m, np.arange(lrn.n_new)[None] < ro["lengths"][:, None])
  eos = lrn.tok.eos_token_id
  resp = ro["tokens"][:, -lrn.n_new:]
  for i, n in enumerate(ro["lengths"]):
    assert (resp[i, n - 1] == eos) == ro["ended"][i] and not np.any(resp[i, :n - 1] == eos)
    want = -beta * ro["kl"][i, :n]
    want[-1] += (1 - beta) * ro["score"][i]
    np.testing.assert_allclose(ro["rewards"][i, :n], want, rtol=1e-5, atol=1e-6)
    assert not np.any(ro["rewards"][i, n:]) and not np.any(ro["advantages"][i, n:])


def test_validation_reward_keeps_the_best_policy(mesh, tmp_path):
  """Every eval_every iterations the greedy responses to the held-out prompts are
  scored; best_model holds the policy of the best score, which an independent
  greedy decode of that saved policy reproduces."""
  from rlaif_jax.learners.rl_rewards import lowercase_fraction
  from rlaif_jax.models import store
  from rlaif_jax.sampling import Sampler, SamplingConfig
  c = toy_config()
  with c.unlocked():
    c.train.update(steps=9, eval_every=3, eval_batches=1)
  lrn = learner(c, tmp_path, mesh)
  result = lrn.fit()
  rows = read_jsonl(tmp_path / "metrics" / "rl.jsonl")
  evals = {r["step"]: r["eval/reward"] for r in rows if "eval/reward" in r}
  assert sorted(evals) == [3, 6, 9]
  best_step = max(evals, key=evals.get)
  assert result["best_iteration"] == best_step and result["best_eval_reward"] == evals[best_step]

  batch = lrn.validation_prompts()[0]
  policy = store.load_any(str(tmp_path / "best_model"), mesh, "lm")
  out = Sampler(policy, mesh, eos_id=lrn.tok.eos_token_id, pad_id=lrn.tok.pad_token_id,
                tokenizer=lrn.tok)(batch["prompt_tokens"], batch["prompt_mask"],
                                   SamplingConfig(max_new_tokens=lrn.n_new))
  texts = [lrn.tok.decode(t[:n], skip_special_tokens=True) for t, n in zip(out.tokens, out.lengths)]
  want = np.mean(lowercase_fraction(list(batch["prompt"]), texts))
  np.testing.assert_allclose(evals[best_step], want, rtol=1e-6)


# ------------------------------------------------------------ exact resume

ENV = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", NPROC="16",
           JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
ITERATIONS, UPDATES = 8, 4     # ppo: 2 epochs x 2 minibatches per iteration


def command(workdir):
  return [sys.executable, "-m", "rlaif_jax.main", f"--config={ROOT / 'configs' / 'rl.py'}:toy",
          f"--workdir={workdir}", f"--config.train.steps={ITERATIONS}",
          "--config.train.checkpoint_every=2", "--config.train.log_every=2",
          "--config.rl.algorithm=ppo", "--config.rl.minibatches=2", "--config.rl.ppo_epochs=2",
          "--config.rl.shared_value_head=True", "--config.rl.reward_norm=running",
          "--config.rl.adaptive_kl=True", "--config.rl.kl_target=0.5",
          "--config.rl.kl_horizon=200", f"--config.rl.reward_fn={TARGET}",
          "--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=2"]


def checkpoint_steps(workdir):
  d = pathlib.Path(workdir) / "checkpoints"
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.exists() else []


def run_to_end(cmd, env):
  out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]


def final_params(workdir):
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(os.path.abspath(os.path.join(workdir, "model", "params")))


def test_sigkill_and_restart_is_bit_identical(tmp_path):
  ref, broken = tmp_path / "ref", tmp_path / "broken"
  # A persistent compilation cache shared by the three runs: the same programs,
  # compiled once (the runs still start as fresh processes).
  env = dict(ENV, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  run_to_end(command(ref), env)

  proc = subprocess.Popen(command(broken), env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, start_new_session=True)
  try:
    deadline = time.time() + 300
    while not checkpoint_steps(broken) and time.time() < deadline and proc.poll() is None:
      time.sleep(0.05)
    time.sleep(random.Random(0).uniform(0.0, 0.5))   # somewhere between checkpoints
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
  killed_at = checkpoint_steps(broken)
  assert killed_at and max(killed_at) < ITERATIONS * UPDATES, f"not interrupted: {killed_at}"
  assert not (broken / "model").exists()

  run_to_end(command(broken), env)
  a, b = final_params(ref), final_params(broken)
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b) > 0
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  # The resumed run also continued β and the logged metrics where the first left off.
  rows_ref = read_jsonl(ref / "metrics" / "rl.jsonl")
  rows_b = {r["step"]: r for r in read_jsonl(broken / "metrics" / "rl.jsonl")}
  for r in rows_ref:
    assert rows_b[r["step"]]["kl_coef"] == r["kl_coef"]
    assert rows_b[r["step"]]["reward"] == r["reward"]
