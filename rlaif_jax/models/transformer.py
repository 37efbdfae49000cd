"""Decoder-only transformer (Llama / Gemma / Qwen2) in Flax NNX.

    h_0 = E[x] (· sqrt(d) for Gemma)
    h'  = h + Attn(RMSNorm(h))          RoPE on q, k; grouped-query attention
    h   = h' + MLP(RMSNorm(h'))         MLP(x) = W_down(act(W_gate x) ⊙ W_up x)
    logits = RMSNorm(h_L) · W_out       (W_out = Eᵀ when embeddings are tied)

RMSNorm(x) = x / sqrt(mean(x²) + eps) · w, or · (1 + w) for Gemma.

Every parameter carries `logical_axes` metadata; `rlaif_jax.mesh.RULES` maps
them to mesh axes. Parameters are float32; `cfg.dtype` sets the compute dtype
(softmax, norms and logits stay float32).

Masks: `mask[b, t]` is True for real tokens. A query attends to keys that are
real and not in its future, so right- and left-padded batches both work;
positions come from the mask (`positions_from_mask`), so a left-padded
sequence sees the same positions as the unpadded one.

Layer layouts (`cfg.scan_layers`): unrolled, `layers` is a list of L Blocks and
the forward pass a Python loop (XLA compiles L copies of a layer); scanned, one
Block whose every parameter has a leading axis of size L (logical axis None:
never sharded) and the forward pass one `lax.scan` over it, so XLA compiles one
layer. Both compute the same function; `to_layout` converts parameter trees.
`cfg.remat` recomputes each layer's activations in the backward pass instead of
keeping them: "full" keeps only each layer's input, "dots" also the outputs of
its projections (`dense`), recomputing attention scores and elementwise work.

KV cache: a pytree `{"k": [L × (B, KV, S, D)], "v": [...], "valid": (B, S)}` with
a fixed number of slots S (`CACHE_AXES` names the axes); with scanned layers
k and v are single (L, B, KV, S, D) arrays instead of lists (`cache_axes`). A call with
`cache_index=i` writes its T tokens into slots i..i+T-1 and attends to every
valid slot ≤ its own. Prefill is a call at index 0 with the whole (left-padded)
prompt, decoding a call with T=1. Heads lead the slots so that each (row, head)
owns one contiguous (S, D) block: a decode step's q·kᵀ and p·v are then batched
matrix-vector products over that block, with no transposed copy of the cache
(on XLA:CPU 2.8x faster per step than the (B, S, KV, D) layout, which had to be
read strided).
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from rlaif_jax.mesh import constrain, logical_sharding
from rlaif_jax.models.ops import decode_attention, dense, embedding_lookup, full_attention
from rlaif_jax.models.config import ModelConfig

CACHE_AXES = ("batch", "kv_heads", "length", "head_dim")   # logical axes of a cache's k / v


def _param(rngs, shape, axes, std=None, value=None):
  if value is None:
    value = std * jax.random.normal(rngs.params(), shape, jnp.float32)
  return nnx.Param(value, logical_axes=axes)


def cache_shape(cfg: ModelConfig, batch: int, slots: int) -> tuple[int, ...]:
  """Shape of one layer's k (or v) cache, axes `CACHE_AXES`."""
  return (batch, cfg.n_kv_heads, slots, cfg.head_dim)


def compute_dtype(cfg: ModelConfig):
  return jnp.bfloat16 if cfg.dtype == "bfloat16" else jnp.float32


def init_cache(cfg: ModelConfig, batch: int, slots: int, dtype=None) -> dict:
  """An empty KV cache (every slot invalid), k / v in the compute dtype."""
  shape, dt = cache_shape(cfg, batch, slots), dtype or compute_dtype(cfg)
  if cfg.scan_layers:
    kv = lambda: jnp.zeros((cfg.n_layers,) + shape, dt)
  else:
    kv = lambda: [jnp.zeros(shape, dt) for _ in range(cfg.n_layers)]
  return {"k": kv(), "v": kv(), "valid": jnp.zeros((batch, slots), bool)}


def cache_shardings(cfg: ModelConfig, mesh, batch: int, slots: int,
                    batch_axis: str | None = "batch") -> dict:
  """NamedShardings of `init_cache(cfg, batch, slots)`, the same pytree.
  `batch_axis=None` replicates the rows (a one-row shared prefix)."""
  axes = (batch_axis,) + CACHE_AXES[1:]
  shape = cache_shape(cfg, batch, slots)
  if cfg.scan_layers:
    kv = logical_sharding((None,) + axes, mesh, (cfg.n_layers,) + shape)
  else:
    kv = [logical_sharding(axes, mesh, shape)] * cfg.n_layers
  return {"k": kv, "v": kv, "valid": logical_sharding((batch_axis, "length"), mesh, (batch, slots))}


