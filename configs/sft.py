"""SFT stage. Variants:

  toy          – the embedded default's SFT: a tiny Llama-style model learns three
                 string tasks (rlaif_jax/data/toy.py), byte tokenizer, CPU mesh.
  tldr         – the paper's summarization SFT on Reddit TL;DR: Gemma-2B policy
                 on a TPU v4-16 (8 chips), FSDP over all chips.
  hh_helpful   – SFT on Anthropic HH helpful-base chosen responses, Llama-3-8B on
  hh_harmless    a v4-64 (32 chips), FSDP 8 x tensor 4 (harmless-base likewise).

Real variants: point --config.model.checkpoint and --config.model.tokenizer at
the downloaded HF directory and --config.data.manual_dir at the raw data (or
--config.data.data_dir at prepared TFDS data, gs:// works). The paper's
hyperparameters: Adafactor, lr 1e-5, batch 128, 1 epoch, 1024 + 128 tokens.
Check memory first on any machine: --dry_run.
"""
from rlaif_jax.config import base_config, paper_scale, toy_scale


VARIANTS = ("toy", "tldr", "hh_helpful", "hh_harmless")

def get_config(variant: str = "toy"):
  c = base_config()
  c.stage = "sft"
  if variant == "toy":
    toy_scale(c, steps=150, lr=3e-3)
    return c
  if variant not in ("tldr", "hh_helpful", "hh_harmless"):
    raise ValueError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
  paper_scale(c, variant)
  c.train.update(steps=1000, export_hf=True)     # ~1 epoch of TL;DR at batch 128
  return c
