"""Scoring continuations after a shared prefix, with the prefix's KV cache reused.

Every labeler query has the shape

    prefix  (same for all rows: preamble + exemplars)     encoded once, cached
    context c_b (one per row: e.g. "Text - {post}\\n")     encoded once per row
    tails   t_bg, g = 1..G (e.g. the two orders of a pair) encoded per tail

and asks, for each tail, log-probabilities of the model p:

    ctx_query[b, q]   = log p(query_q | prefix, c_b)
    tail_query[b,g,q] = log p(query_q | prefix, c_b, t_bg)
    tail_logp[b, g]   = Σ_k log p(t_bg,k | prefix, c_b, t_bg,<k)     (teacher forcing; on request)

The vocabulary projection (and its log-softmax) runs only where these read it:
after each context's last token, after each tail's last token, and for
tail_logp at each tail position in turn – the model's activations grow with
the tail length, the (vocabulary-sized) logits do not.

Cached path (one jitted program per shape): the prefix cache (batch 1) is
broadcast to B rows, the contexts run at slot Lp with positions Lp + i, the
cache rows are repeated G times and the tails run after them. Contexts are
left-padded and tails right-padded; pads stay invalid in the cache, so they
are invisible to every later token, and positions count real tokens only –
each row sees exactly the positions and keys of its unpadded sequence.
Uncached path (`prefix_cache=False`, the reference): one forward pass over each
whole prefix + context + tail sequence, no cache at all.

Rows are sorted by length and lengths are rounded up to `bucket` so that few
programs compile and little compute goes to padding.
"""
from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rlaif_jax.mesh import data_parallel_size, to_host
from rlaif_jax.models.transformer import (CACHE_AXES, cache_shardings, map_cache,
                                          positions_from_mask)
from rlaif_jax.sampling import put_rows


