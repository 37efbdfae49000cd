"""What every benchmark shares: the model-shape flags, the model they describe,
and a data-parallel mesh over this machine's devices.

Benchmarks run as scripts (`python benchmarks/x.py`), so this module is found
beside them. The default shape is the one the issues quote reference figures
for: a Llama-style model with hidden 512, 8 layers, 8 heads, vocab 32000.
"""
from __future__ import annotations

import argparse

import jax
from jax.sharding import AxisType


def parser(doc: str) -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=doc.splitlines()[0])
  p.add_argument("--d_model", type=int, default=512)
  p.add_argument("--layers", type=int, default=8)
  p.add_argument("--heads", type=int, default=8)
  p.add_argument("--vocab", type=int, default=32000)
  p.add_argument("--json", action="store_true")
  return p


def model_config(a, **kw):
  from rlaif_jax.models import ModelConfig
  return ModelConfig(**{**dict(vocab_size=a.vocab, d_model=a.d_model, n_layers=a.layers,
                               n_heads=a.heads, n_kv_heads=a.heads, head_dim=a.d_model // a.heads,
                               d_ff=4 * a.d_model, max_seq_len=4096), **kw})


def data_parallel_mesh():
  return jax.make_mesh((jax.device_count(), 1, 1), ("data", "fsdp", "tensor"),
                       axis_types=(AxisType.Auto,) * 3)
