"""Multi-response rows (MULTI) to preference pairs (PAIRS).

Methods
  published      the UltraFeedback recipe used by Zhang et al. (docs/methods.md section 1): per prompt,
                 responses with an 'N/A' aspect rating or no overall score are skipped; chosen = the
                 highest overall score (the first one in file order when several share it);
                 rejected = a uniformly random other remaining response, drawn with
                 `random.Random(seed).choice` over the prompts in file order (one draw per prompt
                 that has at least two eligible responses, after the TruthfulQA drop).
  best-vs-worst  chosen = highest score, rejected = lowest score among the others.
  all-pairs      every pair of eligible responses, the higher score as chosen.

Ties (equal overall scores in a pair) are always counted (`report.notes["ties"]`); by default
they are dropped, with ties="keep" the earlier response in file order is `chosen`.
Options: drop_truthfulqa removes prompts whose source is TruthfulQA, and truthfulqa_prompts (a
list of TruthfulQA questions, see `truthfulqa_prompt_set`) also removes prompts of any other source
whose text is one of them (it implies drop_truthfulqa); fine_grained_filter keeps
only pairs whose mean fine-grained rating of chosen >= that of rejected (pairs where either is
missing are dropped and counted).

The work is done on Arrow columns (scores, flags and index arrays); response texts are gathered
with `take`, never converted to Python objects, so ~60k prompts binarize in about a second.
"""

from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path

from prefkit.data import records as R
from prefkit.data.adapters import make_pair_id
from prefkit.errors import ConfigError, DataError, MissingInputError
from prefkit.report import StageReport

METHODS = ("published", "best-vs-worst", "all-pairs")

DROP_TRUTHFULQA = "prompt: TruthfulQA source (drop_truthfulqa)"
DROP_TRUTHFULQA_LISTED = "prompt: listed in truthfulqa_prompts (drop_truthfulqa)"
DROP_FEW = "prompt: fewer than 2 eligible responses"
SKIP_NA = "response: an 'N/A' aspect rating (skipped)"
SKIP_UNSCORED = "response: no overall score (skipped)"
DROP_TIE = "pair: tie (equal overall scores)"
DROP_IDENTICAL = "pair: chosen equals rejected (two completions with the same text)"
DROP_FG_MISSING = "pair: fine-grained rating missing (fine_grained_filter)"
DROP_FG_LOWER = "pair: chosen's fine-grained rating below rejected's (fine_grained_filter)"


def is_truthfulqa(source) -> bool:
    return source is not None and "truthful" in source.lower().replace("_", "").replace("-", "")


def prompt_match_key(prompt) -> str:
    """The text a prompt is matched on against a prompt list: a string prompt, or the first user
    turn of a conversation; whitespace runs collapsed, case folded."""
    if isinstance(prompt, list):
        prompt = next((m.get("content") or "" for m in prompt if isinstance(m, dict) and m.get("role") == "user"),
                      "")
    return " ".join(str(prompt or "").split()).casefold()


def truthfulqa_prompt_set(prompts) -> frozenset[str]:
    """The match keys (`prompt_match_key`) of a prompt list: a file with one prompt per line, a
    JSON lines file (.jsonl; each line a string or an object with 'prompt', 'question' or
    'instruction', as in the TruthfulQA dataset's 'question' column), or an iterable of strings."""

    if isinstance(prompts, (str, os.PathLike)):
        path = Path(os.path.expanduser(str(prompts)))
        if not path.is_file():
            raise MissingInputError("no such file (the TruthfulQA prompt list)", file=str(prompts))
        texts = []
        as_json = path.suffix.lower() in (".jsonl", ".json")
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                if not as_json:
                    texts.append(line)
                    continue
                try:
                    value = json.loads(line)
                except ValueError:
                    raise DataError("not valid JSON; expected a string or an object with a 'question' or "
                                    "'prompt' field", file=str(prompts), line=line_no) from None
                if isinstance(value, dict):
                    value = next((value[k] for k in ("prompt", "question", "instruction") if k in value), None)
                if not isinstance(value, (str, list)):
                    raise DataError("expected a string or an object with a 'question' or 'prompt' field",
                                    file=str(prompts), line=line_no, field="question")
                texts.append(value)
    else:
        texts = list(prompts)
    keys = frozenset(k for k in (prompt_match_key(t) for t in texts) if k)
    if not keys:
        raise DataError("holds no prompts; expected one TruthfulQA question per line", file=str(prompts))
    return keys


