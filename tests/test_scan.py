"""Scanned layers (`scan_layers`) and rematerialisation (`remat`) against the
unrolled model, which is the reference: same parameters (converted with
`to_layout`), so logits, gradients, samples and scores must agree."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rlaif_jax.learners.sft import sft_loss
from rlaif_jax.models import ModelConfig, ScalarModel, Transformer, init_sharded, store
from rlaif_jax.models.transformer import to_layout

CFG = ModelConfig(vocab_size=96, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2,
                  head_dim=8, d_ff=64, max_seq_len=64, family="gemma")


def pair(mesh, cfg=CFG, seed=1, ctor=Transformer, **scanned):
  """(unrolled model, scanned model with the same parameters)."""
  ref = init_sharded(lambda r: ctor(cfg, r), mesh, seed=seed)
  scan = init_sharded(lambda r: ctor(cfg.replace(scan_layers=True, **scanned), r), mesh, seed=seed + 1)
  nnx.update(scan, to_layout(nnx.to_pure_dict(nnx.state(ref)), True))
  return ref, scan


def batch(seed=0, b=4, t=12):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(3, t + 1, b)
  mask = np.arange(t)[None] < lengths[:, None]
  tokens = np.where(mask, rng.integers(1, CFG.vocab_size, (b, t)), 0).astype(np.int32)
  resp = (np.arange(t)[None] >= 2) & mask
  return {"tokens": tokens, "mask": mask, "response_mask": resp}


def test_scanned_parameters_are_stacked_and_unsharded_on_the_layer_axis(mesh):
  _, scan = pair(mesh)
  q = scan.layers.attn.q[...]
  assert q.shape == (3, 32, 4, 8)
  assert q.sharding.spec[0] is None and q.sharding.spec[1] == "fsdp"
  ref_q = to_layout(nnx.to_pure_dict(nnx.state(scan)), False)["layers"][2]["attn"]["q"]
  np.testing.assert_array_equal(np.asarray(ref_q), np.asarray(q[2]))


def test_scan_equals_unrolled_logits(mesh):
  ref, scan = pair(mesh)
  b = batch()
  fwd = nnx.jit(lambda m, t, k: m(t, k)[0])
  with jax.set_mesh(mesh):
    want, got = fwd(ref, b["tokens"], b["mask"]), fwd(scan, b["tokens"], b["mask"])
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)


@pytest.mark.parametrize("remat", ["none", "full", "dots"])
def test_scan_and_remat_gradients_equal_unrolled(remat, mesh):
  """float32: every parameter's gradient within 1e-5 of the unrolled model's
  (the reference also checks that remat recomputes, not changes, the math)."""
  ref, scan = pair(mesh, remat=remat)
  b = batch(seed=1)

  @jax.jit
  def grads(graphdef, params, b):
    return jax.grad(lambda p: sft_loss(nnx.merge(graphdef, p), b)[0])(params)
  with jax.set_mesh(mesh):
    g_ref = grads(*nnx.split(ref), b)
    g_scan = grads(*nnx.split(scan), b)
  g_scan = to_layout(nnx.to_pure_dict(g_scan), False)
  g_ref = nnx.to_pure_dict(g_ref)
  assert jax.tree.structure(g_scan) == jax.tree.structure(g_ref)
  for (path, a), c in zip(jax.tree_util.tree_leaves_with_path(g_ref), jax.tree.leaves(g_scan)):
    assert float(jnp.max(jnp.abs(a))) > 0, path
    np.testing.assert_allclose(np.asarray(c), np.asarray(a), atol=1e-5, rtol=0, err_msg=str(path))


def test_remat_policies_save_what_they_say():
  """What the backward pass keeps per layer: everything (none), the projection
  outputs (dots) or only the layer inputs (full) – read from JAX's own list of
  saved residuals."""
  from jax._src.ad_checkpoint import saved_residuals
  counts = {}
  for remat in ("none", "dots", "full"):
    cfg = CFG.replace(scan_layers=True, remat=remat, n_layers=2)
    graphdef, params = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(0))))
    b = {k: jnp.asarray(v) for k, v in batch().items()}
    res = saved_residuals(lambda p: sft_loss(nnx.merge(graphdef, p), b)[0], params)
    counts[remat] = len(res)
  assert counts["full"] < counts["dots"] < counts["none"], counts


def test_scan_sampler_output_equals_unrolled(mesh):
  from rlaif_jax.models.tokenizer import load_tokenizer
  from rlaif_jax.sampling import Sampler, SamplingConfig
  ref, scan = pair(mesh, CFG.replace(vocab_size=320))
  tok = load_tokenizer("byte")
  rng = np.random.default_rng(0)
  lengths = np.array([7, 3, 1, 5, 6, 2, 7, 4])
  mask = np.arange(7)[None] >= 7 - lengths[:, None]
  tokens = np.where(mask, rng.integers(3, 320, (8, 7)), 0).astype(np.int32)
  for cfg in (SamplingConfig(max_new_tokens=6), SamplingConfig(max_new_tokens=6, temperature=0.9)):
    a = Sampler(ref, mesh, eos_id=-1, tokenizer=tok)(tokens, mask, cfg, seed=5)
    b = Sampler(scan, mesh, eos_id=-1, tokenizer=tok)(tokens, mask, cfg, seed=5)
    np.testing.assert_array_equal(b.tokens, a.tokens)
    np.testing.assert_allclose(b.logprobs, a.logprobs, atol=1e-5)


def test_scan_labeler_prefix_cache_equals_unrolled(mesh):
  """The labeler's cached two-order scoring (prefix KV broadcast, widened and
  repeated per tail) in the stacked cache layout."""
  from rlaif_jax.labeler.engine import ScoringEngine
  ref, scan = pair(mesh, CFG.replace(vocab_size=320))
  ctx = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]
  tails = [[[20, 21], [22, 23, 24]], [[25], [26, 27]], [[28, 29, 30], [31]]]
  out = []
  for m in (ref, scan):
    eng = ScoringEngine(m, mesh, pad_id=0, batch_size=4, bucket=8)
    eng.set_prefix("p", [1, 2, 3, 4])
    out.append(eng.score("p", ctx, tails, [40, 41]))
  for k in out[0]:
    np.testing.assert_allclose(out[1][k], out[0][k], atol=1e-5, err_msg=k)


@pytest.mark.parametrize("kind", ["lm", "scalar"])
@pytest.mark.parametrize("saved_scan", [False, True])
def test_checkpoint_loads_in_the_other_layout(kind, saved_scan, tmp_path, mesh):
  ctor = Transformer if kind == "lm" else ScalarModel
  model = init_sharded(lambda r: ctor(CFG.replace(scan_layers=saved_scan), r), mesh, seed=4)
  store.save(model, str(tmp_path / "m"))
  back = store.load(str(tmp_path / "m"), mesh, scan_layers=not saved_scan)
  assert store.model_cfg_of(back).scan_layers is (not saved_scan)
  want = to_layout(nnx.to_pure_dict(nnx.state(model)), not saved_scan)
  got = nnx.to_pure_dict(nnx.state(back))
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert a.sharding.is_equivalent_to(b.sharding, a.ndim) or not a.sharding.is_fully_replicated
  if kind == "lm":     # an LM checkpoint seeds a scanned reward model's trunk
    rm = store.load(str(tmp_path / "m"), mesh, kind="scalar", scan_layers=True)
    q = rm.trunk.layers.attn.q[...]
    np.testing.assert_array_equal(np.asarray(q), np.asarray(to_layout(
        nnx.to_pure_dict(nnx.state(model)), True)["layers"]["attn"]["q"]))
