"""Hugging Face checkpoints (config.json + safetensors) <-> sharded NNX state.

Import reads one tensor at a time through a memory map and hands each device
only its own slice (`jax.make_array_from_callback`), so no device (and no host
beyond one tensor) ever holds the whole model. Only safetensors are read –
never pickle – and nothing is fetched from a hub.

Layout conversions (HF Linear weights are (out, in); ours are (in, ...)):
    q/k/v_proj (H·D, d)  ->  (d, H, D)        o_proj (d, H·D) -> (H, D, d)
    gate/up    (F, d)    ->  (d, F)           down   (d, F)   -> (F, d)
    lm_head    (V, d)    ->  (d, V)           norms, embeddings unchanged
Gemma's checkpoints store w of RMSNorm's (1 + w), as we do. With scanned
layers (`scan_layers`) each stacked parameter is read and written layer by
layer: model.layers.{i}.* is row i of its leading axis.
"""
from __future__ import annotations

import json
import os
import re


import jax
import ml_dtypes
import numpy as np
from flax import nnx

from rlaif_jax import paths
from rlaif_jax.mesh import to_host
from rlaif_jax.models.config import ModelConfig
from rlaif_jax.models.sharding import abstract_model, init_sharded, state_shardings
from rlaif_jax.models.transformer import ScalarModel, Transformer

_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
           "F64": np.float64, "I64": np.int64, "I32": np.int32}
# Buffers some exporters write that carry no learned state.
_IGNORED = re.compile(r".*rotary_emb\.inv_freq$")


def _rule(cfg: ModelConfig):
  """Our flat path -> (HF name, hf->ours, ours->hf)."""
  h, kv, d, hd = cfg.n_heads, cfg.n_kv_heads, cfg.d_model, cfg.head_dim
  ident = (lambda a: a, lambda a: a)
  t2 = (lambda a: a.T, lambda a: a.T)

  def heads(n):
    return (lambda a: a.T.reshape(d, n, hd), lambda a: a.reshape(d, n * hd).T)

  def bias(n):
    return (lambda a: a.reshape(n, hd), lambda a: a.reshape(n * hd))

  out = (lambda a: a.T.reshape(h, hd, d), lambda a: a.reshape(h * hd, d).T)
  layer = {
      ("attn", "q"): ("self_attn.q_proj.weight", heads(h)),
      ("attn", "k"): ("self_attn.k_proj.weight", heads(kv)),
      ("attn", "v"): ("self_attn.v_proj.weight", heads(kv)),
      ("attn", "o"): ("self_attn.o_proj.weight", out),
      ("attn", "q_bias"): ("self_attn.q_proj.bias", bias(h)),
      ("attn", "k_bias"): ("self_attn.k_proj.bias", bias(kv)),
      ("attn", "v_bias"): ("self_attn.v_proj.bias", bias(kv)),
      ("mlp", "gate"): ("mlp.gate_proj.weight", t2),
      ("mlp", "up"): ("mlp.up_proj.weight", t2),
      ("mlp", "down"): ("mlp.down_proj.weight", t2),
      ("attn_norm", "scale"): ("input_layernorm.weight", ident),
      ("mlp_norm", "scale"): ("post_attention_layernorm.weight", ident),
  }

  def rule(path: tuple):
    path = tuple(path)
    if path == ("embed",):
      return "model.embed_tokens.weight", *ident
    if path == ("final_norm", "scale"):
      return "model.norm.weight", *ident
    if path == ("lm_head",):
      return "lm_head.weight", *t2
    if len(path) == 4 and path[0] == "layers" and path[2:] in layer:
      name, (to_ours, to_hf) = layer[path[2:]]
      return f"model.layers.{path[1]}.{name}", to_ours, to_hf
    if len(path) == 3 and path[0] == "layers" and path[1:] in layer:   # scanned: (L, ...)
      name, (to_ours, to_hf) = layer[path[1:]]
      return "model.layers.{layer}." + name, to_ours, to_hf
    raise KeyError(f"no Hugging Face name for parameter {'/'.join(map(str, path))}")
  return rule


