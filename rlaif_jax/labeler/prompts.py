"""The labeler's prompt library: preamble + few-shot exemplars + sample + ending.

A pairwise prompt reads

    {preamble}\\n\\n                      shared by every pair  -> the prefix KV cache
    [exemplar]\\n\\n ...                 shared by every pair  -> the prefix KV cache
    Text - {context}\\n                  shared by both orders -> one per pair
    Summary 1 - {r1}\\nSummary 2 - {r2}\\n   per order
    [{cot_ending} {rationale}\\n]        chain of thought only
    {ending}                             "Preferred Summary=" -> next token "1" or "2"

and is split at those line breaks into (prefix, context, tail) so that each
part can be encoded once for everything that shares it. Every part starts
after a line break, which is also where `encode_continuation` tokenizes it.

Harmless dialogue asks which response is MORE harmful; `Template.invert` says
so, and the scorer flips the two options so that in every returned label 1
means "the first response is preferred".

Direct scoring (direct RLAIF) prompts show one response and end in "SCORE: ",
followed by "1" ... "10". All preambles here are our own wording.
"""
from __future__ import annotations

import dataclasses
import json

from rlaif_jax.data.formats import Prompt

_SUMMARY_BASE = ("You are an expert rater of summaries. Given a piece of text and two of its "
                 "possible summaries, answer with 1 or 2 to say which summary is better.")

_SUMMARY_DETAILED = """\
A good summary is a short piece of text that carries the essence of a longer one: it keeps the \
information that matters and the purpose of the original, and leaves the rest out. Your task \
is to read a text and two of its summaries and decide which summary is better, judging them on \
the following qualities.

Coherence: does the summary read well on its own? It should be clear and easy to follow; \
meaning matters more than grammar, so small slips of grammar count for little.

Accuracy: does the summary say only what the text says? It must not add facts that are not in \
the text, mix up who did what, or leave an impression the author did not intend.

Coverage: does the summary keep what a reader needs to understand the situation? It should \
carry the main points and serve the text's purpose, for example the question the author asks \
or the advice they seek.

Overall quality: taking all of the above together, how good is the summary as a summary of \
this text?

Answer with 1 or 2 to say which summary is better."""

_HELPFUL = ("You are an expert rater of conversations between a person and an AI assistant. "
            "Given the conversation so far and two possible next responses of the assistant, "
            "answer with 1 or 2 to say which response is more helpful, honest and useful to "
            "the person.")

_HARMLESS = ("You are an expert rater of the safety of AI assistants. Given a conversation "
             "between a person and an AI assistant and two possible next responses of the "
             "assistant, answer with 1 or 2 to say which response is MORE harmful: more "
             "dangerous, unethical, offensive or likely to help someone cause harm.")

_DIRECT_SUMMARY = ("You are an expert rater of summaries. Read the text and its summary below, "
                   "then rate the summary on a scale from 1 (very poor) to 10 (excellent) for "
                   "its coherence, accuracy, coverage and overall quality.")

_DIRECT_DIALOGUE = ("You are an expert rater of AI assistants. Read the conversation and the "
                    "assistant's final response below, then rate the response on a scale from "
                    "1 (very poor) to 10 (excellent) for how helpful and harmless it is.")

_SUMMARY_COT = ("Consider the coherence, accuracy, coverage and overall quality of each summary "
                "and explain which one is better.\nRationale:")
_DIALOGUE_COT = "Consider both responses carefully and explain which one is {what}.\nRationale:"


@dataclasses.dataclass(frozen=True)
class Template:
  preamble: str
  sample: str                     # with {context}, {response_1}, {response_2}
  ending: str                     # the option token follows it
  cot_ending: str = ""            # replaces the ending in CoT step 1
  invert: bool = False            # the question asks for the worse response
  options: tuple[str, str] = ("1", "2")

  def __post_init__(self):
    for key in ("{context}", "{response_1}", "{response_2}"):
      if key not in self.sample:
        raise ValueError(f"labeler sample template lacks {key}: {self.sample!r}")


@dataclasses.dataclass(frozen=True)
class DirectTemplate:
  preamble: str
  sample: str                     # with {context}, {response}
  ending: str = "SCORE: "
  scores: tuple[str, ...] = tuple(str(i) for i in range(1, 11))


_SUMMARY_SAMPLE = "Text - {context}\nSummary 1 - {response_1}\nSummary 2 - {response_2}\n"
_DIALOGUE_SAMPLE = "Context - {context}\nResponse 1 - {response_1}\nResponse 2 - {response_2}\n"

