"""Gradient accumulation is the whole batch's mean, for every learner on the Trainer.

One SGD step (lr 1, no clipping) on a batch of 16 rows of unequal length, with
train.grad_accum = 1 and 4: the parameter change (= −gradient) and the loss
must agree. A Trainer that averaged the micro-batches' own means (the mutant
the weighting fixes) over-weights the tokens of short micro-batches; each test
checks that this mutant is far off on its batch, so the comparison has teeth.
"""
import types

import jax
import numpy as np
import pytest
from flax import nnx

from rlaif_jax.config import base_config
from rlaif_jax.learners import dpo, reward, rl
from rlaif_jax.learners.sft import sft_loss
from rlaif_jax.learners.trainer import Trainer
from rlaif_jax.models import ModelConfig, ScalarModel, Transformer, init_sharded

CFG = ModelConfig(vocab_size=32, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=8,
                  d_ff=32)
ROWS, ACCUM = 16, 4


def without_weight(loss_fn):
  """The mutant: every micro-batch counts the same, whatever its size."""
  def f(*args):
    loss, aux = loss_fn(*args)
    return loss, {k: v for k, v in aux.items() if k != "weight"}
  return f


def one_step(mesh, workdir, make_model, loss_fn, batch, accum, frozen=None):
  """(loss, gradient as a flat vector) of one SGD step."""
  c = base_config()
  c.train.update(batch_size=ROWS, steps=1, optimizer="sgd", lr=1.0, grad_clip=0.0,
                 warmup_steps=0, schedule="constant", grad_accum=accum, checkpoint_every=1000)
  tr = Trainer(c, str(workdir), mesh, make_model(), loss_fn, frozen=frozen)
  before = [np.array(x) for x in jax.tree.leaves(tr.state["params"])]
  metrics = tr.step(batch)
  after = [np.array(x) for x in jax.tree.leaves(tr.state["params"])]
  grad = np.concatenate([(b - a).ravel() for a, b in zip(after, before)])
  return float(metrics["loss"]), grad


def check(mesh, tmp_path, make_model, loss_fn, batch, frozen=None, mutant_detectable=True):
  l1, g1 = one_step(mesh, tmp_path / "one", make_model, loss_fn, batch, 1, frozen)
  l4, g4 = one_step(mesh, tmp_path / "four", make_model, loss_fn, batch, ACCUM, frozen)
  rel = lambda g: np.linalg.norm(g - g1) / np.linalg.norm(g1)
  assert np.linalg.norm(g1) > 0
  assert l4 == pytest.approx(l1, rel=1e-5), (l4, l1)
  assert rel(g4) < 1e-5, rel(g4)
  if mutant_detectable:
    lm, gm = one_step(mesh, tmp_path / "mutant", make_model, without_weight(loss_fn), batch,
                      ACCUM, frozen)
    assert abs(lm - l1) > 1e-3 * abs(l1) and rel(gm) > 1e-2, (lm, l1, rel(gm))


def unequal_lengths(rng, n):
  """Response lengths 1..n, skewed so that micro-batch j (rows i·4 + j) of one
  device differs from the others: rows ≡ 0 mod 4 are long, the rest short."""
  lengths = rng.integers(1, 3, ROWS)
  lengths[::ACCUM] = n
  return lengths


def test_sft_token_mean(mesh, tmp_path):
  rng = np.random.default_rng(0)
  p, n = 4, 10
  resp_len = unequal_lengths(rng, n)
  t = np.arange(p + n)[None]
  mask = t < (p + resp_len)[:, None]
  batch = {"tokens": np.where(mask, rng.integers(3, 32, (ROWS, p + n)), 0).astype(np.int32),
           "mask": mask, "response_mask": mask & (t >= p)}
  check(mesh, tmp_path, lambda: init_sharded(lambda r: Transformer(CFG, r), mesh), sft_loss,
        batch)


def test_rl_token_mean(mesh, tmp_path):
  rng = np.random.default_rng(1)
  p, n = 4, 8
  resp = np.arange(n)[None] < unequal_lengths(rng, n)[:, None]
  f = lambda *s: rng.normal(size=s).astype(np.float32)
  batch = dict(tokens=rng.integers(3, 32, (ROWS, p + n)).astype(np.int32),
               mask=np.concatenate([np.ones((ROWS, p), bool), resp], 1), response_mask=resp,
               old_logp=f(ROWS, n) - 3.5, old_values=f(ROWS, n), advantages=f(ROWS, n),
               returns=f(ROWS, n), ref_logp=f(ROWS, n) - 3.5,
               kl_coef=np.full(ROWS, 0.1, np.float32))
  loss_fn = rl.make_loss_fn(types.SimpleNamespace(
      algorithm="ppo", clip_eps=0.2, value_clip=0.2, vf_coef=0.5, entropy_coef=0.01,
      temperature=0.8, kl_penalty="loss", kl_estimator="k3"), n)
  make = lambda: rl.ActorCritic(init_sharded(lambda r: Transformer(CFG, r), mesh), None, mesh)
  check(mesh, tmp_path, make, loss_fn, batch)


def _pairs(rng, p, n, labels):
  batch = {}
  for side in ("a", "b"):
    resp = np.arange(n)[None] < unequal_lengths(rng, n)[:, None]
    batch[f"tokens_{side}"] = rng.integers(3, 32, (ROWS, p + n)).astype(np.int32)
    batch[f"mask_{side}"] = np.concatenate([np.ones((ROWS, p), bool), resp], 1)
    batch[f"response_mask_{side}"] = batch[f"mask_{side}"] & (np.arange(p + n)[None] >= p)
  batch["label"] = labels.astype(np.float32)
  batch["human_label"] = np.full(ROWS, -1.0, np.float32)
  return batch


def test_rm_pair_mean(mesh, tmp_path):
  """Rows are the unit; micro-batches hold equal row counts, so the mutant
  coincides here – the test pins that the weighting keeps the pair mean."""
  rng = np.random.default_rng(2)
  batch = _pairs(rng, 4, 8, rng.uniform(0, 1, ROWS))
  check(mesh, tmp_path, lambda: init_sharded(lambda r: ScalarModel(CFG, r), mesh),
        reward.rm_loss, batch, mutant_detectable=False)


def test_dpo_labeled_pair_mean(mesh, tmp_path):
  """Unlabeled pairs (label −1) carry no loss: the mean is over labeled pairs,
  which here fall unevenly into the micro-batches."""
  rng = np.random.default_rng(3)
  labels = rng.uniform(0, 1, ROWS)
  labels[[1, 2, 3, 5, 6, 7, 9, 10]] = -1.0      # micro-batches 1-3 lose most of their rows
  batch = _pairs(rng, 4, 8, labels)
  model = init_sharded(lambda r: Transformer(CFG, r), mesh)
  graphdef, params = nnx.split(model)
  with jax.set_mesh(mesh):
    ref = dpo.copy_params(nnx.to_pure_dict(params))
  # a reference unlike the policy, so the gradient is not that of π = π_ref alone
  ref = jax.tree.map(lambda x: x * 1.5, ref)
  check(mesh, tmp_path, lambda: init_sharded(lambda r: Transformer(CFG, r), mesh),
        dpo.make_loss_fn(graphdef, 0.5), batch, frozen=ref)
