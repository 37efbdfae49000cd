"""`tldr`: OpenAI's filtered Reddit TL;DR (SFT targets and RL/eval prompts).

Raw files: train.jsonl, valid.jsonl, test.jsonl, one JSON object a line with
string fields id, subreddit, title, post, summary. Put them in `manual_dir`
(tfds.download.DownloadConfig(manual_dir=...)) or let the builder download them.
Splits: train, valid, test, in file order.

Read back without TensorFlow:
    b = tfds.builder("tldr", data_dir=d, file_format="array_record")
    b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=m))
    b.as_data_source("valid")[0]  # {"id": b"...", "post": b"...", ...} (text is bytes)
"""
from __future__ import annotations

import tensorflow_datasets as tfds

from rlaif_jax.data.builders.common import RawRecordsMixin, manual_files
from rlaif_jax.data.records import require_object, require_text

URL = "https://openaipublic.blob.core.windows.net/summarize-from-feedback/datasets/tldr_3_filtered/"
SPLITS = ("train", "valid", "test")
FIELDS = ("id", "subreddit", "title", "post", "summary")


class Tldr(RawRecordsMixin, tfds.core.GeneratorBasedBuilder):
  """Reddit TL;DR posts with reference summaries."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({f: tfds.features.Text() for f in FIELDS}),
        disable_shuffling=True, metadata=self._metadata(),
        homepage="https://github.com/openai/summarize-from-feedback")

  def _split_generators(self, dl_manager):
    files = manual_files(dl_manager, [f"{s}.jsonl" for s in SPLITS])
    if files is None:
      files = list(dl_manager.download([URL + f"{s}.jsonl" for s in SPLITS]))
      by_split = dict(zip(SPLITS, files))
    else:
      by_split = {f.stem: f for f in files}
      if not by_split:
        raise FileNotFoundError(f"tldr: manual_dir has none of {[s + '.jsonl' for s in SPLITS]}")
    return {s: self._generate_examples(s, p) for s, p in by_split.items()}

  def _generate_examples(self, split, path):
    def parse(where, value):
      record = require_object(where, value)
      return {f: require_text(where, record, f) for f in FIELDS}
    for i, (_, example) in enumerate(self.iter_records(split, [path], parse)):
      yield i, example
