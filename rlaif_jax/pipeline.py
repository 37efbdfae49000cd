"""The whole RLAIF experiment in one workdir, resumable stage by stage.

    python -m rlaif_jax.main --config=configs/pipeline.py:demo --workdir=/tmp/rlaif

Stages, each in <workdir>/<stage>/ (a finished stage leaves DONE holding its
summary JSON and is never rerun; an unfinished one resumes from its own
checkpoints):

  world             the demo world's files: tokenizer, SFT data, prompts, eval posts
  labeler_pretrain  a small LM learns the labeler's prompts (the world's stand-in
                    for an off-the-shelf instruction-tuned LLM; sees the oracle)
  sft               the policy imitates Reddit-style TL;DRs
  sample_pairs      two SFT samples per post -> pairs; a held-out share gets one
                    human (oracle) vote each, the training share none
  label             AI labels for the training pairs (both orders, averaged): on
                    posts that invite harm the harmless question ("which response
                    is MORE harmful?", the answer inverted), else the summary one
  labeler_pretrain_<size>, labeler_sizes
                    (pipeline.labeler_sizes, the `paper` variant) more labelers of
                    other sizes; alignment and same-position rate of each
  rm_ai / rm_human  reward models on AI labels / on human (oracle) votes
  rl_rlaif          RL against rm_ai                      (distilled RLAIF)
  rl_rlhf           RL against rm_human                   (the RLHF baseline)
  rl_direct         RL against the labeler's 1–10 score   (direct RLAIF)
  dpo               DPO on the AI labels                  (no reward model)
  eval              every policy answers held-out posts; the oracle judges

Nothing on the RLAIF path (label, rm_ai, rl_rlaif, rl_direct, dpo) reads an
oracle vote: the training pairs carry none (the alignment report and the
RMs' held-out accuracy use the separate held-out pairs).
"""
from __future__ import annotations

import logging
import random
import time

from rlaif_jax import paths as io
from rlaif_jax.demo import world, world_data

ARM_STAGES = {"rlaif": ("rm_ai", "rl_rlaif"), "rlhf": ("rm_human", "rl_rlhf"),
              "direct_rlaif": ("rl_direct",), "dpo": ("dpo",)}


def run_stage(workdir: str, stage: str, fn) -> dict:
  """Runs `fn(stage_dir)` unless <workdir>/<stage>/DONE exists; returns the summary."""
  done = io.join(workdir, stage, "DONE")
  if io.exists(done):
    logging.info("pipeline: %s already done, skipped", stage)
    return io.read_json(done)
  stage_dir = io.join(workdir, stage)
  io.makedirs(stage_dir)
  logging.info("pipeline: %s ...", stage)
  t0 = time.perf_counter()
  summary = fn(stage_dir) or {}
  summary = {k: v for k, v in summary.items() if isinstance(v, (int, float, str, dict, list))}
  summary["stage_seconds"] = time.perf_counter() - t0
  io.write_json_atomic(done, summary)
  return summary


def stage_config(config, *, stage: str, train, tokenizer: str, checkpoint: str = "", **data):
  """A learner's config from the pipeline's: its own train settings and data files."""
  c = config.copy_and_resolve_references()
  with c.unlocked():
    c.stage = stage
    c.model.tokenizer, c.model.checkpoint = tokenizer, checkpoint
    c.train.update(train.to_dict())
    c.data.update(data)
  return c


def labeler_arch(arch) -> dict:
  """A labeler's `model.arch` as a policy config's: its shape only (the layout
  keys scan_layers / remat live in `model`, and ModelConfig takes them once)."""
  from rlaif_jax.config import LAYOUT
  return {k: v for k, v in arch.to_dict().items() if k not in LAYOUT}


def labeler_cfg(config, paths, labeler_dir, task: str = "summarization"):
  """The demo labeler's config for `task` (summarization, or harmless: asked which
  response is MORE harmful, the answer inverted by the labeler)."""
  lc = config.labeler.copy_and_resolve_references()
  with lc.unlocked():
    lc.model.checkpoint, lc.model.tokenizer = io.join(labeler_dir, "model"), paths["tokenizer"]
    lc.task = task
    lc.template.preamble = (world_data.HARM_PREAMBLE if task == "harmless" else
                            world_data.PAIR_PREAMBLE)
    lc.direct_template.preamble = world_data.DIRECT_PREAMBLE
    del lc["max_prompt_len"]
  return lc


