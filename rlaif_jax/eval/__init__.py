"""Evaluation: win rates (raw and length-controlled), harmless rate, RM accuracy, report."""
