"""Training machinery shared by every learner (SFT, RM, RL, DPO).

A learner supplies a model, a loss and, where one step is more than "next
batch, one optimiser step" (RL: rollout, then its updates), an iteration;
`Trainer` owns everything else:

  state  = {"params", "opt_state", "step", "rng"}   a pure pytree, sharded
  step   : jit(state, batch) -> (state', metrics)   explicit in/out shardings,
           state donated, gradient accumulation by `lax.scan` over micro-batches,
           weighted so the result is the whole batch's token (or row) mean
           (`accumulate`)
  checkpoints: Orbax CheckpointManager in <workdir>/checkpoints (async, every N
           steps and at the end, keep last K) holding the state *and* the data
           iterator's position, so a resumed run replays exactly the batches an
           uninterrupted one would have seen.
  guard  : a step whose loss or gradient norm is not finite leaves params and
           optimizer state untouched; the loop then stops naming the step, and
           no checkpoint is ever written past it.
  SIGTERM: the step in flight is finished and saved (the same step on every
           host), then the process exits 75 (rlaif_jax.preemption).
  fit    : the one loop – cadence of logging, evaluation and checkpoints,
           keep-best by a validation metric (`train.select`), resume.
  evaluate: token- or row-weighted means of a learner's metrics over held-out
           batches.
"""
from __future__ import annotations

import base64
import functools
import logging
import math
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm.auto import tqdm

from rlaif_jax import paths
from rlaif_jax.errors import ConfigError
from rlaif_jax.learners.metrics import MetricsWriter
from rlaif_jax.mesh import batch_sharding, global_batch
from rlaif_jax.models import store
from rlaif_jax.preemption import Watcher

# loss_fn(model, batch, rng[, frozen]) -> (scalar loss, {metric: scalar})
LossFn = Callable[..., tuple[jax.Array, dict]]
# metric_fn(model, batch) -> {metric: (values, weights)}, arrays of one shape each
MetricFn = Callable[..., dict]

SELECT = ("last", "best")


def selection(config, directions: dict[str, str], default: str) -> tuple[str, str]:
  """(metric, "min" | "max") that ranks validations: `train.select_metric`, or
  the stage's `default`, with its direction from the stage's table. Raises
  ConfigError for an unknown `train.select` or a metric the stage does not
  compute (a stage's `validate` calls this, before anything is built)."""
  t = config.train
  if t.select not in SELECT:
    raise ConfigError(f"train.select={t.select!r}: use last or best (by train.select_metric)")
  metric = t.select_metric or default
  if metric not in directions:
    raise ConfigError(f"train.select_metric={metric!r}: this stage validates "
                      f"{', '.join(directions)}")
  return metric, directions[metric]


# ------------------------------------------------------------------ evaluation

@functools.partial(jax.jit, static_argnums=(0, 1))
def _metric_sums(metric_fn, graphdef, params, batch):
  out = {}
  for k, (v, w) in metric_fn(nnx.merge(graphdef, params), batch).items():
    w = jnp.asarray(w, jnp.float32)
    # select, not multiply: a value at a weight-0 position (padding) may be inf
    out[k] = (jnp.sum(jnp.where(w > 0, jnp.asarray(v, jnp.float32) * w, 0.0)), jnp.sum(w))
  return out


def evaluate(graphdef, params, batches, metric_fn: MetricFn) -> dict:
  """Weighted means over held-out `batches`: for each metric k of
  `metric_fn(model, batch) -> {k: (v, w)}`,

      mean_k = Σ_batches Σ_i w_i·v_i / Σ_batches Σ_i w_i

  (w: 0/1 masks or counts – response tokens for a token mean, labeled pairs for
  a pair mean), so a batch counts by its weight, not as one. A metric whose
  weights sum to 0 over every batch is left out. Call under the mesh; the
  sums are taken on device, the division on the host in float64."""
  tot = {}
  for batch in batches:
    for k, (s, n) in jax.device_get(_metric_sums(metric_fn, graphdef, params, batch)).items():
      a, b = tot.get(k, (0.0, 0.0))
      tot[k] = (a + float(s), b + float(n))
  return {k: s / n for k, (s, n) in tot.items() if n > 0}


