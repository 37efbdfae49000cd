"""Option and score-string ids derived in context, for SentencePiece and byte-level BPE."""
import pytest

from rlaif_jax.labeler.tokens import option_ids, option_tokens, score_string_ids
from rlaif_jax.models.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def llama(shared_data):
  return load_tokenizer(str(shared_data / "tokenizers" / "llama2-sentencepiece"))


def _whole(tok, text):
  return tok(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("ending", ["Preferred Summary=", "Preferred Response=",
                                    "More Harmful Response= "])
def test_llama_options_are_the_tokens_the_full_prompt_ends_with(llama, ending):
  ids = option_ids(llama, ending)
  for opt, i in zip("12", ids):
    # inside a real prompt (after a line break) the option is the last token
    assert _whole(llama, f"Some text.\n{ending}{opt}")[-1] == i
    assert llama.convert_ids_to_tokens(i) == opt         # digits are split, no "▁"
  assert ids[0] != ids[1]


@pytest.mark.parametrize("tokenizer", ["llama", "byte"])
def test_space_separated_options_share_a_teacher_forced_token(tokenizer, llama):
  # " 1" is "▁" "1" in Llama (digits split) and "Ġ" "1" in a byte-level BPE:
  # the shared space token is forced, the digit after it is the option
  tok = llama if tokenizer == "llama" else load_tokenizer("byte")
  shared, ids = option_tokens(tok, "Answer:", (" 1", " 2"))
  for o, i in zip("12", ids):
    whole = _whole(tok, f"x\nAnswer: {o}")
    assert whole[-1] == i and whole[-1 - len(shared):-1] == shared
  assert len(shared) == 1 and tok.convert_ids_to_tokens(shared)[0] in ("▁", "Ġ")
  with pytest.raises(ValueError, match="share the leading"):
    option_ids(tok, "Answer:", (" 1", " 2"))


def test_byte_level_options(llama):
  tok = load_tokenizer("byte")
  assert option_ids(tok, "Preferred Summary=") == [tok.convert_tokens_to_ids(c) for c in "12"]


def test_multi_token_option_is_a_clear_error(llama):
  with pytest.raises(ValueError, match="single last token"):
    option_ids(llama, "Preferred Summary=", ("10", "2"))


def test_score_strings_may_be_multi_token(llama):
  seqs = score_string_ids(llama, "SCORE: ", [str(i) for i in range(1, 11)])
  assert all(len(s) == 1 for s in seqs[:9])
  assert llama.convert_ids_to_tokens(seqs[9]) == ["1", "0"]
  assert seqs[9][0] == seqs[0][0]              # "10" starts like "1"
