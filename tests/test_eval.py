"""Eval statistics against hand cases and synthetic data with a known answer."""
import json
import math
import os

import numpy as np
import pytest

from rlaif_jax.eval import stats
from rlaif_jax.eval.report import write_report


@pytest.mark.parametrize("s,n,lo,hi", [
    (5, 10, 0.2366, 0.7634),     # textbook Wilson 95% intervals
    (0, 10, 0.0, 0.2775),
    (10, 10, 0.7225, 1.0),
    (81, 263, 0.2553, 0.3662),   # Wilson's (1927) worked example in Newcombe (1998): 81/263
])
def test_wilson_interval_hand_cases(s, n, lo, hi):
  got = stats.wilson_interval(s, n)
  assert got[0] == pytest.approx(lo, abs=1e-4) and got[1] == pytest.approx(hi, abs=1e-4)


def test_win_rate_counts_ties_as_half_and_soft_outcomes_as_their_mean():
  w = stats.win_rate([1, 1, 0, 0.5])
  assert w["rate"] == pytest.approx(0.625) and w["n"] == 4
  assert (w["ci_low"], w["ci_high"]) == pytest.approx(stats.wilson_interval(2.5, 4))
  assert stats.win_rate([])["n"] == 0


def _synthetic(n, b0, b1, seed=0):
  rng = np.random.default_rng(seed)
  len_b = rng.integers(20, 80, n).astype(float)
  ratio = np.exp(rng.normal(0.35, 0.25, n))          # A's outputs mostly longer
  len_a = np.maximum(1.0, np.round(len_b * ratio))
  x = len_a / len_b - 1.0
  p = 1 / (1 + np.exp(-(b0 + b1 * x)))
  return (rng.random(n) < p).astype(float), len_a, len_b


@pytest.mark.parametrize("b0", [0.0, 0.6])
def test_length_controlled_recovers_the_rate_at_equal_length(b0):
  y, la, lb = _synthetic(20000, b0, 2.0)
  raw = stats.win_rate(y)["rate"]
  lc = stats.length_controlled_win_rate(y, la, lb)
  truth = 1 / (1 + math.exp(-b0))
  assert raw > truth + 0.1                             # length inflates the raw rate ...
  assert lc["rate"] == pytest.approx(truth, abs=0.025)  # ... the regression removes it
  assert lc["ci_low"] < truth < lc["ci_high"]
  assert lc["slope"] == pytest.approx(2.0, abs=0.3)


def test_logistic_fit_matches_the_closed_form_of_a_saturated_model():
  # x ∈ {0, 1}: the MLE reproduces each group's observed rate exactly.
  x = np.array([0] * 10 + [1] * 10, float)
  y = np.array([1] * 3 + [0] * 7 + [1] * 8 + [0] * 2, float)
  beta, _ = stats.logistic_fit(x, y, ridge=0.0)
  assert 1 / (1 + math.exp(-beta[0])) == pytest.approx(0.3, abs=1e-6)
  assert 1 / (1 + math.exp(-beta.sum())) == pytest.approx(0.8, abs=1e-6)


def test_report_files(tmp_path):
  rep = {"win_rates": {"rlaif_vs_sft": stats.win_rate([1, 0, 1, 1])},
         "length_controlled": {"rlaif_vs_sft": {"rate": 0.6, "ci_low": 0.4, "ci_high": 0.8,
                                                "n": 4}},
         "labeler_alignment": 0.7, "mean_response_length": {"sft": 40.0, "rlaif": 50.0}}
  metrics = tmp_path / "rl.jsonl"
  metrics.write_text("".join(json.dumps({"step": i, "reward": i / 10, "kl": i / 100}) + "\n"
                             for i in range(5)))
  out = write_report(str(tmp_path), rep, {"rlaif": str(metrics)})
  assert set(out["plots"]) == {"win_rates.png", "training_curves.png"}
  for name in ("report.json", "report.md", "win_rates.png", "training_curves.png"):
    assert os.path.getsize(tmp_path / name) > 0
  md = (tmp_path / "report.md").read_text()
  assert "rlaif_vs_sft" in md and "75.0%" in md and "71.0%" in md   # ours beside the paper's


def test_report_sets_each_labeler_size_with_its_interval_beside_the_papers_size(tmp_path):
  lo, hi = stats.wilson_interval(30, 40)
  rep = {"labeler_sizes": {"L": {"params": 1000, "alignment": 0.75, "alignment_ci_low": lo,
                                 "alignment_ci_high": hi, "same_position_rate": 0.125,
                                 "n": 40}}}
  out = write_report(str(tmp_path), rep)
  assert out["plots"] == ["labeler_sizes.png"]
  md = (tmp_path / "report.md").read_text()
  # 30 of 40: Wilson [0.598, 0.858]; the paper's L: 78.0% aligned, 18.0% same position
  assert "| L | 1,000 | 75.0% [59.8%, 85.8%] | 40 | 12.5% | L: 78.0%, 18.0% |" in md


def test_judges_are_found_by_name_or_by_factory_path():
  """The eval stage knows no world: "oracle" is a table entry naming the demo's
  judge, any "package.module:factory" works the same way, and a bad name is a
  clear error rather than an ImportError traceback."""
  from rlaif_jax.demo.judge import OracleJudge
  from rlaif_jax.eval.judges import make_judge
  by_name, by_path = make_judge("oracle"), make_judge("rlaif_jax.demo.judge:OracleJudge")
  assert type(by_name) is type(by_path) is OracleJudge
  import random
  from rlaif_jax.demo import world
  post, _ = world.make_post(random.Random(0))
  good = world.reference_summary(post, random.Random(1))
  a, b = [good, "."], [".", good]
  got = by_path([post] * 2, a, b)
  np.testing.assert_array_equal(by_name([post] * 2, a, b), got)
  assert got[0] > 0.5 > got[1] and got[0] == pytest.approx(1 - got[1])
  with pytest.raises(ValueError, match="use labeler, oracle"):
    make_judge("crowd")
  with pytest.raises(ValueError, match=r"cannot load nowhere\.module:Judge"):
    make_judge("nowhere.module:Judge")
