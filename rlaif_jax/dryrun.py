"""`--dry_run`: check a config against its target hardware without allocating.

Builds the (abstract) mesh of `hardware.chips` devices, evaluates every model of
the stage with `nnx.eval_shape`, maps each parameter through the logical-axis
rules and adds up what one device holds:

  params      float32 shards of every model the stage keeps on device
  grads       one float32 shard per trainable parameter
  optimizer   optax's state for the configured optimizer (eval_shape of init),
              sharded like its parameter where shapes match, else replicated
  activations estimate for one micro-batch without rematerialisation, after
              Korthikanti et al. (2022): per layer s·b·d·(10 + 24/t) + 5·a·s²·b
              elements (t = tensor size, a = heads), plus the float32 logits and
              their gradient, s·b·V/t each (not for a reward model), and the
              embedding table gathered whole for the lookup, V·d (x2 in training)
  kv_cache    labeling / sampling: 2·L·b·s·kv·hd elements

It prints the parameter count, the per-device total against
`hardware.memory_gib_per_chip`, and the sharding of every parameter.
"""
from __future__ import annotations

import math

import jax
import numpy as np
import optax
from flax import nnx
from jax.sharding import AbstractMesh, AxisType

from rlaif_jax import paths
from rlaif_jax.learners.rl_algorithms import ALGORITHMS
from rlaif_jax.learners.trainer import make_optimizer
from rlaif_jax.mesh import MESH_AXES, logical_to_spec, resolve_mesh_shape, spec_axes
from rlaif_jax.models.build import resolve
from rlaif_jax.models.config import ModelConfig
from rlaif_jax.models.sharding import abstract_model
from rlaif_jax.models.transformer import ScalarModel, Transformer

GIB = 1024**3
# stage -> [(role, kind, trainable)]
MODELS = {
    "sft": [("policy", "lm", True)],
    "rm": [("reward_model", "scalar", True)],
    "dpo": [("policy", "lm", True), ("reference", "lm", False)],
    "rl": [("policy", "lm", True), ("value", "scalar", True), ("reference", "lm", False),
           ("reward_model", "scalar", False)],
    "label": [("labeler", "lm", False)],
    "eval": [("policy", "lm", False)],   # one policy at a time, + the labeler when it judges
}


def model_config_for(mcfg, dtype: str | None = None) -> ModelConfig:
  """The architecture a model section names (`models.build.resolve`, with its
  dtype and layout); a checkpoint that is not on this machine (it lives on the
  TPU hosts) counts as absent, so its preset or arch is sized instead."""
  path = mcfg.get("checkpoint", "")
  return resolve(mcfg, dtype=dtype, checkpoint=path if path and paths.exists(path) else "")


def _shard_elems(shape, spec, mesh) -> int:
  n = 1
  for dim, ax in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    n *= dim // math.prod(mesh.shape[a] for a in spec_axes(ax))
  return n


def _params(cfg: ModelConfig, kind: str, mesh):
  ctor = (lambda r: Transformer(cfg, r)) if kind == "lm" else (lambda r: ScalarModel(cfg, r))
  _, abstract = abstract_model(ctor)
  rows = []
  for path, var in nnx.to_flat_state(abstract):
    shape = var.get_value().shape
    spec = logical_to_spec(var.get_metadata()["logical_axes"], mesh, shape)
    rows.append(("/".join(map(str, path)), shape, spec, _shard_elems(shape, spec, mesh)))
  return rows


def _optimizer_elems(config, rows, mesh) -> int:
  tx = make_optimizer(config.train, config.train.steps)
  params = {name: jax.ShapeDtypeStruct(shape, np.float32) for name, shape, _, _ in rows}
  shard = {name: n for name, _, _, n in rows}
  state = jax.eval_shape(tx.init, params)
  total = 0
  sizes = optax.tree_map_params(
      tx, lambda leaf, p, n: n if leaf.shape == p.shape else math.prod(leaf.shape),
      state, params, shard, transform_non_params=lambda leaf: math.prod(getattr(leaf, "shape", ())))
  for x in jax.tree.leaves(sizes):
    total += int(x)
  return total


def _mesh(mesh_cfg, n_devices: int) -> AbstractMesh:
  shape = resolve_mesh_shape((mesh_cfg.data, mesh_cfg.fsdp, mesh_cfg.tensor), n_devices)
  return AbstractMesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def _labeler(config, n_devices: int):
  """The labeler's architecture and (sub-)mesh: its first `labeler.mesh.devices`."""
  lab = {"label": config.get("labeler"), "eval": config.get("eval", {}).get("labeler")}.get(
      config.stage) or config.rl.labeler
  mesh = _mesh(lab.mesh, lab.mesh.devices or n_devices)
  return model_config_for(lab.model), mesh, lab


