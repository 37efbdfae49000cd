"""TFDS builders prepare from raw files (written here, or the shared HH sample) and read back exactly."""
import gzip
import json

import pytest
import tensorflow_datasets as tfds

from rlaif_jax.data import builders  # noqa: F401  (registers the builders)
from rlaif_jax.data.records import BadRecordError

HH_FILE = "hh-rlhf/harmless-base-test-dev.jsonl.gz"
CUE = "\n\nAssistant:"


def prepare(name, data_dir, manual_dir, **kwargs):
  b = tfds.builder(name, data_dir=str(data_dir), file_format="array_record", **kwargs)
  b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  return b


def read(builder, split):
  src = builder.as_data_source(split=split)
  return [{k: (v.decode() if isinstance(v, bytes) else int(v)) for k, v in src[i].items()}
          for i in range(len(src))]


def write_jsonl(path, records, gz=False):
  path.parent.mkdir(parents=True, exist_ok=True)
  data = "".join(json.dumps(r) + "\n" for r in records).encode()
  path.write_bytes(gzip.compress(data) if gz else data)


def test_tldr_reads_back_exact_records(tmp_path):
  posts = {s: [{"id": f"{s}{i}", "subreddit": "AskReddit", "title": f"T{i} ü",
                "post": f"post {i}\nline two", "summary": f"sum {i}"} for i in range(3)]
           for s in ("train", "valid", "test")}
  for s, recs in posts.items():
    write_jsonl(tmp_path / "raw" / f"{s}.jsonl", recs)
  b = prepare("tldr", tmp_path / "tfds", tmp_path / "raw")
  for s, recs in posts.items():
    assert read(b, s) == recs  # same fields, same order, unicode intact


def comparison(i, split, choice, confidence=None):
  r = {"info": {"id": f"p{i}", "post": f"post {i}", "title": f"title {i}", "subreddit": "tifu"},
       "summaries": [{"text": f"a{i}", "policy": "sup1", "note": None},
                     {"text": f"b{i}", "policy": "ref", "note": None}],
       "choice": choice, "worker": f"w{i}", "batch": "batch3", "split": split}
  if confidence is not None:
    r["extra"] = {"confidence": confidence}
  return r


def test_tldr_comparisons_keeps_confidence_and_routes_splits(tmp_path):
  raw = [comparison(0, "train", 0, 9), comparison(1, "valid1", 1, None),
         comparison(2, "train", 1, 2), comparison(3, "valid2", 0, 5)]
  write_jsonl(tmp_path / "raw" / "batch3.json", raw[:2])
  write_jsonl(tmp_path / "raw" / "batch4.json", raw[2:])
  b = prepare("tldr_comparisons", tmp_path / "tfds", tmp_path / "raw")

  def expected(r):
    return {"id": r["info"]["id"], "post": r["info"]["post"], "title": r["info"]["title"],
            "subreddit": "tifu", "summary_0": r["summaries"][0]["text"],
            "summary_1": r["summaries"][1]["text"], "policy_0": "sup1", "policy_1": "ref",
            "choice": r["choice"], "confidence": r.get("extra", {}).get("confidence", -1),
            "worker": r["worker"], "batch": "batch3", "split": r["split"]}
  assert read(b, "train") == [expected(raw[0]), expected(raw[2])]
  assert read(b, "validation") == [expected(raw[1]), expected(raw[3])]


