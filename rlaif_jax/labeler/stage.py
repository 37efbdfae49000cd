"""Label stage: AI preference labels for a set of pairs, resumable, plus an alignment report.

    python -m rlaif_jax.main --config=configs/label.py:tldr_detailed_cot --workdir=$W/labels

Writes in the workdir

    labels/meta.json             what the shards were made from (a rerun must match)
    labels/shard-00000.jsonl ... pairs [k·S, (k+1)·S) of the source, S = labeler.shard_size
    labels.jsonl                 all shards in order – a pairs JSONL the RM stage reads
    alignment.json               the report of rlaif_jax.labeler.report

One row a pair: id, prompt, response_a, response_b, label (= soft_label,
P(a preferred)), p_ab, p_ba, q_ab, q_ba, same_position_won, human_label (when
the data has one), confidence (TL;DR comparisons), rationales (CoT).

Resumption. A shard is written whole under a temporary name and renamed into
place, so after a kill every shard file is whole or absent (temporaries a kill
left behind are removed at the next start). A shard counts as done only when
it holds exactly the pairs of its range, in order: raising `max_pairs` later
extends the job, and the last shard of the shorter run, which held fewer
pairs, is labeled again. Every pair is labeled once, none is lost or
duplicated, and the final files equal an uninterrupted run's.

meta.json holds a fingerprint of everything the labels depend on – the labeler
and data configs, the seed, and the *content* of the examples, the exemplar
file, the tokenizer and the checkpoint – so a changed data file or checkpoint
stops a rerun with one line instead of mixing old and new labels. It leaves
out `max_pairs` (extending is allowed) and how the work is laid out: the mesh,
batch size, bucket and prefix caching change the arithmetic, not the labels,
so a job may resume on other hardware; the labels then agree with an
uninterrupted run to float tolerance (a greedy rationale can differ where two
tokens tie that closely, and sampled ones are drawn per batch).

SIGTERM (preemption): the shard in flight is finished and written, the stage
logs where it stopped and exits 75 (rlaif_jax.preemption); a rerun labels the
remaining shards.
"""
from __future__ import annotations

import hashlib
import json
import logging

import jax
import numpy as np
from jax.experimental import multihost_utils

from rlaif_jax import paths as io
from rlaif_jax.config import ConfigError
from rlaif_jax.data.batches import check_data, prepare_data
from rlaif_jax.data.sources import open_source
from rlaif_jax.labeler.config import build_labeler, validate_labeler
from rlaif_jax.labeler.prompts import resolve_exemplars_path
from rlaif_jax.labeler.report import alignment_report
from rlaif_jax.preemption import Watcher

# labeler keys that say how the work is laid out, not what the labels are
_LAYOUT = ("max_pairs", "mesh", "batch_size", "bucket", "prefix_cache")
_WHOLE = 32 << 20          # files up to this size are hashed whole
_WINDOW, _WINDOWS = 1 << 16, 16


