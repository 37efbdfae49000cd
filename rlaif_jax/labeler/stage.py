"""Label stage: AI preference labels for a set of pairs, resumable, plus an alignment report.

    python -m rlaif_jax.main --config=configs/label.py:tldr_detailed_cot --workdir=$W/labels

Writes in the workdir

    labels/meta.json             what the shards were made with (a rerun must match)
    labels/shard-00000.jsonl ... pairs [k·S, (k+1)·S) of the source, S = labeler.shard_size
    labels.jsonl                 all shards in order – a pairs JSONL the RM stage reads
    alignment.json               the report of rlaif_jax.labeler.report

One row a pair: id, prompt, response_a, response_b, label (= soft_label,
P(a preferred)), p_ab, p_ba, same_position_won, human_label (when the data
has one), confidence (TL;DR comparisons), rationales (CoT).

Resumption: a shard is written to a temporary file and renamed into place
only when complete, so after a kill every shard is either whole or absent;
a rerun labels exactly the absent ones. Every pair is labeled once, none is
lost or duplicated, and the final files equal an uninterrupted run's.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os

import jax
import numpy as np
from jax.experimental import multihost_utils

from rlaif_jax.config import ConfigError


def _write_atomic(path: str, text: str) -> None:
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def _fingerprint(config) -> dict:
  keys = {"labeler": config.labeler.to_dict(), "data": config.data.to_dict(), "seed": config.seed}
  keys["labeler"].pop("max_pairs", None)      # labeling more pairs later extends the run
  blob = json.dumps(keys, sort_keys=True, default=str)
  return {"fingerprint": hashlib.sha256(blob.encode()).hexdigest(),
          "shard_size": config.labeler.shard_size}


def _row(example: dict, label: dict) -> dict:
  row = {"id": example["id"], "prompt": example["prompt"].text,
         "response_a": example["response_a"], "response_b": example["response_b"],
         "label": label["soft_label"], **label}
  if example.get("human_label", -1.0) >= 0:
    row["human_label"] = float(example["human_label"])
  if "confidence" in example:
    row["confidence"] = int(example["confidence"])
  return row


def run(config, workdir: str, mesh) -> dict:
  from rlaif_jax.data.sources import open_source
  from rlaif_jax.labeler.config import build_labeler
  from rlaif_jax.labeler.report import alignment_report
  from rlaif_jax.learners.common import prepare_data

  del mesh  # the labeler has its own (sub-)mesh: config.labeler.mesh
  lcfg = config.labeler
  prepare_data(config, workdir, "pairs")
  source = open_source(config.data, "pairs")
  n = len(source) if not lcfg.max_pairs else min(lcfg.max_pairs, len(source))
  out_dir = os.path.join(workdir, "labels")
  os.makedirs(out_dir, exist_ok=True)
  meta_path, meta = os.path.join(out_dir, "meta.json"), _fingerprint(config)
  if os.path.exists(meta_path):
    with open(meta_path) as f:
      if json.load(f) != meta:
        raise ConfigError(f"{out_dir} holds labels made with another labeler/data config; "
                          "use a fresh --workdir or restore the earlier config")
  elif jax.process_index() == 0:
    _write_atomic(meta_path, json.dumps(meta, indent=1))

  size = lcfg.shard_size
  shards = [(k, range(k * size, min((k + 1) * size, n))) for k in range(-(-n // size))]
  done = np.array([os.path.exists(os.path.join(out_dir, f"shard-{k:05d}.jsonl"))
                   for k, _ in shards], bool)
  if jax.process_count() > 1:   # every process must run the same batches: 0 decides
    done = np.asarray(multihost_utils.broadcast_one_to_all(done)).astype(bool)
  todo = [s for s, d in zip(shards, done) if not d]
  logging.info("label: %d pairs in %d shards, %d to do", n, len(shards), len(todo))
  labeler = None
  for k, rng in todo:
    if labeler is None:
      labeler, _ = build_labeler(lcfg, seed=config.seed)
    examples = [source[i] for i in rng]
    labels = labeler.label_pairs([e["prompt"] for e in examples],
                                 [e["response_a"] for e in examples],
                                 [e["response_b"] for e in examples])
    if jax.process_index() == 0:
      _write_atomic(os.path.join(out_dir, f"shard-{k:05d}.jsonl"),
                    "".join(json.dumps(_row(e, l)) + "\n" for e, l in zip(examples, labels)))
    logging.info("label: shard %d (%d pairs) done", k, len(examples))

  if jax.process_count() > 1:   # process 0 wrote the shards the others now read
    multihost_utils.sync_global_devices("rlaif_jax: label shards written")
  rows = []
  for k, _ in shards:
    with open(os.path.join(out_dir, f"shard-{k:05d}.jsonl"), encoding="utf-8") as f:
      rows.extend(json.loads(line) for line in f)
  report = alignment_report(rows)
  if jax.process_index() == 0:
    _write_atomic(os.path.join(workdir, "labels.jsonl"),
                  "".join(json.dumps(r) + "\n" for r in rows))
    _write_atomic(os.path.join(workdir, "alignment.json"), json.dumps(report, indent=1))
  return {k: v for k, v in report.items() if isinstance(v, (int, float))}
