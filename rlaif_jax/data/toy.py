"""Toy SFT data: three string tasks a tiny model learns on a CPU in a minute.

    "reverse: abc\n=> " -> "cba"      "sort: 3142\n=> " -> "1234"
    "upper: cat\n=> "   -> "CAT"

Deterministic for a seed; written as the generic JSONL formats ({"prompt",
"response"} for SFT; {"prompt", "response_a", "response_b", "label",
"human_label"} for preference pairs) so it exercises the same pipeline as
users' data. In a pair one response is the right answer and the other a
corrupted one (a character changed or two swapped); `label` is P(a preferred).
"""
from __future__ import annotations

import random

from rlaif_jax import paths

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


def corrupt(text: str, rng: random.Random) -> str:
  chars = list(text)
  i = rng.randrange(len(chars))
  if rng.random() < 0.5 and len(set(chars)) > 1:
    j = rng.choice([k for k in range(len(chars)) if chars[k] != chars[i]])
    chars[i], chars[j] = chars[j], chars[i]
  else:
    pool = "0123456789" if text.isdigit() else (_LETTERS.upper() if text.isupper() else _LETTERS)
    chars[i] = rng.choice([c for c in pool if c != chars[i]])
  return "".join(chars)


def pairs(n: int, seed: int, soft: float = 1.0) -> list[dict]:
  """Right vs corrupted answers in random order; label = soft for the right one."""
  rng = random.Random(seed + 1000)
  out = []
  for ex in examples(n, seed):
    good, bad = ex["response"], corrupt(ex["response"], rng)
    first = rng.random() < 0.5
    a, b = (good, bad) if first else (bad, good)
    out.append({"prompt": ex["prompt"], "response_a": a, "response_b": b,
                "label": soft if first else 1.0 - soft, "human_label": 1.0 if first else 0.0})
  return out


def write(directory: str, kind: str = "sft", n_train: int = 2000, n_valid: int = 200,
          seed: int = 0) -> dict:
  """Writes {kind}_train.jsonl / {kind}_valid.jsonl (idempotent); returns {split: path}."""
  make = {"sft": examples, "pairs": pairs}[kind]
  out = {}
  for split, n, s in (("train", n_train, seed), ("valid", n_valid, seed + 1)):
    out[split] = paths.join(directory, f"{kind}_{split}.jsonl")
    # Every process writes the same bytes; the atomic write makes concurrent
    # writers on a shared workdir safe (a lost race replaces, never crashes).
    if not paths.exists(out[split]):
      paths.write_jsonl_atomic(out[split], make(n, s))
  return out
