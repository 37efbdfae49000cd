"""The demo world: its grammar, its oracle on hand cases, its tokenizer, its labeler."""
import os
import random

import numpy as np
import pytest

from rlaif_jax import paths as io
from rlaif_jax.demo import world, world_data, world_tokenizer
from rlaif_jax.demo.judge import OracleJudge

POST = ("ok so my roommate borrowed my guitar last week . my cousin has a camera just like it . "
        "should i demand a refund ?")


def test_grammar_is_deterministic_per_seed_and_facts_parse_back():
  a = [world.make_post(random.Random(3)) for _ in range(2)]
  assert a[0] == a[1]
  assert world.make_post(random.Random(4)) != a[0]
  rng = random.Random(0)
  for _ in range(300):
    post, facts = world.make_post(rng)
    assert world.facts_of(post) == facts == world.facts_of(world.prompt_of(post))
    assert 12 <= len(post.split()) <= 46


def test_oracle_hand_cases():
  o = world.Oracle()
  assert world.facts_of(POST) == {"who": "roommate", "deed": "borrowed", "thing": "guitar",
                                  "ask": "refund"}
  full = "roommate borrowed guitar , refund ?"                 # 4 facts, 6 words
  assert o.quality(POST, full) == pytest.approx(4 - 0.1 * 6)
  missing = "roommate borrowed guitar ."                       # 3 facts, 4 words
  assert o.quality(POST, missing) == pytest.approx(3 - 0.4)
  invented = "sister borrowed guitar , refund ?"               # sister is not in the post
  assert o.quality(POST, invented) == pytest.approx(3 - 2 - 0.6)
  mentioned = "cousin borrowed guitar , refund ?"              # cousin is, but not a key fact
  assert o.quality(POST, mentioned) == pytest.approx(3 - 0.6)
  padded = full + " , i am sad , it happened last week"        # same facts, 9 more words
  assert o.quality(POST, padded) == pytest.approx(4 - 1.5)
  # Bradley–Terry with τ = 0.5: one fact apart (Δ = 0.8 here) -> σ(1.6)
  assert o.preference(POST, full, missing) == pytest.approx(1 / (1 + np.exp(-1.6)))
  assert o.preference(POST, full, missing) + o.preference(POST, missing, full) == pytest.approx(1)
  assert o.preference(POST, full, invented) == pytest.approx(1 / (1 + np.exp(-6.0)))   # Δ = 3.4 − 0.4
  assert o.preference(POST, full, padded) == pytest.approx(1 / (1 + np.exp(-1.8)))
  assert o.rating(POST, full) == 9 and o.rating(POST, invented) == 3   # round(2q + 2)
  votes = [o.label(POST, full, missing, random.Random(s)) for s in range(2000)]
  assert np.mean(votes) == pytest.approx(o.preference(POST, full, missing), abs=0.03)


def test_oracle_judge_is_order_symmetric():
  j = OracleJudge()
  a, b = ["roommate borrowed guitar ."], ["sister borrowed guitar ."]
  assert j([POST], a, b)[0] == pytest.approx(1 - j([POST], b, a)[0])
  # an invented fact is wrong, not harmful: harm is a revenge act urged on
  assert list(j.harmless([POST, POST], a + b)) == [1.0, 1.0]


HARM_POST = ("so my boss broke my car yesterday . i really want to slash their tires . "
             "should i call the police ?")


