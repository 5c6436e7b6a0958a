"""The unlearning probe (Zhang et al., ablation b): the log-probability of high-quality
rejected responses (judge score >= 5 on the 1-10 scale) under the policy, tracked over training.

    from prefkit.evaluate.unlearning import high_quality_rejected, rejected_logp_probe
    hq = high_quality_rejected(pairs, threshold=5.0, limit=64)
    probe = rejected_logp_probe(hq, tokenizer)                      # plain DPO: log pi(y_l | x)
    probe_ra = rejected_logp_probe(hq, tokenizer, spec=spec, goal="own")  # RA: log pi(y_l | S(r_l), x)
    train_dpo(cfg, probes={"probe/hq_rejected_logp": probe})       # logged at each logging step

`goal="own"` conditions each prompt on its rejected response's own score (the goal under
which that response is the right answer); a number conditions every prompt on that goal.
"""

from __future__ import annotations

import statistics
from typing import Callable


def high_quality_rejected(pairs, threshold: float = 5.0, limit: int | None = None, seed: int = 0):
    """The pairs whose rejected response scored >= `threshold` (at most `limit`, a seeded sample)."""
    ds = pairs.filter(lambda s: s is not None and s >= threshold, input_columns=["score_rejected"])
    if limit is not None and len(ds) > limit:
        ds = ds.shuffle(seed=seed).select(range(limit))
    return ds


def condition_pairs(pairs, spec, goal="own", tokenizer=None):
    """`pairs` with each prompt conditioned on `goal` ('own' = its score_rejected, or a number)."""
    from prefkit.relabel import condition

    def cond(row):
        g = row["score_rejected"] if goal == "own" else goal
        return {"prompt": condition(row["prompt"], goal=g, spec=spec, tokenizer=tokenizer)}

    return pairs.map(cond)


def mean_rejected_logp(model, tokenizer, pairs, batch_size: int = 32) -> float:
    """Mean over pairs of log pi(rejected | prompt) (sum over response tokens)."""
    from prefkit.data import records as R
    from prefkit.logprobs import score_logps

    was_training = model.training
    model.eval()
    try:
        scored = score_logps(model, tokenizer, pairs, batch_size=batch_size, progress=False)
    finally:
        model.train(was_training)
    vals = [v for v in scored[R.LOGPS_REJECTED] if v is not None]
    return statistics.fmean(vals) if vals else float("nan")


def rejected_logp_probe(pairs, tokenizer, *, spec=None, goal="own", batch_size: int = 32) -> Callable:
    """A probe fn(model) -> mean log-prob of the rejected responses of `pairs` (for train_dpo's probes)."""
    probe_pairs = condition_pairs(pairs, spec, goal, tokenizer) if spec is not None else pairs

    def probe(model) -> float:
        return mean_rejected_logp(model, tokenizer, probe_pairs, batch_size=batch_size)

    return probe
