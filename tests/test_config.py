"""Config files, overrides and validation errors through the real entry point."""
import os
import pathlib
import subprocess
import sys

import pytest

from rlaif_jax import config as cfglib

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", NPROC="16",
           JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1")


def main(*args, timeout=120):
  return subprocess.run([sys.executable, "-m", "rlaif_jax.main", *args], env=ENV, cwd=ROOT,
                        capture_output=True, text=True, timeout=timeout)


def one_line_error(out):
  assert out.returncode != 0
  lines = [l for l in out.stderr.strip().splitlines() if l.strip()]
  assert len(lines) == 1, out.stderr[-2000:]
  assert "Traceback" not in out.stderr
  return lines[0]


def test_mistyped_override_names_key_and_nearest(tmp_path):
  line = one_line_error(main("--config=configs/sft.py:toy", f"--workdir={tmp_path}",
                             "--config.train.lrr=0.1"))
  assert line.startswith("error: unknown config key 'train.lrr'; nearest valid keys: train.lr")


def test_unknown_section_override(tmp_path):
  line = one_line_error(main("--config=configs/sft.py:toy", f"--workdir={tmp_path}",
                             "--config.mdl.d_model=8"))
  assert line.startswith("error: unknown config key 'mdl.d_model'; nearest valid keys: ")
  assert "model.arch.d_model" in line


def test_impossible_mesh_is_one_line(tmp_path):
  line = one_line_error(main("--config=configs/sft.py:toy", f"--workdir={tmp_path}",
                             "--config.mesh.data=3"))
  assert line == ("error: mesh (data=3, fsdp=1, tensor=1) needs 3 devices but 8 are available; "
                  "set one axis to -1 or make data*fsdp*tensor = 8 (--config.mesh.data/fsdp/tensor)")


def test_bad_value_type_is_one_line(tmp_path):
  line = one_line_error(main("--config=configs/sft.py:toy", f"--workdir={tmp_path}",
                             "--config.train.lr=fast"))
  assert "train.lr" in line and "fast" in line


def test_validation_messages_say_what_to_change():
  c = cfglib.load_config_file(str(ROOT / "configs" / "sft.py") + ":toy")
  c.train.batch_size = 30
  with pytest.raises(cfglib.ConfigError, match=r"train.batch_size=30 must be a positive multiple "
                     r"of the data-parallel size data\*fsdp=8; try --config.train.batch_size=24"):
    cfglib.validate(c, 8)
  c = cfglib.load_config_file(str(ROOT / "configs" / "sft.py") + ":toy")
  c.data.max_prompt_len = 60
  with pytest.raises(cfglib.ConfigError, match="exceeds model.arch.max_seq_len=64"):
    cfglib.validate(c, 8)
  c = cfglib.load_config_file(str(ROOT / "configs" / "sft.py") + ":toy")
  c.mesh.update(data=-1, fsdp=3)
  with pytest.raises(cfglib.ConfigError, match="do not divide|does not divide"):
    cfglib.validate(c, 8)
  cfglib.validate(cfglib.load_config_file(str(ROOT / "configs" / "sft.py") + ":toy"), 8)


def test_override_and_variant_reach_the_run(tmp_path):
  out = main("--config=configs/sft.py:toy", f"--workdir={tmp_path}", "--config.train.steps=3",
             "--config.train.log_every=1", "--config.mesh.fsdp=2", timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  import json
  saved = json.loads((tmp_path / "config_sft.json").read_text())
  assert saved["train"]["steps"] == 3 and saved["mesh"]["fsdp"] == 2
  rows = [json.loads(l) for l in (tmp_path / "metrics" / "sft.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3]
  assert (tmp_path / "model" / "model_config.json").exists()
  assert list((tmp_path / "metrics" / "sft").glob("events.out.tfevents.*"))
