"""Data: TFDS builders, users' JSONL, task formats and grain batch pipelines.

    from rlaif_jax.data import data_config, make_iterator
    it = make_iterator(cfg.data, tokenizer, kind="sft" | "pairs" | "prompts", batch_size=...)

See pipeline.py for the batch keys, formats.py for the prompt formats,
builders/ for the raw file layouts and jsonl.py for the JSONL schemas.
"""
from rlaif_jax.data.config import data_config
from rlaif_jax.data.formats import Prompt, fit_prompt, hh_prompt, split_hh_transcript, tldr_prompt
from rlaif_jax.data.pipeline import TEXT_KEYS, DataIterator, TokenEncoder, make_iterator, numeric
from rlaif_jax.data.records import BadRecordError
from rlaif_jax.data.sources import open_source

__all__ = ["BadRecordError", "DataIterator", "Prompt", "TEXT_KEYS", "TokenEncoder", "data_config",
           "fit_prompt", "hh_prompt", "make_iterator", "numeric", "open_source",
           "split_hh_transcript", "tldr_prompt"]
