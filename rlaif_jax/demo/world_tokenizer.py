"""The demo world's word-level tokenizer, saved as a Hugging Face tokenizer directory.

Sequences must stay short for a 2-core CPU, so one token is one word: text is
cut into pieces by a fixed pattern (a word with its leading space, a number, a
punctuation mark with its leading space, a lone space, a line break),

    " my roommate lost my tv ." -> " my" " roommate" " lost" " my" " tv" " ."
    "Preferred Summary=1"       -> "Preferred" " Summary" "=" "1"
    "\\n\\nTL;DR:"               -> "\\n" "\\n" "TL" ";" "DR" ":"

and each piece is looked up in a vocabulary built from the world's own texts
and the labeler's prompt library (tokenizers' WordLevel model); decoding
concatenates the pieces, so decode(encode(text)) == text for every text made of
known pieces. Because pieces never span a line break and have no merges, a
text tokenizes the same whole or in line-broken parts – exactly what the
labeler's prompt splitting assumes. A piece outside the vocabulary becomes
<unk> (the world's policies can only write known words).

It is written as a tokenizer.json + tokenizer_config.json directory and read
back with `rlaif_jax.models.tokenizer.load_tokenizer(dir)` (AutoTokenizer),
exactly as a real model's tokenizer is.
"""
from __future__ import annotations

import os
import random
import tempfile

from rlaif_jax import paths

PATTERN = r" ?[A-Za-z']+|[0-9]+| ?[^\sA-Za-z0-9]| |\n"
SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")


def _pre_tokenizer():
  from tokenizers import Regex, pre_tokenizers
  return pre_tokenizers.Split(Regex(PATTERN), behavior="isolated")


def pieces(text: str) -> list[str]:
  return [p for p, _ in _pre_tokenizer().pre_tokenize_str(text)]


def corpus(n_posts: int = 3000, seed: int = 0) -> list[str]:
  """Texts whose pieces make the vocabulary: world posts/summaries, every labeler
  template (so prompts never hit <unk>), and the numbers 0–10."""
  from rlaif_jax.demo import world
  from rlaif_jax.labeler import prompts as P
  rng = random.Random(seed)
  texts = [str(i) for i in range(11)]
  for _ in range(n_posts):
    post, _ = world.make_post(rng)
    texts += [world.prompt_of(post), "Text - " + post, world.reference_summary(post, rng),
              world.random_summary(post, rng)]
  for slot_words in (world.WHO, world.DEED, world.THING, tuple(world.ASK)):
    texts += [" " + w for w in slot_words] + list(world.ASK.values())
  for t in list(P.PAIRWISE.values()):
    texts += [t.preamble, t.sample, t.ending, t.cot_ending, *t.options]
  for t in P.DIRECT.values():
    texts += [t.preamble, t.sample, t.ending, *t.scores]
  texts += ["Summary 1 - ", "Rationale:", "SCORE:", "SCORE: ", world.PAIR_PREAMBLE,
            world.DIRECT_PREAMBLE, world.HARM_PREAMBLE, " ".join(world.HARM_ACTS)]
  return texts


def build(texts) -> "transformers.PreTrainedTokenizerFast":
  import transformers
  from tokenizers import Tokenizer, decoders, models
  vocab = {s: i for i, s in enumerate(SPECIALS)}
  for text in texts:
    for p in pieces(text):
      vocab.setdefault(p, len(vocab))
  tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
  tok.pre_tokenizer = _pre_tokenizer()
  tok.decoder = decoders.Fuse()
  return transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
      unk_token="<unk>", clean_up_tokenization_spaces=False)


def write(directory: str, seed: int = 0) -> str:
  """Builds and saves the tokenizer in `directory` (local or URL; idempotent); returns it."""
  if paths.exists(paths.join(directory, "tokenizer.json")):
    return directory
  with tempfile.TemporaryDirectory() as tmp:
    # save_pretrained writes only local files; each goes to `directory` atomically,
    # tokenizer.json (the file tested above) last so a half-written copy is redone.
    build(corpus(seed=seed)).save_pretrained(tmp)
    names = sorted(os.listdir(tmp), key=lambda n: n == "tokenizer.json")
    for name in names:
      paths.copy(os.path.join(tmp, name), paths.join(directory, name))
  return directory
