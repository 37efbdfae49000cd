"""The label stage: killed with SIGKILL mid-run and rerun, it labels each pair exactly once
and writes the same files as an uninterrupted run; the alignment report's numbers."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from rlaif_jax.labeler.report import alignment_report, expected_calibration_error

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_PAIRS, SHARD = 24, 2


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
  rng = np.random.default_rng(0)
  path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
  words = ["cat", "dog", "sun", "rain", "tree", "moon", "fish", "bird"]
  with open(path, "w") as f:
    for i in range(N_PAIRS):
      text = " ".join(rng.choice(words, rng.integers(3, 12)))
      f.write(json.dumps({"id": f"p{i}", "prompt": text,
                          "response_a": " ".join(rng.choice(words, rng.integers(1, 4))),
                          "response_b": " ".join(rng.choice(words, rng.integers(1, 6))),
                          "human_label": float(i % 2)}) + "\n")
  return str(path)


def overrides(pairs_file):
  return [f"--config.data.source=jsonl", f"--config.data.jsonl_path={pairs_file}",
          f"--config.labeler.shard_size={SHARD}", f"--config.labeler.max_pairs={N_PAIRS}",
          "--config.labeler.batch_size=8", "--config.labeler.bucket=32"]


def run_inprocess(workdir, pairs_file):
  from rlaif_jax.config import load_config_file
  from rlaif_jax.main import run_stage
  config = load_config_file(os.path.join(ROOT, "configs", "label.py") + ":toy")
  config.data.source, config.data.jsonl_path = "jsonl", pairs_file
  config.labeler.update(shard_size=SHARD, max_pairs=N_PAIRS, batch_size=8, bucket=32)
  return run_stage(config, str(workdir))


def test_kill_and_resume_labels_each_pair_once(tmp_path, pairs_file):
  killed = tmp_path / "killed"
  cmd = [sys.executable, "-m", "rlaif_jax.main", f"--config={ROOT}/configs/label.py:toy",
         f"--workdir={killed}"] + overrides(pairs_file)
  proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  shards = killed / "labels"
  deadline = time.time() + 240
  delay = np.random.default_rng().uniform(0, 0.02)    # a random point after the first shard
  while time.time() < deadline and proc.poll() is None:
    if shards.exists() and any(p.suffix == ".jsonl" for p in shards.iterdir()):
      time.sleep(delay)
      break
    time.sleep(0.01)
  assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  done = sorted(p.name for p in shards.iterdir() if p.name.startswith("shard-") and
                p.suffix == ".jsonl")
  assert 1 <= len(done) < N_PAIRS // SHARD, done          # really interrupted mid-run
  assert not (killed / "labels.jsonl").exists()

  resumed = run_inprocess(killed, pairs_file)
  fresh = run_inprocess(tmp_path / "fresh", pairs_file)
  assert resumed == fresh
  a = (killed / "labels.jsonl").read_text()
  b = (tmp_path / "fresh" / "labels.jsonl").read_text()
  rows = [json.loads(line) for line in a.splitlines()]
  assert sorted(r["id"] for r in rows) == sorted(f"p{i}" for i in range(N_PAIRS))
  assert a == b                                            # same labels, same order
  assert (killed / "alignment.json").read_text() == (tmp_path / "fresh" / "alignment.json").read_text()
  r = rows[0]
  assert 0 <= r["label"] <= 1 and r["label"] == r["soft_label"]
  np.testing.assert_allclose(r["soft_label"], (r["p_ab"][0] + r["p_ba"][0]) / 2)


def test_alignment_report_on_hand_rows():
  rows = [  # (p_ab[0], p_ba[0], human)
      dict(p_ab=[0.9, 0.1], p_ba=[0.7, 0.3], human_label=1.0, confidence=9),   # right, consistent
      dict(p_ab=[0.8, 0.2], p_ba=[0.4, 0.6], human_label=0.0, confidence=9),   # wrong avg, slot 1 twice
      dict(p_ab=[0.3, 0.7], p_ba=[0.3, 0.7], human_label=0.0, confidence=2),   # right
      dict(p_ab=[0.6, 0.4], p_ba=[0.4, 0.6], human_label=1.0, confidence=2),   # tie 0.5: half
      dict(p_ab=[0.6, 0.4], p_ba=[0.6, 0.4]),                                  # unlabeled
  ]
  for r in rows:
    r["soft_label"] = (r["p_ab"][0] + r["p_ba"][0]) / 2
    r["same_position_won"] = (r["p_ab"][0] > 0.5) != (r["p_ba"][0] > 0.5)
  rep = alignment_report(rows)
  assert rep["pairs"] == 5 and rep["human_labeled_pairs"] == 4
  assert rep["accuracy"] == pytest.approx((1 + 0 + 1 + 0.5) / 4)
  assert rep["accuracy_ab"] == pytest.approx((1 + 0 + 1 + 1) / 4)
  assert rep["accuracy_ba"] == pytest.approx((1 + 1 + 1 + 0) / 4)
  assert rep["same_position_rate"] == pytest.approx(2 / 5)
  # slot 1 won: ab: rows 0,1,3,4 ; ba (slot 1 holds b): rows 1,2,3
  assert rep["first_slot_rate"] == pytest.approx(7 / 10)
  assert rep["accuracy_by_confidence"]["9"] == {"pairs": 2, "accuracy": 0.5}
  # ECE by hand: confidences 0.8 (right), 0.6 (wrong), 0.7 (right), 0.5 (wrong) in 10 bins
  soft, human = np.array([0.8, 0.6, 0.3, 0.5]), np.array([1, 0, 0, 1])
  want = (abs(1 - 0.8) + abs(0 - 0.6) + abs(1 - 0.7) + abs(0 - 0.5)) / 4
  assert expected_calibration_error(soft, human) == pytest.approx(want)
