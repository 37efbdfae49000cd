"""`anthropic_hh`: Anthropic HH-RLHF chosen/rejected transcripts as prompt + two responses.

Configs: helpful-base, helpful-online, helpful-rejection-sampled, harmless-base.
Raw files: {config}/{split}.jsonl.gz as in github.com/anthropics/hh-rlhf, or
flat {config}-{split}*.jsonl.gz, in `manual_dir`; otherwise downloaded. Splits:
train and test (only those found, with a manual dir). One JSON object a line:
{"chosen": transcript, "rejected": transcript}.

Each example: id ("{config}/{split}/{line}"), prompt (everything up to and
including the last "\n\nAssistant:" of the chosen transcript), chosen and
rejected (the final responses), so prompt + chosen == the chosen transcript.
Responses may be empty (a real refusal style in the data) and are kept.

Mismatched prompts (chosen and rejected diverge before their final response)
cannot be one comparison. `mismatch_policy` says what happens:
  "drop_and_report" (default): the pair is left out; the count and ids are
      logged and stored in builder.info.metadata["mismatched"][split].
  "error": preparation fails naming the first such record.
"""
from __future__ import annotations

import logging

import tensorflow_datasets as tfds

from rlaif_jax.data.builders.common import RawRecordsMixin, manual_files, matching
from rlaif_jax.data.formats import split_hh_transcript
from rlaif_jax.data.records import BadRecordError, require_object, require_text

URL = "https://raw.githubusercontent.com/anthropics/hh-rlhf/master/"
SUBSETS = ("helpful-base", "helpful-online", "helpful-rejection-sampled", "harmless-base")
SPLITS = ("train", "test")
MISMATCH_POLICIES = ("drop_and_report", "error")


class AnthropicHh(RawRecordsMixin, tfds.core.GeneratorBasedBuilder):
  """Anthropic HH-RLHF pairs split into a shared prompt and two responses."""

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=s) for s in SUBSETS]

  def __init__(self, *, mismatch_policy: str = "drop_and_report", **kwargs):
    if mismatch_policy not in MISMATCH_POLICIES:
      raise ValueError(f"mismatch_policy {mismatch_policy!r}: expected one of {MISMATCH_POLICIES}")
    self.mismatch_policy = mismatch_policy
    super().__init__(**kwargs)

  def _info(self):
    text = tfds.features.Text
    metadata = self._metadata()
    metadata["mismatched"] = {}
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict(
            {"id": text(), "prompt": text(), "chosen": text(), "rejected": text()}),
        disable_shuffling=True, metadata=metadata,
        homepage="https://github.com/anthropics/hh-rlhf")

  def _split_generators(self, dl_manager):
    subset = self.builder_config.name
    files = manual_files(dl_manager, [f"{subset}/*.jsonl.gz", f"{subset}-*.jsonl.gz"])
    if files is None:
      urls = {s: f"{URL}{subset}/{s}.jsonl.gz" for s in SPLITS}
      return {s: self._generate_examples(s, [p]) for s, p in dl_manager.download(urls).items()}
    by_split = {}
    for s in SPLITS:
      found = [f for f in files if f.parent.name == subset and f.name == f"{s}.jsonl.gz"]
      found += matching([f for f in files if f.parent.name != subset], f"{subset}-{s}*.jsonl.gz")
      if found:
        by_split[s] = found
    if not by_split:
      raise FileNotFoundError(
          f"anthropic_hh/{subset}: manual_dir has no {subset}/{{train,test}}.jsonl.gz "
          f"nor {subset}-{{train,test}}*.jsonl.gz")
    return {s: self._generate_examples(s, fs) for s, fs in by_split.items()}

  def _generate_examples(self, split, files):
    subset = self.builder_config.name
    mismatched = []

    def parse(where, value):
      record = require_object(where, value)
      try:
        prompt, chosen = split_hh_transcript(require_text(where, record, "chosen"))
        other_prompt, rejected = split_hh_transcript(require_text(where, record, "rejected"))
      except ValueError as e:
        raise BadRecordError(where, str(e)) from None
      example_id = f"{subset}/{split}/{where.rsplit(':', 1)[1]}"
      if prompt != other_prompt:
        if self.mismatch_policy == "error":
          raise ValueError(f"{where}: chosen and rejected transcripts have different prompts "
                           "(mismatch_policy='error')")
        mismatched.append(example_id)
        return None
      return {"id": example_id, "prompt": prompt, "chosen": chosen, "rejected": rejected}

    for i, (_, example) in enumerate(self.iter_records(split, files, parse)):
      yield i, example
    if mismatched:
      logging.warning("anthropic_hh/%s/%s: dropped %d pairs whose chosen and rejected prompts "
                      "differ: %s", subset, split, len(mismatched), mismatched)
    self.info.metadata["mismatched"][split] = {"count": len(mismatched), "ids": mismatched}
