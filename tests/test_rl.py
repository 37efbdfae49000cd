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
from rlaif_jax.data.batches import data_iterator, prepare_data
from rlaif_jax.learners import rl
from rlaif_jax.learners.metrics import read_jsonl
from rlaif_jax.models.tokenizer import load_tokenizer

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
  prepare_data(c, str(workdir), kind="sft")
  tok = load_tokenizer(c.model.tokenizer)
  return rl.RLLearner(c, str(workdir), mesh, tok, rl.build_models(c, mesh, tok),
                      rl.make_reward(c, mesh))


@pytest.mark.parametrize("algorithm,extra", [
    ("reinforce_baseline", {}),                       # the paper's: separate value model
    ("ppo", dict(shared_value_head=True, minibatches=2, ppo_epochs=2, adaptive_kl=True,
                 kl_target=4.0, kl_horizon=200)),
    # 8 prompts x 4 responses: as many rows as the others' 32 prompts
    ("grpo", dict(group_size=4, minibatches=1, ppo_epochs=1, temperature=0.9, kl_coef=0.2)),
    ("rloo", dict(group_size=4, minibatches=2, ppo_epochs=1)),
])
def test_target_token_reward_rises_with_bounded_kl(algorithm, extra, mesh, tmp_path):
  c = toy_config(algorithm=algorithm, **extra)
  if "group_size" in extra:
    with c.unlocked():
      c.train.batch_size = 8
  lrn = learner(c, tmp_path, mesh)
  model = lrn.trainer.model()
  no_value = model.value is None and model.value_head is None
  assert no_value == (algorithm in ("grpo", "rloo"))
  lrn.fit()
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
    c.rl.labeler.model.random_init = True    # a from-scratch labeler, asked for
  lrn = learner(c, tmp_path, mesh)
  state = rl.RolloutState(data_iterator(c, lrn.tok, "prompts"), c.rl.kl_coef)
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
  scored; with train.select=best, best_model holds the policy of the best
  score, which an independent greedy decode of that saved policy reproduces,
  and it is what the stage keeps."""
  from flax import nnx
  from rlaif_jax.learners.rl_rewards import lowercase_fraction
  from rlaif_jax.models import store
  from rlaif_jax.sampling import Sampler, SamplingConfig
  c = toy_config()
  with c.unlocked():
    c.train.update(steps=9, eval_every=3, eval_batches=1, select="best")
  lrn = learner(c, tmp_path, mesh)
  result = lrn.fit()
  rows = read_jsonl(tmp_path / "metrics" / "rl.jsonl")
  evals = {r["step"]: r["eval/reward"] for r in rows if "eval/reward" in r}
  assert sorted(evals) == [3, 6, 9]
  best_step = max(evals, key=evals.get)
  assert result["best_step"] == best_step and result["best_eval/reward"] == evals[best_step]

  batch = lrn.validation_prompts()[0]
  policy = store.load(str(tmp_path / "best_model"), mesh, "lm")
  out = Sampler(policy, mesh, eos_id=lrn.tok.eos_token_id, pad_id=lrn.tok.pad_token_id,
                tokenizer=lrn.tok)(batch["prompt_tokens"], batch["prompt_mask"],
                                   SamplingConfig(max_new_tokens=lrn.n_new))
  texts = [lrn.tok.decode(t[:n], skip_special_tokens=True) for t, n in zip(out.tokens, out.lengths)]
  want = np.mean(lowercase_fraction(list(batch["prompt"]), texts))
  np.testing.assert_allclose(evals[best_step], want, rtol=1e-6)
  chosen = lrn.trainer.chosen_model(lambda m: m.policy)
  for x, y in zip(jax.tree.leaves(nnx.state(chosen)), jax.tree.leaves(nnx.state(policy))):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ------------------------------------------------------------ exact resume

ENV = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", NPROC="16",
           JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
ITERATIONS = 8
# algorithm -> (its flags, optimiser steps per iteration)
RESUME = {
    "ppo": (["--config.rl.minibatches=2", "--config.rl.ppo_epochs=2",
             "--config.rl.shared_value_head=True"], 4),
    # 16 prompts x 2 responses per rollout; grpo's KL is its k3 loss term
    "grpo": (["--config.rl.group_size=2", "--config.rl.minibatches=2", "--config.rl.ppo_epochs=1",
              "--config.train.batch_size=16"], 2),
    "rloo": (["--config.rl.group_size=2", "--config.rl.minibatches=1", "--config.rl.ppo_epochs=2",
              "--config.train.batch_size=16"], 2),
}


def command(workdir, algorithm="ppo"):
  return [sys.executable, "-m", "rlaif_jax.main", f"--config={ROOT / 'configs' / 'rl.py'}:toy",
          f"--workdir={workdir}", f"--config.train.steps={ITERATIONS}",
          "--config.train.checkpoint_every=2", "--config.train.log_every=2",
          f"--config.rl.algorithm={algorithm}", *RESUME[algorithm][0],
          "--config.rl.reward_norm=running",
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


@pytest.mark.parametrize("algorithm", list(RESUME))
def test_sigkill_and_restart_is_bit_identical(algorithm, tmp_path):
  ref, broken = tmp_path / "ref", tmp_path / "broken"
  command_of = lambda workdir: command(workdir, algorithm)
  # The session's persistent compilation cache (conftest): the three runs, and
  # the three algorithms' runs (same row count, so the same sampler and scoring
  # programs), compile each program once; the runs still start as fresh processes.
  env = dict(ENV, JAX_COMPILATION_CACHE_DIR=os.environ.get("JAX_COMPILATION_CACHE_DIR",
                                                           str(tmp_path / "jax_cache")),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  run_to_end(command_of(ref), env)

  proc = subprocess.Popen(command_of(broken), env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
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
  assert killed_at and max(killed_at) < ITERATIONS * RESUME[algorithm][1], f"not interrupted: {killed_at}"
  assert not (broken / "model").exists()

  run_to_end(command_of(broken), env)
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


# ------------------------------------------------------------ temperature

def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_learner_logprobs_are_tempered_and_first_ratio_is_one(mesh, tmp_path):
  """At T = 0.7 the rollout's old log-probs, the sampler's and the reference's
  are log softmax(z / 0.7) of a full forward pass of the unpadded sequence; the
  first PPO step on the rollout sees ratio 1 everywhere (nothing clipped, no
  drift)."""
  from flax import nnx
  T = 0.7
  c = toy_config(algorithm="ppo", minibatches=1, ppo_epochs=1, shared_value_head=True,
                 temperature=T)
  lrn = learner(c, tmp_path, mesh)
  state = rl.RolloutState(data_iterator(c, lrn.tok, "prompts"), c.rl.kl_coef)
  ro = lrn.rollout(next(state), 0, state)
  policy = lrn.trainer.model().policy
  n_new, m = lrn.n_new, ro["response_mask"]
  p = ro["tokens"].shape[1] - n_new
  seqs = [list(t[:p][mk[:p]]) + list(t[p:p + n]) for t, mk, n in
          zip(ro["tokens"], ro["mask"], ro["lengths"])]
  width = -(-max(map(len, seqs)) // 16) * 16
  toks, mask = np.zeros((len(seqs), width), np.int32), np.zeros((len(seqs), width), bool)
  for i, s in enumerate(seqs):
    toks[i, :len(s)], mask[i, :len(s)] = s, True
  with jax.set_mesh(mesh):
    logits = np.asarray(nnx.jit(lambda mdl, t, k: mdl(t, k)[0])(policy, toks, mask), np.float64)
  want = np.zeros(m.shape)
  for i, (s, n) in enumerate(zip(seqs, ro["lengths"])):
    lp = _log_softmax(logits[i] / T)
    start = len(s) - n
    want[i, :n] = lp[np.arange(start - 1, len(s) - 1), s[start:]]
  np.testing.assert_allclose(np.where(m, ro["old_logp"], 0), want, atol=2e-4)
  np.testing.assert_allclose(np.where(m, ro["ref_logp"], 0), want, atol=2e-4)
  np.testing.assert_allclose(ro["sampler_logp"], want, atol=2e-4)
  # at T = 1 the same tokens would score differently: the check has teeth
  untempered = [_log_softmax(logits[i])[len(s) - 2, s[-1]] for i, s in enumerate(seqs)]
  assert np.max(np.abs(np.array(untempered) - want[np.arange(len(seqs)), ro["lengths"] - 1])) > 0.05
  metrics = lrn.trainer.check(1, lrn.trainer.step({k: ro[k] for k in rl.TRAIN_KEYS}))
  assert metrics["clip_frac"] == 0.0 and abs(metrics["policy_drift_kl"]) < 1e-6, metrics


# ------------------------------------------------------------ the update loop

def test_epochs_use_every_row_once_with_the_rollouts_old_values(mesh, tmp_path):
  """PPO with 2 epochs x 2 minibatches: the loss receives every rollout row
  exactly once per epoch (reshuffled between epochs), with the rollout's old
  log-probs, values, advantages and returns – not values recomputed after the
  first update (which would differ: the policy has moved)."""
  c = toy_config(algorithm="ppo", minibatches=2, ppo_epochs=2, shared_value_head=True,
                 temperature=0.8)
  lrn = learner(c, tmp_path, mesh)
  state = rl.RolloutState(data_iterator(c, lrn.tok, "prompts"), c.rl.kl_coef)
  ro = lrn.rollout(next(state), 0, state)
  seen, step = [], lrn.trainer.step
  lrn.trainer.step = lambda batch: (seen.append({k: np.array(v) for k, v in batch.items()}),
                                    step(batch))[1]
  lrn.update(ro, 0)
  assert len(seen) == 4 and all(len(b["tokens"]) == 16 for b in seen)
  rows = len(ro["tokens"])
  key = lambda b, i: b["old_logp"][i].tobytes() + b["tokens"][i].tobytes()
  index = {key(ro, i): i for i in range(rows)}
  assert len(index) == rows                       # rows are distinguishable
  orders = []
  for epoch in (seen[:2], seen[2:]):
    order = [index[key(b, i)] for b in epoch for i in range(len(b["tokens"]))]
    assert sorted(order) == list(range(rows))
    orders.append(order)
    for b in epoch:
      idx = [index[key(b, i)] for i in range(len(b["tokens"]))]
      for k in rl.TRAIN_KEYS:
        np.testing.assert_array_equal(b[k], ro[k][idx], err_msg=k)
  assert orders[0] != orders[1]
  with jax.set_mesh(mesh):
    logp, values, _, _ = rl.score_rollout(lrn.trainer.graphdef, lrn.ref_graphdef, lrn.n_new, 0.8,
                                   lrn.trainer.state["params"], lrn.ref_params,
                                   ro["tokens"], ro["mask"])
  m = ro["response_mask"]
  assert np.abs(np.asarray(logp) - ro["old_logp"])[m].max() > 1e-3
  assert np.abs(np.asarray(values) - ro["old_values"])[m].max() > 1e-3


# ------------------------------------------------------------ validation

def test_minibatch_grad_accum_refused_before_anything_compiles(tmp_path):
  """32 rows in 4 PPO minibatches of 8 on data*fsdp = 4 devices cannot hold
  grad_accum = 4 micro-batches per device: a one-line error from the stage's validate,
  which the entry point calls before the mesh, any data or any program exists."""
  from rlaif_jax import main
  from rlaif_jax.config import ConfigError
  c = toy_config(algorithm="ppo", minibatches=4)
  with c.unlocked():
    c.train.grad_accum = 4
    c.mesh.update(data=2, fsdp=2, tensor=2)
  compiled = []
  recording = [True]
  jax.monitoring.register_event_duration_secs_listener(
      lambda name, *a, **k: compiled.append(name) if recording[0] and "compil" in name else None)
  jax.monitoring.register_event_listener(
      lambda name, *a, **k: compiled.append(name) if recording[0] and "compil" in name else None)
  try:
    with pytest.raises(ConfigError) as e:
      main.run_stage(c, str(tmp_path))
  finally:
    recording[0] = False
  msg = str(e.value)
  assert "\n" not in msg and "rl.minibatches=4" in msg and "grad_accum" in msg, msg
  assert not compiled, compiled
  assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("overrides,match", [
    (dict(kl_coef=1.0), "rl.kl_coef=1.0 must be < 1"),
    (dict(kl_penalty="loss", kl_estimator="k1"), "k1"),
    (dict(kl_penalty="nope"), "rl.kl_penalty"),
    (dict(temperature=0.0), "rl.temperature=0.0 must be > 0"),
    (dict(algorithm="rloo"), "rl.group_size=1: rl.algorithm='rloo' baselines each response"),
    (dict(algorithm="grpo", group_size=1), "rl.group_size=1: rl.algorithm='grpo'"),
    (dict(algorithm="nope"), "reinforce_baseline, ppo, grpo, rloo"),
    # 32 prompts x 3 responses = 96 rows: 32 minibatches of 3, not a multiple of data*fsdp 4
    (dict(algorithm="grpo", group_size=3, minibatches=32), "32 x 3 responses per prompt"),
])
def test_validate_refuses(overrides, match, mesh):
  from rlaif_jax.config import ConfigError
  with pytest.raises(ConfigError, match=match) as e:
    rl.validate(toy_config(**overrides), mesh)
  assert "\n" not in str(e.value)
  rl.validate(toy_config(kl_coef=1.0, algorithm="ppo", minibatches=2), mesh)   # PPO: r − β·KL
  # 32 x 2 rows in 16 minibatches of 4: fine (32 rows alone would give minibatches of 2)
  rl.validate(toy_config(algorithm="rloo", group_size=2, minibatches=16), mesh)


def test_grpo_with_the_direct_labeler_score(mesh, tmp_path):
  """Direct RLAIF with GRPO – no reward model, no value model: each prompt is
  answered twice (consecutive rows), the labeler scores every decoded response,
  the score alone lands on the last real token (GRPO's KL is a loss term) and
  each response's advantage is its group-normalised score on every real token."""
  c = toy_config(algorithm="grpo", group_size=2, reward="labeler", missing_eos_penalty=0.0,
                 temperature=1.0)
  with c.unlocked():
    c.train.update(batch_size=16, eval_batches=1)
    c.rl.labeler.model.arch.update(d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=16,
                                   d_ff=64, max_seq_len=1024)
    c.rl.labeler.update(batch_size=8, bucket=64, max_context_tokens=128)
    c.rl.labeler.model.random_init = True
  lrn = learner(c, tmp_path, mesh)
  model = lrn.trainer.model()
  assert model.value is None and model.value_head is None
  prompts = lrn.validation_prompts()[0]
  ro = lrn.rollout(prompts, 0, rl.RolloutState(iter(()), c.rl.kl_coef))
  assert len(ro["tokens"]) == 2 * len(prompts["prompt"])
  assert ro["prompts"] == [p for p in prompts["prompt"] for _ in range(2)]
  labeler = lrn.reward.fn.__self__
  np.testing.assert_array_equal(ro["raw"], labeler.reward_fn(ro["prompts"], ro["responses"]))
  score, m, n = ro["score"].astype(np.float64), ro["response_mask"], ro["lengths"]
  want = np.zeros(m.shape)
  want[np.arange(len(n)), n - 1] = score
  np.testing.assert_allclose(ro["rewards"], want, rtol=1e-6, atol=1e-7)
  g = score.reshape(-1, 2)
  adv = ((g - g.mean(1, keepdims=True)) / (g.std(1, ddof=1, keepdims=True) + 1e-4)).ravel()
  # float32 differences of nearly equal scores: ~1e-5 absolute
  np.testing.assert_allclose(ro["advantages"], np.where(m, adv[:, None], 0.0), atol=1e-4)
  assert np.any(np.abs(adv) > 0.5)                # some pairs were scored differently
  metrics = lrn.update(ro, 0)
  assert np.isfinite(metrics["loss"]) and "kl_loss" in metrics and "value_loss" not in metrics
