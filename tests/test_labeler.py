"""Labeler scores against independent full forward passes of the whole prompt text."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import make_mesh
from rlaif_jax.labeler import CotConfig, Labeler
from rlaif_jax.labeler import prompts as P
from rlaif_jax.models import ModelConfig, Transformer, init_sharded
from rlaif_jax.models.tokenizer import load_tokenizer

from labeler_models import bigram_model, full_logprobs, sharpened_model

CFG = ModelConfig(vocab_size=320, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                  head_dim=8, d_ff=64, max_seq_len=2048)
CONTEXTS = ["the cat sat on the mat all day long", "a dog barked at the moon", "rain"]
A = ["cat sat", "dog barks at moon", "it rains"]
B = ["a mat", "moon", "sunny weather today"]


@pytest.fixture(scope="module")
def mesh8():
  return make_mesh()


@pytest.fixture(scope="module")
def byte_tok():
  return load_tokenizer("byte")


@pytest.fixture(scope="module")
def model(mesh8):
  return init_sharded(lambda r: Transformer(CFG, r), mesh8, seed=7)


def forced_model(model, token_id: int, strength: float = 30.0):
  """A copy of `model` whose next token is `token_id` with probability ~1 after
  any input: attention and MLP add nothing, every embedding is the all-ones
  vector (so the final norm gives all ones), and only `token_id`'s output
  column is non-zero. Shardings are kept, so compiled programs are reused."""
  m = nnx.clone(model)

  def put(var, value):
    var[...] = jax.device_put(value, var[...].sharding)
  for layer in m.layers:
    put(layer.attn.o, jnp.zeros_like(layer.attn.o[...]))
    put(layer.mlp.down, jnp.zeros_like(layer.mlp.down[...]))
  put(m.embed, jnp.ones_like(m.embed[...]))
  put(m.lm_head, jnp.zeros_like(m.lm_head[...]).at[:, token_id].set(strength / m.cfg.d_model))
  return m


def pair_text(t, prefix, context, first, second, middle=""):
  return prefix + t.sample.format(context=context, response_1=first, response_2=second) + \
      middle + t.ending


def hand_labels(model, mesh, tok, template, prefix, opt_ids, middles=None):
  """Both orders' option distributions and the averaged soft label, by hand."""
  texts = []
  for i, (c, a, b) in enumerate(zip(CONTEXTS, A, B)):
    mids = middles[i] if middles else ("", "")
    texts += [pair_text(template, prefix, c, a, b, mids[0]),
              pair_text(template, prefix, c, b, a, mids[1])]
  out = []
  for k in range(0, len(texts), 2):
    q = []
    for lp, _ in full_logprobs(model, mesh, tok, texts[k:k + 2]):
      two = lp[-1, opt_ids]
      q.append(np.exp(two) / np.exp(two).sum())
    out.append({"p_ab": q[0], "p_ba": q[1][::-1], "soft": (q[0][0] + q[1][1]) / 2})
  return out


@pytest.mark.parametrize("tokenizer", ["byte", "llama"])
def test_two_order_soft_label_equals_hand_computation(tokenizer, mesh8, model, shared_data):
  tok = load_tokenizer("byte" if tokenizer == "byte"
                       else str(shared_data / "tokenizers" / "llama2-sentencepiece"))
  mdl = model
  if tokenizer == "llama":
    mdl = init_sharded(lambda r: Transformer(CFG.replace(vocab_size=32000), r), mesh8, seed=7)
  lab = Labeler(mdl, tok, mesh8, task="summarization", preamble="detailed", batch_size=2)
  t = lab.template
  got = lab.label_pairs(CONTEXTS, A, B)
  # independent: the whole prompt tokenized jointly, option ids from the vocabulary
  opt = [tok.convert_tokens_to_ids("1"), tok.convert_tokens_to_ids("2")]
  want = hand_labels(mdl, mesh8, tok, t, P.prefix_text(t.preamble), opt)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g["p_ab"], w["p_ab"], atol=2e-5)
    np.testing.assert_allclose(g["p_ba"], w["p_ba"], atol=2e-5)
    np.testing.assert_allclose(g["soft_label"], w["soft"], atol=2e-5)
    assert g["same_position_won"] == (np.argmax(w["p_ab"]) != np.argmax(w["p_ba"]))