def _file_digest(p) -> str:
  """sha256 of a file's bytes; of a large one (checkpoint shards) its size and
  16 windows of 64 KiB spread over it: any retraining changes them all."""
  f = io.path(p)
  size = f.stat().length
  h = hashlib.sha256(str(size).encode())
  with f.open("rb") as fh:
    if size <= _WHOLE:
      h.update(fh.read())
    else:
      for k in range(_WINDOWS):
        fh.seek((size - _WINDOW) * k // (_WINDOWS - 1))
        h.update(fh.read(_WINDOW))
  return h.hexdigest()


def content_digest(p: str) -> str:
  """Digest of a file or a directory tree (relative names and file digests)."""
  if not p:
    return ""
  root = io.path(p)
  if not root.exists():
    raise ConfigError(f"{p}: no such file or directory")
  if not root.is_dir():
    return _file_digest(root)
  files = sorted((("/" + rel).rpartition("/")[0], ("/" + rel).rpartition("/")[2], f)
                 for rel, f in io.walk_files(root))
  h = hashlib.sha256()
  for rel, name, f in files:
    h.update(f"{rel}/{name}\0{_file_digest(f)}\0".encode())
  return h.hexdigest()


def _examples_digest(source) -> tuple[str, list[str]]:
  """Digest of every example's content, and the ids in source order."""
  h, ids = hashlib.sha256(), []
  for i in range(len(source)):
    e = source[i]
    ids.append(str(e["id"]))
    h.update(json.dumps([e["id"], e["prompt"].text, e["response_a"], e["response_b"],
                         e.get("human_label"), e.get("confidence")], default=str).encode())
  return h.hexdigest(), ids


def _fingerprint(config, data_digest: str) -> dict:
  lcfg = config.labeler
  labeler = {k: v for k, v in lcfg.to_dict().items() if k not in _LAYOUT}
  tokenizer = lcfg.model.tokenizer
  keys = {"labeler": labeler, "data": config.data.to_dict(), "seed": config.seed,
          "content": {
              "examples": data_digest,
              "exemplars": content_digest(resolve_exemplars_path(lcfg.exemplars_path)),
              "tokenizer": "" if tokenizer == "byte" else content_digest(tokenizer),
              "checkpoint": content_digest(lcfg.model.checkpoint)}}
  blob = json.dumps(keys, sort_keys=True, default=str)
  return {"fingerprint": hashlib.sha256(blob.encode()).hexdigest(),
          "shard_size": lcfg.shard_size}


def _layout(lcfg) -> dict:
  return {k: (lcfg[k].to_dict() if hasattr(lcfg[k], "to_dict") else lcfg[k])
          for k in _LAYOUT if k != "max_pairs"}


def _check_meta(out_dir: str, meta: dict, layout: dict) -> None:
  """Stops a rerun whose labels would differ from the shards already there."""
  meta_path = io.join(out_dir, "meta.json")
  if not io.exists(meta_path):
    if jax.process_index() == 0:
      io.write_json_atomic(meta_path, dict(meta, layout=layout))
    return
  old = io.read_json(meta_path)
  if old.get("shard_size") != meta["shard_size"]:
    raise ConfigError(f"{out_dir} holds shards of {old.get('shard_size')} pairs; "
                      f"labeler.shard_size={meta['shard_size']} would cut them differently: "
                      "restore it or use a fresh --workdir")
  if old.get("fingerprint") != meta["fingerprint"]:
    raise ConfigError(f"{out_dir} holds labels of another labeler, data or checkpoint (the "
                      "configs or the content of the data, exemplars, tokenizer or checkpoint "
                      "changed); use a fresh --workdir or restore what they were made with")
  if old.get("layout") != layout:
    logging.warning("label: resuming with another layout %s (was %s): the labels agree with "
                    "an uninterrupted run to float tolerance", layout, old.get("layout"))


def _clean_temporaries(out_dir: str, workdir: str) -> None:
  """Removes half-written files a killed run left (their names hold '.tmp')."""
  for d, pattern in ((out_dir, "*.tmp*"), (workdir, "*.json*.tmp*")):
    for f in io.path(d).glob(pattern):
      logging.info("label: removing %s, left by an interrupted run", f)
      f.unlink(missing_ok=True)


def _shard_done(path: str, want_ids: list[str]) -> bool:
  """True when the shard file holds exactly these pairs, in order."""
  if not io.exists(path):
    return False
  try:
    return [str(r["id"]) for r in io.read_jsonl(path)] == want_ids
  except (ValueError, KeyError):
    return False


def _row(example: dict, label: dict) -> dict:
  row = {"id": example["id"], "prompt": example["prompt"].text,
         "response_a": example["response_a"], "response_b": example["response_b"],
         "label": label["soft_label"], **label}
  if example.get("human_label", -1.0) >= 0:
    row["human_label"] = float(example["human_label"])
  if "confidence" in example:
    row["confidence"] = int(example["confidence"])
  return row


def validate(config, mesh) -> None:
  """The label stage's checks before any model or mesh exists."""
  del mesh  # the labeler has its own (sub-)mesh: config.labeler.mesh
  check_data(config, "pairs")
  validate_labeler(config.labeler)
  if config.labeler.shard_size < 1:
    raise ConfigError(f"labeler.shard_size={config.labeler.shard_size} must be >= 1")


def run(config, workdir: str, mesh) -> dict:
  del mesh  # the labeler has its own (sub-)mesh: config.labeler.mesh
  lcfg = config.labeler
  prepare_data(config, workdir, "pairs")
  source = open_source(config.data, "pairs")
  n = len(source) if not lcfg.max_pairs else min(lcfg.max_pairs, len(source))
  out_dir = io.join(workdir, "labels")
  io.makedirs(out_dir)
  data_digest, ids = _examples_digest(source)
  if jax.process_index() == 0:
    _clean_temporaries(out_dir, workdir)
  _check_meta(out_dir, _fingerprint(config, data_digest), _layout(lcfg))

  size = lcfg.shard_size
  shards = [(k, range(k * size, min((k + 1) * size, n))) for k in range(-(-n // size))]
  shard_path = lambda k: io.join(out_dir, f"shard-{k:05d}.jsonl")
  done = np.array([_shard_done(shard_path(k), [ids[i] for i in rng]) for k, rng in shards], bool)
  if jax.process_count() > 1:   # every process must run the same batches: 0 decides
    done = np.asarray(multihost_utils.broadcast_one_to_all(done)).astype(bool)
  todo = [s for s, d in zip(shards, done) if not d]
  logging.info("label: %d pairs in %d shards, %d to do", n, len(shards), len(todo))
  labeler = None
  with Watcher("label") as watch:
    for t, (k, rng) in enumerate(todo, 1):
      if labeler is None:
        labeler, _ = build_labeler(lcfg, seed=config.seed)
      examples = [source[i] for i in rng]
      labels = labeler.label_pairs([e["prompt"] for e in examples],
                                   [e["response_a"] for e in examples],
                                   [e["response_b"] for e in examples])
      if jax.process_index() == 0:
        io.write_jsonl_atomic(shard_path(k), [_row(e, l) for e, l in zip(examples, labels)])
      logging.info("label: shard %d (%d pairs) done", k, len(examples))
      if watch.reached(t):      # SIGTERM: the same shard on every process
        if jax.process_count() > 1:
          multihost_utils.sync_global_devices("rlaif_jax: label shards written")
        watch.stop(k, out_dir, unit="shard")

  if jax.process_count() > 1:   # process 0 wrote the shards the others now read
    multihost_utils.sync_global_devices("rlaif_jax: label shards written")
  rows = []
  for k, _ in shards:
    rows.extend(io.read_jsonl(shard_path(k)))
  report = alignment_report(rows)
  if jax.process_index() == 0:
    io.write_jsonl_atomic(io.join(workdir, "labels.jsonl"), rows)
    io.write_json_atomic(io.join(workdir, "alignment.json"), report)
  return {k: v for k, v in report.items() if isinstance(v, (int, float))}
