"""RL rollout throughput: new tokens/s of our KV-cache sampler next to
transformers' PyTorch `generate` on the same model config, prompts and lengths,
measured in the same run.

    python benchmarks/rollout.py [--json] [--d_model 512 --layers 8 --vocab 32000 ...]

Default: a Llama-style model (hidden 512, 8 layers, 8 heads, vocab 32000),
batch 16, 64-token prompts, 64 new tokens, greedy, no EOS (every row decodes
the full budget on both sides). Both sides run in float32 with random weights;
compile time (ours) and the first call (theirs) are excluded by a warm-up.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def model_config(a):
  from rlaif_jax.models.config import ModelConfig
  return ModelConfig(vocab_size=a.vocab, d_model=a.d_model, n_layers=a.layers, n_heads=a.heads,
                     n_kv_heads=a.kv_heads, head_dim=a.d_model // a.heads, d_ff=a.d_ff,
                     max_seq_len=a.prompt + a.new)


def bench_ours(a, prompts) -> float:
  import jax
  from jax.sharding import AxisType

  from rlaif_jax.models.sharding import init_sharded
  from rlaif_jax.models.transformer import Transformer
  from rlaif_jax.sampling import Sampler, SamplingConfig

  n = len(jax.devices())
  mesh = jax.make_mesh((n, 1, 1), ("data", "fsdp", "tensor"), axis_types=(AxisType.Auto,) * 3)
  cfg = model_config(a)
  model = init_sharded(lambda rngs: Transformer(cfg, rngs), mesh, seed=0)
  sampler = Sampler(model, mesh, eos_id=-1, pad_id=0)      # -1: no row ever stops early
  sc = SamplingConfig(max_new_tokens=a.new, temperature=0.0)
  mask = np.ones_like(prompts, bool)
  sampler(prompts, mask, sc)                                # compile
  t = time.perf_counter()
  for _ in range(a.reps):
    out = sampler(prompts, mask, sc)
  dt = time.perf_counter() - t
  assert out.lengths.min() == a.new
  return a.reps * a.batch * a.new / dt


def bench_reference(a, prompts) -> float:
  import torch
  import transformers

  torch.set_num_threads(os.cpu_count() or 1)
  cfg = model_config(a)
  hf = transformers.LlamaConfig(
      vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_ff,
      num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
      num_key_value_heads=cfg.n_kv_heads, head_dim=cfg.head_dim,
      max_position_embeddings=cfg.max_seq_len, pad_token_id=0, eos_token_id=None,
      bos_token_id=None)
  torch.manual_seed(0)
  model = transformers.LlamaForCausalLM(hf).eval()
  ids = torch.tensor(prompts, dtype=torch.long)
  kw = dict(attention_mask=torch.ones_like(ids), max_new_tokens=a.new, min_new_tokens=a.new,
            do_sample=False, pad_token_id=0, eos_token_id=None)
  with torch.no_grad():
    model.generate(ids, **kw)                               # warm-up
    t = time.perf_counter()
    for _ in range(a.reps):
      out = model.generate(ids, **kw)
    dt = time.perf_counter() - t
  assert out.shape[1] == a.prompt + a.new
  return a.reps * a.batch * a.new / dt


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--d_model", type=int, default=512)
  p.add_argument("--layers", type=int, default=8)
  p.add_argument("--heads", type=int, default=8)
  p.add_argument("--kv_heads", type=int, default=8)
  p.add_argument("--d_ff", type=int, default=1376)
  p.add_argument("--vocab", type=int, default=32000)
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--prompt", type=int, default=64)
  p.add_argument("--new", type=int, default=64)
  p.add_argument("--reps", type=int, default=3)
  p.add_argument("--json", action="store_true")
  a = p.parse_args()
  prompts = np.random.default_rng(0).integers(1, a.vocab, (a.batch, a.prompt)).astype(np.int32)
  ours = bench_ours(a, prompts)
  try:
    ref = bench_reference(a, prompts)
  except ImportError:
    ref = float("nan")
  result = {"name": "rollout_sampling", "ours": round(ours, 1), "reference": round(ref, 1),
            "ratio": round(ours / ref, 3), "unit": "new tokens/s",
            "config": {k: v for k, v in vars(a).items() if k != "json"}}
  if a.json:
    print(json.dumps(result))
  else:
    print(f"ours (jax KV-cache sampler)      {ours:10.1f} new tokens/s")
    print(f"transformers generate (PyTorch)  {ref:10.1f} new tokens/s")
    print(f"ratio ours / reference           {ours / ref:10.2f}x")


if __name__ == "__main__":
  main()
