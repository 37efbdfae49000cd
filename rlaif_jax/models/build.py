"""Which model a config's model section means, and building it on a mesh.

One factory for every stage, the labeler, the dry run and `--aot`. A model
section (`config.model`, `config.labeler.model`, ...) names its architecture in
this order of precedence:

  checkpoint   ours (<dir>/model_config.json) or Hugging Face (<dir>/config.json)
  preset       a public architecture (models/presets.py), from scratch
  arch         the section's own fields, from scratch

and always sets the compute `dtype` and the layout (`scan_layers`, `remat`,
LAYOUT), which apply to checkpoints of any layout. From scratch, `vocab_size`
0 means the tokenizer's size rounded up to a multiple of 64 (so it shards
evenly), and the tokenizer's bos/eos/pad ids go into the ModelConfig.
"""
from __future__ import annotations


from flax import nnx

from rlaif_jax import paths
from rlaif_jax.errors import ConfigError
from rlaif_jax.models import store
from rlaif_jax.models.config import LAYOUT, REMAT, ModelConfig
from rlaif_jax.models.hf import load_hf, read_hf_config
from rlaif_jax.models.presets import PRESETS, preset
from rlaif_jax.models.sharding import init_sharded
from rlaif_jax.models.tokenizer import load_tokenizer

KINDS = store.KINDS      # "lm": Transformer, "scalar": ScalarModel (reward / value)


def layout(model_cfg) -> dict:
  """The section's `scan_layers` / `remat` (those it sets) as ModelConfig fields."""
  return {k: model_cfg[k] for k in LAYOUT if k in model_cfg}


def checkpoint_format(path: str, key: str = "model.checkpoint") -> str:
  """"ours" or "hf" for a model directory; a one-line ConfigError naming `key`
  for anything else."""
  root = paths.path(path)
  if (root / "model_config.json").exists():
    return "ours"
  if (root / "config.json").exists():
    return "hf"
  what = "holds neither" if root.is_dir() else "does not exist, so it has neither"
  raise ConfigError(f"{key}={path} {what} model_config.json (a stage's <workdir>/model) "
                    "nor config.json (a Hugging Face directory)")


def check_model(model_cfg, key: str = "model") -> None:
  """What can be checked of a model section without building it: the checkpoint
  is a model directory, the preset exists, the dtype and layout are known."""
  tok = model_cfg.get("tokenizer")
  if tok is not None and tok != "byte" and not paths.path(tok).is_dir():  # local or gs://
    raise ConfigError(f"{key}.tokenizer={tok!r} is neither 'byte' nor a directory holding "
                      "a Hugging Face tokenizer (nothing is downloaded)")
  if model_cfg.get("checkpoint"):
    checkpoint_format(model_cfg.checkpoint, f"{key}.checkpoint")
  elif model_cfg.get("preset"):
    if model_cfg.preset not in PRESETS:
      raise ConfigError(f"{key}.preset={model_cfg.preset!r}: use one of {', '.join(PRESETS)}")
  if model_cfg.get("dtype") not in ("float32", "bfloat16"):
    raise ConfigError(f"{key}.dtype={model_cfg.get('dtype')!r}: use float32 or bfloat16")
  if model_cfg.get("remat", "none") not in REMAT:
    raise ConfigError(f"{key}.remat={model_cfg.remat!r}: use one of {', '.join(REMAT)}")
  if model_cfg.get("logits_chunk", 0) < 0:
    raise ConfigError(f"{key}.logits_chunk={model_cfg.logits_chunk}: use 0 (all positions at "
                      "once) or a number of positions")


def resolve(model_cfg, tokenizer=None, dtype: str | None = None,
            checkpoint: str | None = None) -> ModelConfig:
  """The ModelConfig `model_cfg` names (see the module docstring).

  `checkpoint` replaces the section's own (e.g. an RM directory read with the
  policy's dtype and layout); `dtype` replaces `model_cfg.dtype`. From scratch
  with `vocab_size` 0 and no `tokenizer`, the section's `tokenizer` is loaded.
  """
  dtype = dtype or model_cfg.dtype
  over = {**layout(model_cfg), "dtype": dtype}
  path = model_cfg.get("checkpoint", "") if checkpoint is None else checkpoint
  try:
    if path:
      if checkpoint_format(path, "checkpoint") == "ours":
        return store.read_config(path, **over)
      return read_hf_config(path, **over)
    if model_cfg.get("preset"):
      cfg = preset(model_cfg.preset, **over)
    else:
      cfg = ModelConfig(**{**model_cfg.arch.to_dict(), **over})
  except ConfigError:
    raise
  except (ValueError, KeyError, OSError) as e:   # config.json / model_config.json / fields
    raise ConfigError(f"{'checkpoint ' + path + ': ' if path else ''}{e}") from None
  if tokenizer is None and not cfg.vocab_size:
    if not model_cfg.get("tokenizer"):
      raise ConfigError("model.arch.vocab_size=0 takes the tokenizer's size, but the model's "
                        "tokenizer is not set; set model.tokenizer or model.arch.vocab_size")
    try:
      tokenizer = load_tokenizer(model_cfg.tokenizer)
    except (OSError, ValueError) as e:
      raise ConfigError(str(e)) from None
  if tokenizer is None:
    return cfg
  n = len(tokenizer)
  vocab = cfg.vocab_size or -(-n // 64) * 64
  if vocab < n:
    raise ConfigError(f"model.arch.vocab_size={vocab} is smaller than the tokenizer's "
                      f"{n} tokens; set it to 0 (automatic) or >= {n}")
  return cfg.replace(vocab_size=vocab, bos_token_id=tokenizer.bos_token_id,
                     eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


def build(model_cfg, mesh, kind: str = "lm", tokenizer=None, seed: int = 0,
          checkpoint: str | None = None, dtype: str | None = None) -> nnx.Module:
  """The `kind` model of `resolve(...)`, every parameter created in its shard:
  loaded from the checkpoint (an LM checkpoint seeds a scalar model's trunk,
  with a fresh head) or initialised from `seed`."""
  if kind not in KINDS:
    raise ValueError(f"kind={kind!r}: expected one of {sorted(KINDS)}")
  cfg = resolve(model_cfg, tokenizer, dtype, checkpoint)
  path = model_cfg.get("checkpoint", "") if checkpoint is None else checkpoint
  if not path:
    return init_sharded(lambda rngs: KINDS[kind](cfg, rngs), mesh, seed)
  if checkpoint_format(path, "checkpoint") == "ours":
    return store.load(path, mesh, kind, seed, cfg=cfg)
  return load_hf(path, mesh, kind=kind, seed=seed, cfg=cfg)[0]