def map_cache(fn, cache: dict) -> dict:
  """`fn` applied to each layer's k and v (axes CACHE_AXES) and to `valid`
  (B, S), in either layout: code that reshapes a cache sees one layer at a time."""
  def kv(x):
    return [fn(a) for a in x] if isinstance(x, (list, tuple)) else jax.vmap(fn)(x)
  return {"k": kv(cache["k"]), "v": kv(cache["v"]), "valid": fn(cache["valid"])}


def positions_from_mask(mask: jax.Array) -> jax.Array:
  """Position of each token among the real tokens of its row (0-based)."""
  return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)


def last_token_index(mask: jax.Array) -> jax.Array:
  """Index of the last real token of each row (works for either padding side)."""
  idx = jnp.arange(mask.shape[-1])
  return jnp.max(jnp.where(mask, idx, -1), axis=-1)


def rope_inv_freq(cfg: ModelConfig) -> jax.Array:
  d = cfg.head_dim
  inv = 1.0 / (cfg.rope_theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d))
  sc = cfg.rope_scaling
  if not sc:
    return inv
  if sc["rope_type"] == "linear":
    return inv / sc["factor"]
  # llama3: keep high frequencies, divide low ones by `factor`, blend between.
  factor, lo, hi = sc["factor"], sc["low_freq_factor"], sc["high_freq_factor"]
  old = sc["original_max_position_embeddings"]
  wavelen = 2 * math.pi / inv
  scaled = jnp.where(wavelen > old / lo, inv / factor, inv)
  smooth = (old / wavelen - lo) / (hi - lo)
  blended = (1 - smooth) * scaled / factor + smooth * scaled
  medium = (wavelen >= old / hi) & (wavelen <= old / lo)
  return jnp.where(medium, blended, scaled)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
  """HF "rotate half" convention: pairs (i, i + D/2) rotate together."""
  ang = positions[..., None].astype(jnp.float32) * inv_freq          # (B, T, D/2)
  cos = jnp.cos(jnp.concatenate([ang, ang], -1))[:, :, None, :]
  sin = jnp.sin(jnp.concatenate([ang, ang], -1))[:, :, None, :]
  xf = x.astype(jnp.float32)
  x1, x2 = jnp.split(xf, 2, axis=-1)
  rotated = jnp.concatenate([-x2, x1], -1)
  return (xf * cos + rotated * sin).astype(x.dtype)


class RMSNorm(nnx.Module):
  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.plus_one = cfg.norm_plus_one
    init = jnp.zeros if self.plus_one else jnp.ones
    self.scale = _param(rngs, None, ("norm",), value=init((cfg.d_model,), jnp.float32))
    self.eps = cfg.norm_eps

  def __call__(self, x):
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
    w = self.scale[...]
    return (y * (1.0 + w if self.plus_one else w)).astype(x.dtype)


