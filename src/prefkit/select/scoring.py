"""Scoring a preference set for selection, in two streaming passes.

Pass 1 walks the pairs in chunks (`chunk_size` rows): it reads the explicit scores, takes the
policy's (and reference's) sequence log-probs from the row cache or computes the missing ones
with `prefkit.logprobs.score_logps`, writes the raw margin columns to an
on-disk Arrow file, and accumulates streaming mean / variance of the margins.

Pass 2 reads that file back chunk by chunk, standardises the margins with the dataset-wide
statistics and writes every metric column. Only these float columns are ever materialised;
prompts and responses stay in the (memory-mapped) input dataset.

Columns written (one row per pair, aligned with the input):
  explicit_margin           score_chosen - score_rejected
  policy_logps_chosen / policy_logps_rejected, len_chosen / len_rejected   (with a model)
  implicit_margin           mean_t log pi(y_w) - mean_t log pi(y_l)  (signed)
  abs_implicit_margin       |implicit_margin|
  z_explicit_margin, z_abs_implicit_margin
  alignment_potential       z(m_e) - w z(|m_i|)                (authors' code form)
  alignment_potential_paper |m_e| - |m_i|                      (paper's raw form)
  reference_logps_chosen / reference_logps_rejected, dpo_implicit_margin,
  z_abs_dpo_implicit_margin, dpo_alignment_potential            (with a reference model)
  random_score              seeded uniform(0, 1)
  scorable                  False for rows skipped with on_invalid="drop" (metrics are NaN)
"""

from __future__ import annotations

import math
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from prefkit.data import binarize
from prefkit.data import records as R
from prefkit.errors import ConfigError, DataError
from prefkit.report import StageReport, progress_enabled
from prefkit.select import metrics as M
from prefkit.select.cache import LogpCache, model_identity, row_key, tokenizer_identity
from prefkit.select.options import SelectOptions

POLICY_COLUMNS = (R.POLICY_LOGPS_CHOSEN, R.POLICY_LOGPS_REJECTED, R.LEN_CHOSEN, R.LEN_REJECTED)
REFERENCE_COLUMNS = (R.REFERENCE_LOGPS_CHOSEN, R.REFERENCE_LOGPS_REJECTED)
# score_logps's output column -> the column select writes (data/records.py, LOG-PROBS)
_FROM_SCORE_LOGPS = {R.LOGPS_CHOSEN: R.POLICY_LOGPS_CHOSEN, R.LOGPS_REJECTED: R.POLICY_LOGPS_REJECTED,
                     R.LEN_CHOSEN: R.LEN_CHOSEN, R.LEN_REJECTED: R.LEN_REJECTED}
_FROM_SCORE_LOGPS_REF = {R.REF_LOGPS_CHOSEN: R.REFERENCE_LOGPS_CHOSEN, R.REF_LOGPS_REJECTED: R.REFERENCE_LOGPS_REJECTED}
METRIC_COLUMNS = (
    "explicit_margin", *POLICY_COLUMNS, "implicit_margin", "abs_implicit_margin", *REFERENCE_COLUMNS,
    "dpo_implicit_margin", "z_explicit_margin", "z_abs_implicit_margin", "z_abs_dpo_implicit_margin",
    "alignment_potential", "alignment_potential_paper", "dpo_alignment_potential", "random_score", "scorable",
)


@dataclass
class Scored:
    """A scored preference set: `dataset` = the pairs plus every metric column.

    `stats` holds the streaming moments of each standardised margin (n, mean, std, min, max);
    `report` counts what was skipped; `has_policy` / `has_reference` say which columns exist.
    """

    dataset: object
    stats: dict
    report: StageReport
    has_policy: bool
    has_reference: bool
    weight: float
    beta: float | None
    work_dir: str | None = None
    notes: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.dataset)


