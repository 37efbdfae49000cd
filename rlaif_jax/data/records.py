"""Reading raw JSON-lines files with errors that name the file and line.

Every reader in this package goes through `read_json_lines` (one JSON object a
line; `.gz` is decompressed) and the `require_*` checks, so a bad record reads
the same whatever data set it came from:

    BadRecordError: /data/pairs.jsonl:17: field 'label' must be in [0, 1], got 1.5

With `skip=True` the same faults are counted in a `SkipReport` instead: nothing
is ever dropped silently.
"""
from __future__ import annotations

import dataclasses
import gzip
import json
import logging
import math
from typing import Any, Iterator

from rlaif_jax import paths


class BadRecordError(ValueError):
  """A raw record that cannot be used; the message starts with file:line."""

  def __init__(self, where: str, reason: str):
    super().__init__(f"{where}: {reason}")
    self.where, self.reason = where, reason


@dataclasses.dataclass
class SkipReport:
  """Records skipped instead of raising (skip_bad_records), with reasons."""
  skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (where, reason)

  @property
  def count(self) -> int:
    return len(self.skipped)

  def add(self, err: BadRecordError) -> None:
    self.skipped.append((err.where, err.reason))

  def log(self, name: str) -> None:
    if self.skipped:
      logging.warning("%s: skipped %d bad records, e.g. %s: %s", name, self.count,
                      *self.skipped[0])

  def as_dict(self) -> dict[str, Any]:
    return {"count": self.count, "skipped": [list(s) for s in self.skipped]}


def read_json_lines(path) -> Iterator[tuple[str, Any]]:
  """Yields ("path:line", parsed JSON) for each non-blank line of `path`.

  Lines are decoded one at a time so that a non-UTF-8 byte or malformed JSON is
  reported at its own line. A yielded value is a `BadRecordError` (not raised)
  when the line is unusable, so callers decide between raising and skipping.
  """
  path = paths.path(path)        # local, file:// or gs:// alike
  with path.open("rb") as raw:
    f = gzip.open(raw) if str(path).endswith(".gz") else raw
    for lineno, line in enumerate(f, start=1):
      where = f"{path}:{lineno}"
      if not line.strip():
        continue
      try:
        text = line.decode("utf-8")
      except UnicodeDecodeError as e:
        yield where, BadRecordError(where, f"not valid UTF-8 ({e.reason} at byte {e.start})")
        continue
      try:
        value = json.loads(text)
      except json.JSONDecodeError as e:
        yield where, BadRecordError(where, f"malformed JSON ({e.msg} at column {e.colno})")
        continue
      yield where, value


def require_object(where: str, value: Any) -> dict:
  if isinstance(value, BadRecordError):
    raise value
  if not isinstance(value, dict):
    raise BadRecordError(where, f"expected a JSON object, got {type(value).__name__}")
  return value


def require_text(where: str, record: dict, field: str, *, allow_empty: bool = False) -> str:
  """A string field; dotted names ("info.post") reach into nested objects."""
  value: Any = record
  for part in field.split("."):
    if not isinstance(value, dict) or part not in value:
      raise BadRecordError(where, f"missing field {field!r}")
    value = value[part]
  if not isinstance(value, str):
    raise BadRecordError(where, f"field {field!r} must be a string, got {type(value).__name__}")
  if not allow_empty and not value.strip():
    raise BadRecordError(where, f"field {field!r} is empty")
  return value


def require_label(where: str, record: dict, field: str, *, default: float | None = None,
                  hard: bool = False) -> float:
  """A probability in [0, 1] (or exactly 0/1 with `hard`); `default` if absent/null."""
  value = record.get(field)
  if value is None:
    if default is None:
      raise BadRecordError(where, f"missing field {field!r}")
    return default
  # bool is an int subclass: true/false would silently become 1/0 labels.
  if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
    raise BadRecordError(where, f"field {field!r} must be a number, got {value!r}")
  if hard and value not in (0, 1):
    raise BadRecordError(where, f"field {field!r} must be 0 or 1, got {value!r}")
  if not 0.0 <= value <= 1.0:
    raise BadRecordError(where, f"field {field!r} must be in [0, 1], got {value!r}")
  return float(value)
