"""Users' own data as JSON lines (one object a line; .gz is fine; gs:// works).

Schemas (all text fields are non-empty strings; `id` is optional, default
"file:line"):

    sft      {"prompt": ..., "response": ...}
    pairs    {"prompt": ..., "response_a": ..., "response_b": ...,
              "label": p, "human_label": p}        # both optional
    prompts  {"prompt": ...}

`label` / `human_label` is the probability that response_a is preferred: 1 or 0
for a hard preference, anything in [0, 1] for a soft one; absent means
unlabeled (-1.0 in batches). Extra fields are ignored. A prompt has no known
structure, so a too-long one loses its *start* (see formats.plain_prompt); put
the response cue at its end.

The whole file is validated when opened: a bad line raises BadRecordError
("path:line: reason"), or with skip_bad_records is counted in `.report`.
"""
from __future__ import annotations

from rlaif_jax.data.formats import plain_prompt
from rlaif_jax.data.records import (BadRecordError, SkipReport, read_json_lines,
                                    require_label, require_object, require_text)

KINDS = ("sft", "pairs", "prompts")
UNLABELED = -1.0


class JsonlSource:
  """Random-access canonical examples (see rlaif_jax.data.sources) from a JSONL file."""

  def __init__(self, path, kind: str, *, skip_bad_records: bool = False):
    if kind not in KINDS:
      raise ValueError(f"jsonl kind {kind!r}: expected one of {KINDS}")
    self.path, self.kind = str(path), kind
    self.skips = SkipReport()
    self._examples = []
    seen_ids = set()
    for where, value in read_json_lines(path):
      try:
        example = self._parse(where, value)
        if example["id"] in seen_ids:
          raise BadRecordError(where, f"duplicate id {example['id']!r}")
      except BadRecordError as err:
        if not skip_bad_records:
          raise
        self.skips.add(err)
        continue
      seen_ids.add(example["id"])
      self._examples.append(example)
    self.skips.log(self.path)
    if not self._examples:
      raise ValueError(f"{self.path}: no usable records")

  def _parse(self, where: str, value) -> dict:
    r = require_object(where, value)
    rid = r.get("id", where)
    if isinstance(rid, bool) or not isinstance(rid, (str, int)):
      raise BadRecordError(where, f"field 'id' must be a string or integer, got {rid!r}")
    example = {"id": str(rid), "prompt": plain_prompt(require_text(where, r, "prompt"))}
    if self.kind == "sft":
      example["response"] = require_text(where, r, "response")
    elif self.kind == "pairs":
      example["response_a"] = require_text(where, r, "response_a")
      example["response_b"] = require_text(where, r, "response_b")
      example["label"] = require_label(where, r, "label", default=UNLABELED)
      example["human_label"] = require_label(where, r, "human_label", default=UNLABELED)
    return example

  @property
  def report(self) -> dict:
    return {"skipped": self.skips.as_dict()}

  def __len__(self) -> int:
    return len(self._examples)

  def __getitem__(self, index: int) -> dict:
    return self._examples[index]
