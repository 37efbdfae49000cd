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


def option_ids(tokenizer, ending: str, options=("1", "2")) -> list[int]:
  """One token id per option, as it follows `ending` inside the prompt."""
  ids = []
  for opt in options:
    seq = continuation_ids(tokenizer, ending, opt)
    if len(seq) != 1:
      pieces = tokenizer.convert_ids_to_tokens(seq)
      raise ValueError(f"option {opt!r} after {ending!r} is {len(seq)} tokens {pieces} in this "
                       "tokenizer; pairwise scoring needs single-token options "
                       "(labeler.template.options)")
    ids.append(seq[0])
  if len(set(ids)) != len(ids):
    raise ValueError(f"options {options} map to the same token ids {ids}")
  return ids


def score_string_ids(tokenizer, ending: str, scores) -> list[list[int]]:
  """Token ids of each score string after `ending` (multi-token strings are fine)."""
  seqs = [continuation_ids(tokenizer, ending, s) for s in scores]
  if len({tuple(s) for s in seqs}) != len(seqs):
    raise ValueError(f"score strings {scores} are not distinct token sequences")
  return seqs