def test_anthropic_hh_small_fixture_and_mismatch_report(tmp_path):
  same = {"chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: joke?\n\nAssistant: no",
          "rejected": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: joke?\n\nAssistant: sure, ..."}
  differ = {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: c\n\nAssistant: d"}
  write_jsonl(tmp_path / "raw" / "helpful-base" / "train.jsonl.gz", [same, differ, same], gz=True)
  b = prepare("anthropic_hh/helpful-base", tmp_path / "tfds", tmp_path / "raw")
  prompt = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: joke?\n\nAssistant:"
  assert read(b, "train") == [
      {"id": f"helpful-base/train/{line}", "prompt": prompt, "chosen": " no",
       "rejected": " sure, ..."} for line in (1, 3)]
  assert b.info.metadata["mismatched"]["train"] == {"count": 1, "ids": ["helpful-base/train/2"]}
  # the report survives on disk: a fresh builder reads it from metadata.json
  again = tfds.builder("anthropic_hh/helpful-base", data_dir=str(tmp_path / "tfds"))
  assert again.info.metadata["mismatched"]["train"]["ids"] == ["helpful-base/train/2"]

  with pytest.raises(ValueError, match=r"train.jsonl.gz:2: chosen and rejected .* different"):
    prepare("anthropic_hh/helpful-base", tmp_path / "strict", tmp_path / "raw",
            mismatch_policy="error")


@pytest.fixture(scope="module")
def hh_real(shared_data, tmp_path_factory):
  b = prepare("anthropic_hh/harmless-base", tmp_path_factory.mktemp("tfds"), shared_data / "hh-rlhf")
  raw = [json.loads(line) for line in gzip.open(shared_data / HH_FILE, "rt", encoding="utf-8")]
  return b, raw


def test_real_hh_mismatches_found_and_reported(hh_real):
  b, raw = hh_real
  assert len(raw) == 2000
  # independent reference: compare the transcripts' text before their last cue
  expected = [f"harmless-base/test/{i + 1}" for i, r in enumerate(raw)
              if r["chosen"][:r["chosen"].rindex(CUE)] != r["rejected"][:r["rejected"].rindex(CUE)]]
  assert expected  # the sample is known to contain some
  assert b.info.metadata["mismatched"]["test"] == {"count": len(expected), "ids": expected}
  assert len(b.as_data_source("test")) == 2000 - len(expected)


def test_real_hh_prompt_plus_response_reconstructs_transcripts(hh_real):
  b, raw = hh_real
  examples = read(b, "test")
  for ex in examples:
    r = raw[int(ex["id"].rsplit("/", 1)[1]) - 1]
    assert ex["prompt"] + ex["chosen"] == r["chosen"]
    assert ex["prompt"] + ex["rejected"] == r["rejected"]
    assert ex["prompt"].endswith(CUE) and CUE not in ex["chosen"] and CUE not in ex["rejected"]


def test_builder_bad_record_names_file_and_line_or_is_counted(tmp_path):
  good = {"id": "1", "subreddit": "s", "title": "t", "post": "p", "summary": "x"}
  raw = tmp_path / "raw" / "train.jsonl"
  raw.parent.mkdir()
  raw.write_text(json.dumps(good) + "\n" + json.dumps({**good, "summary": 3}) + "\n")
  with pytest.raises(BadRecordError, match=r"train.jsonl:2: field 'summary' must be a string"):
    prepare("tldr", tmp_path / "a", tmp_path / "raw")
  b = prepare("tldr", tmp_path / "b", tmp_path / "raw", skip_bad_records=True)
  assert read(b, "train") == [good]
  skipped = b.info.metadata["skipped"]["train"]
  assert skipped["count"] == 1 and skipped["skipped"][0][0] == f"{raw}:2"


def test_tldr_sources_feed_the_pipeline(tmp_path):
  from rlaif_jax.data import data_config, make_iterator
  from rlaif_jax.models.tokenizer import load_tokenizer
  recs = [{"id": f"t{i}", "subreddit": "tifu", "title": f"T{i}", "post": f"p{i}",
           "summary": f" s{i} "} for i in range(2)]
  write_jsonl(tmp_path / "raw" / "valid.jsonl", recs)
  raw = [comparison(0, "train", 0, 9), comparison(1, "train", 1, 1), comparison(2, "train", 1, 5)]
  write_jsonl(tmp_path / "raw" / "batch3.json", raw)
  c = data_config()
  c.update(dict(source="tldr", split="valid", data_dir=str(tmp_path / "tfds"), shuffle=False,
                manual_dir=str(tmp_path / "raw"), read_threads=0, max_prompt_len=64,
                max_response_len=8))
  tok = load_tokenizer("byte")
  b = next(make_iterator(c, tok, "sft", 2, with_text=True, shard_count=1, shard_index=0))
  assert list(b["prompt"]) == [f"SUBREDDIT: r/tifu\n\nTITLE: T{i}\n\nPOST: p{i}\n\nTL;DR:" for i in (0, 1)]
  assert list(b["response"]) == [" s0", " s1"]  # one space after the cue, summary stripped
  assert tok.decode(b["tokens"][1][b["response_mask"][1]]) == " s1<eos>"

  c.update(dict(source="tldr_comparisons", split="train", confidence_filter=(1, 9)))
  b = next(make_iterator(c, tok, "pairs", 2, with_text=True, shard_count=1, shard_index=0))
  assert list(b["id"]) == ["p0", "p1"]  # confidence 5 filtered out
  assert list(b["response_a"]) == [" a0", " a1"] and list(b["response_b"]) == [" b0", " b1"]
  assert b["label"].tolist() == b["human_label"].tolist() == [1.0, 0.0]  # choice 0 -> a preferred
