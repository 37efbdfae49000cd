"""Device mesh, logical-axis rules and multi-host initialisation.

Parameters and activations are annotated with *logical* axis names ("embed",
"heads", "mlp", "vocab", "batch", ...). `RULES` maps each logical name onto
zero or more mesh axes ("data", "fsdp", "tensor"). Changing the parallelism is
therefore a config change (mesh shape), never a model change.
"""
from __future__ import annotations

import logging
import math
import os
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axes (None = replicated). FSDP shards the model dim of
# every weight but the embedding table, whose vocabulary rows it shards (with
# tensor): the tied LM head's gradient then leaves each logits_chunk piece
# already split by rows, where a (vocab, embed/fsdp) table made the TPU
# compiler all-reduce the whole float32 table gradient (1.95 GiB for Gemma-2B)
# once per piece. Tensor parallelism shards heads, MLP width and vocabulary.
RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("vocab", ("tensor", "fsdp")),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("head_dim", None),
    ("length", None),
    ("norm", None),
    ("head_out", None),
)


def maybe_initialize_distributed(coordinator_address: str | None = None,
                                 num_processes: int | None = None,
                                 process_id: int | None = None) -> None:
  """Joins a multi-process run through `jax.distributed` when asked to.

  On Cloud TPU pods `jax.distributed.initialize()` discovers everything itself
  (RLAIF_JAX_DISTRIBUTED=1 asks for it); for local CPU processes the coordinator
  address, process count and id are given explicitly.
  """
  if coordinator_address:
    if os.environ.get("JAX_PLATFORMS", "").startswith("cpu") or jax.config.jax_platforms == "cpu":
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  elif os.environ.get("RLAIF_JAX_DISTRIBUTED") == "1":
    jax.distributed.initialize()
  else:
    return
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())


def resolve_mesh_shape(shape: Sequence[int], n_devices: int) -> tuple[int, ...]:
  """Fills the single -1 entry so that the product equals `n_devices`."""
  shape = [int(s) for s in shape]
  names = ", ".join(f"{a}={s}" for a, s in zip(MESH_AXES, shape))
  if shape.count(-1) > 1:
    raise ValueError(f"mesh ({names}): at most one axis may be -1 (fill the rest)")
  if any(s == 0 or s < -1 for s in shape):
    raise ValueError(f"mesh ({names}): axis sizes must be positive or -1")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if n_devices % known:
      raise ValueError(
          f"mesh ({names}): the fixed axes multiply to {known}, which does not divide "
          f"the {n_devices} available devices; choose sizes whose product divides {n_devices}")
    shape[shape.index(-1)] = n_devices // known
  elif known != n_devices:
    raise ValueError(
        f"mesh ({names}) needs {known} devices but {n_devices} are available; "
        f"set one axis to -1 or make data*fsdp*tensor = {n_devices}")
  return tuple(shape)


def make_mesh(mesh_cfg, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds a (data, fsdp, tensor) mesh with Auto axis types from config."""
  devices = list(devices) if devices is not None else jax.devices()
  shape = resolve_mesh_shape((mesh_cfg.data, mesh_cfg.fsdp, mesh_cfg.tensor), len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def abstract_mesh(mesh_cfg, n_devices: int) -> jax.sharding.AbstractMesh:
  """The mesh `make_mesh` would build on `n_devices`, as shapes only (no devices):
  what a stage's `validate` checks batch sizes against before anything runs."""
  shape = resolve_mesh_shape((mesh_cfg.data, mesh_cfg.fsdp, mesh_cfg.tensor), n_devices)
  return jax.sharding.AbstractMesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def data_parallel_size(mesh: Mesh) -> int:
  return mesh.shape["data"] * mesh.shape["fsdp"]


def spec_axes(entry) -> tuple[str, ...]:
  """The mesh axes of one PartitionSpec entry (or one rule's target): None, a
  name or a tuple of names, as a tuple."""
  return () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)


def logical_to_spec(logical_axes: Sequence[str | None], mesh: Mesh | None = None,
                    shape: Sequence[int] | None = None, rules=RULES) -> P:
  """Maps logical axis names to a PartitionSpec through `rules`.

  With `mesh` and `shape`, a mesh axis that does not divide its dimension
  (e.g. 1 KV head over tensor=2) is dropped for that dimension, which then is
  replicated over it instead of failing to compile. A mesh axis is used at
  most once per array.
  """
  table = dict(rules)
  used: set[str] = set()
  out = []
  for i, name in enumerate(logical_axes):
    if name is None:
      out.append(None)
      continue
    if name not in table:
      raise KeyError(f"logical axis {name!r} has no rule; known: {sorted(table)}")
    target = table[name]
    axes = spec_axes(target)
    kept = []
    size = 1
    for a in axes:
      if a in used:
        continue
      if mesh is not None and shape is not None:
        if shape[i] % (size * mesh.shape[a]):
          continue
        size *= mesh.shape[a]
      kept.append(a)
    used.update(kept)
    out.append(None if not kept else (kept[0] if len(kept) == 1 else tuple(kept)))
  return P(*out)


def logical_sharding(logical_axes, mesh: Mesh, shape=None) -> NamedSharding:
  return NamedSharding(mesh, logical_to_spec(logical_axes, mesh, shape))


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
  """`with_sharding_constraint` by logical names; a no-op outside a mesh context."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  return jax.lax.with_sharding_constraint(x, logical_to_spec(logical_axes, mesh, x.shape))


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  """Batch dim over (data, fsdp); the rest replicated."""
  return NamedSharding(mesh, P(("data", "fsdp"), *([None] * (ndim - 1))))


def global_batch(local: Any, mesh: Mesh) -> Any:
  """Assembles the global batch from this process's rows (multi-host safe)."""
  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_process_local_data(batch_sharding(mesh, x.ndim), x)
  return jax.tree.map(put, local)


def to_host(x: jax.Array) -> np.ndarray:
  """A global array, whole, as numpy on every process (an all-gather across hosts)."""
  if jax.process_count() > 1 and not x.is_fully_addressable:
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))
