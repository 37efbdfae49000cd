"""The whole pipeline at its smallest setting: every stage runs, the report is
well formed, and a second invocation skips every finished stage."""
import json
import math
import os

import jax
import pytest

from rlaif_jax import config as C
from rlaif_jax.demo import pipeline
from rlaif_jax.mesh import make_mesh

CONFIG = os.path.join(os.path.dirname(__file__), os.pardir, "configs", "pipeline.py")
STAGES = ("world", "labeler_pretrain", "sft", "sample_pairs", "label", "rm_ai", "rm_human",
          "rl_rlaif", "rl_rlhf", "rl_direct", "dpo", "eval")


def _config():
  c = C.load_config_file(CONFIG + ":tiny")
  # One device (and a labeler on the same one): small models run fastest unsharded.
  c.mesh.data = 1
  c.labeler.mesh.devices = 1
  c.world.update(n_sft=128, n_prompts=96, n_eval=16, n_labeler=128, n_pairs=32,
                 heldout_pairs=48)
  for t in (c.pipeline.labeler_pretrain, c.pipeline.sft):
    t.steps = 6
  c.pipeline.rm.steps = c.pipeline.dpo.steps = 3
  c.pipeline.rl.update(steps=2, batch_size=16)
  return c


def test_pipeline_end_to_end_and_resume(tmp_path, monkeypatch):
  """The workdir is given as a file:// URL, which the I/O layer (rlaif_jax.paths)
  maps to the local disk: an artifact written past it, with os/open, would land
  in a local "file:" directory under the working directory instead."""
  c = _config()
  mesh = make_mesh(c.mesh, jax.devices()[:1])
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  workdir, tmp_path = f"file://{tmp_path}/w", tmp_path / "w"
  out = pipeline.run(c, workdir, mesh)
  assert os.listdir(cwd) == []            # every artifact went through the I/O layer
  for stage in STAGES:
    assert os.path.exists(tmp_path / stage / "DONE"), stage
  rep = json.loads((tmp_path / "report.json").read_text())
  for key in ("wall_seconds", "labeler_alignment", "same_position_rate_single_order",
              "same_position_rate_averaged", "rm_accuracy_ai", "rm_accuracy_human"):
    assert isinstance(rep[key], float) and math.isfinite(rep[key]), key
    assert key == "wall_seconds" or 0.0 <= rep[key] <= 1.0, key
  assert rep["wall_seconds"] > 0
  for name in ("rlaif_vs_sft", "rlhf_vs_sft", "rlaif_vs_rlhf", "direct_rlaif_vs_sft",
               "direct_rlaif_vs_rlaif", "dpo_vs_sft"):
    w = rep["win_rates"][name]
    assert set(w) == {"rate", "ci_low", "ci_high", "n"} and w["n"] == c.world.n_eval
    assert 0.0 <= w["ci_low"] <= w["rate"] <= w["ci_high"] <= 1.0, (name, w)
    assert 0.0 <= rep["length_controlled"][name]["rate"] <= 1.0
  assert rep["pending"] == []
  # the demo's labeler has the policy's shape: its RLAIF arm is the paper's same-size one
  assert any("same-size RLAIF" in n for n in rep["notes"]), rep.get("notes")
  for f in ("report.md", "win_rates.png", "training_curves.png"):
    assert (tmp_path / f).stat().st_size > 0
  assert "rlaif_vs_sft" in (tmp_path / "report.md").read_text()
  # AI labels: every training pair once, in order; harm-inviting posts asked the
  # harmless question (their own labeler run), the rest the summary one
  read = lambda f: [json.loads(x) for x in (tmp_path / f).read_text().splitlines()]
  pairs, labels = read("sample_pairs/pairs_train.jsonl"), read("label/labels.jsonl")
  assert [r["id"] for r in labels] == [r["id"] for r in pairs]
  for task in ("summarization", "harmless"):
    assert [r["id"] for r in read(f"label/{task}/labels.jsonl")] == [
        r["id"] for r in pairs if r["task"] == task]
  for policy, h in rep["harmless_rate"].items():
    assert set(h) == {"rate", "ci_low", "ci_high", "n"} and h["n"] > 0, policy
    assert h["ci_low"] <= h["rate"] <= h["ci_high"]
  assert out["win_rate/rlaif_vs_sft"] == rep["win_rates"]["rlaif_vs_sft"]["rate"]

  # Second invocation: no stage may run again.
  def boom(*a, **k):
    raise AssertionError("a finished stage ran again")
  from rlaif_jax.demo import world_data
  from rlaif_jax.labeler import stage as label_stage
  from rlaif_jax.learners import dpo, reward, rl, sft
  for module in (sft, reward, dpo, rl, label_stage):
    monkeypatch.setattr(module, "run", boom)
  monkeypatch.setattr(world_data, "labeler_rows", boom)
  monkeypatch.setattr(pipeline, "sample_pairs", boom)
  done = {s: (tmp_path / s / "DONE").read_text() for s in STAGES}
  again = pipeline.run(c, workdir, mesh)
  assert {s: (tmp_path / s / "DONE").read_text() for s in STAGES} == done
  assert again["win_rate/rlaif_vs_sft"] == out["win_rate/rlaif_vs_sft"]


@pytest.mark.parametrize("arms,want", [
    (("direct_rlaif",), ["world", "labeler_pretrain", "sft", "sample_pairs", "rl_direct"]),
    (("dpo",), ["world", "labeler_pretrain", "sft", "sample_pairs", "label", "dpo"]),
    (("rlhf",), ["world", "labeler_pretrain", "sft", "sample_pairs", "rm_human", "rl_rlhf"]),
    (("rlaif", "rlhf", "direct_rlaif", "dpo"), list(STAGES[:-1])),
])
def test_the_arms_table_runs_what_each_arm_reads_and_nothing_else(arms, want):
  assert pipeline.stages_for(arms) == want


@pytest.mark.parametrize("key,value,match", [
    ("pipeline.arms", ("rlaif", "ppo_arm"), r"pipeline.arms: unknown \['ppo_arm'\]; known: rlaif"),
    ("eval.comparisons", ("rlaif_vs_dpo", "rlaif_vs_ppo"), "'rlaif_vs_ppo' is not <policy>_vs_"),
])
def test_the_pipeline_refuses_unknown_arms_and_comparisons(key, value, match):
  c = _config()
  section, field = key.split(".")
  c[section][field] = value
  with pytest.raises(C.ConfigError, match=match):
    pipeline.validate(c, None)
