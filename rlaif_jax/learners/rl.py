"""RL from (AI) feedback: the paper's REINFORCE with a value baseline, PPO, GRPO, RLOO.

What differs between the algorithms – advantages, loss, updates per rollout,
validation, responses per prompt, value model – is one entry each in
rl_algorithms.ALGORITHMS; everything else below is shared.

One iteration:
  1. rollout – a batch of prompts (`train.batch_size`), one response each (k =
     `rl.group_size` each for grpo and rloo, rows i·k … i·k + k − 1) from
     the policy with the jitted KV-cache sampler (rlaif_jax.sampling) at
     `rl.temperature`; one forward pass of policy, value and reference scores
     the response tokens (log π, V, log π_ref, entropy); the reward source
     (rl_rewards) scores the decoded text or tokens.
  2. per-token rewards r_t = c·score·[t last] − β·KL_t (rl_losses.token_rewards;
     with `rl.kl_penalty="loss"` the KL is a loss term instead, below);
     `reinforce_baseline` (the paper): c = 1 − β, γ = 1, A_t = Z_t − V_t with Z
     the return; `ppo`: c = 1, GAE(γ, λ), advantages whitened.
  3. updates – reinforce_baseline: one step on the whole batch,
         L = −mean log π · stopgrad(A) + vf_coef · mean (V − Z)²;
     ppo: `rl.ppo_epochs` passes over `rl.minibatches` shuffled minibatches,
         L = clipped surrogate + vf_coef · clipped value loss − entropy_coef · H;
     either + β · mean k(log π − log π_ref) with `rl.kl_penalty="loss"`
     (rl_losses.kl_estimate says what k2 / k3 do to the gradient in each place).
  4. β: fixed, or Ziegler's proportional controller toward `rl.kl_target`. In
     the paper's (1 − β)·r form (reinforce_baseline) β ≥ 1 would flip the
     reward's sign: `validate` refuses rl.kl_coef ≥ 1 there, and the controller
     is capped at 0.99 (the entry's max_beta).

Temperature: the trained policy is the *tempered* one, π_T = softmax(z / T)
with T = `rl.temperature` – the distribution the rollouts are sampled from
(before top-k / top-p filtering), as in lm-human-preferences and TRL. The
scoring pass, the loss, the reference and hence the KL all see logits / T, so
the first PPO ratio of every rollout is exactly 1, E[∇log π_T(a)] = 0 under the
samples (the baseline stays unbiased) and the logged KL is KL(π_T ‖ π_ref,T).
The saved policy is the network itself: sample it at `rl.temperature` to get
what was trained (greedy decoding is unaffected by T).

Models: policy and value live in one NNX container (`ActorCritic`) trained by
one shared `Trainer` and optimizer; the value is a separate ScalarModel (from
the SFT checkpoint as in the paper, or from the RM), or with
`rl.shared_value_head` a head on the policy's trunk (one network less in
memory). The reference is a frozen sharded copy of the initial policy. Its
log-probs are needed only at rollout time – the KL enters through the rewards,
which are fixed for the whole rollout – so it is an argument of the scoring
program, not of the train step, and costs one forward pass per rollout rather
than one per PPO minibatch.

Several processes (hosts): every process holds the whole rollout batch on the
host (prompts gathered in the order one process would read them), the sampler
and scorers run on the global mesh, the reward function sees every row, and
each process feeds its own block of rows to the sharded train step – so 2
processes × 4 devices sample and train exactly as 1 × 8 does.

The loop is the shared `Trainer.fit`: an RL iteration (rollout, updates, β)
is its iteration callback, so cadence, logging, checkpoints, preemption and
keep-best are those of every learner; `train.*_every` count iterations.

Checkpoint choice (the paper: checkpoints with high validation reward): every
`train.eval_every` iterations and at the end, the policy answers held-out
prompts (`data.eval_jsonl_path` or `data.eval_split`) at `rl.eval_temperature`
and the run's own reward source scores them (`eval/reward`); with
`train.select="best"` the best policy so far is saved to <workdir>/best_model
and becomes the stage's <workdir>/model. Being the training reward on unseen
posts, it guards against a policy that degrades late in the run, not against
over-optimising a reward model (the same RM judges both).

Exact resume: the checkpoint holds the train state, the best validation result
and, through the iterator hook of `Trainer.save`, the prompt iterator's
position, β and the running reward statistics; each rollout's sampling seed is
a function of the config seed and the iteration number. A killed run restarts
at its last checkpoint and reproduces the uninterrupted run bit for bit.
"""
from __future__ import annotations

