"""The kernels the model is built from, tuned for every backend and XLA:CPU in
particular, apart from the model's structure (`transformer.py`).

  matmul            x · w in the compute dtype with float32 accumulation, and a
                    VJP whose backward dots stay in the compute dtype
  dense             any contraction of the model as one 2-D `matmul`
  full_attention    softmax(q·kᵀ/√D, masked) · v over a whole sequence
  decode_attention  the same for one query per row against the KV cache
  embedding_lookup  table[tokens] with the table's vocabulary rows left sharded

Measurements behind the XLA:CPU-specific choices are in the commit messages
and `benchmarks/` (train_step.py, sampling.py).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name
from jax.sharding import PartitionSpec as P

from rlaif_jax.mesh import constrain, logical_to_spec, spec_axes

NEG = -0.7 * float(jnp.finfo(jnp.float32).max)  # finite: fully masked rows stay NaN-free


@jax.custom_vjp
def matmul(x: jax.Array, w: jax.Array) -> jax.Array:
  """x (M, K) · w (K, N) in x's dtype, accumulated in float32; w is cast to x's dtype.

  The gradients are the same kind of dot, so a bfloat16 model's backward runs
  bfloat16 × bfloat16 matmuls too:

      dx = (g · wᵀ)  in x's dtype          dw = (xᵀ · g)  in w's dtype (float32 params)

  g (the cotangent of a bfloat16 output) is bfloat16 already. Plain autodiff
  of a dot with `preferred_element_type=float32` instead pairs a float32
  cotangent with the bfloat16 operand – a mixed dot that XLA:CPU runs as a
  float32 matmul, at half its bfloat16 rate – and rounds dw to bfloat16 on the
  way back to the float32 parameter. For float32 x these are autodiff's dots.
  """
  # float32 accumulation, then the compute dtype: what TPUs and GPUs do anyway,
  # and XLA:CPU runs bfloat16-output dots ~6x slower than this.
  return jnp.dot(x, w.astype(x.dtype), preferred_element_type=jnp.float32).astype(x.dtype)


def _matmul_fwd(x, w):
  return matmul(x, w), (x, w)


def _materialized_t(a: jax.Array) -> jax.Array:
  """aᵀ as a row-major copy. XLA folds a plain transpose into the dot that
  reads it; a 1-D array has one layout only, so the barrier keeps the copy."""
  return jax.lax.optimization_barrier(a.T.reshape(-1)).reshape(a.shape[::-1])


def _matmul_bwd(res, g):
  x, w = res
  g, wc = g.astype(x.dtype), w.astype(x.dtype)
  dot = lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32)
  if jax.default_backend() != "cpu" or jax.sharding.get_abstract_mesh().size > 1:
    return dot(g, wc.T).astype(x.dtype), dot(x.T, g).astype(w.dtype)
  # XLA:CPU runs only row-major-times-row-major ("NN") bfloat16 dots natively;
  # a transposed operand makes it convert both to float32 (measured at 2048x2048x512:
  # 160 GFLOP/s, 250-400 with a transposed copy, which costs one pass over the
  # smaller operand). For float32, g·wᵀ is already at peak, xᵀ·g ~10% short of it.
  # One device only: the flattening copy of a sharded operand would make SPMD
  # replicate it ("involuntary full rematerialization").
  dx = dot(g, wc.T if x.dtype == jnp.float32 else _materialized_t(wc))
  dw = dot(_materialized_t(x), g)
  return dx.astype(x.dtype), dw.astype(w.dtype)


matmul.defvjp(_matmul_fwd, _matmul_bwd)


def dense(x: jax.Array, w: jax.Array, n_in: int = 1) -> jax.Array:
  """Contracts the last `n_in` axes of x with the first `n_in` of w (`matmul`).

  Done as one 2-D matmul (leading axes and w's output axes flattened): XLA:CPU
  runs the backward of batched dots with several contracting axes far below
  its matmul peak (the MLP's fwd+bwd was 1.6x slower that way).
  """
  lead, k = x.shape[:x.ndim - n_in], w.shape[:n_in]
  out = w.shape[n_in:]
  y = matmul(x.reshape(-1, math.prod(k)), w.reshape(math.prod(k), -1))
  # named for remat="dots", which keeps exactly these outputs (a policy on the
  # dot primitive would not see inside matmul's custom VJP)
  return checkpoint_name(y.reshape(*lead, *out), "proj")


def full_attention(q, k, v, allowed, dt):
  """softmax(q·kᵀ/√D masked) · v for q (B, T, KV, G, D), k/v (B, KV, S, D),
  allowed (B, T, S); returns (B, T, KV, G, D).

  The group axis is dropped when it has size 1 (multi-head attention): with a
  unit axis XLA:CPU lowers these einsums to multiply-reduce loops instead of
  batched dots (~0.3 s of a 4.7 s SFT step at d512/L8/8x256).
  """
  hd = q.shape[-1]
  if q.shape[3] == 1:
    scores = jnp.einsum("btkd,bksd->bkts", q[:, :, :, 0], k.astype(dt))
    mask = allowed[:, None]
  else:
    scores = jnp.einsum("btkgd,bksd->bkgts", q, k.astype(dt))
    mask = allowed[:, None, None]
  scores = jnp.where(mask, scores.astype(jnp.float32) / math.sqrt(hd), NEG)
  probs = jax.nn.softmax(scores, axis=-1).astype(dt)
  if q.shape[3] == 1:
    return jnp.einsum("bkts,bksd->btkd", probs, v.astype(dt))[:, :, :, None]
  return jnp.einsum("bkgts,bksd->btkgd", probs, v.astype(dt))


def decode_attention(q, k, v, allowed, dt):
  """One query per row against the cache: q (B, 1, KV, G, D), k/v (B, KV, S, D),
  allowed (B, 1, S); returns (B, 1, KV, G, D).

  Per (row, kv head) two matrix-vector products over the head's contiguous
  (S, D) cache block, scores and softmax with the slots minor. The group axis
  is dropped when it has size 1 (multi-head attention), as in `full_attention`.
  """
  b, _, kvh, g, hd = q.shape
  k, v = k.astype(dt), v.astype(dt)
  f32 = jnp.float32
  if g == 1:
    scores = jnp.einsum("bkd,bksd->bks", q[:, 0, :, 0], k, preferred_element_type=f32)
    mask = allowed[:, :1]                                                 # (B, 1, S)
  else:
    scores = jnp.einsum("bkgd,bksd->bkgs", q[:, 0], k, preferred_element_type=f32)
    mask = allowed[:, :1, None]                                           # (B, 1, 1, S)
  probs = jax.nn.softmax(jnp.where(mask, scores / math.sqrt(hd), NEG), axis=-1).astype(dt)
  spec = "bks,bksd->bkd" if g == 1 else "bkgs,bksd->bkgd"
  out = jnp.einsum(spec, probs, v, preferred_element_type=f32)
  return out.reshape(b, 1, kvh, g, hd).astype(dt)


def embedding_lookup(table: jax.Array, tokens: jax.Array, dtype) -> jax.Array:
  r"""table[tokens] in `dtype`, (B, T) -> (B, T, d), for a table whose vocabulary
  rows are sharded over mesh axes R (the "vocab" rule) and tokens whose batch
  rows are sharded over axes S (the "batch" rule).

  Each device looks its tokens up in its own block of rows only (zeros for the
  others) and the partial lookups are summed across R:

      x[b, t] = Σ_{r ∈ R} [v_r ≤ tokens[b, t] < v_r + V/|R|] · table_r[tokens[b, t] − v_r]

  Batch rows are first gathered over G = R ∩ S (the int tokens: bytes) and the
  sum is a psum over R \ G and a psum-scatter over G back to the device's own
  rows, so one activation-sized (B/|S \ G|, T, d) sum moves per lookup. Its
  transpose, which autodiff derives, gathers the cotangent over G and
  scatter-adds it into each device's own rows: the table's gradient is born
  sharded. The partitioner, given `table[tokens]` on a sharded table, gathers
  the whole table instead (bf16 0.98 GiB for Gemma-2B, on every chip) and
  all-reduces the whole float32 gradient (1.95 GiB) per micro-batch.
  """
  mesh = jax.sharding.get_abstract_mesh()
  # mesh axes of size 1 split nothing: a one-device mesh takes the plain lookup
  rows = () if mesh.empty else tuple(
      a for a in spec_axes(logical_to_spec(("vocab", None), mesh, table.shape)[0])
      if mesh.shape[a] > 1)
  if not rows:               # no mesh, or a vocabulary no row split divides
    return constrain(table, (None, None))[tokens].astype(dtype)
  b_spec = logical_to_spec(("batch", None), mesh, tokens.shape)
  gathered = tuple(a for a in spec_axes(b_spec[0]) if a in rows)
  summed = tuple(a for a in rows if a not in gathered)
  block = table.shape[0] // math.prod(mesh.shape[a] for a in rows)

  def local(tab, tok):
    if gathered:
      tok = jax.lax.all_gather(tok, gathered, axis=0, tiled=True)
    idx = tok - jax.lax.axis_index(rows) * block
    hit = (idx >= 0) & (idx < block)
    x = jnp.where(hit[..., None], tab[jnp.clip(idx, 0, block - 1)], 0).astype(dtype)
    if summed:
      x = jax.lax.psum(x, summed)
    if gathered:
      x = jax.lax.psum_scatter(x, gathered, scatter_dimension=0, tiled=True)
    return x

  return jax.shard_map(local, in_specs=(P(rows, None), b_spec),
                       out_specs=P(b_spec[0], None, None))(table, tokens)
