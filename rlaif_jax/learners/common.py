"""What every learner's `run` needs from the config: tokenizer, models, data."""
from __future__ import annotations

import os

import jax

from rlaif_jax.config import ConfigError, model_config
from rlaif_jax.models.sharding import init_sharded
from rlaif_jax.models.tokenizer import load_tokenizer
from rlaif_jax.models.transformer import ScalarModel, Transformer


def tokenizer(config):
  return load_tokenizer(config.model.tokenizer)


def scratch_model_config(config, tok):
  """`model.arch` with the tokenizer's special ids; vocab 0 = the tokenizer's
  size rounded up to a multiple of 64 (so it shards evenly)."""
  vocab = config.model.arch.vocab_size or -(-len(tok) // 64) * 64
  if vocab < len(tok):
    raise ConfigError(f"model.arch.vocab_size={vocab} is smaller than the tokenizer's "
                      f"{len(tok)} tokens; set it to 0 (automatic) or >= {len(tok)}")
  return model_config(config).replace(
      vocab_size=vocab, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
      pad_token_id=tok.pad_token_id)


def policy_model(config, mesh, tok, checkpoint: str | None = None) -> Transformer:
  """A causal LM from `checkpoint` (a HF dir), `model.checkpoint`, or from scratch."""
  path = checkpoint if checkpoint is not None else config.model.checkpoint
  if path:
    from rlaif_jax.models.hf import load_hf
    model, _ = load_hf(path, mesh, dtype=config.model.dtype)
    return model
  cfg = scratch_model_config(config, tok)
  return init_sharded(lambda rngs: Transformer(cfg, rngs), mesh, config.seed)


def scalar_model(config, mesh, tok, checkpoint: str | None = None) -> ScalarModel:
  path = checkpoint if checkpoint is not None else config.model.checkpoint
  if path:
    from rlaif_jax.models.hf import load_hf
    model, _ = load_hf(path, mesh, kind="scalar", seed=config.seed, dtype=config.model.dtype)
    return model
  cfg = scratch_model_config(config, tok)
  return init_sharded(lambda rngs: ScalarModel(cfg, rngs), mesh, config.seed)


def prepare_data(config, workdir: str) -> None:
  """Materialises bundled sources (the toy tasks) inside the workdir."""
  if config.data.get("source") == "toy":
    from rlaif_jax.demo import toy
    paths = toy.write(os.path.join(workdir, "data", "toy"), seed=config.seed)
    with config.unlocked():
      config.data.source = "jsonl"
      config.data.train_path = paths["train"]
      config.data.eval_path = paths["valid"]


def data_iterator(config, tok, kind: str, split: str = "train", num_epochs=None):
  """Process-local, checkpointable iterator of numpy batches (see rlaif_jax.data)."""
  from rlaif_jax.data.pipeline import make_iterator
  per_process = config.train.batch_size // jax.process_count()
  return make_iterator(config.data, tok, kind=kind, batch_size=per_process, split=split,
                       seed=config.seed, num_epochs=num_epochs)
