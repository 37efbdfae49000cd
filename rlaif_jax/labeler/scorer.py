"""The labeler: an inference component with its own model, tokenizer and mesh.

Pairwise labels. For a pair (a, b) the prompt is built twice, with a first
(order ab) and with b first (order ba), and both go through the model in the
same batch. With ℓ_o(k) the log-probability of option token k after the
ending in order o, each order gives a 2-way distribution

    q_o = softmax(ℓ_o(1), ℓ_o(2))          over positions (first, second)

(flipped, q_o ← (q_o2, q_o1), when the question asks for the worse response).
Mapped back to the responses, p_ab = q_ab and p_ba = (q_ba2, q_ba1), both as
(P(a preferred), P(b preferred)), and the soft label is their mean

    P(a ≻ b) = (p_ab[0] + p_ba[0]) / 2.

`same_position_won` is True when the same position (not the same response)
won in both orders, i.e. the labeler followed the slot, not the content.
`q_ab`, `q_ba` keep each order's distribution over the options as answered
(before the flip): the position bias is measured on them.

Chain of thought: step 1 replaces the ending with `cot_ending` ("... explain
which is better. Rationale:") and decodes a rationale with the jitted sampler
(greedy, or k samples for self-consistency); step 2 scores the prompt with the
rationale and the original ending appended. With k rationales per order the
k distributions q_o are averaged before the orders are.

Direct score (direct RLAIF). For one response, with S = {"1", ..., "10"} and
each string s teacher-forced as a whole (so a two-token "10" is
p("1")·p("0" | "1")), the probability that the answer is exactly s is

    π(s) = p(s)                              if no other score string's tokens begin with s's
    π(s) = p(s)·(1 − Σ_{d∈D} p(d | s))        otherwise: the answer must end after s

with D the tokenizer's digit tokens (pieces made of digits only). Where "10"
is the tokens "1" "0" (Llama 2, Gemma, Qwen2, bytes), p("1") alone holds the
mass of every answer that begins with "1", "10" included; the second form
keeps only the answers that end there. Where no score string begins another
(a tokenizer with a "10" token) π is the paper's rule, the score tokens'
probabilities. Then

    P(s) = π(s) / Σ_{s'∈S} π(s'),   s̄ = Σ_s value(s)·P(s),   r = (s̄ − 5.5) / 4.5 ∈ [−1, 1].
"""
from __future__ import annotations

import dataclasses

import numpy as np

from rlaif_jax.data.formats import HH_CUE, TLDR_CUE, Prompt
from rlaif_jax.labeler import prompts as P
from rlaif_jax.labeler.engine import ScoringEngine
from rlaif_jax.labeler.tokens import digit_ids, option_tokens, score_string_ids
from rlaif_jax.sampling import Sampler, SamplingConfig, encode_continuation


def _softmax(x, axis=-1):
  x = np.asarray(x, np.float64)
  e = np.exp(x - x.max(axis, keepdims=True))
  return e / e.sum(axis, keepdims=True)


@dataclasses.dataclass
class CotConfig:
  max_tokens: int = 512
  samples: int = 1               # > 1: self-consistency, which needs temperature > 0
  temperature: float = 0.0       # 0 = greedy (the paper's best)
  top_k: int = 40

  def __post_init__(self):
    if self.samples < 1:
      raise ValueError(f"chain of thought needs samples >= 1, got {self.samples}")
    if self.samples > 1 and self.temperature <= 0:
      # greedy decoding would give `samples` identical rationales
      raise ValueError(f"self-consistency with {self.samples} samples needs a temperature > 0 "
                       "(at 0 every sample is the same greedy rationale)")


