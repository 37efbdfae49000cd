"""Direct 1–10 scores against next-token distributions set by hand (a bigram
model), for tokenizers that split "10" into "1" "0" and one that does not, and
against independent full forward passes of a random model."""
import numpy as np
import pytest

from conftest import make_mesh
from labeler_models import bigram_model, byte10_tokenizer, full_logprobs
from rlaif_jax.labeler import Labeler
from rlaif_jax.labeler import prompts as P
from rlaif_jax.labeler.tokens import digit_ids
from rlaif_jax.models import ModelConfig, Transformer, init_sharded
from rlaif_jax.models.tokenizer import load_tokenizer

CFG = ModelConfig(vocab_size=320, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                  head_dim=8, d_ff=64, max_seq_len=2048)
CONTEXTS = ["the cat sat on the mat all day long", "a dog barked at the moon", "rain"]
RESPONSES = ["cat sat", "dog barks at moon", "it rains"]


@pytest.fixture(scope="module")
def mesh8():
  return make_mesh()


@pytest.fixture(scope="module")
def tokenizers(shared_data):
  return {"byte": load_tokenizer("byte"),
          "llama": load_tokenizer(str(shared_data / "tokenizers" / "llama2-sentencepiece")),
          "byte10": byte10_tokenizer()}


@pytest.fixture(scope="module")
def models(mesh8):
  return {320: init_sharded(lambda r: Transformer(CFG, r), mesh8, seed=7),
          32000: init_sharded(lambda r: Transformer(CFG.replace(vocab_size=32000), r), mesh8,
                              seed=7)}


def _labeler(tok, models, mesh, table, **kw):
  """A labeler on a bigram model; `table` is keyed by strings: "END" is the last
  token of the ending ("SCORE: "), anything else one token of the tokenizer."""
  probe = Labeler(models[320 if len(tok) <= 320 else 32000], tok, mesh, batch_size=2, **kw)
  end = probe.enc(probe.direct.ending)[-1]
  ids = lambda s: end if s == "END" else tok.convert_tokens_to_ids(s)
  rows = {ids(cur): {ids(nxt): p for nxt, p in dist.items()} for cur, dist in table.items()}
  m = bigram_model(models[320 if len(tok) <= 320 else 32000], rows)
  return Labeler(m, tok, mesh, batch_size=2, **kw)


def _newline(name):
  return {"byte": "Ċ", "llama": "<0x0A>", "byte10": "Ċ"}[name]


# (p(· | end of "SCORE: "), p(· | "1")) and the reward worked out by hand:
# π("1") = p("1")·(1 − Σ_digits p(d | "1")), π("10") = p("1")·p("0" | "1").
SPLIT_CASES = [
    # certain of "10": the bare p("1") rule gave P(1) = P(10) = 1/2, reward 0
    ({"1": 1.0}, {"0": 1.0}, 1.0),
    # "9" or "10" half and half: s = 9.5; the bare rule gave 0.26
    ({"9": 0.5, "1": 0.5}, {"0": 1.0}, (9.5 - 5.5) / 4.5),
    # π = 1: .5·(1 − .6 − .1) = .15, 10: .3, 9: .3, 7: .2 (the ".5·.1" of "15" is no score)
    ({"1": 0.5, "9": 0.3, "7": 0.2}, {"0": 0.6, "5": 0.1, "NL": 0.3},
     ((1 * .15 + 10 * .3 + 9 * .3 + 7 * .2) / .95 - 5.5) / 4.5),
]


@pytest.mark.parametrize("name,cached", [("byte", True), ("byte", False), ("llama", True)])
@pytest.mark.parametrize("case", range(len(SPLIT_CASES)))
def test_direct_score_when_10_is_two_tokens(name, cached, case, tokenizers, models, mesh8):
  tok = tokenizers[name]
  assert P.direct_template("summarization").ending == "SCORE: "
  after_end, after_one, want = SPLIT_CASES[case]
  nl = _newline(name)
  after_one = {nl if k == "NL" else k: v for k, v in after_one.items()}
  lab = _labeler(tok, models, mesh8, {"END": after_end, "1": after_one}, prefix_cache=cached)
  assert [tok.convert_ids_to_tokens(s) for s in lab.score_ids][-1] == ["1", "0"]
  np.testing.assert_allclose(lab.score_direct(CONTEXTS, RESPONSES), want, atol=2e-5)


def test_direct_score_when_10_is_one_token(tokenizers, models, mesh8):
  """No score string begins another: the paper's rule, p(s) renormalised; what
  follows "1" is not read (the tokenizer would have written "10" as one token)."""
  tok = tokenizers["byte10"]
  lab_ids = Labeler(models[320], tok, mesh8, batch_size=2).score_ids
  assert all(len(s) == 1 for s in lab_ids) and tok.convert_ids_to_tokens(lab_ids[-1]) == ["10"]
  want = ((1 * .5 + 10 * .3 + 9 * .2) - 5.5) / 4.5
  for after_one in ({"0": 0.6, "Ċ": 0.4}, {"Ċ": 1.0}):
    lab = _labeler(tok, models, mesh8, {"END": {"1": .5, "10": .3, "9": .2}, "1": after_one})
    np.testing.assert_allclose(lab.score_direct(CONTEXTS, RESPONSES), want, atol=2e-5)


def test_digit_tokens(tokenizers):
  for name in ("byte", "llama"):
    tok = tokenizers[name]
    assert sorted(tok.convert_ids_to_tokens(digit_ids(tok))) == list("0123456789")
  tok = tokenizers["byte10"]
  assert sorted(tok.convert_ids_to_tokens(digit_ids(tok))) == sorted(list("0123456789") + ["10"])


def test_direct_score_equals_full_forward_passes(mesh8, models, tokenizers):
  """A random model through the cached path against whole-text forward passes:
  π(s) by teacher-forcing each whole string, π("1") times the probability
  that no digit follows it."""
  tok, model = tokenizers["byte"], models[320]
  lab = Labeler(model, tok, mesh8, batch_size=2)
  d = lab.direct
  got = lab.score_direct(CONTEXTS, RESPONSES)
  scores = [str(i) for i in range(1, 11)]
  digits = [tok.convert_tokens_to_ids(c) for c in "0123456789"]
  texts = [P.prefix_text(d.preamble) + d.sample.format(context=c, response=a) + d.ending + s
           for c, a in zip(CONTEXTS, RESPONSES) for s in scores]
  forward = full_logprobs(model, mesh8, tok, texts)
  for r in range(len(CONTEXTS)):
    pi = []
    for (lp, ids), s in zip(forward[10 * r:10 * r + 10], scores):
      k = len(s)                                          # bytes: one token a character
      logp = sum(lp[len(ids) - k - 1 + j, ids[len(ids) - k + j]] for j in range(k))
      if s == "1":                                        # and then no digit
        logp += np.log(1 - np.exp(lp[len(ids) - 1, digits]).sum())
      pi.append(np.exp(logp))
    p = np.array(pi) / sum(pi)
    np.testing.assert_allclose(got[r], (p @ np.arange(1, 11) - 5.5) / 4.5, atol=1e-5)
  np.testing.assert_allclose(lab.reward_fn(CONTEXTS, RESPONSES), got)


def test_no_rows_give_empty_results(mesh8, models, tokenizers):
  lab = Labeler(models[320], tokenizers["byte"], mesh8, batch_size=2)
  assert lab.score_direct([], []).shape == (0,)
  assert lab.label_pairs([], [], []) == []
  out = lab.engine.score("pair", [], [], lab.options)
  assert out["ctx_query"].shape == (0, 2)
