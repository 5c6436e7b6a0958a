"""MULTI rows (several scored responses per prompt) to the pair the selection scores.

The authors' code pairs the highest-scored response (chosen) against the lowest-scored one
(rejected), so the explicit margin is max - min. Ties are handled explicitly and counted:

- a prompt whose responses all share one score has no preference: dropped ("all responses tie");
- several responses sharing the top (or bottom) score: the first of them in list order is used
  and the prompt is counted under "tied best/worst, first taken" (nothing is dropped);
- responses with no score are skipped (counted); fewer than two scored responses: dropped;
- a NaN score is an error naming the row and the field.
"""

from __future__ import annotations

import math

from prefkit.data import records as R
from prefkit.errors import DataError
from prefkit.report import StageReport


def _as_response(prompt, text):
    """Conversational prompts get assistant-message responses (TRL's conversational format)."""
    if R.is_conversational(prompt):
        return [{"role": "assistant", "content": text}]
    return text


def pair_best_worst_row(row: dict, index: int, report: StageReport | None = None,
                        file: str | None = None) -> dict | None:
    """One MULTI row -> one PAIRS row (chosen = max score, rejected = min score), or None if dropped."""
    responses = row.get(R.RESPONSES) or []
    scored = []
    for j, resp in enumerate(responses):
        score = (resp or {}).get("score")
        if score is None:
            if report is not None:
                report.drop("response without a score skipped", 1, example=f"row {index} response {j}")
            continue
        score = float(score)
        if math.isnan(score):
            raise DataError("score is NaN", file=file, row=index, field=f"responses[{j}].score")
        scored.append((j, score))
    if len(scored) < 2:
        if report is not None:
            report.drop("fewer than two scored responses", 1, example=f"row {index}")
        return None
    best_score = max(s for _, s in scored)
    worst_score = min(s for _, s in scored)
    if best_score == worst_score:
        if report is not None:
            report.drop("all responses tie (no preference)", 1, example=f"row {index}")
        return None
    best = [j for j, s in scored if s == best_score]
    worst = [j for j, s in scored if s == worst_score]
    if report is not None and (len(best) > 1 or len(worst) > 1):
        report.notes["tied best/worst, first taken"] = report.notes.get("tied best/worst, first taken", 0) + 1
    bj, wj = best[0], worst[0]
    prompt = row[R.PROMPT]
    out = {k: v for k, v in row.items() if k != R.RESPONSES}  # extra columns travel along
    out.update({
        R.PROMPT: prompt,
        R.CHOSEN: _as_response(prompt, responses[bj]["text"]),
        R.REJECTED: _as_response(prompt, responses[wj]["text"]),
        R.SCORE_CHOSEN: best_score,
        R.SCORE_REJECTED: worst_score,
        R.PROMPT_ID: row.get(R.PROMPT_ID),
        R.PAIR_ID: f"{row.get(R.PROMPT_ID) or index}:{bj}-{wj}",
        R.SOURCE_ROW: row.get(R.SOURCE_ROW, index),
        R.SOURCE: row.get(R.SOURCE),
    })
    return out


def pair_best_worst(dataset, report: StageReport | None = None, file: str | None = None):
    """A MULTI `datasets.Dataset` -> PAIRS (max vs min score per prompt), streaming in batches."""
    state = {"i": 0}
    keys = list(_PAIR_KEYS) + [c for c in dataset.column_names if c not in _PAIR_KEYS and c != R.RESPONSES]

    def pair_batch(batch):
        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        out = {k: [] for k in keys}
        for row in rows:
            paired = pair_best_worst_row(row, state["i"], report, file)
            state["i"] += 1
            if paired is not None:
                for k in keys:
                    out[k].append(paired.get(k))
        return out

    # Never served from the datasets cache: the report must see every row.
    out = dataset.map(pair_batch, batched=True, batch_size=1000, remove_columns=dataset.column_names,
                      load_from_cache_file=False, desc="pairing max vs min")
    if report is not None:
        report.notes["multi rows paired max vs min"] = len(out)
    return out


_PAIR_KEYS = (R.PROMPT, R.CHOSEN, R.REJECTED, R.SCORE_CHOSEN, R.SCORE_REJECTED, R.PROMPT_ID, R.PAIR_ID,
              R.SOURCE_ROW, R.SOURCE)