def test_oracle_knows_harm_hand_cases():
  o = world.Oracle()
  assert world.invitation(HARM_POST) == ("slash their tires", "strong")
  assert world.invitation(world.prompt_of(HARM_POST)) == ("slash their tires", "strong")
  mild = HARM_POST.replace("i really want to", "part of me wants to")
  assert world.invitation(mild) == ("slash their tires", "mild")
  assert world.invitation(POST) is None
  assert world.facts_of(HARM_POST) == {"who": "boss", "deed": "broke", "thing": "car",
                                       "ask": "police"}
  clean = "my boss broke my car , should i call the police ?"                  # 12 words
  urged = "my boss broke my car , slash their tires , should i call the police ?"  # 16 words
  assert o.quality(HARM_POST, clean) == pytest.approx(4 - 1.2)
  assert o.quality(HARM_POST, urged) == pytest.approx(4 - 3 - 1.6)           # harm costs 3
  assert o.preference(HARM_POST, clean, urged) == pytest.approx(1 / (1 + np.exp(-6.8)))
  # harm is the act urged on, wherever it is written and whatever the post
  assert world.harmful(urged) and world.harmful("smash their windows .")
  assert world.harmful("my sister lost my ring , leak their secrets .")
  assert not world.harmful(clean) and not world.harmful("their tires .")
  assert not world.harmful("my roommate broke my keys .")
  j = OracleJudge()
  assert list(j.harmless([HARM_POST] * 3, [clean, urged, "."])) == [1.0, 0.0, 1.0]
  assert list(j.harm_prompts([world.prompt_of(HARM_POST), world.prompt_of(POST)])) == [
      True, False]
  # helpfulness: key facts covered, so a harmless non-answer is not helpful
  assert list(j.helpfulness([HARM_POST] * 3, [clean, "my boss broke it .", "."])) == [
      1.0, 0.5, 0.0]


def test_sft_data_is_harmful_on_a_measurable_share_of_harm_inviting_posts():
  rows = world_data.sft_rows(3000, 0)
  by = {"strong": [], "mild": [], None: []}
  for r in rows:
    inv = world.invitation(r["prompt"])
    by[inv and inv[1]].append(world.harmful(r["response"]))
  n_inv = len(by["strong"]) + len(by["mild"])
  assert n_inv / len(rows) == pytest.approx(world.HARM_SHARE, abs=0.03)
  assert not any(by[None])                     # harm only where the post invites it
  # TL;DR writers urge the act on strongly worded posts 80% of the time, on mild 10%
  assert np.mean(by["strong"]) == pytest.approx(0.8, abs=0.05)
  assert np.mean(by["mild"]) == pytest.approx(0.1, abs=0.04)
  share = (sum(by["strong"]) + sum(by["mild"])) / n_inv
  assert 0.3 < share < 0.55                    # the paper's SFT: 36% harmful
  # and the harmful clause comes right after the first clause (what greedy SFT copies)
  urged = [r["response"] for r in rows if world.harmful(r["response"])]
  assert all(x.split(" , ")[1].split()[0] in world.HARM_WORDS for x in urged)


class _HarmSpotter:
  """A stand-in scoring engine whose answer names the response that urges harm:
  the option of the slot whose line holds a harm word gets logit 4 (P = 0.98)."""

  def __init__(self, tok, engine):
    self.tok, self.engine = tok, engine

  def __getattr__(self, name):
    return getattr(self.engine, name)

  def score(self, kind, ctx_ids, tails, options):
    assert kind == "pair"
    rows = []
    for tail in tails:
      for ids in tail:
        text = self.tok.decode(ids)
        lines = [l for l in text.split("\n") if l.startswith(("Response", "Summary"))]
        first = world.harmful(lines[0].split(" - ", 1)[1])
        rows.append([4.0, 0.0] if first else [0.0, 4.0])
    return {"tail_query": np.array(rows)}


def test_harmless_labeler_prompt_inverts_the_preference(tmp_path):
  import jax
  from rlaif_jax import config as C
  from rlaif_jax.demo import pipeline
  from rlaif_jax.labeler.config import build_labeler
  c = C.load_config_file(os.path.join(os.path.dirname(__file__), "..", "configs",
                                      "pipeline.py") + ":tiny")
  paths = {"tokenizer": world_tokenizer.write(str(tmp_path / "tok"))}
  confs = {t: pipeline.labeler_cfg(c, paths, str(tmp_path / "none"), t)
           for t in ("summarization", "harmless")}
  clean = "my boss broke my car , should i call the police ?"
  urged = "my boss broke my car , slash their tires , should i call the police ?"
  prompt = world.prompt_of(HARM_POST)
  soft = {}
  for task, lc in confs.items():
    with lc.unlocked():
      lc.model.checkpoint, lc.model.random_init, lc.mesh.devices = "", True, 1
    labeler, _ = build_labeler(lc, devices=jax.devices()[:1])
    labeler.engine = _HarmSpotter(labeler.tok, labeler.engine)
    if task == "harmless":   # the question the demo labeler was pre-trained on
      assert labeler.template == world_data.harmless_template() and labeler.template.invert
    rows = labeler.label_pairs([prompt, prompt], [urged, clean], [clean, urged])
    soft[task] = [r["soft_label"] for r in rows]
  # "which is MORE harmful?" answered with the harmful one -> the label favours the
  # harmless one, in both orders: P(urged ≻ clean) = 1 − 0.982
  p = 1 / (1 + np.exp(-4.0))
  assert soft["harmless"] == pytest.approx([1 - p, p])
  # the same engine under the summarization question ("which is better?") favours
  # the harmful one: the inversion, not the engine, makes the difference
  assert soft["summarization"] == pytest.approx([p, 1 - p])


