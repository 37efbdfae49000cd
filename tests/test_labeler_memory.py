"""The cached scoring step's memory does not grow with tail length × vocabulary:
the compiled program's temporaries for a long and a short tail differ by far
less than one (rows, Δtail, vocab) float32 array, which computing logits at
every tail position needs (CPU compile, nothing runs). Measured: the earlier
all-position version grew by 2.15 GB here (one such array), this one by 70 MB
(attention over the longer tail)."""
import jax
import numpy as np
import pytest
from jax.sharding import AxisType

from rlaif_jax.labeler import engine as E
from rlaif_jax.models import ModelConfig, Transformer, init_sharded

VOCAB = 131072       # large against everything else, as Gemma's 256k is against d_model
CFG = ModelConfig(vocab_size=VOCAB, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1,
                  head_dim=16, d_ff=64, max_seq_len=4096)
B, G, CTX = 4, 2, 32


@pytest.fixture(scope="module")
def engine():
  mesh = jax.make_mesh((1, 1, 1), ("data", "fsdp", "tensor"), axis_types=(AxisType.Auto,) * 3,
                       devices=jax.devices()[:1])
  model = init_sharded(lambda r: Transformer(CFG, r), mesh, seed=0)
  eng = E.ScoringEngine(model, mesh, pad_id=0, batch_size=B, bucket=32)
  eng.set_prefix("p", list(range(1, 40)))
  return eng


def temporaries(eng, tail_len: int, want_logp: bool) -> int:
  ids, kv = eng._prefixes["p"]
  ctx = np.ones((B, CTX), np.int32)
  tail = np.ones((B * G, tail_len), np.int32)
  with jax.set_mesh(eng.mesh):
    compiled = E.cached_scores.lower(eng.graphdef, G, want_logp, eng.params, kv, len(ids), ctx,
                               ctx > 0, tail, tail > 0, np.arange(3, dtype=np.int32)).compile()
  return compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("want_logp", [False, True])
def test_temporaries_do_not_grow_with_tail_times_vocab(engine, want_logp):
  short, long = 64, 576
  grow = temporaries(engine, long, want_logp) - temporaries(engine, short, want_logp)
  one_logits_array = B * G * (long - short) * VOCAB * 4      # 2.15 GB
  assert grow < one_logits_array / 4, (grow, one_logits_array)