class Attention(nnx.Module):
  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    d, h, kv, hd, std = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.init_std
    self.cfg = cfg
    self.q = _param(rngs, (d, h, hd), ("embed", "heads", "head_dim"), std)
    self.k = _param(rngs, (d, kv, hd), ("embed", "kv_heads", "head_dim"), std)
    self.v = _param(rngs, (d, kv, hd), ("embed", "kv_heads", "head_dim"), std)
    self.o = _param(rngs, (h, hd, d), ("heads", "head_dim", "embed"), std)
    if cfg.qkv_bias:
      self.q_bias = _param(rngs, None, ("heads", "head_dim"), value=jnp.zeros((h, hd)))
      self.k_bias = _param(rngs, None, ("kv_heads", "head_dim"), value=jnp.zeros((kv, hd)))
      self.v_bias = _param(rngs, None, ("kv_heads", "head_dim"), value=jnp.zeros((kv, hd)))

  def __call__(self, x, positions, key_valid, slot0, inv_freq, layer_cache):
    cfg, dt = self.cfg, x.dtype
    q = dense(x, self.q[...])
    k = dense(x, self.k[...])
    v = dense(x, self.v[...])
    if cfg.qkv_bias:
      q, k, v = (q + self.q_bias[...].astype(dt), k + self.k_bias[...].astype(dt),
                 v + self.v_bias[...].astype(dt))
    q = constrain(apply_rope(q, positions, inv_freq), ("batch", "length", "heads", None))
    # (B, T, KV, D) -> the cache's (B, KV, T, D), cached or not: one attention code path
    k = apply_rope(k, positions, inv_freq).transpose(0, 2, 1, 3)
    v = v.transpose(0, 2, 1, 3)
    if layer_cache is not None:
      k = jax.lax.dynamic_update_slice_in_dim(layer_cache["k"], k.astype(layer_cache["k"].dtype), slot0, 2)
      v = jax.lax.dynamic_update_slice_in_dim(layer_cache["v"], v.astype(layer_cache["v"].dtype), slot0, 2)
      layer_cache = {"k": k, "v": v}
    b, t, h, hd = q.shape
    kvh, s = k.shape[1], k.shape[2]
    q = q.reshape(b, t, kvh, h // kvh, hd)
    q_slot = slot0 + jnp.arange(t)
    allowed = key_valid[:, None, :] & (jnp.arange(s)[None, None, :] <= q_slot[None, :, None])
    attend = decode_attention if t == 1 else full_attention
    out = attend(q, k, v, allowed, dt)
    return dense(out.reshape(b, t, h, hd), self.o[...], n_in=2), layer_cache


class MLP(nnx.Module):
  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    d, f, std = cfg.d_model, cfg.d_ff, cfg.init_std
    self.act = cfg.activation
    self.gate = _param(rngs, (d, f), ("embed", "mlp"), std)
    self.up = _param(rngs, (d, f), ("embed", "mlp"), std)
    self.down = _param(rngs, (f, d), ("mlp", "embed"), std)

  def __call__(self, x):
    g = dense(x, self.gate[...])
    g = jax.nn.gelu(g, approximate=True) if self.act == "gelu_tanh" else jax.nn.silu(g)
    hid = constrain(g * dense(x, self.up[...]), ("batch", "length", "mlp"))
    return dense(hid, self.down[...])


class Block(nnx.Module):
  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.attn_norm = RMSNorm(cfg, rngs)
    self.attn = Attention(cfg, rngs)
    self.mlp_norm = RMSNorm(cfg, rngs)
    self.mlp = MLP(cfg, rngs)

  def __call__(self, x, positions, key_valid, slot0, inv_freq, layer_cache):
    a, layer_cache = self.attn(self.attn_norm(x), positions, key_valid, slot0, inv_freq, layer_cache)
    x = x + a
    x = x + self.mlp(self.mlp_norm(x))
    return constrain(x, ("batch", "length", None)), layer_cache


def stacked_blocks(cfg: ModelConfig, rngs: nnx.Rngs) -> Block:
  """One Block whose parameters carry a leading layer axis of size L (each layer
  initialised from its own key); the layer axis is never sharded."""
  keys = jax.random.split(rngs.params(), cfg.n_layers)
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: Block(cfg, nnx.Rngs(0))))
  state = jax.vmap(lambda k: nnx.split(Block(cfg, nnx.Rngs(params=k)))[1])(keys)
  for _, var in nnx.to_flat_state(state):
    var.set_metadata(logical_axes=(None,) + tuple(var.get_metadata()["logical_axes"]))
  return nnx.merge(graphdef, state)


def remat(fn, policy: str):
  """`fn` rematerialised under `model.remat` (see the module docstring)."""
  if policy == "none":
    return fn
  saveable = None if policy == "full" else jax.checkpoint_policies.save_only_these_names("proj")
  return jax.checkpoint(fn, policy=saveable, prevent_cse=False)


def to_layout(tree, scan_layers: bool):
  """A parameter tree (pure dict, or any dict with a "layers" entry at any
  depth) in the scanned layout (`layers` = one dict of (L, ...) arrays) or the
  unrolled one (`layers` = {0: {...}, 1: {...}, ...}); the identity if already so."""
  if not isinstance(tree, dict):
    return tree
  out = {}
  for key, val in tree.items():
    if key == "layers" and isinstance(val, dict):
      unrolled = all(isinstance(k, int) for k in val)
      if scan_layers and unrolled:
        val = jax.tree.map(lambda *xs: jnp.stack(xs), *(val[i] for i in range(len(val))))
      elif not scan_layers and not unrolled:
        n = jax.tree.leaves(val)[0].shape[0]
        val = {i: jax.tree.map(lambda x, i=i: x[i], val) for i in range(n)}
      out[key] = val
    else:
      out[key] = to_layout(val, scan_layers)
  return out