def _call_score_logps(model, tokenizer, pairs: list[dict], reference, batch_size: int, score_kwargs: dict):
    """Score one chunk with prefkit.logprobs.score_logps; returns {column: array} aligned with
    `pairs`, NaN where the scorer dropped a row (e.g. a prompt that fills the whole max_length)."""
    from datasets import Dataset  # noqa: PLC0415  heavy (datasets): lazy, so importing this module stays light

    rows = [{R.PROMPT: p[R.PROMPT], R.CHOSEN: p[R.CHOSEN], R.REJECTED: p[R.REJECTED], "_select_row": i}
            for i, p in enumerate(pairs)]
    ds = Dataset.from_list(rows)
    kwargs = {"progress": False, **score_kwargs}
    if reference is not None:
        kwargs["reference"] = reference
    import datasets  # noqa: PLC0415  heavy (datasets): lazy, so importing this module stays light

    # our own bar covers the whole pass; silence the per-chunk tokenizing bars of `datasets`
    bars_were_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    from prefkit import logprobs  # noqa: PLC0415  torch: scoring only (metrics, plots, selection over a scored file need none)

    try:
        out = logprobs.score_logps(model, tokenizer, ds, batch_size=batch_size, **kwargs)
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()
    n = len(pairs)
    result = {c: np.full(n, np.nan) for c in POLICY_COLUMNS + (REFERENCE_COLUMNS if reference is not None else ())}
    idx = np.asarray(out["_select_row"], dtype=np.int64)
    names = {**_FROM_SCORE_LOGPS, **(_FROM_SCORE_LOGPS_REF if reference is not None else {})}
    for theirs, ours in names.items():
        result[ours][idx] = np.asarray(out[theirs], dtype=np.float64)
    return result


def _scores_of(table, fld: str, row0: int, file, on_invalid: str, report: StageReport) -> np.ndarray:
    """The column as float64 with NaN where unusable; raises (or counts, with on_invalid='drop')
    at missing, NaN and infinite values, naming the first bad row."""
    import pyarrow.compute as pc  # noqa: PLC0415  heavy (pyarrow): lazy, so importing this module stays light

    col = table.column(fld)
    try:
        values = pc.cast(col, "float64").to_numpy(zero_copy_only=False).astype(np.float64)
    except Exception as exc:
        raise DataError(f"is not numeric ({col.type}); selection needs explicit scores as numbers",
                        file=file, field=fld) from exc
    null = col.is_null().to_numpy(zero_copy_only=False)
    problems = (("is missing", null), ("is NaN", np.isnan(values) & ~null), ("is infinite", np.isinf(values)))
    for problem, mask in problems:
        if not mask.any():
            continue
        bad = np.flatnonzero(mask)
        if on_invalid != "drop":
            raise DataError(f"{problem}; selection needs a finite {fld} for every pair", file=file,
                            row=row0 + int(bad[0]), field=fld)
    values = values.copy()
    values[null | ~np.isfinite(values)] = np.nan
    return values


def _count_bad_scores(sc, sr, row0, report) -> np.ndarray:
    """Rows with an unusable score, each counted once (by its first bad field)."""
    bad_c, bad_r = np.isnan(sc), np.isnan(sr) & ~np.isnan(sc)
    for mask, fld in ((bad_c, R.SCORE_CHOSEN), (bad_r, R.SCORE_REJECTED)):
        idx = np.flatnonzero(mask)
        if idx.size:
            report.drop(f"{fld} missing, NaN or infinite", int(idx.size), example=f"row {row0 + int(idx[0])}")
    return bad_c | bad_r


