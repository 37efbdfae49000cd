"""The standalone eval stage's config: a comparison must name policies it has."""
import json
import pathlib

import pytest

from rlaif_jax.config import ConfigError, load_config_file
from rlaif_jax.eval import stage

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_comparison_without_its_policy_is_a_clear_error(tmp_path, mesh):
  prompts = tmp_path / "prompts.jsonl"
  prompts.write_text(json.dumps({"prompt": "a post", "response": "a summary"}) + "\n")
  c = load_config_file(f"{ROOT / 'configs' / 'eval.py'}:demo")
  c.eval.prompts_path = str(prompts)
  c.eval.policies.sft = str(tmp_path / "sft_model")
  c.eval.comparisons = ("rlaif_vs_sft",)
  with pytest.raises(ConfigError, match=r"'rlaif_vs_sft' needs policies \['rlaif'\].*"
                     r"--config.eval.policies.<name>"):
    stage.run(c, str(tmp_path / "eval"), mesh)
