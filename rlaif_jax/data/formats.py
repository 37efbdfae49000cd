"""Task formats shared by SFT, labeling, RL and eval.

A prompt is kept in three parts, `Prompt(head, body, tail, cut)`, so that a
token budget can shorten the *body* (the Reddit post, the older dialogue turns)
and never the fixed head or the cue at the end that the policy answers
("TL;DR:", "Assistant:"). `cut` says which end of the body goes first:
"right" keeps the start of a post, "left" keeps the most recent dialogue.

TL;DR (the query format of OpenAI's summarize-from-feedback release):

    SUBREDDIT: r/{subreddit}\n\nTITLE: {title}\n\nPOST: {post}\n\nTL;DR:

  and the summary is the continuation " {summary}" (one leading space).

Anthropic HH: a transcript is "\n\nHuman: ...\n\nAssistant: ...[\n\nHuman: ...]".
The prompt is everything up to and including the last "\n\nAssistant:", the
response is the rest (usually starting with a space), so that
prompt + response == transcript exactly.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

TLDR_CUE = "\n\nTL;DR:"
HH_CUE = "\n\nAssistant:"
HUMAN_TURN = "\n\nHuman:"


@dataclasses.dataclass(frozen=True)
class Prompt:
  """A prompt as head + body + tail; only the body may be shortened."""
  head: str = ""
  body: str = ""
  tail: str = ""
  cut: str = "right"  # which end of the body truncation removes first

  @property
  def text(self) -> str:
    return self.head + self.body + self.tail

  def with_body_chars(self, n: int) -> "Prompt":
    """The prompt with its body shortened to `n` characters (from `cut`'s end)."""
    body = self.body[:n] if self.cut == "right" else self.body[len(self.body) - n:]
    return dataclasses.replace(self, body=body)


def tldr_prompt(subreddit: str, title: str, post: str) -> Prompt:
  return Prompt(head=f"SUBREDDIT: r/{subreddit}\n\nTITLE: {title}\n\nPOST: ",
                body=post, tail=TLDR_CUE, cut="right")


def tldr_response(summary: str) -> str:
  """The SFT/RL target that follows the cue: one space, then the summary."""
  return " " + summary.strip()


def split_hh_transcript(transcript: str) -> tuple[str, str]:
  """Splits an HH transcript into (prompt, final response); raises if no turn."""
  i = transcript.rfind(HH_CUE)
  if i < 0:
    raise ValueError(f"transcript has no {HH_CUE!r} turn")
  j = i + len(HH_CUE)
  return transcript[:j], transcript[j:]


def hh_prompt(prompt_text: str) -> Prompt:
  """Wraps an HH prompt (ending with the cue) so truncation drops the oldest turns."""
  if not prompt_text.endswith(HH_CUE):
    raise ValueError(f"HH prompt must end with {HH_CUE!r}")
  return Prompt(body=prompt_text[:-len(HH_CUE)], tail=HH_CUE, cut="left")


def plain_prompt(text: str) -> Prompt:
  """A user's own prompt: no known structure, so its start is cut first,
  keeping the end, where instructions and cues usually sit."""
  return Prompt(body=text, cut="left")


def fit_prompt(prompt: Prompt, encode: Callable[[str], Sequence[int]],
               max_tokens: int) -> tuple[list[int], bool]:
  """Token ids of the longest body-truncated prompt with at most `max_tokens`.

  Returns (ids, truncated). The whole string is re-tokenized at each trial
  (binary search over body characters) because tokenizing parts separately
  changes SentencePiece merges at the seams. Raises ValueError when even an
  empty body does not fit: the head and cue are never cut.
  """
  ids = list(encode(prompt.text))
  if len(ids) <= max_tokens:
    return ids, False
  lo, hi = 0, len(prompt.body) - 1  # lo always fits (checked below), hi+1 does not
  best = list(encode(prompt.with_body_chars(0).text))
  if len(best) > max_tokens:
    raise ValueError(f"prompt head + cue alone need {len(best)} tokens > budget {max_tokens}")
  while lo < hi:
    mid = (lo + hi + 1) // 2
    trial = list(encode(prompt.with_body_chars(mid).text))
    if len(trial) <= max_tokens:
      lo, best = mid, trial
    else:
      hi = mid - 1
  return best, True
