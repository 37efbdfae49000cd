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


def model_logprobs(model, mesh, prompts, gen, lengths):
  """log softmax(full-forward logits) at each generated token."""
  seqs = [list(p) + list(g[:n]) for p, g, n in zip(prompts, gen, lengths)]
  out = np.zeros(gen.shape, np.float32)
  for i, (p, lg) in enumerate(zip(prompts, full_logits(model, mesh, seqs))):
    lp = log_softmax(lg)
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


def test_sampled_logprobs_are_model_logprobs_and_seeded(setup):
  mesh, model, tokens, mask = setup
  sampler = Sampler(model, mesh, eos_id=NO_EOS)
  cfg = SamplingConfig(max_new_tokens=N, temperature=0.7, top_p=0.95)
  a, b = sampler(tokens, mask, cfg, seed=1), sampler(tokens, mask, cfg, seed=1)
  c = sampler(tokens, mask, cfg, seed=2)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  assert (a.tokens != c.tokens).any()
  # temperature does not enter the reported log-probs: they are the model's own
  want = model_logprobs(model, mesh, prompts_of(tokens, mask), a.tokens, a.lengths)
  np.testing.assert_allclose(a.logprobs, want, atol=1e-4)
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
