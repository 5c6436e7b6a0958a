"""Describe a canonical dataset: counts, score distributions, margins, ties, response lengths and a
per-source breakdown (`stats`, `format_stats`), and PNG plots of the same (`plot_stats`)."""

from __future__ import annotations

from pathlib import Path

from prefkit.data import records as R
from prefkit.errors import ConfigError
from prefkit.models import load_tokenizer


def _np():
    import numpy as np  # noqa: PLC0415  heavy (numpy): lazy, so importing this module stays light

    return np


def summarize(values) -> dict:
    """n, mean, std, min, quartiles and max of the finite values (None where there are none)."""
    np = _np()
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if not len(v):
        return {"n": 0, "mean": None, "std": None, "min": None, "p25": None, "median": None, "p75": None,
                "max": None}
    q = np.percentile(v, [25, 50, 75])
    return {"n": int(len(v)), "mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()),
            "p25": float(q[0]), "median": float(q[1]), "p75": float(q[2]), "max": float(v.max())}


def _text_lengths(col):
    """Characters per response: a string's length, or the summed content of a message list."""
    import pyarrow as pa  # noqa: PLC0415  heavy (pyarrow): lazy, so importing this module stays light
    import pyarrow.compute as pc  # noqa: PLC0415  heavy (pyarrow): lazy, so importing this module stays light

    np = _np()
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return pc.fill_null(pc.utf8_length(col), 0).to_numpy(zero_copy_only=False).astype(np.float64)
    contents = pc.list_flatten(col).field("content")
    per_msg = pc.fill_null(pc.utf8_length(contents), 0).to_numpy(zero_copy_only=False)
    parents = pc.list_parent_indices(col).to_numpy(zero_copy_only=False)
    return np.bincount(parents, weights=per_msg, minlength=len(col)).astype(np.float64)


def _texts(col) -> list[str]:
    return ["".join(m["content"] for m in v) if isinstance(v, list) else (v or "") for v in col.to_pylist()]


def _token_lengths(col, tokenizer):
    np = _np()
    texts = _texts(col)
    out = []
    for i in range(0, len(texts), 512):
        enc = tokenizer(texts[i:i + 512], add_special_tokens=False)["input_ids"]
        out.extend(len(e) for e in enc)
    return np.asarray(out, dtype=np.float64)


def columns(dataset, tokenizer=None) -> dict:
    """The numeric columns behind the stats and plots, as numpy arrays.

    PAIRS: score_chosen, score_rejected, margin, chars_chosen, chars_rejected (+ tokens_*), source.
    MULTI: per response: score, chars (+ tokens), row; per prompt: best-minus-worst margin, source.
    """
    import pyarrow as pa  # noqa: PLC0415  heavy (pyarrow): lazy, so importing this module stays light
    import pyarrow.compute as pc  # noqa: PLC0415  heavy (pyarrow): lazy, so importing this module stays light

    np = _np()
    table = dataset.with_format("arrow")[:]
    n = table.num_rows
    sources = table.column(R.SOURCE).to_pylist() if R.SOURCE in table.column_names else [None] * n
    kind = R.kind_of(table.column_names)

    def floats(name):
        if name not in table.column_names:
            return np.full(n, np.nan)
        return table.column(name).combine_chunks().to_numpy(zero_copy_only=False).astype(np.float64)

    if kind == "pairs":
        out = {"kind": "pairs", "score_chosen": floats(R.SCORE_CHOSEN), "score_rejected": floats(R.SCORE_REJECTED),
               "chars_chosen": _text_lengths(table.column(R.CHOSEN)),
               "chars_rejected": _text_lengths(table.column(R.REJECTED)), "source": sources,
               "prompt_id": table.column(R.PROMPT_ID).to_pylist() if R.PROMPT_ID in table.column_names else None}
        out["margin"] = out["score_chosen"] - out["score_rejected"]
        if tokenizer is not None:
            out["tokens_chosen"] = _token_lengths(table.column(R.CHOSEN), tokenizer)
            out["tokens_rejected"] = _token_lengths(table.column(R.REJECTED), tokenizer)
        return out
    if kind == "multi":
        resp = table.column(R.RESPONSES).combine_chunks()
        flat = pc.list_flatten(resp)
        scores = flat.field("score").to_numpy(zero_copy_only=False).astype(np.float64)
        row = pc.list_parent_indices(resp).to_numpy(zero_copy_only=False)
        asp = flat.field("aspects")
        na = np.zeros(len(flat), dtype=bool)
        if pa.types.is_struct(asp.type):
            present = asp.is_valid().to_numpy(zero_copy_only=False)
            for k in range(asp.type.num_fields):
                na |= present & asp.field(k).is_null().to_numpy(zero_copy_only=False)
        best = np.full(n, -np.inf)
        worst = np.full(n, np.inf)
        ok = np.isfinite(scores)
        np.maximum.at(best, row[ok], scores[ok])
        np.minimum.at(worst, row[ok], scores[ok])
        n_scored = np.bincount(row[ok], minlength=n)
        top_count = np.bincount(row[ok & (scores == best[row])], minlength=n)
        margin = np.where(n_scored >= 2, best - worst, np.nan)
        out = {"kind": "multi", "score": scores, "row": row, "na": na, "chars": _text_lengths(flat.field("text")),
               "n_responses": np.bincount(row, minlength=n), "margin": margin, "source": sources,
               "shared_top": (n_scored >= 2) & (top_count >= 2)}
        if tokenizer is not None:
            out["tokens"] = _token_lengths(flat.field("text"), tokenizer)
        return out

    raise ConfigError(f"stats: expected PAIRS (chosen, rejected) or MULTI (responses) columns, got "
                      f"{', '.join(table.column_names)}")


