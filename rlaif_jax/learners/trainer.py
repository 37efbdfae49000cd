"""Training machinery shared by every learner (SFT, RM, RL, DPO).

A learner supplies a model and a loss; `Trainer` owns everything else:

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
"""
from __future__ import annotations

import base64
import logging
import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import optax
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm.auto import tqdm

from rlaif_jax import paths
from rlaif_jax.learners.metrics import MetricsWriter
from rlaif_jax.mesh import batch_sharding, global_batch
from rlaif_jax.preemption import Watcher

# loss_fn(model, batch, rng[, frozen]) -> (scalar loss, {metric: scalar})
LossFn = Callable[..., tuple[jax.Array, dict]]


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


def accumulate(loss_fn, graphdef, params, micro, keys, extra=()):
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
  weighting costs no extra pass over the gradient.
  """
  def grads_of(mb, key):
    def f(params):
      loss, aux = loss_fn(nnx.merge(graphdef, params), mb, key, *extra)
      w = jax.lax.stop_gradient(jnp.asarray(aux.get("weight", 1.0), jnp.float32))
      rest = {k: w * jnp.asarray(v, jnp.float32) for k, v in aux.items() if k != "weight"}
      return w * loss, (w, rest)
    (wl, (w, wa)), g = jax.value_and_grad(f, has_aux=True)(params)
    return wl, wa, g, w

  def body(carry, xs):
    return jax.tree.map(jnp.add, carry, grads_of(*xs)), None
  first = grads_of(jax.tree.map(lambda x: x[0], micro), keys[0])
  rest = jax.tree.map(lambda x: x[1:], micro)
  (wl, wa, g, w), _ = jax.lax.scan(body, first, (rest, keys[1:]))
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
                                 "data": ocp.JsonCheckpointHandler()},
        options=ocp.CheckpointManagerOptions(
            max_to_keep=self.t.keep_checkpoints, enable_async_checkpointing=True,
            create=True))

  # ------------------------------------------------------------------ model
  def model(self, params=None) -> nnx.Module:
    return nnx.merge(self.graphdef, self.state["params"] if params is None else params)

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
                                    extra)
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
    items = {"state": ocp.args.StandardSave(self.state)}
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
    has_data = "data" in (self.ckpt.item_metadata(step) or {})
    if data_iter is not None and has_data:
      items["data"] = ocp.args.JsonRestore()
    restored = self.ckpt.restore(step, args=ocp.args.Composite(**items))
    self.state = restored["state"]
    if data_iter is not None and has_data:
      data_iter.set_state(_decode_iter_state(restored["data"]))
    logging.info("%s: resumed from step %d", self.name, step)
    return step

  # ------------------------------------------------------------------ loop
  def fit(self, data_iter: Iterator[dict], eval_fn: Callable[[], dict] | None = None,
          tokens_per_batch: Callable[[dict], int] | None = None) -> dict:
    """Runs to `total_steps`, resuming from the workdir; returns the last metrics."""
    start = self.restore(data_iter)
    writer = MetricsWriter(self.workdir, self.name)
    t, last = self.t, {}
    bar = tqdm(total=self.total_steps, initial=start, desc=self.name, dynamic_ncols=True,
               disable=jax.process_index() != 0)
    pending, tokens, t0 = None, 0, time.perf_counter()
    watch = Watcher(self.name).start()
    try:
      for step in range(start + 1, self.total_steps + 1):
        batch = next(data_iter)
        tokens += tokens_per_batch(batch) if tokens_per_batch else 0
        metrics = self.step(batch)
        # Fetch the previous step's metrics after dispatching this one, so the
        # host never stalls the device; sync fully before anything is saved.
        if pending is not None:
          last = self.check(*pending)
        pending = (step, metrics)
        preempted = watch.reached(step)
        due_ckpt = preempted or step % t.checkpoint_every == 0 or step == self.total_steps
        due_log = step % t.log_every == 0 or step == self.total_steps
        if due_ckpt or due_log:
          last, pending = self.check(*pending), None
        if due_log:
          dt = time.perf_counter() - t0
          last["tokens_per_sec"] = tokens / dt if dt > 0 else 0.0
          tokens, t0 = 0, time.perf_counter()
          writer.write(step, last)
          logging.info("%s step %d: loss %.4f", self.name, step, last["loss"])
          bar.set_postfix(loss=f"{last['loss']:.4f}", tok_s=f"{last['tokens_per_sec']:.0f}")
        if eval_fn is not None and t.eval_every and step % t.eval_every == 0:
          writer.write(step, {f"eval/{k}": v for k, v in eval_fn().items()})
        if due_ckpt:
          self.save(data_iter, force=preempted)
        if preempted:
          self.ckpt.wait_until_finished()
          watch.stop(step, str(self.ckpt.directory))
        bar.update(1)
      if eval_fn is not None:
        ev = eval_fn()
        writer.write(self.total_steps, {f"eval/{k}": v for k, v in ev.items()})
        last.update({f"eval/{k}": v for k, v in ev.items()})
    finally:
      bar.close()
      writer.close()
      self.ckpt.wait_until_finished()
      watch.close()
    return last

  def check(self, step: int, metrics: dict) -> dict:
    """Host copy of a step's metrics; raises NonFiniteLossError if it was not finite."""
    host = {k: float(v) for k, v in jax.device_get(metrics).items()}
    if not host.pop("finite"):
      self.ckpt.wait_until_finished()
      good = self.ckpt.latest_step()
      raise NonFiniteLossError(
          f"{self.name}: non-finite loss ({host['loss']}) or gradient norm "
          f"({host['grad_norm']}) at step {step}; stopped. The last good checkpoint is "
          f"step {good} in {self.ckpt.directory}" if good is not None else
          f"{self.name}: non-finite loss at step {step}; stopped before any checkpoint")
    return host
