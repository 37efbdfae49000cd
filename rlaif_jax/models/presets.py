"""Architectures of public checkpoints, as their Hugging Face config.json states them.

They let a config describe a real-size model before its checkpoint is
downloaded (`model.preset`), e.g. for `--dry_run` on a laptop; a real run reads
the same fields from the checkpoint's own config.json.
"""
from __future__ import annotations

from rlaif_jax.models.config import ModelConfig

PRESETS = {
    "gemma-2b": dict(model_type="gemma", vocab_size=256000, hidden_size=2048,
                     intermediate_size=16384, num_hidden_layers=18, num_attention_heads=8,
                     num_key_value_heads=1, head_dim=256, rms_norm_eps=1e-6,
                     rope_theta=10000.0, max_position_embeddings=8192),
    "gemma-7b": dict(model_type="gemma", vocab_size=256000, hidden_size=3072,
                     intermediate_size=24576, num_hidden_layers=28, num_attention_heads=16,
                     num_key_value_heads=16, head_dim=256, rms_norm_eps=1e-6,
                     rope_theta=10000.0, max_position_embeddings=8192),
    "llama-3-8b": dict(model_type="llama", vocab_size=128256, hidden_size=4096,
                       intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, rms_norm_eps=1e-5, rope_theta=500000.0,
                       max_position_embeddings=8192, tie_word_embeddings=False),
    "qwen2-7b": dict(model_type="qwen2", vocab_size=152064, hidden_size=3584,
                     intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                     num_key_value_heads=4, rms_norm_eps=1e-6, rope_theta=1000000.0,
                     max_position_embeddings=32768, tie_word_embeddings=False),
}


def preset(name: str, **overrides) -> ModelConfig:
  if name not in PRESETS:
    raise ValueError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
  return ModelConfig.from_hf(PRESETS[name], **overrides)