def stats(dataset, *, tokenizer=None) -> dict:
    """Summary statistics of a canonical PAIRS or MULTI dataset (a plain dict, JSON-ready).
    `tokenizer` (a tokenizer object or a local directory) adds token lengths."""
    np = _np()
    if tokenizer is not None and isinstance(tokenizer, (str, Path)):
        tokenizer = load_tokenizer(tokenizer)
    c = columns(dataset, tokenizer)
    src = np.asarray([s if s is not None else "(none)" for s in c["source"]], dtype=object)
    if c["kind"] == "pairs":
        m = c["margin"]
        known = np.isfinite(m)
        out = {"kind": "pairs", "pairs": int(len(m)),
               "prompts": len(set(c["prompt_id"])) if c["prompt_id"] is not None else None,
               "score_chosen": summarize(c["score_chosen"]), "score_rejected": summarize(c["score_rejected"]),
               "margin": summarize(m), "ties": int((known & (m == 0)).sum()),
               "negative_margins": int((known & (m < 0)).sum()), "unscored_pairs": int((~known).sum()),
               "chars_chosen": summarize(c["chars_chosen"]), "chars_rejected": summarize(c["chars_rejected"])}
        if "tokens_chosen" in c:
            out["tokens_chosen"] = summarize(c["tokens_chosen"])
            out["tokens_rejected"] = summarize(c["tokens_rejected"])
        per = {}
        for s in sorted(set(src.tolist())):
            sel = src == s
            per[s] = {"pairs": int(sel.sum()), "mean_score_chosen": summarize(c["score_chosen"][sel])["mean"],
                      "mean_score_rejected": summarize(c["score_rejected"][sel])["mean"],
                      "mean_margin": summarize(m[sel])["mean"], "ties": int((sel & known & (m == 0)).sum())}
        out["by_source"] = per
        return out
    n_resp = c["n_responses"]
    out = {"kind": "multi", "prompts": int(len(n_resp)), "responses": int(n_resp.sum()),
           "responses_per_prompt": summarize(n_resp), "na_rated_responses": int(c["na"].sum()),
           "unscored_responses": int((~np.isfinite(c["score"])).sum()), "score": summarize(c["score"]),
           "best_minus_worst": summarize(c["margin"]), "prompts_with_shared_top_score": int(c["shared_top"].sum()),
           "chars": summarize(c["chars"])}
    if "tokens" in c:
        out["tokens"] = summarize(c["tokens"])
    per = {}
    resp_src = src[c["row"]] if len(c["row"]) else np.asarray([], dtype=object)
    for s in sorted(set(src.tolist())):
        sel = src == s
        rsel = resp_src == s
        per[s] = {"prompts": int(sel.sum()), "responses": int(rsel.sum()),
                  "mean_score": summarize(c["score"][rsel])["mean"],
                  "mean_best_minus_worst": summarize(c["margin"][sel])["mean"]}
    out["by_source"] = per
    return out


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.2f}" if abs(v) < 1e5 else f"{v:.3g}"
    return str(v)


