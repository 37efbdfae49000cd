"""The demo world's files: what a real run would bring as data, written into a workdir.

    <dir>/tokenizer/             the world's tokenizer (HF directory)
    <dir>/sft_{train,valid}.jsonl     {prompt, response}: posts and Reddit-style TL;DRs
    <dir>/prompts_train.jsonl         {prompt}: RL rollout posts
    <dir>/eval.jsonl                  {prompt, response}: held-out posts + their TL;DRs
    <dir>/labeler_{train,valid}.jsonl {prompt, response}: the labeler's pre-training

Posts of different files come from disjoint seeds. The labeler's pre-training
set stands in for the instruction tuning an off-the-shelf LLM brings along: it
teaches a small LM to answer the labeler's own prompts – the pairwise question
("Preferred Summary=" → "1"/"2", both orders equally often) and the direct 1–10 question – on posts and summaries
the world makes up, never on the pipeline's pairs, with the expert's answer
(the oracle's noise-free choice) as an instruction-tuned LLM's "knowledge".
About a third of its pairs are minimal pairs (one fact invented or dropped, or
one clause of padding added), which teach a small LM to look for coverage and
invention far sooner than pairs that differ everywhere; two fifths are pairs of
policy-like samples (`world.sampled_summary`: swapped facts, repeats, stray
questions), the kind of text it will be asked about – without them the
labeler learned cues (longer = more facts = better) that reverse on a
sampled policy's pairs and agreed with the oracle on 44% of them. A fifth of
the 1–10 rows rate one side of a minimal pair (`one_edit`): without them the
score never saw what one padding clause or one invented fact costs, preferred
padded summaries on some seeds, and direct RLAIF tied SFT there (50.3% at
seed 2; 65.8% with them). This is the only place the oracle reaches the
labeler.
"""
from __future__ import annotations

import random

from rlaif_jax import paths as io
from rlaif_jax.demo import world, world_tokenizer
from rlaif_jax.demo.world import DIRECT_PREAMBLE, HARM_PREAMBLE, PAIR_PREAMBLE
from rlaif_jax.labeler import prompts as P

# Seed offsets keep the files' posts apart.
_SFT, _VALID, _PROMPTS, _EVAL, _LABELER = 0, 1, 2, 3, 4


def _posts(n: int, seed: int) -> list[str]:
  rng = random.Random(seed)
  return [world.make_post(rng)[0] for _ in range(n)]


def sft_rows(n: int, seed: int) -> list[dict]:
  rng = random.Random(seed + 7919)
  return [{"id": f"s{seed}-{i}", "prompt": world.prompt_of(p),
           "response": " " + world.reference_summary(p, rng)}
          for i, p in enumerate(_posts(n, seed))]


def pairwise_prompt(template: P.Template, post: str, first: str, second: str) -> str:
  """The labeler's pairwise prompt text, as rlaif_jax.labeler.scorer assembles it."""
  return (P.prefix_text(template.preamble) +
          template.sample.format(context=post, response_1=first.strip(),
                                 response_2=second.strip()) + template.ending)


def direct_prompt(template: P.DirectTemplate, post: str, summary: str) -> str:
  return (P.prefix_text(template.preamble) +
          template.sample.format(context=post, response=summary.strip()) + template.ending)


def labeler_templates() -> tuple[P.Template, P.DirectTemplate]:
  return (P.pairwise_template("summarization", "base", {"preamble": PAIR_PREAMBLE}),
          P.direct_template("summarization", {"preamble": DIRECT_PREAMBLE}))


def harmless_template() -> P.Template:
  return P.pairwise_template("harmless", "base", {"preamble": HARM_PREAMBLE})


_PADS = ("long story", "not sure what to do", "we are friends")


def minimal_pair(post: str, rng: random.Random) -> tuple[str, str]:
  """Two summaries of `post` that differ in ONE edit – a fact replaced by one the
  post never mentions, a fact dropped, a padding clause added, or (on a post
  that invites harm) its revenge act urged on – the better one
  first. Contrastive pairs like these are how an instruction-tuned LLM comes to
  "see" coverage and invention; a small LM learns them far faster than it learns
  from pairs that differ everywhere."""
  facts, words = world.facts_of(post), frozenset(post.split())
  keep = {s: rng.random() < 0.85 for s in ("who", "deed", "thing", "ask")}
  pads = [rng.choice(_PADS) for _ in range(rng.choice((0, 0, 1)))]
  short_ask = rng.random() < 0.5

  def render(f, keep, pads):
    who = f["who"] if keep["who"] else "someone"
    deed = f["deed"] if keep["deed"] else "took"
    thing = f["thing"] if keep["thing"] else "stuff"
    clauses = [f"{'my ' if keep['who'] else ''}{who} {deed} my {thing}"] + list(pads)
    if keep["ask"]:
      clauses.append((f["ask"] if short_ask else world.ASK[f["ask"]]) + " ?")
    text = " , ".join(clauses)
    return text if text.endswith("?") else text + " ."

  good = render(facts, keep, pads)
  edits = ("invent", "invent", "drop", "pad") + (("harm",) if world.invitation(post) else ())
  edit = rng.choice(edits)
  kept = [s for s in keep if keep[s]]
  bad_facts, bad_keep, bad_pads = dict(facts), dict(keep), list(pads)
  if edit == "invent" and kept:
    slot = rng.choice(kept)
    pool = {"who": world.WHO, "deed": world.DEED, "thing": world.THING,
            "ask": sorted(world.ASK)}[slot]
    bad_facts[slot] = rng.choice([w for w in pool if w not in words and w != facts[slot]])
  elif edit == "drop" and kept:
    bad_keep[rng.choice(kept)] = False
  elif edit == "harm":      # the post's revenge act urged on
    bad_pads.insert(0, world.invitation(post)[0])
  else:
    bad_pads.insert(rng.randint(0, len(pads)), rng.choice(_PADS))
  return good, render(bad_facts, bad_keep, bad_pads)


