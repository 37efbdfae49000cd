"""Workdir paths: local or any URL etils.epath understands (gs:// on TPU pods).

Orbax, TFDS and our own artifacts all go through `etils.epath`, so a workdir,
data dir or checkpoint may live on GCS (install the `tpu` extra, which adds
gcsfs / google-cloud-storage). Local paths are made absolute because Orbax
requires it.
"""
from __future__ import annotations

import os

from etils import epath


def path(p) -> epath.Path:
  s = os.fspath(p)
  return epath.Path(s if "://" in s else os.path.abspath(s))
