"""What every learner's `run` needs from the config: tokenizer, models, data."""
from __future__ import annotations

import os


from rlaif_jax.config import ConfigError, layout_overrides, model_config
from rlaif_jax.mesh import global_batch
from rlaif_jax.models import store
from rlaif_jax.models.sharding import init_sharded
from rlaif_jax.models.tokenizer import load_tokenizer
from rlaif_jax.models.transformer import ScalarModel, Transformer


def tokenizer(config):
  return load_tokenizer(config.model.tokenizer)


def scratch_model_config(config, tok):
  """`model.arch` with the tokenizer's special ids; vocab 0 = the tokenizer's
  size rounded up to a multiple of 64 (so it shards evenly)."""
  vocab = (model_config(config).vocab_size if config.model.get("preset")
           else config.model.arch.vocab_size) or -(-len(tok) // 64) * 64
  if vocab < len(tok):
    raise ConfigError(f"model.arch.vocab_size={vocab} is smaller than the tokenizer's "
                      f"{len(tok)} tokens; set it to 0 (automatic) or >= {len(tok)}")
  return model_config(config).replace(
      vocab_size=vocab, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
      pad_token_id=tok.pad_token_id)


def policy_model(config, mesh, tok, checkpoint: str | None = None) -> Transformer:
  """A causal LM from `checkpoint` / `model.checkpoint` (ours or a HF dir), or from scratch."""
  return _model(config, mesh, tok, "lm", checkpoint)


def scalar_model(config, mesh, tok, checkpoint: str | None = None) -> ScalarModel:
  """A reward / value model; from an LM checkpoint it keeps the trunk, new head."""
  return _model(config, mesh, tok, "scalar", checkpoint)


def _model(config, mesh, tok, kind, checkpoint):
  path = checkpoint if checkpoint is not None else config.model.checkpoint
  if path:
    return store.load_any(path, mesh, kind, seed=config.seed, dtype=config.model.dtype,
                          **layout_overrides(config.model))
  cfg = scratch_model_config(config, tok)
  return init_sharded(lambda rngs: store.KINDS[kind](cfg, rngs), mesh, config.seed)


def prepare_data(config, workdir: str, kind: str = "sft") -> None:
  """Materialises bundled sources (the toy tasks) inside the workdir."""
  if config.data.source == "toy":
    from rlaif_jax.demo import toy
    paths = toy.write(os.path.join(workdir, "data", "toy"), kind, seed=config.seed)
    with config.unlocked():
      config.data.source = "jsonl"
      config.data.jsonl_path = paths["train"]
      config.data.eval_jsonl_path = paths["valid"]


def data_iterator(config, tok, kind: str, num_epochs=None):
  """This process's share of the training batches, checkpointable (rlaif_jax.data)."""
  from rlaif_jax.data.pipeline import make_iterator
  return make_iterator(config.data, tok, kind=kind, batch_size=config.train.batch_size,
                       seed=config.seed, num_epochs=num_epochs)


def heldout_batches(config, tok, kind: str) -> list[dict]:
  """Up to `train.eval_batches` of this process's batches of the held-out split
  (`data.eval_split`, or `data.eval_jsonl_path` for jsonl), fixed order; [] if none."""
  from rlaif_jax.data.pipeline import make_iterator
  d = config.data.copy_and_resolve_references()
  with d.unlocked():
    d.split, d.shuffle = config.data.eval_split, False
    if d.source == "jsonl":
      if not config.data.eval_jsonl_path:
        return []
      d.jsonl_path, d.jsonl_kind = config.data.eval_jsonl_path, kind
  it = make_iterator(d, tok, kind=kind, batch_size=config.train.batch_size, num_epochs=1)
  return [b for b, _ in zip(it, range(config.train.eval_batches))]


def eval_batches(config, tok, kind: str, mesh) -> list:
  """Up to `train.eval_batches` global batches of the held-out split (fixed order)."""
  from rlaif_jax.data.pipeline import numeric
  return [global_batch(numeric(b), mesh) for b in heldout_batches(config, tok, kind)]
