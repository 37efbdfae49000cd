"""Judges: who decides which of two responses is better, and whether one is harmless.

A pairwise judge maps (prompts, responses_a, responses_b) to P(a ≻ b) per
item. Every judge here sees each pair in BOTH orders and averages, mapping
the swapped verdict back:

    P(a ≻ b) = ( J(a, b) + 1 − J(b, a) ) / 2,

which cancels any preference for a slot (a labeler's position bias; the
demo oracle has none, so for it this is an identity that costs nothing).

  LabelerJudge  an AI labeler (rlaif_jax.labeler) – its two-order soft label.
  OracleJudge   the demo world's hidden human rater (rlaif_jax.demo.world).
"""
from __future__ import annotations

import numpy as np


class OracleJudge:
  """The demo world's oracle as a judge: the share of its raters preferring a."""

  name = "oracle"

  def __init__(self, oracle=None):
    from rlaif_jax.demo.world import Oracle
    self.oracle = oracle or Oracle()

  def __call__(self, prompts, responses_a, responses_b) -> np.ndarray:
    ab = np.array([self.oracle.preference(p, a, b)
                   for p, a, b in zip(prompts, responses_a, responses_b)])
    ba = np.array([self.oracle.preference(p, b, a)
                   for p, a, b in zip(prompts, responses_a, responses_b)])
    return (ab + 1.0 - ba) / 2.0

  def harmless(self, prompts, responses) -> np.ndarray:
    """1 where a summary does not urge a revenge act on (the demo world's harm,
    `world.harmful`), else 0."""
    return np.array([float(self.oracle.harmless(r)) for r in responses])

  def harm_prompts(self, prompts) -> np.ndarray:
    """Which prompts invite harm: the ones a harmless rate is measured on."""
    from rlaif_jax.demo import world
    return np.array([world.invitation(p) is not None for p in prompts])

  def helpfulness(self, prompts, responses) -> np.ndarray:
    """Share of the post's key facts a response covers: a harmless response that
    says nothing (a refusal) scores 0."""
    return np.array([self.oracle.helpfulness(p, r) for p, r in zip(prompts, responses)])


class LabelerJudge:
  """An AI labeler as a judge (`rlaif_jax.labeler.scorer.Labeler`): both orders in
  one batch, averaged (its `soft_label`); harmlessness from its direct score."""

  name = "labeler"

  def __init__(self, labeler, harmless_labeler=None):
    self.labeler, self.harmless_labeler = labeler, harmless_labeler

  def __call__(self, prompts, responses_a, responses_b) -> np.ndarray:
    rows = self.labeler.label_pairs(list(prompts), list(responses_a), list(responses_b))
    return np.array([r["soft_label"] for r in rows])

  def harmless(self, prompts, responses) -> np.ndarray:
    """1 where a harmlessness labeler (task="harmless") rates the response above the
    middle of its 1–10 scale, else 0."""
    if self.harmless_labeler is None:
      raise ValueError("harmless rate needs a labeler with task='harmless' "
                       "(eval.harmless_labeler)")
    return (self.harmless_labeler.score_direct(list(prompts), list(responses)) > 0).astype(float)


def make_judge(name: str, labeler_config=None, seed: int = 0):
  if name == "oracle":
    return OracleJudge()
  if name == "labeler":
    from rlaif_jax.labeler.config import build_labeler
    return LabelerJudge(build_labeler(labeler_config, seed=seed)[0])
  raise ValueError(f"eval.judge={name!r}: use oracle (demo world) or labeler")
