"""Keep the top fraction (or top k) of a preference set by a selection metric.

`select` scores (or reuses a `Scored` table), ranks by the metric and returns the kept rows with
every metric column plus `selection_score`. Every metric keeps the same number of rows for the
same data and fraction (floor(fraction * scorable pairs), as the authors' code does), so
comparisons between metrics are at an equal budget.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from prefkit.data import write
from prefkit.errors import ConfigError
from prefkit.models import load_causal_lm
from prefkit.report import StageReport
from prefkit.select import metrics as M
from prefkit.select.options import SelectOptions
from prefkit.select.plot import plot_margins
from prefkit.select.relabeled import expand_to_halves, is_relabeled, representatives
from prefkit.select.scoring import Scored, score_margins


def _check_budget(fraction, top_k) -> None:
    if top_k is not None:
        if int(top_k) != top_k or top_k < 0:
            raise ConfigError(f"top_k must be a non-negative integer, not {top_k!r}")
    elif fraction is None or not (0.0 < float(fraction) <= 1.0):
        raise ConfigError(f"fraction must be in (0, 1], not {fraction!r}")


def selection_scores(scored: Scored, metric: str, weight: float | None = None) -> np.ndarray:
    """The per-row score `metric` ranks by (larger is kept first); -inf for unscorable rows."""
    m = M.get_metric(metric)
    weight = scored.weight if weight is None else weight
    ds = scored.dataset

    def column(name: str) -> np.ndarray:
        if name not in ds.column_names:
            raise ConfigError(f"metric {metric!r} needs column '{name}', which this scoring did not compute "
                              f"(it needs: {', '.join(sorted(m.needs)) or 'nothing'}; a model is needed for "
                              "implicit margins, a reference model for the DPO-form ones)")
        return np.asarray(ds.data.column(name).to_numpy(zero_copy_only=False), dtype=np.float64)

    s = np.asarray(m.score(column, weight), dtype=np.float64)
    if s.shape != (len(ds),):
        raise ConfigError(f"metric {metric!r} returned shape {s.shape}; expected one score per row ({len(ds)},)")
    return np.where(np.isnan(s), -np.inf, s)


def score_for(dataset, metrics, options: SelectOptions | None = None, *, model=None, tokenizer=None, reference=None,
              **kwargs) -> Scored:
    """Score once for every metric in `metrics` (loads model directories given as paths);
    `options` and `kwargs` go to `score_margins`."""
    needs = {n for name in metrics for n in M.get_metric(name).needs}
    need_policy = bool(needs & {"policy", "reference"})
    if "reference" in needs and reference is None:
        which = [name for name in metrics if "reference" in M.get_metric(name).needs]
        raise ConfigError(f"metric {which[0]!r} needs a reference model (--reference DIR)")
    if need_policy:
        model, tokenizer = load_causal_lm(model, tokenizer)
        if reference is not None:
            reference = load_causal_lm(reference, need_tokenizer=False)[0]
    else:
        reference = None
    return score_margins(dataset, options, model=model, tokenizer=tokenizer, reference=reference,
                         need_policy=need_policy, **kwargs)


def select(dataset, metric: str | None = None, options: SelectOptions | None = None, *, model=None, tokenizer=None,
           reference=None, report: StageReport | None = None, file: str | None = None, **overrides):
    """Select the most promising preference pairs; returns the kept rows with every metric column.

    dataset   PAIRS (with score_chosen / score_rejected) or MULTI rows (paired max vs min score),
              or a `Scored` from `score_margins()` / an earlier call (then nothing is rescored).
    metric    overrides options.metric: a name registered with `register_metric`; built in:
              'alignment-potential' (default; z(m_e) - weight z(|m_i|)), 'ap-paper', 'dpo-implicit'
              (needs `reference`, uses `beta`), 'explicit', 'implicit', 'random'.
    options   a `SelectOptions` (fraction or top_k, weight, beta, plot, scored_path and the scoring
              options); its fields may also be given as keywords, which override it.
    model, tokenizer   the policy about to be trained (objects or a model directory).
    file      names the input in errors.
    """
    o = SelectOptions.of(options, **overrides)
    if metric is not None:
        o = replace(o, metric=metric)
    M.get_metric(o.metric)
    _check_budget(o.fraction, o.top_k)
    if not isinstance(dataset, Scored) and is_relabeled(dataset):
        return _select_relabeled(dataset, o, model=model, tokenizer=tokenizer, reference=reference,
                                 report=report if report is not None else StageReport("select"), file=file)
    if isinstance(dataset, Scored):
        scored = dataset
        if report is not None:
            report.merge(scored.report)
    else:
        scored = score_for(dataset, [o.metric], o, model=model, tokenizer=tokenizer, reference=reference,
                           report=report, file=file)
    return _keep(scored, o.metric, o.fraction, o.top_k, o.weight, o.plot, o.scored_path, report or scored.report)


def _select_relabeled(dataset, o: SelectOptions, *, model, tokenizer, reference, report: StageReport, file):
    """Reward-augmented input: rank one row per original pair, keep both halves of each kept pair
    (prefkit.select.relabeled; docs/select.md, "Relabeled input")."""
    reps, ids = representatives(dataset)
    scored = score_for(reps, [o.metric], o, model=model, tokenizer=tokenizer, reference=reference,
                       report=report, file=file)
    pair_report = StageReport("select")
    kept = _keep(scored, o.metric, o.fraction, o.top_k, o.weight, o.plot, o.scored_path, pair_report)
    added = [c for c in kept.column_names if c not in dataset.column_names or c == "selection_score"]
    out = expand_to_halves(dataset, ids, kept, added)
    report.notes.update(pair_report.notes)
    report.notes["relabeled input"] = (f"selected whole pairs: {len(kept)} of {len(reps)} original pairs, "
                                       "ranked on the pair as it was before relabeling (D^w and D^l rows together)")
    report.rows_in = len(dataset)
    report.rows_out = len(out)
    report.drop(f"not selected (rows of pairs with {o.metric} below the top {len(kept)})", len(dataset) - len(out))
    return out


def _keep(scored: Scored, metric, fraction, top_k, weight, plot, scored_path, report: StageReport):
    s = selection_scores(scored, metric, weight)
    n_ok = int(np.isfinite(s).sum())
    k = M.budget(n_ok, fraction, top_k)
    idx = M.top_indices(s, k)
    threshold = M.threshold_of(s[np.isfinite(s)], k)
    report.rows_in = report.rows_in or len(scored)
    report.rows_out = len(idx)
    report.drop(f"not selected ({metric} below the top {len(idx)})", n_ok - len(idx))
    report.notes.update({
        "metric": metric,
        "ranked by": M.get_metric(metric).ranked_by,
        "budget": len(idx) if top_k is not None else f"{len(idx)} = floor({fraction} x {n_ok})",
        "threshold (lowest kept score)": threshold,
        "weight": weight if M.get_metric(metric).uses_weight else None,
        "margin stats": scored.stats,
    })
    report.notes = {k2: v for k2, v in report.notes.items() if v is not None}
    ds = scored.dataset
    if "selection_score" in ds.column_names:
        ds = ds.remove_columns("selection_score")
    # unscorable rows (skipped with on_invalid="skip") rank at -inf and show as NaN
    ds = ds.add_column("selection_score", np.where(np.isfinite(s), s, np.nan).tolist())
    if scored_path is not None:

        selected = np.zeros(len(ds), dtype=bool)
        selected[idx] = True
        write(ds.add_column("selected", selected.tolist()), scored_path)
    out = ds.select(idx)
    if plot is not None:

        plot_margins(scored, plot, metric=metric, scores=s, selected=idx, threshold=threshold, weight=weight)
    return out


def selection_ablation(dataset, model=None, tokenizer=None, fraction: float | None = None, *,
                       metrics=(M.ALIGNMENT_POTENTIAL, M.EXPLICIT, M.IMPLICIT, M.RANDOM),
                       options: SelectOptions | None = None, reference=None, **overrides) -> dict:
    """One scoring pass, then each metric's selection at the same budget: {metric: Dataset}.

    For the toy-world ablation: alignment potential against explicit margin, implicit margin
    and random, each keeping exactly the same number of rows. `fraction` (default 0.4) overrides
    options.fraction; the other options as for `select` (metric, plot and scored_path unused).
    """
    o = SelectOptions.of(options, **overrides)
    if fraction is not None:
        o = replace(o, fraction=fraction)
    _check_budget(o.fraction, o.top_k)
    scored = score_for(dataset, list(metrics), o, model=model, tokenizer=tokenizer, reference=reference)
    out = {}
    for m in metrics:
        out[m] = _keep(scored, m, o.fraction, o.top_k, o.weight, None, None, StageReport(f"select:{m}"))
    return out
