"""The whole RLAIF experiment in one workdir, resumable stage by stage.

    python -m rlaif_jax.main --config=configs/pipeline.py:demo --workdir=/tmp/rlaif

The stages and arms are two tables, STAGES and ARMS (below): `run` takes the
stages the chosen arms (pipeline.arms) need, in table order.

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

import dataclasses
import functools
import logging
import random
import time
from typing import Callable

import jax

from rlaif_jax import paths as io
from rlaif_jax.demo import world, world_data
from rlaif_jax.errors import ConfigError
from rlaif_jax.eval import stage as eval_stage
from rlaif_jax.eval.generate import generate
from rlaif_jax.eval.report import write_report
from rlaif_jax.eval.stats import wilson_interval
from rlaif_jax.labeler import stage as label_stage
from rlaif_jax.labeler.config import build_labeler
from rlaif_jax.labeler.report import alignment_report
from rlaif_jax.learners import dpo, reward, rl, sft
from rlaif_jax.models.build import build
from rlaif_jax.models.config import LAYOUT
from rlaif_jax.models.tokenizer import load_tokenizer


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
  return lc


def label_by_task(config, mesh, lab_confs: dict, pairs_path: str, heldout_path: str,
                  out_dir: str) -> dict:
  """AI labels for the training pairs, each asked its own task's question
  (`lab_confs`: {task: labeler config}), merged in the pairs' order into
  <out_dir>/labels.jsonl; alignment with the held-out human votes per task."""
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
    # n is small (the summarization share of the held-out pairs), so the
    # alignment carries its interval: sizes a few points apart are not ordered
    lo, hi = wilson_interval(rep["accuracy"] * len(held), len(held))
    out[name] = {"params": rep["params"], "alignment": rep["accuracy"],
                 "alignment_ci_low": lo, "alignment_ci_high": hi,
                 "same_position_rate": rep["same_position_rate"], "n": len(held)}
  return out


# ------------------------------------------------------------------ the table

class Run:
  """What every stage of one pipeline run reads: the config, the mesh, the
  workdir, the world's files and what earlier stages returned."""

  def __init__(self, config, workdir: str, mesh):
    self.config, self.workdir, self.mesh = config, workdir, mesh
    self.p, self.files, self.summaries = config.pipeline, {}, {}

  def dir(self, *parts) -> str:
    return io.join(self.workdir, *parts)

  @property
  def tok(self) -> str:
    return self.files["tokenizer"]

  @property
  def sft_model(self) -> str:
    return self.dir("sft", "model")

  def pairs(self, name: str) -> str:     # pairs_train | pairs_heldout | pairs_human
    return self.dir("sample_pairs", f"{name}.jsonl")

  def labeler(self, task: str = "summarization"):
    return labeler_cfg(self.config, self.files, self.dir("labeler_pretrain"), task)


def _write_world(config, d) -> dict:
  """The world's files in `d` (existing ones kept: world_data.write is idempotent)."""
  w = config.world
  return world_data.write(d, seed=config.seed, n_sft=w.n_sft, n_prompts=w.n_prompts,
                          n_eval=w.n_eval, n_labeler=w.n_labeler)


def _world(r: Run, d):
  return {"files": len(_write_world(r.config, d))}


def _labeler_pretrain(r: Run, d, arch=None):
  c = stage_config(r.config, stage="sft", train=r.p.labeler_pretrain, tokenizer=r.tok,
                   jsonl_path=r.files["labeler_train"], eval_jsonl_path=r.files["labeler_valid"],
                   jsonl_kind="sft", max_prompt_len=r.p.labeler_prompt_len, max_response_len=2)
  with c.unlocked():
    c.model.arch.update(labeler_arch(r.config.labeler.model.arch))
    c.model.arch.update(arch or {})
  return sft.run(c, d, r.mesh)


def _sft(r: Run, d):
  return sft.run(stage_config(r.config, stage="sft", train=r.p.sft, tokenizer=r.tok,
                              jsonl_path=r.files["sft_train"],
                              eval_jsonl_path=r.files["sft_valid"], jsonl_kind="sft"), d, r.mesh)


def _sample_pairs(r: Run, d):
  return sample_pairs(r.config, r.mesh, r.files, r.sft_model, d)


def _label(r: Run, d):
  return label_by_task(r.config, r.mesh, {t: r.labeler(t) for t in ("summarization", "harmless")},
                       r.pairs("pairs_train"), r.pairs("pairs_heldout"), d)


