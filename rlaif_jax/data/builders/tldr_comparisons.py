"""`tldr_comparisons`: OpenAI's human comparisons of two TL;DR summaries.

Raw files: batch*.json from summarize-from-feedback (JSON lines despite the
suffix; TL;DR batches only – CNN/DM records have no post and are rejected as
bad records). Each record: info{id, post, title, subreddit}, summaries[2]{text,
policy, note}, choice (0/1, the preferred summary), worker, batch, split
("train", "valid1", "valid2"), optional extra.confidence (1-9).

Splits: train (split == "train") and validation ("valid1" + "valid2"), in file
order; a split with no records is left out. `confidence` is -1 where the record has none, so alignment sets can be
filtered to confidence 1, 2, 8, 9 as in the RLAIF paper.
"""
from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from rlaif_jax.data.builders.common import RawRecordsMixin, manual_files
from rlaif_jax.data.records import (BadRecordError, read_json_lines, require_object,
                                    require_text)

URL = "https://openaipublic.blob.core.windows.net/summarize-from-feedback/dataset/comparisons/"
BATCHES = tuple(f"batch{i}.json" for i in range(3, 23))
ROUTE = {"train": "train", "valid1": "validation", "valid2": "validation"}
NO_CONFIDENCE = -1


def read_json_lines_all(files):
  for path in files:
    yield from read_json_lines(path)


class TldrComparisons(RawRecordsMixin, tfds.core.GeneratorBasedBuilder):
  """Pairs of TL;DR summaries with the human's choice and confidence."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    text = tfds.features.Text
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "id": text(), "subreddit": text(), "title": text(), "post": text(),
            "summary_0": text(), "summary_1": text(), "policy_0": text(), "policy_1": text(),
            "choice": np.int32, "confidence": np.int32,
            "worker": text(), "batch": text(), "split": text()}),
        disable_shuffling=True, metadata=self._metadata(),
        homepage="https://github.com/openai/summarize-from-feedback")

  def _split_generators(self, dl_manager):
    files = manual_files(dl_manager, ["*.json"])  # not *.jsonl: tldr's files may share the dir
    if files is None:
      files = list(dl_manager.download([URL + b for b in BATCHES]))
    elif not files:
      raise FileNotFoundError("tldr_comparisons: manual_dir holds no *.json comparison files")
    # TFDS refuses an empty split, and a mirror may hold train batches only.
    present = {ROUTE.get(v.get("split")) for _, v in read_json_lines_all(files)
               if isinstance(v, dict) and isinstance(v.get("split"), str)}
    return {s: self._generate_examples(s, files) for s in ("train", "validation") if s in present}

  def _generate_examples(self, split, files):
    def parse(where, value):
      r = require_object(where, value)
      raw_split = require_text(where, r, "split")
      if raw_split not in ROUTE:
        raise BadRecordError(where, f"unknown split {raw_split!r}; expected {sorted(ROUTE)}")
      if ROUTE[raw_split] != split:
        return None
      summaries = r.get("summaries")
      if not isinstance(summaries, list) or len(summaries) != 2:
        raise BadRecordError(where, "field 'summaries' must be a list of two objects")
      choice = r.get("choice")
      if isinstance(choice, bool) or choice not in (0, 1):
        raise BadRecordError(where, f"field 'choice' must be 0 or 1, got {choice!r}")
      confidence = (r.get("extra") or {}).get("confidence")
      if confidence is None:
        confidence = NO_CONFIDENCE
      elif isinstance(confidence, bool) or not isinstance(confidence, int) or not 1 <= confidence <= 9:
        raise BadRecordError(where, f"field 'extra.confidence' must be 1..9, got {confidence!r}")
      example = {f: require_text(where, r, f"info.{f}") for f in ("id", "subreddit", "title", "post")}
      for k, s in enumerate(summaries):
        s = require_object(where, s)
        example[f"summary_{k}"] = require_text(where, s, "text")
        example[f"policy_{k}"] = str(s.get("policy") or "")
      example.update(choice=choice, confidence=confidence, split=raw_split,
                     worker=str(r.get("worker") or ""), batch=str(r.get("batch") or ""))
      return example
    for i, (_, example) in enumerate(self.iter_records(split, files, parse)):
      yield i, example