import functools
import math
import os
import time
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from rlaif_jax.config import ConfigError
from rlaif_jax.data.batches import check_data, data_iterator, heldout_batches, prepare_data
from rlaif_jax.labeler.config import labeler_config, validate_labeler
from rlaif_jax.learners import rl_losses as L
from rlaif_jax.learners.rl_algorithms import ALGORITHMS
from rlaif_jax.learners.rl_rewards import make_reward, shape_scores
from rlaif_jax.learners.trainer import Trainer, selection
from rlaif_jax.mesh import (constrain, data_parallel_size, global_batch, logical_sharding,
                            to_host)
from rlaif_jax.models import store
from rlaif_jax.models.build import build, check_model, checkpoint_format
from rlaif_jax.models.sharding import copy_params
from rlaif_jax.models.tokenizer import load_tokenizer
from rlaif_jax.sampling import Sampler, SamplingConfig

# validation metrics and which way is better (train.select_metric)
EVAL_METRICS = {"reward": "max"}

TRAIN_KEYS = ("tokens", "mask", "response_mask", "old_logp", "old_values", "advantages", "returns",
              "ref_logp", "kl_coef")


# ------------------------------------------------------------------ models

class ActorCritic(nnx.Module):
  """The trained networks: a causal-LM policy and a value function V(s_t)
  (a separate network, a head on the policy's trunk, or – value_head=False
  with no value network, for grpo and rloo – none: V = 0)."""

  def __init__(self, policy: nnx.Module, value: nnx.Module | None, mesh=None,
               value_head: bool = True):
    self.policy = policy
    if value is not None:
      self.value, self.value_head = value, nnx.data(None)
    elif not value_head:
      self.value, self.value_head = nnx.data(None), nnx.data(None)
    else:                    # a head on the policy's trunk, starting at V = 0
      d = policy.cfg.d_model
      head = jnp.zeros((d,))
      if mesh is not None:
        head = jax.device_put(head, logical_sharding(("embed",), mesh, (d,)))
      self.value = nnx.data(None)
      self.value_head = nnx.Param(head, logical_axes=("embed",))

  def __call__(self, tokens, mask, n_new: int):
    """Policy logits (B, n_new, V) and values (B, n_new) at the positions
    T−n_new−1 … T−2, the ones that predict the response's n_new tokens.

    The trunk runs over the whole sequence; the LM head only over these rows:
    the prompt's logits are never read, and at 1024 prompt + 128 response
    tokens with a 256k vocabulary they would be 8/9 of the step's largest
    array (and of its gradient)."""
    h, _ = self.policy.hidden(tokens, mask)
    h = h[:, -n_new - 1:-1]
    if self.value is None and self.value_head is None:
      return self.policy.logits(h), jnp.zeros(h.shape[:2], jnp.float32)
    if self.value is None:
      return self.policy.logits(h), h.astype(jnp.float32) @ self.value_head[...]
    return self.policy.logits(h), self.value.per_token(tokens, mask)[:, -n_new - 1:-1]