def _table(headers: list[str], rows: list[list]) -> list[str]:
    cells = [[_fmt(v) for v in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(widths[0]) if i == 0 else h.rjust(widths[i]) for i, h in enumerate(headers))
    out = [line, "-" * len(line)]
    for r in cells:
        out.append("  ".join(v.ljust(widths[0]) if i == 0 else v.rjust(widths[i]) for i, v in enumerate(r)))
    return out


_DIST = ["n", "mean", "std", "min", "p25", "median", "p75", "max"]


def format_stats(s: dict) -> str:
    """The stats as terminal tables."""
    lines = []
    if s["kind"] == "pairs":
        lines.append(f"pairs: {s['pairs']}   prompts: {_fmt(s['prompts'])}   ties: {s['ties']}   "
                     f"negative margins: {s['negative_margins']}   unscored pairs: {s['unscored_pairs']}")
        names = ["score_chosen", "score_rejected", "margin", "chars_chosen", "chars_rejected",
                 "tokens_chosen", "tokens_rejected"]
        per_headers = ["source", "pairs", "score_chosen", "score_rejected", "margin", "ties"]
        per_rows = [[k, v["pairs"], v["mean_score_chosen"], v["mean_score_rejected"], v["mean_margin"], v["ties"]]
                    for k, v in s["by_source"].items()]
    else:
        lines.append(f"prompts: {s['prompts']}   responses: {s['responses']}   'N/A'-rated responses: "
                     f"{s['na_rated_responses']}   unscored: {s['unscored_responses']}   prompts with a shared "
                     f"top score: {s['prompts_with_shared_top_score']}")
        names = ["responses_per_prompt", "score", "best_minus_worst", "chars", "tokens"]
        per_headers = ["source", "prompts", "responses", "mean score", "best-worst"]
        per_rows = [[k, v["prompts"], v["responses"], v["mean_score"], v["mean_best_minus_worst"]]
                    for k, v in s["by_source"].items()]
    lines.append("")
    lines += _table([""] + _DIST, [[n] + [s[n][k] for k in _DIST] for n in names if n in s])
    lines.append("")
    lines += _table(per_headers, per_rows)
    return "\n".join(lines)


def plot_stats(dataset, out_dir, *, tokenizer=None) -> list[Path]:
    """PNG plots into `out_dir`: score histograms, margin histogram, response length vs score.
    Returns the files written."""
    import matplotlib  # noqa: PLC0415  heavy (matplotlib): lazy, so importing this module stays light

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415  heavy (matplotlib): lazy, so importing this module stays light

    np = _np()
    if tokenizer is not None and isinstance(tokenizer, (str, Path)):
        tokenizer = load_tokenizer(tokenizer)
    c = columns(dataset, tokenizer)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []

    def finite(a):
        a = np.asarray(a, dtype=np.float64)
        return a[np.isfinite(a)]

    def bins_for(*arrays):
        allv = np.concatenate([finite(a) for a in arrays]) if arrays else np.zeros(0)
        if not len(allv):
            return 10
        lo, hi = float(allv.min()), float(allv.max())
        if lo == hi:
            return np.linspace(lo - 0.5, hi + 0.5, 3)
        # scores like UltraFeedback's are on a 0.5 grid; one bin per step keeps them readable
        step = 0.5 if np.allclose(allv * 2, np.round(allv * 2)) and (hi - lo) / 0.5 <= 60 else (hi - lo) / 30
        return np.arange(lo - step / 2, hi + step, step)

    def save(fig, name):
        path = out / name
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    unit = "tokens" if tokenizer is not None else "characters"
    if c["kind"] == "pairs":
        sc, sr = c["score_chosen"], c["score_rejected"]
        fig, ax = plt.subplots(figsize=(6.4, 4))
        b = bins_for(sc, sr)
        ax.hist(finite(sc), bins=b, alpha=0.6, label=f"chosen (n={len(finite(sc))})", color="tab:green")
        ax.hist(finite(sr), bins=b, alpha=0.6, label=f"rejected (n={len(finite(sr))})", color="tab:red")
        ax.set(xlabel="score", ylabel="pairs", title="Score distribution: chosen vs rejected")
        ax.legend()
        save(fig, "score_hist.png")

        fig, ax = plt.subplots(figsize=(6.4, 4))
        m = finite(c["margin"])
        ax.hist(m, bins=bins_for(m), color="tab:blue")
        ax.axvline(0, color="black", lw=1, ls="--")
        ax.set(xlabel="margin = score_chosen - score_rejected", ylabel="pairs",
               title=f"Margins (ties: {int((m == 0).sum())}, negative: {int((m < 0).sum())})")
        save(fig, "margin_hist.png")

        fig, ax = plt.subplots(figsize=(6.4, 4))
        lc = c["tokens_chosen"] if tokenizer is not None else c["chars_chosen"]
        lr = c["tokens_rejected"] if tokenizer is not None else c["chars_rejected"]
        ax.scatter(lc, sc, s=12, alpha=0.6, label="chosen", color="tab:green")
        ax.scatter(lr, sr, s=12, alpha=0.6, label="rejected", color="tab:red")
        ax.set(xlabel=f"response length ({unit})", ylabel="score", title="Response length vs score")
        ax.legend()
        save(fig, "length_vs_score.png")
    else:
        s = c["score"]
        fig, ax = plt.subplots(figsize=(6.4, 4))
        ax.hist(finite(s), bins=bins_for(s), color="tab:blue")
        ax.set(xlabel="score", ylabel="responses", title=f"Response scores (n={len(finite(s))})")
        save(fig, "score_hist.png")

        fig, ax = plt.subplots(figsize=(6.4, 4))
        m = finite(c["margin"])
        ax.hist(m, bins=bins_for(m), color="tab:purple")
        ax.set(xlabel="best - worst score per prompt", ylabel="prompts", title="Per-prompt score spread")
        save(fig, "margin_hist.png")

        fig, ax = plt.subplots(figsize=(6.4, 4))
        ln = c["tokens"] if tokenizer is not None else c["chars"]
        ax.scatter(ln, s, s=12, alpha=0.6, color="tab:blue")
        ax.set(xlabel=f"response length ({unit})", ylabel="score", title="Response length vs score")
        save(fig, "length_vs_score.png")
    return written
