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
    # as answered (no flip): order ab names a's slot 1, order ba has b in slot 1
    r["q_ab"], r["q_ba"] = r["p_ab"], r["p_ba"][::-1]
  rep = alignment_report(rows)
  assert rep["pairs"] == 5 and rep["human_labeled_pairs"] == 4
  assert rep["accuracy"] == pytest.approx((1 + 0 + 1 + 0.5) / 4)
  assert rep["accuracy_ab"] == pytest.approx((1 + 0 + 1 + 1) / 4)
  assert rep["accuracy_ba"] == pytest.approx((1 + 1 + 1 + 0) / 4)
  assert rep["same_position_rate"] == pytest.approx(2 / 5)
  # slot 1 won: ab: rows 0,1,3,4 ; ba (slot 1 holds b): rows 1,2,3
  assert rep["first_slot_rate"] == pytest.approx(7 / 10)
  assert rep["accuracy_by_confidence"]["9"] == {"pairs": 2, "accuracy": 0.5}
  # ECE by hand: confidences 0.8 (right), 0.6 (wrong), 0.7 (right), 0.5 (a tie: half right,
  # as accuracy counts it) in 10 bins of [0.5, 1]
  soft, human = np.array([0.8, 0.6, 0.3, 0.5]), np.array([1, 0, 0, 1])
  want = (abs(1 - 0.8) + abs(0 - 0.6) + abs(1 - 0.7) + abs(0.5 - 0.5)) / 4
  assert expected_calibration_error(soft, human) == pytest.approx(want)
  assert rep["ece"] == pytest.approx(want)


def test_first_slot_rate_of_a_harmless_labeler_is_read_before_the_flip():
  """A harmless labeler that always answers "1" (slot 1 is MORE harmful) has
  after the flip P(slot 1 preferred) = 0 in both orders; its position bias is
  still towards slot 1: first_slot_rate 1, not 0."""
  rows = [dict(q_ab=[0.9, 0.1], q_ba=[0.8, 0.2], p_ab=[0.1, 0.9], p_ba=[0.8, 0.2],
               soft_label=0.45, same_position_won=True)] * 3
  rep = alignment_report(rows)
  assert rep["first_slot_rate"] == 1.0 and rep["same_position_rate"] == 1.0


# ------------------------------------------------------------ extending, editing, resuming

def label(workdir, pairs_file, **labeler):
  from rlaif_jax.config import load_config_file
  from rlaif_jax.main import run_stage
  config = load_config_file(os.path.join(ROOT, "configs", "label.py") + ":toy")
  config.data.source, config.data.jsonl_path = "jsonl", pairs_file
  config.labeler.update({"batch_size": 8, "bucket": 32, **labeler})
  return run_stage(config, str(workdir))


def labels(workdir):
  return [json.loads(line) for line in (workdir / "labels.jsonl").read_text().splitlines()]


def test_extending_max_pairs_after_a_partial_last_shard(tmp_path, pairs_file):
  """shard size 4, max_pairs 3, then all pairs: shard 0 held 3 pairs, not its 4,
  so it is labeled again; every pair once, the files equal a fresh run's."""
  run = tmp_path / "extended"
  label(run, pairs_file, shard_size=4, max_pairs=3)
  assert [r["id"] for r in labels(run)] == ["p0", "p1", "p2"]
  (run / "labels" / "shard-00005.jsonl.4242.tmp").write_text('{"id": "half')  # a killed write
  (run / "labels.jsonl.4242.tmp").write_text("")
  label(run, pairs_file, shard_size=4, max_pairs=0)
  label(tmp_path / "fresh", pairs_file, shard_size=4, max_pairs=0)
  assert [r["id"] for r in labels(run)] == [f"p{i}" for i in range(N_PAIRS)]
  assert (run / "labels.jsonl").read_text() == (tmp_path / "fresh" / "labels.jsonl").read_text()
  assert not [p for p in run.rglob("*") if ".tmp" in p.name]       # leftovers removed


def test_edited_data_file_stops_a_resume(tmp_path, pairs_file):
  from rlaif_jax.config import ConfigError
  data = tmp_path / "pairs.jsonl"
  data.write_text(open(pairs_file).read())
  label(tmp_path / "w", str(data), shard_size=4, max_pairs=4)
  lines = data.read_text().splitlines()
  row = json.loads(lines[1])
  row["response_b"] += " edited"                     # same ids, same size of job
  data.write_text("\n".join(lines[:1] + [json.dumps(row)] + lines[2:]) + "\n")
  with pytest.raises(ConfigError, match="content of the data"):
    label(tmp_path / "w", str(data), shard_size=4, max_pairs=8)
  with pytest.raises(ConfigError, match="shard_size"):
    label(tmp_path / "w", pairs_file, shard_size=2, max_pairs=8)


