"""Reward model: the soft-label loss in closed form, and learning a preference rule."""
import math

import jax
import numpy as np
import pytest

from rlaif_jax.config import base_config
from rlaif_jax.learners import reward
from rlaif_jax.learners.trainer import Trainer, evaluate
from rlaif_jax.mesh import global_batch
from rlaif_jax.models import ModelConfig, ScalarModel, init_sharded


def _log_sigmoid(x):
  return -math.log1p(math.exp(-x))


@pytest.mark.parametrize("r1,r2,p", [(1.3, -0.4, 0.7), (0.0, 2.0, 0.25), (-1.0, -1.0, 0.9),
                                     (5.0, 1.0, 0.0)])
def test_soft_label_loss_closed_form(r1, r2, p):
  want = -(p * _log_sigmoid(r1 - r2) + (1 - p) * _log_sigmoid(r2 - r1))
  got = float(reward.soft_label_loss(np.float32(r1), np.float32(r2), np.float32(p)))
  assert abs(got - want) < 1e-5


@pytest.mark.parametrize("r_w,r_l", [(2.0, 0.5), (-1.0, 0.3)])
def test_hard_labels_are_bradley_terry(r_w, r_l):
  bt = -_log_sigmoid(r_w - r_l)
  assert abs(float(reward.soft_label_loss(np.float32(r_w), np.float32(r_l), np.float32(1.0))) - bt) < 1e-5
  assert abs(float(reward.soft_label_loss(np.float32(r_l), np.float32(r_w), np.float32(0.0))) - bt) < 1e-5


CFG = ModelConfig(vocab_size=32, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                  head_dim=8, d_ff=64)


def synthetic_pairs(n, seed, soft=1.0):
  """Prompt: 4 random tokens. Preferred response: the one with more tokens < 12."""
  rng = np.random.default_rng(seed)
  t = 12
  prompt = rng.integers(3, 32, (n, 4))
  ra, rb = rng.integers(3, 32, (n, 8)), rng.integers(3, 32, (n, 8))
  score_a, score_b = (ra < 12).sum(1), (rb < 12).sum(1)
  keep = score_a != score_b
  prompt, ra, rb, score_a, score_b = prompt[keep], ra[keep], rb[keep], score_a[keep], score_b[keep]
  a_wins = (score_a > score_b).astype(np.float32)
  batch = {}
  for name, r in (("a", ra), ("b", rb)):
    batch[f"tokens_{name}"] = np.concatenate([prompt, r], 1).astype(np.int32)
    batch[f"mask_{name}"] = np.ones((len(r), t), bool)
    batch[f"response_mask_{name}"] = np.arange(t)[None].repeat(len(r), 0) >= 4
  batch["label"] = np.where(a_wins > 0, soft, 1 - soft).astype(np.float32)
  batch["human_label"] = a_wins
  return batch


def test_rm_learns_preference_rule_held_out(tmp_path, mesh):
  train = synthetic_pairs(4096, 0, soft=0.9)      # soft labels in training
  test = synthetic_pairs(512, 1)
  c = base_config()
  c.train.update(batch_size=64, steps=300, lr=2e-3, warmup_steps=20, log_every=100,
                 checkpoint_every=1000, schedule="cosine")
  model = init_sharded(lambda r: ScalarModel(CFG, r), mesh)
  tr = Trainer(c, str(tmp_path), mesh, model, reward.rm_loss, name="rm")
  n = len(train["label"]) // 64

  class It:
    i = 0

    def __next__(self):
      j = self.i % n
      self.i += 1
      return {k: v[j * 64:(j + 1) * 64] for k, v in train.items()}
  tr.fit(It())
  n_test = len(test["label"]) // 64 * 64
  batches = [global_batch({k: v[i:i + 64] for k, v in test.items()}, mesh)
             for i in range(0, n_test, 64)]
  ev = tr.evaluate(batches, reward.eval_metrics)
  assert ev["accuracy_human"] >= 0.9, ev
  # normalisation: the mean reward on the reference set becomes 0
  final = tr.model()
  reward.normalize(final, batches, mesh)
  from flax import nnx
  graphdef, params = nnx.split(final)
  with jax.set_mesh(mesh):
    after = evaluate(graphdef, nnx.to_pure_dict(params), batches, reward.eval_metrics)
  assert abs(after["reward_mean"]) < 1e-4 and abs(after["accuracy_human"] - ev["accuracy_human"]) < 1e-9
