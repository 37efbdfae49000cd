"""Alignment of AI labels with human labels (the paper's §1 table), from label rows.

Over pairs with a hard human label h ∈ {0, 1} (1 = response a preferred):

    accuracy          mean 1[argmax AI label = h]; a soft label of exactly 0.5
                      counts as half right
    accuracy_ab/_ba   the same from one order alone (before order averaging)
    same_position_rate  share of pairs where the same slot won in both orders
                      (over all pairs, human label or not)
    first_slot_rate   share of single-order answers that named slot 1 (option
                      "1" as answered, q_ab / q_ba, before a harmless prompt's
                      flip): the position bias that averaging removes
    ece               expected calibration error of the soft labels, with
                      confidence c = max(p, 1 − p) in `bins` equal-width bins:
                      Σ_bins |B|/n · |accuracy(B) − mean c(B)|, where a soft
                      label of exactly 0.5 is half right, as in accuracy
    accuracy_by_confidence  accuracy per human confidence value, when the data
                      has one (TL;DR comparisons: 1–9)
"""
from __future__ import annotations

import numpy as np


def _right(p_a: np.ndarray, human: np.ndarray) -> np.ndarray:
  """1 where the AI label picks the human's choice, 0 where not, 1/2 on a tie."""
  return np.where(p_a == 0.5, 0.5, ((p_a > 0.5) == (human == 1)).astype(float))


def _acc(p_a: np.ndarray, human: np.ndarray) -> float:
  return float(_right(p_a, human).mean())


def expected_calibration_error(p_a: np.ndarray, human: np.ndarray, bins: int = 10) -> float:
  conf = np.maximum(p_a, 1 - p_a)
  right = _right(p_a, human)
  edges = np.linspace(0.5, 1.0, bins + 1)
  which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
  ece = 0.0
  for b in range(bins):
    sel = which == b
    if sel.any():
      ece += sel.mean() * abs(right[sel].mean() - conf[sel].mean())
  return float(ece)


def alignment_report(rows: list[dict], bins: int = 10) -> dict:
  n = len(rows)
  report = {"pairs": n}
  if not n:
    return report
  same = np.array([r["same_position_won"] for r in rows])
  # as answered: P(option 1) in each order, before any flip of the question
  first_slot = np.array([[r["q_ab"][0] > 0.5, r["q_ba"][0] > 0.5] for r in rows]).ravel()
  report.update(same_position_rate=float(same.mean()), first_slot_rate=float(first_slot.mean()))
  labeled = [r for r in rows if r.get("human_label") in (0.0, 1.0)]
  report["human_labeled_pairs"] = len(labeled)
  if not labeled:
    return report
  human = np.array([r["human_label"] for r in labeled])
  soft = np.array([r["soft_label"] for r in labeled])
  report.update(
      accuracy=_acc(soft, human),
      accuracy_ab=_acc(np.array([r["p_ab"][0] for r in labeled]), human),
      accuracy_ba=_acc(np.array([r["p_ba"][0] for r in labeled]), human),
      ece=expected_calibration_error(soft, human, bins))
  conf = [r.get("confidence") for r in labeled]
  if any(c is not None for c in conf):
    by = {}
    for c in sorted({c for c in conf if c is not None}):
      sel = np.array([x == c for x in conf])
      by[str(c)] = {"pairs": int(sel.sum()), "accuracy": _acc(soft[sel], human[sel])}
    report["accuracy_by_confidence"] = by
  return report
