"""Reward-model stage. Variants:

  toy   – a tiny RM learns to prefer right answers over corrupted ones in the
          toy tasks (from scratch, or from the toy SFT with
          --config.model.checkpoint=<sft workdir>/model).
  tldr  – the paper's summarization RM on AI labels (JSONL of pairs written by
          the label stage, with soft labels), initialised from the SFT policy.
"""
from rlaif_jax.config import base_config


def get_config(variant: str = "toy"):
  c = base_config()
  c.stage = "rm"
  c.train.normalize_rewards = True     # shift so the mean held-out reward is 0
  if variant == "toy":
    c.model.arch.update(vocab_size=0, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                        head_dim=16, d_ff=192, max_seq_len=64)
    c.data.source = "toy"
    c.data.max_prompt_len = 24
    c.data.max_response_len = 12
    c.train.update(batch_size=32, steps=200, lr=1e-3, warmup_steps=10, log_every=25,
                   checkpoint_every=50, eval_batches=4)
  elif variant == "tldr":
    c.model.tokenizer = ""       # required: a local HF tokenizer directory
    c.model.checkpoint = ""      # required: the SFT policy (<sft workdir>/model or a HF dir)
    c.data.source = "jsonl"      # AI-labelled pairs from the label stage
    c.data.jsonl_path = ""
    c.data.max_prompt_len = 1024
    c.data.max_response_len = 128
    c.train.update(batch_size=128, steps=2000, optimizer="adafactor", lr=1e-5,
                   warmup_steps=0, schedule="constant", checkpoint_every=200)
  else:
    raise ValueError(f"unknown rm variant {variant!r}: use toy or tldr")
  return c
