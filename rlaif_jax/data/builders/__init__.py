"""TFDS builders (array_record, no TensorFlow needed): importing registers them.

    tfds.builder("tldr" | "tldr_comparisons" | "anthropic_hh/harmless-base", ...)
"""
from rlaif_jax.data.builders.anthropic_hh import AnthropicHh
from rlaif_jax.data.builders.tldr import Tldr
from rlaif_jax.data.builders.tldr_comparisons import TldrComparisons

__all__ = ["AnthropicHh", "Tldr", "TldrComparisons"]