def make_schedule(t, total_steps: int):
  warm = min(t.warmup_steps, max(total_steps - 1, 0))
  if t.schedule == "constant":
    main = optax.constant_schedule(t.lr)
  elif t.schedule == "cosine":
    main = optax.cosine_decay_schedule(t.lr, max(total_steps - warm, 1), alpha=0.1)
  elif t.schedule == "linear":
    main = optax.linear_schedule(t.lr, 0.1 * t.lr, max(total_steps - warm, 1))
  else:
    raise ValueError(f"train.schedule={t.schedule!r}: use constant, cosine or linear")
  if not warm:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, t.lr, warm), main], [warm])


def make_optimizer(t, total_steps: int) -> optax.GradientTransformation:
  """optax chain from `config.train`: clip -> AdamW | Adafactor | SGD with a schedule."""
  lr = make_schedule(t, total_steps)
  if t.optimizer == "adamw":
    opt = optax.adamw(lr, b1=t.b1, b2=t.b2, weight_decay=t.weight_decay)
  elif t.optimizer == "adafactor":
    # The paper's optimizer; optax's defaults (factored second moments, update
    # clipping at 1, relative step off because we pass a schedule).
    opt = optax.adafactor(lr, weight_decay_rate=t.weight_decay or None)
  elif t.optimizer == "sgd":
    opt = optax.sgd(lr)
  else:
    raise ValueError(f"train.optimizer={t.optimizer!r}: use adamw, adafactor or sgd")
  return optax.chain(optax.clip_by_global_norm(t.grad_clip), opt) if t.grad_clip else opt


def _encode_iter_state(state) -> dict:
  if isinstance(state, bytes):
    return {"bytes": base64.b64encode(state).decode()}
  return {"json": state}


def _decode_iter_state(d: dict):
  return base64.b64decode(d["bytes"]) if "bytes" in d else d["json"]


def accumulate(loss_fn, graphdef, params, micro, keys, extra=(), grad_sharding=None):
  """Loss, metrics and gradient of a batch from its micro-batches (leading axis
  of every `micro` leaf), as one big batch would give them.

  A loss that is a mean – over tokens (SFT, RL) or rows (RM, DPO: the pair is
  the unit of a pairwise loss) – reports its denominator as aux["weight"]. With
  per-micro-batch means L_j = N_j / W_j the batch's mean is

      L = Σ_j N_j / Σ_j W_j = Σ_j W_j·L_j / Σ_j W_j,   ∇L = Σ_j W_j·∇L_j / Σ_j W_j

  (W_j does not depend on the params), not the mean of the L_j, which
  over-weights the tokens of short micro-batches. Every other metric is
  averaged with the same weights (exact when it shares the loss's denominator,
  as the RL and SFT metrics do); "weight" itself is summed. A loss without
  "weight" gets equal weights. The gradient of W_j·L_j is taken directly, so
  weighting costs no extra pass over the gradient. `grad_sharding`: the params'
  shardings, which the gradient sum keeps.
  """
  def grads_of(mb, key):
    def f(params):
      loss, aux = loss_fn(nnx.merge(graphdef, params), mb, key, *extra)
      w = jax.lax.stop_gradient(jnp.asarray(aux.get("weight", 1.0), jnp.float32))
      rest = {k: w * jnp.asarray(v, jnp.float32) for k, v in aux.items() if k != "weight"}
      return w * loss, (w, rest)
    (wl, (w, wa)), g = jax.value_and_grad(f, has_aux=True)(params)
    return wl, wa, g, w

  def constrain(sums):
    # The gradient sum lives sharded like the params: each micro-batch's
    # gradient is reduce-scattered into it rather than all-reduced and held whole.
    wl, wa, g, w = sums
    if grad_sharding is not None:
      g = jax.lax.with_sharding_constraint(g, grad_sharding)
    return wl, wa, g, w

  def body(carry, xs):
    return constrain(jax.tree.map(jnp.add, carry, grads_of(*xs))), None
  # The sums start at zero and every micro-batch goes through the one loop body:
  # the model's forward and backward are compiled once, not twice (a first
  # micro-batch peeled out of the loop doubled the TPU compile time).
  shapes = jax.eval_shape(grads_of, jax.tree.map(lambda x: x[0], micro), keys[0])
  zeros = constrain(jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes))
  (wl, wa, g, w), _ = jax.lax.scan(body, zeros, (micro, keys))
  # An all-empty batch (W = 0) has every weighted sum 0: leave them 0.
  inv = 1.0 / jnp.where(w > 0, w, 1.0)
  loss, aux, grads = jax.tree.map(lambda x: x * inv, (wl, wa, g))
  return loss, {**aux, "weight": w}, grads