def score_margins(dataset, options: SelectOptions | None = None, *, model=None, tokenizer=None, reference=None,
                  need_policy: bool = True, report: StageReport | None = None, file: str | None = None,
                  model_id: dict | str | None = None, reference_id: dict | str | None = None,
                  **overrides) -> Scored:
    """Compute every selection metric for a PAIRS (or MULTI) dataset; see the module docstring.

    options: a `SelectOptions` (its scoring fields: beta, weight, batch_size, chunk_size,
    cache_dir, score_kwargs, seed, work_dir, on_invalid, progress), or its fields as keywords.
    MULTI rows are first paired max score against min score (`prefkit.data.binarize`,
    method "best-vs-worst": ties dropped and counted; a NaN score is an error).
    `model`/`tokenizer` are needed unless `need_policy=False` (explicit and random metrics);
    `reference` adds the DPO-form implicit margin with `beta`. `cache_dir` turns on the row
    cache (resumable scoring); `model_id` / `reference_id` name the models in its key (default:
    their identity). `work_dir` keeps the metric table on disk memory-mapped there (datasets
    larger than memory); without it the float columns are loaded into memory and the temporary
    files removed. `file` names the input in errors.
    """
    from datasets import Dataset, concatenate_datasets  # noqa: PLC0415  heavy (datasets): lazy, so importing this module stays light
    o = SelectOptions.of(options, **overrides)
    on_invalid, work_dir, cache_dir = o.on_invalid, o.work_dir, o.cache_dir
    report = report if report is not None else StageReport("select")
    kind = R.kind_of(dataset.column_names)
    if kind == "multi":
        # the authors' pairing: max score against min score per prompt (ties dropped, counted)
        if on_invalid == "error":
            _check_multi_scores(dataset, file)
        n_multi = len(dataset)
        dataset = binarize(dataset, method="best-vs-worst", ties="drop", report=report)
        report.rows_in = n_multi
        report.notes["multi rows paired max vs min"] = len(dataset)
    elif kind != "pairs":
        raise DataError(f"expected preference pairs (prompt, chosen, rejected) or multi-response rows "
                        f"(prompt, responses); got columns {dataset.column_names}", file=file)
    for col in (R.PROMPT, R.SCORE_CHOSEN, R.SCORE_REJECTED):
        if col not in dataset.column_names:
            raise DataError(f"selection needs column '{col}' (explicit scores from a judge or reward model; "
                            "see `prefkit score`)", file=file, field=col)
    if need_policy and (model is None or tokenizer is None):
        raise ConfigError("this metric needs a model and its tokenizer (the policy about to be trained)")
    score_kwargs = dict(o.score_kwargs or {})

    cache = ref_cache = None
    if need_policy and cache_dir is not None:
        settings = {"score_kwargs": score_kwargs, "tokenizer": tokenizer_identity(tokenizer)}
        mid = model_id if model_id is not None else model_identity(model)
        cache = LogpCache(cache_dir, {"model": mid, **settings}, POLICY_COLUMNS)
        if reference is not None:
            rid = reference_id if reference_id is not None else model_identity(reference)
            ref_cache = LogpCache(cache_dir, {"model": rid, **settings, "role": "reference"},
                                  ("len_chosen", "len_rejected") + REFERENCE_COLUMNS)

    own_work = work_dir is None
    work = Path(tempfile.mkdtemp(prefix="prefkit-select-")) if own_work else Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    try:
        raw_path = work / "pass1.arrow"
        moments = {"explicit_margin": M.RunningMoments(), "abs_implicit_margin": M.RunningMoments(),
                   "abs_dpo_implicit_margin": M.RunningMoments()}
        counts = {"cached": 0, "scored": 0}
        n = len(dataset)
        bar = tqdm(total=n, desc="select: scoring pairs", unit="pair", disable=not progress_enabled(o.progress), dynamic_ncols=True)
        writer = sink = None
        row0 = 0
        try:
            # only the columns the metrics read; texts are converted to Python only for the model
            needed = [R.SCORE_CHOSEN, R.SCORE_REJECTED] + ([R.PROMPT, R.CHOSEN, R.REJECTED] if need_policy else [])
            ctx = _Pass1(model, tokenizer, reference, need_policy, o.beta, o.batch_size, score_kwargs, cache,
                         ref_cache, counts, on_invalid, report, file)
            for table in dataset.select_columns(needed).with_format("arrow").iter(batch_size=o.chunk_size):
                cols = _pass1_chunk(table, row0, ctx)
                n_rows = table.num_rows
                for name, mom in moments.items():
                    if name in cols:
                        mom.update(cols[name][cols["scorable"]])
                table = pa.table({k: pa.array(v) for k, v in cols.items()})
                if writer is None:
                    sink = pa.OSFile(str(raw_path), "wb")
                    writer = pa.ipc.new_stream(sink, table.schema)
                writer.write_table(table)
                row0 += n_rows
                bar.update(n_rows)
                bar.set_postfix(cached=counts["cached"], scored=counts["scored"], refresh=False)
        finally:
            bar.close()
            if writer is not None:
                writer.close()
            if sink is not None:
                sink.close()

        stats = {"explicit_margin": moments["explicit_margin"].to_dict()}
        if need_policy:
            stats["abs_implicit_margin"] = moments["abs_implicit_margin"].to_dict()
        if reference is not None:
            stats["abs_dpo_implicit_margin"] = moments["abs_dpo_implicit_margin"].to_dict()
        for name, st in stats.items():
            if st["n"] > 0 and st["std"] == 0.0:
                report.notes[f"{name} constant"] = (f"{name} is {st['min']:g} for every pair: its z-score is 0, "
                                                    "so it does not affect the ranking")

        metrics_path = work / "metrics.arrow"
        _pass2(raw_path, metrics_path, stats, o.weight, o.seed, need_policy, reference is not None, o.progress, n)
        metrics_ds = Dataset.from_file(str(metrics_path)) if n else None
        if metrics_ds is not None and own_work:
            metrics_ds = Dataset.from_dict(metrics_ds.to_dict(), features=metrics_ds.features)
        base = dataset.remove_columns([c for c in dataset.column_names if c in METRIC_COLUMNS or c == "selection_score"])
        full = concatenate_datasets([base, metrics_ds], axis=1) if metrics_ds is not None else base
    finally:
        if own_work:
            shutil.rmtree(work, ignore_errors=True)
    report.rows_in = report.rows_in or n
    report.notes["pairs scored from cache"] = counts["cached"]
    report.notes["pairs scored by the model"] = counts["scored"]
    return Scored(dataset=full, stats=stats, report=report, has_policy=need_policy,
                  has_reference=reference is not None, weight=o.weight, beta=o.beta if reference is not None else None,
                  work_dir=None if own_work else str(work))