class SafetensorsDir:
  """Read-only view of the tensors of a HF directory (single file or sharded),
  local or a URL (gs://, file://) through the I/O layer.

  A local file is memory-mapped; a remote one is read tensor by tensor with a
  ranged read (seek + read of the tensor's bytes), so a multi-GB bucket
  checkpoint is never copied whole to local disk.
  """

  def __init__(self, path: str):
    self.path = path
    self.remote = paths.is_url(path)
    index = paths.join(path, "model.safetensors.index.json")
    if paths.exists(index):
      files = sorted(set(paths.read_json(index)["weight_map"].values()))
    elif paths.exists(paths.join(path, "model.safetensors")):
      files = ["model.safetensors"]
    else:
      root = paths.path(path)
      found = sorted(f.name for f in root.iterdir()) if root.is_dir() else "not a directory"
      raise FileNotFoundError(
          f"{path}: no model.safetensors or model.safetensors.index.json (found: {found}); "
          "only safetensors checkpoints are read (convert .bin/.pt files with transformers first)")
    self.entries = {}
    for fname in files:
      full = paths.join(path, fname)
      with paths.path(full).open("rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
      header.pop("__metadata__", None)
      for name, info in header.items():
        self.entries[name] = (full, 8 + n, info)

  def names(self) -> set[str]:
    return set(self.entries)

  def get(self, name: str) -> np.ndarray:
    full, base, info = self.entries[name]
    if info["dtype"] not in _DTYPES:
      raise ValueError(f"{full}: tensor {name} has unsupported dtype {info['dtype']}")
    start, end = info["data_offsets"]
    dtype, shape = _DTYPES[info["dtype"]], tuple(info["shape"])
    if self.remote:
      with paths.path(full).open("rb") as f:
        f.seek(base + start)
        data = f.read(end - start)
      if len(data) != end - start:
        raise ValueError(f"{full}: tensor {name} truncated ({len(data)} of {end - start} bytes)")
      return np.frombuffer(data, dtype=dtype).reshape(shape)
    arr = np.memmap(full, dtype=dtype, mode="r", offset=base + start, shape=shape)
    assert arr.nbytes == end - start, name
    return arr


def _load_stacked(src: SafetensorsDir, pattern: str, to_ours, shape, sharding) -> jax.Array:
  """A (L, ...) parameter from the L per-layer tensors `pattern.format(layer=i)`;
  each device reads only its own rows and slice of them."""
  names = [pattern.format(layer=i) for i in range(shape[0])]
  missing = [n for n in names if n not in src.entries]
  if missing:
    raise KeyError(f"{src.path}: checkpoint has no tensor {missing[0]}")
  first = to_ours(src.get(names[0])).shape
  if (shape[0],) + first != shape:
    raise ValueError(f"{src.path}: {names[0]} converts to shape {first}, model expects {shape[1:]}")

  def read(idx):
    rows = range(shape[0])[idx[0]]
    return np.stack([np.asarray(to_ours(src.get(names[i])), np.float32)[idx[1:]] for i in rows])
  return jax.make_array_from_callback(shape, sharding, read)


def read_hf_config(path: str, **overrides) -> ModelConfig:
  return ModelConfig.from_hf(paths.read_json(paths.join(path, "config.json")), **overrides)


def _load_state(src: SafetensorsDir, cfg: ModelConfig, abstract: nnx.State, shardings,
                prefix: tuple = ()) -> nnx.State:
  rule = _rule(cfg)
  used = set()
  flat_abs = dict(nnx.to_flat_state(abstract))
  flat_sh = dict(nnx.to_flat_state(shardings))
  loaded = {}
  for path, var in flat_abs.items():
    if path[:len(prefix)] != prefix:
      continue
    name, to_ours, _ = rule(path[len(prefix):])
    if name == "lm_head.weight" and name not in src.entries and cfg.tie_embeddings:
      name, to_ours = "model.embed_tokens.weight", (lambda a: a.T)
    shape = var.get_value().shape
    if "{layer}" in name:
      arr = _load_stacked(src, name, to_ours, shape, flat_sh[path])
      used.update(name.format(layer=i) for i in range(shape[0]))
      loaded[path] = var.replace(arr)
      continue
    if name not in src.entries:
      raise KeyError(f"{src.path}: checkpoint has no tensor {name} "
                     f"(needed for {'/'.join(map(str, path))})")
    used.add(name)
    host = np.asarray(to_ours(src.get(name)), dtype=np.float32)
    if host.shape != shape:
      raise ValueError(f"{src.path}: {name} converts to shape {host.shape}, model expects {shape}")
    arr = jax.make_array_from_callback(shape, flat_sh[path], lambda idx, h=host: h[idx])
    loaded[path] = var.replace(arr)
  unused = {n for n in src.names() - used if not _IGNORED.match(n)}
  if cfg.tie_embeddings:
    unused.discard("lm_head.weight")
  if prefix == ():
    if unused:
      raise ValueError(f"{src.path}: tensors not used by the model: {sorted(unused)[:10]}"
                       f"{' ...' if len(unused) > 10 else ''}")
  return loaded


def load_hf(path: str, mesh, kind: str = "lm", seed: int = 0, cfg: ModelConfig | None = None,
            **cfg_overrides):
  """Loads a HF directory into a sharded model: `kind` "lm" -> Transformer,
  "scalar" -> ScalarModel whose trunk comes from the checkpoint and whose head
  is freshly initialised. `cfg` defaults to its config.json with `cfg_overrides`.
  Returns (model, ModelConfig)."""
  cfg = cfg or read_hf_config(path, **cfg_overrides)
  src = SafetensorsDir(path)
  if kind == "lm":
    ctor = lambda rngs: Transformer(cfg, rngs)
    graphdef, abstract = abstract_model(ctor)
    loaded = _load_state(src, cfg, abstract, state_shardings(abstract, mesh))
    state = nnx.from_flat_state(sorted(loaded.items()))
    return nnx.merge(graphdef, state), cfg
  if kind == "scalar":
    model = init_sharded(lambda rngs: ScalarModel(cfg, rngs), mesh, seed)
    state = nnx.state(model)
    loaded = _load_state(src, cfg, state, state_shardings(state, mesh), prefix=("trunk",))
    nnx.update(model, nnx.from_flat_state(sorted(loaded.items())))
    return model, cfg
  raise ValueError(f"kind={kind!r}: expected 'lm' or 'scalar'")


def export_hf(model: Transformer, out_dir: str, tokenizer=None,
              max_shard_bytes: int = 2 * 1024**3, dtype=np.float32) -> None:
  """Writes `model` as a HF directory that `transformers` loads.

  Every process gathers the tensors (collective); process 0 writes them.
  """
  if isinstance(model, ScalarModel):
    raise TypeError("export_hf takes a causal LM (Transformer); a ScalarModel has no LM head")
  cfg = model.cfg
  rule = _rule(cfg)
  tensors = {}
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    name, _, to_hf = rule(path)
    host = to_host(var[...])
    parts = ([(name.format(layer=i), h) for i, h in enumerate(host)] if "{layer}" in name
             else [(name, host)])
    for n, x in parts:
      tensors[n] = np.ascontiguousarray(to_hf(x).astype(dtype))
  if jax.process_index() != 0:
    return
  if paths.is_url(out_dir):  # e.g. gs://: transformers writes locally, then the I/O layer copies
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
      _write_hf_dir(cfg, tensors, tmp, tokenizer, max_shard_bytes)
      paths.upload_dir(tmp, out_dir)
    return
  _write_hf_dir(cfg, tensors, os.fspath(paths.path(out_dir)), tokenizer, max_shard_bytes)


def _write_hf_dir(cfg, tensors, out_dir, tokenizer, max_shard_bytes) -> None:
  import transformers
  from huggingface_hub import split_state_dict_into_shards_factory
  from safetensors.numpy import save_file

  os.makedirs(out_dir, exist_ok=True)
  hf_cfg = cfg.to_hf()
  transformers.AutoConfig.for_model(**hf_cfg).save_pretrained(out_dir)
  split = split_state_dict_into_shards_factory(
      tensors, get_storage_size=lambda a: a.nbytes, max_shard_size=max_shard_bytes,
      filename_pattern="model{suffix}.safetensors")
  for fname, names in split.filename_to_tensors.items():
    save_file({n: tensors[n] for n in names}, os.path.join(out_dir, fname),
              metadata={"format": "pt"})
  if split.is_sharded:
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
      json.dump({"metadata": split.metadata, "weight_map": split.tensor_to_filename}, f, indent=2)
  if tokenizer is not None:
    tokenizer.save_pretrained(out_dir)
