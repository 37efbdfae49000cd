"""Creating NNX models already sharded on a mesh.

`init_sharded` evaluates the constructor abstractly (no memory), derives each
parameter's NamedSharding from its `logical_axes` metadata and the rules table,
and runs the real initialiser under `jax.jit(out_shardings=...)`: every device
materialises only its own shard.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from rlaif_jax.mesh import logical_sharding


def state_shardings(abstract_state: nnx.State, mesh: Mesh) -> nnx.State:
  """NamedSharding for every variable, from its `logical_axes` metadata."""
  def one(var):
    axes = var.get_metadata().get("logical_axes")
    shape = var.get_value().shape
    if axes is None:
      axes = (None,) * len(shape)
    if len(axes) != len(shape):
      raise ValueError(f"logical_axes {axes} do not match shape {shape}")
    return logical_sharding(axes, mesh, shape)
  return jax.tree.map(one, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def abstract_model(ctor: Callable[[nnx.Rngs], nnx.Module]):
  """(graphdef, abstract state) without allocating parameters."""
  return nnx.split(nnx.eval_shape(lambda: ctor(nnx.Rngs(0))))


def init_sharded(ctor: Callable[[nnx.Rngs], nnx.Module], mesh: Mesh, seed: int = 0):
  """Builds `ctor(rngs)` with every parameter created directly in its shard."""
  graphdef, abstract = abstract_model(ctor)
  shardings = state_shardings(abstract, mesh)

  def init(key):
    return nnx.split(ctor(nnx.Rngs(params=key)))[1]

  init = jax.jit(init, out_shardings=shardings)
  with jax.set_mesh(mesh):
    state = init(jax.random.key(seed))
  return nnx.merge(graphdef, state)


def copy_params(params):
  """A separate, identically sharded copy of a params pytree: a frozen reference
  that outlives the trainer's donated buffers."""
  shardings = jax.tree.map(lambda x: x.sharding, params)
  return jax.jit(lambda t: jax.tree.map(jnp.copy, t), out_shardings=shardings)(params)


def placed_shardings(model: nnx.Module) -> dict[tuple, NamedSharding]:
  """Flat path -> sharding of the model's live parameters (for inspection/tests)."""
  return {path: var[...].sharding for path, var in nnx.to_flat_state(nnx.state(model))}