def estimate(config, n_devices: int) -> dict:
  stage = config.stage if config.stage in MODELS else "sft"
  mesh = _mesh(config.mesh, n_devices)
  cfg = model_config_for(config.model)
  direct = stage == "rl" and config.rl.get("reward") == "labeler"
  judge = stage == "eval" and config.eval.judge == "labeler"
  if stage == "label" or direct or judge:
    lab_cfg, lab_mesh, lab = _labeler(config, n_devices)
  if stage == "label":
    cfg, mesh = lab_cfg, lab_mesh
  shape = tuple(mesh.shape.values())
  act_bytes = 2 if cfg.dtype == "bfloat16" else 4
  dp, t = shape[0] * shape[1], shape[2]
  out = {"mesh": dict(zip(MESH_AXES, shape)), "devices": mesh.size, "models": {},
         "bytes_per_device": {"params": 0, "grads": 0, "optimizer": 0, "activations": 0,
                              "kv_cache": 0}}
  b = out["bytes_per_device"]
  seq = config.data.max_prompt_len + config.data.max_response_len
  batch_rows = config.train.batch_size
  models = [(role, kind, trainable, cfg, mesh) for role, kind, trainable in MODELS[stage]]
  if stage == "rl":
    alg = ALGORITHMS[config.rl.algorithm]
    batch_rows *= alg.group_size(config.rl)      # k responses per prompt (grpo, rloo)
    if not alg.value_model or config.rl.shared_value_head:   # no value network (a head: d floats)
      models = [m for m in models if m[0] != "value"]
  per_dev = max(batch_rows // dp // max(config.train.grad_accum, 1), 1)
  if direct:   # the labeler's direct scores replace the RM (its devices overlap the policy's)
    models = [m for m in models if m[0] != "reward_model"] + [
        ("labeler", "lm", False, lab_cfg, lab_mesh)]
  if judge:
    models.append(("judge", "lm", False, lab_cfg, lab_mesh))
  for role, kind, trainable, mcfg, mmesh in models:
    rows = _params(mcfg, kind, mmesh)
    elems = sum(r[3] for r in rows)
    out["models"][role] = {"kind": kind, "trainable": trainable,
                           "params": sum(math.prod(r[1]) for r in rows),
                           "sharding": {r[0]: f"{r[1]} -> {r[2]}" for r in rows}}
    b["params"] += 4 * elems
    if trainable:
      b["grads"] += 4 * elems
      b["optimizer"] += 4 * _optimizer_elems(config, rows, mmesh)
  pairs = 2 if stage in ("rm", "dpo") else 1     # both responses in one forward pass
  tokens = per_dev * pairs
  if stage == "label":
    lb = max(lab.batch_size // dp, 1) * 2          # both orders in one batch
    b["kv_cache"] = act_bytes * 2 * cfg.n_layers * lb * seq * cfg.n_kv_heads * cfg.head_dim
    b["activations"] = 4 * cfg.vocab_size * cfg.d_model     # the gathered embedding table
  elif stage == "eval":                            # generation: the KV cache of a batch
    rows = max(config.eval.batch_size // dp, 1)
    b["kv_cache"] = act_bytes * 2 * cfg.n_layers * rows * seq * cfg.n_kv_heads * cfg.head_dim
    b["activations"] = 4 * cfg.vocab_size * cfg.d_model
  else:
    layer = seq * tokens * cfg.d_model * (10 + 24 / t) + 5 * (cfg.n_heads / t) * seq**2 * tokens
    logits = 2 * 4 * seq * tokens * cfg.vocab_size / t if stage != "rm" else 0
    table = 2 * 4 * cfg.vocab_size * cfg.d_model
    b["activations"] = int(act_bytes * cfg.n_layers * layer + logits + table)
    if stage == "rl":
      b["kv_cache"] = act_bytes * 2 * cfg.n_layers * per_dev * seq * cfg.n_kv_heads * cfg.head_dim
  out["total_bytes_per_device"] = int(sum(b.values()))
  return out


def report(config, n_devices: int) -> dict:
  est = estimate(config, n_devices)
  hw = config.get("hardware")
  budget = hw.memory_gib_per_chip * GIB if hw and hw.memory_gib_per_chip else None
  est["budget_bytes_per_device"] = budget
  est["fits"] = None if budget is None else est["total_bytes_per_device"] <= budget
  mesh = " x ".join(f"{k}={v}" for k, v in est["mesh"].items())
  print(f"dry run: stage {config.stage} on {est['devices']} devices ({mesh})"
        + (f", hardware {hw.name}" if hw and hw.name else ""))
  for role, m in est["models"].items():
    print(f"  {role:13s} {m['kind']:6s} {m['params'] / 1e9:8.3f} B params"
          f"{'  (trained)' if m['trainable'] else ''}")
  for k, v in est["bytes_per_device"].items():
    print(f"  per device: {k:12s} {v / GIB:8.2f} GiB")
  verdict = "" if budget is None else (
      f" of {budget / GIB:.0f} GiB: {'fits' if est['fits'] else 'DOES NOT FIT'}")
  print(f"  per device: {'total':12s} {est['total_bytes_per_device'] / GIB:8.2f} GiB{verdict}")
  first = next(iter(est["models"].values()))
  print("  sharding (shape -> PartitionSpec):")
  for name, s in first["sharding"].items():
    print(f"    {name:32s} {s}")
  return est
