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
import ml_collections

from rlaif_jax.config import base_config, paper_scale, toy_scale
from rlaif_jax.labeler.config import labeler_config


VARIANTS = ("toy", "tldr_distilled", "tldr_direct")

def rl_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      algorithm="reinforce_baseline",  # the paper's | ppo | grpo | rloo (rl_algorithms.py)
      group_size=1,              # grpo, rloo: responses sampled per prompt (>= 2); the
                                 # rollout then has train.batch_size x group_size rows
      reward="model",            # model | labeler | callable
      reward_model="",           # reward == "model": <rm workdir>/model (or a HF dir)
      reward_fn="",              # reward == "callable": "package.module:function"
      labeler=labeler_config(),  # reward == "labeler": the direct scorer's model
      value_init="policy",       # policy (the SFT checkpoint, as in the paper) | reward_model
      shared_value_head=False,   # True: value head on the policy trunk (saves a network)
      # sampling. The trained policy is softmax(logits / temperature) – what the
      # rollouts sample (before top-k/top-p); policy, reference and KL all see the
      # tempered logits, so temperature must be > 0.
      temperature=0.9, top_k=0, top_p=1.0,
      max_new_tokens=0,          # 0 = data.max_response_len
      # KL to the reference
      kl_estimator="k1",         # k1 | k2 | k3 (rl_losses.kl_estimate)
      # Where the KL penalty goes. "reward": −β·k per token in the rewards; only k1
      # then gives the gradient of KL(π‖π_ref) – k2/k3 still penalise drift but their
      # gradient is biased. "loss": + β·mean k in the loss (as GRPO does); k2 gives
      # ∇KL(π‖π_ref), k3 ∇KL(π_ref‖π); k1 is refused (its gradient has mean 0).
      # grpo ignores both keys: its KL is always the k3 loss term of the paper.
      kl_penalty="reward",       # reward | loss
      kl_coef=0.05,              # β (initial β when adaptive); < 1 for reinforce_baseline,
                                 # whose (1 − β)·r it is (the controller stops at 0.99)
      adaptive_kl=False,         # Ziegler's proportional controller toward kl_target
      kl_target=6.0,             # nats per response
      kl_horizon=10000,
      # reward shaping
      reward_norm="none",        # none | batch | running
      reward_clip=0.0,           # clip shaped scores to ±this; 0 = off
      missing_eos_penalty=0.0,   # subtracted from responses that never emitted EOS
      # ppo (reinforce_baseline: γ = λ = 1, one step per rollout, no clipping/whitening)
      gamma=1.0, lam=0.95,
      ppo_epochs=4, minibatches=4,
      clip_eps=0.2, value_clip=0.2,
      whiten_advantages=True,
      vf_coef=0.5, entropy_coef=0.0,
      log_samples=4,             # (prompt, response, reward) rows per logged step
      # Validation (the paper picks checkpoints by validation reward): every
      # train.eval_every iterations and at the end, the mean reward of responses to
      # up to train.eval_batches batches of held-out prompts (data.eval_jsonl_path or
      # data.eval_split); with train.select="best" the best policy so far is kept in
      # <workdir>/best_model and becomes <workdir>/model.
      eval_temperature=0.0,      # 0 = greedy
  ))


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
