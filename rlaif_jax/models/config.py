"""One config for the Llama, Gemma (1) and Qwen2 decoder families.

The families differ only in a handful of switches; `from_hf` reads them from a
Hugging Face `config.json` and `to_hf` writes them back, so that an import
followed by an export is the identity on everything `transformers` reads.
"""
from __future__ import annotations

import dataclasses
from typing import Any

FAMILIES = ("llama", "gemma", "qwen2")
REMAT = ("none", "full", "dots")
# Fields a config's model section sets itself (`model.scan_layers`, `model.remat`):
# layout and memory, not architecture, so they apply to checkpoints of any layout.
LAYOUT = ("scan_layers", "remat")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  vocab_size: int = 256
  d_model: int = 64
  n_layers: int = 2
  n_heads: int = 4
  n_kv_heads: int = 2
  head_dim: int = 16
  d_ff: int = 128
  family: str = "llama"
  norm_eps: float = 1e-6
  rope_theta: float = 10000.0
  # None, or {"rope_type": "linear"|"llama3", "factor": ..., ...} as in HF.
  rope_scaling: dict | None = None
  max_seq_len: int = 2048
  tie_embeddings: bool = False
  # Compute dtype; parameters are always stored in float32.
  dtype: str = "float32"
  bos_token_id: int | None = None
  eos_token_id: int | None = None
  pad_token_id: int | None = None
  init_std: float = 0.02
  # Layout and memory, not architecture (HF config.json knows neither):
  # scan_layers stacks the layers' parameters on a leading axis and runs them
  # with one `lax.scan` (one layer compiled, not L); remat recomputes each
  # layer's activations in the backward pass: none | full | dots (REMAT).
  scan_layers: bool = False
  remat: str = "none"

  def __post_init__(self):
    if self.family not in FAMILIES:
      raise ValueError(f"model.family={self.family!r}: expected one of {FAMILIES}")
    if self.n_heads % self.n_kv_heads:
      raise ValueError(f"model.n_heads={self.n_heads} must be a multiple of "
                       f"model.n_kv_heads={self.n_kv_heads} (grouped-query attention)")
    if self.dtype not in ("float32", "bfloat16"):
      raise ValueError(f"model.dtype={self.dtype!r}: expected float32 or bfloat16")
    if self.remat not in REMAT:
      raise ValueError(f"model.remat={self.remat!r}: expected one of {REMAT}")

  # Family switches.
  @property
  def activation(self) -> str:
    return "gelu_tanh" if self.family == "gemma" else "silu"

  @property
  def norm_plus_one(self) -> bool:
    """Gemma's RMSNorm scales by (1 + w) with w initialised at 0."""
    return self.family == "gemma"

  @property
  def scale_embeddings(self) -> bool:
    """Gemma multiplies the embeddings by sqrt(d_model)."""
    return self.family == "gemma"

  @property
  def qkv_bias(self) -> bool:
    return self.family == "qwen2"

  def replace(self, **kw) -> "ModelConfig":
    return dataclasses.replace(self, **kw)

  def num_params(self, with_lm_head: bool = True) -> int:
    d, f, v = self.d_model, self.d_ff, self.vocab_size
    q, kv = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
    attn = d * q * 2 + d * kv * 2 + (q + 2 * kv if self.qkv_bias else 0)
    layer = attn + 3 * d * f + 2 * d
    head = 0 if (self.tie_embeddings or not with_lm_head) else d * v
    return v * d + self.n_layers * layer + d + head

  # ----------------------------------------------------------------- HF
  @classmethod
  def from_hf(cls, hf: dict[str, Any], **overrides) -> "ModelConfig":
    """Reads a Hugging Face config.json dict (transformers 4 or 5 layout)."""
    family = hf.get("model_type")
    if family not in FAMILIES:
      raise ValueError(f"unsupported model_type {family!r} in config.json; "
                       f"supported: {FAMILIES}")
    act = hf.get("hidden_activation") or hf.get("hidden_act")
    expected = ("gelu_pytorch_tanh", "gelu") if family == "gemma" else ("silu",)
    if act not in (None,) + expected:
      raise ValueError(f"activation {act!r} is not supported for {family}; expected {expected}")
    if family == "llama" and (hf.get("attention_bias") or hf.get("mlp_bias")):
      raise ValueError("Llama with attention_bias/mlp_bias is not supported")
    if family == "qwen2" and hf.get("use_sliding_window"):
      raise ValueError("Qwen2 sliding-window attention is not supported; "
                       "set use_sliding_window=false")
    rope = dict(hf.get("rope_parameters") or {})
    theta = hf.get("rope_theta") or rope.get("rope_theta") or 10000.0
    scaling = hf.get("rope_scaling") or rope
    rtype = scaling.get("rope_type", scaling.get("type", "default")) if scaling else "default"
    if rtype not in ("default", "linear", "llama3"):
      raise ValueError(f"RoPE type {rtype!r} is not supported (default, linear, llama3)")
    rope_scaling = None
    if rtype != "default":
      rope_scaling = {k: v for k, v in scaling.items() if k != "rope_theta"}
      rope_scaling["rope_type"] = rtype
    n_heads = hf["num_attention_heads"]
    eos = hf.get("eos_token_id")
    if isinstance(eos, list):
      eos = eos[0]
    tied_default = family == "gemma"
    kw = dict(
        vocab_size=hf["vocab_size"], d_model=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"], n_heads=n_heads,
        n_kv_heads=hf.get("num_key_value_heads") or n_heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // n_heads,
        d_ff=hf["intermediate_size"], family=family,
        norm_eps=hf.get("rms_norm_eps", 1e-6), rope_theta=float(theta),
        rope_scaling=rope_scaling,
        max_seq_len=hf.get("max_position_embeddings", 2048),
        tie_embeddings=hf.get("tie_word_embeddings", tied_default),
        bos_token_id=hf.get("bos_token_id"), eos_token_id=eos,
        pad_token_id=hf.get("pad_token_id"),
        init_std=hf.get("initializer_range", 0.02))
    kw.update(overrides)
    return cls(**kw)

  def to_hf(self) -> dict[str, Any]:
    """Keyword arguments for `transformers.AutoConfig.for_model`."""
    arch = {"llama": "LlamaForCausalLM", "gemma": "GemmaForCausalLM",
            "qwen2": "Qwen2ForCausalLM"}[self.family]
    kw = dict(
        model_type=self.family, architectures=[arch], vocab_size=self.vocab_size,
        hidden_size=self.d_model, intermediate_size=self.d_ff,
        num_hidden_layers=self.n_layers, num_attention_heads=self.n_heads,
        num_key_value_heads=self.n_kv_heads, head_dim=self.head_dim,
        rms_norm_eps=self.norm_eps, max_position_embeddings=self.max_seq_len,
        tie_word_embeddings=self.tie_embeddings, initializer_range=self.init_std,
        bos_token_id=self.bos_token_id, eos_token_id=self.eos_token_id,
        pad_token_id=self.pad_token_id, torch_dtype="float32")
    rope = {"rope_type": "default", "rope_theta": self.rope_theta}
    if self.rope_scaling:
      rope.update(self.rope_scaling)
    kw["rope_parameters"] = rope
    if self.family == "gemma":
      kw["hidden_activation"] = "gelu_pytorch_tanh"
    else:
      kw["hidden_act"] = "silu"
    if self.family == "llama":
      kw["attention_bias"] = False
      kw["mlp_bias"] = False
    if self.family == "qwen2":
      kw["use_sliding_window"] = False
    return kw
