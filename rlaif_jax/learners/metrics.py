"""Metrics a person can plot: TensorBoard event files (tensorboardX) + JSONL.

Only process 0 writes; every row of `metrics.jsonl` is `{"step": s, "name": v, ...}`.
A resumed run appends to it. Object stores (gs://) have no append: there the
file's text is kept and the whole object rewritten at each write.
"""
from __future__ import annotations

import json
import os
import time

import jax
import numpy as np

from rlaif_jax import paths


class MetricsWriter:
  def __init__(self, workdir: str, name: str = "train"):
    self.enabled = jax.process_index() == 0
    self.dir = paths.path(workdir) / "metrics"
    self._tb = None
    self._jsonl = None
    self._path = self.dir / f"{name}.jsonl"
    self._text = None              # object stores: the file's whole text
    if self.enabled:
      self.dir.mkdir(parents=True, exist_ok=True)
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.fspath(self.dir / name))
      if paths.is_url(self._path):
        self._text = self._path.read_text() if self._path.exists() else ""
      else:
        self._jsonl = self._path.open("a")

  def write(self, step: int, scalars: dict, texts: dict | None = None) -> None:
    if not self.enabled:
      return
    row = {"step": int(step), "time": time.time()}
    for k, v in scalars.items():
      v = float(np.asarray(v))
      row[k] = v
      self._tb.add_scalar(k, v, int(step))
    for k, v in (texts or {}).items():
      row[k] = v
      self._tb.add_text(k, v if isinstance(v, str) else json.dumps(v, indent=1), int(step))
    if self._jsonl is None:
      self._text += json.dumps(row) + "\n"
      paths.write_text_atomic(self._path, self._text)
    else:
      self._jsonl.write(json.dumps(row) + "\n")
      self._jsonl.flush()

  def close(self) -> None:
    if self.enabled:
      self._tb.close()
      if self._jsonl is not None:
        self._jsonl.close()


read_jsonl = paths.read_jsonl     # the one reader; kept here for callers of metrics files
