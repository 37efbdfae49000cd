"""SFT stage. Variants:

  toy   – the embedded default: a tiny Llama-style model learns three string
          tasks (rlaif_jax/demo/toy.py) with the byte tokenizer on a CPU mesh.
  tldr  – the paper's summarization SFT on Reddit TL;DR (point model.checkpoint
          and model.tokenizer at a local HF directory, data at the TFDS dirs).
"""
from rlaif_jax.config import base_config


def get_config(variant: str = "toy"):
  c = base_config()
  c.stage = "sft"
  if variant == "toy":
    c.model.arch.update(vocab_size=0, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                        head_dim=16, d_ff=192, max_seq_len=64)
    c.data.source = "toy"
    c.data.max_prompt_len = 24
    c.data.max_response_len = 12
    c.train.update(batch_size=32, steps=150, lr=3e-3, warmup_steps=10, log_every=25,
                   checkpoint_every=50, eval_batches=4)
  elif variant == "tldr":
    c.model.tokenizer = ""       # required: a local HF tokenizer directory
    c.model.checkpoint = ""      # required: a local HF checkpoint directory
    c.data.source = "tldr"
    c.data.max_prompt_len = 1024
    c.data.max_response_len = 128
    c.train.update(batch_size=128, steps=1000, optimizer="adafactor", lr=1e-5,
                   warmup_steps=0, schedule="constant", checkpoint_every=200, export_hf=True)
  else:
    raise ValueError(f"unknown sft variant {variant!r}: use toy or tldr")
  return c