def bucketed(n: int, bucket: int) -> int:
  """`n` tokens rounded up to a multiple of `bucket` (at least one bucket): the
  few shapes every batch compiles to."""
  return max(bucket, -(-n // bucket) * bucket)


def _gather(logp, ids):
  return jnp.take_along_axis(logp, ids, axis=-1)


def cached_scores(graphdef, g, want_logp, params, prefix, prefix_len, ctx, ctx_mask, tail,
                  tail_mask, query):
  """prefix: KV of the prefix in `lp` slots (a bucket), of which the first
  `prefix_len` are real; later slots are invalid and only keep shapes few."""
  model = nnx.merge(graphdef, params)
  b, c = ctx.shape
  lp = prefix["valid"].shape[1]
  t = tail.shape[1]

  def widen(x):  # slots Lp -> Lp + c + t, the prefix in front; 1 row -> b rows
    x = jnp.broadcast_to(x, (b,) + x.shape[1:])
    slot_axis = CACHE_AXES.index("length") if x.ndim == len(CACHE_AXES) else 1   # k/v or valid
    pad = [(0, 0)] * x.ndim
    pad[slot_axis] = (0, c + t)
    return jnp.pad(x, pad)
  cache = map_cache(widen, prefix)
  n_ctx = jnp.sum(ctx_mask, -1)
  h, cache = model.hidden(ctx, ctx_mask, prefix_len + positions_from_mask(ctx_mask), cache, lp)
  ctx_lp = jax.nn.log_softmax(model.logits(h[:, -1]))   # the vocab projection only where read
  out = {"ctx_query": _gather(ctx_lp, jnp.broadcast_to(query, (b, query.shape[0])))}
  if g == 0:
    return out
  cache = map_cache(lambda x: jnp.repeat(x, g, axis=0), cache)
  pos = (prefix_len + jnp.repeat(n_ctx, g))[:, None] + positions_from_mask(tail_mask)
  h_tail, _ = model.hidden(tail, tail_mask, pos, cache, lp + c)
  return out | _tail_outputs(model, jnp.repeat(ctx_lp, g, axis=0), h_tail, tail, tail_mask,
                             query, g, want_logp)


def _tail_outputs(model, first_lp, h, tail, tail_mask, query, g, want_logp):
  """From the tails' hidden states h (rows, T, d): h[:, k] predicts tail[:, k + 1],
  first_lp (after the context) predicts tail[:, 0].

  The vocabulary projection runs only where it is read: at each row's last tail
  token (tail_query), and with `want_logp` at each tail position for the
  teacher-forced sum, one position at a time – never a (rows, T, V) array,
  which for CoT tails of ~600 tokens and a 256k vocabulary would dwarf the
  model's activations.
  """
  rows, t = tail.shape
  last = jnp.max(jnp.where(tail_mask, jnp.arange(t), 0), -1)
  at_last = jax.nn.log_softmax(model.logits(h[jnp.arange(rows), last]))
  out = {"tail_query": _gather(at_last, jnp.broadcast_to(query, (rows, query.shape[0])))
         .reshape(-1, g, query.shape[0])}
  if not want_logp:
    return out

  def next_logp(k):   # log p(tail[:, k + 1] | ..., tail[:, :k + 1]): (rows,)
    step = jax.nn.log_softmax(model.logits(h[:, k]))
    return _gather(step, jax.lax.dynamic_index_in_dim(tail, k + 1, 1))[:, 0]
  first = _gather(first_lp, tail[:, :1])
  rest = jax.lax.map(next_logp, jnp.arange(t - 1)).T if t > 1 else first[:, :0]
  tok_lp = jnp.concatenate([first, rest], axis=1)
  out["tail_logp"] = jnp.sum(jnp.where(tail_mask, tok_lp, 0.0), -1).reshape(-1, g)
  return out


def _uncached(graphdef, g, tail_width, want_logp, params, tokens, mask, ctx_end, query):
  """Whole sequences (rows b*G + g, right-padded); ctx_end = index of the last context token."""
  model = nnx.merge(graphdef, params)
  h, _ = model.hidden(tokens, mask)
  rows = tokens.shape[0]
  ctx_lp = jax.nn.log_softmax(model.logits(h[jnp.arange(rows), ctx_end]))
  out = {"ctx_query": _gather(ctx_lp, jnp.broadcast_to(query, (rows, query.shape[0])))[::max(g, 1)]}
  if g == 0:
    return out
  # re-index the tail region so the shared helper reads it: tail k at ctx_end + 1 + k
  t = tokens.shape[1]
  span = jnp.arange(tail_width)[None]
  idx = jnp.minimum(ctx_end[:, None] + 1 + span, t - 1)
  tail = jnp.take_along_axis(tokens, idx, 1)
  tail_mask = jnp.take_along_axis(mask, idx, 1) & (ctx_end[:, None] + 1 + span < t)
  h_tail = jnp.take_along_axis(h, idx[..., None], 1)
  return out | _tail_outputs(model, ctx_lp, h_tail, tail, tail_mask, query, g, want_logp)


def _prefill(graphdef, params, ids, mask):
  model = nnx.merge(graphdef, params)
  cache = model.init_cache(1, ids.shape[1])
  return model(ids, mask, positions_from_mask(mask), cache, 0)[1]


# Module-level jits: engines over same-shaped models share compiled programs.
cached_scores = jax.jit(cached_scores, static_argnums=(0, 1, 2))
_uncached = jax.jit(_uncached, static_argnums=(0, 1, 2, 3))
_prefill = jax.jit(_prefill, static_argnums=(0,))


class ScoringEngine:
  """A model, its mesh and named shared prefixes, answering batched scoring queries."""

  def __init__(self, model, mesh, *, pad_id: int, batch_size: int = 8, bucket: int = 32,
               prefix_cache: bool = True):
    self.graphdef, state = nnx.split(model)
    self.params = nnx.to_pure_dict(state)
    self.cfg, self.mesh, self.pad_id = model.cfg, mesh, int(pad_id)
    dp = data_parallel_size(mesh)
    self.batch_size = -(-batch_size // dp) * dp     # rows a program takes, a multiple of dp
    self.bucket, self.prefix_cache = bucket, prefix_cache
    self._prefixes: dict[str, tuple[list[int], dict | None]] = {}

  def set_prefix(self, name: str, ids: list[int]) -> None:
    """Registers (and with prefix caching, prefills once) a shared prefix."""
    if not ids:
      raise ValueError("a prefix needs at least one token (e.g. BOS)")
    kv = None
    if self.prefix_cache:
      with jax.set_mesh(self.mesh):
        width = bucketed(len(ids), self.bucket)
        padded = np.full((1, width), self.pad_id, np.int32)
        padded[0, :len(ids)] = ids
        kv = _prefill(self.graphdef, self.params, padded, np.arange(width)[None] < len(ids))
        sh = cache_shardings(self.cfg, self.mesh, 1, width, batch_axis=None)
        kv = {"k": jax.device_put(kv["k"], sh["k"]), "v": jax.device_put(kv["v"], sh["v"]),
              "valid": kv["valid"]}
    self._prefixes[name] = (list(ids), kv)

  def prefix_len(self, name: str) -> int:
    return len(self._prefixes[name][0])

  def score(self, name: str, contexts: list[list[int]], tails: list[list[list[int]]],
            query: list[int], *, tail_logp: bool = False) -> dict[str, np.ndarray]:
    """ctx_query [R,Q], tail_query [R,G,Q], and with `tail_logp` tail_logp [R,G],
    for R rows with G tails each (R = 0 gives empty arrays)."""
    g = len(tails[0]) if tails else 0
    if any(len(t) != g for t in tails) or (g and len(tails) != len(contexts)):
      raise ValueError("every row needs the same number of tails")
    if any(len(t) == 0 for row in tails for t in row):
      raise ValueError("a tail needs at least one token")
    rows = len(contexts)
    if not rows:      # no rows, no tails: G is unknown, so only ctx_query
      return {"ctx_query": np.zeros((0, len(query)), np.float32)}
    total = [len(contexts[r]) + sum(len(t) for t in (tails[r] if g else [])) for r in range(rows)]
    order = np.argsort(total, kind="stable")
    parts = []
    for s in range(0, rows, self.batch_size):
      idx = order[s:s + self.batch_size]
      ctx = [contexts[i] for i in idx]
      tl = [tails[i] for i in idx] if g else []
      parts.append((idx, self._batch(name, ctx, tl, g, query, tail_logp and g > 0)))
    out = {k: np.zeros((rows,) + v.shape[1:], v.dtype) for k, v in parts[0][1].items()}
    for idx, res in parts:
      for k, v in res.items():
        out[k][idx] = v[:len(idx)]
    return out

  def _batch(self, name, ctx, tails, g, query, want_logp):
    prefix_ids, kv = self._prefixes[name]
    b = self.batch_size
    n = len(ctx)
    ctx = ctx + [[self.pad_id]] * (b - n)           # filler rows, dropped afterwards
    tails = tails + [[[self.pad_id]] * g] * (b - n) if g else []
    q = jnp.asarray(query, jnp.int32)
    if self.prefix_cache:
      c = bucketed(max(len(x) for x in ctx), self.bucket)
      ctx_tok = np.full((b, c), self.pad_id, np.int32)
      ctx_mask = np.zeros((b, c), bool)
      for i, x in enumerate(ctx):
        ctx_tok[i, c - len(x):], ctx_mask[i, c - len(x):] = x, True
      flat = [t for row in tails for t in row] if g else [[self.pad_id]] * b  # g=0: unused
      t = bucketed(max(map(len, flat)), self.bucket) if g else 1
      tail_tok = np.full((len(flat), t), self.pad_id, np.int32)
      tail_mask = np.zeros(tail_tok.shape, bool)
      for i, x in enumerate(flat if g else []):
        tail_tok[i, :len(x)], tail_mask[i, :len(x)] = x, True
      with jax.set_mesh(self.mesh):
        res = cached_scores(self.graphdef, g, want_logp, self.params, kv, len(prefix_ids),
                      put_rows(ctx_tok, self.mesh),
                      put_rows(ctx_mask, self.mesh), put_rows(tail_tok, self.mesh),
                      put_rows(tail_mask, self.mesh), q)
    else:
      seqs, ends = [], []
      for r in range(b):
        head = prefix_ids + ctx[r]
        for tl in (tails[r] if g else [[]]):
          seqs.append(head + tl)
          ends.append(len(head) - 1)
      width = bucketed(max(map(len, seqs)), self.bucket)
      tok = np.full((len(seqs), width), self.pad_id, np.int32)
      mask = np.zeros(tok.shape, bool)
      for i, x in enumerate(seqs):
        tok[i, :len(x)], mask[i, :len(x)] = x, True
      with jax.set_mesh(self.mesh):
        tail_width = bucketed(max(len(x) for row in tails for x in row), self.bucket) if g else 1
        res = _uncached(self.graphdef, g, tail_width, want_logp, self.params,
                        put_rows(tok, self.mesh),
                        put_rows(mask, self.mesh), put_rows(np.asarray(ends, np.int32), self.mesh),
                        q)
    return {k: to_host(v) for k, v in res.items()}

