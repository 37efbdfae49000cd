"""Models and a tokenizer with behaviour set by hand, for the labeler tests."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def _put(var, value):
  """Sets a parameter, keeping its sharding (so compiled programs are reused)."""
  var[...] = jax.device_put(jnp.asarray(value, var[...].dtype), var[...].sharding)


def bigram_model(model, table: dict[int, dict[int, float]], floor: float = 1e-12):
  """A copy of `model` (llama family, untied head) whose next-token distribution
  depends on the current token only: after token t it is `table[t]` (token ->
  probability, summing to 1; every other token gets `floor`), and after a token
  not in the table it is uniform.

  How: attention and MLP add nothing (their output projections are zero), so
  the last hidden state is the final RMSNorm of the current token's embedding.
  Token t of the table embeds as the unit vector e_{slot(t)} (slot 0 for every
  other token); RMSNorm maps it to e_slot / sqrt(1/d + eps), and row `slot` of
  the head holds the wanted log-probabilities times sqrt(1/d + eps).
  """
  m = nnx.clone(model)
  cfg = m.cfg
  d, vocab = cfg.d_model, cfg.vocab_size
  if len(table) >= d:
    raise ValueError(f"at most {d - 1} hand-set rows with d_model={d}")
  for layer in m.layers:
    _put(layer.attn.o, jnp.zeros_like(layer.attn.o[...]))
    _put(layer.mlp.down, jnp.zeros_like(layer.mlp.down[...]))
  embed = np.zeros((vocab, d), np.float32)
  embed[:, 0] = 1.0
  head = np.zeros((d, vocab), np.float32)       # slot 0: all logits equal, uniform
  gain = math.sqrt(1.0 / d + cfg.norm_eps)
  for slot, (tok, probs) in enumerate(table.items(), start=1):
    assert abs(sum(probs.values()) - 1) < 1e-9, probs
    embed[tok] = 0.0
    embed[tok, slot] = 1.0
    logp = np.full(vocab, math.log(floor))
    for nxt, p in probs.items():
      logp[nxt] = math.log(p)
    head[slot] = logp * gain
  _put(m.embed, embed)
  _put(m.lm_head, head)
  return m


def sharpened_model(model, option_ids, qk: float = 10.0, head: float = 30.0):
  """A copy of a random-init model with sharp, position-dependent attention
  (query and key weights times `qk`) and strong opinions on the option tokens
  (their head columns times `head`). The random model's two-way option
  distributions are 0.5 ± 1e-2, too flat to tell averaging rules apart; this
  one prefers the positions and the responses unevenly."""
  m = nnx.clone(model)
  for layer in m.layers:
    _put(layer.attn.q, layer.attn.q[...] * qk)
    _put(layer.attn.k, layer.attn.k[...] * qk)
  _put(m.lm_head, m.lm_head[...].at[:, jnp.asarray(option_ids)].multiply(head))
  return m


def byte10_tokenizer():
  """The byte tokenizer plus one merged token "10": a tokenizer in which the
  score "10" is a single token, as in vocabularies that merge digits."""
  import transformers
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers
  from rlaif_jax.models.tokenizer import byte_tokenizer

  vocab = dict(byte_tokenizer().get_vocab())
  vocab["10"] = len(vocab)
  tok = Tokenizer(models.BPE(vocab=vocab, merges=[("1", "0")]))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
  tok.decoder = decoders.ByteLevel()
  return transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>")


@nnx.jit
def _forward(model, ids, mask):
  return model(ids, mask)[0]


def full_logprobs(model, mesh, tok, texts):
  """log softmax of one no-cache forward pass over BOS + the jointly tokenized text."""
  seqs = [[tok.bos_token_id] + tok(t, add_special_tokens=False)["input_ids"] for t in texts]
  width = -(-max(map(len, seqs)) // 128) * 128     # few shapes, few compiles
  ids = np.zeros((len(seqs), width), np.int32)
  mask = np.zeros(ids.shape, bool)
  for i, s in enumerate(seqs):
    ids[i, :len(s)], mask[i, :len(s)] = s, True
  with jax.set_mesh(mesh):
    logits = np.asarray(_forward(model, ids, mask), np.float64)
  lp = logits - logits.max(-1, keepdims=True)
  lp -= np.log(np.exp(lp).sum(-1, keepdims=True))
  return [(lp[i, :len(s)], s) for i, s in enumerate(seqs)]
