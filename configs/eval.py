"""Eval stage: policies answer held-out prompts; a judge compares them in both orders.

  demo  – a finished demo pipeline's policies judged by the world's oracle:
            --config.eval.prompts_path=$W/world/eval.jsonl --config.model.tokenizer=$W/world/tokenizer
            --config.eval.policies.sft=$W/sft/model --config.eval.policies.rlaif=$W/rl_rlaif/model ...
  tldr  – TL;DR test posts, judged by a (larger) labeler with the detailed prompt:
            --config.eval.prompts_path=posts.jsonl ({"prompt", optional "response"} per line)
            --config.eval.policies.sft=... --config.eval.policies.rlaif=...
            --config.eval.labeler.model.checkpoint=/ckpt/gemma-7b-it (and .tokenizer)

Writes report.md, report.json, win-rate and training-curve plots and
responses.jsonl into the workdir. A policy left empty is not evaluated; a
comparison naming it is an error. "reference" means the prompts' own responses.
"""
from rlaif_jax.config import base_config
from rlaif_jax.eval.stage import eval_config

VARIANTS = ("demo", "tldr")


def get_config(variant: str = "demo"):
  c = base_config()
  c.stage = "eval"
  c.eval = eval_config()
  if variant == "demo":
    c.model.tokenizer = ""                 # required: <pipeline workdir>/world/tokenizer
    c.data.max_prompt_len = 64
    c.data.max_response_len = 16
  elif variant == "tldr":
    c.eval.judge = "labeler"
    c.eval.labeler.update(task="summarization", preamble="detailed")
    c.eval.labeler.model.update(tokenizer="", checkpoint="", dtype="bfloat16")
    c.eval.comparisons = ("rlaif_vs_sft", "rlhf_vs_sft", "rlaif_vs_rlhf", "rlaif_vs_reference")
    c.eval.temperature = 0.0
    c.model.tokenizer = ""                 # required: the policies' tokenizer
    c.data.max_prompt_len = 1024
    c.data.max_response_len = 128
    # what --dry_run / --aot size when no checkpoint is on this machine: the
    # policies' Gemma-2B and a Gemma-7B judge, on the v4-16 the labeler uses
    c.model.update(preset="gemma-2b", dtype="bfloat16", scan_layers=True)
    c.eval.labeler.model.update(preset="gemma-7b", scan_layers=True)
    c.eval.labeler.chat = "gemma"
    c.eval.labeler.mesh.update(devices=8, data=1, fsdp=-1, tensor=1)   # 34 GiB replicated
    c.hardware.update(name="TPU v4-16", chips=8, memory_gib_per_chip=32.0, topology="v4:2x2x2")
    c.mesh.update(data=1, fsdp=-1, tensor=1)
  else:
    raise ValueError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
  return c
