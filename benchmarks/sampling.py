"""New tokens/s of our jitted KV-cache sampler next to transformers' PyTorch `generate`.

    python benchmarks/sampling.py [--json] [--batch 16 --prompt 64 --new 64 ...]

Same model config (Llama, hidden 512, 8 layers, vocab 32000 by default), same
random prompts, greedy decoding of exactly `--new` tokens (no EOS) in both.
`--dtype bfloat16` runs both in bfloat16: ours as `model.dtype` (float32
parameters cast at each use), transformers' model converted with `.to(torch.bfloat16)`.
"""
from __future__ import annotations

import json
import os
import time

import jax
import numpy as np

import common


def bench_ours(cfg, prompts, new, reps):

  from rlaif_jax.models import Transformer, init_sharded
  from rlaif_jax.sampling import Sampler, SamplingConfig
  mesh = common.data_parallel_mesh()
  model = init_sharded(lambda r: Transformer(cfg, r), mesh)
  sampler = Sampler(model, mesh, eos_id=-1)
  mask = np.ones(prompts.shape, bool)
  sc = SamplingConfig(max_new_tokens=new)
  sampler(prompts, mask, sc)                                   # compile
  t = time.perf_counter()
  for _ in range(reps):
    out = sampler(prompts, mask, sc)
  dt = time.perf_counter() - t
  assert out.lengths.min() == new
  return reps * prompts.shape[0] * new / dt


def bench_torch(cfg, prompts, new, reps):
  try:
    import torch
    import transformers
  except ImportError:
    return None
  torch.manual_seed(0)
  hf = transformers.LlamaConfig(
      vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_ff,
      num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
      num_key_value_heads=cfg.n_kv_heads, head_dim=cfg.head_dim, max_position_embeddings=4096)
  model = transformers.LlamaForCausalLM(hf).eval()
  if cfg.dtype == "bfloat16":
    model = model.to(torch.bfloat16)
  x = torch.as_tensor(prompts, dtype=torch.long)
  kw = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0,
            eos_token_id=None, attention_mask=torch.ones_like(x))
  with torch.inference_mode():
    model.generate(x, **kw)                                    # warm-up
    t = time.perf_counter()
    for _ in range(reps):
      model.generate(x, **kw)
    dt = time.perf_counter() - t
  return reps * prompts.shape[0] * new / dt


def main():
  p = common.parser(__doc__)
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--prompt", type=int, default=64)
  p.add_argument("--new", type=int, default=64)
  p.add_argument("--reps", type=int, default=3)
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--no_torch", action="store_true")
  a = p.parse_args()
  cfg = common.model_config(a, dtype=a.dtype)
  prompts = np.random.default_rng(0).integers(3, a.vocab, (a.batch, a.prompt)).astype(np.int32)
  ours = bench_ours(cfg, prompts, a.new, a.reps)
  ref = None if a.no_torch else bench_torch(cfg, prompts, a.new, a.reps)
  result = {"name": f"sampling_greedy_d{a.d_model}_L{a.layers}_v{a.vocab}_b{a.batch}"
                    f"_p{a.prompt}_n{a.new}_{a.dtype}",
            "ours": round(ours, 2), "reference": None if ref is None else round(ref, 2),
            "ratio": None if ref is None else round(ours / ref, 3), "unit": "new tokens/s",
            "device": str(jax.devices()[0].device_kind), "n_devices": jax.device_count()}
  if a.json:
    print(json.dumps(result))
  else:
    print(f"{result['name']} on {jax.device_count()} x {result['device']}")
    print(f"  ours (jit prefill + while_loop) {ours:10.1f} new tokens/s")
    if ref is not None:
      print(f"  reference (transformers generate) {ref:8.1f} new tokens/s   "
            f"ratio {ours / ref:.2f}x")


if __name__ == "__main__":
  os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
  main()
