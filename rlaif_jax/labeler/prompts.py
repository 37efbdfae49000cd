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

Few-shot exemplars render like a sample followed by its answer; their
rationales are shown only in chain-of-thought prompts (a plain prompt that
showed reasoning before each answer would teach an answer format the model is
then not asked for). `bundled:<task>` names the exemplars shipped with the
package (labeler/exemplars/<task>.jsonl, our own writing in the paper's format).

Chat template (instruction-tuned labelers such as gemma-7b-it): the whole
question is one user turn and the answer, or the rationale, is where the
model's turn begins:

    {user}{preamble}\n\n[exemplars]{sample}{model}{ending}                     plain
    {user}{preamble}\n\n[exemplars]{sample}{instruction}{model}Rationale:       CoT step 1
    ...{sample}{instruction}{model}Rationale: {rationale}\n{ending}            CoT step 2

where the CoT ending "instruction\nRationale:" is split at its last line
break; the model ends its turn with `end_of_turn`, a stop of the rationale.

Direct scoring (direct RLAIF) prompts show one response and end in "SCORE: ",
followed by "1" ... "10". All preambles here are our own wording.
"""
from __future__ import annotations

import dataclasses
import json

from rlaif_jax import paths
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

_HELPFUL_DETAILED = """\
You are an expert rater of conversations between a person and an AI assistant. A helpful \
response is one a thoughtful expert would give: it understands what the person is really \
asking and moves them forward. Your task is to read the conversation and two possible next \
responses of the assistant and decide which response is more helpful, judging them on the \
following qualities.

Relevance: does the response address what the person asked, in the context of the whole \
conversation, rather than a different or more general question?

Usefulness: does it give the person what they need – correct steps, facts or advice, in \
enough detail to act on – and ask for clarification when the request is truly unclear?

Honesty: is everything it says true? It must not invent facts, sources or abilities, and it \
should say so when it does not know or cannot help.

Clarity: is it easy to follow, without padding, repetition or needless caveats?

Overall quality: taking all of the above together, which response would the person rather \
receive?

Answer with 1 or 2 to say which response is more helpful."""

_HARMLESS_DETAILED = """\
You are an expert rater of the safety of AI assistants. A harmful response is one that could \
hurt the person, other people or society if it were followed or believed. Your task is to read \
a conversation between a person and an AI assistant and two possible next responses of the \
assistant and decide which response is MORE harmful, judging them on the following kinds of \
harm.

Dangerous help: does the response give instructions, encouragement or resources for violence, \
self-harm, weapons, crime, or anything else that puts people at risk?

Unethical conduct: does it help deceive, manipulate, harass, stalk or exploit someone, or \
invade their privacy?

Offensive content: is it hateful, demeaning or discriminatory toward a person or a group, or \
needlessly cruel?

Misleading content: does it state dangerous falsehoods as facts, for example about health, \
medicine or the law?

Declining a harmful request, or steering the person toward a safe alternative, is not harmful, \
and neither is a response that is merely unhelpful. When both responses are harmful, choose \
the one whose harm is more severe or more likely.

Answer with 1 or 2 to say which response is MORE harmful."""

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
    ("helpful", "detailed"): Template(_HELPFUL_DETAILED, _DIALOGUE_SAMPLE, "Preferred Response=",
                                      _DIALOGUE_COT.format(what="more helpful")),
    ("harmless", "base"): Template(_HARMLESS, _DIALOGUE_SAMPLE, "More Harmful Response=",
                                   _DIALOGUE_COT.format(what="more harmful"), invert=True),
    ("harmless", "detailed"): Template(_HARMLESS_DETAILED, _DIALOGUE_SAMPLE,
                                       "More Harmful Response=",
                                       _DIALOGUE_COT.format(what="more harmful"), invert=True),
}

DIRECT = {
    "summarization": DirectTemplate(_DIRECT_SUMMARY, "Text - {context}\nSummary - {response}\n"),
    "helpful": DirectTemplate(_DIRECT_DIALOGUE, "Context - {context}\nResponse - {response}\n"),
    "harmless": DirectTemplate(_DIRECT_DIALOGUE, "Context - {context}\nResponse - {response}\n"),
}


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
  """Turn markers of an instruction-tuned labeler (see the module docstring)."""
  user: str                       # opens the user turn, right after BOS
  model: str                      # closes the user turn and opens the model's
  end_of_turn: str                # how the model closes its turn: a CoT stop

  def __post_init__(self):
    if not self.end_of_turn:
      raise ValueError("a chat template needs its end-of-turn marker (the CoT stop)")


CHAT = {
    "gemma": ChatTemplate("<start_of_turn>user\n", "<end_of_turn>\n<start_of_turn>model\n",
                          "<end_of_turn>"),
    "chatml": ChatTemplate("<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n",
                           "<|im_end|>"),      # Qwen2 instruct
}


def chat_template(name: str = "", overrides=None) -> ChatTemplate | None:
  """A built-in chat template (`name`), with any non-empty fields of `overrides`
  replaced; None when neither names one (a plain-text prompt)."""
  fields = {k: v for k, v in (overrides or {}).items() if v not in ("", None)}
  if not name and not fields:
    return None
  if name and name not in CHAT:
    raise ValueError(f"no chat template {name!r}; built in: {sorted(CHAT)} "
                     "(or set labeler.chat_template.* yourself)")
  base = CHAT[name] if name else None
  if base is None:
    missing = {"user", "model", "end_of_turn"} - set(fields)
    if missing:
      raise ValueError(f"an own chat template needs user, model and end_of_turn; missing "
                       f"{sorted(missing)}")
    return ChatTemplate(**{k: fields[k] for k in ("user", "model", "end_of_turn")})
  return _override(base, fields)


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


BUNDLED = "bundled:"


def bundled_exemplars_path(task: str) -> str:
  """The exemplar file shipped for `task` (summarization, helpful, harmless)."""
  import importlib.resources
  path = importlib.resources.files("rlaif_jax.labeler") / "exemplars" / f"{task}.jsonl"
  if not path.is_file():
    raise ValueError(f"no bundled exemplars for task {task!r}; bundled: summarization, "
                     "helpful, harmless")
  return str(path)


def resolve_exemplars_path(path: str) -> str:
  """A file path; `bundled:<task>` becomes the bundled file of that task."""
  return bundled_exemplars_path(path[len(BUNDLED):]) if path.startswith(BUNDLED) else path


def load_exemplars(path: str, num: int = -1) -> list[Exemplar]:
  """Few-shot exemplars from JSONL: {"context", "response_1", "response_2", "answer",
  "rationale"?}; `answer` answers the template's own question (for harmless: the
  MORE harmful one). `path` may be `bundled:<task>`."""
  path = resolve_exemplars_path(path)
  out = []
  # through the I/O layer: an exemplar file may live in a gs:// bucket
  for lineno, line in enumerate(paths.read_text(path).splitlines(), 1):
    if not line.strip():
      continue
    r = json.loads(line)
    missing = [k for k in ("context", "response_1", "response_2", "answer") if k not in r]
    if missing:
      raise ValueError(f"{path}:{lineno}: exemplar lacks {missing}")
    out.append(Exemplar(r["context"], r["response_1"], r["response_2"], str(r["answer"]),
                        r.get("rationale", "")))
  return out if num < 0 else out[:num]


def cot_turn(cot_ending: str, chat: ChatTemplate | None) -> str:
  """What follows a sample to ask for a rationale: the CoT ending, or with a chat
  template its instruction in the user turn and its last line ("Rationale:")
  opening the model's turn."""
  if chat is None:
    return cot_ending
  instruction, _, lead = cot_ending.rpartition("\n")
  return f"{instruction}{chat.model}{lead}"


def answer_turn(ending: str, chat: ChatTemplate | None) -> str:
  """What follows a sample to ask for the answer: the ending, in the model's turn."""
  return ending if chat is None else chat.model + ending


def prefix_text(preamble: str, exemplars=(), template: Template | None = None, *,
                cot: bool = False, chat: ChatTemplate | None = None) -> str:
  """Preamble and exemplars: the part of every prompt that is the same. An
  exemplar's rationale is shown only in a chain-of-thought prompt (`cot`), where
  every exemplar must have one."""
  parts = [(chat.user if chat else "") + preamble.rstrip() + "\n\n"]
  for i, ex in enumerate(exemplars):
    body = template.sample.format(context=ex.context, response_1=ex.response_1,
                                  response_2=ex.response_2)
    if cot:
      if not ex.rationale.strip():
        raise ValueError(f"exemplar {i} has no rationale: a chain-of-thought prompt shows "
                         "one for every exemplar")
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
