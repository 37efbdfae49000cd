"""Toy SFT data: three string tasks a tiny model learns on a CPU in a minute.

    "reverse: abc\n=> " -> "cba"      "sort: 3142\n=> " -> "1234"
    "upper: cat\n=> "   -> "CAT"

Deterministic for a seed; written as the generic JSONL SFT format
({"prompt", "response"} per line) so it exercises the same pipeline as users' data.
"""
from __future__ import annotations

import json
import os
import random

_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def examples(n: int, seed: int) -> list[dict]:
  rng = random.Random(seed)
  out = []
  for _ in range(n):
    task = rng.choice(("reverse", "sort", "upper"))
    if task == "sort":
      x = "".join(rng.choice("0123456789") for _ in range(rng.randint(3, 6)))
      y = "".join(sorted(x))
    else:
      x = "".join(rng.choice(_LETTERS) for _ in range(rng.randint(3, 6)))
      y = x[::-1] if task == "reverse" else x.upper()
    out.append({"prompt": f"{task}: {x}\n=> ", "response": y})
  return out


def write(directory: str, n_train: int = 2000, n_valid: int = 200, seed: int = 0) -> dict:
  """Writes train.jsonl / valid.jsonl (idempotent); returns {split: path}."""
  os.makedirs(directory, exist_ok=True)
  paths = {}
  for split, n, s in (("train", n_train, seed), ("valid", n_valid, seed + 1)):
    path = os.path.join(directory, f"{split}.jsonl")
    if not os.path.exists(path):
      tmp = path + ".tmp"
      with open(tmp, "w", encoding="utf-8") as f:
        for ex in examples(n, s):
          f.write(json.dumps(ex) + "\n")
      os.replace(tmp, path)
    paths[split] = path
  return paths
