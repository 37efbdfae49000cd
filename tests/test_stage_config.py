"""Each stage's `validate` through the real entry point: one bad value per stage
stops the run with one line, `error: ...`, before a mesh or any model exists
(the mesh's log line and the workdir's config copy would come after it)."""
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", NPROC="16",
           JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1")

# (config, overrides, the one line main must print)
CASES = {
    "unknown_variant": (
        "configs/sft.py:nope", [],
        "error: unknown variant 'nope' of configs/sft.py; known: toy, tldr, hh_helpful, "
        "hh_harmless"),
    "sft_missing_checkpoint": (
        "configs/sft.py:toy", ["--config.model.checkpoint=/nonexistent"],
        "error: model.checkpoint=/nonexistent does not exist, so it has neither "
        "model_config.json (a stage's <workdir>/model) nor config.json (a Hugging Face "
        "directory)"),
    "rm_data_without_pairs": (
        "configs/rm.py:toy", ["--config.data.source=tldr"],
        "error: data.source='tldr' has no pairs examples (it serves sft, prompts); use one of "
        "tldr_comparisons, anthropic_hh, jsonl, toy"),
    "dpo_beta": (
        "configs/dpo.py:toy", ["--config.dpo.beta=-1"],
        "error: dpo.beta=-1.0 must be a positive number (0.1 is the usual value)"),
    "rl_kl_estimator": (
        "configs/rl.py:toy", ["--config.rl.kl_estimator=k9"],
        "error: rl.kl_estimator='k9': use k1, k2 or k3"),
    "rl_labeler_without_weights": (
        "configs/rl.py:toy", ["--config.rl.reward=labeler"],
        "error: rl.labeler.model.checkpoint is empty, so the labeler would judge with random "
        "weights; point it at a checkpoint directory (or set rl.labeler.model.random_init=true "
        "for a from-scratch labeler, e.g. in tests)"),
    "label_task": (
        "configs/label.py:toy", ["--config.labeler.task=poetry"],
        "error: labeler: no pairwise template for task='poetry', preamble='base'; built in: "),
    "eval_judge": (
        "configs/eval.py:demo", ["--config.eval.judge=crowd"],
        "error: eval.judge='crowd': use labeler, oracle (the demo world's) or package.module:factory"),
}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  """All cases run at once (each is a fresh interpreter importing JAX)."""
  procs = {}
  for name, (config, overrides, _) in CASES.items():
    workdir = tmp_path_factory.mktemp(name)
    procs[name] = (workdir, subprocess.Popen(
        [sys.executable, "-m", "rlaif_jax.main", f"--config={config}", f"--workdir={workdir}",
         *overrides], env=ENV, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True))
  out = {}
  for name, (workdir, p) in procs.items():
    stdout, stderr = p.communicate(timeout=300)
    out[name] = (workdir, p.returncode, stdout, stderr)
  return out


@pytest.mark.parametrize("name", list(CASES))
def test_bad_value_is_one_line_before_the_mesh(name, results):
  workdir, rc, stdout, stderr = results[name]
  lines = [l for l in stderr.splitlines() if l.strip()]
  assert rc == 1 and len(lines) == 1, stderr[-3000:]
  assert lines[0].startswith(CASES[name][2]), lines[0]
  assert "Traceback" not in stderr and not stdout
  assert list(workdir.iterdir()) == []      # no config copy: stopped before the mesh


SECTIONS = {"rl": "rlaif_jax.learners.rl:rl_config", "dpo": "rlaif_jax.learners.dpo:dpo_config",
            "rm": "rlaif_jax.learners.reward:rm_config", "eval": "rlaif_jax.eval.stage:eval_config",
            "labeler": "rlaif_jax.labeler.config:labeler_config"}


def _keys(cfg, prefix=""):
  out = set()
  for k, v in cfg.items():
    out |= _keys(v, f"{prefix}{k}.") if hasattr(v, "items") and k not in ("policies", "curves") \
        else {prefix + k}
  return out


@pytest.mark.parametrize("spec", ["configs/rl.py:toy", "configs/rl.py:tldr_direct",
                                  "configs/dpo.py:toy", "configs/rm.py:toy", "configs/eval.py:tldr",
                                  "configs/label.py:toy", "configs/pipeline.py:demo",
                                  "configs/pipeline.py:paper"])
def test_config_files_choose_values_of_the_stage_owned_sections(spec):
  """A config file's stage sections are the stage module's schema (same keys,
  nothing added or dropped): the files choose values, the stages own the keys."""
  import importlib
  from rlaif_jax.config import load_config_file
  config = load_config_file(str(ROOT / spec))
  checked = 0
  for name, ref in SECTIONS.items():
    if name not in config:
      continue
    module, fn = ref.split(":")
    want = getattr(importlib.import_module(module), fn)()
    assert _keys(config[name]) == _keys(want), (spec, name)
    checked += 1
  assert checked >= 1