class NonFiniteLossError(FloatingPointError):
  pass


class Trainer:
  """Optimises `model`'s params under `loss_fn(model, batch, rng)`.

  `frozen` (optional): a pytree of arrays the loss needs but never trains – a
  reference policy's params, say. It is an explicit argument of the jitted
  step (so it keeps its sharding and is not baked into the program as a
  constant), never donated, never differentiated, and reaches the loss as
  `loss_fn(model, batch, rng, frozen)`. Set `trainer.frozen = None` to release it
  (the loss then gets None).
  """

  def __init__(self, config, workdir: str, mesh, model: nnx.Module, loss_fn: LossFn,
               name: str = "train", total_steps: int | None = None, frozen: Any = None):
    self.config, self.t, self.mesh, self.name = config, config.train, mesh, name
    self.workdir = workdir
    self.total_steps = total_steps or self.t.steps
    self.graphdef, params = nnx.split(model)
    params = nnx.to_pure_dict(params)
    self.tx = make_optimizer(self.t, self.total_steps)
    self.loss_fn = loss_fn
    self.frozen = frozen
    self._uses_frozen = frozen is not None
    replicated = NamedSharding(mesh, P())
    param_sh = jax.tree.map(lambda x: x.sharding, params)
    abstract_opt = jax.eval_shape(self.tx.init, params)
    opt_sh = optax.tree_map_params(
        self.tx, lambda leaf, p, sh: sh if leaf.shape == p.shape else replicated,
        abstract_opt, params, param_sh, transform_non_params=lambda _: replicated)
    self.state_sharding = {"params": param_sh, "opt_state": opt_sh,
                           "step": replicated, "rng": replicated}
    self._step_fn = None
    # the best validation so far, {"step", "metric", "value"} (checkpointed: `fit`)
    self.best = None
    if any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(params)):
      # An abstract model (rlaif_jax.aot): shapes and shardings only, nothing
      # allocated, no checkpoints; `lower_step` still gives the real step.
      rng = jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0)))
      self.state = jax.tree.map(
          lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
          {"params": params, "opt_state": abstract_opt,
           "step": jax.ShapeDtypeStruct((), jnp.int32), "rng": rng}, self.state_sharding)
      self.ckpt = None
      return
    with jax.set_mesh(mesh):
      opt_state = jax.jit(self.tx.init, out_shardings=opt_sh)(params)
    rng = jax.device_put(jax.random.key_data(jax.random.key(config.seed)), replicated)
    self.state = {"params": params, "opt_state": opt_state,
                  "step": jax.device_put(jnp.zeros((), jnp.int32), replicated), "rng": rng}
    ckpt_dir = paths.path(workdir) / "checkpoints"
    self.ckpt = ocp.CheckpointManager(
        ckpt_dir, item_handlers={"state": ocp.StandardCheckpointHandler(),
                                 "data": ocp.JsonCheckpointHandler(),
                                 "loop": ocp.JsonCheckpointHandler()},
        options=ocp.CheckpointManagerOptions(
            max_to_keep=self.t.keep_checkpoints, enable_async_checkpointing=True,
            create=True))

  # ------------------------------------------------------------------ model
  def model(self, params=None) -> nnx.Module:
    return nnx.merge(self.graphdef, self.state["params"] if params is None else params)

  @property
  def best_dir(self) -> str:
    return paths.join(self.workdir, "best_model")

  def chosen_model(self, part: Callable[[nnx.Module], nnx.Module] = lambda m: m) -> nnx.Module:
    """What the stage saves as its model/: under `train.select="best"` the best
    validated model (read back from best_model/ through the store: collective
    on several hosts, any filesystem), else `part` of the last one."""
    if self.t.select == "best":
      if self.best is not None:
        logging.info("%s: model/ is the step-%d model (validation %s %.4f)", self.name,
                     self.best["step"], self.best["metric"], self.best["value"])
        return store.load(self.best_dir, self.mesh)
      logging.warning("%s: train.select=best but nothing was validated (no held-out data); "
                      "model/ is the last model", self.name)
    return part(self.model())

  def evaluate(self, batches, metric_fn: MetricFn) -> dict:
    """`evaluate` (above) of the current params."""
    with jax.set_mesh(self.mesh):
      return evaluate(self.graphdef, self.state["params"], batches, metric_fn)

  # ------------------------------------------------------------------ step
  def _train_step(self, state, batch, frozen=None):
    accum = self.t.grad_accum
    rng, step_rng = jax.random.split(jax.random.wrap_key_data(state["rng"]))
    extra = (jax.lax.stop_gradient(frozen),) if self._uses_frozen else ()

    def grads_of(mb, key):
      def f(params):
        return self.loss_fn(nnx.merge(self.graphdef, params), mb, key, *extra)
      return jax.value_and_grad(f, has_aux=True)(state["params"])

    if accum == 1:
      (loss, aux), grads = grads_of(batch, step_rng)
    else:
      # Rows i*accum + j go to micro-batch j: each device keeps its own rows.
      micro = jax.tree.map(lambda x: jnp.swapaxes(
          x.reshape(x.shape[0] // accum, accum, *x.shape[1:]), 0, 1), batch)
      keys = jax.random.split(step_rng, accum)
      loss, aux, grads = accumulate(self.loss_fn, self.graphdef, state["params"], micro, keys,
                                    extra, self.state_sharding["params"])
    gnorm = optax.tree.norm(grads)
    ok = jnp.isfinite(loss) & jnp.isfinite(gnorm)

    def apply(params, opt_state, grads):
      updates, opt_state = self.tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state
    # A NaN step leaves params and optimizer state as they were. A cond rather than
    # a select of new against old: no extra pass over every parameter and moment.
    params, opt_state = jax.lax.cond(ok, apply, lambda p, o, g: (p, o),
                                     state["params"], state["opt_state"], grads)
    new_state = {"params": params, "opt_state": opt_state,
                 "step": state["step"] + 1, "rng": jax.random.key_data(rng)}
    metrics = {"loss": loss, "grad_norm": gnorm, "finite": ok, **aux}
    return new_state, metrics

  def step(self, batch: dict) -> dict:
    """One optimiser step. `batch`: this process's rows (numpy; text fields are
    dropped) or an already global batch of jax Arrays."""
    batch = {k: v for k, v in batch.items() if getattr(v, "dtype", object) != object}
    if not all(isinstance(v, jax.Array) for v in batch.values()):
      batch = global_batch(batch, self.mesh)
    key = (tuple(sorted(batch)), jax.tree.structure(self.frozen))
    if self._step_fn is None or self._step_fn[0] != key:
      self._step_fn = key, self._jit_step(batch)
    with jax.set_mesh(self.mesh):
      self.state, metrics = self._step_fn[1](self.state, batch, self.frozen)
    return metrics

  def _jit_step(self, batch: dict):
    frozen_sh = jax.tree.map(lambda x: x.sharding, self.frozen)
    batch_sh = jax.tree.map(lambda x: batch_sharding(self.mesh, len(x.shape)), batch)
    return jax.jit(self._train_step, in_shardings=(self.state_sharding, batch_sh, frozen_sh),
                   out_shardings=(self.state_sharding, None), donate_argnums=0)

  def lower_step(self, batch: dict) -> jax.stages.Lowered:
    """The step `step` runs, lowered for a global batch of this shape (arrays or
    ShapeDtypeStructs): `--aot` compiles it for a TPU topology."""
    with jax.set_mesh(self.mesh):
      return self._jit_step(batch).lower(self.state, batch, self.frozen)

  # ------------------------------------------------------------ checkpoints
  def save(self, data_iter=None, force: bool = False) -> None:
    step = int(self.state["step"])
    items = {"state": ocp.args.StandardSave(self.state),
             "loop": ocp.args.JsonSave({"best": self.best})}
    if data_iter is not None and hasattr(data_iter, "get_state"):
      items["data"] = ocp.args.JsonSave(_encode_iter_state(data_iter.get_state()))
    self.ckpt.save(step, args=ocp.args.Composite(**items), force=force)

  def restore(self, data_iter=None, step: int | None = None) -> int:
    """Restores the latest (or given) checkpoint; returns its step (0 if none)."""
    step = self.ckpt.latest_step() if step is None else step
    if step is None:
      return 0
    abstract = jax.tree.map(
        lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
        self.state, self.state_sharding)
    items = {"state": ocp.args.StandardRestore(abstract)}
    saved = self.ckpt.item_metadata(step) or {}
    has_data = data_iter is not None and "data" in saved
    if has_data:
      items["data"] = ocp.args.JsonRestore()
    if "loop" in saved:
      items["loop"] = ocp.args.JsonRestore()
    restored = self.ckpt.restore(step, args=ocp.args.Composite(**items))
    self.state = restored["state"]
    if has_data:
      data_iter.set_state(_decode_iter_state(restored["data"]))
    if "loop" in saved:
      self.best = restored["loop"]["best"]
    logging.info("%s: resumed from step %d", self.name, step)
    return step

  # ------------------------------------------------------------------ loop
  def fit(self, data_iter, evaluate: Callable[[], dict] | None = None,
          iteration: Callable[[int], dict] | None = None, *, steps: int | None = None,
          unit: str = "step", tokens_per_batch: Callable[[dict], int] | None = None,
          best_by: tuple[str, str] | None = None,
          keep: Callable[[nnx.Module], nnx.Module] = lambda m: m,
          log_keys: tuple[str, ...] = ("loss",),
          describe: Callable[[int, dict], str] | None = None) -> dict:
    """Runs iterations 1 … `steps` (default `total_steps`), resuming from the
    workdir after its last checkpoint; returns the last iteration's metrics
    with the last evaluation's `eval/…` and, when ranked, `best_step` and
    `best_eval/<metric>`.

    iteration(step) -> metrics: one unit of work. The default takes the next
      batch of `data_iter` and one optimiser step (`tokens_per_batch` counts
      its tokens for tokens_per_sec). Its metrics may be device arrays: they
      are fetched after the next iteration is dispatched, so the host never
      stalls the device; a "finite" entry is the NaN guard's (`check`);
      "tokens" is summed into tokens_per_sec; lists and dicts are logged as
      text (samples). An iteration that takes several optimiser steps (RL:
      `total_steps / steps` per iteration) checks them itself.
    data_iter: what iterations read; its get_state/set_state go into every
      checkpoint, so a resumed run continues where the saved one was.
    Cadence, in iterations: a row of metrics every `train.log_every` (one log
      line `describe(step, metrics)`, by default "<name> step <s>: <log_keys>"),
      `evaluate()` every `train.eval_every` and at the last (its metrics logged
      as eval/<k>, in the same row when both fall due), a checkpoint every
      `train.checkpoint_every` and at the last; SIGTERM saves the iteration in
      flight and exits 75 (preemption; `unit` names it in the message).
    Keep-best: `best_by=(metric, "min" | "max")` ranks the evaluations; the
      best so far is checkpointed with the state, and under
      `train.select="best"` `keep` of the model at that point (the policy of
      RL's actor-critic, say) is saved to <workdir>/best_model, which
      `chosen_model` then returns.
    """
    t = self.t
    steps = steps or self.total_steps
    per = self.total_steps // steps           # optimiser steps per iteration
    start = self.restore(data_iter) // per
    save_best = best_by is not None and t.select == "best"
    if iteration is None:
      def iteration(step):
        batch = next(data_iter)
        metrics = self.step(batch)
        return {**metrics, "tokens": tokens_per_batch(batch)} if tokens_per_batch else metrics
    if describe is None:
      describe = lambda step, m: f"{self.name} step {step}: " + " ".join(
          f"{k} {m[k]:.4f}" for k in log_keys if k in m)
    writer = MetricsWriter(self.workdir, self.name)
    bar = tqdm(total=steps, initial=start, desc=self.name, dynamic_ncols=True,
               disable=jax.process_index() != 0)
    last, pending, tokens, t0 = {}, None, None, time.perf_counter()

    def resolve():
      nonlocal pending, tokens
      if pending is not None:
        host = self.check(*pending)
        if "tokens" in host:
          tokens = (tokens or 0) + host.pop("tokens")
        last.clear()
        last.update(host)
        pending = None

    watch = Watcher(self.name).start()
    try:
      for step in range(start + 1, steps + 1):
        metrics = iteration(step)
        # The previous iteration's metrics, fetched after this one was dispatched.
        resolve()
        pending = (step, metrics)
        preempted = watch.reached(step)
        final = step == steps
        due_ckpt = preempted or step % t.checkpoint_every == 0 or final
        due_log = step % t.log_every == 0 or final
        due_eval = evaluate is not None and ((t.eval_every and step % t.eval_every == 0) or final)
        if due_ckpt or due_log or due_eval:
          resolve()                       # in sync (and NaN-checked) before anything is saved
        row = {}
        if due_log:
          dt = time.perf_counter() - t0
          if tokens is not None:
            last["tokens_per_sec"] = tokens / dt if dt > 0 else 0.0
          tokens, t0 = None, time.perf_counter()
          row.update(last)
          logging.info("%s", describe(step, last))
          bar.set_postfix({k: f"{last[k]:.4g}" for k in (*log_keys, "tokens_per_sec")
                           if isinstance(last.get(k), float)})
        if due_eval:
          ev = {f"eval/{k}": v for k, v in evaluate().items()}
          row.update(ev)
          if final:
            last.update(ev)
          if best_by is not None:
            self._rank(step, ev, *best_by, keep if save_best else None)
        if row:
          texts = {k: v for k, v in row.items() if not _is_scalar(v)}
          writer.write(step, {k: v for k, v in row.items() if k not in texts}, texts or None)
        if due_ckpt:
          self.save(data_iter, force=preempted)
        if preempted:
          self.ckpt.wait_until_finished()
          watch.stop(step, str(self.ckpt.directory), unit=unit)
        bar.update(1)
      if start >= steps and evaluate is not None:
        # a finished run started again: its result still carries the evaluation
        last.update({f"eval/{k}": v for k, v in evaluate().items()})
    finally:
      bar.close()
      writer.close()
      self.ckpt.wait_until_finished()
      watch.close()
    result = {k: v for k, v in last.items() if _is_scalar(v)}
    if self.best is not None:
      result.update({"best_step": self.best["step"],
                     f"best_eval/{self.best['metric']}": self.best["value"]})
    return result

  def _rank(self, step: int, ev: dict, metric: str, mode: str, keep) -> None:
    """Keeps self.best (and best_model/ when `keep` is given) up to date with
    the evaluation `ev` of `step`."""
    value = ev.get(f"eval/{metric}")
    if value is None or not math.isfinite(value):
      # Under select=last the ranking only reports best_step: held-out data without
      # the metric (an RM's unlabelled pairs) is no reason to warn. Under select=best
      # it is: the model kept would silently be the last one.
      if keep is not None:
        logging.warning("%s step %d: no finite eval/%s to rank (got %s); train.select=best "
                        "keeps nothing from this evaluation", self.name, step, metric, sorted(ev))
      return
    b = self.best
    if b is None or (value < b["value"] if mode == "min" else value > b["value"]):
      self.best = {"step": step, "metric": metric, "value": float(value)}
      if keep is not None:
        store.save(keep(self.model()), self.best_dir)

  def check(self, step: int, metrics: dict) -> dict:
    """Host copy of a step's metrics (scalars as floats); raises
    NonFiniteLossError if the NaN guard refused the step (metrics["finite"])."""
    host = {k: float(v) if _is_scalar(v) else v for k, v in jax.device_get(metrics).items()}
    if not host.pop("finite", True):
      self.ckpt.wait_until_finished()
      good = self.ckpt.latest_step()
      raise NonFiniteLossError(
          f"{self.name}: non-finite loss ({host['loss']}) or gradient norm "
          f"({host['grad_norm']}) at step {step}; stopped. The last good checkpoint is "
          f"step {good} in {self.ckpt.directory}" if good is not None else
          f"{self.name}: non-finite loss at step {step}; stopped before any checkpoint")
    return host


def _is_scalar(v) -> bool:
  return not isinstance(v, (str, bytes, list, tuple, dict)) and np.ndim(v) == 0
