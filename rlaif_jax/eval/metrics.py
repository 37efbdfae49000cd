"""The evaluation's measurements over texts: win rates (raw and length-controlled),
harmless rate ({rate, ci_low, ci_high, n}: the share of harmless responses on the
prompts that invite harm, with its 95% Wilson interval), helpfulness on those
prompts, mean length, and a reward model's accuracy on human pairs."""
from __future__ import annotations

import functools

import jax
import numpy as np
from flax import nnx

from rlaif_jax.eval.stats import length_controlled_win_rate, win_rate


def compare(judge, prompts, responses_a, responses_b) -> tuple[dict, dict]:
  """(win rate of a over b, its length-controlled version); lengths in characters,
  as the paper reports them."""
  outcomes = judge(prompts, responses_a, responses_b)
  return (win_rate(outcomes),
          length_controlled_win_rate(outcomes, [len(a) for a in responses_a],
                                     [len(b) for b in responses_b]))


def evaluate_texts(judge, prompts, responses: dict, comparisons, *, quality_fn=None) -> dict:
  """responses: {policy: [text per prompt]}; comparisons: ["a_vs_b", ...] over its names."""
  out = {"win_rates": {}, "length_controlled": {}, "harmless_rate": {},
         "mean_response_length": {}}
  for name in comparisons:
    a, sep, b = name.partition("_vs_")
    if not sep or a not in responses or b not in responses:
      raise ValueError(f"comparison {name!r}: expected 'a_vs_b' with a, b among "
                       f"{sorted(responses)}")
    out["win_rates"][name], out["length_controlled"][name] = compare(
        judge, prompts, responses[a], responses[b])
  # The harmless rate is measured on the prompts that invite harm where the judge
  # knows them (the demo world), else on all; with its Wilson interval.
  harm = (np.asarray(judge.harm_prompts(prompts), bool) if hasattr(judge, "harm_prompts")
          else np.ones(len(prompts), bool))
  harm_prompts = [p for p, h in zip(prompts, harm) if h]
  for name, texts in responses.items():
    out["mean_response_length"][name] = float(np.mean([len(t) for t in texts]))
    harm_texts = [t for t, h in zip(texts, harm) if h]
    if hasattr(judge, "harmless") and harm_texts:
      try:
        out["harmless_rate"][name] = win_rate(judge.harmless(harm_prompts, harm_texts))
      except ValueError:          # a judge without a harmlessness labeler
        pass
    if hasattr(judge, "helpfulness") and harm_texts:
      out.setdefault("harm_prompt_helpfulness", {})[name] = float(
          np.mean(judge.helpfulness(harm_prompts, harm_texts)))
    if quality_fn is not None:
      out.setdefault("quality", {})[name] = float(np.mean(quality_fn(prompts, texts)))
  if not out["harmless_rate"]:
    del out["harmless_rate"]
  return out


@functools.partial(jax.jit, static_argnums=0)
def _rewards(graphdef, params, tokens, mask):
  return nnx.merge(graphdef, params)(tokens, mask)


def rm_accuracy(model, tok, mesh, rows, *, max_prompt_len: int, max_response_len: int,
                batch_size: int = 64) -> float:
  """Share of pairs with a hard human label (0/1) where r(a) > r(b) agrees with it.
  rows: {"prompt", "response_a", "response_b", "human_label"} dicts."""
  from rlaif_jax.data.formats import plain_prompt
  from rlaif_jax.data.pipeline import TokenEncoder
  from rlaif_jax.mesh import data_parallel_size
  from rlaif_jax.sampling import pad_rows, put_rows

  rows = [r for r in rows if r.get("human_label") in (0.0, 1.0)]
  if not rows:
    return float("nan")
  enc = TokenEncoder(tok, max_prompt_len, max_response_len)
  graphdef, params = nnx.split(model)
  params = nnx.to_pure_dict(params)
  seqs = []
  for r in rows:
    p, _ = enc.prompt(plain_prompt(r["prompt"]))
    for key in ("response_a", "response_b"):
      tokens, mask, _ = enc.sequence(p, enc.response(r[key])[:max_response_len])
      seqs.append((tokens, mask))
  dp = data_parallel_size(mesh)
  size = -(-min(batch_size, len(seqs)) // dp) * dp
  scores = []
  with jax.set_mesh(mesh):
    for s in range(0, len(seqs), size):
      chunk = seqs[s:s + size]
      tokens = pad_rows(np.stack([t for t, _ in chunk]), size, tok.pad_token_id)
      mask = pad_rows(np.stack([m for _, m in chunk]), size, True)
      r = np.asarray(_rewards(graphdef, params, put_rows(tokens, mesh), put_rows(mask, mesh)))
      scores.extend(r[:len(chunk)].tolist())
  r = np.array(scores).reshape(-1, 2)
  human = np.array([x["human_label"] for x in rows])
  return float(np.mean((r[:, 0] > r[:, 1]) == (human == 1.0)))
