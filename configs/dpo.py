"""DPO stage: the policy learns the labeler's preferences directly, no reward model.

  toy   – a tiny policy learns to prefer right answers over corrupted ones in the
          toy tasks (from scratch, or from the toy SFT with
          --config.model.checkpoint=<sft workdir>/model, which is then also the
          frozen reference).
  tldr  – the paper's summarization task on AI labels (JSONL of pairs written by
          the label stage, soft labels kept), policy and reference = the SFT policy.

`dpo.beta` scales the implicit reward β·log(π/π_ref); `dpo.label_smoothing` ε
gives conservative DPO (p -> (1−ε)p + ε(1−p)); `dpo.precompute_reference` runs
the reference once over the training set before training and frees it.
"""
from rlaif_jax.config import base_config, paper_scale, toy_scale
from rlaif_jax.learners.dpo import dpo_config


VARIANTS = ("toy", "tldr")

def get_config(variant: str = "toy"):
  c = base_config()
  c.stage = "dpo"
  c.dpo = dpo_config()
  if variant == "toy":
    toy_scale(c, steps=150)
  elif variant == "tldr":
    paper_scale(c, "tldr")       # Gemma-2B policy + reference on a TPU v4-16
    c.model.checkpoint = ""      # required: the SFT policy (<sft workdir>/model or a HF dir)
    c.data.source = "jsonl"      # AI-labelled pairs from the label stage (soft labels)
    c.data.jsonl_path = ""
    c.data.eval_jsonl_path = ""  # held-out pairs (with human labels for accuracy_human)
    c.train.update(batch_size=64, steps=2000, optimizer="adafactor", lr=1e-6,
                   warmup_steps=150, schedule="constant", checkpoint_every=200)
  else:
    raise ValueError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
  return c
