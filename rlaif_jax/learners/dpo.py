"""Direct preference optimisation on (soft) AI labels: alignment without a reward model.

The policy π starts from the SFT policy; the reference π_ref is a frozen copy of
it. For a pair (x, y_a, y_b) with p = P(y_a preferred) – the labeler's soft
label, or 0/1 from a human –

    Δ = [log π(y_a|x) − log π_ref(y_a|x)] − [log π(y_b|x) − log π_ref(y_b|x)]
    L = −[ p · log σ(β·Δ) + (1 − p) · log σ(−β·Δ) ]

where log π(y|x) sums the response tokens' log-probs only (the EOS included,
never the prompt). Hard labels give standard DPO; label smoothing ε (conservative
DPO) replaces p by (1 − ε)·p + ε·(1 − p). β·(log π − log π_ref) is the implicit
reward of a response; unlabeled pairs (p = −1) carry no loss.

Both responses of a pair go through one forward pass (stacked on the batch
axis). The reference's parameters are the shared Trainer's `frozen` argument
of the jitted step – sharded exactly like the policy's, never donated, never
differentiated; its sequence log-probs are computed inside the loss (so per
micro-batch under gradient accumulation) under stop_gradient, or – with
`dpo.precompute_reference=True` – once for the whole training set before
training, cached by pair content, attached to each batch as `ref_logp_a/_b`,
and the reference's parameters freed.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from rlaif_jax.config import ConfigError
from rlaif_jax.data.batches import check_data, data_iterator, eval_batches, prepare_data
from rlaif_jax.data.pipeline import make_iterator
from rlaif_jax.data.sources import open_source
from rlaif_jax.learners.sft import token_nll
from rlaif_jax.learners.trainer import Trainer, selection
from rlaif_jax.mesh import global_batch
from rlaif_jax.models import store
from rlaif_jax.models.build import build, check_model
from rlaif_jax.models.sharding import copy_params
from rlaif_jax.models.tokenizer import load_tokenizer

PAIR_KEYS = ("tokens_a", "mask_a", "response_mask_a", "tokens_b", "mask_b", "response_mask_b")


# ------------------------------------------------------------------ the loss

def smoothed(p, label_smoothing: float):
  """Conservative DPO: p -> (1 − ε)·p + ε·(1 − p)."""
  return (1.0 - label_smoothing) * p + label_smoothing * (1.0 - p)


def dpo_loss(pi_a, pi_b, ref_a, ref_b, p, beta: float, label_smoothing: float = 0.0):
  """Per-pair −[p log σ(βΔ) + (1−p) log σ(−βΔ)] from sequence log-probs."""
  z = beta * ((pi_a - ref_a) - (pi_b - ref_b))
  q = smoothed(p, label_smoothing)
  return -(q * jax.nn.log_sigmoid(z) + (1.0 - q) * jax.nn.log_sigmoid(-z))


def sequence_logprobs(model, tokens, mask, response_mask, chunk: int = 0):
  """Σ over response tokens of log π(x_{t+1} | x_{≤t}), per row (B,), float32.
  `chunk`: model.logits_chunk (sft.chunked_nll: the LM head over that many
  positions at a time)."""
  nll, w = token_nll(model, {"tokens": tokens, "mask": mask, "response_mask": response_mask},
                     chunk)
  return -jnp.sum(nll * w, axis=-1)


def pair_logprobs(model, batch, chunk: int = 0):
  """(log π(y_a), log π(y_b)), both responses in one forward pass."""
  cat = lambda k: jnp.concatenate([batch[f"{k}_a"], batch[f"{k}_b"]], 0)
  lp = sequence_logprobs(model, cat("tokens"), cat("mask"), cat("response_mask"), chunk)
  n = batch["tokens_a"].shape[0]
  return lp[:n], lp[n:]


def _masked_mean(x, w):
  return jnp.sum(jnp.where(w, x, 0.0)) / jnp.maximum(jnp.sum(w), 1)


def pair_stats(pi_a, pi_b, ref_a, ref_b, batch, beta: float, label_smoothing: float) -> dict:
  """Per-row quantities behind the loss and the metrics (sums and masks)."""
  p, h = batch["label"], batch["human_label"]
  labeled = p >= 0
  losses = dpo_loss(pi_a, pi_b, ref_a, ref_b, jnp.clip(p, 0.0, 1.0), beta, label_smoothing)
  drift_a, drift_b = pi_a - ref_a, pi_b - ref_b
  z = beta * (drift_a - drift_b)               # implicit reward of a minus that of b
  decisive = labeled & (p != 0.5)              # the soft label has an argmax
  a_chosen = p > 0.5
  sign = jnp.where(a_chosen, 1.0, -1.0)
  human = (h >= 0) & (h != 0.5)
  return {
      "loss": (losses, labeled),
      "accuracy": ((z > 0) == a_chosen, decisive),
      "accuracy_human": ((z > 0) == (h > 0.5), human),
      "reward_margin": (sign * z, decisive),     # implicit reward chosen − rejected
      "chosen_drift": (jnp.where(a_chosen, drift_a, drift_b), decisive),
      "rejected_drift": (jnp.where(a_chosen, drift_b, drift_a), decisive),
  }


def make_loss_fn(graphdef, beta: float, label_smoothing: float = 0.0, chunk: int = 0):
  """loss_fn(model, batch, rng, ref_params) for `Trainer`. The reference's
  log-probs come from the batch (`ref_logp_a/_b`, precomputed) or from
  `ref_params` (the trainer's frozen argument), per micro-batch. `chunk`:
  model.logits_chunk."""
  def loss_fn(model, batch, rng=None, ref_params=None):
    pi_a, pi_b = pair_logprobs(model, batch, chunk)
    if "ref_logp_a" in batch:
      ref_a, ref_b = batch["ref_logp_a"], batch["ref_logp_b"]
    elif ref_params is not None:
      ref_a, ref_b = pair_logprobs(nnx.merge(graphdef, ref_params), batch, chunk)
    else:
      raise ValueError("the batch has no ref_logp_a/_b and the reference was released")
    ref_a, ref_b = jax.lax.stop_gradient(ref_a), jax.lax.stop_gradient(ref_b)
    stats = pair_stats(pi_a, pi_b, ref_a, ref_b, batch, beta, label_smoothing)
    means = {k: _masked_mean(v.astype(jnp.float32), w) for k, (v, w) in stats.items()}
    # the unit is the labeled pair: gradient accumulation weights by their count
    means["weight"] = jnp.sum(stats["loss"][1]).astype(jnp.float32)
    return means.pop("loss"), means
  return loss_fn


# ------------------------------------------------------------- the reference

def reference_logprobs(graphdef, ref_params, batch, chunk: int = 0):
  """Reference (log π_ref(y_a), log π_ref(y_b)) under stop_gradient."""
  ref_params = jax.lax.stop_gradient(ref_params)
  return pair_logprobs(nnx.merge(graphdef, ref_params), {k: batch[k] for k in PAIR_KEYS}, chunk)


def make_trainer(config, workdir, mesh, model, reference_params=None, name="dpo") -> Trainer:
  """The shared `Trainer` with the reference's params as its frozen argument
  (a sharded copy of the initial policy unless given)."""
  graphdef, params = nnx.split(model)
  if reference_params is None:
    with jax.set_mesh(mesh):
      reference_params = copy_params(nnx.to_pure_dict(params))
  d = config.dpo
  return Trainer(config, workdir, mesh, model,
                 make_loss_fn(graphdef, d.beta, d.label_smoothing, config.model.logits_chunk),
                 name, frozen=reference_params)


# ------------------------------------------------ precomputed reference cache

def pair_key(batch: dict, i: int) -> bytes:
  """Content address of row i of a pair batch (what the reference log-probs depend on)."""
  h = hashlib.blake2b(digest_size=16)
  for k in PAIR_KEYS:
    h.update(np.ascontiguousarray(batch[k][i]).tobytes())
  return h.digest()


def precompute_reference(batches, n_batches: int, graphdef, ref_params, mesh,
                         chunk: int = 0) -> dict:
  """{pair key: (log π_ref(y_a), log π_ref(y_b))} over `n_batches` local batches.

  Every process ends up with the whole cache (keys and values all-gathered)."""
  from jax.experimental import multihost_utils
  fn = jax.jit(functools.partial(reference_logprobs, graphdef, chunk=chunk))
  keys, values = [], []
  with jax.set_mesh(mesh):
    for _ in range(n_batches):
      batch = next(batches)
      rows = len(batch["tokens_a"])
      key = np.frombuffer(b"".join(pair_key(batch, i) for i in range(rows)),
                          np.uint8).reshape(rows, 16)
      g = global_batch({k: batch[k] for k in PAIR_KEYS}, mesh)
      a, b = fn(ref_params, g)
      if jax.process_count() == 1:
        keys.append(key)
        values.append(np.stack([np.asarray(a), np.asarray(b)], 1))
      else:
        keys.append(multihost_utils.process_allgather(key, tiled=True))
        values.append(np.stack(multihost_utils.process_allgather((a, b), tiled=True), 1))
  keys, values = np.concatenate(keys), np.concatenate(values).astype(np.float32)
  return {k.tobytes(): v for k, v in zip(keys, values)}


class WithReference:
  """Wraps a pair iterator, attaching cached ref_logp_a/_b (its state is the inner one's)."""

  def __init__(self, inner, cache: dict):
    self.inner, self.cache = inner, cache

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    batch = next(self.inner)
    try:
      v = np.stack([self.cache[pair_key(batch, i)] for i in range(len(batch["tokens_a"]))])
    except KeyError:
      raise KeyError("a training pair is missing from the precomputed reference cache") from None
    return {**batch, "ref_logp_a": v[:, 0], "ref_logp_b": v[:, 1]}

  def get_state(self):
    return self.inner.get_state()

  def set_state(self, state) -> None:
    self.inner.set_state(state)


def reference_cache(config, tok, mesh, graphdef, ref_params) -> dict:
  """The reference's log-probs for every training pair (one ordered pass)."""
  d = config.data.copy_and_resolve_references()
  with d.unlocked():
    d.shuffle = False
  source = open_source(d, "pairs")
  # Repeat forever and stop after the last example: batches straddle the epoch
  # boundary, so no remainder is dropped (training sees every example too).
  it = make_iterator(d, tok, kind="pairs", batch_size=config.train.batch_size, seed=config.seed,
                     num_epochs=-1, with_text=False, source=source)
  usable = len(source) - it.report()["responses_too_long"]["count"]
  per_host = usable // jax.process_count()
  local_batch = config.train.batch_size // jax.process_count()
  n_batches = -(-per_host // local_batch)
  cache = precompute_reference(it, n_batches, graphdef, ref_params, mesh,
                               config.model.logits_chunk)
  logging.info("dpo: reference log-probs precomputed for %d pairs (%d batches)",
               len(cache), n_batches)
  return cache


# ------------------------------------------------------------------ eval

def make_eval_metrics(beta: float, label_smoothing: float = 0.0, chunk: int = 0):
  """metric_fn(model, batch) for `Trainer.evaluate` (make it once: it is a static
  argument of the jitted evaluation). Loss, implicit-reward accuracy (soft-label
  argmax and human labels), margin and chosen/rejected log-prob drift; the
  reference's log-probs come with the batch (`with_reference`)."""
  def eval_metrics(model, batch) -> dict:
    pi_a, pi_b = pair_logprobs(model, batch, chunk)
    return pair_stats(pi_a, pi_b, batch["ref_logp_a"], batch["ref_logp_b"], batch, beta,
                      label_smoothing)
  return eval_metrics


def with_reference(batches, graphdef, ref_params, mesh, chunk: int = 0) -> list[dict]:
  """Held-out batches with the reference's log-probs attached (ref_logp_a/_b),
  computed once while the reference is still on device."""
  fn = jax.jit(functools.partial(reference_logprobs, graphdef, chunk=chunk))
  with jax.set_mesh(mesh):
    refs = [fn(ref_params, b) for b in batches]
  return [{**b, "ref_logp_a": a, "ref_logp_b": b_} for b, (a, b_) in zip(batches, refs)]


# validation metrics and which way is better (train.select_metric)
EVAL_METRICS = {"loss": "min", "accuracy": "max", "accuracy_human": "max",
                "reward_margin": "max"}


# ------------------------------------------------------------------ stage

def dpo_config() -> ml_collections.ConfigDict:
  """The stage's section, `config.dpo`: β of the implicit reward β·log(π/π_ref),
  label smoothing ε (conservative DPO), and whether the reference runs once over
  the training set before training (then freed) instead of at every step."""
  return ml_collections.ConfigDict(dict(beta=0.1, label_smoothing=0.0,
                                        precompute_reference=False))


def validate(config, mesh) -> None:
  """The DPO stage's checks before anything is built (`mesh` may be abstract)."""
  del mesh   # nothing here depends on the device layout
  check_model(config.model)
  check_data(config, "pairs")
  d = config.dpo
  if not d.beta > 0 or not math.isfinite(d.beta):
    raise ConfigError(f"dpo.beta={d.beta} must be a positive number (0.1 is the usual value)")
  if not 0.0 <= d.label_smoothing < 0.5:
    raise ConfigError(f"dpo.label_smoothing={d.label_smoothing} must be in [0, 0.5)")
  selection(config, EVAL_METRICS, "loss")


def run(config, workdir: str, mesh) -> dict:
  validate(config, mesh)
  prepare_data(config, workdir, kind="pairs")
  tok = load_tokenizer(config.model.tokenizer)
  model = build(config.model, mesh, "lm", tok, config.seed)    # the SFT policy (or scratch for toy)
  trainer = make_trainer(config, workdir, mesh, model)
  chunk = config.model.logits_chunk
  held_out = with_reference(eval_batches(config, tok, "pairs", mesh), trainer.graphdef,
                            trainer.frozen, mesh, chunk)
  eval_metrics = make_eval_metrics(config.dpo.beta, config.dpo.label_smoothing, chunk)
  data = data_iterator(config, tok, "pairs")
  if config.dpo.precompute_reference:
    data = WithReference(data, reference_cache(config, tok, mesh, trainer.graphdef,
                                               trainer.frozen))
    trainer.frozen = None      # no longer needed on device
  result = trainer.fit(data, (lambda: trainer.evaluate(held_out, eval_metrics)) if held_out else None,
                       tokens_per_batch=lambda b: int(np.sum(b["mask_a"]) + np.sum(b["mask_b"])),
                       best_by=selection(config, EVAL_METRICS, "loss"))
  store.save(trainer.chosen_model(), os.path.join(workdir, "model"))
  return result