def _check_multi_scores(dataset, file) -> None:
    """A NaN response score is an error naming the row and the field (missing scores are merely
    skipped by the pairing and counted)."""
    import pyarrow.compute as pc  # noqa: PLC0415  heavy (pyarrow): lazy, so importing this module stays light

    for start in range(0, len(dataset), 10000):
        resp = dataset.with_format("arrow")[start:start + 10000].column(R.RESPONSES).combine_chunks()
        scores = pc.list_flatten(resp).field("score").to_numpy(zero_copy_only=False).astype(np.float64)
        bad = np.flatnonzero(np.isnan(scores) & ~pc.is_null(pc.list_flatten(resp).field("score")).to_numpy(
            zero_copy_only=False))
        if bad.size:
            lengths = pc.fill_null(pc.list_value_length(resp), 0).to_numpy(zero_copy_only=False)
            ends = np.cumsum(lengths)
            row = int(np.searchsorted(ends, bad[0], side="right"))
            j = int(bad[0] - (ends[row] - lengths[row]))
            raise DataError("score is NaN", file=file, row=start + row, field=f"responses[{j}].score")


@dataclass
class _Pass1:
    """What pass 1 needs for every chunk: the models, the scoring settings, the caches, the
    running counts and where drops and errors are reported."""

    model: Any
    tokenizer: Any
    reference: Any
    need_policy: bool
    beta: float
    batch_size: int
    score_kwargs: dict
    cache: LogpCache | None
    ref_cache: LogpCache | None
    counts: dict
    on_invalid: str
    report: StageReport
    file: str | None


def _pass1_chunk(table, row0: int, ctx: _Pass1) -> dict:
    """Explicit margins and (with a policy) log-probs and implicit margins of one chunk."""
    reference, on_invalid, report, file = ctx.reference, ctx.on_invalid, ctx.report, ctx.file
    n = table.num_rows
    sc = _scores_of(table, R.SCORE_CHOSEN, row0, file, on_invalid, report)
    sr = _scores_of(table, R.SCORE_REJECTED, row0, file, on_invalid, report)
    scorable = ~_count_bad_scores(sc, sr, row0, report)
    explicit = M.explicit_margin(sc, sr)
    rows = table.select([R.PROMPT, R.CHOSEN, R.REJECTED]).to_pylist() if ctx.need_policy else None
    cols: dict = {"explicit_margin": explicit}
    if ctx.need_policy:
        pol = _logps_for_chunk(rows, scorable, ctx)
        for i in range(n):
            if not scorable[i]:
                continue
            for c in pol:
                if math.isnan(pol[c][i]):
                    if on_invalid == "drop":
                        report.drop("not scorable by the model (dropped by tokenization/truncation or NaN "
                                    "log-prob)", 1, example=f"row {row0 + i}")
                        scorable[i] = False
                        break
                    raise DataError(f"{c} is NaN (the model gave no finite log-probability, or the scorer "
                                    "dropped the pair, e.g. a prompt longer than max_length)",
                                    file=file, row=row0 + i, field=c)
            else:
                for side in ("len_chosen", "len_rejected"):
                    if pol[side][i] <= 0:
                        if on_invalid == "drop":
                            report.drop("response has no tokens after truncation", 1, example=f"row {row0 + i}")
                            scorable[i] = False
                            break
                        raise DataError("response has no tokens after truncation (no per-token mean log-prob)",
                                        file=file, row=row0 + i, field=side.replace("len_", ""))
        cols.update(pol)
        im = M.length_normalised_margin(pol["policy_logps_chosen"], pol["policy_logps_rejected"],
                                        np.where(scorable, pol["len_chosen"], 1.0),
                                        np.where(scorable, pol["len_rejected"], 1.0))
        im[~scorable] = np.nan
        cols["implicit_margin"] = im
        cols["abs_implicit_margin"] = np.abs(im)
        if reference is not None:
            dm = M.dpo_implicit_margin(pol["policy_logps_chosen"], pol["policy_logps_rejected"],
                                       pol["reference_logps_chosen"], pol["reference_logps_rejected"], ctx.beta)
            dm[~scorable] = np.nan
            cols["dpo_implicit_margin"] = dm
            cols["abs_dpo_implicit_margin"] = np.abs(dm)
    explicit[~scorable] = np.nan
    cols["scorable"] = scorable
    return cols


