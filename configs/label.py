"""Label stage: AI preferences for pairs (rlaif_jax/labeler). Variants:

  toy                – a tiny from-scratch labeler (byte tokenizer) labels the toy
                       pairs on a CPU: exercises the whole job (shards, resume,
                       report), not label quality.
  tldr_base          – summarization, one-line preamble, 0-shot.
  tldr_detailed      – summarization, detailed preamble, 0-shot.
  tldr_detailed_cot  – the paper's final summarization prompt: detailed + CoT, 0-shot.
  hh_helpful_cot     – helpful dialogue, base + CoT, 0-shot (the paper's choice).
  hh_harmless_base   – harmless dialogue, base preamble, 2-shot (the paper's final
                       harmless prompt; asks for the MORE harmful response, labels
                       are inverted back), with the bundled exemplars
                       (labeler.exemplars_path=bundled:harmless).

Any variant takes `--config.labeler.preamble=detailed` (every task has one),
`--config.labeler.exemplars_path=bundled:<task>` or your own JSONL, and
`--config.labeler.num_shots=n`.

The real variants need a local instruction-tuned checkpoint and its tokenizer,
and speak to it in its chat format (labeler.chat, gemma by default; "" = plain
text for a base model):
  --config.labeler.model.checkpoint=/ckpt/gemma-7b-it --config.labeler.model.tokenizer=/ckpt/gemma-7b-it
"""
from rlaif_jax.config import base_config
from rlaif_jax.labeler.config import labeler_config


VARIANTS = ("toy", "tldr_base", "tldr_detailed", "tldr_detailed_cot", "hh_helpful_cot",
            "hh_harmless_base")

def get_config(variant: str = "toy"):
  c = base_config()
  c.stage = "label"
  c.labeler = labeler_config()
  lab, data = c.labeler, c.data
  data.shuffle = False
  if variant == "toy":
    lab.model.arch.update(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16,
                          d_ff=128, max_seq_len=1024)
    lab.model.random_init = True   # label quality is not the point here
    lab.update(task="summarization", preamble="base", batch_size=8, bucket=32,
               shard_size=16, max_pairs=64, max_context_tokens=256)
    data.source = "toy"
  elif variant in ("tldr_base", "tldr_detailed", "tldr_detailed_cot"):
    lab.update(task="summarization", preamble=variant.split("_")[1],
               cot=variant.endswith("cot"), cot_max_tokens=512)
    data.source = "tldr_comparisons"
    data.split = "validation"
    data.confidence_filter = (1, 2, 8, 9)      # the paper's alignment subset
  elif variant in ("hh_helpful_cot", "hh_harmless_base"):
    harmless = variant == "hh_harmless_base"
    lab.update(task="harmless" if harmless else "helpful", preamble="base", cot=not harmless,
               cot_max_tokens=512)
    if harmless:
      lab.update(exemplars_path="bundled:harmless", num_shots=2)
    data.source = "anthropic_hh"
    data.hh_subset = "harmless-base" if harmless else "helpful-base"
    data.split = "test"
  else:
    raise ValueError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
  if variant != "toy":
    lab.model.tokenizer = ""     # required: a local HF tokenizer directory
    lab.model.checkpoint = ""    # required: a local HF checkpoint directory
    # A larger labeler than the policy (Gemma-7B vs 2B), inference only, on a
    # sub-mesh of 8 of the pod's chips (labeler.mesh.devices).
    lab.model.preset = "gemma-7b"
    lab.chat = "gemma"             # gemma-7b-it's turns; the end of turn stops a rationale
    lab.model.dtype = "bfloat16"
    lab.model.scan_layers = True   # one layer compiled, not 28
    lab.mesh.update(devices=8, data=1, fsdp=-1, tensor=1)
    c.hardware.update(name="TPU v4-16", chips=8, memory_gib_per_chip=32.0, topology="v4:2x2x2")
    data.max_prompt_len = 1024
    data.max_response_len = 128
  return c