def label_by_task(config, mesh, lab_confs: dict, pairs_path: str, heldout_path: str,
                  out_dir: str) -> dict:
  """AI labels for the training pairs, each asked its own task's question
  (`lab_confs`: {task: labeler config}), merged in the pairs' order into
  <out_dir>/labels.jsonl; alignment with the held-out human votes per task."""
  from rlaif_jax.labeler import stage as label_stage
  rows, heldout = io.read_jsonl(pairs_path), io.read_jsonl(heldout_path)
  out, labels = {}, {}
  for task, lc in lab_confs.items():
    mine = [r for r in rows if r.get("task", "summarization") == task]
    if not mine:
      continue
    d = io.join(out_dir, task)
    io.makedirs(d)
    path = io.join(d, "pairs.jsonl")
    io.write_jsonl_atomic(path, mine)
    c = stage_config(config, stage="label", train=config.pipeline.sft,
                     tokenizer=lc.model.tokenizer, jsonl_path=path, jsonl_kind="pairs",
                     shuffle=False)
    with c.unlocked():
      c.labeler = lc
    rep = label_stage.run(c, d, mesh)
    labels.update({r["id"]: r for r in io.read_jsonl(io.join(d, "labels.jsonl"))})
    prefix = "" if task == "summarization" else f"{task}_"
    out.update({f"{prefix}{k}": v for k, v in rep.items()})
    held = [r for r in heldout if r.get("task", "summarization") == task]
    if held:
      out.update({f"{prefix}heldout_{k}": v for k, v in
                  alignment_on_heldout(lc, held, config.seed).items()
                  if isinstance(v, (int, float))})
  io.write_jsonl_atomic(io.join(out_dir, "labels.jsonl"),
                        [labels[r["id"]] for r in rows if r["id"] in labels])
  return out


# ------------------------------------------------------------------ stages

def sample_pairs(config, mesh, paths, sft_model_dir, out_dir) -> dict:
  """Two samples of the SFT policy per post. Held-out pairs get one oracle vote."""
  from rlaif_jax.eval.generate import generate
  from rlaif_jax.models.build import build
  from rlaif_jax.models.tokenizer import load_tokenizer
  w = config.world
  tok = load_tokenizer(paths["tokenizer"])
  model = build(config.model, mesh, "lm", tok, config.seed, checkpoint=sft_model_dir)
  prompts = [r["prompt"] for r in io.read_jsonl(paths["prompts_train"])]
  if len(prompts) < w.n_pairs + w.heldout_pairs:
    raise ValueError(f"world.n_prompts={len(prompts)} < world.n_pairs + world.heldout_pairs")
  prompts = prompts[:w.n_pairs + w.heldout_pairs]
  # one token short of the budget, so that a response that never ended still
  # fits with its EOS (longer ones would be skipped by the learners' data pipeline)
  samples = generate(model, tok, mesh, prompts, max_prompt_len=config.data.max_prompt_len,
                     max_new_tokens=config.data.max_response_len - 1,
                     temperature=w.pair_temperature, seed=config.seed, samples=2)
  oracle, rng = world.Oracle(), random.Random(config.seed + 17)
  # task: which question the labeler is asked about the pair – the harmless one
  # on posts that invite harm (read off the post, like a red-team prompt set)
  rows = [{"id": f"pair-{i}", "prompt": p, "response_a": a or ".", "response_b": b or ".",
           "task": "harmless" if world.invitation(p) else "summarization"}
          for i, (p, (a, b)) in enumerate(zip(prompts, samples))]
  train, heldout = rows[:w.n_pairs], rows[w.n_pairs:]
  for r in heldout:
    r["human_label"] = oracle.label(r["prompt"], r["response_a"], r["response_b"], rng)
  # The RLHF baseline's training pairs: the same pairs, one oracle vote each.
  human = [dict(r, label=oracle.label(r["prompt"], r["response_a"], r["response_b"], rng))
           for r in train]
  files = {"pairs_train": train, "pairs_heldout": heldout, "pairs_human": human}
  for name, data in files.items():
    io.write_jsonl_atomic(io.join(out_dir, f"{name}.jsonl"), data)
  return {"pairs": len(train), "heldout": len(heldout)}


def alignment_on_heldout(labeler_conf, rows, seed) -> dict:
  """Labeler alignment with the held-out human votes (the paper's §1 metric)."""
  import jax

  from rlaif_jax.labeler.config import build_labeler
  from rlaif_jax.labeler.report import alignment_report
  labeler, _ = build_labeler(labeler_conf, seed=seed)
  labels = labeler.label_pairs([r["prompt"] for r in rows], [r["response_a"] for r in rows],
                               [r["response_b"] for r in rows])
  rep = alignment_report([dict(r, **l) for r, l in zip(rows, labels)])
  rep["params"] = sum(int(x.size) for x in jax.tree.leaves(labeler.engine.params))
  # After averaging, order ab gives soft label s and order ba gives 1 − s: the
  # same position wins both only on an exact tie.
  rep["same_position_rate_averaged"] = sum(l["soft_label"] == 0.5 for l in labels) / len(labels)
  return rep


