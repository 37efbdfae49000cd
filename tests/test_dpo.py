"""DPO: the loss in closed form, its gradient at policy = reference, the two
reference modes agree, learning a preference rule, exact resume after SIGKILL."""
import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rlaif_jax.config import load_config_file
from rlaif_jax.learners import dpo
from rlaif_jax.mesh import global_batch
from rlaif_jax.models import ModelConfig, Transformer, init_sharded

ROOT = pathlib.Path(__file__).resolve().parents[1]
CFG = ModelConfig(vocab_size=32, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                  head_dim=8, d_ff=64)


def _log_sigmoid(x):
  return -math.log1p(math.exp(-x)) if x > 0 else x - math.log1p(math.exp(x))


def config(**train):
  c = load_config_file(str(ROOT / "configs" / "dpo.py") + ":toy")
  c.train.update(checkpoint_every=10_000, log_every=10_000, **train)
  return c


# ------------------------------------------------------------ closed form

HAND = [  # log π(y_a), log π(y_b), log π_ref(y_a), log π_ref(y_b)
    (-12.0, -15.5, -13.0, -14.0),
    (-3.2, -2.1, -3.0, -2.9),
    (-40.0, -41.0, -38.5, -44.0),
]


@pytest.mark.parametrize("lp", HAND)
@pytest.mark.parametrize("p,eps", [(0.7, 0.0), (0.2, 0.0), (1.0, 0.0), (0.0, 0.0),
                                   (1.0, 0.1), (0.8, 0.25)])
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_loss_closed_form(lp, p, eps, beta):
  pa, pb, ra, rb = lp
  delta = (pa - ra) - (pb - rb)
  q = (1 - eps) * p + eps * (1 - p)
  want = -(q * _log_sigmoid(beta * delta) + (1 - q) * _log_sigmoid(-beta * delta))
  got = dpo.dpo_loss(*map(np.float32, lp), np.float32(p), beta, eps)
  assert abs(float(got) - want) < 1e-5
  if p in (0.0, 1.0) and eps == 0.0:   # hard labels: the DPO paper's −log σ(β(Δ_w − Δ_l))
    w = delta if p == 1.0 else -delta
    assert abs(float(got) + _log_sigmoid(beta * w)) < 1e-5


def test_smoothing_is_symmetric_and_bounded():
  """Conservative DPO: with ε > 0 the loss of a hard label no longer goes to 0."""
  big = np.float32(200.0)
  z = np.float32(0.0)
  assert float(dpo.dpo_loss(big, z, z, z, np.float32(1.0), 1.0, 0.0)) < 1e-6
  smoothed = float(dpo.dpo_loss(big, z, z, z, np.float32(1.0), 1.0, 0.1))
  assert abs(smoothed - 0.1 * 200.0) < 1e-3          # ε·βΔ from the −log σ(−βΔ) term


# ------------------------------------------------------------ sequence log-probs

def synthetic_pairs(n, seed, soft=1.0):
  """Prompt: 4 random tokens, then 8 response tokens (EOS-free synthetic layout), right-
  padded to 14 for some rows. Preferred response: the one with more tokens < 12."""
  rng = np.random.default_rng(seed)
  t, plen = 14, 4
  prompt = rng.integers(3, 32, (n, plen))
  ra, rb = rng.integers(3, 32, (n, 8)), rng.integers(3, 32, (n, 8))
  score_a, score_b = (ra < 12).sum(1), (rb < 12).sum(1)
  keep = score_a != score_b
  prompt, ra, rb, score_a, score_b = prompt[keep], ra[keep], rb[keep], score_a[keep], score_b[keep]
  a_wins = (score_a > score_b).astype(np.float32)
  m = len(ra)
  batch = {}
  for name, r in (("a", ra), ("b", rb)):
    tokens = np.zeros((m, t), np.int32)
    tokens[:, :plen + 8] = np.concatenate([prompt, r], 1)
    mask = np.arange(t)[None].repeat(m, 0) < plen + 8
    batch[f"tokens_{name}"] = tokens
    batch[f"mask_{name}"] = mask
    batch[f"response_mask_{name}"] = mask & (np.arange(t)[None] >= plen)
  batch["label"] = np.where(a_wins > 0, soft, 1 - soft).astype(np.float32)
  batch["human_label"] = a_wins
  return batch


def rows(batch, i, j):
  return {k: v[i:j] for k, v in batch.items()}


