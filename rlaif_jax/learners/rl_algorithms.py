"""RL algorithms as entries of one table, `ALGORITHMS[rl.algorithm]`.

An entry says only what differs between algorithms: how a scored rollout
becomes advantages, the loss, how many optimiser steps a rollout gets, what
the config must satisfy, how many responses each prompt gets and whether a
value function is trained. Sampling, the scoring pass (log π_T, V, log π_ref,T),
reward shaping, β and its controller, checkpoints and the update loop are
shared (rl.py). Arrays are response-aligned (B, N) as in rl_losses; with
k responses per prompt the rollout's rows i·k … i·k + k − 1 answer prompt i.

  reinforce_baseline  the paper: Z_t − V(s_t), γ = 1, reward (1 − β)·score,
                      one step per rollout, a value model.
  ppo                 GAE(γ, λ) advantages, whitened; clipped surrogate and
                      clipped value loss; ppo_epochs × minibatches steps.
  grpo                Group Relative Policy Optimization (Shao et al. 2024,
                      DeepSeekMath, arXiv 2402.03300, §4.1, eqs. 3–4): k
                      responses per prompt, every token of response i gets
                          Â_i = (r_i − mean(r_group)) / (std(r_group) + ε)
                      (outcome supervision; std with Bessel's correction and
                      ε = 1e-4, as TRL), no value model; loss: the clipped
                      surrogate plus β·D_KL as a loss term with the k3
                      estimator, D_KL = π_ref/π − log(π_ref/π) − 1 (eq. 4) –
                      always, whatever rl.kl_penalty / rl.kl_estimator say.
  rloo                REINFORCE Leave-One-Out (Kool et al. 2019; Ahmadian et
                      al. 2024, arXiv 2402.14740, eq. 7): k responses per
                      prompt, each baselined by the mean of the other k − 1,
                          A_i = R_i − (1/(k−1)) Σ_{j≠i} R_j
                              = k/(k−1) · (R_i − mean(R_group)),
                      R_i = score_i − β·Σ_t KL_t with the KL in the reward (k1
                      by default; rl.kl_penalty="loss" moves it to the loss and
                      R_i = score_i); no value model; the clipped surrogate
                      (with rl.ppo_epochs = rl.minibatches = 1 the ratio is 1:
                      plain REINFORCE with the leave-one-out baseline). Needs
                      k ≥ 2.

grpo and rloo read `rl.group_size` (k); ppo_epochs × minibatches optimiser
steps per rollout as for ppo. Their advantages are sequence-level, spread over
every real token, and the losses are token means over the batch.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax.numpy as jnp

from rlaif_jax.config import ConfigError
from rlaif_jax.learners import rl_losses as L

GRPO_EPS = 1e-4


# ------------------------------------------------------------------ advantages
# (r, logp, ref_logp, values, mask, score, beta, kl_in_reward) -> (kl, rewards, adv, returns);
# traced under jit with r's fields as Python constants.

def _kl(r, logp, ref_logp, mask, estimator=None):
  return jnp.where(mask, L.kl_estimate(L.masked_log_ratio(logp, ref_logp, mask), 0.0,
                                       estimator or r.kl_estimator), 0.0)


def _reinforce_advantages(r, logp, ref_logp, values, mask, score, beta, kl_in_reward):
  kl = _kl(r, logp, ref_logp, mask)
  rewards = L.token_rewards(score, kl, mask, beta if kl_in_reward else 0.0 * beta,
                            score_coef=1.0 - beta)
  returns = L.discounted_returns(rewards, mask, 1.0)
  return kl, rewards, jnp.where(mask, returns - values, 0.0), returns


def _ppo_advantages(r, logp, ref_logp, values, mask, score, beta, kl_in_reward):
  kl = _kl(r, logp, ref_logp, mask)
  rewards = L.token_rewards(score, kl, mask, beta if kl_in_reward else 0.0 * beta)
  adv, returns = L.gae(rewards, values, mask, r.gamma, r.lam)
  return kl, rewards, (L.whiten(adv, mask) if r.whiten_advantages else adv), returns


def group_normalized(x, k: int, eps: float = GRPO_EPS):
  """(x_i − mean of its group) / (sample std of its group + eps); groups are
  consecutive runs of k rows."""
  g = x.reshape(-1, k)
  mu = g.mean(axis=1, keepdims=True)
  std = jnp.sqrt(jnp.sum(jnp.square(g - mu), axis=1, keepdims=True) / (k - 1))
  return ((g - mu) / (std + eps)).reshape(-1)


def leave_one_out(x, k: int):
  """x_i − mean of the other k − 1 rows of its group (consecutive runs of k)."""
  g = x.reshape(-1, k)
  others = (g.sum(axis=1, keepdims=True) - g) / (k - 1)
  return (g - others).reshape(-1)


def _per_token(seq_adv, mask):
  return jnp.where(mask, seq_adv[:, None], 0.0)


def _grpo_advantages(r, logp, ref_logp, values, mask, score, beta, kl_in_reward):
  kl = _kl(r, logp, ref_logp, mask, "k3")       # logged; the penalty is the loss's
  rewards = L.token_rewards(score, kl, mask, 0.0 * beta)
  adv = _per_token(group_normalized(score, r.group_size), mask)
  return kl, rewards, adv, jnp.zeros_like(adv)


def _rloo_advantages(r, logp, ref_logp, values, mask, score, beta, kl_in_reward):
  kl = _kl(r, logp, ref_logp, mask)
  rewards = L.token_rewards(score, kl, mask, beta if kl_in_reward else 0.0 * beta)
  seq_return = jnp.sum(rewards, axis=1)          # score − β·Σ KL (or the score alone)
  adv = _per_token(leave_one_out(seq_return, r.group_size), mask)
  return kl, rewards, adv, jnp.zeros_like(adv)


# ------------------------------------------------------------------ losses
# (r, logp, values, batch) -> (policy and value terms, metrics); the entropy
# bonus, the KL loss term and the token-count weight are added by rl.make_loss_fn.

def _reinforce_loss(r, logp, values, batch):
  m = batch["response_mask"]
  pg = L.reinforce_policy_loss(logp, batch["advantages"], m)
  vf = L.value_loss(values, batch["returns"], m)
  return pg + r.vf_coef * vf, {"policy_loss": pg, "value_loss": vf, "clip_frac": jnp.zeros(())}


def _ppo_loss(r, logp, values, batch):
  m = batch["response_mask"]
  pg, clip_frac = L.ppo_policy_loss(logp, batch["old_logp"], batch["advantages"], m, r.clip_eps)
  vf = L.clipped_value_loss(values, batch["old_values"], batch["returns"], m, r.value_clip)
  return pg + r.vf_coef * vf, {"policy_loss": pg, "value_loss": vf, "clip_frac": clip_frac}


def _clipped_policy_only(r, logp, values, batch):
  pg, clip_frac = L.ppo_policy_loss(logp, batch["old_logp"], batch["advantages"],
                                    batch["response_mask"], r.clip_eps)
  return pg, {"policy_loss": pg, "clip_frac": clip_frac}


# ------------------------------------------------------------------ validation

def _no_check(config):
  pass


def _reinforce_check(config):
  if config.rl.kl_coef >= 1:
    raise ConfigError(f"rl.kl_coef={config.rl.kl_coef} must be < 1 with reinforce_baseline: its "
                      f"reward is (1 − β)·r, whose sign β ≥ 1 flips")


def _group_check(config):
  r = config.rl
  if r.group_size < 2:
    raise ConfigError(f"rl.group_size={r.group_size}: rl.algorithm={r.algorithm!r} baselines each "
                      f"response by the other responses to its prompt; use rl.group_size >= 2")


# ------------------------------------------------------------------ the table

@dataclasses.dataclass(frozen=True)
class Algorithm:
  advantages: Callable      # see "advantages" above
  loss: Callable            # see "losses" above
  updates: Callable         # r -> (epochs, minibatches): optimiser steps per rollout
  group_size: Callable      # r -> responses per prompt
  validate: Callable        # config -> None; raises ConfigError
  value_model: bool         # trains V(s): a value network or head exists
  kl_in_loss: Callable      # r -> True: β·mean k is a loss term (else a reward)
  kl_estimator: Callable    # r -> the estimator of the loss term / reward
  max_beta: float = float("inf")   # the adaptive controller's cap


def _from_config(field):
  return lambda r: getattr(r, field)


ALGORITHMS = {
    "reinforce_baseline": Algorithm(
        _reinforce_advantages, _reinforce_loss, lambda r: (1, 1), lambda r: 1, _reinforce_check,
        value_model=True, kl_in_loss=lambda r: r.kl_penalty == "loss",
        kl_estimator=_from_config("kl_estimator"), max_beta=0.99),
    "ppo": Algorithm(
        _ppo_advantages, _ppo_loss, lambda r: (r.ppo_epochs, r.minibatches), lambda r: 1,
        _no_check, value_model=True, kl_in_loss=lambda r: r.kl_penalty == "loss",
        kl_estimator=_from_config("kl_estimator")),
    "grpo": Algorithm(
        _grpo_advantages, _clipped_policy_only, lambda r: (r.ppo_epochs, r.minibatches),
        _from_config("group_size"), _group_check, value_model=False,
        kl_in_loss=lambda r: True, kl_estimator=lambda r: "k3"),
    "rloo": Algorithm(
        _rloo_advantages, _clipped_policy_only, lambda r: (r.ppo_epochs, r.minibatches),
        _from_config("group_size"), _group_check, value_model=False,
        kl_in_loss=lambda r: r.kl_penalty == "loss", kl_estimator=_from_config("kl_estimator")),
}
