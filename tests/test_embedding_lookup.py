"""The sharded embedding lookup (`ops.embedding_lookup`): on every mesh shape the
8 fake devices allow, its values equal numpy's `table[tokens]` and its table
gradient equals numpy's scatter-add (np.add.at), token ids on every block
boundary included; and the compiled gradient moves no table-sized array."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding

from rlaif_jax import aot
from rlaif_jax.mesh import MESH_AXES, logical_sharding, logical_to_spec
from rlaif_jax.models.ops import embedding_lookup

V, D = 64, 8


def _mesh(shape):
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3,
                       devices=jax.devices()[:int(np.prod(shape))])


def _case(batch, seed=0):
  rng = np.random.default_rng(seed)
  table = rng.normal(size=(V, D)).astype(np.float32)
  tokens = rng.integers(0, V, size=(batch, 6)).astype(np.int32)
  # every block boundary of every split of 64 rows into 2, 4 or 8 blocks
  edges = np.array([0, 7, 8, 15, 16, 31, 32, 47, 48, 55, 56, 63], np.int32)
  tokens.reshape(-1)[:edges.size] = edges[:min(edges.size, tokens.size)]
  cot = rng.normal(size=(batch, 6, D)).astype(np.float32)
  return table, tokens, cot


def _run(mesh, table, tokens, cot, dtype=jnp.float32):
  t_sh = logical_sharding(("vocab", "embed"), mesh, table.shape)
  b_sh = logical_sharding(("batch", None), mesh, tokens.shape)

  def loss(t, tok):
    return jnp.sum(embedding_lookup(t, tok, dtype).astype(jnp.float32) * cot)

  with jax.set_mesh(mesh):
    t = jax.device_put(table, t_sh)
    tok = jax.device_put(tokens, b_sh)
    out = jax.jit(lambda t, tok: embedding_lookup(t, tok, dtype))(t, tok)
    grad = jax.jit(jax.grad(loss))(t, tok)
  return np.asarray(out.astype(jnp.float32)), np.asarray(grad), grad.sharding


@pytest.mark.parametrize("shape", [(1, 8, 1), (2, 2, 2), (1, 2, 4), (2, 4, 1), (4, 1, 2),
                                   (8, 1, 1), (1, 1, 8)])
def test_lookup_and_its_gradient_equal_numpy_on_every_mesh(shape):
  mesh = _mesh(shape)
  table, tokens, cot = _case(batch=8)
  out, grad, grad_sharding = _run(mesh, table, tokens, cot)
  np.testing.assert_array_equal(out, table[tokens])
  want = np.zeros_like(table)
  np.add.at(want, tokens, cot)          # a token seen twice gets both cotangents
  np.testing.assert_allclose(grad, want, rtol=1e-6, atol=1e-6)
  # the gradient comes out split like the table, not replicated
  table_sharding = NamedSharding(mesh, logical_to_spec(("vocab", "embed"), mesh, table.shape))
  assert grad_sharding.is_equivalent_to(table_sharding, 2), grad_sharding


def test_rows_no_split_divides_and_a_batch_no_split_divides():
  mesh = _mesh((1, 2, 4))
  table, tokens, cot = _case(batch=3, seed=1)        # 3 rows: the batch stays whole
  out, grad, _ = _run(mesh, table, tokens, cot)
  np.testing.assert_array_equal(out, table[tokens])
  want = np.zeros_like(table)
  np.add.at(want, tokens, cot)
  np.testing.assert_allclose(grad, want, rtol=1e-6, atol=1e-6)
  odd = np.random.default_rng(2).normal(size=(61, D)).astype(np.float32)   # 61 rows: prime
  tok = np.array([[0, 60, 30, 1, 59, 7]] * 8, np.int32)
  o2, _, _ = _run(mesh, odd, tok, np.ones((8, 6, D), np.float32))
  np.testing.assert_array_equal(o2, odd[tok])


def test_bfloat16_lookup_rounds_each_row_once():
  table, tokens, cot = _case(batch=8, seed=3)
  out, _, _ = _run(_mesh((2, 2, 2)), table, tokens, cot, jnp.bfloat16)
  want = np.asarray(jnp.asarray(table[tokens]).astype(jnp.bfloat16).astype(jnp.float32))
  np.testing.assert_array_equal(out, want)


def test_the_compiled_gradient_moves_no_table_sized_array():
  """A (4096, 8) table on fsdp 8: what crosses devices is tokens and (B, T, D)
  activations, never the table (4096 rows) or a (512-row) shard of it."""
  mesh = _mesh((1, 8, 1))
  rng = np.random.default_rng(4)
  table = jax.ShapeDtypeStruct((4096, D), jnp.float32,
                               sharding=logical_sharding(("vocab", "embed"), mesh, (4096, D)))
  tokens = jax.ShapeDtypeStruct((8, 6), jnp.int32,
                                sharding=logical_sharding(("batch", None), mesh, (8, 6)))
  cot = jnp.asarray(rng.normal(size=(8, 6, D)), jnp.float32)

  def loss(t, tok):
    return jnp.sum(embedding_lookup(t, tok, jnp.float32) * cot)

  with jax.set_mesh(mesh):
    hlo = jax.jit(jax.grad(loss)).lower(table, tokens).compile().as_text()
  # groups of one device move nothing (autodiff's psum over data=1)
  single = re.compile(r"replica_groups=\{\{\d+\}(,\{\d+\})*\}")
  moved = aot.collectives("\n".join(l for l in hlo.splitlines() if not single.search(l)))
  assert moved, "expected the activation collectives"
  for kind, c in moved.items():
    dims = [int(x) for x in re.findall(r"\d+", c["largest"].split("[", 1)[1])]
    assert 4096 not in dims and 512 not in dims, (kind, c["largest"])
