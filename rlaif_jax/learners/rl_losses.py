"""The math of the RL learner, as pure functions on response-aligned arrays.

Every array here is (B, N): row b, generated token t (t = 0 is the first new
token). `mask[b, t]` is True for the tokens the policy actually chose – up to
and including EOS (or the last token of the budget when the response never
ended); what follows EOS is padding and carries no reward, advantage or loss.
`logp[b, t] = log π(a_t | s_t)` and `values[b, t] = V(s_t)`, the state before
token t is chosen.

Masking: padding is *selected away* (`jnp.where`), never multiplied by 0. A
post-EOS log-ratio above ~88 makes `exp` inf in float32 and 0·inf is NaN, so
every function here either selects before it sums or neutralises its inputs at
masked positions before a nonlinearity (the PPO ratio, the KL metric) – which
also keeps the gradient finite (a where after an overflowing exp would still
send 0·inf back through it).

Where the reward goes: the sequence-level score lands on the *last real token*
(the EOS itself, or the last budgeted token of a response that never ended),
because that action completes the response the score judges; with γ = 1 every
earlier token still sees it in its return. Tokens after EOS get nothing.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def masked_mean(x, mask):
  """Σ_{mask} x / max(Σ mask, 1); whatever x holds off the mask (inf, NaN) is ignored."""
  return jnp.sum(jnp.where(mask, x, 0.0)) / jnp.maximum(jnp.sum(mask.astype(jnp.float32)), 1.0)


def masked_log_ratio(logp, other_logp, mask):
  """log π − log π_other on the mask, 0 elsewhere: safe to exponentiate, and the
  gradient at masked positions is exactly 0."""
  return jnp.where(mask, logp - other_logp, 0.0)


def masked_var(x, mask):
  mu = masked_mean(x, mask)
  return masked_mean(jnp.square(x - mu), mask)


def whiten(x, mask, eps: float = 1e-8):
  """(x − mean) / std over the real tokens of the whole batch; 0 elsewhere."""
  mu = masked_mean(x, mask)
  return jnp.where(mask, (x - mu) * jax.lax.rsqrt(masked_var(x, mask) + eps), 0.0)


def explained_variance(values, returns, mask):
  """1 − Var(R − V) / Var(R): 1 for a perfect value model, ≤ 0 for a useless one."""
  return 1.0 - masked_var(returns - values, mask) / jnp.maximum(masked_var(returns, mask), 1e-8)


# ------------------------------------------------------------------ KL

def kl_estimate(logp, ref_logp, estimator: str = "k1"):
  """Per-token estimate of KL(π ‖ π_ref) from a token sampled from π.

  With d = log π(a) − log π_ref(a) (Schulman, "Approximating KL divergence"):
      k1 = d                      unbiased, noisy, can be negative
      k2 = d² / 2                 biased, low variance
      k3 = exp(−d) − 1 + d        unbiased, never negative, low variance

  "Unbiased" is about the value. What the estimator does to the *gradient*
  depends on where it enters (`rl.kl_penalty`):
    reward – −β·k_t is a per-token reward, fixed for the rollout, and the policy
      gradient sees E[∇log π(a_t) · Σ_{s≥t} k_s]. For k1 that is exactly
      ∇KL(π ‖ π_ref) of the sequence (the derivative of k1 itself has mean
      E_π[∇log π] = 0); for k2 and k3 it is not the gradient of any KL – their
      penalty still pulls toward π_ref, but biased.
    loss – β·mean_t k(a_t) is added to the loss and differentiated through
      log π (tokens from the rollout, so on-policy up to the PPO drift):
        ∇k1 = ∇log π                   mean 0: no pull at all (refused)
        ∇k2 = d·∇log π                 mean ∇KL(π ‖ π_ref)   (reverse KL)
        ∇k3 = (1 − π_ref/π)·∇log π     mean ∇KL(π_ref ‖ π)   (forward KL;
                                       GRPO's, Shao et al. 2024, eq. 4)
  """
  d = logp - ref_logp
  if estimator == "k1":
    return d
  if estimator == "k2":
    return 0.5 * jnp.square(d)
  if estimator == "k3":
    return jnp.expm1(-d) + d
  raise ValueError(f"kl estimator {estimator!r}: use k1, k2 or k3")


def kl_loss(logp, ref_logp, mask, estimator: str):
  """mean over the mask of k(log π − log π_ref): the KL penalty as a loss term
  (`rl.kl_penalty="loss"`); padding is neutralised before the exp of k3."""
  return masked_mean(kl_estimate(masked_log_ratio(logp, ref_logp, mask), 0.0, estimator), mask)


def adaptive_kl_coef(beta: float, kl: float, target: float, horizon: int, n: int,
                     max_beta: float = float("inf")) -> float:
  """Ziegler et al.'s proportional controller (arXiv 1909.08593, §2.2):

      e = clip(KL / KL_target − 1, −0.2, 0.2);   β ← min(β · (1 + e · n / horizon), max_beta)

  n = samples in the batch that measured KL. β grows when the policy drifts
  further than the target and shrinks when it stays closer. `max_beta` caps it
  where β ≥ 1 would be meaningless (the paper's (1 − β)·r flips the reward's sign).
  """
  e = min(max(kl / target - 1.0, -0.2), 0.2)
  return min(beta * (1.0 + e * n / horizon), max_beta)


# ------------------------------------------------------------------ rewards

def last_token(mask):
  """One-hot (B, N) at each row's last real token (all zeros for an empty row)."""
  n = mask.shape[-1]
  length = jnp.sum(mask, axis=-1)
  return (jnp.arange(n)[None] == (length - 1)[:, None]) & mask


def token_rewards(score, kl, mask, beta, score_coef=1.0):
  """r_t = score_coef · score · [t is last] − β · KL_t on real tokens, 0 after EOS.

  The paper's objective E[(1−β)·r − β·KL] is score_coef = 1 − β; the usual
  RLHF objective (Ziegler, PPO) is score_coef = 1."""
  r = -beta * kl + score_coef * score[:, None] * last_token(mask)
  return jnp.where(mask, r, 0.0)


def discounted_returns(rewards, mask, gamma: float = 1.0):
  """Z_t = Σ_{s≥t} γ^{s−t} r_s over real tokens (reverse cumulative sum)."""
  def step(carry, x):
    r, m = x
    z = jnp.where(m, r + gamma * carry, 0.0)
    return z, z
  _, z = jax.lax.scan(step, jnp.zeros(rewards.shape[0]), (rewards.T, mask.T), reverse=True)
  return z.T


def gae(rewards, values, mask, gamma: float, lam: float):
  """Generalised advantage estimation (Schulman et al. 2016) with masks.

  For the real tokens t = 0..L−1 of a row, with V_L = 0 (the episode ends
  after the last real token, so nothing is bootstrapped past it):

      δ_t = r_t + γ·V_{t+1} − V_t
      A_t = Σ_{k≥0} (γλ)^k · δ_{t+k}  =  δ_t + γλ·A_{t+1},    A_L = 0
      R_t = A_t + V_t                                   (the value target)

  λ = 1 gives A_t = Z_t − V_t with Z the discounted return (Monte Carlo, the
  paper's REINFORCE baseline when γ = 1 too); λ = 0 gives the one-step TD
  error. Positions after the end get A = R = 0. Returns (advantages, returns).
  """
  m = mask.astype(jnp.float32)
  v = jnp.where(mask, values, 0.0)
  v_next = jnp.concatenate([v[:, 1:], jnp.zeros_like(v[:, :1])], axis=1)
  m_next = jnp.concatenate([m[:, 1:], jnp.zeros_like(m[:, :1])], axis=1)
  delta = jnp.where(mask, rewards + gamma * v_next - v, 0.0)

  def step(carry, x):
    d, mn = x
    a = d + gamma * lam * mn * carry
    return a, a
  _, adv = jax.lax.scan(step, jnp.zeros(rewards.shape[0]), (delta.T, m_next.T), reverse=True)
  adv = jnp.where(mask, adv.T, 0.0)
  return adv, jnp.where(mask, adv + v, 0.0)


# ------------------------------------------------------------------ losses

def reinforce_policy_loss(logp, advantages, mask):
  """The paper's −Σ_t log π(a_t|s_t) · stopgrad(Z_t − V(s_t)), averaged over tokens."""
  return masked_mean(-logp * jax.lax.stop_gradient(advantages), mask)


def ppo_policy_loss(logp, old_logp, advantages, mask, clip_eps: float):
  """Clipped surrogate (Schulman et al. 2017), token-averaged:

      ρ = exp(log π − log π_old)
      L = mean max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε))

  Returns (loss, clip fraction = share of tokens where the clipped term is
  the larger one, i.e. whose gradient is cut off). The ratio is 1 off the
  mask whatever the log-probs hold there."""
  ratio = jnp.exp(masked_log_ratio(logp, old_logp, mask))
  plain = -advantages * ratio
  clipped = -advantages * jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
  loss = masked_mean(jnp.maximum(plain, clipped), mask)
  return loss, masked_mean((clipped > plain).astype(jnp.float32), mask)


def value_loss(values, returns, mask):
  """The paper's Σ_t (Z_t − V(s_t))², averaged over tokens."""
  return masked_mean(jnp.square(values - returns), mask)


def clipped_value_loss(values, old_values, returns, mask, clip: float):
  """PPO's value clipping: the new value may not move more than `clip` from the
  rollout's without the loss taking the worse of the two errors,

      V_c = V_old + clip(V − V_old, −c, c);   L = mean max((V − R)², (V_c − R)²).
  """
  v_clipped = old_values + jnp.clip(values - old_values, -clip, clip)
  return masked_mean(jnp.maximum(jnp.square(values - returns),
                                 jnp.square(v_clipped - returns)), mask)


def entropy_from_logits(logits):
  """−Σ_v p_v log p_v per position, float32."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.sum(jnp.exp(logp) * logp, axis=-1)
