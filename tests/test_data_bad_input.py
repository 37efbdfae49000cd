"""A bad-input corpus, one JSONL file per fault: a clear file:line error, or a counted skip."""
import json
import re

import numpy as np
import pytest

from rlaif_jax.data import BadRecordError, data_config, make_iterator
from rlaif_jax.data.jsonl import JsonlSource
from rlaif_jax.models.tokenizer import load_tokenizer

GOOD = {"prompt": "Which is better?", "response_a": " this", "response_b": " that", "label": 0.75}

# fault -> (bad line as bytes, the error text expected after "path:2: ")
FAULTS = {
    "malformed_json": (b'{"prompt": "x", "response_a": ', r"malformed JSON"),
    "missing_field": (json.dumps({"prompt": "x", "response_a": "y"}).encode(),
                      r"missing field 'response_b'"),
    "wrong_type": (json.dumps({**GOOD, "response_b": ["y"]}).encode(),
                   r"field 'response_b' must be a string, got list"),
    "label_out_of_range": (json.dumps({**GOOD, "label": 1.5}).encode(),
                           r"field 'label' must be in \[0, 1\], got 1.5"),
    "label_is_bool": (json.dumps({**GOOD, "label": True}).encode(),
                      r"field 'label' must be a number, got True"),
    "non_utf8": (b'{"prompt": "caf\xe9", "response_a": "a", "response_b": "b"}', r"not valid UTF-8"),
    "empty_text": (json.dumps({**GOOD, "prompt": "  \n"}).encode(), r"field 'prompt' is empty"),
    "not_an_object": (b'["prompt", "a", "b"]', r"expected a JSON object, got list"),
}


def corpus(tmp_path, fault):
  bad, _ = FAULTS[fault]
  path = tmp_path / f"{fault}.jsonl"
  lines = [json.dumps({**GOOD, "id": "first"}).encode(), bad, json.dumps({**GOOD, "id": "third"}).encode()]
  path.write_bytes(b"\n".join(lines) + b"\n")
  return path


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_fault_raises_naming_file_and_line(tmp_path, fault):
  path = corpus(tmp_path, fault)
  with pytest.raises(BadRecordError, match=f"^{path}:2: {FAULTS[fault][1]}"):
    JsonlSource(path, "pairs")


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_fault_is_counted_when_skipping(tmp_path, fault):
  path = corpus(tmp_path, fault)
  c = data_config()
  c.update(dict(source="jsonl", jsonl_path=str(path), skip_bad_records=True, shuffle=False,
                read_threads=0, max_prompt_len=32, max_response_len=8))
  it = make_iterator(c, load_tokenizer("byte"), "pairs", 2, with_text=True, num_epochs=1,
                     shard_count=1, shard_index=0)
  batch = next(it)
  assert list(batch["id"]) == ["first", "third"]
  np.testing.assert_array_equal(batch["label"], [0.75, 0.75])
  np.testing.assert_array_equal(batch["human_label"], [-1.0, -1.0])  # absent -> unlabeled
  skipped = it.report()["skipped"]
  assert skipped["count"] == 1 and skipped["skipped"][0][0] == f"{path}:2"
  assert re.match(FAULTS[fault][1], skipped["skipped"][0][1])


def test_duplicate_ids_and_schema_mismatch(tmp_path):
  path = tmp_path / "dup.jsonl"
  path.write_text(json.dumps({**GOOD, "id": 7}) + "\n" + json.dumps({**GOOD, "id": "7"}) + "\n")
  with pytest.raises(BadRecordError, match=f"^{path}:2: duplicate id '7'"):
    JsonlSource(path, "pairs")
  c = data_config()
  c.update(dict(source="jsonl", jsonl_path=str(path), jsonl_kind="pairs"))
  with pytest.raises(ValueError, match="a pairs jsonl file cannot feed a sft iterator"):
    make_iterator(c, load_tokenizer("byte"), "sft", 2)


def test_sft_and_prompt_files(tmp_path):
  sft = tmp_path / "sft.jsonl"
  sft.write_text(json.dumps({"prompt": "Q:", "response": " A"}) + "\n")
  src = JsonlSource(sft, "sft")
  assert src[0]["id"] == f"{sft}:1" and src[0]["prompt"].text == "Q:" and src[0]["response"] == " A"
  prompts = tmp_path / "p.jsonl"
  prompts.write_text(json.dumps({"prompt": "Q:"}) + "\n")
  with pytest.raises(BadRecordError, match=f"^{prompts}:1: missing field 'response'"):
    JsonlSource(prompts, "sft")
  assert JsonlSource(prompts, "prompts")[0]["prompt"].text == "Q:"
