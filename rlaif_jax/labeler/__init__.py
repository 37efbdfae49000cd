"""AI labeler: prompts, two-order pairwise scoring, chain of thought, direct 1–10 scoring."""
from rlaif_jax.labeler.scorer import CotConfig, Labeler

__all__ = ["CotConfig", "Labeler"]
