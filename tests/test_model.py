"""KV-cache decoding, the scalar head, and parameter sharding by the rules table."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import make_mesh
from rlaif_jax.mesh import RULES, logical_to_spec
from rlaif_jax.models import ModelConfig, ScalarModel, Transformer, init_sharded
from rlaif_jax.models.sharding import placed_shardings

CFG = ModelConfig(vocab_size=96, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                  head_dim=8, d_ff=64)


@pytest.mark.parametrize("family,kv_heads,scan", [
    ("llama", 2, False), ("gemma", 2, False), ("qwen2", 2, False), ("llama", 4, False),
    ("llama", 1, False), ("qwen2", 2, True), ("llama", 1, True)])
def test_kv_cache_matches_full_forward_left_padded(family, kv_heads, scan, mesh):
  """Grouped-query (2 of 4), multi-head (4) and multi-query (1) decode paths;
  scan: layers stacked, the cache (L, B, KV, S, D)."""
  cfg = CFG.replace(family=family, n_kv_heads=kv_heads, scan_layers=scan)
  model = init_sharded(lambda r: Transformer(cfg, r), mesh, seed=1)
  rng = np.random.default_rng(0)
  prompt_len, new = 6, 5
  lengths = np.array([6, 3, 1, 4])                    # left-padded prompts
  prompt_mask = np.arange(prompt_len)[None] >= prompt_len - lengths[:, None]
  prompt = np.where(prompt_mask, rng.integers(1, 96, (4, prompt_len)), 0)
  cont = rng.integers(1, 96, (4, new))
  full_tokens = np.concatenate([prompt, cont], 1)
  full_mask = np.concatenate([prompt_mask, np.ones((4, new), bool)], 1)
  with jax.set_mesh(mesh):
    full, _ = nnx.jit(lambda m, t, k: m(t, k))(model, full_tokens, full_mask)
    cache = model.init_cache(4, prompt_len + new)

    @nnx.jit
    def step(m, tok, mask, pos, cache, idx):
      return m(tok, mask, positions=pos, cache=cache, cache_index=idx)

    from rlaif_jax.models import positions_from_mask
    logits, cache = step(model, prompt, prompt_mask, positions_from_mask(prompt_mask), cache, 0)
    got = [logits[:, -1]]
    for i in range(new - 1):
      pos = jnp.asarray(lengths + i)[:, None]
      logits, cache = step(model, cont[:, i:i + 1], np.ones((4, 1), bool), pos, cache,
                           prompt_len + i)
      got.append(logits[:, -1])
  want = np.asarray(full)[:, prompt_len - 1:prompt_len + new - 1]
  np.testing.assert_allclose(np.stack(got, 1), want, atol=2e-5)


def test_scalar_head_reads_last_real_token(mesh):
  model = init_sharded(lambda r: ScalarModel(CFG, r), mesh)
  rng = np.random.default_rng(0)
  toks = rng.integers(1, 96, (2, 7))
  right = np.array([[1] * 5 + [0] * 2, [1] * 7])
  left = right[:, ::-1].copy()
  left_toks = np.stack([np.concatenate([[0, 0], toks[0, :5]]), toks[1]])
  with jax.set_mesh(mesh):
    r_right = model(toks, right.astype(bool))
    r_left = model(left_toks, left.astype(bool))
    per_tok = model.per_token(toks, right.astype(bool))
  np.testing.assert_allclose(r_right, r_left, atol=1e-5)      # padding side is irrelevant
  np.testing.assert_allclose(r_right, [per_tok[0, 4], per_tok[1, 6]], atol=1e-6)
  head = np.asarray(model.head[...])
  assert abs(head.std() - 1 / np.sqrt(CFG.d_model + 1)) < 0.5 / np.sqrt(CFG.d_model + 1)


def _expected_spec(axes, shape, mesh):
  """Independent reading of the rules table: each logical axis -> its mesh axes,
  kept only when they divide the dimension and were not used before."""
  table, used, out = dict(RULES), set(), []
  for name, dim in zip(axes, shape):
    target = table.get(name) if name else None
    target = (target,) if isinstance(target, str) else (target or ())
    ok = [a for a in target if a not in used and dim % mesh.shape[a] == 0]
    used.update(ok)
    out.append(None if not ok else ok[0] if len(ok) == 1 else tuple(ok))
  return jax.sharding.PartitionSpec(*out)


@pytest.mark.parametrize("shape", [(2, 2, 2), (1, 8, 1), (2, 1, 4), (1, 2, 4)])
def test_parameter_shardings_follow_rules(shape):
  mesh = make_mesh(*shape)
  model = init_sharded(lambda r: ScalarModel(CFG.replace(family="qwen2"), r), mesh)
  meta = {p: v.get_metadata()["logical_axes"] for p, v in nnx.to_flat_state(nnx.state(model))}
  values = dict(nnx.to_flat_state(nnx.state(model)))
  sharded_any = False
  for path, sh in placed_shardings(model).items():
    want = _expected_spec(meta[path], values[path][...].shape, mesh)
    assert sh.mesh.shape == mesh.shape
    assert sh.spec == want or tuple(sh.spec) + (None,) * (len(want) - len(sh.spec)) == tuple(want), \
        (path, sh.spec, want)
    sharded_any |= not sh.is_fully_replicated
  assert sharded_any
  # the q kernel (embed, heads, head_dim) really is split as the table says
  q = model.trunk.layers[0].attn.q[...]
  assert q.sharding.shard_shape(q.shape) == (32 // mesh.shape["fsdp"], 4 // mesh.shape["tensor"], 8)


def test_rules_table_drops_axes_that_do_not_divide():
  mesh = make_mesh(2, 2, 2)
  assert logical_to_spec(("embed", "kv_heads"), mesh, (32, 1)) == jax.sharding.PartitionSpec("fsdp", None)
  assert logical_to_spec(("batch", None), mesh, (8, 3)) == jax.sharding.PartitionSpec(("data", "fsdp"), None)
  with pytest.raises(KeyError, match="no rule"):
    logical_to_spec(("nonsense",))


def test_bfloat16_compute_keeps_float32_params_and_tracks_float32(mesh):
  f32 = init_sharded(lambda r: Transformer(CFG, r), mesh, seed=3)
  bf16 = init_sharded(lambda r: Transformer(CFG.replace(dtype="bfloat16"), r), mesh, seed=3)
  assert bf16.layers[0].mlp.up[...].dtype == jnp.float32
  rng = np.random.default_rng(0)
  toks, mask = rng.integers(1, 96, (4, 10)), np.ones((4, 10), bool)
  with jax.set_mesh(mesh):
    a, _ = nnx.jit(lambda m, t, k: m(t, k))(f32, toks, mask)
    b, _ = nnx.jit(lambda m, t, k: m(t, k))(bf16, toks, mask)
  assert b.dtype == jnp.float32                    # logits come back in float32
  assert 0 < float(jnp.max(jnp.abs(a - b))) < 5e-2  # computed in bf16, close to f32


def _cotangent_and_grads(x, w, g):
  """Gradients of sum(matmul(x, w) * g): the VJP at cotangent g."""
  from rlaif_jax.models.ops import matmul
  return jax.jit(jax.grad(lambda x, w: jnp.sum(matmul(x, w).astype(jnp.float32) * g),
                          argnums=(0, 1)))(x, w)


def test_matmul_gradients_float32_equal_autodiff():
  rng = np.random.default_rng(0)
  x, w, g = (jnp.asarray(rng.standard_normal(s), jnp.float32) for s in ((24, 40), (40, 56), (24, 56)))
  dx, dw = _cotangent_and_grads(x, w, g)
  rx, rw = jax.jit(jax.grad(lambda x, w: jnp.sum((x @ w) * g), argnums=(0, 1)))(x, w)
  np.testing.assert_allclose(dx, rx, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dw, rw, rtol=1e-5, atol=1e-5)


def test_matmul_gradients_bfloat16_are_the_float32_dots_of_the_bf16_operands():
  """dx = g·wᵀ rounded to bf16, dw = xᵀ·g kept in float32 for a float32 weight
  (autodiff of the forward would round it to bf16), with g, x, w as bf16 values."""
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((24, 40)), jnp.bfloat16)
  w = jnp.asarray(rng.standard_normal((40, 56)), jnp.float32)
  g = jnp.asarray(rng.standard_normal((24, 56)), jnp.bfloat16).astype(jnp.float32)
  dx, dw = _cotangent_and_grads(x, w, g)
  assert dx.dtype == jnp.bfloat16 and dw.dtype == jnp.float32
  xf, wf = np.asarray(x, np.float64), np.asarray(w.astype(jnp.bfloat16), np.float64)
  gf = np.asarray(g, np.float64)
  np.testing.assert_allclose(np.asarray(dx, np.float64), gf @ wf.T, rtol=1e-2, atol=1e-2)
  np.testing.assert_allclose(np.asarray(dw, np.float64), xf.T @ gf, rtol=1e-5, atol=1e-4)
  assert np.mean(np.asarray(dw) != np.asarray(dw.astype(jnp.bfloat16).astype(jnp.float32))) > 0.9
