"""grain pipelines: canonical examples -> fixed-shape numpy batches, resumable.

    it = make_iterator(data_cfg, tokenizer, kind="sft", batch_size=64, seed=0)
    batch = next(it)                       # this process's rows (batch_size / shard_count)
    arrays = rlaif_jax.mesh.global_batch(numeric(batch), mesh)
    state = it.get_state(); ...; it.set_state(state)   # exact replay after restore

Batches (P = max_prompt_len, R = max_response_len, T = P + R; B local rows):
  sft      tokens int32 [B,T]  BOS? + prompt + response + EOS, right-padded with pad id
           mask bool [B,T]     True at real tokens
           response_mask bool [B,T]  True at response tokens incl. EOS (the targets)
  pairs    tokens_a, mask_a, response_mask_a, tokens_b, mask_b, response_mask_b as above
           label float32 [B]        P(response_a preferred), soft or hard; -1.0 unlabeled
           human_label float32 [B]  the human's label, -1.0 when there is none
  prompts  prompt_tokens int32 [B,P]  BOS? + prompt, LEFT-padded (generation continues it)
           prompt_mask bool [B,P]
With text (default for prompts): id, prompt (the untruncated prompt text), and
response / response_a / response_b, as numpy object arrays.

Prompts longer than P lose body text (formats.fit_prompt), never the cue;
responses are never cut: those over R tokens are skipped when the iterator is
built (long_response_policy="skip", counted) or raise ("error"). `it.report()`
gathers these counts, the truncations seen so far and the source's skipped /
mismatched raw records. Shuffling is global with one seed on every host, then
host i takes every shard_count-th example (equal shares, remainder dropped), so
hosts read disjoint data and produce the same number of batches. The shuffle
is redrawn each epoch.
"""
from __future__ import annotations

import logging
from typing import Any

import grain
import jax
import numpy as np

from rlaif_jax.data.formats import fit_prompt
from rlaif_jax.data.sources import open_source

KINDS = ("sft", "pairs", "prompts")
TEXT_KEYS = ("id", "prompt", "response", "response_a", "response_b")
_RESPONSES = {"sft": ("response",), "pairs": ("response_a", "response_b"), "prompts": ()}


def numeric(batch: dict) -> dict:
  """The array part of a batch (what `mesh.global_batch` and jitted steps take)."""
  return {k: v for k, v in batch.items() if k not in TEXT_KEYS}


class TokenEncoder:
  """Prompt/response token ids with BOS/EOS policy and the prompt budget."""

  def __init__(self, tokenizer, max_prompt_len: int, max_response_len: int):
    self.tok = tokenizer
    self.bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    if tokenizer.eos_token_id is None or tokenizer.pad_token_id is None:
      raise ValueError("the tokenizer needs an EOS and a pad token")
    self.eos, self.pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    self.max_prompt_len, self.max_response_len = max_prompt_len, max_response_len
    # SentencePiece puts a "▁" (space) before any text it tokenizes alone, so a
    # response's own leading space would become an extra token at the seam;
    # such tokenizers get the response without it (matching joint tokenization).
    self.dummy_prefix = self.encode("a x") == self.encode("a") + self.encode("x")

  def encode(self, text: str) -> list[int]:
    return list(self.tok(text, add_special_tokens=False)["input_ids"])

  def prompt(self, prompt) -> tuple[list[int], bool]:
    ids, truncated = fit_prompt(prompt, self.encode, self.max_prompt_len - len(self.bos))
    return self.bos + ids, truncated

  def response(self, text: str) -> list[int]:
    if self.dummy_prefix and text.startswith(" "):
      text = text[1:]
    return self.encode(text) + [self.eos]

  def sequence(self, prompt_ids, response_ids) -> tuple[np.ndarray, ...]:
    """Right-padded (tokens, mask, response_mask) of length P + R."""
    length = self.max_prompt_len + self.max_response_len
    ids = prompt_ids + response_ids
    tokens = np.full(length, self.pad, np.int32)
    tokens[:len(ids)] = ids
    mask = np.arange(length) < len(ids)
    response_mask = mask & (np.arange(length) >= len(prompt_ids))
    return tokens, mask, response_mask

  def left_padded(self, prompt_ids) -> tuple[np.ndarray, np.ndarray]:
    tokens = np.full(self.max_prompt_len, self.pad, np.int32)
    mask = np.zeros(self.max_prompt_len, bool)
    if prompt_ids:
      tokens[-len(prompt_ids):] = prompt_ids
      mask[-len(prompt_ids):] = True
    return tokens, mask


def encode_example(example: dict, kind: str, enc: TokenEncoder, with_text: bool) -> dict:
  """One canonical example -> one row of a `kind` batch (plus bookkeeping `_` keys)."""
  prompt_ids, truncated = enc.prompt(example["prompt"])
  row: dict[str, Any] = {"_prompt_truncated": truncated}
  if kind == "prompts":
    row["prompt_tokens"], row["prompt_mask"] = enc.left_padded(prompt_ids)
  elif kind == "sft":
    row["tokens"], row["mask"], row["response_mask"] = enc.sequence(
        prompt_ids, enc.response(example["response"]))
  else:
    for s in ("a", "b"):
      row[f"tokens_{s}"], row[f"mask_{s}"], row[f"response_mask_{s}"] = enc.sequence(
          prompt_ids, enc.response(example[f"response_{s}"]))
    row["label"] = np.float32(example.get("label", -1.0))
    row["human_label"] = np.float32(example.get("human_label", -1.0))
  if with_text:
    row.update(id=example["id"], prompt=example["prompt"].text)
    row.update({k: example[k] for k in _RESPONSES[kind]})
  return row