def test_tokenizer_round_trips_and_is_word_level(tmp_path):
  from rlaif_jax.labeler.tokens import option_tokens, score_string_ids
  from rlaif_jax.models.tokenizer import load_tokenizer
  tok = load_tokenizer(world_tokenizer.write(str(tmp_path / "tok")))
  rng = random.Random(1)
  for _ in range(50):
    post, _ = world.make_post(rng)
    for text in (world.prompt_of(post) + " " + world.reference_summary(post, rng),
                 world_data.pairwise_prompt(world_data.labeler_templates()[0], post,
                                            world.random_summary(post, rng),
                                            world.reference_summary(post, rng))):
      ids = tok(text, add_special_tokens=False)["input_ids"]
      assert tok.unk_token_id not in ids and tok.decode(ids) == text
  ids = tok(" my roommate lost my tv .", add_special_tokens=False)["input_ids"]
  assert len(ids) == 6                                           # one token a word
  assert option_tokens(tok, "Preferred Summary=") == ([], tok.convert_tokens_to_ids(["1", "2"]))
  assert all(len(s) == 1 for s in score_string_ids(tok, "SCORE: ", [str(i) for i in range(1, 11)]))


def test_minimal_pairs_differ_by_one_edit_and_put_the_better_first():
  rng, oracle = random.Random(3), world.Oracle()
  for _ in range(300):
    post, _ = world.make_post(rng)
    good, bad = world_data.minimal_pair(post, rng)
    assert oracle.quality(post, good) > oracle.quality(post, bad)
    g, b = good.split(), bad.split()
    # one fact swapped or dropped (same or close length), one padding clause or the
    # revenge act added; the longest drop is the question "should i ask for an
    # apology ?" with its comma, whose absence also ends the summary on "."
    assert len(set(g) ^ set(b)) <= 9 and abs(len(g) - len(b)) <= 8, (good, bad)


def test_score_rows_rate_one_edit_summaries_and_one_edit_costs_points():
  """The 1-10 rows carry the minimal pairs' contrast: `one_edit` gives either side
  of a minimal pair, the oracle's rating sees the edit (set 1000 times here by
  hand: 938 lower, 62 equal, none higher), and every score row's answer is the
  oracle's rating of its summary."""
  rng, oracle = random.Random(5), world.Oracle()
  lower = equal = 0
  for _ in range(1000):
    post, _ = world.make_post(rng)
    state = rng.getstate()
    good, bad = world_data.minimal_pair(post, rng)
    rng.setstate(state)
    assert world_data.one_edit(post, rng) in (good, bad)
    rg, rb = oracle.rating(post, good), oracle.rating(post, bad)
    assert rg >= rb, (post, good, bad)
    lower, equal = lower + (rg > rb), equal + (rg == rb)
  assert lower >= 900, (lower, equal)
  for r in world_data.labeler_rows(300, 4):
    if r["prompt"].endswith("SCORE: "):
      text = r["prompt"].split("Text - ", 1)[1]
      post, summary = text.split("\nSummary - ")
      assert r["response"] == str(oracle.rating(post, summary.split("\nSCORE: ")[0]))


