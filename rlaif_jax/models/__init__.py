"""Decoder LM (NNX), scalar heads, HF import/export, tokenizers."""
from rlaif_jax.models.config import ModelConfig
from rlaif_jax.models.transformer import (ScalarModel, Transformer, last_token_index,
                                          positions_from_mask)
from rlaif_jax.models.sharding import init_sharded, state_shardings

__all__ = ["ModelConfig", "ScalarModel", "Transformer", "init_sharded", "last_token_index",
           "positions_from_mask", "state_shardings"]