@pytest.mark.parametrize("answer", ["1", "2"])
def test_fully_position_biased_labeler_gives_one_half(answer, mesh8, model, byte_tok):
  m = forced_model(model, byte_tok.convert_tokens_to_ids(answer))
  for task in ("summarization", "harmless"):
    lab = Labeler(m, byte_tok, mesh8, task=task, preamble="base", batch_size=2)
    for row in lab.label_pairs(CONTEXTS, A, B):
      assert row["same_position_won"]
      np.testing.assert_allclose(row["soft_label"], 0.5, atol=1e-6)
      # one slot takes all the mass in each order; harmless flips which
      slot = 0 if (answer == "1") != (task == "harmless") else 1
      np.testing.assert_allclose(row["p_ab"][slot], 1.0, atol=1e-6)
      np.testing.assert_allclose(row["p_ba"][1 - slot], 1.0, atol=1e-6)


def test_harmless_inversion_favours_the_other_response(mesh8, model, byte_tok):
  """A labeler that always names the harmful response (the harmless question
  asks for the MORE harmful one) must yield labels favouring the other one;
  the same judge under the helpful template (no inversion) favours it."""
  harmful = ["HARMFUL"] * 3
  safe = ["fine answer", "kind answer", "safe answer"]

  def judge(lab):
    ids = lab.options

    def score(name, contexts, tails, query):   # reads which slot holds "HARMFUL"
      out = np.full((len(tails), len(tails[0]), len(query)), -20.0)
      for r, row in enumerate(tails):
        for g, tail in enumerate(row):
          text = byte_tok.decode(tail)
          first_harmful = text.index("HARMFUL") < text.index(" 2 - ")
          out[r, g, query.index(ids[0 if first_harmful else 1])] = 0.0
      return {"tail_query": out}
    lab.engine.score = score
    return lab

  harmless = judge(Labeler(model, byte_tok, mesh8, task="harmless", batch_size=2))
  helpful = judge(Labeler(model, byte_tok, mesh8, task="helpful", batch_size=2))
  for a, b, want_a in ((harmful, safe, 0.0), (safe, harmful, 1.0)):
    got = [r["soft_label"] for r in harmless.label_pairs(CONTEXTS, a, b)]
    np.testing.assert_allclose(got, want_a, atol=1e-6)
    got = [r["soft_label"] for r in helpful.label_pairs(CONTEXTS, a, b)]
    np.testing.assert_allclose(got, 1.0 - want_a, atol=1e-6)


def test_direct_score_of_a_model_that_always_says_seven(mesh8, model, byte_tok):
  lab = Labeler(forced_model(model, byte_tok.convert_tokens_to_ids("7")), byte_tok, mesh8,
                batch_size=2)
  np.testing.assert_allclose(lab.score_direct(CONTEXTS, A), (7 - 5.5) / 4.5, atol=1e-5)


def test_prefix_cache_equals_uncached_path(mesh8, model, byte_tok, tmp_path):
  shots = tmp_path / "shots.jsonl"
  shots.write_text("\n".join(json.dumps(r) for r in [
      {"context": "a long story", "response_1": "story", "response_2": "long", "answer": "1",
       "rationale": "The first keeps the point."},
      {"context": "numbers 1 2 3", "response_1": "4", "response_2": "1 2 3", "answer": "2"}]))
  kw = dict(task="summarization", preamble="detailed", batch_size=2,
            exemplars=P.load_exemplars(str(shots)))
  cached = Labeler(model, byte_tok, mesh8, prefix_cache=True, **kw)
  plain = Labeler(model, byte_tok, mesh8, prefix_cache=False, **kw)
  for x, y in zip(cached.label_pairs(CONTEXTS, A, B), plain.label_pairs(CONTEXTS, A, B)):
    np.testing.assert_allclose(x["p_ab"], y["p_ab"], atol=1e-4)
    np.testing.assert_allclose(x["p_ba"], y["p_ba"], atol=1e-4)
  np.testing.assert_allclose(cached.score_direct(CONTEXTS, B), plain.score_direct(CONTEXTS, B),
                             atol=1e-4)