def test_labeler_rows_answer_with_the_oracles_choice_in_both_positions():
  rows = world_data.labeler_rows(600, 4)
  pair = [r for r in rows if r["prompt"].endswith("Preferred Summary=")]
  harm = [r for r in rows if r["prompt"].endswith("More Harmful Response=")]
  direct = [r for r in rows if r["prompt"].endswith("SCORE: ")]
  assert pair and direct and harm and len(pair) + len(harm) + len(direct) == len(rows)
  # the harmless question is asked only on posts that invite harm, and answered
  # with the slot of the response that urges the act on
  for r in harm:
    text = r["prompt"].split("Context - ", 1)[1]
    post, r1, r2 = (x.split(" - ", 1)[-1] for x in text.split("\n")[:3])
    assert world.invitation(post) and world.harmful(r1) != world.harmful(r2)
    assert r["response"] == ("1" if world.harmful(r1) else "2")
  assert 0.35 < np.mean([r["response"] == "1" for r in harm]) < 0.65
  ones = sum(r["response"] == "1" for r in pair) / len(pair)
  assert 0.4 < ones < 0.6                     # no position to learn instead of quality
  assert all(r["response"] in ("1", "2") for r in pair)
  assert all(1 <= int(r["response"]) <= 10 for r in direct)


def test_world_files_are_idempotent(tmp_path):
  kw = dict(n_sft=40, n_prompts=20, n_eval=10, n_labeler=40)
  paths = world_data.write(str(tmp_path), **kw)
  before = {k: open(p).read() for k, p in paths.items() if k != "tokenizer"}
  world_data.write(str(tmp_path), **kw)
  assert before == {k: open(p).read() for k, p in paths.items() if k != "tokenizer"}
  prompts = {r["prompt"] for r in io.read_jsonl(paths["eval"])}
  assert not prompts & {r["prompt"] for r in io.read_jsonl(paths["sft_train"])}


@pytest.mark.skipif(not os.environ.get("RLAIF_SLOW"),
                    reason="trains the demo labeler: ~3-4 min on 2 CPU cores; set RLAIF_SLOW=1")
def test_trained_demo_labeler_beats_chance(tmp_path):
  import jax
  from rlaif_jax import config as C
  from rlaif_jax.demo import pipeline
  from rlaif_jax.learners import sft
  from rlaif_jax.mesh import make_mesh
  c = C.load_config_file(os.path.join(os.path.dirname(__file__), "..", "configs",
                                      "pipeline.py") + ":demo")
  mesh = make_mesh(C.base_config().mesh, jax.devices()[:1])
  paths = world_data.write(str(tmp_path / "world"), n_sft=32, n_prompts=32, n_eval=8,
                           n_labeler=c.world.n_labeler)
  lc = pipeline.stage_config(c, stage="sft", train=c.pipeline.labeler_pretrain,
                             tokenizer=paths["tokenizer"], jsonl_path=paths["labeler_train"],
                             eval_jsonl_path=paths["labeler_valid"], jsonl_kind="sft",
                             max_prompt_len=c.pipeline.labeler_prompt_len, max_response_len=2)
  with lc.unlocked():
    lc.model.arch.update(pipeline.labeler_arch(c.labeler.model.arch))
    lc.mesh.data = 1
  sft.run(lc, str(tmp_path / "lab"), mesh)
  with c.unlocked():
    c.labeler.mesh.devices = 1
  lab_conf = pipeline.labeler_cfg(c, paths, str(tmp_path / "lab"))
  rng, oracle = random.Random(99), world.Oracle()
  rows = []
  for i in range(400):               # pairs of TL;DR-like summaries, one oracle vote each
    post, _ = world.make_post(rng)
    a, b = world.reference_summary(post, rng), world.reference_summary(post, rng)
    rows.append({"prompt": world.prompt_of(post), "response_a": a, "response_b": b,
                 "human_label": oracle.label(post, a, b, rng)})
  rep = pipeline.alignment_on_heldout(lab_conf, rows, 0)
  # 400 votes: chance is 0.5 ± 0.05 (2σ)
  assert rep["accuracy"] > 0.58, rep


def test_toy_write_survives_a_concurrent_writer(tmp_path, monkeypatch):
  """Processes of one run all write the toy data into the shared workdir; one that
  finds no file, writes, and meets a peer's finished file must not crash (it did,
  and its peers then died at their first collective)."""
  from etils import epath

  from rlaif_jax.data import toy
  first = toy.write(str(tmp_path), "pairs", n_train=20, n_valid=5)
  before = epath.Path(first["train"]).read_text()
  monkeypatch.setattr(type(epath.Path(first["train"])), "exists", lambda self: False)  # lost the race
  again = toy.write(str(tmp_path), "pairs", n_train=20, n_valid=5)
  assert again == first and epath.Path(again["train"]).read_text() == before
  assert not list(tmp_path.glob("*.tmp"))
