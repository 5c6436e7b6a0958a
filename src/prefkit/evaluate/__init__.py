"""Evaluation: reward-model pairwise accuracy (`rm_accuracy`), policy evaluation and probes."""

from prefkit.evaluate.rm_accuracy import rm_accuracy

__all__ = ["rm_accuracy"]
