"""Reward-model stage. Variants:

  toy          – a tiny RM learns to prefer right answers over corrupted ones in
                 the toy tasks (from scratch, or from the toy SFT with
                 --config.model.checkpoint=<sft workdir>/model).
  tldr         – the paper's summarization RM on AI labels, initialised from the
                 SFT policy (Gemma-2B, TPU v4-16): --config.model.checkpoint=<sft>/model
                 --config.data.jsonl_path=<label workdir>/labels.jsonl
  hh_helpful   – dialogue RMs (Llama-3-8B, TPU v4-64), batch 32 as in the paper.
  hh_harmless
"""
from rlaif_jax.config import base_config, paper_scale, toy_scale
from rlaif_jax.learners.reward import rm_config


VARIANTS = ("toy", "tldr", "hh_helpful", "hh_harmless")

def get_config(variant: str = "toy"):
  c = base_config()
  c.stage = "rm"
  c.rm = rm_config()                   # rm.normalize_rewards: mean held-out reward 0
  if variant == "toy":
    toy_scale(c, steps=200)
    return c
  if variant not in ("tldr", "hh_helpful", "hh_harmless"):
    raise ValueError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
  paper_scale(c, variant)
  c.data.source = "jsonl"              # AI-labelled pairs written by the label stage
  c.data.jsonl_path = ""
  if variant != "tldr":
    c.train.update(batch_size=32, grad_accum=4)
  else:
    # both responses of 8 pairs per micro-batch: without remat the TPU compiler
    # needs 33.8 GiB of temporaries on a 32 GiB v4 chip; --aot: full 7.9 GiB in
    # all at 565 TFLOP per chip and step, dots 11.4 GiB at 463 TFLOP (cheaper)
    c.model.remat = "dots"
  c.train.steps = 3 * 92_900 // c.train.batch_size if variant == "tldr" else 3 * 42_000 // 32
  return c
