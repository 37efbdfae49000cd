"""The config schema shared by every stage, its validation, and flag parsing.

Config files in `configs/` are small Python modules whose `get_config(arg)`
starts from `base_config()` and changes what their stage needs; `arg` picks a
variant (`--config=configs/sft.py:toy`). Any field can be overridden on the
command line (`--config.train.lr=3e-4`). Everything is checked here before a
single program compiles, with messages that say what to change.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import math
import os
import re
import sys

import ml_collections

from rlaif_jax.errors import ConfigError  # noqa: F401 (re-exported: rlaif_jax.config.ConfigError)
from rlaif_jax.data.config import data_config
from rlaif_jax.mesh import resolve_mesh_shape
from rlaif_jax.models.config import LAYOUT, REMAT, ModelConfig


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.stage = "sft"
  c.seed = 0

  # data * fsdp * tensor = number of devices; -1 fills the rest.
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))

  c.model = ml_collections.ConfigDict()
  c.model.checkpoint = ""        # HF directory or a stage's <workdir>/model; "" = from scratch
  c.model.preset = ""            # from scratch / dry run: a public architecture (models/presets.py)
  c.model.tokenizer = "byte"     # "byte" or a local HF tokenizer directory
  c.model.dtype = "float32"      # compute dtype: float32 | bfloat16 (params stay float32)
  c.model.scan_layers = False    # layers stacked and run by one lax.scan (compiles one layer)
  c.model.remat = "none"         # per-layer rematerialisation: none | full | dots
  c.model.logits_chunk = 0       # SFT, DPO: LM head + cross-entropy over this many positions
                                 # at a time (the (B, T, V) logits never whole); 0 = all at once
  c.model.arch = ml_collections.ConfigDict(
      {f.name: f.default for f in dataclasses.fields(ModelConfig)
       if f.name not in LAYOUT + ("rope_scaling", "dtype", "bos_token_id", "eos_token_id",
                                  "pad_token_id")})

  c.data = data_config()
  c.data.eval_split = "valid"     # held-out split for eval metrics
  c.data.eval_jsonl_path = ""     # source == "jsonl": the held-out file ("" = no eval)

  # What a realistic config is meant for; --dry_run checks memory against it,
  # --aot compiles for `topology` (a Cloud TPU topology, e.g. "v4:2x2x2"; see
  # rlaif_jax/aot.py) with the TPU compiler.
  c.hardware = ml_collections.ConfigDict(dict(name="", chips=0, memory_gib_per_chip=0.0,
                                              topology=""))

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 16        # global, across all devices and hosts
  c.train.steps = 100
  c.train.grad_accum = 1
  c.train.optimizer = "adamw"    # adamw | adafactor | sgd
  c.train.lr = 1e-3
  c.train.schedule = "cosine"    # constant | cosine | linear
  c.train.warmup_steps = 10
  c.train.weight_decay = 0.0
  c.train.grad_clip = 1.0        # global-norm clip; 0 disables
  c.train.b1 = 0.9
  c.train.b2 = 0.999
  c.train.log_every = 10
  c.train.eval_every = 0         # 0: only at the end
  c.train.eval_batches = 4
  # What <workdir>/model holds: the last model, or the best by validation (the
  # stage's held-out metric at each evaluation; kept in <workdir>/best_model).
  c.train.select = "last"        # last | best
  c.train.select_metric = ""     # "" = the stage's (sft, dpo: loss; rm: loss_labels; rl: reward)
  c.train.checkpoint_every = 50
  c.train.keep_checkpoints = 2
  c.train.export_hf = False      # write the final policy as a HF directory
  return c


def toy_scale(c, **train) -> None:
  """The CPU-sized toy variants: a tiny Llama-style model on the toy tasks
  (rlaif_jax/data/toy.py) with the byte tokenizer; `train` overrides."""
  c.model.arch.update(vocab_size=0, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                      head_dim=16, d_ff=192, max_seq_len=64)
  c.data.source = "toy"
  c.data.max_prompt_len = 24
  c.data.max_response_len = 12
  c.train.update({**dict(batch_size=32, steps=150, lr=1e-3, warmup_steps=10, log_every=25,
                         checkpoint_every=50, eval_batches=4), **train})


def paper_scale(c, variant: str) -> None:
  """Model, hardware, data and the paper's optimizer for the real-size variants
  of the three tasks: "tldr" (Gemma-2B on a TPU v4-16), "hh_helpful" and
  "hh_harmless" (Llama-3-8B on a TPU v4-64). Shared by the stage configs."""
  c.model.tokenizer = ""          # required: a local HF tokenizer directory
  c.model.checkpoint = ""         # required: a local HF checkpoint directory
  c.model.dtype = "bfloat16"
  c.model.scan_layers = True      # one layer compiled, not 18 / 32 (--aot: 233 s -> see README)
  c.model.remat = "none"          # the cheapest setting that --aot finds leaves >= 20% of HBM
                                  # free (README's paper-scale table); rm.py:tldr and rl.py:tldr_*
                                  # need more
  c.model.logits_chunk = 128      # SFT, DPO: 128 positions of the 256k / 128k-vocab logits at a time
  if variant == "tldr":
    c.model.preset = "gemma-2b"
    c.hardware.update(name="TPU v4-16", chips=8, memory_gib_per_chip=32.0, topology="v4:2x2x2")
    c.mesh.update(data=1, fsdp=-1, tensor=1)
    c.data.source = "tldr"
  else:
    c.model.preset = "llama-3-8b"
    c.hardware.update(name="TPU v4-64", chips=32, memory_gib_per_chip=32.0, topology="v4:4x4x2")
    c.mesh.update(data=1, fsdp=-1, tensor=4)
    c.data.source = "anthropic_hh"
    c.data.hh_subset = "helpful-base" if variant == "hh_helpful" else "harmless-base"
  c.data.max_prompt_len = 1024
  c.data.max_response_len = 128
  c.train.update(batch_size=128, optimizer="adafactor", lr=1e-5, warmup_steps=0,
                 schedule="constant", checkpoint_every=200, log_every=10,
                 grad_accum=8 if variant == "tldr" else 16)


# ------------------------------------------------------------ validation

def validate(config, n_devices: int) -> None:
  """Raises ConfigError naming the field and what to change."""
  try:
    shape = resolve_mesh_shape((config.mesh.data, config.mesh.fsdp, config.mesh.tensor), n_devices)
  except ValueError as e:
    raise ConfigError(f"{e} (--config.mesh.data/fsdp/tensor)") from None
  dp = shape[0] * shape[1]
  t = config.train
  if t.batch_size <= 0 or t.batch_size % dp:
    raise ConfigError(
        f"train.batch_size={t.batch_size} must be a positive multiple of the data-parallel "
        f"size data*fsdp={dp}; try --config.train.batch_size={max(dp, t.batch_size // dp * dp)}")
  if t.grad_accum < 1 or (t.batch_size // dp) % t.grad_accum:
    raise ConfigError(f"train.grad_accum={t.grad_accum} must divide the per-device batch "
                      f"{t.batch_size // dp}")
  if t.steps < 1:
    raise ConfigError(f"train.steps={t.steps} must be >= 1")
  if config.model.dtype not in ("float32", "bfloat16"):
    raise ConfigError(f"model.dtype={config.model.dtype!r}: use float32 or bfloat16")
  if config.model.get("remat", "none") not in REMAT:
    raise ConfigError(f"model.remat={config.model.remat!r}: use one of {', '.join(REMAT)}")
  if t.optimizer not in ("adamw", "adafactor", "sgd"):
    raise ConfigError(f"train.optimizer={t.optimizer!r}: use adamw, adafactor or sgd")
  d = config.data
  for name in ("max_prompt_len", "max_response_len"):
    if name in d and d[name] <= 0:
      raise ConfigError(f"data.{name}={d[name]} must be positive")
  if (not config.model.checkpoint and not config.model.get("preset")):
    total = d.max_prompt_len + d.max_response_len
    if total > config.model.arch.max_seq_len:
      raise ConfigError(
          f"data.max_prompt_len + data.max_response_len = {total} exceeds "
          f"model.arch.max_seq_len={config.model.arch.max_seq_len}; shorten them or raise max_seq_len")
  if not config.model.checkpoint and not config.model.get("preset"):
    a = config.model.arch
    if a.n_heads % a.n_kv_heads:
      raise ConfigError(f"model.arch.n_heads={a.n_heads} is not a multiple of "
                        f"model.arch.n_kv_heads={a.n_kv_heads}")
    if a.head_dim % 2:
      raise ConfigError(f"model.arch.head_dim={a.head_dim} must be even (RoPE rotates pairs)")


# ------------------------------------------------------------ command line

_OVERRIDE = re.compile(r"^--config\.([A-Za-z0-9_.]+)(=.*)?$")


def load_config_file(spec: str):
  """`path.py[:variant]` -> ConfigDict, as ml_collections' config_flags reads it;
  a variant outside the file's `VARIANTS` is a ConfigError naming the known ones."""
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("_rlaif_config", path)
  if module_spec is None or not os.path.isfile(path):
    raise ConfigError(f"--config={spec}: cannot read {path}")
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  known = getattr(module, "VARIANTS", None)
  if arg and known is not None and arg not in known:
    raise ConfigError(f"unknown variant {arg!r} of {path}; known: {', '.join(known)}")
  return module.get_config(arg) if arg else module.get_config()