def token_logprobs(logits, tokens, n_new: int, temperature: float):
  """log softmax(z / T) of each response token; `logits` (B, n_new, V) are those
  at positions P−1 … T−2 (position P−1+t predicts response token t)."""
  # rows split by batch for the softmax: left free, the partitioner splits them
  # by the (FSDP-sharded) vocabulary and moves them all-to-all (3.9 GiB per chip
  # in rl.py:tldr's scoring pass)
  logits = constrain(logits.astype(jnp.float32) / temperature, ("batch", None, "vocab"))
  lp = jax.nn.log_softmax(logits)
  return jnp.take_along_axis(lp, tokens[:, -n_new:, None], -1)[..., 0], logits


def response_outputs(model: ActorCritic, tokens, mask, n_new: int, temperature: float):
  """log π_T(a_t|s_t), V(s_t) and the entropy of π_T(·|s_t) for the last n_new
  positions (the response), π_T the policy at temperature T."""
  logits, values = model(tokens, mask, n_new)
  logp, scaled = token_logprobs(logits, tokens, n_new, temperature)
  return logp, values, L.entropy_from_logits(scaled)


def build_models(config, mesh, tok) -> ActorCritic:
  r = config.rl
  policy = build(config.model, mesh, "lm", tok, config.seed)
  if not ALGORITHMS[r.algorithm].value_model:
    return ActorCritic(policy, None, mesh, value_head=False)
  if r.shared_value_head:
    return ActorCritic(policy, None, mesh)
  source = r.reward_model if r.value_init == "reward_model" else None
  return ActorCritic(policy, build(config.model, mesh, "scalar", tok, config.seed,
                                   checkpoint=source))


# ------------------------------------------------------------------ loss

def make_loss_fn(r, n_new: int):
  """loss_fn(model, batch, rng) for the Trainer; batch holds TRAIN_KEYS.

  The algorithm's policy (and value) terms, − entropy_coef · H, and + β · mean k
  when the KL is a loss term. Every term is a mean over the batch's response
  tokens; aux["weight"] is their count, so gradient accumulation gives the
  token mean of the batch."""
  alg = ALGORITHMS[r.algorithm]
  kl_in_loss, estimator = alg.kl_in_loss(r), alg.kl_estimator(r)

  def loss_fn(model, batch, rng=None):
    logp, values, entropy = response_outputs(model, batch["tokens"], batch["mask"], n_new,
                                             r.temperature)
    m = batch["response_mask"]
    loss, aux = alg.loss(r, logp, values, batch)
    loss = loss - r.entropy_coef * L.masked_mean(entropy, m)
    # KL(π_old ‖ π) by k3 on the rollout's tokens: how far the updates moved
    aux = {**aux, "policy_drift_kl": L.kl_loss(batch["old_logp"], logp, m, "k3"),
           "weight": jnp.sum(m.astype(jnp.float32))}
    if kl_in_loss:
      # β is per row in the batch (it changes between rollouts, not within one)
      aux["kl_loss"] = L.kl_loss(logp, batch["ref_logp"], m, estimator)
      loss = loss + batch["kl_coef"][0] * aux["kl_loss"]
    return loss, aux
  return loss_fn


# ------------------------------------------------------------------ rollout

@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def score_rollout(graphdef, ref_graphdef, n_new, temperature, params, ref_params, tokens, mask):
  """The rollout's log π_T, V, entropy of π_T and log π_ref,T (both at temperature T)."""
  logp, values, entropy = response_outputs(nnx.merge(graphdef, params), tokens, mask, n_new,
                                           temperature)
  ref = nnx.merge(ref_graphdef, ref_params)      # the initial policy (a Transformer)
  h, _ = ref.hidden(tokens, mask)
  ref_logp, _ = token_logprobs(ref.logits(h[:, -n_new - 1:-1]), tokens, n_new, temperature)
  return logp, values, entropy, ref_logp


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4),
                   static_argnames=("kl_in_reward", "group_size"))
