"""Option and score-string token ids, derived from the labeler's tokenizer in context.

The token a model emits after "Preferred Summary=" for the answer 1 may be
"1", " 1", "▁1" or a merge with the "=" – it depends on the tokenizer. So the
ids are never written down: the ending is tokenized with and without the
option appended (after a line break, as in the prompt), and the option is
whatever the longer tokenization adds.
"""
from __future__ import annotations

from rlaif_jax.sampling import encode_continuation


def continuation_ids(tokenizer, ending: str, text: str) -> list[int]:
  """Ids that `text` adds after `ending`; raises if the two merge across the seam."""
  base = encode_continuation(tokenizer, ending)
  full = encode_continuation(tokenizer, ending + text)
  if full[:len(base)] != base or len(full) == len(base):
    raise ValueError(
        f"in this tokenizer {text!r} is not a separate token sequence after the ending "
        f"{ending!r}: {ending!r} -> {base}, {ending + text!r} -> {full}; change the ending "
        "(labeler.template.ending) so that the answer starts a new token")
  return full[len(base):]


def option_tokens(tokenizer, ending: str, options=("1", "2")) -> tuple[list[int], list[int]]:
  """(shared, ids): the tokens all options start with, and one id per option.

  " 1" may be the two tokens "▁" "1" (Llama splits digits) or "Ġ" "1" (byte
  BPE). A shared leading part is teacher-forced as part of the prompt; that is
  exact for the 2-way distribution, because p(shared) is a common factor:
  p(s+i) / Σ_j p(s+j) = p(i | s) / Σ_j p(j | s).
  """
  seqs = [continuation_ids(tokenizer, ending, opt) for opt in options]
  n = 0
  while all(len(s) > n + 1 for s in seqs) and len({s[n] for s in seqs}) == 1:
    n += 1
  for opt, seq in zip(options, seqs):
    if len(seq) != n + 1:
      pieces = tokenizer.convert_ids_to_tokens(seq)
      raise ValueError(f"option {opt!r} after {ending!r} is the tokens {pieces} in this "
                       "tokenizer; pairwise scoring needs options that differ in a single "
                       "last token (labeler.template.options)")
  ids = [s[n] for s in seqs]
  if len(set(ids)) != len(ids):
    raise ValueError(f"options {options} map to the same token ids {ids}")
  return seqs[0][:n], ids


def option_ids(tokenizer, ending: str, options=("1", "2")) -> list[int]:
  """One token id per option right after `ending`; raises unless each is one token."""
  shared, ids = option_tokens(tokenizer, ending, options)
  if shared:
    raise ValueError(f"options {options} after {ending!r} share the leading tokens "
                     f"{tokenizer.convert_ids_to_tokens(shared)}: not single-token options "
                     "(use option_tokens, which teacher-forces the shared part)")
  return ids


def score_string_ids(tokenizer, ending: str, scores) -> list[list[int]]:
  """Token ids of each score string after `ending` (multi-token strings are fine)."""
  seqs = [continuation_ids(tokenizer, ending, s) for s in scores]
  if len({tuple(s) for s in seqs}) != len(seqs):
    raise ValueError(f"score strings {scores} are not distinct token sequences")
  return seqs


def digit_ids(tokenizer) -> list[int]:
  """Ids of the tokens that continue a number: pieces made of ASCII digits only
  ("0".."9" where digits are split, also "10", "250", ... where they merge). A
  piece with a word-start marker ("▁1", "Ġ1") starts a new word and is not one."""
  return sorted(i for piece, i in tokenizer.get_vocab().items()
                if piece and all("0" <= ch <= "9" for ch in piece))