class Labeler:
  def __init__(self, model, tokenizer, mesh, *, task: str = "summarization",
               preamble: str = "base", template: dict | None = None,
               direct_template: dict | None = None, exemplars=(), cot: CotConfig | None = None,
               chat: P.ChatTemplate | None = None, batch_size: int = 8, bucket: int = 32,
               prefix_cache: bool = True, max_context_tokens: int = 0, seed: int = 0):
    self.tok, self.mesh, self.seed = tokenizer, mesh, seed
    self.template = P.pairwise_template(task, preamble, template)
    self.direct = P.direct_template(task, direct_template)
    self.cot, self.chat = cot, chat
    if cot is not None and not self.template.cot_ending:
      raise ValueError("chain of thought needs a template with a cot_ending")
    self.max_context_tokens = max_context_tokens
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    self.engine = ScoringEngine(model, mesh, pad_id=pad, batch_size=batch_size, bucket=bucket,
                                prefix_cache=prefix_cache)
    self.bucket = bucket
    self.bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    self.enc = lambda text: encode_continuation(tokenizer, text)
    t = self.template
    self.option_prefix, self.options = option_tokens(tokenizer, t.ending, t.options)
    self.score_ids = ids = score_string_ids(tokenizer, self.direct.ending, self.direct.scores)
    # direct scoring: strings whose tokens begin another's ("1" of "1" "0") must end
    # there; the tails to teacher-force, and the next tokens to read
    self._unfinished = [j for j, s in enumerate(ids)
                        if any(len(o) > len(s) and o[:len(s)] == s for o in ids)]
    self._digits = digit_ids(tokenizer) if self._unfinished else []
    self._heads = sorted({tuple(s[:-1]) for s in ids if len(s) > 1} |
                         {tuple(ids[j]) for j in self._unfinished})
    self._score_query = sorted({s[0] for s in ids} | {s[-1] for s in ids} | set(self._digits))
    # what follows a sample: the ending (or the CoT request), in the model's turn with a chat
    self.to_answer = P.answer_turn(t.ending, chat)
    self.to_cot = P.cot_turn(t.cot_ending, chat)
    self.prefix_ids = self.bos + list(tokenizer(
        P.prefix_text(t.preamble, exemplars, t, cot=cot is not None, chat=chat),
        add_special_tokens=False)["input_ids"])
    self.engine.set_prefix("pair", self.prefix_ids)
    self.engine.set_prefix("direct", self.bos + list(tokenizer(
        P.prefix_text(self.direct.preamble, chat=chat), add_special_tokens=False)["input_ids"]))
    self.sampler = None
    if cot is not None:
      eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else -1
      self.sampler = Sampler(model, mesh, eos_id=eos, pad_id=pad, tokenizer=tokenizer)
      # a rationale ends where the model starts answering, or ends its turn
      self.stops = (t.ending.strip(),) + ((chat.end_of_turn,) if chat else ())
      self._cuts = self.stops + ((tokenizer.eos_token,) if tokenizer.eos_token else ())

  # --------------------------------------------------------------- contexts
  def _context(self, prompt) -> str:
    """The prompt as the labeler shows it, its body shortened to max_context_tokens."""
    if not isinstance(prompt, Prompt):
      text = str(prompt)
      for cue in (TLDR_CUE, HH_CUE):   # a policy prompt's cue is no part of the context
        if text.rstrip().endswith(cue.strip()):
          text = text.rstrip()[:-len(cue.strip())]
      prompt = Prompt(body=text.strip(), cut="left")
    text = P.context_of(prompt)
    if not self.max_context_tokens or len(self.enc(text)) <= self.max_context_tokens:
      return text
    lo, hi = 0, len(prompt.body)
    while lo < hi:        # the longest body that fits
      mid = (lo + hi + 1) // 2
      if len(self.enc(P.context_of(prompt.with_body_chars(mid)))) <= self.max_context_tokens:
        lo = mid
      else:
        hi = mid - 1
    return P.context_of(prompt.with_body_chars(lo))

  # --------------------------------------------------------------- pairwise
  def label_pairs(self, prompts, responses_a, responses_b) -> list[dict]:
    """One dict per pair: p_ab, p_ba (each (P(a), P(b))), soft_label = P(a ≻ b),
    same_position_won, q_ab, q_ba (the options as answered), and with CoT the
    rationales of both orders (lists of k with self-consistency)."""
    t = self.template
    ctx_ids, rests = [], []
    for prompt, a, b in zip(prompts, responses_a, responses_b):
      context = self._context(prompt)
      head, rest_ab = P.split_sample(t.sample, context, a.strip(), b.strip())
      _, rest_ba = P.split_sample(t.sample, context, b.strip(), a.strip())
      ctx_ids.append(self.enc(head) if head else [])
      rests.append((rest_ab, rest_ba))
    if not rests:
      return []
    k = self.cot.samples if self.cot else 1
    rationales = None
    if self.cot:
      rationales = self._rationales(ctx_ids, rests)          # [pair][order][sample]
      tails = [[self.enc(f"{rest}{self.to_cot} {r}\n{t.ending}") + self.option_prefix
                for o, rest in enumerate(rs) for r in rationales[i][o]]
               for i, rs in enumerate(rests)]
    else:
      tails = [[self.enc(rest + self.to_answer) + self.option_prefix for rest in rs]
               for rs in rests]
    out = self.engine.score("pair", ctx_ids, tails, self.options)
    # probabilities (not logits) are averaged, over samples and then over orders
    q = _softmax(out["tail_query"]).reshape(len(ctx_ids), 2, k, 2).mean(2)  # [pair, order, pos]
    same = np.argmax(q[:, 0], -1) == np.argmax(q[:, 1], -1)
    pref = q[..., ::-1] if t.invert else q   # P(position is more harmful) -> P(position preferred)
    p_ab, p_ba = pref[:, 0], pref[:, 1, ::-1]
    soft = (p_ab[:, 0] + p_ba[:, 0]) / 2
    labels = []
    for i in range(len(ctx_ids)):
      row = {"p_ab": p_ab[i].tolist(), "p_ba": p_ba[i].tolist(), "soft_label": float(soft[i]),
             "same_position_won": bool(same[i]), "q_ab": q[i, 0].tolist(),
             "q_ba": q[i, 1].tolist()}
      if rationales is not None:
        row["rationale_ab"], row["rationale_ba"] = (
            r[0] if k == 1 else r for r in rationales[i])
      labels.append(row)
    return labels

  def _rationales(self, ctx_ids, rests) -> list:
    """Step 1 of CoT: k rationales per (pair, order), decoded by the jitted sampler."""
    c = self.cot
    rows = []
    for i, rs in enumerate(rests):
      for rest in rs:
        rows.append(self.prefix_ids + ctx_ids[i] + self.enc(rest + self.to_cot))
    rows = [r for r in rows for _ in range(c.samples)]
    cfg = SamplingConfig(max_new_tokens=c.max_tokens, temperature=c.temperature, top_k=c.top_k)
    texts = [""] * len(rows)
    order = np.argsort([len(r) for r in rows], kind="stable")
    size = self.engine.batch_size
    for s in range(0, len(rows), size):
      idx = order[s:s + size]
      width = -(-max(len(rows[j]) for j in idx) // self.bucket) * self.bucket
      tok = np.full((len(idx), width), self.engine.pad_id, np.int32)
      mask = np.zeros(tok.shape, bool)
      for n, j in enumerate(idx):
        tok[n, width - len(rows[j]):], mask[n, width - len(rows[j]):] = rows[j], True
      if len(idx) < size:      # keep the compiled batch shape
        tok = np.concatenate([tok, np.repeat(tok[-1:], size - len(idx), 0)])
        mask = np.concatenate([mask, np.repeat(mask[-1:], size - len(idx), 0)])
      out = self.sampler(tok, mask, cfg, seed=self.seed + s, stop_strings=self.stops)
      for n, ids in enumerate(out.tokens[:len(idx)]):
        text = self.tok.decode(ids[:out.lengths[n]], skip_special_tokens=False)
        for cut in self._cuts:     # special tokens kept until cut: a chat's end of turn is one
          text = text.split(cut)[0]
        texts[idx[n]] = text.strip()
    k = c.samples
    return [[texts[(2 * i + o) * k:(2 * i + o + 1) * k] for o in range(2)]
            for i in range(len(rests))]

  # --------------------------------------------------------------- direct
  def direct_distribution(self, prompts, responses) -> np.ndarray:
    """P(s) over the score strings, one row per response [R, len(scores)] (see
    the module docstring for π(s))."""
    d, ids = self.direct, self.score_ids
    ctx = [self.enc(d.sample.format(context=self._context(p), response=r.strip()) +
                    P.answer_turn(d.ending, self.chat))
           for p, r in zip(prompts, responses)]
    if not ctx:
      return np.zeros((0, len(ids)))
    heads, query, digits = self._heads, self._score_query, self._digits
    col = {tok: i for i, tok in enumerate(query)}
    out = self.engine.score("direct", ctx, [[list(h) for h in heads]] * len(ctx) if heads else [],
                            query, tail_logp=True)
    logp = np.zeros((len(ctx), len(ids)))
    for j, s in enumerate(ids):
      if len(s) == 1:
        logp[:, j] = out["ctx_query"][:, col[s[0]]]
      else:
        g = heads.index(tuple(s[:-1]))
        logp[:, j] = out["tail_logp"][:, g] + out["tail_query"][:, g, col[s[-1]]]
    for j in self._unfinished:
      g = heads.index(tuple(ids[j]))
      more = np.exp(out["tail_query"][:, g, [col[x] for x in digits]].astype(np.float64)).sum(-1)
      logp[:, j] += np.log(np.maximum(1.0 - more, 1e-300))
    return _softmax(logp)

  def score_direct(self, prompts, responses) -> np.ndarray:
    """Expected score mapped linearly onto [-1, 1] (float32 [R])."""
    values = np.array([float(s) for s in self.direct.scores])
    lo, hi = values.min(), values.max()
    mean = self.direct_distribution(prompts, responses) @ values
    return ((mean - (lo + hi) / 2) / ((hi - lo) / 2)).astype(np.float32)

  def reward_fn(self, prompts: list[str], responses: list[str]) -> np.ndarray:
    """Direct-RLAIF reward over text, for the RL learner: one float in [-1, 1] each."""
    return self.score_direct(list(prompts), list(responses))
