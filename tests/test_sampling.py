"""The KV-cache sampler against repeated full forward passes (no cache)."""
import jax
import numpy as np
import pytest
from flax import nnx

from rlaif_jax.models import ModelConfig, Transformer, init_sharded
from rlaif_jax.models.tokenizer import load_tokenizer
from rlaif_jax.sampling import Sampler, SamplingConfig

CFG = ModelConfig(vocab_size=320, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                  head_dim=8, d_ff=64, max_seq_len=64)
LENGTHS = np.array([7, 3, 1, 5, 6, 2, 7, 4])   # left-padded prompts of a batch of 8
P, N = 7, 6
NO_EOS = -1                                    # an id the model can never emit


@pytest.fixture(scope="module")
def setup():
  from conftest import make_mesh
  mesh = make_mesh()
  model = init_sharded(lambda r: Transformer(CFG, r), mesh, seed=3)
  rng = np.random.default_rng(0)
  mask = np.arange(P)[None] >= P - LENGTHS[:, None]
  tokens = np.where(mask, rng.integers(3, CFG.vocab_size, (8, P)), 0).astype(np.int32)
  return mesh, model, tokens, mask


@nnx.jit
def _forward(model, ids, mask):
  return model(ids, mask)[0]


def full_logits(model, mesh, seqs: list[list[int]]) -> list[np.ndarray]:
  """Logits of each unpadded sequence (right-padded to one shape), no cache."""
  width = -(-max(len(s) for s in seqs) // 32) * 32     # one shape: one compile
  toks = np.zeros((len(seqs), width), np.int32)
  mask = np.zeros((len(seqs), width), bool)
  for i, s in enumerate(seqs):
    toks[i, :len(s)], mask[i, :len(s)] = s, True
  with jax.set_mesh(mesh):
    logits = np.asarray(_forward(model, toks, mask))
  return [logits[i, :len(s)] for i, s in enumerate(seqs)]


def prompts_of(tokens, mask):
  return [list(t[m]) for t, m in zip(tokens, mask)]


def naive_greedy(model, mesh, prompts, n):
  seqs = [list(p) for p in prompts]
  for _ in range(n):
    for s, lg in zip(seqs, full_logits(model, mesh, seqs)):
      s.append(int(np.argmax(lg[-1])))
  return np.array([s[len(p):] for s, p in zip(seqs, prompts)])


def log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def model_logprobs(model, mesh, prompts, gen, lengths, temperature=1.0):
  """log softmax(full-forward logits / T) at each generated token."""
  seqs = [list(p) + list(g[:n]) for p, g, n in zip(prompts, gen, lengths)]
  out = np.zeros(gen.shape, np.float32)
  for i, (p, lg) in enumerate(zip(prompts, full_logits(model, mesh, seqs))):
    lp = log_softmax(lg.astype(np.float64) / temperature)
    for j in range(lengths[i]):
      out[i, j] = lp[len(p) + j - 1, gen[i, j]]
  return out


def test_greedy_equals_naive_argmax_loop_and_logprobs(setup):
  mesh, model, tokens, mask = setup
  out = Sampler(model, mesh, eos_id=NO_EOS)(tokens, mask, SamplingConfig(max_new_tokens=N))
  want = naive_greedy(model, mesh, prompts_of(tokens, mask), N)
  np.testing.assert_array_equal(out.tokens, want)
  np.testing.assert_array_equal(out.lengths, N)
  assert not out.ended.any()                       # ran out of budget, no EOS
  want_lp = model_logprobs(model, mesh, prompts_of(tokens, mask), out.tokens, out.lengths)
  np.testing.assert_allclose(out.logprobs, want_lp, atol=1e-4)


def test_sampled_logprobs_are_tempered_model_logprobs_and_seeded(setup):
  mesh, model, tokens, mask = setup
  sampler = Sampler(model, mesh, eos_id=NO_EOS)
  cfg = SamplingConfig(max_new_tokens=N, temperature=0.7, top_p=0.95)
  a, b = sampler(tokens, mask, cfg, seed=1), sampler(tokens, mask, cfg, seed=1)
  c = sampler(tokens, mask, cfg, seed=2)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  assert (a.tokens != c.tokens).any()
  # the reported log-probs are the tempered model's, log softmax(z / T), before
  # the top-p filter: the policy RL trains (not the model at T = 1)
  want = model_logprobs(model, mesh, prompts_of(tokens, mask), a.tokens, a.lengths, 0.7)
  np.testing.assert_allclose(a.logprobs, want, atol=1e-4)
  at_one = model_logprobs(model, mesh, prompts_of(tokens, mask), a.tokens, a.lengths)
  assert np.abs(at_one - want).max() > 1e-3
  greedy = sampler(tokens, mask, SamplingConfig(max_new_tokens=N))
  assert (a.tokens != greedy.tokens).any()


def test_top_k_one_is_greedy(setup):
  mesh, model, tokens, mask = setup
  sampler = Sampler(model, mesh, eos_id=NO_EOS)
  greedy = sampler(tokens, mask, SamplingConfig(max_new_tokens=N))
  top1 = sampler(tokens, mask, SamplingConfig(max_new_tokens=N, temperature=1.5, top_k=1), seed=5)
  np.testing.assert_array_equal(top1.tokens, greedy.tokens)


def test_eos_stops_a_row_and_pads_after_it(setup):
  mesh, model, tokens, mask = setup
  free = Sampler(model, mesh, eos_id=NO_EOS)(tokens, mask, SamplingConfig(max_new_tokens=N))
  eos = int(free.tokens[0, 2])                     # row 0 meets this token at step 2
  out = Sampler(model, mesh, eos_id=eos, pad_id=0)(tokens, mask, SamplingConfig(max_new_tokens=N))
  for r in range(len(tokens)):
    hits = np.flatnonzero(free.tokens[r] == eos)
    n = hits[0] + 1 if len(hits) else N
    assert out.lengths[r] == n and out.ended[r] == bool(len(hits))
    np.testing.assert_array_equal(out.tokens[r, :n], free.tokens[r, :n])
    np.testing.assert_array_equal(out.tokens[r, n:], 0)
    np.testing.assert_array_equal(out.logprobs[r, n:], 0.0)
    np.testing.assert_allclose(out.logprobs[r, :n], free.logprobs[r, :n], atol=1e-5)
  assert out.lengths[0] <= 3 and out.ended[0]


@pytest.mark.parametrize("tokenizer", ["byte", "llama"])
def test_stop_string(tokenizer, shared_data):
  from conftest import make_mesh
  mesh = make_mesh(2, 1, 4)
  tok = load_tokenizer("byte" if tokenizer == "byte"
                       else str(shared_data / "tokenizers" / "llama2-sentencepiece"))
  cfg = CFG.replace(vocab_size=-(-len(tok) // 64) * 64)
  model = init_sharded(lambda r: Transformer(cfg, r), mesh, seed=4)
  prompts = [tok("Hello there, how are you", add_special_tokens=False)["input_ids"],
             tok("abc", add_special_tokens=False)["input_ids"]]
  width = max(map(len, prompts))
  tokens = np.zeros((2, width), np.int32)
  mask = np.zeros((2, width), bool)
  for i, p in enumerate(prompts):
    tokens[i, width - len(p):], mask[i, width - len(p):] = p, True
  n = 12
  sampler = Sampler(model, mesh, eos_id=NO_EOS, pad_id=0, tokenizer=tok)
  free = sampler(tokens, mask, SamplingConfig(max_new_tokens=n))
  text = sampler.decode(free, skip_special_tokens=False)[0]
  # Two printable characters from the middle of row 0's text: for multi-character
  # pieces the string may start inside a token, which only the host-side check
  # can see; for bytes the device match does.
  import re
  spans = [m.start() for m in re.finditer(r"(?=[!-~]{2})", text)]
  assert spans, text
  start = spans[len(spans) // 2]
  stop = text[start:start + 2]
  out = sampler(tokens, mask, SamplingConfig(max_new_tokens=n), stop_strings=(stop,))
  dec = lambda ids: tok.decode(ids, skip_special_tokens=False)
  for r in range(2):
    full = free.tokens[r]
    want = next((k for k in range(1, n + 1) if stop in dec(full[:k])), n)
    assert out.lengths[r] == want, (r, stop, dec(full))
    assert out.ended[r] == (stop in dec(full))
    np.testing.assert_array_equal(out.tokens[r, :want], full[:want])
    np.testing.assert_array_equal(out.tokens[r, want:], 0)
  assert out.ended[0] and stop in sampler.decode(out, skip_special_tokens=False)[0]


# ------------------------------------------------------------ the distribution

@pytest.fixture(scope="module")
def sharp():
  """The test model with its LM head scaled up: logits of std ~1 rather than
  ~0.1 (top token 14% at T = 0.7, ~70 tokens in its top-0.8 mass), so
  temperature and the filters change the distribution a lot."""
  from conftest import make_mesh
  mesh = make_mesh()
  model = init_sharded(lambda r: Transformer(CFG, r), mesh, seed=3)
  head = model.lm_head if model.lm_head is not None else model.embed
  head[...] = head[...] * 10.0
  return mesh, model


def reference_probs(z, temperature, top_k, top_p):
  """The sampling distribution from its definition: softmax(z / T), restricted
  to the k largest, renormalised, then to the smallest most-likely set whose
  mass reaches top_p, renormalised."""
  p = np.exp(log_softmax(z.astype(np.float64) / temperature))
  order = np.argsort(-p, kind="stable")
  keep = np.zeros(len(p), bool)
  keep[order[:top_k or len(p)]] = True
  p = np.where(keep, p, 0.0) / p[keep].sum()
  if top_p < 1:
    mass_before = np.cumsum(p[order]) - p[order]
    keep = np.zeros(len(p), bool)
    keep[order[mass_before < top_p]] = True
    p = np.where(keep, p, 0.0) / p[keep].sum()
  return p


def chi_square_p(counts, probs):
  """Pearson's χ² p-value, bins with expected count < 5 pooled."""
  from scipy import stats
  n = counts.sum()
  expected = probs * n
  big = expected >= 5
  obs = np.append(counts[big], counts[~big].sum())
  exp = np.append(expected[big], expected[~big].sum())
  if exp[-1] == 0:
    obs, exp = obs[:-1], exp[:-1]
  return stats.chisquare(obs, exp).pvalue


@pytest.mark.parametrize("top_k,top_p", [(0, 1.0), (12, 1.0), (0, 0.8), (20, 0.9)])
def test_20k_samples_follow_the_tempered_filtered_softmax(sharp, top_k, top_p):
  """20 000 first tokens after one prompt at T = 0.7: their counts fit the
  reference distribution (χ², p > 1e-3 with a fixed seed), tokens outside the
  filters never appear, the same counts reject the distribution at T = 1
  (the test can tell temperatures apart), and each token's reported log-prob
  is log softmax(z / T)."""
  mesh, model = sharp
  T, n = 0.7, 20_000
  prompt = [5, 17, 200, 33]
  z = full_logits(model, mesh, [prompt])[0][-1].astype(np.float64)
  out = Sampler(model, mesh, eos_id=NO_EOS)(
      np.tile(np.array(prompt, np.int32), (n, 1)), np.ones((n, len(prompt)), bool),
      SamplingConfig(max_new_tokens=1, temperature=T, top_k=top_k, top_p=top_p), seed=11)
  tok = out.tokens[:, 0]
  counts = np.bincount(tok, minlength=CFG.vocab_size)
  want = reference_probs(z, T, top_k, top_p)
  assert counts[want == 0].sum() == 0
  assert (want > 0).sum() < CFG.vocab_size or (top_k == 0 and top_p == 1.0)
  assert chi_square_p(counts, want) > 1e-3
  assert chi_square_p(counts, reference_probs(z, 1.0, top_k, top_p)) < 1e-8
  np.testing.assert_allclose(out.logprobs[:, 0], log_softmax(z / T)[tok], atol=1e-4)
