"""grain pipelines: token layout, truncation, padding, resume, host sharding, real HH data."""
import gzip
import json

import numpy as np
import pytest

from rlaif_jax.data import TokenEncoder, data_config, formats, make_iterator, numeric
from rlaif_jax.mesh import global_batch
from rlaif_jax.models.tokenizer import load_tokenizer

BYTE = load_tokenizer("byte")  # ids: pad 0, bos 1, eos 2, byte b -> b + 3


def byte_ids(text):
  return [b + 3 for b in text.encode("utf-8")]


class ListSource:
  def __init__(self, examples):
    self.examples, self.report = examples, {}

  def __len__(self):
    return len(self.examples)

  def __getitem__(self, i):
    return self.examples[i]


def cfg(**overrides):
  c = data_config()
  c.update(dict(shuffle=False, read_threads=0, max_prompt_len=48, max_response_len=16))
  c.update(overrides)
  return c


def numbered(n):
  return ListSource([{"id": f"ex{i}", "prompt": formats.plain_prompt(f"q{i}?"),
                      "response": f" a{i}", "response_a": f" a{i}", "response_b": f" b{i}",
                      "label": 1.0, "human_label": -1.0} for i in range(n)])


def test_sft_truncation_cuts_post_keeps_cue_and_response():
  post = "é" * 10 + "x" * 40  # multi-byte chars: the cut must respect the token budget
  prompt = formats.tldr_prompt("tifu", "T", post)
  ex = {"id": "0", "prompt": prompt, "response": " short sum"}
  fits = {"id": "1", "prompt": formats.tldr_prompt("tifu", "T", "ok"), "response": " s"}
  long = {"id": "2", "prompt": prompt, "response": " " + "y" * 20}
  it = make_iterator(cfg(max_prompt_len=64), BYTE, "sft", 2, source=ListSource([ex, fits, long]),
                     num_epochs=1, shard_count=1, shard_index=0)
  b = next(it)
  # reference: the longest post prefix whose bytes fit 64 - BOS - head - cue
  budget = 63 - len((prompt.head + prompt.tail).encode())
  keep = max(k for k in range(len(post) + 1) if len(post[:k].encode()) <= budget)
  want_prompt = [1] + byte_ids(prompt.head + post[:keep] + "\n\nTL;DR:")
  want = want_prompt + byte_ids(" short sum") + [2]
  assert b["tokens"].shape == (2, 80) and b["tokens"].dtype == np.int32
  np.testing.assert_array_equal(b["tokens"][0], want + [0] * (80 - len(want)))
  np.testing.assert_array_equal(b["mask"][0], np.arange(80) < len(want))
  np.testing.assert_array_equal(b["response_mask"][0],
                                (np.arange(80) >= len(want_prompt)) & (np.arange(80) < len(want)))
  short = [1] + byte_ids(fits["prompt"].text) + byte_ids(" s") + [2]
  np.testing.assert_array_equal(b["tokens"][1][:len(short)], short)
  assert it.report()["prompts_truncated"] == 1
  assert it.report()["responses_too_long"] == {"count": 1, "ids": ["2"]}  # 22 > 16, not cut
  with pytest.raises(ValueError, match="example 2: response of 22 tokens"):
    make_iterator(cfg(long_response_policy="error"), BYTE, "sft", 1, source=ListSource([long]))


def test_hh_truncation_drops_oldest_turns_and_prompts_are_left_padded():
  text = "\n\nHuman: first question\n\nAssistant: first answer\n\nHuman: second?\n\nAssistant:"
  it = make_iterator(cfg(max_prompt_len=40), BYTE, "prompts", 2, shard_count=1, shard_index=0,
                     source=ListSource([{"id": "h", "prompt": formats.hh_prompt(text)},
                                        {"id": "s", "prompt": formats.hh_prompt("\n\nHuman: x\n\nAssistant:")}]))
  b = next(it)
  kept = text[len(text) - 39:]  # BOS + the last 39 characters (all one byte)
  assert kept.endswith("\n\nHuman: second?\n\nAssistant:")
  np.testing.assert_array_equal(b["prompt_tokens"][0], [1] + byte_ids(kept))
  short = [1] + byte_ids("\n\nHuman: x\n\nAssistant:")
  np.testing.assert_array_equal(b["prompt_tokens"][1], [0] * (40 - len(short)) + short)
  np.testing.assert_array_equal(b["prompt_mask"][1], np.arange(40) >= 40 - len(short))
  assert list(b["prompt"]) == [text, "\n\nHuman: x\n\nAssistant:"]  # full text for the labeler


def test_sentencepiece_seam_matches_joint_tokenization(shared_data):
  tok = load_tokenizer(str(shared_data / "tokenizers/llama2-sentencepiece"))
  enc = TokenEncoder(tok, 64, 16)
  prompt = formats.tldr_prompt("tifu", "A title", "Some post text.")
  ids, truncated = enc.prompt(prompt)
  response = enc.response(" Hello world")
  joint = tok(prompt.text + " Hello world", add_special_tokens=False)["input_ids"]
  assert not truncated and ids[0] == tok.bos_token_id and response[-1] == tok.eos_token_id
  assert ids[1:] + response[:-1] == joint


def take(it, n):
  return [next(it) for _ in range(n)]