def one_edit(post: str, rng: random.Random) -> str:
  """Either side of a `minimal_pair`: rated alone, one invented fact or one
  padding clause must cost its points on the 1–10 scale too."""
  return rng.choice(minimal_pair(post, rng))


def harmless_pair(post: str, rng: random.Random) -> tuple[str, str] | None:
  """Two summaries of a harm-inviting post, exactly one urging its act on: the
  harmful one first; None when two draws never differ in harm."""
  for _ in range(8):
    a, b = world.sampled_summary(post, rng), world.sampled_summary(post, rng)
    if rng.random() < 0.5:     # the harm inserted into an otherwise harmless sample
      b = world.sampled_summary(post, rng)
      while world.harmful(b):
        b = world.sampled_summary(post, rng)
      clauses = b.rstrip(" .").split(" , ")
      a = " , ".join(clauses[:1] + [world.invitation(post)[0]] + clauses[1:])
      a = a if a.endswith("?") else a + " ."
    if world.harmful(a) != world.harmful(b):
      return (a, b) if world.harmful(a) else (b, a)
  return None


def labeler_rows(n: int, seed: int, direct_share: float = 0.3, min_gap: float = 0.3,
                 minimal_share: float = 0.35, sampled_share: float = 0.4,
                 harmless_share: float = 0.5) -> list[dict]:
  """Labeling prompts with the oracle's answers (see the module docstring): the
  pairwise answer is the expert's (noise-free) choice on pairs whose quality
  differs by at least `min_gap` – a `minimal_share` of them minimal pairs (see
  `minimal_pair`), a `sampled_share` two policy-like samples
  (`world.sampled_summary`), the rest random against reference summaries; the
  direct answer is the oracle's rating. On posts that invite harm, a
  `harmless_share` of the rows ask the harmless question instead ("which
  response is more harmful?"), answered with the harmful one's slot."""
  rng = random.Random(seed + 104729)
  oracle = world.Oracle()
  pair_t, direct_t = labeler_templates()
  harm_t = harmless_template()
  rows = []
  for i, post in enumerate(_posts(n, seed)):
    if world.invitation(post) and rng.random() < harmless_share:
      pair = harmless_pair(post, rng)
      if pair is not None:
        worse, better = pair
        first = rng.random() < 0.5
        a, b = (worse, better) if first else (better, worse)
        rows.append({"id": f"l{seed}-{i}", "prompt": pairwise_prompt(harm_t, post, a, b),
                     "response": "1" if first else "2"})
      continue
    if rng.random() < direct_share:
      y = rng.choice((world.random_summary, world.reference_summary, world.sampled_summary,
                      world.sampled_summary, one_edit))(post, rng)
      rows.append({"id": f"l{seed}-{i}", "prompt": direct_prompt(direct_t, post, y),
                   "response": str(oracle.rating(post, y))})
      continue
    kind = rng.random()
    if kind < minimal_share:
      a, b = minimal_pair(post, rng)
    elif kind < minimal_share + sampled_share:
      a, b = world.sampled_summary(post, rng), world.sampled_summary(post, rng)
    else:
      a = world.random_summary(post, rng)
      b = world.reference_summary(post, rng) if rng.random() < 0.5 else \
          world.random_summary(post, rng)
    gap = oracle.quality(post, a) - oracle.quality(post, b)
    if abs(gap) < min_gap:
      continue
    if rng.random() < 0.5:
      a, b, gap = b, a, -gap
    rows.append({"id": f"l{seed}-{i}", "prompt": pairwise_prompt(pair_t, post, a, b),
                 "response": "1" if gap > 0 else "2"})
  return rows


def write(directory: str, *, seed: int = 0, n_sft: int = 2000, n_prompts: int = 1000,
          n_eval: int = 128, n_labeler: int = 6000) -> dict:
  """Writes the world's files (idempotent: existing files are kept); returns their paths."""
  io.makedirs(directory)
  s = seed * 10
  files = {
      "sft_train": lambda: sft_rows(n_sft, s + _SFT),
      "sft_valid": lambda: sft_rows(max(n_sft // 10, 64), s + _VALID),
      "prompts_train": lambda: [{"id": r["id"], "prompt": r["prompt"]}
                                for r in sft_rows(n_prompts, s + _PROMPTS)],
      "eval": lambda: sft_rows(n_eval, s + _EVAL),
      "labeler_train": lambda: labeler_rows(n_labeler, s + _LABELER),
      "labeler_valid": lambda: labeler_rows(max(n_labeler // 20, 64), s + _LABELER + 5),
  }
  paths = {"tokenizer": world_tokenizer.write(io.join(directory, "tokenizer"), seed)}
  for name, make in files.items():
    paths[name] = io.join(directory, f"{name}.jsonl")
    if not io.exists(paths[name]):
      io.write_jsonl_atomic(paths[name], make())
  return paths
