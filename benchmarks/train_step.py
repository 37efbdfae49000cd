"""Tokens/s of our jitted SFT step next to PyTorch + transformers on the same config.

    python benchmarks/train_step.py [--json] [--d_model 512 --layers 8 ...]

Prints our tokens/s, the model FLOPs utilisation against the peak matmul FLOP/s
measured in this same run on this machine (PaLM's definition: model FLOPs per
token = 6N + 12·L·H·Q·T, N the non-embedding parameters plus the LM head, L
layers, H heads, Q head dim, T sequence length), and – when torch is installed –
tokens/s of an equivalent transformers LlamaForCausalLM training step (AdamW,
same shapes, same batch), with ours/reference (higher is better). With
`--dtype bfloat16` both compute in bfloat16 over float32 weights (ours by
`model.dtype`, torch by autocast); the peak is then a bfloat16 matmul's.
"""
from __future__ import annotations

import json
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

import common


def peak_matmul_flops(dtype: str = "float32", n: int = 2048, reps: int = 10) -> float:
  a = jnp.ones((n, n), dtype)
  f = jax.jit(lambda x: jnp.dot(x, x, preferred_element_type=jnp.float32))
  f(a).block_until_ready()
  t = time.perf_counter()
  for _ in range(reps):
    out = f(a)
  out.block_until_ready()
  return 2 * n**3 * reps / (time.perf_counter() - t)


def model_flops_per_token(cfg, seq: int) -> float:
  n = cfg.num_params() - cfg.vocab_size * cfg.d_model * (0 if cfg.tie_embeddings else 1)
  return 6 * n + 12 * cfg.n_layers * cfg.n_heads * cfg.head_dim * seq


def bench_ours(cfg, batch: int, seq: int, steps: int) -> float:
  from rlaif_jax.config import base_config
  from rlaif_jax.learners.sft import sft_loss
  from rlaif_jax.learners.trainer import Trainer
  from rlaif_jax.mesh import global_batch
  from rlaif_jax.models import Transformer, init_sharded

  config = base_config()
  config.train.update(batch_size=batch, optimizer="adamw", lr=1e-4, warmup_steps=0,
                      schedule="constant", grad_clip=0.0, weight_decay=0.0)
  mesh = common.data_parallel_mesh()
  model = init_sharded(lambda r: Transformer(cfg, r), mesh)
  trainer = Trainer(config, tempfile.mkdtemp(), mesh, model, sft_loss, name="bench")
  rng = np.random.default_rng(0)
  data = {"tokens": rng.integers(3, cfg.vocab_size, (batch, seq)).astype(np.int32),
          "mask": np.ones((batch, seq), bool), "response_mask": np.ones((batch, seq), bool)}
  data = global_batch(data, mesh)
  jax.block_until_ready(trainer.step(data))          # compile
  jax.block_until_ready(trainer.step(data))
  t = time.perf_counter()
  for _ in range(steps):
    m = trainer.step(data)
  jax.block_until_ready(m)
  return batch * seq * steps / (time.perf_counter() - t)


def bench_torch(cfg, batch: int, seq: int, steps: int) -> float | None:
  try:
    import torch
    import transformers
  except ImportError:
    return None
  torch.manual_seed(0)
  hf = transformers.LlamaConfig(
      vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_ff,
      num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
      num_key_value_heads=cfg.n_kv_heads, head_dim=cfg.head_dim, max_position_embeddings=seq)
  model = transformers.LlamaForCausalLM(hf).train()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
  x = torch.randint(3, cfg.vocab_size, (batch, seq))

  # bfloat16 as our model.dtype does it: float32 master weights and optimizer,
  # matmuls in bfloat16 (autocast keeps softmax / loss in float32 likewise).
  autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.dtype == "bfloat16")

  def step():
    with autocast:
      loss = model(input_ids=x, labels=x).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
  step()
  t = time.perf_counter()
  for _ in range(steps):
    step()
  return batch * seq * steps / (time.perf_counter() - t)


def main():
  p = common.parser(__doc__)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--seq", type=int, default=256)
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--no_torch", action="store_true")
  a = p.parse_args()
  cfg = common.model_config(a, max_seq_len=a.seq, dtype=a.dtype)
  peak = peak_matmul_flops(a.dtype)
  ours = bench_ours(cfg, a.batch, a.seq, a.steps)
  ref = None if a.no_torch else bench_torch(cfg, a.batch, a.seq, a.steps)
  mfu = ours * model_flops_per_token(cfg, a.seq) / peak
  result = {"name": f"sft_train_step_d{a.d_model}_L{a.layers}_b{a.batch}x{a.seq}_{a.dtype}",
            "ours": round(ours, 2), "reference": None if ref is None else round(ref, 2),
            "ratio": None if ref is None else round(ours / ref, 3), "unit": "tokens/s",
            "mfu": round(mfu, 4), "peak_matmul_flops": peak,
            "device": str(jax.devices()[0].device_kind), "n_devices": jax.device_count()}
  if a.json:
    print(json.dumps(result))
  else:
    print(f"{result['name']} on {jax.device_count()} x {result['device']}")
    print(f"  ours (rlaif_jax, jit)      {ours:10.1f} tokens/s   MFU {mfu:.1%} "
          f"of the measured peak {peak / 1e9:.1f} GFLOP/s")
    if ref is not None:
      print(f"  reference (torch+HF Llama) {ref:10.1f} tokens/s   ratio {ours / ref:.2f}x")


if __name__ == "__main__":
  os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
  main()
