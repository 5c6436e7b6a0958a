"""The unlearning probe (Zhang et al. 2024, arXiv 2410.08067, ablation b): the log-probability of high-quality
rejected responses (judge score >= 5 on the 1-10 scale) under the policy, tracked over training.

    from prefkit.evaluate.unlearning import high_quality_rejected, rejected_logp_probe
    hq = high_quality_rejected(pairs, threshold=5.0, limit=64)
    probe = rejected_logp_probe(hq, tokenizer)                      # plain DPO: log pi(y_l | x)
    probe_ra = rejected_logp_probe(hq, tokenizer, spec=spec, goal="own")  # RA: log pi(y_l | S(r_l), x)
    train_dpo(cfg, probes={"probe/hq_rejected_logp": probe})       # logged at each logging step

As a one-off measurement of a trained model (what `prefkit eval unlearning MODEL PAIRS` runs):

    unlearning_probe("runs/ra", "pairs.jsonl", threshold=5.0, limit=256)   # conditioned: own goal
    # -> {"mean_rejected_logp": -41.2, "pairs": 256, "conditioned": True, "goal": "own", ...}

`goal="own"` conditions each prompt on its rejected response's own score (the goal under
which that response is the right answer); a number conditions every prompt on that goal.
"""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass, replace
from typing import Callable

from prefkit.data import read
from prefkit.data import records as R
from prefkit.errors import ConfigError
from prefkit.generate import resolve_conditioning
from prefkit.logprobs import score_logps
from prefkit.models import load_causal_lm
from prefkit.relabel import condition
from prefkit.report import StageReport
from prefkit.tokenize import encode_pairs


def high_quality_rejected(pairs, threshold: float = 5.0, limit: int | None = None, seed: int = 0):
    """The pairs whose rejected response scored >= `threshold` (at most `limit`, a seeded sample)."""
    ds = pairs.filter(lambda s: s is not None and s >= threshold, input_columns=["score_rejected"])
    if limit is not None and len(ds) > limit:
        ds = ds.shuffle(seed=seed).select(range(limit))
    return ds


def condition_pairs(pairs, spec, goal="own", tokenizer=None):
    """`pairs` with each prompt conditioned on `goal` ('own' = its score_rejected, or a number)."""

    def cond(row):
        g = row["score_rejected"] if goal == "own" else goal
        return {"prompt": condition(row["prompt"], goal=g, spec=spec, tokenizer=tokenizer)}

    return pairs.map(cond)


def mean_rejected_logp(model, tokenizer, pairs, batch_size: int = 32) -> float:
    """Mean over pairs of log pi(rejected | prompt) (sum over response tokens)."""

    was_training = model.training
    model.eval()
    try:
        scored = score_logps(model, tokenizer, pairs, batch_size=batch_size, progress=False)
    finally:
        model.train(was_training)
    vals = [v for v in scored[R.LOGPS_REJECTED] if v is not None]
    return statistics.fmean(vals) if vals else float("nan")


def rejected_logp_probe(pairs, tokenizer, *, spec=None, goal="own", batch_size: int = 32) -> Callable:
    """A probe fn(model) -> mean log-prob of the rejected responses of `pairs` (for train_dpo's probes).

    The pairs are tokenized once, here, with `score_logps`'s own defaults (a probe is called at
    every logging step; rendering the chat template again each time cost more than the forward
    pass on small models). Rows those defaults cannot encode are left out, as `score_logps`
    leaves them out of the mean."""

    probe_pairs = condition_pairs(pairs, spec, goal, tokenizer) if spec is not None else pairs
    encoded = encode_pairs(probe_pairs, tokenizer)

    def probe(model) -> float:
        return mean_rejected_logp(model, tokenizer, encoded, batch_size=batch_size)

    return probe


@dataclass(frozen=True)
class UnlearningOptions:
    """The probe's options (also `prefkit eval unlearning`'s): threshold (minimum score_rejected),
    limit and seed (a seeded sample of at most `limit` pairs), goal ('own', a number or None) and
    conditioning ('auto': the model directory's spec; None: off), batch_size, max_length, progress."""

    threshold: float = 5.0
    limit: int | None = None
    seed: int = 0
    goal: object = "own"
    conditioning: object = "auto"
    batch_size: int = 16
    max_length: int | None = 1024
    progress: bool = True


def unlearning_probe(model, pairs, options: UnlearningOptions | None = None, *, tokenizer=None, **overrides) -> dict:
    """The probe as a one-off measurement (`prefkit eval unlearning MODEL PAIRS`); options: an
    `UnlearningOptions` (its fields may also be given as keywords, which override it).

    model: a directory, hub id, .gguf file or shortcut (loaded through prefkit.models), or a
    loaded model with `tokenizer`. pairs: a canonical PAIRS dataset or a path `prefkit.data.read`
    understands, with `score_rejected`. A model directory holding `prefkit_conditioning.json` (a
    reward-augmented model) is probed with each prompt conditioned on `goal`: 'own' (the rejected
    response's own score, under which it is the right answer) or a number; goal=None or
    conditioning=None probes unconditioned. Returns {mean_rejected_logp, mean_rejected_logp_per_token,
    pairs, pairs_total, skipped, threshold, conditioned, goal, model}; rows the scorer cannot
    score are counted in `skipped` by reason."""

    o = replace(options if options is not None else UnlearningOptions(), **overrides)
    threshold, limit, seed, goal, conditioning = o.threshold, o.limit, o.seed, o.goal, o.conditioning
    batch_size, max_length, progress = o.batch_size, o.max_length, o.progress
    if not hasattr(pairs, "column_names"):

        pairs = read(pairs)
    if R.kind_of(pairs.column_names) != "pairs":
        raise ConfigError("the unlearning probe needs preference pairs (prompt, chosen, rejected)")
    if R.SCORE_REJECTED not in pairs.column_names or all(v is None for v in pairs[R.SCORE_REJECTED]):
        raise ConfigError(f"the unlearning probe needs the field '{R.SCORE_REJECTED}' (the rejected response's "
                          "judge score) to pick the high-quality rejected responses; score the pairs first "
                          "(prefkit score)")
    name = str(model) if isinstance(model, (str, os.PathLike)) else getattr(model, "name_or_path", type(model).__name__)
    spec = resolve_conditioning(model, conditioning)
    hq = high_quality_rejected(pairs, threshold=threshold, limit=limit, seed=seed)
    out = {"model": name, "pairs_total": len(pairs), "pairs": len(hq), "threshold": threshold,
           "conditioned": spec is not None and goal is not None, "goal": goal if spec is not None else None,
           "mean_rejected_logp": None, "mean_rejected_logp_per_token": None, "skipped": {}}
    if not len(hq):
        return out
    lm, tok = load_causal_lm(model, tokenizer)
    probe_pairs = condition_pairs(hq, spec, goal, tok) if out["conditioned"] else hq
    report = StageReport("unlearning probe")
    scored = score_logps(lm, tok, probe_pairs, batch_size=batch_size, max_length=max_length, progress=progress,
                         report=report)
    vals = [(v, n) for v, n in zip(scored["logps_rejected"], scored["len_rejected"]) if v is not None]
    out["skipped"] = dict(report.dropped)
    out["scored"] = len(vals)
    if vals:
        out["mean_rejected_logp"] = statistics.fmean(v for v, _ in vals)
        out["mean_rejected_logp_per_token"] = sum(v for v, _ in vals) / max(1, sum(n for _, n in vals))
    return out
