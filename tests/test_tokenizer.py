"""Tokenizers load offline from local files and round-trip text."""
import pytest

from rlaif_jax.models.tokenizer import load_tokenizer

TEXTS = ["Hello world", "SUBREDDIT: r/relationships\nTL;DR: we broke up.",
         "Preferred Summary=1", "naïve café – 東京 🙂"]


def test_llama2_sentencepiece_offline_round_trip(shared_data):
  tok = load_tokenizer(str(shared_data / "tokenizers" / "llama2-sentencepiece"))
  assert len(tok) == 32000
  assert (tok.bos_token, tok.eos_token, tok.unk_token) == ("<s>", "</s>", "<unk>")
  # Known ids of the Llama-2 vocabulary (a real SentencePiece model, not a toy).
  assert tok.convert_tokens_to_ids(["▁Hello", "▁world"]) == [15043, 3186]
  for text in TEXTS:
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
  assert tok.pad_token_id is not None


def test_byte_tokenizer_round_trip_and_ids():
  tok = load_tokenizer("byte")
  assert len(tok) == 259 and (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
  for text in TEXTS:
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids == [b + 3 for b in text.encode("utf-8")]        # one id per byte
    assert tok.decode(ids) == text


def test_missing_tokenizer_dir_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
    load_tokenizer(str(tmp_path / "nope"))