def _all_keys(cfg, prefix=""):
  """Dotted paths of the overridable (leaf) fields."""
  for k, v in cfg.items():
    if isinstance(v, ml_collections.ConfigDict):
      yield from _all_keys(v, prefix + k + ".")
    else:
      yield prefix + k


def unknown_override_message(config, argv) -> str | None:
  """One line naming the first override whose key the config lacks, or None."""
  keys = sorted(_all_keys(config))
  for arg in argv:
    m = _OVERRIDE.match(arg)
    if not m:
      continue
    node, path = config, m.group(1).split(".")
    for i, part in enumerate(path):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        key = ".".join(path)
        near = difflib.get_close_matches(key, keys, n=3, cutoff=0.5)
        if not near:
          parent = ".".join(path[:i])
          near = [k for k in keys if k.startswith(parent + ".") and k.count(".") == i][:5]
        hint = f"; nearest valid keys: {', '.join(near)}" if near else ""
        return f"unknown config key '{key}'{hint}"
      node = node[part]
  return None


def parse_flags(argv, flag_values) -> None:
  """Parses absl flags; config mistakes exit with one line instead of a traceback."""
  from absl import flags
  try:
    flag_values(argv)
  except (flags.Error, KeyError, AttributeError, TypeError, ValueError) as e:
    msg = None
    spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if spec:
      try:
        msg = unknown_override_message(load_config_file(spec), argv)
      except ConfigError as bad:     # an unknown variant, an unreadable file
        msg = str(bad)
      except Exception as bad:       # the file's own error, not absl's wrapper around it
        msg = f"--config={spec}: {type(bad).__name__}: {bad}".splitlines()[0]
    if msg is None:
      msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    sys.exit(f"error: {msg}")


def describe_mesh(shape) -> str:
  return " x ".join(f"{a}={s}" for a, s in zip(("data", "fsdp", "tensor"), shape)) + \
      f" ({math.prod(shape)} devices)"