def _rm(data: str, r: Run, d):
  """A reward model on `data`: "ai" (the label stage's labels) or "human" (one
  oracle vote per pair)."""
  path = r.dir("label", "labels.jsonl") if data == "ai" else r.pairs("pairs_human")
  return reward.run(stage_config(r.config, stage="rm", train=r.p.rm, tokenizer=r.tok,
                                 checkpoint=r.sft_model, jsonl_path=path,
                                 eval_jsonl_path=r.pairs("pairs_heldout"), jsonl_kind="pairs"),
                    d, r.mesh)


def _rl(reward_model: str, r: Run, d):
  """RL from the SFT policy against <reward_model>/model, or against the
  labeler's direct 1–10 score when `reward_model` is "" (with the arm's own
  overrides, pipeline.rl_direct)."""
  train = r.p.rl.copy_and_resolve_references()
  settings = dict(reward="model", reward_model=r.dir(reward_model, "model"))
  if not reward_model:
    train.update(r.p.rl_direct.train.to_dict())
    settings = dict(r.p.rl_direct.rl.to_dict(), reward="labeler")
  # validation prompts: held-out SFT posts, never the eval stage's
  c = stage_config(r.config, stage="rl", train=train, tokenizer=r.tok, checkpoint=r.sft_model,
                   jsonl_path=r.files["prompts_train"], jsonl_kind="prompts",
                   eval_jsonl_path=r.files["sft_valid"])
  with c.unlocked():
    c.rl.update(settings)
    if not reward_model:
      c.rl.labeler = r.labeler()
  return rl.run(c, d, r.mesh)


def _dpo(r: Run, d):
  return dpo.run(stage_config(r.config, stage="dpo", train=r.p.dpo, tokenizer=r.tok,
                              checkpoint=r.sft_model, jsonl_path=r.dir("label", "labels.jsonl"),
                              eval_jsonl_path=r.pairs("pairs_heldout"), jsonl_kind="pairs"),
                 d, r.mesh)


@dataclasses.dataclass(frozen=True)
class Stage:
  fn: Callable[[Run, str], dict]
  after: tuple[str, ...] = ()     # the stages whose outputs it reads
  curves: bool = False            # RL: its metrics/rl.jsonl goes into the training curves


# Every stage, in an order that runs each after what it reads.
STAGES = {
    "world": Stage(_world),
    "labeler_pretrain": Stage(_labeler_pretrain, ("world",)),
    "sft": Stage(_sft, ("world",)),
    "sample_pairs": Stage(_sample_pairs, ("sft",)),
    "label": Stage(_label, ("labeler_pretrain", "sample_pairs")),
    "rm_ai": Stage(functools.partial(_rm, "ai"), ("label",)),
    "rm_human": Stage(functools.partial(_rm, "human"), ("sample_pairs",)),
    "rl_rlaif": Stage(functools.partial(_rl, "rm_ai"), ("rm_ai",), curves=True),
    "rl_rlhf": Stage(functools.partial(_rl, "rm_human"), ("rm_human",), curves=True),
    "rl_direct": Stage(functools.partial(_rl, ""), ("labeler_pretrain", "sft"), curves=True),
    "dpo": Stage(_dpo, ("label",)),
}
# An arm is the stage whose <workdir>/<stage>/model is its policy; what that
# stage reads runs first. Adding an arm is a row here (and its stage above).
ARMS = {"rlaif": "rl_rlaif", "rlhf": "rl_rlhf", "direct_rlaif": "rl_direct", "dpo": "dpo"}
ALWAYS = ("world", "labeler_pretrain", "sft", "sample_pairs")   # the report reads them


def validate(config, mesh) -> None:
  """The pipeline's own checks before anything runs (each stage's config is
  checked again by its learner when the stage starts)."""
  del mesh
  stages_for(config.pipeline.arms)
  for comp in config.eval.comparisons:
    names = comp.split("_vs_")
    bad = [n for n in names if n not in ("sft", "reference", *ARMS)]
    if len(names) != 2 or bad:
      raise ConfigError(f"eval.comparisons: {comp!r} is not <policy>_vs_<policy> of "
                        f"sft, reference, {', '.join(ARMS)}")


def stages_for(arms) -> list[str]:
  """The stages the chosen arms need, in table order."""
  unknown = [a for a in arms if a not in ARMS]
  if unknown:
    raise ConfigError(f"pipeline.arms: unknown {unknown}; known: {', '.join(ARMS)}")
  need, todo = set(ALWAYS), [ARMS[a] for a in arms]
  while todo:
    s = todo.pop()
    if s not in need:
      need.add(s)
      todo.extend(STAGES[s].after)
  return [s for s in STAGES if s in need]


