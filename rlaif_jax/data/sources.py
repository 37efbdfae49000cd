"""One interface over every data set: random access to canonical examples.

A canonical example is a dict with
    id: str, prompt: formats.Prompt,
    response: str                              (SFT data)
    response_a, response_b: str,               (pair data)
    label, human_label: float                  P(response_a preferred), -1.0 = unknown
Responses are the exact continuation of `prompt.text` (e.g. " summary").
`open_source(data_cfg, kind)` returns an object with __len__, __getitem__ and a
`report` dict (skipped / mismatched raw records) – a grain-compatible source.
"""
from __future__ import annotations

import os
import tempfile

import numpy as np
import tensorflow_datasets as tfds

from rlaif_jax import paths
from rlaif_jax.data import builders as _builders  # noqa: F401  (registers the builders)
from rlaif_jax.data import formats
from rlaif_jax.data.jsonl import JsonlSource

TFDS_SOURCES = ("tldr", "tldr_comparisons", "anthropic_hh")
# What each source can serve; "prompts" only needs a prompt, so all serve it.
SERVES = {"tldr": ("sft", "prompts"), "tldr_comparisons": ("pairs", "prompts"),
          "anthropic_hh": ("sft", "pairs", "prompts")}


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _tldr(r) -> dict:
  t = {k: _text(v) for k, v in r.items()}
  return {"id": t["id"], "prompt": formats.tldr_prompt(t["subreddit"], t["title"], t["post"]),
          "response": formats.tldr_response(t["summary"])}


def _comparison(r) -> dict:
  t = {k: _text(v) for k, v in r.items() if isinstance(v, bytes)}
  label = 1.0 - float(r["choice"])  # choice names the preferred summary; a is summary_0
  return {"id": t["id"], "prompt": formats.tldr_prompt(t["subreddit"], t["title"], t["post"]),
          "response_a": formats.tldr_response(t["summary_0"]),
          "response_b": formats.tldr_response(t["summary_1"]),
          "label": label, "human_label": label, "confidence": int(r["confidence"])}


def _hh(r) -> dict:
  t = {k: _text(v) for k, v in r.items()}
  return {"id": t["id"], "prompt": formats.hh_prompt(t["prompt"]),
          "response": t["chosen"], "response_a": t["chosen"], "response_b": t["rejected"],
          "label": 1.0, "human_label": 1.0}


class TfdsSource:
  """A prepared TFDS split read through `as_data_source()`, mapped to canonical examples."""

  def __init__(self, data_source, convert, indices=None, report=None):
    self._source, self._convert = data_source, convert
    self._indices = np.arange(len(data_source)) if indices is None else np.asarray(indices)
    self.report = report or {}

  def __len__(self) -> int:
    return len(self._indices)

  def __getitem__(self, index: int) -> dict:
    return self._convert(self._source[int(self._indices[index])])


def prepare_builder(data_cfg):
  """The TFDS builder for `data_cfg.source`, prepared (from manual_dir if given).

  array_record reads and writes local files only (its own C++ file I/O), so a
  `data_dir` on gs:// is mirrored in a local cache directory: a data set
  prepared in the bucket is downloaded from it, one prepared here is uploaded
  to it (dataset_info.json last: the bucket's copy is whole once that exists).
  """
  name = data_cfg.source
  kwargs = {"skip_bad_records": data_cfg.skip_bad_records}
  if name == "anthropic_hh":
    name = f"anthropic_hh/{data_cfg.hh_subset}"
    kwargs["mismatch_policy"] = data_cfg.mismatch_policy
  remote = data_cfg.data_dir if paths.is_url(data_cfg.data_dir) else ""
  data_dir, in_bucket = data_cfg.data_dir or None, ""
  if remote:
    with tempfile.TemporaryDirectory() as probe:
      full = tfds.builder(name, data_dir=probe, file_format="array_record",
                          **kwargs).info.full_name
    in_bucket = paths.join(remote, *full.split("/"))
    info = paths.join(in_bucket, "dataset_info.json")
    if paths.exists(info):     # mirrored once per content of the bucket's copy
      data_dir = paths.cache_dir(remote, paths.read_text(info))
      local = os.path.join(data_dir, *full.split("/"))
      if not os.path.exists(os.path.join(local, "dataset_info.json")):
        paths.download_dir(in_bucket, local)
    else:                      # prepared afresh, then uploaded
      data_dir = tempfile.mkdtemp(prefix="rlaif_jax_tfds_")
  builder = tfds.builder(name, data_dir=data_dir, file_format="array_record", **kwargs)
  download_config = tfds.download.DownloadConfig(manual_dir=data_cfg.manual_dir or None)
  builder.download_and_prepare(download_config=download_config)
  if in_bucket and not paths.exists(paths.join(in_bucket, "dataset_info.json")):
    paths.upload_dir(builder.data_dir, in_bucket, last=("dataset_info.json",))
  return builder


def open_source(data_cfg, kind: str):
  """Canonical examples of `data_cfg.split` for an iterator of `kind`."""
  if data_cfg.source == "jsonl":
    if not data_cfg.jsonl_path:
      raise ValueError("data.source='jsonl' needs data.jsonl_path")
    schema = data_cfg.jsonl_kind or kind
    if kind != "prompts" and schema != kind:
      raise ValueError(f"a {schema} jsonl file cannot feed a {kind} iterator")
    return JsonlSource(data_cfg.jsonl_path, schema, skip_bad_records=data_cfg.skip_bad_records)
  if data_cfg.source not in TFDS_SOURCES:
    raise ValueError(f"data.source {data_cfg.source!r}: expected jsonl or one of {TFDS_SOURCES}")
  if kind not in SERVES[data_cfg.source]:
    raise ValueError(f"{data_cfg.source} has no {kind} data; it serves {SERVES[data_cfg.source]}")
  builder = prepare_builder(data_cfg)
  meta = builder.info.metadata
  report = {"skipped": meta.get("skipped", {}).get(data_cfg.split, {"count": 0})}
  if "mismatched" in meta:
    report["mismatched"] = meta["mismatched"].get(data_cfg.split, {"count": 0, "ids": []})
    # A dataset prepared earlier under the lenient policy must not pass for a strict run.
    if data_cfg.mismatch_policy == "error" and report["mismatched"]["count"]:
      raise ValueError(f"{builder.name}/{data_cfg.split}: {report['mismatched']['count']} "
                       f"pairs with mismatched prompts, e.g. {report['mismatched']['ids'][:3]} "
                       "(mismatch_policy='error')")
  data_source = builder.as_data_source(split=data_cfg.split)
  convert = {"tldr": _tldr, "tldr_comparisons": _comparison, "anthropic_hh": _hh}[data_cfg.source]
  indices = None
  if data_cfg.source == "tldr_comparisons" and data_cfg.confidence_filter:
    keep = set(int(c) for c in data_cfg.confidence_filter)
    indices = [i for i in range(len(data_source)) if int(data_source[i]["confidence"]) in keep]
    report["confidence_filter"] = {"kept": len(indices), "of": len(data_source)}
  return TfdsSource(data_source, convert, indices, report)
