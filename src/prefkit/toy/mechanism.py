"""The RA mechanism panel of the regime map (docs/regimes.md, "Mechanism panel"; reported, not
decided on): per logging step of RA's training at 1 epoch and today's regularisation, the implicit
reward of the chosen responses on the D^w rows and on the D^l rows, and the cosine between the two
halves' loss gradients (the half probe, prefkit.train.half_probe), for each goal-reading level.
Do the two halves' gradients cancel when the base cannot read goals?

`prefkit.toy.regimes.run_mechanism` trains the probed RA arm of each level and seed on a map
cell-seed's data (`--mechanism`); this module holds the arm's changes and the panel's reading:
OUT/mechanism.json (every seed's values and, per level, the mean over seeds with mean ± one
standard deviation as the band) and OUT/mechanism.png.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

PROBE_ROWS = 32
# the half probe's values the panel shows (prefkit.pipeline.runners.half_probe_metrics)
REWARDS = ("w/reward_chosen", "l/reward_chosen")
COSINE = "grad_cosine"
SUMMARY_KEYS = REWARDS + ("w/reward_rejected", "l/reward_rejected", "w/loss", "l/loss", "w/grad_norm",
                          "l/grad_norm", COSINE)


def probe_arm(name: str, changes: dict, rows: int = PROBE_ROWS) -> tuple[str, dict]:
    """RA's map arm (name, stage changes) with the half probe on and no evaluation (the panel reads
    the training log; the map's own RA arm is evaluated)."""
    train = {**changes["train"], "half_probe": {"rows": int(rows)}}
    return f"{name}-halfprobe{int(rows)}", {**changes, "train": train, "evaluate": False}


def band(per_seed: list[dict[str, list]], key: str) -> dict:
    """Over seeds, per logging step of `key`: the steps, the mean, mean ± one standard deviation
    (the band; 0 wide with one seed) and how many seeds logged that step."""
    by_step: dict[int, list[float]] = {}
    for values in per_seed:
        for step, v in values.get(key, []):
            by_step.setdefault(int(step), []).append(float(v))
    steps = sorted(by_step)
    mean = [statistics.fmean(by_step[s]) for s in steps]
    sd = [statistics.stdev(by_step[s]) if len(by_step[s]) > 1 else 0.0 for s in steps]
    return {"steps": steps, "mean": mean, "low": [m - d for m, d in zip(mean, sd)],
            "high": [m + d for m, d in zip(mean, sd)], "seeds": [len(by_step[s]) for s in steps]}


def write_panel(out: Path, records: list[dict]) -> tuple[Path, Path]:
    """OUT/mechanism.json and OUT/mechanism.png from the per level-and-seed records
    (`prefkit.toy.regimes.run_mechanism_seed`)."""
    levels: dict[str, list[dict]] = {}
    for r in records:
        levels.setdefault(r["world"], []).append(r)
    panel = {"what": "RA at 1 epoch, today's regularisation: the half probe per logging step (step 0: before "
                     "training); band: mean ± one standard deviation over seeds (docs/regimes.md, 'Mechanism panel')",
             "levels": [{"world": w, "slope": rs[0]["slope"], "seeds": [r["seed"] for r in rs],
                         "learning_rate": rs[0]["learning_rate"], "rows": rs[0]["rows"],
                         "summary": {k: band([r["values"] for r in rs], k) for k in SUMMARY_KEYS}}
                        for w, rs in sorted(levels.items(), key=lambda kv: kv[1][0]["slope"])],
             "runs": records}
    jp = Path(out) / "mechanism.json"
    jp.write_text(json.dumps(panel, indent=2))
    return jp, _plot(Path(out) / "mechanism.png", panel["levels"])


def _plot(path: Path, levels: list[dict]) -> Path:
    import matplotlib  # noqa: PLC0415  heavy: only when the panel is written

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    n = max(1, len(levels))
    fig, axes = plt.subplots(2, n, figsize=(max(6.0, 3.2 * n), 6.0), squeeze=False, sharey="row")
    for j, lv in enumerate(levels):
        top, bottom = axes[0][j], axes[1][j]
        for key, label, color in ((REWARDS[0], "D^w chosen", "tab:blue"), (REWARDS[1], "D^l chosen", "tab:orange")):
            _line(top, lv["summary"][key], label, color)
        _line(bottom, lv["summary"][COSINE], "cos(grad D^w, grad D^l)", "tab:green")
        top.axhline(0, color="gray", lw=0.7)
        bottom.axhline(0, color="gray", lw=0.7)
        top.set_title(f"base slope {lv['slope']:.2f} ({len(lv['seeds'])} seed(s))", fontsize=9)
        bottom.set_xlabel("step")
    axes[0][0].set_ylabel("implicit reward of the chosen\nβ(log π − log π_ref), mean")
    axes[1][0].set_ylabel("gradient cosine")
    axes[0][0].legend(fontsize=7)
    axes[1][0].legend(fontsize=7)
    fig.suptitle("RA's two halves during training\n(1 epoch, today's regularisation; band: ± 1 sd over seeds)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _line(ax, s: dict, label: str, color: str) -> None:
    ax.plot(s["steps"], s["mean"], marker=".", color=color, label=label)
    ax.fill_between(s["steps"], s["low"], s["high"], color=color, alpha=0.2)
