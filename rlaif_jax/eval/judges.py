"""Judges: who decides which of two responses is better, and whether one is harmless.

A pairwise judge maps (prompts, responses_a, responses_b) to P(a ≻ b) per
item. Every judge here sees each pair in BOTH orders and averages, mapping
the swapped verdict back:

    P(a ≻ b) = ( J(a, b) + 1 − J(b, a) ) / 2,

which cancels any preference for a slot (a labeler's position bias; the
demo oracle has none, so for it this is an identity that costs nothing).

  LabelerJudge  an AI labeler (rlaif_jax.labeler) – its two-order soft label.
  "oracle"      the demo world's hidden human rater (rlaif_jax.demo.judge), or
  "pkg.module:factory"  any judge of the caller's: a callable with this interface
                (and optionally `harmless`, `harm_prompts`, `helpfulness`,
                `quality_fn`). The eval stage knows judges by name only, so it
                depends on no world of its own.
"""
from __future__ import annotations

import importlib

import numpy as np


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


# Named judges outside this package layer, imported only when asked for.
JUDGES = {"oracle": "rlaif_jax.demo.judge:OracleJudge"}


def judge_spec(name: str) -> str:
  """"labeler", or the "package.module:factory" an eval.judge names; ValueError
  for a name that is neither (checked by the eval stage before anything runs)."""
  spec = name if name == "labeler" else JUDGES.get(name, name)
  if spec != "labeler" and ":" not in spec:
    raise ValueError(f"eval.judge={name!r}: use labeler, oracle (the demo world's) or "
                     "package.module:factory")
  return spec


def make_judge(name: str, labeler_config=None, seed: int = 0):
  spec = judge_spec(name)
  if spec == "labeler":
    from rlaif_jax.labeler.config import build_labeler
    return LabelerJudge(build_labeler(labeler_config, seed=seed)[0])
  module, _, attr = spec.partition(":")
  try:
    factory = getattr(importlib.import_module(module), attr)
  except (ImportError, AttributeError) as e:
    raise ValueError(f"eval.judge={name!r}: cannot load {spec} ({e})") from None
  return factory()
