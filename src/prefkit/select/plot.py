"""The picture of a selection: explicit margin (x) against |implicit margin| (y), kept pairs in
colour, and the metric's selection boundary (`Metric.boundary`, see `prefkit.select.metrics`) drawn as a line.

For alignment potential z(m_e) - w z(|m_i|) >= t the boundary is the straight line
|m_i| = mu_i + sd_i ((m_e - mu_e) / sd_e - t) / w; kept pairs lie below it (small implicit
margin, large explicit margin). Large sets are subsampled (evenly, seeded) to `max_points`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from prefkit.select import metrics as M


def plot_margins(scored, path, *, metric: str, scores, selected, threshold, weight: float = 1.0,
                 max_points: int = 20000, seed: int = 0) -> Path:
    """Write the PNG to `path` and return it."""
    import matplotlib  # noqa: PLC0415  heavy (matplotlib): lazy, so importing this module stays light

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415  heavy (matplotlib): lazy, so importing this module stays light

    m = M.get_metric(metric)
    ds = scored.dataset
    x = np.asarray(ds.data.column("explicit_margin").to_numpy(zero_copy_only=False), dtype=np.float64)
    ycol = m.implicit_column
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
        b = None if threshold is None or m.boundary is None else m.boundary(threshold, scored.stats, weight, xs)
        if b is not None and (has_y or b[0] == "vline"):  # a vertical line is an explicit-margin boundary
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
        ax.set_ylabel("|implicit margin|  (per-token log-prob, chosen - rejected)" if ycol == "implicit_margin"
                      else f"|{ycol.replace('_', ' ')}|")
    else:
        ax.set_ylabel(f"{metric} selection score")
    title = f"prefkit select: {metric}"
    if m.uses_weight:
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
