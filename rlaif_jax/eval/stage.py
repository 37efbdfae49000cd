"""Eval stage: policies answer held-out prompts, a judge compares them pairwise.

    python -m rlaif_jax.main --config=configs/eval.py:tldr --workdir=$W/eval \
        --config.eval.policies.sft=$W/sft/model --config.eval.policies.rlaif=$W/rl/model

Each policy (a model directory: ours or Hugging Face) answers the first
`eval.max_prompts` prompts of `eval.prompts_path` (JSONL with "prompt", and
"response" = the reference output, available as the policy "reference");
each comparison "a_vs_b" in `eval.comparisons` is judged in both orders by
`eval.judge` (a labeler, or the demo world's oracle). Writes in the workdir
responses.jsonl, report.json, report.md and the plots (rlaif_jax.eval.report).
"""
from __future__ import annotations

import ml_collections

from rlaif_jax import paths
from rlaif_jax.config import ConfigError
from rlaif_jax.eval import judges, metrics, report as report_lib
from rlaif_jax.data.records import read_json_lines
from rlaif_jax.eval.generate import generate
from rlaif_jax.labeler.config import labeler_config, validate_labeler
from rlaif_jax.models.build import build, check_model, checkpoint_format
from rlaif_jax.models.tokenizer import load_tokenizer


def policy_responses(config, policies: dict, prompts, references, mesh) -> dict:
  e = config.eval
  tok = load_tokenizer(config.model.tokenizer)
  out = {}
  for name, path in policies.items():
    if name == "reference":
      out[name] = [r.strip() for r in references]
      continue
    model = build(config.model, mesh, "lm", tok, config.seed, checkpoint=path)
    out[name] = [r[0] for r in generate(
        model, tok, mesh, prompts, max_prompt_len=config.data.max_prompt_len,
        max_new_tokens=e.max_new_tokens or config.data.max_response_len,
        temperature=e.temperature, batch_size=e.batch_size, seed=config.seed)]
  return out


POLICIES = ("sft", "rlaif", "rlhf", "direct_rlaif", "dpo")


def eval_config() -> ml_collections.ConfigDict:
  """The stage's section, `config.eval` (see the module docstring); a policy left
  "" is not evaluated, `curves` maps a policy to its metrics JSONL for the plots."""
  c = ml_collections.ConfigDict(dict(
      prompts_path="", max_prompts=0, judge="oracle", temperature=0.0, max_new_tokens=0,
      batch_size=64, rm_model="", rm_pairs_path="",
      policies=ml_collections.ConfigDict({p: "" for p in POLICIES}),
      comparisons=("rlaif_vs_sft",), curves=ml_collections.ConfigDict()))
  c.labeler = labeler_config()
  return c


def validate(config, mesh) -> None:
  """The eval stage's checks before any model or mesh exists."""
  del mesh   # nothing here depends on the device layout
  e = config.eval
  try:
    judges.judge_spec(e.judge)
  except ValueError as err:
    raise ConfigError(str(err)) from None
  if not e.prompts_path:
    raise ConfigError("eval.prompts_path is empty: a JSONL file of {\"prompt\"[, \"response\"]}")
  if not paths.exists(e.prompts_path):
    raise ConfigError(f"eval.prompts_path={e.prompts_path} does not exist")
  check_model(config.model)
  for name, path in e.policies.items():
    if path:
      checkpoint_format(path, f"eval.policies.{name}")
  if e.rm_model:
    checkpoint_format(e.rm_model, "eval.rm_model")
  if e.judge == "labeler":
    validate_labeler(e.labeler, "eval.labeler")


def run(config, workdir: str, mesh) -> dict:
  e = config.eval
  rows = paths.read_jsonl(e.prompts_path)
  rows = rows[:e.max_prompts] if e.max_prompts else rows
  prompts = [r["prompt"] for r in rows]
  policies = {k: v for k, v in e.policies.to_dict().items() if v}   # "" = not given
  if any(r.get("response") for r in rows):
    policies.setdefault("reference", "")
  for comp in e.comparisons:
    a, _, b = comp.partition("_vs_")
    missing = [x for x in (a, b) if x not in policies]
    if not b or missing:
      raise ConfigError(f"eval.comparisons: {comp!r} needs policies {missing or [comp]}; "
                        f"set --config.eval.policies.<name>=<model dir> (have: {sorted(policies)})")
  responses = policy_responses(config, policies, prompts, [r.get("response", "") for r in rows],
                               mesh)
  judge = judges.make_judge(e.judge, e.get("labeler"), config.seed)
  quality = getattr(judge, "quality_fn", None)
  rep = metrics.evaluate_texts(judge, prompts, responses, list(e.comparisons),
                               quality_fn=quality)
  rep["judge"] = judge.name
  if e.rm_model and e.rm_pairs_path:
    tok = load_tokenizer(config.model.tokenizer)
    rm = build(config.model, mesh, "scalar", checkpoint=e.rm_model, dtype="float32")
    pairs = [v for _, v in read_json_lines(e.rm_pairs_path)]
    rep["rm_accuracy_human"] = metrics.rm_accuracy(
        rm, tok, mesh, pairs, max_prompt_len=config.data.max_prompt_len,
        max_response_len=config.data.max_response_len)
  paths.write_jsonl_atomic(paths.join(workdir, "responses.jsonl"),
                           ({"prompt": p, **{k: v[i] for k, v in responses.items()}}
                            for i, p in enumerate(prompts)))
  rep = report_lib.write_report(workdir, rep, dict(e.curves.to_dict()) if "curves" in e else None)
  flat = {f"win_rate/{k}": v["rate"] for k, v in rep["win_rates"].items()}
  flat.update({f"lc_win_rate/{k}": v["rate"] for k, v in rep["length_controlled"].items()})
  return flat