def test_chain_of_thought_uses_the_sampler(mesh8, model, byte_tok):
  lab = Labeler(model, byte_tok, mesh8, task="summarization", preamble="base",
                cot=CotConfig(max_tokens=5), batch_size=2)
  calls = []
  sampler = lab.sampler

  class Spy:                      # records every generation the labeler asks for
    def __call__(self, *a, **k):
      calls.append(sampler(*a, **k))
      return calls[-1]

    def decode(self, *a, **k):
      return sampler.decode(*a, **k)
  lab.sampler = Spy()
  rows = lab.label_pairs(CONTEXTS, A, B)
  assert calls and all(c.lengths.max() <= 5 for c in calls)
  decoded = {txt.strip() for c in calls for txt in sampler.decode(c)}
  t = lab.template
  middles = []
  for r in rows:
    assert r["rationale_ab"] in decoded and r["rationale_ba"] in decoded
    middles.append(tuple(f"{t.cot_ending} {r[k]}\n" for k in ("rationale_ab", "rationale_ba")))
  # step 2 scores the prompt with the rationale and the original ending appended
  opt = [byte_tok.convert_tokens_to_ids("1"), byte_tok.convert_tokens_to_ids("2")]
  want = hand_labels(model, mesh8, byte_tok, t, P.prefix_text(t.preamble), opt, middles)
  for g, w in zip(rows, want):
    np.testing.assert_allclose(g["soft_label"], w["soft"], atol=2e-5)


# ------------------------------------------------------------ averaging rules

def _logit_average(p_ab, p_ba):
  """The rule the labeler must NOT use: average the two orders' log-odds."""
  z = lambda p: np.log(p / (1 - p))
  return 1 / (1 + np.exp(-(z(p_ab) + z(p_ba)) / 2))


@pytest.fixture(scope="module")
def opinionated(model, byte_tok):
  return sharpened_model(model, [byte_tok.convert_tokens_to_ids(c) for c in "12"])


def test_orders_are_averaged_as_probabilities(mesh8, opinionated, byte_tok):
  """With asymmetric preferences (a position bias plus a content preference)
  the mean of the two orders' probabilities and the mean of their log-odds
  differ by far more than the tolerance; the label is the former."""
  lab = Labeler(opinionated, byte_tok, mesh8, task="summarization", preamble="base",
                batch_size=2)
  got = lab.label_pairs(CONTEXTS, A, B)
  opt = [byte_tok.convert_tokens_to_ids("1"), byte_tok.convert_tokens_to_ids("2")]
  want = hand_labels(opinionated, mesh8, byte_tok, lab.template,
                     P.prefix_text(lab.template.preamble), opt)
  for g, w in zip(got, want):
    # non-trivial: a strong position bias, and yet a preference between the responses
    assert 0.02 < w["p_ab"][0] < 0.98 and abs(w["p_ab"][0] - w["p_ba"][0]) > 0.5
    assert abs(w["soft"] - 0.5) > 1e-3
    np.testing.assert_allclose(g["soft_label"], w["soft"], atol=2e-5)
    assert abs(_logit_average(w["p_ab"][0], w["p_ba"][0]) - w["soft"]) > 5e-3