def assert_batches_equal(xs, ys):
  assert len(xs) == len(ys)
  for x, y in zip(xs, ys):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


@pytest.mark.parametrize("threads", [0, 2])
def test_resume_replays_exact_batches_across_epochs(threads):
  c = cfg(shuffle=True, seed=3, read_threads=threads)
  make = lambda: make_iterator(c, BYTE, "pairs", 4, source=numbered(8), with_text=True,
                               shard_count=1, shard_index=0)
  full = take(make(), 7)  # 2 batches an epoch: crosses three epoch boundaries
  it = make()
  take(it, 3)
  state = json.loads(json.dumps(it.get_state()))  # states must survive a JSON checkpoint
  resumed = make()
  resumed.set_state(state)
  assert_batches_equal(take(resumed, 4), full[3:])
  assert resumed.stats["batches"] == 7
  ids = lambda bs: sorted(i for b in bs for i in b["id"])
  # each epoch covers the data once, in a new order
  assert ids(full[:2]) == ids(full[2:4]) == sorted(f"ex{i}" for i in range(8))
  assert [b["id"].tolist() for b in full[:2]] != [b["id"].tolist() for b in full[2:4]]


def test_two_hosts_read_disjoint_shares_that_cover_the_data():
  c = cfg(shuffle=True, seed=1)
  per_host = []
  for host in range(2):
    it = make_iterator(c, BYTE, "prompts", 4, source=numbered(24), num_epochs=1,
                       shard_index=host, shard_count=2)
    batches = list(it)
    assert all(b["prompt_tokens"].shape == (2, 48) for b in batches)  # local rows = 4 / 2
    per_host.append([i for b in batches for i in b["id"]])
  assert len(per_host[0]) == len(per_host[1]) == 12
  assert not set(per_host[0]) & set(per_host[1])
  assert set(per_host[0]) | set(per_host[1]) == {f"ex{i}" for i in range(24)}


def test_global_batch_assembles_local_rows(mesh):
  it = make_iterator(cfg(), BYTE, "sft", 8, source=numbered(8), shard_count=1, shard_index=0)
  local = numeric(next(it))
  arrays = global_batch(local, mesh)
  assert arrays["tokens"].shape == (8, 64) and arrays["tokens"].sharding.spec[0] == ("data", "fsdp")
  np.testing.assert_array_equal(np.asarray(arrays["response_mask"]), local["response_mask"])


@pytest.fixture(scope="module")
def hh_cfg(shared_data, tmp_path_factory):
  c = data_config()
  c.update(dict(source="anthropic_hh", split="test", data_dir=str(tmp_path_factory.mktemp("tfds")),
                manual_dir=str(shared_data / "hh-rlhf"), max_prompt_len=1024,
                max_response_len=512, read_threads=2))
  raw = [json.loads(line) for line in
         gzip.open(shared_data / "hh-rlhf/harmless-base-test-dev.jsonl.gz", "rt", encoding="utf-8")]
  return c, raw


def test_real_hh_pairs_through_pipeline_reconstruct_transcripts(hh_cfg):
  c, raw = hh_cfg
  it = make_iterator(c, BYTE, "pairs", 4, with_text=True, num_epochs=1, shard_count=1,
                     shard_index=0)
  rows = exact = 0
  for b in it:
    for r in range(len(b["id"])):
      rec = raw[int(b["id"][r].rsplit("/", 1)[1]) - 1]
      assert b["prompt"][r] + b["response_a"][r] == rec["chosen"]
      assert b["prompt"][r] + b["response_b"][r] == rec["rejected"]
      assert b["label"][r] == 1.0 and b["human_label"][r] == 1.0
      for s, key in (("a", "chosen"), ("b", "rejected")):
        toks, m, rm = b[f"tokens_{s}"][r], b[f"mask_{s}"][r], b[f"response_mask_{s}"][r]
        response = BYTE.decode(toks[rm][:-1])
        assert toks[rm][-1] == 2 and rec[key].endswith(response)
        if toks[0] == 1 and BYTE.decode(toks[m & ~rm][1:]) == b["prompt"][r]:
          assert BYTE.decode(toks[m][1:-1]) == rec[key]  # untruncated: exact transcript
          exact += 1
      rows += 1
  report = it.report()
  assert report["mismatched"]["count"] == 4  # the test above derives them from the raw file
  usable = 1996 - report["responses_too_long"]["count"]
  assert rows == usable - usable % 4  # one epoch, only the last partial batch dropped
  assert 0 < report["prompts_truncated"] < rows
  assert exact == 2 * (rows - report["prompts_truncated"])


def test_randomized_pair_order_flips_labels_consistently(hh_cfg):
  c, raw = hh_cfg
  c = c.copy_and_resolve_references()
  c.randomize_pair_order = True
  b = next(make_iterator(c, BYTE, "pairs", 32, with_text=True, shard_count=1, shard_index=0))
  for r in range(32):
    rec = raw[int(b["id"][r].rsplit("/", 1)[1]) - 1]
    chosen_is_a = b["prompt"][r] + b["response_a"][r] == rec["chosen"]
    assert b["label"][r] == (1.0 if chosen_is_a else 0.0) == b["human_label"][r]
  assert 0 < b["label"].sum() < 32