def run(config, workdir: str, mesh) -> dict:
  t_start = time.perf_counter()
  r = Run(config, workdir, mesh)
  arms = tuple(config.pipeline.arms)
  for name in stages_for(arms):
    r.summaries[name] = run_stage(workdir, name, lambda d, name=name: STAGES[name].fn(r, d))
    if name == "world":      # its file list, fresh or finished (existing files are kept)
      r.files.update(_write_world(config, r.dir("world")))

  # The paper's labeler-size experiment (the `paper` variant): more labelers
  # pre-trained like the demo's; one shaped like the demo's is the demo's.
  size_dirs = {}
  for name, arch in (config.pipeline.get("labeler_sizes") or {}).items():
    if arch.to_dict() == {k: config.labeler.model.arch[k] for k in arch}:
      size_dirs[name] = r.dir("labeler_pretrain")
      continue
    run_stage(workdir, f"labeler_pretrain_{name}",
              lambda d, arch=arch: _labeler_pretrain(r, d, arch.to_dict()))
    size_dirs[name] = r.dir(f"labeler_pretrain_{name}")
  sizes_rep = run_stage(workdir, "labeler_sizes", lambda d: labeler_sizes(
      config, mesh, size_dirs, r.files, r.pairs("pairs_heldout"))) if size_dirs else {}

  policies = {"sft": r.sft_model, **{a: r.dir(ARMS[a], "model") for a in arms}}
  curves = {a: r.dir(ARMS[a], "metrics", "rl.jsonl") for a in arms if STAGES[ARMS[a]].curves}

  def evaluate(d):
    c = stage_config(config, stage="eval", train=r.p.sft, tokenizer=r.tok)
    with c.unlocked():
      c.eval.prompts_path = r.files["eval"]
      c.eval.max_prompts = 0
      c.eval.policies = policies
      c.eval.comparisons = tuple(x for x in config.eval.comparisons
                                 if all(s in policies or s == "reference"
                                        for s in x.split("_vs_")))
      c.eval.rm_model, c.eval.rm_pairs_path = "", ""
      c.eval.curves = curves
    return eval_stage.run(c, d, mesh)
  run_stage(workdir, "eval", evaluate)

  labels, nan = r.summaries.get("label", {}), float("nan")
  rep = io.read_json(r.dir("eval", "report.json"))
  rep.update(
      wall_seconds=time.perf_counter() - t_start,
      labeler_alignment=labels.get("heldout_accuracy", nan),
      same_position_rate_single_order=labels.get("heldout_same_position_rate", nan),
      same_position_rate_averaged=labels.get("heldout_same_position_rate_averaged", nan),
      harmless_labeler_alignment=labels.get("harmless_heldout_accuracy", nan),
      rm_accuracy_ai=r.summaries.get("rm_ai", {}).get("eval/accuracy_human", nan),
      rm_accuracy_human=r.summaries.get("rm_human", {}).get("eval/accuracy_human", nan),
      pending=[a for a in ARMS if a not in arms])
  lab, pol = labeler_arch(config.labeler.model.arch), config.model.arch.to_dict()
  same_size = all(pol.get(k) == v for k, v in lab.items() if k not in ("max_seq_len",))
  if "rlaif" in arms and same_size:
    rep.setdefault("notes", []).append(
        "The labeler has the policy's size, so the RLAIF arm is the paper's same-size RLAIF "
        "(paper: 68% vs SFT) and direct_rlaif_vs_rlaif is its d-RLAIF vs same-size RLAIF (60%).")
  if size_dirs:
    rep["labeler_sizes"] = {k: sizes_rep[k] for k in size_dirs}
    rep.setdefault("notes", []).append(
        "Greedy versus self-consistency labeling is not run: the demo world's labelers "
        "answer 1/2 and were never taught to write a rationale, so there is none to sample.")
  rep.pop("plots", None)
  for name in ("win_rates.png", "training_curves.png"):
    src = r.dir("eval", name)
    if io.exists(src):
      io.copy(src, r.dir(name))
  rep = write_report(workdir, rep, curves)
  flat = {k: v for k, v in rep.items() if isinstance(v, (int, float))}
  flat.update({f"win_rate/{k}": v["rate"] for k, v in rep["win_rates"].items()})
  return flat