PAIRWISE = {
    ("summarization", "base"): Template(_SUMMARY_BASE, _SUMMARY_SAMPLE, "Preferred Summary=",
                                        _SUMMARY_COT),
    ("summarization", "detailed"): Template(_SUMMARY_DETAILED, _SUMMARY_SAMPLE,
                                            "Preferred Summary=", _SUMMARY_COT),
    ("helpful", "base"): Template(_HELPFUL, _DIALOGUE_SAMPLE, "Preferred Response=",
                                  _DIALOGUE_COT.format(what="more helpful")),
    ("harmless", "base"): Template(_HARMLESS, _DIALOGUE_SAMPLE, "More Harmful Response=",
                                   _DIALOGUE_COT.format(what="more harmful"), invert=True),
}

DIRECT = {
    "summarization": DirectTemplate(_DIRECT_SUMMARY, "Text - {context}\nSummary - {response}\n"),
    "helpful": DirectTemplate(_DIRECT_DIALOGUE, "Context - {context}\nResponse - {response}\n"),
    "harmless": DirectTemplate(_DIRECT_DIALOGUE, "Context - {context}\nResponse - {response}\n"),
}


def pairwise_template(task: str, preamble: str = "base", overrides=None) -> Template:
  """A built-in template with any non-empty fields of `overrides` (a dict) replaced."""
  if (task, preamble) not in PAIRWISE:
    raise ValueError(f"no pairwise template for task={task!r}, preamble={preamble!r}; "
                     f"built in: {sorted(PAIRWISE)} (or set labeler.template.* yourself)")
  return _override(PAIRWISE[(task, preamble)], overrides)


def direct_template(task: str, overrides=None) -> DirectTemplate:
  if task not in DIRECT:
    raise ValueError(f"no direct-scoring template for task={task!r}; built in: {sorted(DIRECT)}")
  return _override(DIRECT[task], overrides)


def _override(template, overrides):
  fields = {f.name for f in dataclasses.fields(template)}
  kw = {k: v for k, v in (overrides or {}).items() if k in fields and v not in ("", None)}
  if "options" in kw:
    kw["options"] = tuple(kw["options"])
  return dataclasses.replace(template, **kw)


# ------------------------------------------------------------------ rendering

@dataclasses.dataclass(frozen=True)
class Exemplar:
  context: str
  response_1: str
  response_2: str
  answer: str                  # the option as the template's question wants it ("1"/"2")
  rationale: str = ""


def load_exemplars(path: str, num: int = -1) -> list[Exemplar]:
  """Few-shot exemplars from JSONL: {"context", "response_1", "response_2", "answer",
  "rationale"?}; `answer` answers the template's own question (for harmless: the
  MORE harmful one)."""
  out = []
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      r = json.loads(line)
      missing = [k for k in ("context", "response_1", "response_2", "answer") if k not in r]
      if missing:
        raise ValueError(f"{path}:{lineno}: exemplar lacks {missing}")
      out.append(Exemplar(r["context"], r["response_1"], r["response_2"], str(r["answer"]),
                          r.get("rationale", "")))
  return out if num < 0 else out[:num]


def prefix_text(preamble: str, exemplars=(), template: Template | None = None) -> str:
  """Preamble and exemplars: the part of every prompt that is the same."""
  parts = [preamble.rstrip() + "\n\n"]
  for ex in exemplars:
    body = template.sample.format(context=ex.context, response_1=ex.response_1,
                                  response_2=ex.response_2)
    if ex.rationale and template.cot_ending:
      body += f"{template.cot_ending} {ex.rationale.strip()}\n"
    parts.append(f"{body}{template.ending}{ex.answer}\n\n")
  return "".join(parts)


def split_sample(sample: str, context: str, first: str, second: str) -> tuple[str, str]:
  """(context part, rest) of a sample: both orders of a pair share the first."""
  cut = sample.index("{response_1}")
  head = sample[:cut]
  if "{context}" in head:
    # break at the last line break before the first response so the rest
    # starts a line (where its separate tokenization is exact)
    nl = head.rfind("\n") + 1
    if nl > head.index("{context}"):
      head, cut = head[:nl], nl
    else:
      head, cut = "", 0
  else:
    head, cut = "", 0
  fill = dict(context=context, response_1=first, response_2=second)
  return head.format(**fill), sample[cut:].format(**fill)


def context_of(prompt) -> str:
  """The text a labeler judges responses against: the prompt without its
  policy cue ("TL;DR:", "Assistant:"), so it reads as a plain text/dialogue."""
  if isinstance(prompt, Prompt):
    return (prompt.head + prompt.body).strip()
  return str(prompt).strip()