def _logps_for_chunk(rows, scorable, ctx: _Pass1) -> dict:
    """Policy (and reference) log-probs for a chunk: cached rows from the cache, the rest scored in
    one call and written to the cache as one shard before anything else happens."""
    reference, cache, ref_cache, counts = ctx.reference, ctx.cache, ctx.ref_cache, ctx.counts
    n = len(rows)
    names = POLICY_COLUMNS + (REFERENCE_COLUMNS if reference is not None else ())
    out = {c: np.full(n, np.nan) for c in names}
    keys = [row_key(r[R.PROMPT], r[R.CHOSEN], r[R.REJECTED]) for r in rows]
    todo = []
    for i, k in enumerate(keys):
        if not scorable[i]:
            continue
        hit = cache.get(k) if cache is not None else None
        ref_hit = ref_cache.get(k) if (ref_cache is not None) else None
        if hit is not None and (reference is None or ref_hit is not None):
            for c, v in zip(POLICY_COLUMNS, hit):
                out[c][i] = v
            if reference is not None:
                out["reference_logps_chosen"][i], out["reference_logps_rejected"][i] = ref_hit[2], ref_hit[3]
            counts["cached"] += 1
        else:
            todo.append(i)
    if todo:
        res = _call_score_logps(ctx.model, ctx.tokenizer, [rows[i] for i in todo], reference, ctx.batch_size,
                                ctx.score_kwargs)
        for c in names:
            out[c][todo] = res[c]
        counts["scored"] += len(todo)
        done_keys = [keys[i] for i in todo]
        if cache is not None:
            cache.put_many(done_keys, {c: res[c] for c in POLICY_COLUMNS})
        if ref_cache is not None:
            ref_cache.put_many(done_keys, {c: res[c] for c in ("len_chosen", "len_rejected") + REFERENCE_COLUMNS})
    return out


def _pass2(raw_path, metrics_path, stats, weight, seed, has_policy, has_reference, progress, n):
    import pyarrow as pa  # noqa: PLC0415  heavy (pyarrow): lazy, so importing this module stays light
    if n == 0:
        return
    rng = np.random.default_rng(seed)
    st_e = stats["explicit_margin"]
    bar = tqdm(total=n, desc="select: ranking", unit="pair", disable=not progress_enabled(progress), dynamic_ncols=True)
    with pa.memory_map(str(raw_path), "r") as src, pa.OSFile(str(metrics_path), "wb") as sink:
        reader = pa.ipc.open_stream(src)
        writer = None
        for rb in reader:
            cols = {name: rb.column(name).to_numpy(zero_copy_only=False) for name in rb.schema.names}
            ok = cols["scorable"].astype(bool)
            out = {"explicit_margin": cols["explicit_margin"]}
            z_e = M.zscore(cols["explicit_margin"], st_e["mean"], st_e["std"])
            if has_policy:
                st_i = stats["abs_implicit_margin"]
                for c in POLICY_COLUMNS + ("implicit_margin", "abs_implicit_margin"):
                    out[c] = cols[c]
                z_i = M.zscore(cols["abs_implicit_margin"], st_i["mean"], st_i["std"])
                out["z_explicit_margin"] = z_e
                out["z_abs_implicit_margin"] = z_i
                out["alignment_potential"] = M.alignment_potential(z_e, z_i, weight)
                out["alignment_potential_paper"] = M.alignment_potential_paper(cols["explicit_margin"],
                                                                               cols["implicit_margin"])
                if has_reference:
                    st_d = stats["abs_dpo_implicit_margin"]
                    for c in REFERENCE_COLUMNS + ("dpo_implicit_margin",):
                        out[c] = cols[c]
                    z_d = M.zscore(cols["abs_dpo_implicit_margin"], st_d["mean"], st_d["std"])
                    out["z_abs_dpo_implicit_margin"] = z_d
                    out["dpo_alignment_potential"] = M.alignment_potential(z_e, z_d, weight)
            else:
                out["z_explicit_margin"] = z_e
            out["random_score"] = rng.random(len(ok))
            for k, v in out.items():
                if v.dtype.kind == "f":
                    v = v.copy()
                    v[~ok] = np.nan
                    out[k] = v
            out["scorable"] = ok
            table = pa.table({k: pa.array(v) for k, v in out.items()})
            if writer is None:
                writer = pa.ipc.new_stream(sink, table.schema)
            writer.write_table(table)
            bar.update(len(ok))
        if writer is not None:
            writer.close()
    bar.close()
