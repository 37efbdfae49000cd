"""Tokenizers: a local Hugging Face directory (offline), or the built-in byte tokenizer.

`load_tokenizer("byte")` gives a byte-level tokenizer (256 byte tokens + pad,
bos, eos = 259 ids) for toy models and the demo world: it needs no files and
encodes any text. Anything else is a local directory read by
`transformers.AutoTokenizer` with `local_files_only=True` – never a hub download.
"""
from __future__ import annotations

import functools
import os

import transformers

from rlaif_jax import paths

BYTE_SPECIALS = ("<pad>", "<bos>", "<eos>")


@functools.cache
def byte_tokenizer() -> transformers.PreTrainedTokenizerFast:
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers
  from tokenizers.pre_tokenizers import ByteLevel

  alphabet = ByteLevel.alphabet()                  # 256 printable stand-ins for bytes
  byte_to_char = pre_tokenizers.ByteLevel
  vocab = {tok: i for i, tok in enumerate(BYTE_SPECIALS)}
  for ch in sorted(alphabet, key=lambda c: _byte_of(c)):
    vocab[ch] = len(vocab)
  tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
  tok.pre_tokenizer = byte_to_char(add_prefix_space=False, use_regex=False)
  tok.decoder = decoders.ByteLevel()
  return transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>")


def _byte_of(ch: str) -> int:
  # Inverse of GPT-2's bytes_to_unicode: printable bytes map to themselves,
  # the others to 256 + k in order.
  printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
               + list(range(ord("®"), ord("ÿ") + 1)))
  code = ord(ch)
  if code in printable:
    return code
  others = [b for b in range(256) if b not in printable]
  return others[code - 256]


def load_tokenizer(spec: str):
  """"byte" or a directory holding a Hugging Face tokenizer (local, or a gs:// URL:
  transformers reads local files only, so its files are fetched first)."""
  if spec == "byte":
    return byte_tokenizer()
  if paths.exists(spec):
    spec = paths.local_dir(spec)
  if not os.path.isdir(spec):
    raise FileNotFoundError(
        f"tokenizer {spec!r}: not a local directory (nothing is downloaded); "
        "pass a directory with tokenizer.json / tokenizer.model, or 'byte'")
  tok = transformers.AutoTokenizer.from_pretrained(spec, local_files_only=True)
  if tok.pad_token_id is None:
    # Padding positions are always masked out, so any id does; EOS is the
    # convention for Llama-family tokenizers that ship without a pad token.
    tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
  return tok