def _stack(rows: list[dict]) -> dict:
  out = {}
  for key in rows[0]:
    values = [r[key] for r in rows]
    if isinstance(values[0], str):
      out[key] = np.empty(len(values), object)
      out[key][:] = values
    else:
      out[key] = np.stack(values)
  return out


class _Examples:
  """A source seen through an index list, with optional seeded a/b swaps."""

  def __init__(self, source, indices, swap_seed: int | None):
    self.source, self.indices, self.swap_seed = source, indices, swap_seed

  def __len__(self):
    return len(self.indices)

  def __getitem__(self, i):
    index = int(self.indices[i])
    ex = self.source[index]
    if self.swap_seed is not None and np.random.default_rng([self.swap_seed, index]).random() < 0.5:
      flip = lambda p: p if p < 0 else 1.0 - p
      ex = dict(ex, response_a=ex["response_b"], response_b=ex["response_a"],
                label=flip(ex["label"]), human_label=flip(ex["human_label"]))
    return ex


def _fitting_indices(source, kind: str, enc: TokenEncoder, policy: str) -> tuple[list[int], list]:
  """Indices whose responses fit max_response_len; the rest are reported (or raise)."""
  keep, too_long = [], []
  for i in range(len(source)):
    ex = source[i]
    lengths = [len(enc.response(ex[k])) for k in _RESPONSES[kind]]
    if max(lengths, default=0) <= enc.max_response_len:
      keep.append(i)
    elif policy == "error":
      raise ValueError(f"example {ex['id']}: response of {max(lengths)} tokens (incl. EOS) > "
                       f"max_response_len={enc.max_response_len} (long_response_policy='error')")
    else:
      too_long.append(ex["id"])
  if too_long:
    logging.warning("skipping %d examples whose responses exceed %d tokens, e.g. %s",
                    len(too_long), enc.max_response_len, too_long[:5])
  return keep, too_long


class DataIterator:
  """Numpy batches with get_state/set_state (grain state + running counts)."""

  def __init__(self, grain_iter, report: dict):
    self._it, self._report = grain_iter, report
    self.stats = {"batches": 0, "examples": 0, "prompts_truncated": 0}

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    batch = next(self._it)
    self.stats["batches"] += 1
    self.stats["examples"] += len(batch["_prompt_truncated"])
    self.stats["prompts_truncated"] += int(batch.pop("_prompt_truncated").sum())
    return batch

  def get_state(self) -> dict:
    return {"grain": self._it.get_state(), "stats": dict(self.stats)}

  def set_state(self, state: dict) -> None:
    self._it.set_state(state["grain"])
    self.stats = dict(state["stats"])

  def report(self) -> dict:
    """Source faults (skipped / mismatched), skipped long responses, truncations so far."""
    return {**self._report, **self.stats}


def make_iterator(data_cfg, tokenizer, kind: str, batch_size: int, *, seed: int | None = None,
                  shard_index: int | None = None, shard_count: int | None = None,
                  num_epochs: int | None = None, with_text: bool | None = None,
                  source=None) -> DataIterator:
  """A resumable iterator of this host's share of `kind` batches (see module doc).

  batch_size is the *global* batch; each of shard_count hosts (default: JAX
  processes) yields batch_size / shard_count rows. seed / num_epochs default to
  data_cfg.seed / data_cfg.num_epochs (-1 or None = forever). `source` overrides
  data_cfg's data set with any canonical-example source (e.g. the demo world).
  """
  if kind not in KINDS:
    raise ValueError(f"kind {kind!r}: expected one of {KINDS}")
  shard_index = jax.process_index() if shard_index is None else shard_index
  shard_count = jax.process_count() if shard_count is None else shard_count
  if data_cfg.long_response_policy not in ("skip", "error"):
    raise ValueError(f"long_response_policy {data_cfg.long_response_policy!r}: skip or error")
  if batch_size % shard_count:
    raise ValueError(f"global batch {batch_size} is not divisible by {shard_count} hosts")
  seed = data_cfg.seed if seed is None else seed
  epochs = data_cfg.num_epochs if num_epochs is None else num_epochs
  with_text = (kind == "prompts") if with_text is None else with_text
  source = open_source(data_cfg, kind) if source is None else source
  enc = TokenEncoder(tokenizer, data_cfg.max_prompt_len, data_cfg.max_response_len)

  indices, too_long = _fitting_indices(source, kind, enc, data_cfg.long_response_policy)
  report = dict(getattr(source, "report", {}))
  report["responses_too_long"] = {"count": len(too_long), "ids": too_long}
  swap_seed = seed if (kind == "pairs" and data_cfg.randomize_pair_order) else None
  ds = grain.MapDataset.source(_Examples(source, indices, swap_seed))
  if data_cfg.shuffle:
    ds = ds.shuffle(seed=seed)
  per_host = len(ds) // shard_count
  ds = ds[shard_index:per_host * shard_count:shard_count]
  local_batch = batch_size // shard_count
  if len(ds) < local_batch:
    raise ValueError(f"{len(ds)} examples per host cannot fill a batch of {local_batch}")
  ds = ds.repeat(None if epochs is None or epochs < 0 else epochs)
  ds = ds.map(lambda ex: encode_example(ex, kind, enc, with_text))
  ds = ds.batch(local_batch, drop_remainder=True, batch_fn=_stack)
  read = grain.ReadOptions(num_threads=data_cfg.read_threads, prefetch_buffer_size=2 * local_batch)
  return DataIterator(iter(ds.to_iter_dataset(read)), report)
