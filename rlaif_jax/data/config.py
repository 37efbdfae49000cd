"""Data defaults, mounted by the stage configs as `config.data`."""
from __future__ import annotations

import ml_collections


def data_config() -> ml_collections.ConfigDict:
  """Where examples come from and how they become fixed-shape batches.

  source: "tldr" | "tldr_comparisons" | "anthropic_hh" (TFDS builders) or
    "jsonl" (a user's file, see rlaif_jax.data.jsonl for the schema).
  """
  c = ml_collections.ConfigDict()
  c.source = "tldr"
  c.split = "train"               # tldr: train/valid/test; comparisons: train/validation; hh: train/test
  c.hh_subset = "harmless-base"   # anthropic_hh config: helpful-base, harmless-base, ...
  c.data_dir = ""                 # TFDS data dir ("" = TFDS default, ~/tensorflow_datasets); gs:// works
  c.manual_dir = ""               # raw files to prepare from instead of downloading
  c.mismatch_policy = "drop_and_report"  # anthropic_hh pairs whose prompts differ: or "error"
  c.confidence_filter = ()        # tldr_comparisons: keep only these confidences, e.g. (1, 2, 8, 9)
  c.jsonl_path = ""               # source == "jsonl"
  c.jsonl_kind = ""               # schema of the jsonl file: sft | pairs | prompts ("" = iterator kind)
  c.skip_bad_records = False      # count and report bad raw records instead of failing
  c.max_prompt_len = 1024         # tokens incl. BOS; longer prompts lose body text, never the cue
  c.max_response_len = 128        # tokens incl. EOS; responses are never cut ...
  c.long_response_policy = "skip"  # ... a longer one is skipped (counted, reported) or "error"
  c.shuffle = True
  c.seed = 0
  c.randomize_pair_order = False  # swap a/b per record (label -> 1 - label), seeded, deterministic
  c.num_epochs = -1               # -1 = repeat forever
  c.read_threads = 2              # grain prefetch threads (tokenization runs there)
  return c
