"""RL stage (rlaif_jax/learners/rl.py). Variants:

  toy             – a tiny policy on the toy tasks' prompts, rewarded by the tasks'
                    verifiable answer similarity (rl_rewards.toy_answer_similarity);
                    from scratch, or from the toy SFT with
                    --config.model.checkpoint=<sft workdir>/model, and with a toy RM:
                    --config.rl.reward=model --config.rl.reward_model=<rm workdir>/model
  tldr_distilled  – the paper's distilled RLAIF on TL;DR: the RM (trained on AI
                    labels) scores each summary; policy, reference and value
                    start from the SFT policy.
  tldr_direct     – the paper's direct RLAIF: the labeler's 1–10 score, rescaled
                    to [−1, 1], is the reward (no reward model).

`train.steps` counts RL iterations (one rollout batch of `train.batch_size`
prompts each); the optimiser takes 1 step per iteration (reinforce_baseline)
or rl.ppo_epochs × rl.minibatches (ppo, grpo, rloo). `train.log_every` and
`train.checkpoint_every` count iterations too.
"""
from rlaif_jax.config import base_config, paper_scale, toy_scale
from rlaif_jax.learners.rl import rl_config


VARIANTS = ("toy", "tldr_distilled", "tldr_direct")

def get_config(variant: str = "toy"):
  c = base_config()
  c.stage = "rl"
  c.rl = rl_config()
  if variant == "toy":
    toy_scale(c)
    c.data.jsonl_kind = "sft"    # prompts come from the toy SFT file
    c.rl.update(reward="callable", temperature=1.0,
                reward_fn="rlaif_jax.learners.rl_rewards:toy_answer_similarity")
    c.train.update(batch_size=32, steps=40, optimizer="adamw", lr=3e-4, warmup_steps=0,
                   schedule="constant", log_every=5, checkpoint_every=10)
  elif variant in ("tldr_distilled", "tldr_direct"):
    paper_scale(c, "tldr")       # Gemma-2B policy, value, reference and RM on a
                                 # TPU v5p-8 (4 chips of 95 GiB)
    c.hardware.update(name="TPU v5p-8", chips=4, memory_gib_per_chip=95.0, topology="v5p:2x2x1")
    c.model.checkpoint = ""      # required: the SFT policy (<sft workdir>/model or a HF dir)
    # --aot on v5p:2x2x1: remat none peaks at 79.3 of 95 GiB (train step's
    # temporaries 70 GiB); dots 34.6 GiB for 1.4% more FLOPs: the cheapest
    # setting that leaves >= 20% of HBM free
    c.model.remat = "dots"
    c.data.source = "tldr"       # rollout prompts: TL;DR training posts
    # The paper: temperature 0.9, β = 0.05, batch 128, lr 1e-5 (Adafactor), 8 epochs.
    c.train.update(batch_size=128, steps=1000, optimizer="adafactor", lr=1e-5,
                   warmup_steps=0, schedule="constant", checkpoint_every=50, log_every=5)
    if variant == "tldr_distilled":
      c.rl.reward = "model"
      c.rl.reward_model = ""     # required: <rm workdir>/model
    else:
      c.rl.reward = "labeler"
      c.rl.labeler.update(task="summarization")
      c.rl.labeler.model.tokenizer = ""   # required: the labeler's tokenizer and checkpoint
      c.rl.labeler.model.scan_layers = True
      c.rl.labeler.model.preset = "gemma-2b"   # the paper: a labeler the policy's size
      c.rl.labeler.model.dtype = "bfloat16"
      c.rl.labeler.mesh.update(devices=4, data=1, fsdp=-1, tensor=1)
  else:
    raise ValueError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
  return c