def advantages(algorithm, estimator, gamma, lam, whiten, logp, ref_logp, values, mask, score,
               beta, kl_in_reward=True, group_size=1):
  """Per-token KL, rewards, advantages and value targets for one rollout, by
  the algorithm's entry (rl_algorithms).

  kl_in_reward=False (`rl.kl_penalty="loss"`): the rewards carry the score
  only (still scaled by 1 − β in the paper's form); the KL is then a loss term.
  `whiten` applies to ppo; `group_size` (k) to grpo and rloo. Whatever the
  arrays hold after a response's end is ignored."""
  r = types.SimpleNamespace(kl_estimator=estimator, gamma=gamma, lam=lam,
                            whiten_advantages=whiten, group_size=group_size)
  return ALGORITHMS[algorithm].advantages(r, logp, ref_logp, values, mask, score, beta,
                                          kl_in_reward)


def repeat_rows(batch: dict, k: int) -> dict:
  """Each row k times in a row (rows i·k … i·k + k − 1 are copies of row i)."""
  if k == 1:
    return batch
  return {key: (np.repeat(v, k, axis=0) if isinstance(v, np.ndarray) else
                [x for x in v for _ in range(k)]) for key, v in batch.items()}


class RolloutState:
  """The prompt iterator plus what else the next rollout depends on (β, the
  running reward statistics); `Trainer.save/restore` checkpoint it."""

  def __init__(self, prompts, beta: float):
    self.prompts, self.beta, self.reward_stats = prompts, float(beta), [0, 0.0, 0.0]

  def __next__(self):
    return next(self.prompts)

  def get_state(self):
    return {"prompts": self.prompts.get_state(), "beta": self.beta,
            "reward_stats": list(self.reward_stats)}

  def set_state(self, state):
    self.prompts.set_state(state["prompts"])
    self.beta, self.reward_stats = float(state["beta"]), list(state["reward_stats"])


def rollout_seed(seed: int, iteration: int) -> int:
  return int(np.random.SeedSequence([seed, iteration]).generate_state(1)[0] >> 1)


# ------------------------------------------------------------------ processes
# Several processes (hosts) run one rollout together: every process holds the
# whole rollout batch on the host – the sampler and the scorers run on the global
# mesh, the reward function sees every row – and feeds its own block of rows to
# the sharded train step.

def _gather_text(texts: list) -> list[str]:
  from jax.experimental import multihost_utils
  raw = [str(t).encode("utf-8") for t in texts]
  lengths = np.array([len(r) for r in raw], np.int32)
  width = int(np.max(multihost_utils.process_allgather(np.array([lengths.max(initial=0)]))))
  buf = np.zeros((len(raw), max(width, 1)), np.uint8)
  for i, r in enumerate(raw):
    buf[i, :len(r)] = np.frombuffer(r, np.uint8)
  buf = np.asarray(multihost_utils.process_allgather(buf, tiled=True))
  lengths = np.asarray(multihost_utils.process_allgather(lengths, tiled=True))
  return [bytes(b[:n]).decode("utf-8") for b, n in zip(buf, lengths)]


def all_rows(local: dict) -> dict:
  """Every process's rows of a batch, in the order one process reads them (the
  data pipeline deals rows out round-robin: row j of process p is global row
  j·P + p), so a multi-process rollout samples what a single-process one does."""
  n = jax.process_count()
  if n == 1:
    return local
  from jax.experimental import multihost_utils
  out = {}
  for key, v in local.items():
    text = not (isinstance(v, np.ndarray) and v.dtype != object)
    x = np.array(_gather_text(list(v)), dtype=object) if text else \
        np.asarray(multihost_utils.process_allgather(v, tiled=True))
    x = x.reshape(n, -1, *x.shape[1:]).swapaxes(0, 1).reshape(-1, *x.shape[1:])
    out[key] = list(x) if text else x
  return out


