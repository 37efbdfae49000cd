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

import logging
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from rlaif_jax.data.batches import check_data, data_iterator, eval_batches, prepare_data
from rlaif_jax.learners.trainer import Trainer, evaluate, selection
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


def eval_metrics(model, batch) -> dict:
  """Held-out metrics for `Trainer.evaluate`: accuracy against the human labels
  (hard; pairs with one and no tie), the loss against the training labels
  (labeled pairs) and the mean reward of all responses."""
  r1, r2 = pair_rewards(model, batch)
  h, p = batch["human_label"], batch["label"]
  return {
      "accuracy_human": ((r1 > r2) == (h > 0.5), (h >= 0) & (h != 0.5)),
      "loss_labels": (soft_label_loss(r1, r2, jnp.clip(p, 0, 1)), p >= 0),
      "reward_mean": (jnp.concatenate([r1, r2]), jnp.ones(2 * r1.shape[0])),
  }


# validation metrics and which way is better (train.select_metric)
EVAL_METRICS = {"loss_labels": "min", "accuracy_human": "max"}


def normalize(model, batches, mesh) -> float:
  """Shifts the head bias so the mean reward over `batches` is 0; returns the shift."""
  graphdef, params = nnx.split(model)
  with jax.set_mesh(mesh):
    mean = evaluate(graphdef, nnx.to_pure_dict(params), batches, eval_metrics)["reward_mean"]
  model.head_bias[...] = model.head_bias[...] - mean
  return mean


def rm_config() -> ml_collections.ConfigDict:
  """The stage's section, `config.rm`."""
  return ml_collections.ConfigDict(dict(
      # After training, shift the head's bias so the mean reward over the held-out
      # pairs is 0: RL then starts from rewards centred on what the SFT policy writes.
      normalize_rewards=True))


def validate(config, mesh) -> None:
  """The RM stage's checks before anything is built (`mesh` may be abstract)."""
  del mesh   # nothing here depends on the device layout
  check_model(config.model)
  check_data(config, "pairs")
  selection(config, EVAL_METRICS, "loss_labels")


def run(config, workdir: str, mesh) -> dict:
  prepare_data(config, workdir, kind="pairs")
  tok = load_tokenizer(config.model.tokenizer)
  model = build(config.model, mesh, "scalar", tok, config.seed)
  trainer = Trainer(config, workdir, mesh, model, rm_loss, name="rm")
  held_out = eval_batches(config, tok, "pairs", mesh)
  result = trainer.fit(data_iterator(config, tok, "pairs"),
                       (lambda: trainer.evaluate(held_out, eval_metrics)) if held_out else None,
                       tokens_per_batch=lambda b: int(np.sum(b["mask_a"]) + np.sum(b["mask_b"])),
                       best_by=selection(config, EVAL_METRICS, "loss_labels"))
  final = trainer.chosen_model()
  if config.rm.normalize_rewards and held_out:
    shift = normalize(final, held_out, mesh)
    result["reward_shift"] = shift
    logging.info("rewards normalised: head bias shifted by %.4f", -shift)
  store.save(final, os.path.join(workdir, "model"))
  return result