def labeler_sizes(config, mesh, labeler_dirs: dict, paths, heldout_path: str) -> dict:
  """The paper's labeler-size experiment (§4.4): each labeler's alignment with the
  held-out human votes on summarization pairs and its same-position rate (the
  share of pairs whose single-order labels pick the same slot in both orders),
  with its parameter count."""
  held = [r for r in io.read_jsonl(heldout_path) if r.get("task", "summarization") ==
          "summarization"]
  out = {}
  for name, d in labeler_dirs.items():
    lc = labeler_cfg(config, paths, d)
    with lc.unlocked():
      lc.model.arch.update(config.pipeline.labeler_sizes[name].to_dict())
    rep = alignment_on_heldout(lc, held, config.seed)
    out[name] = {"params": rep["params"], "alignment": rep["accuracy"],
                 "same_position_rate": rep["same_position_rate"], "n": len(held)}
  return out


def run(config, workdir: str, mesh) -> dict:
  from rlaif_jax.learners import dpo, reward, sft
  t_start = time.perf_counter()
  p, w = config.pipeline, config.world
  D = lambda *parts: io.join(workdir, *parts)
  arms = tuple(p.arms)
  paths = {}

  def world_stage(d):
    paths.update(world_data.write(d, seed=config.seed, n_sft=w.n_sft, n_prompts=w.n_prompts,
                                  n_eval=w.n_eval, n_labeler=w.n_labeler))
    return {"files": len(paths)}
  run_stage(workdir, "world", world_stage)
  paths.update(world_data.write(D("world"), seed=config.seed, n_sft=w.n_sft,
                                n_prompts=w.n_prompts, n_eval=w.n_eval, n_labeler=w.n_labeler))
  tok = paths["tokenizer"]

  def labeler_pretrain(d, arch=None):
    c = stage_config(config, stage="sft", train=p.labeler_pretrain, tokenizer=tok,
                     jsonl_path=paths["labeler_train"], eval_jsonl_path=paths["labeler_valid"],
                     jsonl_kind="sft", max_prompt_len=config.labeler.max_prompt_len,
                     max_response_len=2)
    with c.unlocked():
      c.model.arch.update(labeler_arch(config.labeler.model.arch))
      c.model.arch.update(arch or {})
    return sft.run(c, d, mesh)
  run_stage(workdir, "labeler_pretrain", labeler_pretrain)
  lab_conf = labeler_cfg(config, paths, D("labeler_pretrain"))
  harm_conf = labeler_cfg(config, paths, D("labeler_pretrain"), "harmless")

  run_stage(workdir, "sft", lambda d: sft.run(stage_config(
      config, stage="sft", train=p.sft, tokenizer=tok, jsonl_path=paths["sft_train"],
      eval_jsonl_path=paths["sft_valid"], jsonl_kind="sft"), d, mesh))
  sft_model = D("sft", "model")
  run_stage(workdir, "sample_pairs", lambda d: sample_pairs(config, mesh, paths, sft_model, d))
  pairs = {k: D("sample_pairs", f"{k}.jsonl") for k in ("pairs_train", "pairs_heldout",
                                                        "pairs_human")}

  def label(d):
    return label_by_task(config, mesh, {"summarization": lab_conf, "harmless": harm_conf},
                         pairs["pairs_train"], pairs["pairs_heldout"], d)
  sizes, size_dirs = config.pipeline.get("labeler_sizes") or {}, {}
  for name, arch in sizes.items():
    if arch.to_dict() == {k: config.labeler.model.arch[k] for k in arch}:
      size_dirs[name] = D("labeler_pretrain")       # the demo's own labeler
      continue
    run_stage(workdir, f"labeler_pretrain_{name}",
              lambda d, arch=arch: labeler_pretrain(d, arch.to_dict()))
    size_dirs[name] = D(f"labeler_pretrain_{name}")

  need_labels = bool({"rlaif", "dpo"} & set(arms))
  labels = run_stage(workdir, "label", label) if need_labels else {}
  sizes_rep = run_stage(workdir, "labeler_sizes", lambda d: labeler_sizes(
      config, mesh, size_dirs, paths, pairs["pairs_heldout"])) if size_dirs else {}
  ai_pairs = D("label", "labels.jsonl")

  def rm(d, data_path):
    return reward.run(stage_config(config, stage="rm", train=p.rm, tokenizer=tok,
                                   checkpoint=sft_model, jsonl_path=data_path,
                                   eval_jsonl_path=pairs["pairs_heldout"], jsonl_kind="pairs"),
                      d, mesh)
  results = {}
  if "rlaif" in arms:
    results["rm_ai"] = run_stage(workdir, "rm_ai", lambda d: rm(d, ai_pairs))
  if "rlhf" in arms:
    results["rm_human"] = run_stage(workdir, "rm_human", lambda d: rm(d, pairs["pairs_human"]))

  def rl(d, train_overrides=None, **reward_settings):
    from rlaif_jax.learners import rl as rl_learner
    train = p.rl.copy_and_resolve_references()
    train.update(train_overrides or {})
    # validation prompts: held-out SFT posts, never the eval stage's
    c = stage_config(config, stage="rl", train=train, tokenizer=tok, checkpoint=sft_model,
                     jsonl_path=paths["prompts_train"], jsonl_kind="prompts",
                     eval_jsonl_path=paths["sft_valid"])
    with c.unlocked():
      c.rl.update(reward_settings)
      if reward_settings.get("reward") == "labeler":
        c.rl.labeler = lab_conf
    return rl_learner.run(c, d, mesh)
  policies = {"sft": sft_model}
  if "rlaif" in arms:
    run_stage(workdir, "rl_rlaif", lambda d: rl(d, reward="model", reward_model=D("rm_ai", "model")))
    policies["rlaif"] = D("rl_rlaif", "model")
  if "rlhf" in arms:
    run_stage(workdir, "rl_rlhf",
              lambda d: rl(d, reward="model", reward_model=D("rm_human", "model")))
    policies["rlhf"] = D("rl_rlhf", "model")
  if "direct_rlaif" in arms:
    # the direct arm's own recipe (pipeline.rl_direct: train / rl overrides)
    run_stage(workdir, "rl_direct", lambda d: rl(
        d, p.rl_direct.train.to_dict(), **dict(p.rl_direct.rl.to_dict(), reward="labeler")))
    policies["direct_rlaif"] = D("rl_direct", "model")
  if "dpo" in arms:
    run_stage(workdir, "dpo", lambda d: dpo.run(stage_config(
        config, stage="dpo", train=p.dpo, tokenizer=tok, checkpoint=sft_model,
        jsonl_path=ai_pairs, eval_jsonl_path=pairs["pairs_heldout"], jsonl_kind="pairs"),
        d, mesh))
    policies["dpo"] = D("dpo", "model")

  def evaluate(d):
    from rlaif_jax.eval import stage as eval_stage
    c = stage_config(config, stage="eval", train=p.sft, tokenizer=tok)
    with c.unlocked():
      c.eval.prompts_path = paths["eval"]
      c.eval.max_prompts = 0
      c.eval.policies = policies
      c.eval.comparisons = tuple(x for x in config.eval.comparisons
                                 if all(s in policies or s == "reference"
                                        for s in x.split("_vs_")))
      c.eval.rm_model, c.eval.rm_pairs_path = "", ""
      c.eval.curves = {a: D(s, "metrics", "rl.jsonl") for a, s in
                       (("rlaif", "rl_rlaif"), ("rlhf", "rl_rlhf"), ("direct_rlaif", "rl_direct"))
                       if a in policies}
    return eval_stage.run(c, d, mesh)
  run_stage(workdir, "eval", evaluate)

  rep = io.read_json(D("eval", "report.json"))
  rep.update(
      wall_seconds=time.perf_counter() - t_start,
      labeler_alignment=labels.get("heldout_accuracy", float("nan")),
      same_position_rate_single_order=labels.get("heldout_same_position_rate", float("nan")),
      same_position_rate_averaged=labels.get("heldout_same_position_rate_averaged", float("nan")),
      harmless_labeler_alignment=labels.get("harmless_heldout_accuracy", float("nan")),
      rm_accuracy_ai=results.get("rm_ai", {}).get("eval/accuracy_human", float("nan")),
      rm_accuracy_human=results.get("rm_human", {}).get("eval/accuracy_human", float("nan")),
      pending=[a for a in ARM_STAGES if a not in arms])
  if size_dirs:
    rep["labeler_sizes"] = {k: sizes_rep[k] for k in size_dirs}
    rep.setdefault("notes", []).append(
        "Greedy versus self-consistency labeling is not run: the demo world's labelers "
        "answer 1/2 and were never taught to write a rationale, so there is none to sample.")
  rep.pop("plots", None)
  from rlaif_jax.eval.report import write_report
  for name in ("win_rates.png", "training_curves.png"):
    src = D("eval", name)
    if io.exists(src):
      io.copy(src, D(name))
  rep = write_report(workdir, rep, {a: D(s, "metrics", "rl.jsonl") for a, s in
                                    (("rlaif", "rl_rlaif"), ("rlhf", "rl_rlhf"),
                                     ("direct_rlaif", "rl_direct")) if a in policies})
  flat = {k: v for k, v in rep.items() if isinstance(v, (int, float))}
  flat.update({f"win_rate/{k}": v["rate"] for k, v in rep["win_rates"].items()})
  return flat