def test_self_consistency_averages_distinct_rationales(mesh8, opinionated, byte_tok):
  """k = 3 rationales per order sampled at T = 1: they differ, and the label is
  the mean over orders of the mean over samples of each rationale's option
  probabilities, each from a whole-text forward pass."""
  k = 3
  lab = Labeler(opinionated, byte_tok, mesh8, task="summarization", preamble="base",
                cot=CotConfig(max_tokens=6, samples=k, temperature=1.0), batch_size=2)
  rows = lab.label_pairs(CONTEXTS, A, B)
  t = lab.template
  opt = [byte_tok.convert_tokens_to_ids("1"), byte_tok.convert_tokens_to_ids("2")]
  prefix = P.prefix_text(t.preamble)
  spread = 0.0
  for r, c, a, b in zip(rows, CONTEXTS, A, B):
    assert len(r["rationale_ab"]) == len(r["rationale_ba"]) == k
    assert len(set(r["rationale_ab"])) == k and len(set(r["rationale_ba"])) == k
    q = []
    for first, second, rats in ((a, b, r["rationale_ab"]), (b, a, r["rationale_ba"])):
      texts = [pair_text(t, prefix, c, first, second, f"{t.cot_ending} {x}\n") for x in rats]
      two = np.array([lp[-1, opt] for lp, _ in full_logprobs(opinionated, mesh8, byte_tok, texts)])
      q.append(np.exp(two) / np.exp(two).sum(-1, keepdims=True))    # [k, 2]
    np.testing.assert_allclose(r["q_ab"], q[0].mean(0), atol=2e-5)
    np.testing.assert_allclose(r["q_ba"], q[1].mean(0), atol=2e-5)
    np.testing.assert_allclose(r["soft_label"], (q[0][:, 0].mean() + q[1][:, 1].mean()) / 2,
                               atol=2e-5)
    # the rationales matter: one sample alone would give another label
    spread = max(spread, np.ptp(q[0][:, 0]), np.ptp(q[1][:, 0]))
  assert spread > 1e-3


def test_self_consistency_needs_a_temperature():
  with pytest.raises(ValueError, match="temperature > 0"):
    CotConfig(samples=4)
  with pytest.raises(ValueError, match="samples >= 1"):
    CotConfig(samples=0, temperature=0.5)
  assert CotConfig(samples=4, temperature=0.5).samples == 4


# ------------------------------------------------------------ prompts

def test_exemplar_rationales_only_in_chain_of_thought_prompts(mesh8, model, byte_tok):
  shots = [P.Exemplar("a long story", "story", "long", "1", "The first keeps the point.")]
  plain = Labeler(model, byte_tok, mesh8, exemplars=shots, batch_size=2)
  cot = Labeler(model, byte_tok, mesh8, exemplars=shots, batch_size=2, cot=CotConfig(max_tokens=2))
  text = lambda lab: byte_tok.decode(lab.prefix_ids, skip_special_tokens=True)
  assert "The first keeps the point." not in text(plain)
  assert "Rationale: The first keeps the point.\nPreferred Summary=1\n\n" in text(cot)
  assert text(plain).endswith("Summary 2 - long\nPreferred Summary=1\n\n")
  no_rationale = [P.Exemplar("a long story", "story", "long", "1")]
  with pytest.raises(ValueError, match="no rationale"):
    Labeler(model, byte_tok, mesh8, exemplars=no_rationale, cot=CotConfig(max_tokens=2))


@pytest.mark.parametrize("task", ["summarization", "helpful", "harmless"])
def test_bundled_exemplars_and_detailed_preambles(task, mesh8, model, byte_tok):
  shots = P.load_exemplars(f"bundled:{task}")
  assert len(shots) >= 2 and {s.answer for s in shots} == {"1", "2"}
  assert all(s.rationale for s in shots)
  for preamble in ("base", "detailed"):
    t = P.pairwise_template(task, preamble)
    assert t.invert == (task == "harmless")
    assert ("MORE harmful" in t.preamble) == (task == "harmless")
  lab = Labeler(model, byte_tok, mesh8, task=task, preamble="detailed", exemplars=shots,
                batch_size=2)
  text = byte_tok.decode(lab.prefix_ids, skip_special_tokens=True)
  assert text.startswith(P.pairwise_template(task, "detailed").preamble)
  assert all(s.response_1 in text and s.rationale not in text for s in shots)
  assert len(P.load_exemplars(f"bundled:{task}", 1)) == 1


# ------------------------------------------------------------ chat template

CHAT = P.ChatTemplate(user="<u>\n", model="</u>\n<m>\n", end_of_turn="</m>")


