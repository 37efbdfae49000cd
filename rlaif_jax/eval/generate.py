"""Responses of a trained policy to a list of prompts, with the jitted sampler.

Prompts are encoded exactly as the training pipeline encodes them (BOS, the
prompt budget, left padding), grouped in fixed-size batches so that one
program compiles per (batch, prompt length, settings). Greedy by default – an
evaluation compares what each policy does, not its sampling noise.
"""
from __future__ import annotations

import numpy as np

from rlaif_jax.data.formats import plain_prompt
from rlaif_jax.data.pipeline import TokenEncoder
from rlaif_jax.mesh import data_parallel_size
from rlaif_jax.sampling import Sampler, SamplingConfig


def generate(model, tok, mesh, prompts, *, max_prompt_len: int, max_new_tokens: int,
             temperature: float = 0.0, top_k: int = 0, batch_size: int = 64,
             seed: int = 0, samples: int = 1) -> list[list[str]]:
  """`samples` responses per prompt (text, special tokens dropped): [prompt][sample]."""
  enc = TokenEncoder(tok, max_prompt_len, max_new_tokens)
  rows = []
  for p in prompts:
    ids, _ = enc.prompt(plain_prompt(p))
    rows.append(enc.left_padded(ids))
  rows = [r for r in rows for _ in range(samples)]
  dp = data_parallel_size(mesh)
  size = -(-min(batch_size, max(len(rows), 1)) // dp) * dp
  sampler = Sampler(model, mesh, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, tokenizer=tok)
  cfg = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k)
  texts = []
  for s in range(0, len(rows), size):
    chunk = rows[s:s + size]
    tokens = np.stack([t for t, _ in chunk])
    mask = np.stack([m for _, m in chunk])
    if len(chunk) < size:            # keep the compiled batch shape
      tokens = np.concatenate([tokens, np.repeat(tokens[-1:], size - len(chunk), 0)])
      mask = np.concatenate([mask, np.repeat(mask[-1:], size - len(chunk), 0)])
    out = sampler(tokens, mask, cfg, seed=seed + s)
    texts.extend(t.strip() for t in sampler.decode(out)[:len(chunk)])
  return [texts[i * samples:(i + 1) * samples] for i in range(len(prompts))]