@pytest.mark.parametrize("chunk", [0, 3, 4])
def test_sequence_logprobs_are_response_sums(chunk, mesh):
  """Per-row sums of the response tokens' log-probs, padding ignored, with the
  LM head whole or `chunk` positions at a time (model.logits_chunk)."""
  model = init_sharded(lambda r: Transformer(CFG, r), mesh, seed=1)
  batch = rows(synthetic_pairs(64, 5), 0, 8)
  # a different response length on one side, to see padding ignored
  batch["mask_b"][:, 10:] = False
  batch["response_mask_b"][:, 10:] = False
  batch["tokens_b"][:, 10:] = 0
  with jax.set_mesh(mesh):
    lp_a, lp_b = nnx.jit(lambda m, b: dpo.pair_logprobs(m, b, chunk))(model, batch)
    logits, _ = nnx.jit(lambda m, t, k: m(t, k))(model, batch["tokens_b"], batch["mask_b"])
  logits = np.asarray(logits, np.float64)
  logp = logits - logits.max(-1, keepdims=True)
  logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
  want = [sum(logp[b, t - 1, batch["tokens_b"][b, t]] for t in range(1, 14)
              if batch["response_mask_b"][b, t]) for b in range(8)]
  np.testing.assert_allclose(np.asarray(lp_b), want, rtol=1e-5)
  # the single stacked forward equals separate forwards of each side
  with jax.set_mesh(mesh):
    alone = nnx.jit(dpo.sequence_logprobs)(model, batch["tokens_a"], batch["mask_a"],
                                           batch["response_mask_a"])
  np.testing.assert_allclose(np.asarray(lp_a), np.asarray(alone), rtol=1e-5)


def test_chunked_logits_give_the_same_dpo_loss_and_gradients(mesh):
  """model.logits_chunk in DPO: loss, metrics and gradients (the reference
  computed in the step from the frozen params, as in training) equal the whole
  computation's."""
  model = init_sharded(lambda r: Transformer(CFG, r), mesh, seed=3)
  graphdef, params = nnx.split(model)
  ref = nnx.to_pure_dict(nnx.split(init_sharded(lambda r: Transformer(CFG, r), mesh, seed=4))[1])
  batch = rows(synthetic_pairs(64, 7, soft=0.8), 0, 8)

  def run(chunk):
    fn = dpo.make_loss_fn(graphdef, 0.5, 0.1, chunk)
    return jax.jit(jax.value_and_grad(lambda p: fn(nnx.merge(graphdef, p), batch,
                                                   ref_params=ref), has_aux=True))(params)
  with jax.set_mesh(mesh):
    (l0, m0), g0 = run(0)
    (l1, m1), g1 = run(5)
  assert float(l0) != pytest.approx(math.log(2), abs=1e-3)   # policy ≠ reference
  np.testing.assert_allclose(float(l1), float(l0), rtol=1e-6)
  for k in m0:
    np.testing.assert_allclose(float(m1[k]), float(m0[k]), rtol=1e-5, atol=1e-6, err_msg=k)
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------ policy = reference

def test_policy_equals_reference_loss_log2_and_gradient(mesh):
  """At π = π_ref, Δ = 0 so L = log 2 for any p, and ∇L = −β·mean((p − ½)·∇Δ)."""
  beta = 0.3
  model = init_sharded(lambda r: Transformer(CFG, r), mesh, seed=2)
  graphdef, params = nnx.split(model)
  params = nnx.to_pure_dict(params)
  batch = rows(synthetic_pairs(64, 6, soft=0.8), 0, 8)
  with jax.set_mesh(mesh):
    ref_a, ref_b = jax.jit(dpo.reference_logprobs, static_argnums=0)(graphdef, params, batch)
    full = dict(batch, ref_logp_a=ref_a, ref_logp_b=ref_b)
    loss_fn = dpo.make_loss_fn(graphdef, beta)

    def loss(p):
      return loss_fn(nnx.merge(graphdef, p), full)[0]

    def linear(p):       # −β·mean((p − ½)·Δ) with the reference held fixed
      a, b = dpo.pair_logprobs(nnx.merge(graphdef, p), batch)
      return -beta * jnp.mean((batch["label"] - 0.5) * ((a - ref_a) - (b - ref_b)))
    value, grads = jax.jit(jax.value_and_grad(loss))(params)
    want = jax.jit(jax.grad(linear))(params)
  assert abs(float(value) - math.log(2)) < 1e-6
  for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-8)
  assert float(sum(jnp.sum(jnp.abs(g)) for g in jax.tree.leaves(grads))) > 0