class Transformer(nnx.Module):
  """Causal LM. `lm_head=False` builds the trunk only (reward / value models)."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, lm_head: bool = True):
    self.cfg = cfg
    self.embed = _param(rngs, (cfg.vocab_size, cfg.d_model), ("vocab", "embed"), cfg.init_std)
    if cfg.scan_layers:
      self.layers = stacked_blocks(cfg, rngs)
    else:
      self.layers = nnx.List([Block(cfg, rngs) for _ in range(cfg.n_layers)])
    self.final_norm = RMSNorm(cfg, rngs)
    self.lm_head = nnx.data(None)
    if lm_head and not cfg.tie_embeddings:
      self.lm_head = _param(rngs, (cfg.d_model, cfg.vocab_size), ("embed", "vocab"), cfg.init_std)

  @property
  def compute_dtype(self):
    return compute_dtype(self.cfg)

  def init_cache(self, batch: int, slots: int, dtype=None) -> dict:
    return init_cache(self.cfg, batch, slots, dtype)

  def hidden(self, tokens, mask, positions=None, cache=None, cache_index=0):
    """Final-normed hidden states (B, T, d) and the updated cache (or None)."""
    if positions is None:
      positions = positions_from_mask(mask)
    x = embedding_lookup(self.embed[...], tokens, self.compute_dtype)
    if self.cfg.scale_embeddings:
      x = x * jnp.asarray(math.sqrt(self.cfg.d_model), self.compute_dtype)
    x = constrain(x, ("batch", "length", None))
    inv_freq = rope_inv_freq(self.cfg)
    if cache is None:
      key_valid, slot0, new_cache = mask.astype(bool), 0, None
    else:
      key_valid = jax.lax.dynamic_update_slice_in_dim(
          cache["valid"], mask.astype(bool), cache_index, 1)
      slot0, new_cache = cache_index, {"k": [], "v": [], "valid": key_valid}
    # Every layer has the same graph: one graphdef, the parameters as a pytree
    # argument, so the layer function can be scanned and rematerialised.
    first = self.layers if self.cfg.scan_layers else self.layers[0]
    graphdef = nnx.graphdef(first)

    @functools.partial(remat, policy=self.cfg.remat)
    def layer_fn(state, x, lc):
      return nnx.merge(graphdef, state)(x, positions, key_valid, slot0, inv_freq, lc)

    if self.cfg.scan_layers:
      kv = None if cache is None else {"k": cache["k"], "v": cache["v"]}
      x, kv = jax.lax.scan(lambda x, xs: layer_fn(*xs[:1], x, xs[1]), x,
                           (nnx.state(self.layers), kv))
      if cache is not None:
        new_cache.update(kv)
      return self.final_norm(x), new_cache
    for i, layer in enumerate(self.layers):
      lc = None if cache is None else {"k": cache["k"][i], "v": cache["v"][i]}
      x, lc = layer_fn(nnx.state(layer), x, lc)
      if cache is not None:
        new_cache["k"].append(lc["k"])
        new_cache["v"].append(lc["v"])
    return self.final_norm(x), new_cache

  def logits(self, h):
    w = self.embed[...].T if self.lm_head is None else self.lm_head[...]
    return dense(h, w).astype(jnp.float32)

  def __call__(self, tokens, mask, positions=None, cache=None, cache_index=0):
    """Logits (B, T, V) in float32 and the updated cache (or None)."""
    h, cache = self.hidden(tokens, mask, positions, cache, cache_index)
    return self.logits(h), cache


class ScalarModel(nnx.Module):
  """Transformer trunk + linear head: a reward (last real token) or value model.

  The head is initialised N(0, 1/(d_model + 1)) so the initial rewards have
  unit-order scale whatever the width.
  """

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.trunk = Transformer(cfg, rngs, lm_head=False)
    std = 1.0 / math.sqrt(cfg.d_model + 1)
    self.head = _param(rngs, (cfg.d_model,), ("embed",), std)
    self.head_bias = _param(rngs, None, (), value=jnp.zeros((), jnp.float32))

  def per_token(self, tokens, mask, positions=None):
    """Scalar at every position (B, T), float32 (value model)."""
    h, _ = self.trunk.hidden(tokens, mask, positions)
    return h.astype(jnp.float32) @ self.head[...] + self.head_bias[...]

  def __call__(self, tokens, mask, positions=None):
    """Scalar read at the last real token of each row (B,) (reward model)."""
    h, _ = self.trunk.hidden(tokens, mask, positions)
    last = h[jnp.arange(h.shape[0]), last_token_index(mask)].astype(jnp.float32)
    return last @ self.head[...] + self.head_bias[...]
