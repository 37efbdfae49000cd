"""The pipeline's `paper` variant and the demo's new report keys, on a tiny setting:
labelers of three sizes (one of them the demo's own, reused), each with its
alignment and same-position rate; direct RLAIF; the harmless rate with its
interval on the posts that invite harm. The numbers mean nothing at this size;
the keys, their ranges and their relations to each other are what is checked."""
import json
import math
import os

import jax
import pytest

from rlaif_jax import config as C
from rlaif_jax import paths as io
from rlaif_jax.demo import pipeline
from rlaif_jax.demo import world
from rlaif_jax.eval.stats import wilson_interval
from rlaif_jax.mesh import make_mesh

CONFIG = os.path.join(os.path.dirname(__file__), os.pardir, "configs", "pipeline.py")


def test_paper_variant_sets_three_labeler_sizes_around_the_demos():
  paper, demo = C.load_config_file(CONFIG + ":paper"), C.load_config_file(CONFIG + ":demo")
  sizes = paper.pipeline.labeler_sizes.to_dict()
  assert list(sizes) == ["L", "S", "XS"] and not demo.pipeline.labeler_sizes.to_dict()
  assert {k: demo.labeler.model.arch[k] for k in sizes["S"]} == sizes["S"]
  assert sizes["L"]["d_model"] > sizes["S"]["d_model"] > sizes["XS"]["d_model"]
  # everything else is the demo's
  for key in ("world", "rl", "labeler"):
    assert paper[key].to_dict() == demo[key].to_dict(), key


def _tiny_paper_config():
  c = C.load_config_file(CONFIG + ":tiny")
  c.mesh.data = 1
  c.labeler.mesh.devices = 1
  c.world.update(n_sft=96, n_prompts=96, n_eval=24, n_labeler=96, n_pairs=16,
                 heldout_pairs=64)
  for t in (c.pipeline.labeler_pretrain, c.pipeline.sft):
    t.steps = 4
  c.pipeline.rl.update(steps=2, batch_size=16)
  c.pipeline.arms = ("direct_rlaif",)
  small = dict(d_model=32, n_layers=1, n_heads=2, n_kv_heads=2, head_dim=16, d_ff=64)
  demo = {k: c.labeler.model.arch[k] for k in small}
  c.pipeline.labeler_sizes = {"L": dict(demo, n_layers=demo["n_layers"] + 1), "S": demo,
                              "XS": small}
  return c


def test_tiny_paper_pipeline_reports_labeler_sizes_direct_rlaif_and_harmless_rate(tmp_path):
  c = _tiny_paper_config()
  mesh = make_mesh(c.mesh, jax.devices()[:1])
  pipeline.run(c, str(tmp_path), mesh)
  # the demo-sized labeler is the demo's own; the others are pre-trained once each
  assert (tmp_path / "labeler_pretrain_L" / "DONE").exists()
  assert (tmp_path / "labeler_pretrain_XS" / "DONE").exists()
  assert not (tmp_path / "labeler_pretrain_S").exists()
  rep = json.loads((tmp_path / "report.json").read_text())

  sizes = rep["labeler_sizes"]
  assert list(sizes) == ["L", "S", "XS"]
  held = [r for r in io.read_jsonl(str(tmp_path / "sample_pairs" / "pairs_heldout.jsonl"))
          if r["task"] == "summarization"]
  assert held and all(r["task"] == ("harmless" if world.invitation(r["prompt"]) else
                                    "summarization") for r in held)
  for name, s in sizes.items():
    assert s["n"] == len(held), name
    for key in ("alignment", "same_position_rate"):
      # a rate over n pairs (accuracy counts a tie as half right)
      half_counts = 2 * s[key] * s["n"]
      assert 0.0 <= s[key] <= 1.0 and abs(half_counts - round(half_counts)) < 1e-6, (name, key)
    # the alignment's Wilson interval over those n pairs
    assert (s["alignment_ci_low"], s["alignment_ci_high"]) == pytest.approx(
        wilson_interval(s["alignment"] * s["n"], s["n"])), name
    assert s["alignment_ci_low"] <= s["alignment"] <= s["alignment_ci_high"], name
  assert sizes["L"]["params"] > sizes["S"]["params"] > sizes["XS"]["params"] > 0
  md = (tmp_path / "report.md").read_text()
  assert "## Labeler size" in md and "rationale" in md     # the dropped CoT part, said so
  assert "labeler_sizes.png" in rep["plots"] and (tmp_path / "labeler_sizes.png").stat().st_size

  # direct RLAIF and the harmless task
  w = rep["win_rates"]["direct_rlaif_vs_sft"]
  assert w["n"] == c.world.n_eval and 0 <= w["ci_low"] <= w["rate"] <= w["ci_high"] <= 1
  prompts = [r["prompt"] for r in io.read_jsonl(str(tmp_path / "world" / "eval.jsonl"))]
  n_harm = sum(world.invitation(p) is not None for p in prompts)
  assert n_harm > 0
  responses = io.read_jsonl(str(tmp_path / "eval" / "responses.jsonl"))
  for policy in ("sft", "direct_rlaif", "reference"):
    h = rep["harmless_rate"][policy]
    assert set(h) == {"rate", "ci_low", "ci_high", "n"} and h["n"] == n_harm, (policy, h)
    want = sum(not world.harmful(r[policy]) for r in responses
               if world.invitation(r["prompt"])) / n_harm
    assert math.isclose(h["rate"], want) and h["ci_low"] <= want <= h["ci_high"]
    assert 0.0 <= rep["harm_prompt_helpfulness"][policy] <= 1.0
  assert "## Harmless task" in md
