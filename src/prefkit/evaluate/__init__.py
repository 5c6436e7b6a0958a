"""Evaluation: reward-model pairwise accuracy (`rm_accuracy`), policy evaluation (`policy`, with
the scorers of `scorers` and `pairwise` and the options of `options`) and probes."""

from prefkit.evaluate import pairwise  # noqa: F401  (registers the built-in scorer 'pairwise')
from prefkit.evaluate.rm_accuracy import rm_accuracy
from prefkit.evaluate.scorers import Scorer, Scores, ScoringContext, available_scorers, get_scorer, register_scorer

__all__ = ["rm_accuracy", "Scorer", "Scores", "ScoringContext", "available_scorers", "get_scorer",
           "register_scorer"]
