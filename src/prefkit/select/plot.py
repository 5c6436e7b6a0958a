"""The picture of a selection: explicit margin (x) against |implicit margin| (y), kept pairs in
colour, and the metric's selection boundary drawn as a line.

For alignment potential z(m_e) - w z(|m_i|) >= t the boundary is the straight line
|m_i| = mu_i + sd_i ((m_e - mu_e) / sd_e - t) / w; kept pairs lie below it (small implicit
margin, large explicit margin). Large sets are subsampled (evenly, seeded) to `max_points`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from prefkit.select import metrics as M


def _boundary(metric, threshold, stats, weight, xs):
    """y values of the boundary over xs (None where the metric draws no such line), or a
    ('vline', x) / ('hline', y) tuple."""
    if threshold is None or metric == M.RANDOM:
        return None
    if metric == M.EXPLICIT:
        return ("vline", threshold)
    if metric == M.IMPLICIT:
        return ("hline", -threshold)
    if metric == M.AP_PAPER:
        return ("curve", np.abs(xs) - threshold)
    st_e = stats["explicit_margin"]
    st_i = stats["abs_dpo_implicit_margin" if metric == M.DPO_IMPLICIT else "abs_implicit_margin"]
    if st_e["std"] == 0 and (st_i["std"] == 0 or weight == 0):
        return None
    if st_i["std"] == 0 or weight == 0:  # only the explicit term ranks: z_e >= t
        return ("vline", st_e["mean"] + st_e["std"] * threshold)
    if st_e["std"] == 0:  # only the implicit term ranks: -w z_i >= t
        return ("hline", st_i["mean"] - st_i["std"] * threshold / weight)
    return ("curve", st_i["mean"] + st_i["std"] * ((xs - st_e["mean"]) / st_e["std"] - threshold) / weight)


def plot_margins(scored, path, *, metric: str, scores, selected, threshold, weight: float = 1.0,
                 max_points: int = 20000, seed: int = 0) -> Path:
    """Write the PNG to `path` and return it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ds = scored.dataset
    x = np.asarray(ds.data.column("explicit_margin").to_numpy(zero_copy_only=False), dtype=np.float64)
    ycol = "dpo_implicit_margin" if metric == M.DPO_IMPLICIT else "implicit_margin"
    has_y = ycol in ds.column_names
    y = (np.abs(np.asarray(ds.data.column(ycol).to_numpy(zero_copy_only=False), dtype=np.float64)) if has_y
         else np.asarray(scores, dtype=np.float64))
    kept = np.zeros(len(x), dtype=bool)
    kept[np.asarray(selected, dtype=np.int64)] = True
    ok = np.isfinite(x) & np.isfinite(y)
    idx = np.flatnonzero(ok)
    if idx.size > max_points:
        idx = np.sort(np.random.default_rng(seed).choice(idx, max_points, replace=False))
    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=120)
    ax.scatter(x[idx][~kept[idx]], y[idx][~kept[idx]], s=8, c="#b0b0b0", alpha=0.6,
               label=f"not kept ({int((~kept & ok).sum())})")
    ax.scatter(x[idx][kept[idx]], y[idx][kept[idx]], s=10, c="#1f77b4", alpha=0.8,
               label=f"kept ({int((kept & ok).sum())})")
    if idx.size:
        xs = np.linspace(x[idx].min(), x[idx].max(), 200)
        b = _boundary(metric, threshold, scored.stats, weight, xs) if has_y or metric == M.EXPLICIT else None
        if b is not None:
            kind, v = b
            if kind == "vline":
                ax.axvline(v, color="#d62728", lw=1.5, label="selection boundary")
            elif kind == "hline":
                ax.axhline(v, color="#d62728", lw=1.5, label="selection boundary")
            else:
                ax.plot(xs, v, color="#d62728", lw=1.5, label="selection boundary")
                # kept pairs lie below the line (small |implicit|, large explicit margin)
                ax.fill_between(xs, v, np.minimum(v, y[idx].min()) - 1e9, color="#1f77b4", alpha=0.06,
                                label="kept side")
            ylo, yhi = y[idx].min(), y[idx].max()
            pad = 0.05 * (yhi - ylo or 1.0)
            ax.set_ylim(ylo - pad, yhi + pad)
    ax.set_xlabel("explicit margin  r(chosen) - r(rejected)")
    if has_y:
        ax.set_ylabel("|DPO implicit margin|" if metric == M.DPO_IMPLICIT
                      else "|implicit margin|  (per-token log-prob, chosen - rejected)")
    else:
        ax.set_ylabel(f"{metric} selection score")
    title = f"prefkit select: {metric}"
    if metric in (M.ALIGNMENT_POTENTIAL, M.DPO_IMPLICIT):
        title += f" (weight {weight:g})"
    ax.set_title(title)
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
