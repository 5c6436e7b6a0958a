"""Alignment-potential data selection (Huang et al., arXiv 2503.01864;
docs/methods.md section 3).

    from prefkit.select import select, score_margins, selection_ablation
    kept = select(pairs, "alignment-potential", fraction=0.4, model=model, tokenizer=tok)

Modules: `metrics` (pure metric functions, z-scores, budgets, and the metric registry:
`register_metric` adds one), `cache` (row-level log-prob cache), `scoring` (the two streaming passes), `selection`
(top fraction / top-k, the ablation), `plot`, `evolve` (the self-play evolve-then-select extension).
"""

from prefkit.select.metrics import Metric, RunningMoments, available_metrics, budget, get_metric, register_metric
from prefkit.select.options import SelectOptions
from prefkit.select.scoring import Scored, score_margins
from prefkit.select.selection import select, selection_ablation, selection_scores

__all__ = ["Metric", "RunningMoments", "available_metrics", "get_metric", "register_metric", "Scored", "SelectOptions", "budget", "score_margins", "select", "selection_ablation",
           "selection_scores"]
