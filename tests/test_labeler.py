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


@nnx.jit
def _forward(model, ids, mask):
  return model(ids, mask)[0]


def full_logprobs(model, mesh, tok, texts):
  """log softmax of one no-cache forward pass over BOS + the jointly tokenized text."""
  seqs = [[tok.bos_token_id] + tok(t, add_special_tokens=False)["input_ids"] for t in texts]
  width = -(-max(map(len, seqs)) // 128) * 128     # few shapes, few compiles
  ids = np.zeros((len(seqs), width), np.int32)
  mask = np.zeros(ids.shape, bool)
  for i, s in enumerate(seqs):
    ids[i, :len(s)], mask[i, :len(s)] = s, True
  with jax.set_mesh(mesh):
    logits = np.asarray(_forward(model, ids, mask), np.float64)
  lp = logits - logits.max(-1, keepdims=True)
  lp -= np.log(np.exp(lp).sum(-1, keepdims=True))
  return [(lp[i, :len(s)], s) for i, s in enumerate(seqs)]


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


def test_direct_score_equals_closed_form(mesh8, model, byte_tok):
  lab = Labeler(model, byte_tok, mesh8, batch_size=2)
  d = lab.direct
  got = lab.score_direct(CONTEXTS, A)
  # independent: teacher-force every whole score string in a full forward pass
  scores = [str(i) for i in range(1, 11)]
  texts = [P.prefix_text(d.preamble) + d.sample.format(context=c, response=a) + d.ending + s
           for c, a in zip(CONTEXTS, A) for s in scores]
  forward = full_logprobs(model, mesh8, byte_tok, texts)
  for r in range(len(CONTEXTS)):
    logp = []
    for (lp, ids), s in zip(forward[10 * r:10 * r + 10], scores):
      k = len(byte_tok(s, add_special_tokens=False)["input_ids"])      # "10" is two bytes
      logp.append(sum(lp[len(ids) - k - 1 + j, ids[len(ids) - k + j]] for j in range(k)))
    p = np.exp(np.array(logp) - max(logp))
    p /= p.sum()
    np.testing.assert_allclose(got[r], (p @ np.arange(1, 11) - 5.5) / 4.5, atol=1e-5)
  np.testing.assert_allclose(lab.reward_fn(CONTEXTS, A), got)


def test_direct_score_of_a_model_that_always_says_seven(mesh8, model, byte_tok):
  lab = Labeler(forced_model(model, byte_tok.convert_tokens_to_ids("7")), byte_tok, mesh8,
                batch_size=2)
  np.testing.assert_allclose(lab.score_direct(CONTEXTS, A), (7 - 5.5) / 4.5, atol=1e-5)
  # all mass on "1" then "1" again: "10" = p("1")·p("0"|"1") ≈ 0, so the score is 1
  lab = Labeler(forced_model(model, byte_tok.convert_tokens_to_ids("1")), byte_tok, mesh8,
                batch_size=2)
  np.testing.assert_allclose(lab.score_direct(CONTEXTS, A), -1.0, atol=1e-5)


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