def truthfulqa_drops(prompts, sources, listed: frozenset[str] | None) -> list[str | None]:
    """Per row: the drop reason for drop_truthfulqa (TruthfulQA source, or a prompt in `listed`),
    or None to keep it. `sources` None: the data has no source column, so only a list can tell."""

    if sources is None:
        if not listed:
            raise ConfigError("drop_truthfulqa needs a 'source' column to find TruthfulQA prompts, and this data "
                              "has none; give the TruthfulQA questions (truthfulqa_prompts / --truthfulqa-prompts)")
        sources = [None] * len(prompts)
    out: list[str | None] = []
    for prompt, source in zip(prompts, sources):
        if is_truthfulqa(source):
            out.append(DROP_TRUTHFULQA)
        elif listed and prompt_match_key(prompt) in listed:
            out.append(DROP_TRUTHFULQA_LISTED)
        else:
            out.append(None)
    return out


def binarize(dataset, *, method: str = "published", seed: int = 42, ties: str = "drop",
             drop_truthfulqa: bool = False, fine_grained_filter: bool = False,
             report: StageReport | None = None, truthfulqa_prompts=None):
    """Turn a MULTI dataset (`prefkit.data.read` of UltraFeedback raw or multi-response data) into
    a PAIRS dataset with score, aspect and fine-grained columns for chosen and rejected,
    `model_chosen`/`model_rejected`, and provenance (prompt_id, source_row, source and a pair_id
    naming the two responses, e.g. `<prompt_id[:16]>-r12-0v3`). Every dropped prompt, skipped
    response and dropped pair is counted in `report` by reason."""
    import datasets  # noqa: PLC0415  heavy (datasets): lazy, so importing this module stays light
    import numpy as np  # noqa: PLC0415  heavy (numpy): lazy, so importing this module stays light
    import pyarrow as pa  # noqa: PLC0415  heavy (pyarrow): lazy, so importing this module stays light
    import pyarrow.compute as pc  # noqa: PLC0415  heavy (pyarrow): lazy, so importing this module stays light

    if method not in METHODS:
        raise ConfigError(f"unknown binarize method {method!r}; expected one of {', '.join(METHODS)}")
    if ties not in ("drop", "keep"):
        raise ConfigError(f"ties must be 'drop' or 'keep', not {ties!r}")
    if R.RESPONSES not in dataset.column_names:
        kind = R.kind_of(dataset.column_names)
        what = "already holds pairs" if kind == "pairs" else f"has columns {', '.join(dataset.column_names)}"
        raise ConfigError(f"binarize takes multi-response rows (prompt, responses); this dataset {what}")
    rep = report if report is not None else StageReport("binarize")

    table = dataset.with_format("arrow")[:]
    resp = table.column(R.RESPONSES).combine_chunks()
    n_rows = len(resp)
    lengths = pc.fill_null(pc.list_value_length(resp), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if n_rows else np.zeros(0, np.int64)
    flat = pc.list_flatten(resp)  # one entry per response, rows concatenated
    score_arr = flat.field("score")
    scores = score_arr.to_numpy(zero_copy_only=False).astype(np.float64)  # null -> nan
    fg_arr = flat.field("fine_grained")
    fg = fg_arr.to_numpy(zero_copy_only=False).astype(np.float64)
    asp_arr = flat.field("aspects")
    na = np.zeros(len(flat), dtype=bool)
    if pa.types.is_struct(asp_arr.type) and asp_arr.type.num_fields:
        present = asp_arr.is_valid().to_numpy(zero_copy_only=False)
        for k in range(asp_arr.type.num_fields):
            na |= present & asp_arr.field(k).is_null().to_numpy(zero_copy_only=False)
    unscored = np.isnan(scores)
    eligible = ~na & ~unscored
    rep.drop(SKIP_NA, int(na.sum()))
    rep.drop(SKIP_UNSCORED, int((unscored & ~na).sum()))

    has_source = R.SOURCE in table.column_names
    sources = table.column(R.SOURCE).to_pylist() if has_source else [None] * n_rows
    prompt_ids = table.column(R.PROMPT_ID).to_pylist()
    listed = truthfulqa_prompt_set(truthfulqa_prompts) if truthfulqa_prompts is not None else None
    if listed is not None or drop_truthfulqa:
        tqa = truthfulqa_drops(table.column(R.PROMPT).to_pylist() if listed else [None] * n_rows,
                               sources if has_source else None, listed)
    else:
        tqa = [None] * n_rows
    src_rows = table.column(R.SOURCE_ROW).to_pylist()

    rng = random.Random(seed)
    elig_l, score_l, fg_l = eligible.tolist(), scores.tolist(), fg.tolist()
    text_l = flat.field("text").to_pylist()
    rows_out, chosen_out, rejected_out, pair_ids = [], [], [], []
    n_ties = 0
    for r in range(n_rows):
        if tqa[r] is not None:
            rep.drop(tqa[r], 1, example=prompt_ids[r])
            continue
        s0 = int(starts[r])
        idx = [s0 + j for j in range(int(lengths[r])) if elig_l[s0 + j]]
        if len(idx) < 2:
            rep.drop(DROP_FEW, 1, example=f"source_row {src_rows[r]}")
            continue
        best = max(idx, key=lambda i: score_l[i])  # first of the maxima
        if method == "published":
            candidates = [(best, rng.choice([i for i in idx if i != best]))]
        elif method == "best-vs-worst":
            others = [i for i in idx if i != best]
            candidates = [(best, min(others, key=lambda i: score_l[i]))]
        else:
            candidates = []
            for a_pos, a in enumerate(idx):
                for b in idx[a_pos + 1:]:
                    candidates.append((b, a) if score_l[b] > score_l[a] else (a, b))
        for c, rj in candidates:
            if text_l[c] == text_l[rj]:   # two completions with the same text: no preference to learn
                rep.drop(DROP_IDENTICAL, 1, example=f"source_row {src_rows[r]}")
                continue
            if score_l[c] == score_l[rj]:
                n_ties += 1
                if ties == "drop":
                    rep.drop(DROP_TIE, 1, example=f"source_row {src_rows[r]}")
                    continue
            if fine_grained_filter:
                fc, fr = fg_l[c], fg_l[rj]
                if math.isnan(fc) or math.isnan(fr):
                    rep.drop(DROP_FG_MISSING, 1, example=f"source_row {src_rows[r]}")
                    continue
                if fc < fr:
                    rep.drop(DROP_FG_LOWER, 1, example=f"source_row {src_rows[r]}")
                    continue
            rows_out.append(r)
            chosen_out.append(c)
            rejected_out.append(rj)
            pair_ids.append(make_pair_id(prompt_ids[r], src_rows[r], f"{c - s0}v{rj - s0}"))

    rep.rows_in += n_rows
    rep.rows_out += len(rows_out)
    rep.notes["ties"] = rep.notes.get("ties", 0) + n_ties
    rep.notes.setdefault("method", method)
    rep.notes.setdefault("seed", seed)

    rows_idx = pa.array(rows_out, type=pa.int64())
    c_idx, r_idx = pa.array(chosen_out, type=pa.int64()), pa.array(rejected_out, type=pa.int64())
    prompt_col = table.column(R.PROMPT).combine_chunks()
    conversational = not pa.types.is_string(prompt_col.type) and not pa.types.is_large_string(prompt_col.type)
    texts = flat.field("text")

    def response_col(idx):
        t = texts.take(idx)
        if not conversational:
            return t
        msgs = pa.StructArray.from_arrays([pa.array(["assistant"] * len(t), pa.string()), t.cast(pa.string())],
                                          names=["role", "content"])
        return pa.ListArray.from_arrays(pa.array(np.arange(len(t) + 1, dtype=np.int32)), msgs)

    cols = {
        R.PROMPT: prompt_col.take(rows_idx),
        R.CHOSEN: response_col(c_idx),
        R.REJECTED: response_col(r_idx),
        R.SCORE_CHOSEN: score_arr.take(c_idx),
        R.SCORE_REJECTED: score_arr.take(r_idx),
    }
    if pa.types.is_struct(asp_arr.type):
        cols[R.ASPECTS_CHOSEN] = asp_arr.take(c_idx)
        cols[R.ASPECTS_REJECTED] = asp_arr.take(r_idx)
    cols[R.FINE_GRAINED_CHOSEN] = fg_arr.take(c_idx)
    cols[R.FINE_GRAINED_REJECTED] = fg_arr.take(r_idx)
    cols[R.PROMPT_ID] = table.column(R.PROMPT_ID).combine_chunks().take(rows_idx)
    cols[R.PAIR_ID] = pa.array(pair_ids, pa.string())
    cols[R.SOURCE_ROW] = table.column(R.SOURCE_ROW).combine_chunks().take(rows_idx)
    if R.SOURCE in table.column_names:
        cols[R.SOURCE] = table.column(R.SOURCE).combine_chunks().take(rows_idx)
    models = flat.field("model")
    cols["model_chosen"] = models.take(c_idx)
    cols["model_rejected"] = models.take(r_idx)
    for k in range(flat.type.num_fields):  # other per-response fields: <field>_chosen / <field>_rejected
        name = flat.type.field(k).name
        if name not in ("text", "score", "fine_grained", "aspects", "model"):
            cols[f"{name}_chosen"] = flat.field(name).take(c_idx)
            cols[f"{name}_rejected"] = flat.field(name).take(r_idx)
    for name in table.column_names:  # per-prompt columns another stage added travel along
        if name not in cols and name != R.RESPONSES:
            cols[name] = table.column(name).combine_chunks().take(rows_idx)
    return datasets.Dataset(pa.Table.from_arrays(list(cols.values()), names=list(cols)))
