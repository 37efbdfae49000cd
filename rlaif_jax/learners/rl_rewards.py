"""Where the RL learner's sequence-level rewards come from (`rl.reward`):

  model     a reward-model directory (the RM stage's <workdir>/model): distilled
            RLAIF, or RLHF on human labels. Reads the policy's token ids, so it
            shares the policy's tokenizer.
  labeler   the labeler's direct 1–10 score rescaled to [−1, 1] (direct RLAIF).
            Its own model, tokenizer and (sub)mesh; the interface is text.
  callable  any "module:function" taking (prompts: list[str], responses:
            list[str]) and returning one float per response.

Every source is called as `source(prompts, responses, tokens, mask)` with the
prompt texts, the decoded responses (special tokens dropped) and the full
left-padded prompt + response ids, and returns float32 [B]. Shaping of these
raw scores (normalisation, clipping, the missing-EOS penalty) is `shape_scores`.
"""
from __future__ import annotations

import difflib
import functools
import importlib

import jax
import numpy as np
from flax import nnx

from rlaif_jax.config import ConfigError
from rlaif_jax.labeler.config import build_labeler
from rlaif_jax.mesh import to_host
from rlaif_jax.models.build import build


class ModelReward:
  def __init__(self, model, mesh):
    self.graphdef, params = nnx.split(model)
    self.params, self.mesh = nnx.to_pure_dict(params), mesh

  def __call__(self, prompts, responses, tokens, mask) -> np.ndarray:
    with jax.set_mesh(self.mesh):
      return np.asarray(to_host(rm_scores(self.graphdef, self.params, tokens, mask)), np.float32)


@functools.partial(jax.jit, static_argnums=0)
def rm_scores(graphdef, params, tokens, mask):
  return nnx.merge(graphdef, params)(tokens, mask)


class TextReward:
  def __init__(self, fn):
    self.fn = fn

  def __call__(self, prompts, responses, tokens=None, mask=None) -> np.ndarray:
    out = np.asarray(self.fn(list(prompts), list(responses)), np.float32).reshape(-1)
    if out.shape != (len(responses),):
      raise ValueError(f"the reward function returned {out.shape[0]} rewards for "
                       f"{len(responses)} responses")
    return out


def import_callable(spec: str):
  module, sep, name = spec.partition(":")
  if not sep or not module or not name:
    raise ConfigError(f"rl.reward_fn={spec!r}: expected 'package.module:function'")
  try:
    return getattr(importlib.import_module(module), name)
  except (ImportError, AttributeError) as e:
    raise ConfigError(f"rl.reward_fn={spec!r}: {e}") from None


def make_reward(config, mesh):
  r = config.rl
  if r.reward == "model":
    # the policy's dtype and layout; the architecture is the checkpoint's
    model = build(config.model, mesh, "scalar", checkpoint=r.reward_model)
    return ModelReward(model, mesh)
  if r.reward == "labeler":
    labeler, _ = build_labeler(r.labeler, seed=config.seed, key="rl.labeler")
    return TextReward(labeler.reward_fn)
  if r.reward == "callable":
    return TextReward(import_callable(r.reward_fn))
  raise ConfigError(f"rl.reward={r.reward!r}: use model, labeler or callable")


# ------------------------------------------------------------ shaping

def update_stats(stats: list, x: np.ndarray) -> list:
  """Running [count, mean, M2] (Chan et al.'s parallel Welford update)."""
  n, mean, m2 = stats
  k, mu, var = len(x), float(np.mean(x)), float(np.var(x))
  total = n + k
  delta = mu - mean
  return [total, mean + delta * k / total, m2 + var * k + delta * delta * n * k / total]


def shape_scores(raw, ended, rl, stats: list) -> tuple[np.ndarray, list]:
  """raw scores -> the scores the RL objective sees, and the updated stats.

  In this order: normalise (`rl.reward_norm`: "batch" whitens within the
  rollout, "running" by the mean/std of every score so far, kept in the
  checkpoint), clip to ±`rl.reward_clip` (0 = off), then subtract
  `rl.missing_eos_penalty` from responses that never ended – after the
  normalisation, so the penalty is in the units the policy sees.
  """
  s = np.asarray(raw, np.float64)
  if rl.reward_norm == "batch":
    s = (s - s.mean()) / (s.std() + 1e-8)
  elif rl.reward_norm == "running":
    stats = update_stats(stats, s)
    s = (s - stats[1]) / (np.sqrt(stats[2] / stats[0]) + 1e-8)
  if rl.reward_clip:
    s = np.clip(s, -rl.reward_clip, rl.reward_clip)
  s = s - rl.missing_eos_penalty * (~np.asarray(ended, bool))
  return s.astype(np.float32), stats


# ------------------------------------------------------------ toy rewards

def toy_answer_similarity(prompts, responses):
  """The toy tasks' verifiable reward: similarity in [0, 1] of the response to
  the right answer (1 = exact), e.g. "reverse: abc\\n=> " -> "cba"."""
  out = []
  for p, r in zip(prompts, responses):
    task, _, rest = p.partition(": ")
    x = rest.split("\n")[0]
    answer = {"reverse": x[::-1], "sort": "".join(sorted(x)), "upper": x.upper()}.get(task, "")
    out.append(difflib.SequenceMatcher(None, r.strip(), answer).ratio())
  return np.asarray(out, np.float32)


def lowercase_fraction(prompts, responses):
  """Share of the response's characters that are lowercase ASCII letters: a
  target-token reward dense enough (26 of 259 byte tokens) for a from-scratch
  policy to learn in a few dozen steps; used by the tests."""
  return np.asarray([sum("a" <= ch <= "z" for ch in r) / max(len(r), 1) for r in responses],
                    np.float32)