def test_resume_on_another_mesh_and_batch_size(tmp_path, pairs_file):
  """Layout is not part of the fingerprint: a job started on 8 devices with
  batches of 8 finishes on 2 devices with batches of 2; its labels agree with
  an uninterrupted run's to float tolerance."""
  label(tmp_path / "w", pairs_file, shard_size=4, max_pairs=4)
  label(tmp_path / "w", pairs_file, shard_size=4, max_pairs=8, batch_size=2,
        mesh=dict(devices=2, data=-1, fsdp=1, tensor=1))
  label(tmp_path / "fresh", pairs_file, shard_size=4, max_pairs=8)
  got, want = labels(tmp_path / "w"), labels(tmp_path / "fresh")
  assert [r["id"] for r in got] == [r["id"] for r in want]
  np.testing.assert_allclose([r["soft_label"] for r in got], [r["soft_label"] for r in want],
                             atol=1e-5)


def test_a_labeler_without_checkpoint_needs_random_init_asked_for():
  from rlaif_jax.config import ConfigError, load_config_file
  from rlaif_jax.labeler.config import build_labeler
  config = load_config_file(os.path.join(ROOT, "configs", "label.py") + ":toy")
  config.labeler.model.random_init = False
  with pytest.raises(ConfigError, match="random weights"):
    build_labeler(config.labeler)


def test_edited_exemplars_stop_a_resume(tmp_path, pairs_file):
  from rlaif_jax.config import ConfigError
  shots = tmp_path / "shots.jsonl"
  row = {"context": "a b c", "response_1": "a", "response_2": "b", "answer": "1"}
  shots.write_text(json.dumps(row) + "\n")
  label(tmp_path / "w", pairs_file, shard_size=4, max_pairs=4, exemplars_path=str(shots))
  shots.write_text(json.dumps(dict(row, answer="2")) + "\n")          # same path, new content
  with pytest.raises(ConfigError, match="content of the data, exemplars"):
    label(tmp_path / "w", pairs_file, shard_size=4, max_pairs=8, exemplars_path=str(shots))


def test_content_digest_of_checkpoint_directories(tmp_path):
  """Directories are digested by relative names and bytes: a copy elsewhere has
  the same digest, any edit of a small file or a retrained (rewritten) large
  one another."""
  from rlaif_jax.labeler.stage import content_digest
  rng = np.random.default_rng(0)
  a = tmp_path / "a"
  (a / "sub").mkdir(parents=True)
  (a / "config.json").write_text('{"d": 4}')
  (a / "sub" / "model.safetensors").write_bytes(rng.bytes(40 << 20))   # past the 32 MiB
  b = tmp_path / "b"
  (b / "sub").mkdir(parents=True)
  for rel in ("config.json", "sub/model.safetensors"):
    (b / rel).write_bytes((a / rel).read_bytes())
  assert content_digest(str(a)) == content_digest(str(b))
  (b / "config.json").write_text('{"d": 5}')
  assert content_digest(str(a)) != content_digest(str(b))
  (b / "config.json").write_bytes((a / "config.json").read_bytes())
  (b / "sub" / "model.safetensors").write_bytes(rng.bytes(40 << 20))
  assert content_digest(str(a)) != content_digest(str(b))
  (b / "sub" / "model.safetensors").rename(b / "sub" / "other.safetensors")
  (b / "sub" / "other.safetensors").write_bytes((a / "sub" / "model.safetensors").read_bytes())
  assert content_digest(str(a)) != content_digest(str(b))               # names count


def test_labeler_config_errors_are_one_line(tmp_path):
  from rlaif_jax.config import ConfigError, load_config_file
  from rlaif_jax.labeler.config import build_labeler
  config = load_config_file(os.path.join(ROOT, "configs", "label.py") + ":toy")
  lab = config.labeler
  lab.update(cot=True, self_consistency=4, cot_temperature=0.0)
  with pytest.raises(ConfigError, match="temperature > 0"):
    build_labeler(lab)
  lab.update(self_consistency=1, exemplars_path="bundled:poetry")
  with pytest.raises(ConfigError, match="no bundled exemplars"):
    build_labeler(lab)
  shots = tmp_path / "shots.jsonl"
  shots.write_text(json.dumps({"context": "c", "response_1": "a", "response_2": "b",
                               "answer": "1"}) + "\n")
  lab.update(exemplars_path=str(shots), cot_max_tokens=4)
  with pytest.raises(ConfigError, match="no rationale"):
    build_labeler(lab)
