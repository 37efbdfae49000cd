"""Win rates with confidence intervals, and the length-controlled win rate.

Outcomes are wins of policy A over policy B, one per prompt, in [0, 1]: 1 a
win, 0 a loss, 0.5 a tie, or a judge's soft preference P(A ≻ B) (the share
of a rater panel that prefers A). The win rate is their mean.

Wilson score interval (95%, z = 1.96). With p̂ = s / n the observed rate,

    centre = (p̂ + z²/2n) / (1 + z²/n)
    half   = z / (1 + z²/n) · sqrt(p̂(1 − p̂)/n + z²/4n²)

i.e. the p solving |p̂ − p| = z·sqrt(p(1 − p)/n). Unlike the normal
approximation it stays inside [0, 1] and is sensible at p̂ = 0 or 1 and small n.
For soft outcomes p̂(1 − p̂) bounds their variance from above (a variable in
[0, 1] with mean p̂ has variance ≤ p̂(1 − p̂)), so the interval is conservative.

Length-controlled win rate (the paper's appendix J): a logistic regression of
the outcome on the length ratio x = len(A) / len(B),

    P(win | x) = σ(β₀ + β₁·(x − 1)),

fitted by maximum likelihood (Newton's method), and read at x = 1: σ(β₀), the
win rate the two policies would have if their outputs were equally long.
Newton's step on the mean log-likelihood with a small ridge λ on β₁ only:

    g = Xᵀ(y − μ)/n − λ·[0, β₁],   H = −XᵀWX/n − λ·diag(0, 1),   W = diag(μ(1 − μ)),
    β ← β − H⁻¹ g.

Its interval: the delta method, σ(β₀ ± z·se(β₀)) with se from the inverse
Fisher information (−H⁻¹/n) at the optimum.
"""
from __future__ import annotations

import math

import numpy as np

Z95 = 1.959963984540054


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
  if n <= 0:
    return 0.0, 1.0
  p = min(max(successes / n, 0.0), 1.0)
  denom = 1.0 + z * z / n
  centre = (p + z * z / (2 * n)) / denom
  half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
  return max(0.0, centre - half), min(1.0, centre + half)


def win_rate(outcomes) -> dict:
  """{"rate", "ci_low", "ci_high", "n"}: mean outcome and its Wilson 95% interval."""
  y = np.asarray(outcomes, np.float64)
  n = int(y.size)
  if not n:
    return {"rate": float("nan"), "ci_low": 0.0, "ci_high": 1.0, "n": 0}
  lo, hi = wilson_interval(float(y.sum()), n)
  return {"rate": float(y.mean()), "ci_low": lo, "ci_high": hi, "n": n}


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))


def logistic_fit(x, y, ridge: float = 1e-4, iters: int = 50) -> tuple[np.ndarray, np.ndarray]:
  """(β, covariance of β) of P(y = 1 | x) = σ(β₀ + β₁·x) by Newton's method."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  X = np.stack([np.ones_like(x), x], 1)
  n = len(y)
  beta = np.zeros(2)
  reg = np.diag([0.0, ridge])
  for _ in range(iters):
    mu = _sigmoid(X @ beta)
    g = X.T @ (y - mu) / n - reg @ beta
    w = np.maximum(mu * (1 - mu), 1e-9)
    H = -(X.T * w) @ X / n - reg
    step = np.linalg.solve(H, g)
    beta = beta - step
    if np.max(np.abs(step)) < 1e-10:
      break
  mu = _sigmoid(X @ beta)
  fisher = (X.T * np.maximum(mu * (1 - mu), 1e-9)) @ X + n * reg
  return beta, np.linalg.pinv(fisher)


def length_controlled_win_rate(outcomes, len_a, len_b, z: float = Z95) -> dict:
  """σ(β₀) of the regression on x − 1, x = len_a / len_b, with a delta-method interval.
  Pairs where either output is empty are left out (the ratio is undefined)."""
  y = np.asarray(outcomes, np.float64)
  la, lb = np.asarray(len_a, np.float64), np.asarray(len_b, np.float64)
  keep = (la > 0) & (lb > 0)
  y, ratio = y[keep], la[keep] / lb[keep]
  if len(y) < 3:
    return {"rate": float("nan"), "ci_low": 0.0, "ci_high": 1.0, "n": int(len(y)), "slope": 0.0}
  beta, cov = logistic_fit(ratio - 1.0, y)
  se = math.sqrt(max(cov[0, 0], 0.0))
  return {"rate": float(_sigmoid(beta[0])), "ci_low": float(_sigmoid(beta[0] - z * se)),
          "ci_high": float(_sigmoid(beta[0] + z * se)), "n": int(len(y)),
          "slope": float(beta[1])}
