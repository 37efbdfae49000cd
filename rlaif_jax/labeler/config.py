"""Labeler defaults, mounted by configs/label.py as `config.labeler`, and building
a `Labeler` from them.

The labeler is a separate inference component: its own model (any family and
size), tokenizer and mesh (`mesh.devices` = how many of the devices it uses, a
sub-mesh; 0 = all). Policy and labeler only exchange text.
"""
from __future__ import annotations

import dataclasses

import jax
import ml_collections

from rlaif_jax.errors import ConfigError
from rlaif_jax.labeler.prompts import (chat_template, direct_template, load_exemplars,
                                       pairwise_template)
from rlaif_jax.labeler.scorer import CotConfig, Labeler
from rlaif_jax.mesh import make_mesh
from rlaif_jax.models.build import build, check_model
from rlaif_jax.models.config import LAYOUT, ModelConfig
from rlaif_jax.models.tokenizer import load_tokenizer


def labeler_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict()
  c.model.checkpoint = ""        # HF directory or a stage's <workdir>/model; required unless ...
  c.model.random_init = False    # ... True: a from-scratch model (model.arch) – toys and tests
  c.model.preset = ""            # from scratch / dry run: a public architecture (models/presets.py)
  c.model.tokenizer = "byte"
  c.model.dtype = "float32"
  c.model.scan_layers = False    # layout, as the policy's `model` section
  c.model.remat = "none"
  c.model.arch = ml_collections.ConfigDict(
      {f.name: f.default for f in dataclasses.fields(ModelConfig)
       if f.name not in LAYOUT + ("rope_scaling", "dtype", "bos_token_id", "eos_token_id",
                                  "pad_token_id")})
  c.model.arch.vocab_size = 0    # 0 = the tokenizer's size rounded up to a multiple of 64
  c.mesh = ml_collections.ConfigDict(dict(devices=0, data=-1, fsdp=1, tensor=1))

  c.task = "summarization"       # summarization | helpful | harmless
  c.preamble = "detailed"        # base | detailed (every task)
  # Own templates: any non-empty field replaces the built-in one (see labeler/prompts.py).
  c.template = ml_collections.ConfigDict(dict(preamble="", sample="", ending="", cot_ending="",
                                              invert=-1, options=("1", "2")))
  # invert: 1 = the question asks for the WORSE response (flip), 0 = no, -1 = the built-in's
  c.direct_template = ml_collections.ConfigDict(dict(preamble="", sample="", ending=""))
  c.exemplars_path = ""          # JSONL few-shot exemplars ("" = 0-shot; bundled:<task> = ours)
  c.num_shots = -1               # first n exemplars of the file; -1 = all
  # Instruction-tuned labelers: the question as a user turn, the answer in the
  # model's (labeler/prompts.py). "" = plain text; gemma | chatml; or own markers:
  c.chat = ""
  c.chat_template = ml_collections.ConfigDict(dict(user="", model="", end_of_turn=""))

  c.cot = False                  # two-step chain of thought
  c.cot_max_tokens = 512
  c.self_consistency = 1         # rationales per order (> 1: sampled at cot_temperature)
  c.cot_temperature = 0.0
  c.cot_top_k = 40

  c.batch_size = 8               # pairs per compiled program (rounded up to data*fsdp)
  c.bucket = 64                  # token lengths round up to a multiple of this
  c.prefix_cache = True          # encode the preamble + exemplars once (same results)
  c.max_context_tokens = 1024    # longer contexts lose body text; 0 = no limit
  c.shard_size = 256             # pairs per output shard (the unit of resumption)
  c.max_pairs = 0                # label only the first n pairs; 0 = all
  return c


def validate_labeler(lcfg, key: str = "labeler") -> None:
  """Everything checkable of a labeler section before its model exists (one-line
  ConfigErrors naming `key`, the section's place in the config)."""
  _parts(lcfg, key)


def _parts(lcfg, key: str):
  """(template overrides, chat template, exemplars, CoT config), checked."""
  if not lcfg.model.checkpoint and not lcfg.model.random_init:
    raise ConfigError(f"{key}.model.checkpoint is empty, so the labeler would judge with random "
                      "weights; point it at a checkpoint directory (or set "
                      f"{key}.model.random_init=true for a from-scratch labeler, e.g. in tests)")
  check_model(lcfg.model, f"{key}.model")
  template = lcfg.template.to_dict()
  invert = template.pop("invert")
  if invert >= 0:                # -1 keeps the built-in choice (harmless asks for the worse)
    template["invert"] = bool(invert)
  cot = None
  try:
    pairwise_template(lcfg.task, lcfg.preamble, template)
    direct_template(lcfg.task, lcfg.direct_template.to_dict())
    chat = chat_template(lcfg.chat, lcfg.chat_template.to_dict())
    exemplars = load_exemplars(lcfg.exemplars_path, lcfg.num_shots) if lcfg.exemplars_path else ()
    if lcfg.cot:
      cot = CotConfig(max_tokens=lcfg.cot_max_tokens, samples=lcfg.self_consistency,
                      temperature=lcfg.cot_temperature, top_k=lcfg.cot_top_k)
  except (ValueError, OSError) as e:
    raise ConfigError(f"{key}: {e}") from None
  return template, chat, exemplars, cot


def build_labeler(lcfg, seed: int = 0, devices=None, key: str = "labeler"):
  """(Labeler, mesh) from a `labeler_config()`-shaped ConfigDict found at `key`."""
  template, chat, exemplars, cot = _parts(lcfg, key)
  devices = list(devices if devices is not None else jax.devices())
  if lcfg.mesh.devices:
    devices = devices[:lcfg.mesh.devices]
  mesh = make_mesh(lcfg.mesh, devices)
  tok = load_tokenizer(lcfg.model.tokenizer)
  model = build(lcfg.model, mesh, "lm", tok, seed)
  try:   # templates that do not fit the tokenizer, exemplars without rationales for CoT
    labeler = Labeler(model, tok, mesh, task=lcfg.task, preamble=lcfg.preamble,
                      template=template, direct_template=lcfg.direct_template.to_dict(),
                      exemplars=exemplars, cot=cot, chat=chat, batch_size=lcfg.batch_size,
                      bucket=lcfg.bucket, prefix_cache=lcfg.prefix_cache,
                      max_context_tokens=lcfg.max_context_tokens, seed=seed)
  except ValueError as e:
    raise ConfigError(f"{key}: {e}") from None
  return labeler, mesh