def own_rows(x: np.ndarray) -> np.ndarray:
  """This process's block of a batch every process holds whole: the rows that
  `mesh.global_batch` places on its devices."""
  n, i = jax.process_count(), jax.process_index()
  size = len(x) // n
  return x[i * size:(i + 1) * size]


class RLLearner:
  def __init__(self, config, workdir, mesh, tok, model: ActorCritic, reward):
    r = self.r = config.rl
    self.config, self.workdir, self.mesh, self.tok, self.reward = config, workdir, mesh, tok, reward
    self.n_new = r.max_new_tokens or config.data.max_response_len
    self.alg = ALGORITHMS[r.algorithm]
    epochs, self.minibatches = self.alg.updates(r)
    self.updates = epochs * self.minibatches
    self.group = self.alg.group_size(r)
    with jax.set_mesh(mesh):
      self.ref_params = copy_params(nnx.to_pure_dict(nnx.state(model.policy)))
    self.ref_graphdef = nnx.graphdef(model.policy)
    self.trainer = Trainer(config, workdir, mesh, model, make_loss_fn(r, self.n_new), "rl",
                           total_steps=config.train.steps * self.updates)
    self.sampler = Sampler(model.policy, mesh, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id,
                           tokenizer=tok)
    self.sampling = SamplingConfig(max_new_tokens=self.n_new, temperature=r.temperature,
                                   top_k=r.top_k, top_p=r.top_p)

  def rollout(self, prompts: dict, iteration: int, state: RolloutState) -> dict:
    """Samples and scores one batch; returns host arrays (TRAIN_KEYS and more)."""
    prompts = repeat_rows(prompts, self.group)
    params = self.trainer.state["params"]
    pt, pm = prompts["prompt_tokens"], prompts["prompt_mask"]
    out = self.sampler(pt, pm, self.sampling, seed=rollout_seed(self.config.seed, iteration),
                       params=params["policy"])
    resp_mask = np.arange(self.n_new)[None] < out.lengths[:, None]
    tokens = np.concatenate([pt, out.tokens], 1)
    mask = np.concatenate([pm, resp_mask], 1)
    responses = self.sampler.decode(out)
    with jax.set_mesh(self.mesh):
      g_tokens, g_mask = global_batch((own_rows(tokens), own_rows(mask)), self.mesh)
      logp, values, entropy, ref_logp = score_rollout(self.trainer.graphdef, self.ref_graphdef,
                                               self.n_new, float(self.r.temperature), params,
                                               self.ref_params, g_tokens, g_mask)
    raw = self.reward(list(prompts["prompt"]), responses, g_tokens, g_mask)
    score, state.reward_stats = shape_scores(raw, out.ended, self.r, state.reward_stats)
    r = self.r
    with jax.set_mesh(self.mesh):
      kl, rewards, adv, returns = advantages(
          r.algorithm, self.alg.kl_estimator(r), r.gamma, r.lam, bool(r.whiten_advantages),
          logp, ref_logp, values, resp_mask, score, np.float32(state.beta),
          kl_in_reward=not self.alg.kl_in_loss(r), group_size=self.group)
    logp, values, entropy, kl, adv, returns = map(to_host, (logp, values, entropy, kl, adv, returns))
    return dict(tokens=tokens, mask=mask, response_mask=resp_mask, old_logp=logp,
                kl_coef=np.full(len(tokens), state.beta, np.float32),
                old_values=values, advantages=adv, returns=returns, kl=kl, entropy=entropy,
                rewards=to_host(rewards), ref_logp=to_host(ref_logp),
                raw=raw, score=score, lengths=out.lengths, ended=out.ended,
                sampler_logp=out.logprobs, prompts=list(prompts["prompt"]), responses=responses)

  def validation_prompts(self) -> list[dict]:
    """The held-out prompt batches, whole on every process ([] when none)."""
    return [all_rows(b) for b in heldout_batches(self.config, self.tok, "prompts")]

  def validation_reward(self, batches: list[dict]) -> float:
    """Mean reward of the current policy's responses to the held-out prompts,
    decoded at `rl.eval_temperature` (0: greedy, as the eval stage does)."""
    params = self.trainer.state["params"]["policy"]
    sc = SamplingConfig(max_new_tokens=self.n_new, temperature=self.r.eval_temperature)
    rewards = []
    for i, b in enumerate(batches):
      out = self.sampler(b["prompt_tokens"], b["prompt_mask"], sc, seed=i, params=params)
      tokens = np.concatenate([b["prompt_tokens"], out.tokens], 1)
      mask = np.concatenate([b["prompt_mask"], np.arange(self.n_new)[None] < out.lengths[:, None]], 1)
      with jax.set_mesh(self.mesh):
        g_tokens, g_mask = global_batch((own_rows(tokens), own_rows(mask)), self.mesh)
      rewards.extend(np.asarray(self.reward(list(b["prompt"]), self.sampler.decode(out),
                                            g_tokens, g_mask), np.float64))
    return float(np.mean(rewards))

  def rollout_metrics(self, ro: dict, beta: float) -> dict:
    m = ro["response_mask"]
    seq_kl = np.sum(ro["kl"], 1)
    ev = L.explained_variance(ro["old_values"], ro["returns"], m)
    gap = np.abs(np.where(m, ro["sampler_logp"] - ro["old_logp"], 0.0)).max()
    return {"reward": float(np.mean(ro["raw"])), "score": float(np.mean(ro["score"])),
            "kl": float(np.mean(seq_kl)), "kl_coef": beta,
            "entropy": float(np.sum(ro["entropy"] * m) / max(m.sum(), 1)),
            "response_length": float(np.mean(ro["lengths"])),
            "ended_rate": float(np.mean(ro["ended"])), "explained_variance": float(ev),
            "value_mean": float(np.sum(ro["old_values"] * m) / max(m.sum(), 1)),
            "sampler_logp_gap": float(gap)}

  def update(self, ro: dict, iteration: int) -> dict:
    """The optimiser steps on one rollout; mean of their metrics."""
    rows = len(ro["tokens"])
    size = rows // self.minibatches
    rng = np.random.default_rng([self.config.seed, iteration, 1])
    sums = {}
    for _ in range(self.updates // self.minibatches):
      order = rng.permutation(rows) if self.minibatches > 1 else np.arange(rows)
      for k in range(self.minibatches):
        idx = order[k * size:(k + 1) * size]
        metrics = self.trainer.step({key: own_rows(ro[key][idx]) for key in TRAIN_KEYS})
        host = self.trainer.check(int(self.trainer.state["step"]), metrics)
        for key, v in host.items():
          sums[key] = sums.get(key, 0.0) + v / self.updates
    return sums

  def iteration(self, state: RolloutState, step: int) -> dict:
    """RL iteration `step` (1-based) for `Trainer.fit`: a rollout, its updates,
    then β; returns the rollout's and the updates' metrics and samples."""
    t0 = time.perf_counter()
    ro = self.rollout(all_rows(next(state)), step - 1, state)
    metrics = self.rollout_metrics(ro, state.beta)
    metrics.update(self.update(ro, step - 1))
    metrics["seconds_per_iteration"] = time.perf_counter() - t0
    if self.r.adaptive_kl:
      state.beta = L.adaptive_kl_coef(state.beta, metrics["kl"], self.r.kl_target,
                                      self.r.kl_horizon, len(ro["tokens"]), self.alg.max_beta)
    samples = [{"prompt": p, "response": s, "reward": float(x)} for p, s, x in
               zip(ro["prompts"], ro["responses"], ro["raw"])][:self.r.log_samples]
    return {**metrics, "samples": samples} if samples else metrics

  def fit(self) -> dict:
    """`train.steps` iterations through `Trainer.fit` (validation reward as its
    evaluation, the policy as what keep-best keeps)."""
    state = RolloutState(data_iterator(self.config, self.tok, "prompts"), self.r.kl_coef)
    validation = self.validation_prompts()
    evaluate = (lambda: {"reward": self.validation_reward(validation)}) if validation else None
    describe = lambda step, m: (f"rl {step}: reward {m['reward']:.4f} kl {m['kl']:.4f} "
                                f"len {m['response_length']:.1f} | {m.get('samples', [])[:1]}")
    return self.trainer.fit(state, evaluate, functools.partial(self.iteration, state),
                            steps=self.config.train.steps, unit="iteration",
                            best_by=selection(self.config, EVAL_METRICS, "reward"),
                            keep=lambda m: m.policy, log_keys=("reward", "kl"), describe=describe)


# ------------------------------------------------------------------ stage

def rl_config() -> ml_collections.ConfigDict:
  """The stage's section, `config.rl`: its defaults (the variants in configs/rl.py
  and the pipeline change what they need)."""
  return ml_collections.ConfigDict(dict(
      algorithm="reinforce_baseline",  # the paper's | ppo | grpo | rloo (rl_algorithms.py)
      group_size=1,              # grpo, rloo: responses sampled per prompt (>= 2); the
                                 # rollout then has train.batch_size x group_size rows
      reward="model",            # model | labeler | callable
      reward_model="",           # reward == "model": <rm workdir>/model (or a HF dir)
      reward_fn="",              # reward == "callable": "package.module:function"
      labeler=labeler_config(),  # reward == "labeler": the direct scorer's model
      value_init="policy",       # policy (the SFT checkpoint, as in the paper) | reward_model
      shared_value_head=False,   # True: value head on the policy trunk (saves a network)
      # sampling. The trained policy is softmax(logits / temperature) – what the
      # rollouts sample (before top-k/top-p); policy, reference and KL all see the
      # tempered logits, so temperature must be > 0.
      temperature=0.9, top_k=0, top_p=1.0,
      max_new_tokens=0,          # 0 = data.max_response_len
      # KL to the reference
      kl_estimator="k1",         # k1 | k2 | k3 (rl_losses.kl_estimate)
      # Where the KL penalty goes. "reward": −β·k per token in the rewards; only k1
      # then gives the gradient of KL(π‖π_ref) – k2/k3 still penalise drift but their
      # gradient is biased. "loss": + β·mean k in the loss (as GRPO does); k2 gives
      # ∇KL(π‖π_ref), k3 ∇KL(π_ref‖π); k1 is refused (its gradient has mean 0).
      # grpo ignores both keys: its KL is always the k3 loss term of the paper.
      kl_penalty="reward",       # reward | loss
      kl_coef=0.05,              # β (initial β when adaptive); < 1 for reinforce_baseline,
                                 # whose (1 − β)·r it is (the controller stops at 0.99)
      adaptive_kl=False,         # Ziegler's proportional controller toward kl_target
      kl_target=6.0,             # nats per response
      kl_horizon=10000,
      # reward shaping
      reward_norm="none",        # none | batch | running
      reward_clip=0.0,           # clip shaped scores to ±this; 0 = off
      missing_eos_penalty=0.0,   # subtracted from responses that never emitted EOS
      # ppo (reinforce_baseline: γ = λ = 1, one step per rollout, no clipping/whitening)
      gamma=1.0, lam=0.95,
      ppo_epochs=4, minibatches=4,
      clip_eps=0.2, value_clip=0.2,
      whiten_advantages=True,
      vf_coef=0.5, entropy_coef=0.0,
      log_samples=4,             # (prompt, response, reward) rows per logged step
      # Validation (the paper picks checkpoints by validation reward): every
      # train.eval_every iterations and at the end, the mean reward of responses to
      # up to train.eval_batches batches of held-out prompts (data.eval_jsonl_path or
      # data.eval_split); with train.select="best" the best policy so far is kept in
      # <workdir>/best_model and becomes <workdir>/model.
      eval_temperature=0.0,      # 0 = greedy
  ))


def validate(config, mesh) -> None:
  """The RL stage's checks before anything is built (`mesh` may be abstract)."""
  r = config.rl
  check_model(config.model)
  check_data(config, "prompts")
  if r.algorithm not in ALGORITHMS:
    raise ConfigError(f"rl.algorithm={r.algorithm!r}: use {', '.join(ALGORITHMS)}")
  alg = ALGORITHMS[r.algorithm]
  if r.kl_estimator not in ("k1", "k2", "k3"):
    raise ConfigError(f"rl.kl_estimator={r.kl_estimator!r}: use k1, k2 or k3")
  if r.reward_norm not in ("none", "batch", "running"):
    raise ConfigError(f"rl.reward_norm={r.reward_norm!r}: use none, batch or running")
  if r.reward == "model" and not r.reward_model:
    raise ConfigError("rl.reward='model' needs rl.reward_model=<rm workdir>/model")
  if r.reward == "callable" and not r.reward_fn:
    raise ConfigError("rl.reward='callable' needs rl.reward_fn='package.module:function'")
  if r.value_init == "reward_model" and not r.reward_model:
    raise ConfigError("rl.value_init='reward_model' needs rl.reward_model")
  if r.reward_model and (r.reward == "model" or r.value_init == "reward_model"):
    checkpoint_format(r.reward_model, "rl.reward_model")
  if r.reward == "labeler":
    validate_labeler(r.labeler, "rl.labeler")
  if not (r.kl_coef >= 0 and math.isfinite(r.kl_coef)) or (r.adaptive_kl and r.kl_target <= 0):
    raise ConfigError(f"rl.kl_coef={r.kl_coef} must be >= 0 (and rl.kl_target > 0 when adaptive)")
  alg.validate(config)
  if r.kl_penalty not in ("reward", "loss"):
    raise ConfigError(f"rl.kl_penalty={r.kl_penalty!r}: use reward or loss")
  if alg.kl_in_loss(r) and alg.kl_estimator(r) == "k1":
    raise ConfigError("rl.kl_penalty='loss' with rl.kl_estimator='k1': the gradient of k1 has "
                      "mean 0 (no pull toward the reference); use k2 or k3")
  if not (r.temperature > 0 and math.isfinite(r.temperature)):
    raise ConfigError(f"rl.temperature={r.temperature} must be > 0: the trained policy is "
                      f"softmax(logits / temperature)")
  dp, accum = data_parallel_size(mesh), config.train.grad_accum
  rows, mb = config.train.batch_size * alg.group_size(r), alg.updates(r)[1]
  if rows % mb or (rows // mb) % (dp * accum):
    raise ConfigError(f"train.batch_size={config.train.batch_size} x {alg.group_size(r)} "
                      f"responses per prompt must split into rl.minibatches={mb} minibatches of a "
                      f"multiple of data*fsdp*train.grad_accum={dp}*{accum} rows")
  selection(config, EVAL_METRICS, "reward")
  if r.eval_temperature < 0:
    raise ConfigError(f"rl.eval_temperature={r.eval_temperature} must be >= 0")


def run(config, workdir: str, mesh) -> dict:
  validate(config, mesh)
  prepare_data(config, workdir, kind="sft")   # toy: prompts read from the SFT file
  tok = load_tokenizer(config.model.tokenizer)
  learner = RLLearner(config, workdir, mesh, tok, build_models(config, mesh, tok),
                      make_reward(config, mesh))
  result = learner.fit()
  # train.select=best: the paper's choice, the policy of highest validation reward
  store.save(learner.trainer.chosen_model(lambda m: m.policy), os.path.join(workdir, "model"))
  model = learner.trainer.model()
  if model.value is not None:
    store.save(model.value, os.path.join(workdir, "value"))
  return result
