"""A trained model as a stage's output artifact: `<dir>/model_config.json` + Orbax params.

Stages hand models to each other through these directories (SFT -> RM init,
SFT -> RL policy/reference, RM -> RL reward). Loading restores every parameter
straight into its shard. A causal-LM directory can also seed a scalar model
(reward / value): the trunk is copied, the head freshly initialised.
Hugging Face directories (config.json + safetensors) are accepted wherever a
model directory is, through `rlaif_jax.models.build`.
"""
from __future__ import annotations

import dataclasses
import json

import jax
import orbax.checkpoint as ocp
from flax import nnx

from rlaif_jax import paths
from rlaif_jax.models.config import ModelConfig
from rlaif_jax.models.sharding import abstract_model, init_sharded, state_shardings
from rlaif_jax.models.transformer import ScalarModel, Transformer, to_layout

KINDS = {"lm": Transformer, "scalar": ScalarModel}


def kind_of(model: nnx.Module) -> str:
  return "scalar" if isinstance(model, ScalarModel) else "lm"


def model_cfg_of(model: nnx.Module) -> ModelConfig:
  return model.trunk.cfg if isinstance(model, ScalarModel) else model.cfg


def save(model: nnx.Module, path: str) -> None:
  """Writes the model's params and config (collective on multi-host)."""
  root = paths.path(path)
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(root / "params", params, force=True)
    ckptr.wait_until_finished()
  if jax.process_index() == 0:
    meta = {"kind": kind_of(model), "model": dataclasses.asdict(model_cfg_of(model))}
    (root / "model_config.json").write_text(json.dumps(meta, indent=2))


def read_meta(path: str) -> dict:
  return json.loads((paths.path(path) / "model_config.json").read_text())


def read_config(path: str, **overrides) -> ModelConfig:
  """The saved model's ModelConfig with `overrides` (dtype, layout) applied."""
  return ModelConfig(**{**read_meta(path)["model"], **overrides})


def _restore_into(path: str, abstract: nnx.State, mesh) -> dict:
  shardings = nnx.to_pure_dict(state_shardings(abstract, mesh))
  target = jax.tree.map(
      lambda v, sh: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sh),
      nnx.to_pure_dict(abstract), shardings)
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(paths.path(path) / "params", target)


def _restore(path: str, cfg: ModelConfig, kind: str, saved_scan: bool, mesh) -> dict:
  """A `kind` model's params for `cfg` from a checkpoint written with
  scan_layers=`saved_scan`: read in that layout, then converted (one jitted
  restack into the target shardings; the layer params are briefly held twice)."""
  _, abstract = abstract_model(lambda r: KINDS[kind](cfg.replace(scan_layers=saved_scan), r))
  params = _restore_into(path, abstract, mesh)
  if saved_scan == cfg.scan_layers:
    return params
  _, target = abstract_model(lambda r: KINDS[kind](cfg, r))
  shardings = nnx.to_pure_dict(state_shardings(target, mesh))
  with jax.set_mesh(mesh):
    return jax.jit(lambda p: to_layout(p, cfg.scan_layers), out_shardings=shardings)(params)


def load(path: str, mesh, kind: str | None = None, seed: int = 0,
         cfg: ModelConfig | None = None, **cfg_overrides):
  """Restores a saved model; `kind="scalar"` from an "lm" directory copies the trunk.
  `cfg` (else the saved config with `cfg_overrides`) may differ from the saved
  model's in dtype and layout: with another `scan_layers` the checkpoint is converted."""
  meta = read_meta(path)
  cfg = cfg or read_config(path, **cfg_overrides)
  saved_scan = meta["model"].get("scan_layers", False)
  kind = kind or meta["kind"]
  if kind == meta["kind"]:
    graphdef, _ = abstract_model(lambda rngs: KINDS[kind](cfg, rngs))
    return nnx.merge(graphdef, _restore(path, cfg, kind, saved_scan, mesh))
  if (meta["kind"], kind) != ("lm", "scalar"):
    raise ValueError(f"{path} holds a {meta['kind']} model; cannot load it as {kind}")
  model = init_sharded(lambda rngs: ScalarModel(cfg, rngs), mesh, seed)
  lm = _restore(path, cfg, "lm", saved_scan, mesh)
  lm.pop("lm_head", None)
  nnx.update(model.trunk, lm)
  return model
