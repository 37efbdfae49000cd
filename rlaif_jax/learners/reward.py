"""Reward model on soft preference labels ("distilled RLAIF").

A scalar head reads the trunk's hidden state at the last real token: r(x, y).
With p = P(response 1 preferred) from the labeler (or 0/1 from a human),

    L = −[ p · log σ(r₁ − r₂) + (1 − p) · log σ(r₂ − r₁) ]

the cross-entropy between (p, 1−p) and softmax(r₁, r₂); with p ∈ {0, 1} it is
the Bradley–Terry loss −log σ(r_w − r_l). Both responses of a pair go through
one forward pass (stacked on the batch axis).

Normalisation (optional): after training, the head's bias is shifted so the
mean reward over a reference set (the held-out pairs' responses) is 0 – RL
then sees rewards centred where its policy starts.
"""
from __future__ import annotations

import functools
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rlaif_jax.data.batches import check_data, data_iterator, eval_batches, prepare_data
from rlaif_jax.learners.trainer import Trainer
from rlaif_jax.models import store
from rlaif_jax.models.build import build, check_model
from rlaif_jax.models.tokenizer import load_tokenizer


def soft_label_loss(r1, r2, p):
  """Per-pair −[p log σ(r₁−r₂) + (1−p) log σ(r₂−r₁)]."""
  d = r1 - r2
  return -(p * jax.nn.log_sigmoid(d) + (1.0 - p) * jax.nn.log_sigmoid(-d))


def pair_rewards(model, batch):
  tokens = jnp.concatenate([batch["tokens_a"], batch["tokens_b"]], 0)
  mask = jnp.concatenate([batch["mask_a"], batch["mask_b"]], 0)
  r = model(tokens, mask)
  n = batch["tokens_a"].shape[0]
  return r[:n], r[n:]


def rm_loss(model, batch, rng=None):
  """Mean over pairs (the pair is the unit: aux["weight"] = the batch's pair
  count, so gradient accumulation averages over pairs)."""
  r1, r2 = pair_rewards(model, batch)
  p = batch["label"]
  agree = jnp.where(p == 0.5, 0.5, ((r1 > r2) == (p > 0.5)).astype(jnp.float32))
  return jnp.mean(soft_label_loss(r1, r2, p)), {
      "accuracy_train_labels": jnp.mean(agree), "reward_mean": jnp.mean(jnp.concatenate([r1, r2])),
      "margin": jnp.mean(jnp.abs(r1 - r2)), "weight": jnp.float32(r1.shape[0])}


@functools.partial(jax.jit, static_argnums=0)
def _eval_sums(graphdef, params, batch):
  r1, r2 = pair_rewards(nnx.merge(graphdef, params), batch)
  h, p = batch["human_label"], batch["label"]
  has_h = (h >= 0) & (h != 0.5)
  has_p = p >= 0
  return {
      "human_correct": jnp.sum(jnp.where(has_h, (r1 > r2) == (h > 0.5), False)),
      "human_count": jnp.sum(has_h),
      "loss_sum": jnp.sum(jnp.where(has_p, soft_label_loss(r1, r2, jnp.clip(p, 0, 1)), 0.0)),
      "label_count": jnp.sum(has_p),
      "reward_sum": jnp.sum(r1) + jnp.sum(r2),
      "reward_count": 2 * r1.shape[0],
  }


def evaluate(graphdef, params, batches) -> dict:
  """Accuracy against human labels (hard) and mean loss against the training labels."""
  tot = {}
  for batch in batches:
    for k, v in _eval_sums(graphdef, params, batch).items():
      tot[k] = tot.get(k, 0.0) + float(v)
  out = {"reward_mean": tot.get("reward_sum", 0.0) / max(tot.get("reward_count", 1.0), 1.0)}
  if tot.get("human_count"):
    out["accuracy_human"] = tot["human_correct"] / tot["human_count"]
  if tot.get("label_count"):
    out["loss_labels"] = tot["loss_sum"] / tot["label_count"]
  return out


def normalize(model, batches, mesh) -> float:
  """Shifts the head bias so the mean reward over `batches` is 0; returns the shift."""
  graphdef, params = nnx.split(model)
  with jax.set_mesh(mesh):
    mean = evaluate(graphdef, nnx.to_pure_dict(params), batches)["reward_mean"]
  model.head_bias[...] = model.head_bias[...] - mean
  return mean


def validate(config, mesh) -> None:
  """The RM stage's checks before anything is built (`mesh` may be abstract)."""
  del mesh   # nothing here depends on the device layout
  check_model(config.model)
  check_data(config, "pairs")


def run(config, workdir: str, mesh) -> dict:
  prepare_data(config, workdir, kind="pairs")
  tok = load_tokenizer(config.model.tokenizer)
  model = build(config.model, mesh, "scalar", tok, config.seed)
  trainer = Trainer(config, workdir, mesh, model, rm_loss, name="rm")
  held_out = eval_batches(config, tok, "pairs", mesh)

  def eval_fn():
    with jax.set_mesh(mesh):
      return evaluate(trainer.graphdef, trainer.state["params"], held_out) if held_out else {}

  result = trainer.fit(data_iterator(config, tok, "pairs"), eval_fn,
                       tokens_per_batch=lambda b: int(np.sum(b["mask_a"]) + np.sum(b["mask_b"])))
  final = trainer.model()
  if config.train.get("normalize_rewards") and held_out:
    shift = normalize(final, held_out, mesh)
    result["reward_shift"] = shift
    logging.info("rewards normalised: head bias shifted by %.4f", -shift)
  store.save(final, os.path.join(workdir, "model"))
  return result
