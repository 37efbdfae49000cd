"""Supervised fine-tuning: next-token cross-entropy on response tokens only.

    L = − Σ_{b,t} m[b,t+1] · log π(x[b,t+1] | x[b,≤t]) / Σ m

where m marks response tokens (the EOS included) and is 0 on prompt and padding
positions, so the prompt conditions the response but is never itself trained.
"""
from __future__ import annotations

import logging
import math
import os

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rlaif_jax.data.batches import check_data, data_iterator, eval_batches, prepare_data
from rlaif_jax.learners.trainer import Trainer, selection
from rlaif_jax.models import store
from rlaif_jax.models.build import build, check_model
from rlaif_jax.models.hf import export_hf
from rlaif_jax.models.tokenizer import load_tokenizer


def next_token_logits(model, tokens, mask):
  """Logits at positions 0..T-2 (B, T-1, V), the ones that predict a token.

  The last hidden state is dropped before the LM head rather than its logits
  after it: slicing a (B, T, V) float32 array costs a copy of it (60 ms a step at
  8×256×32000) and one more in the backward pass.
  """
  h, _ = model.hidden(tokens, mask)
  return model.logits(h[:, :-1])


def response_nll(logits, batch):
  """Per-position NLL of the next token (B, T-1) and its response-only weights;
  `logits` are the next-token logits (B, T-1, V) of `next_token_logits`."""
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch["tokens"][:, 1:])
  weights = (batch["response_mask"][:, 1:] & batch["mask"][:, 1:]).astype(jnp.float32)
  return nll, weights


def chunked_nll(model, h, targets, chunk: int):
  """−log softmax(model.logits(h))[targets] (B, N), `chunk` positions at a time.

  The same per-token values as computing all (B, N, V) logits at once, but only
  a (B, chunk, V) slice of them – and of their gradient, recomputed in the
  backward pass (jax.checkpoint) – ever exists. With a 256k vocabulary that
  slice is what decides a step's memory and the TPU compiler's time (see the
  README's paper-scale table). chunk <= 0 or >= N: one piece.
  """
  B, N, d = h.shape
  if chunk <= 0 or chunk >= N:
    return optax.softmax_cross_entropy_with_integer_labels(model.logits(h), targets)
  pad = -N % chunk
  hs = jnp.pad(h, ((0, 0), (0, pad), (0, 0))).reshape(B, -1, chunk, d).swapaxes(0, 1)
  ts = jnp.pad(targets, ((0, 0), (0, pad))).reshape(B, -1, chunk).swapaxes(0, 1)

  @jax.checkpoint
  def piece(x):
    return optax.softmax_cross_entropy_with_integer_labels(model.logits(x[0]), x[1])
  return jax.lax.map(piece, (hs, ts)).swapaxes(0, 1).reshape(B, -1)[:, :N]


def token_nll(model, batch, chunk: int = 0):
  """Per-position NLL of the next token (B, T-1) and its response-only weights."""
  if chunk <= 0:
    return response_nll(next_token_logits(model, batch["tokens"], batch["mask"]), batch)
  h, _ = model.hidden(batch["tokens"], batch["mask"])
  nll = chunked_nll(model, h[:, :-1], batch["tokens"][:, 1:], chunk)
  return nll, (batch["response_mask"][:, 1:] & batch["mask"][:, 1:]).astype(jnp.float32)


def sft_loss(model, batch, rng=None, chunk: int = 0):
  """Mean NLL over the batch's response tokens; aux["weight"] = their count
  (the Trainer's gradient accumulation sums numerators and token counts).
  `chunk`: model.logits_chunk (chunked_nll)."""
  nll, w = token_nll(model, batch, chunk)
  n = jnp.sum(w)
  return jnp.sum(jnp.where(w > 0, nll, 0.0)) / jnp.maximum(n, 1.0), {"weight": n}


def loss_fn(config):
  """The stage's loss: sft_loss with the model section's logits_chunk."""
  return functools.partial(sft_loss, chunk=config.model.logits_chunk)


def eval_metrics(model, batch) -> dict:
  """Held-out response NLL, weighted by response tokens (`Trainer.evaluate`)."""
  return {"loss": token_nll(model, batch)}


# validation metrics and which way is better (train.select_metric)
EVAL_METRICS = {"loss": "min", "perplexity": "min"}


def with_perplexity(ev: dict) -> dict:
  """exp of the token-mean NLL (capped: a diverged model's loss overflows exp)."""
  return {**ev, "perplexity": math.exp(min(ev["loss"], 50.0))} if "loss" in ev else ev


def validate(config, mesh) -> None:
  """SFT's checks before anything is built (`mesh` may be abstract: shapes only)."""
  del mesh   # nothing here depends on the device layout
  check_model(config.model)
  check_data(config, "sft")
  selection(config, EVAL_METRICS, "loss")


def run(config, workdir: str, mesh) -> dict:
  prepare_data(config, workdir)
  tok = load_tokenizer(config.model.tokenizer)
  model = build(config.model, mesh, "lm", tok, config.seed)
  trainer = Trainer(config, workdir, mesh, model, loss_fn(config), name="sft")
  held_out = eval_batches(config, tok, "sft", mesh)
  evaluate = (lambda: with_perplexity(trainer.evaluate(held_out, eval_metrics))) if held_out \
      else None
  result = trainer.fit(data_iterator(config, tok, "sft"), evaluate,
                       tokens_per_batch=lambda b: int(np.sum(b["mask"])),
                       best_by=selection(config, EVAL_METRICS, "loss"))
  final = trainer.chosen_model()
  store.save(final, os.path.join(workdir, "model"))
  if config.train.export_hf:
    out = os.path.join(workdir, "hf")
    export_hf(final, out, tokenizer=tok)
    logging.info("exported the SFT policy to %s", out)
  return result