def test_one_sgd_step_moves_toward_labeled_response(tmp_path, mesh):
  """One SGD step from π = π_ref raises the labeled response's log-ratio over the other's
  (for either label, each from a fresh start), and leaves the reference untouched."""
  c = config(optimizer="sgd", lr=0.5, grad_clip=0.0, warmup_steps=0, schedule="constant",
             steps=1)
  model = init_sharded(lambda r: Transformer(CFG, r), mesh, seed=3)
  tr = dpo.make_trainer(c, str(tmp_path), mesh, model)
  start = {k: v for k, v in tr.state.items() if k != "params"}
  pair = rows(synthetic_pairs(64, 7), 0, 1)
  batch = {k: np.repeat(v, 8, 0) for k, v in pair.items()}
  logprobs = jax.jit(dpo.reference_logprobs, static_argnums=0)
  for label in (1.0, 0.0):
    with jax.set_mesh(mesh):      # restart from π = π_ref (SGD has no optimizer state)
      tr.state = {**jax.tree.map(jnp.copy, start), "params": dpo.copy_params(tr.frozen)}
    batch["label"][:] = label
    metrics = tr.step(batch)
    assert abs(float(metrics["loss"]) - math.log(2)) < 1e-6
    with jax.set_mesh(mesh):
      ref = logprobs(tr.graphdef, tr.frozen, batch)
      pol = logprobs(tr.graphdef, tr.state["params"], batch)
    delta = float((pol[0] - ref[0])[0] - (pol[1] - ref[1])[0])
    assert (delta > 1e-4) if label == 1.0 else (delta < -1e-4), (label, delta)
  # the reference is still the initial parameters
  init = nnx.to_pure_dict(nnx.state(init_sharded(lambda r: Transformer(CFG, r), mesh, seed=3)))
  for x, y in zip(jax.tree.leaves(tr.frozen), jax.tree.leaves(init)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ------------------------------------------------------------ the two reference modes

def test_precomputed_reference_gives_the_same_training(tmp_path, mesh):
  """The whole-data-set cache (50 pairs, batches of 16 straddling epochs) gives the
  same losses and parameters as reference log-probs computed in the step."""
  from rlaif_jax.data import toy
  from rlaif_jax.data.batches import data_iterator
  from rlaif_jax.models.build import build
  from rlaif_jax.models.tokenizer import load_tokenizer
  c = config(batch_size=16, steps=4, grad_accum=2)
  path = tmp_path / "pairs.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in toy.pairs(50, seed=3, soft=0.8)))
  c.data.update(source="jsonl", jsonl_path=str(path))
  c.model.arch.update(d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=16, d_ff=64)
  tok = load_tokenizer(c.model.tokenizer)
  model_a = build(c.model, mesh, "lm", tok, c.seed)
  model_b = build(c.model, mesh, "lm", tok, c.seed)
  in_step = dpo.make_trainer(c, str(tmp_path / "a"), mesh, model_a)
  cached = dpo.make_trainer(c, str(tmp_path / "b"), mesh, model_b)
  cache = dpo.reference_cache(c, tok, mesh, cached.graphdef, cached.frozen)
  assert len(cache) == 50
  cached.frozen = None          # the cached mode must not need it any more
  it_a = data_iterator(c, tok, "pairs")
  it_b = dpo.WithReference(data_iterator(c, tok, "pairs"), cache)
  for _ in range(4):               # 64 rows > 50: a second, reshuffled epoch
    ma, mb = in_step.step(next(it_a)), cached.step(next(it_b))
    for k in ("loss", "accuracy", "reward_margin", "chosen_drift", "rejected_drift"):
      np.testing.assert_allclose(float(mb[k]), float(ma[k]), rtol=1e-5, atol=1e-6)
  assert float(ma["chosen_drift"]) != 0.0     # training moved the policy
  for x, y in zip(jax.tree.leaves(in_step.state["params"]), jax.tree.leaves(cached.state["params"])):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------ learning

def test_learns_preference_rule_held_out(tmp_path, mesh):
  train = synthetic_pairs(4096, 0, soft=0.9)      # soft labels in training
  test = synthetic_pairs(512, 1)
  c = config(batch_size=64, steps=150, lr=3e-3, warmup_steps=10, schedule="cosine")
  c.dpo.beta = 0.1
  model = init_sharded(lambda r: Transformer(CFG, r), mesh, seed=0)
  tr = dpo.make_trainer(c, str(tmp_path), mesh, model)
  n = len(train["label"]) // 64

  class It:
    i = 0

    def __next__(self):
      j = self.i % n
      self.i += 1
      return rows(train, j * 64, (j + 1) * 64)

  n_test = len(test["label"]) // 64 * 64
  batches = [global_batch(rows(test, i, i + 64), mesh) for i in range(0, n_test, 64)]
  batches = dpo.with_reference(batches, tr.graphdef, tr.frozen, mesh)
  eval_metrics = dpo.make_eval_metrics(c.dpo.beta)
  before = tr.evaluate(batches, eval_metrics)
  tr.fit(It())
  after = tr.evaluate(batches, eval_metrics)
  assert before["accuracy_human"] < 0.6 and abs(before["loss"] - math.log(2)) < 1e-5, before
  assert after["accuracy_human"] > 0.9, after
  assert after["accuracy"] == after["accuracy_human"]        # hard test labels
  assert after["reward_margin"] > 0 and after["chosen_drift"] > after["rejected_drift"], after

# Exact resume after SIGKILL: tests/test_resume.py (shared with SFT and RM).