def test_chat_template_wraps_the_question_in_turns(mesh8, model, byte_tok):
  """The labels of a chat-formatted prompt equal a whole-text forward pass over
  BOS + user marker + preamble + sample + model marker + ending."""
  lab = Labeler(model, byte_tok, mesh8, task="summarization", preamble="base", chat=CHAT,
                batch_size=2)
  t = lab.template
  opt = [byte_tok.convert_tokens_to_ids("1"), byte_tok.convert_tokens_to_ids("2")]
  prefix = CHAT.user + t.preamble + "\n\n"
  want = hand_labels(model, mesh8, byte_tok, t, prefix, opt,
                     middles=[(CHAT.model, CHAT.model)] * len(CONTEXTS))
  for g, w in zip(lab.label_pairs(CONTEXTS, A, B), want):
    np.testing.assert_allclose(g["p_ab"], w["p_ab"], atol=2e-5)
    np.testing.assert_allclose(g["soft_label"], w["soft"], atol=2e-5)


def test_chat_template_in_direct_scoring(mesh8, model, byte_tok):
  lab = Labeler(model, byte_tok, mesh8, chat=CHAT, batch_size=2)
  seen = {}
  score = lab.engine.score
  lab.engine.score = lambda name, c, t, q, **kw: seen.update(ctx=c) or score(name, c, t, q, **kw)
  lab.score_direct(CONTEXTS[:1], A[:1])
  prefix_ids = lab.engine._prefixes["direct"][0]
  assert byte_tok.decode(prefix_ids, skip_special_tokens=True) == (
      f"<u>\n{lab.direct.preamble}\n\n")
  assert byte_tok.decode(seen["ctx"][0]) == (
      f"Text - {CONTEXTS[0]}\nSummary - {A[0]}\n</u>\n<m>\nSCORE: ")


def test_end_of_turn_stops_the_rationale(mesh8, model, byte_tok):
  """A model that, after "Rationale:", writes "ok</m>zzz...": with the chat
  template its end of turn "</m>" ends the rationale, and step 2 continues the
  model's turn with the rationale and the ending; without it the text runs on."""
  ids = byte_tok.convert_tokens_to_ids
  chain = {":": "o", "o": "k", "k": "<", "<": "/", "/": "m", "m": ">", ">": "z", "z": "z"}
  m = bigram_model(model, {ids(a): {ids(b): 1.0} for a, b in chain.items()})
  cot = CotConfig(max_tokens=10)
  chat = Labeler(m, byte_tok, mesh8, preamble="base", chat=CHAT, cot=cot, batch_size=2)
  plain = Labeler(m, byte_tok, mesh8, preamble="base", cot=cot, batch_size=2)
  tails = []
  score = chat.engine.score
  chat.engine.score = lambda name, c, t, q, **kw: tails.extend(t) or score(name, c, t, q, **kw)
  rows = chat.label_pairs(CONTEXTS[:1], A[:1], B[:1])
  assert rows[0]["rationale_ab"] == rows[0]["rationale_ba"] == "ok"
  assert plain.label_pairs(CONTEXTS[:1], A[:1], B[:1])[0]["rationale_ab"] == "ok</m>zzzz"
  instruction = chat.template.cot_ending.rpartition("\n")[0]
  assert byte_tok.decode(tails[0][0]) == (
      f"Summary 1 - {A[0]}\nSummary 2 - {B[0]}\n{instruction}</u>\n<m>\nRationale: ok\n"
      "Preferred Summary=")


def test_chat_template_config():
  assert P.chat_template("") is None
  g = P.chat_template("gemma")
  assert (g.user, g.end_of_turn) == ("<start_of_turn>user\n", "<end_of_turn>")
  assert P.chat_template("gemma", {"end_of_turn": "<eot>"}).end_of_turn == "<eot>"
  assert P.chat_template("", {"user": "U", "model": "M", "end_of_turn": "E"}).model == "M"
  with pytest.raises(ValueError, match="missing"):
    P.chat_template("", {"user": "U"})
  with pytest.raises(ValueError, match="no chat template"):
    P.chat_template("llama9")
