"""The demo's report: Markdown tables, a verdict and PNG plots over seeds, plus results.json."""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict
from pathlib import Path

from prefkit.toy.demo_config import METHOD_LABELS, PROBE_THRESHOLD, DemoConfig
from prefkit.toy.rm_comparison import report_lines as rm_report_lines

# Stages the method issues describe that this demo does not run yet (listed in the report).
NOT_YET = [
    "the paper's 'half' augmentation ablation (relabel --half)",
]


def _mean_sd(values):
    values = [v for v in values if v is not None]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def write_report(out: Path, config: DemoConfig, results: list[dict], base: Path, base_seconds: float,
                 total_seconds: float, reused: int = 0) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = ["base", *config.methods]
    stats = {m: _mean_sd([r.get(f"gold_{m}") for r in results]) for m in methods}

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, m in enumerate(methods):
        vals = [r[f"gold_{m}"] for r in results]
        ax.bar(i, stats[m][0], yerr=stats[m][1], capsize=6, color=f"C{i}", alpha=0.7)
        ax.scatter([i] * len(vals), vals, color="k", s=12, zorder=3)
    ax.set_xticks(range(len(methods)), [METHOD_LABELS[m].replace(" on ", "\non ") for m in methods])
    ax.set_ylabel("gold reward (1-10), held-out prompts")
    ax.set_title(f"Gold reward per method: mean ± sd over {len(results)} seed(s), dots = seeds")
    fig.tight_layout()
    fig.savefig(out / "gold_reward.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    curves = [("dpo", "probe/hq_rejected_logp", "DPO: log π(y_l | x)"),
              ("ra", "probe/hq_rejected_logp", "RA: log π(y_l | S(r_l), x)"),
              ("ra", "probe/hq_rejected_logp_goal10", "RA: log π(y_l | S(10), x)"),
              ("eps-dpo", "probe/hq_rejected_logp", "eps-DPO: log π(y_l | x)")]
    curves = [c for c in curves if c[0] in config.methods]
    for i, (m, name, label) in enumerate(curves):
        for j, r in enumerate(results):
            pts = r.get(f"probe_{m}", {}).get(name)
            if not pts:
                continue
            xs, ys = zip(*pts)
            total = max(xs) or 1
            ax.plot([x / total for x in xs], ys, color=f"C{i + 1}", alpha=0.8, marker="o", ms=3,
                    label=label if j == 0 else None)
    ax.set_xlabel("fraction of training")
    ax.set_ylabel("mean log-prob of rejected responses")
    ax.set_title(f"Unlearning probe: rejected responses with judge score >= {PROBE_THRESHOLD:g}")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no probe points (no rejected response scored >= 5)", ha="center",
                transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(out / "unlearning.png", dpi=110)
    plt.close(fig)

    def probe_drop(m, name):
        drops = []
        for r in results:
            pts = r.get(f"probe_{m}", {}).get(name)
            if pts:
                drops.append(pts[-1][1] - pts[0][1])
        return _mean_sd(drops)

    ra_m, ra_s = stats.get("ra", (float("nan"),) * 2)
    dpo_m, dpo_s = stats.get("dpo", (float("nan"),) * 2)
    diffs = [r["gold_ra"] - r["gold_dpo"] for r in results if "gold_ra" in r and "gold_dpo" in r]
    dm, ds = _mean_sd(diffs)
    if diffs:
        wins = sum(d > 0 for d in diffs)
        if dm > 0 and wins == len(diffs):
            verdict = (f"In this run, DPO on reward-augmented data scored higher than plain DPO on every seed "
                       f"(+{dm:.3f} mean gold reward, sd {ds:.3f} over {len(diffs)} seed(s)).")
        elif dm > 0:
            verdict = (f"DPO on reward-augmented data scored higher than plain DPO on average (+{dm:.3f}, sd "
                       f"{ds:.3f}) but not on every seed ({wins} of {len(diffs)}): not a consistent win.")
        else:
            verdict = (f"Reward augmentation did NOT beat plain DPO in this toy world: RA minus DPO = {dm:.3f} "
                       f"(sd {ds:.3f}) over {len(diffs)} seed(s), RA ahead on {wins} of them.")
    else:
        verdict = "RA and DPO were not both run."
    eps = [r["gold_eps-dpo"] - r["gold_dpo"] for r in results if "gold_eps-dpo" in r and "gold_dpo" in r]
    if eps:
        em, es = _mean_sd(eps)
        verdict += (f" eps-DPO minus DPO = {em:+.3f} (sd {es:.3f}) over {len(eps)} seed(s), eps-DPO ahead on "
                    f"{sum(d > 0 for d in eps)} of them.")

    lines = [
        "# prefkit demo report: the toy world",
        "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; this invocation took {total_seconds:.0f}s "
        f"(base policy {'loaded from cache' if base_seconds < 5 else f'trained in {base_seconds:.0f}s'}"
        + (f"; {reused} finished seed(s) reused from an earlier run, see their stage seconds below" if reused else "")
        + ").",
        "",
        "**Task.** Sort 3-6 fruit names alphabetically. Gold reward = 1 + 9 (0.4 coverage + 0.4 order + "
        "0.2 conciseness), on 1-10 (see docs/toy.md). The base policy is a 2-layer Llama "
        f"(width {config.world.hidden}) trained from scratch on noisy demonstrations; base dir `{base}`.",
        "",
        f"**Pipeline per seed.** {config.n_train_prompts} training prompts x {config.samples_per_prompt} "
        f"samples (T={config.temperature}) -> noisy judge (aspect noise {config.judge.aspect_noise}, overall noise "
        f"{config.judge.overall_noise}) in UltraFeedback's schema -> `prefkit.data.read` + `binarize` (published: "
        "best vs random other) -> `prefkit.relabel` (D^w + D^l) -> `prefkit.train.train_dpo` (sigmoid, "
        f"beta {config.beta}, lr {config.learning_rate}, batch {config.batch_size}, 1 epoch, cosine"
        + ("; eps-DPO: the same settings with `loss_type=\"eps-dpo\"`, live reference" if "eps-dpo" in config.methods else "")
        + ") -> "
        f"{config.eval_samples} samples per held-out prompt ({config.n_eval_prompts} prompts, T={config.temperature}), "
        "the RA model conditioned on the best score through its `prefkit_conditioning.json` -> gold reward.",
        "",
        "## Gold reward on held-out prompts",
        "",
        "| method | mean over seeds | sd over seeds | per seed |",
        "|---|---|---|---|",
    ]
    for m in methods:
        per = ", ".join(f"{r[f'gold_{m}']:.3f}" for r in results)
        lines.append(f"| {METHOD_LABELS[m]} | {stats[m][0]:.3f} | {stats[m][1]:.3f} | {per} |")
    lines += ["", f"**Verdict.** {verdict}", "", "![gold reward](gold_reward.png)", "",
              "## Unlearning probe", "",
              f"Mean log-probability of the rejected responses of up to {config.probe_pairs} training pairs whose "
              f"rejected response the judge scored >= {PROBE_THRESHOLD:g} of 10, logged by `train_dpo`'s probes. "
              "For the RA model, conditioned on the rejected response's own score (the goal under which it "
              "is the right answer) and on the best score 10.", "",
              "| curve | change over training (mean ± sd over seeds) |", "|---|---|"]
    for m, name, label in curves:
        mm, ss = probe_drop(m, name)
        lines.append(f"| {label} | {mm:+.3f} ± {ss:.3f} |")
    lines += ["", "![unlearning](unlearning.png)", ""]
    sel = sorted({k[len("select_gold_"):] for r in results for k in r
                  if k.startswith("select_gold_") and not k.startswith("select_gold_std_")})
    if sel:
        budget = ", ".join(str(r.get("select_budget")) for r in results)
        lines += ["## Selection ablation (equal budget, DPO on each subset)", "",
                  f"Pairs kept per seed: {budget} (fraction {results[0].get('select_fraction')}); each subset "
                  "trained with the DPO settings above and scored with the gold reward on the same held-out prompts.",
                  "", "| selection metric | gold reward mean over seeds | sd over seeds | per seed |", "|---|---|---|---|"]
        for name in sel:
            vals = [r.get(f"select_gold_{name}") for r in results]
            mm, ss = _mean_sd(vals)
            per = ", ".join("-" if v is None else f"{v:.3f}" for v in vals)
            lines.append(f"| {name.replace('_', ' ')} | {mm:.3f} | {ss:.3f} | {per} |")
        lines.append("")
    lines += rm_report_lines(results, config)
    lines += ["## Per-seed details", ""]
    for r in results:
        lines.append(f"- seed {r['seed']}: {r.get('pairs')} pairs, {r.get('ra_pairs')} RA pairs; judge/gold "
                     f"correlation {r.get('judge_gold_corr', float('nan')):.2f}; mean gold of training samples "
                     f"{r.get('train_samples_gold_mean', float('nan')):.2f}; last train logs: "
                     + "; ".join(f"{m}: " + ", ".join(f"{k}={v:.3g}" for k, v in r.get(f"last_log_{m}", {}).items())
                                 for m in config.methods)
                     + "; stage seconds: " + ", ".join(f"{k[len('seconds_'):]}={v}" for k, v in r.items()
                                                       if k.startswith("seconds_")))
    ex = results[0]
    lines += ["", "Example held-out samples (seed 0, first sample per prompt):", ""]
    for m in methods:
        for p, s, g in ex.get(f"examples_{m}", [])[:2]:
            lines.append(f"- {METHOD_LABELS[m]}: `{p}` -> `{s}` (gold {g:.2f})")
    not_yet = [s for s in NOT_YET if not (s.startswith("alignment-potential") and sel)]
    lines += ["", "## Not in this demo yet", ""] + [f"- {s}" for s in not_yet]
    lines += ["", "## Configuration", "", "```json", json.dumps(asdict(config), indent=2, default=str), "```", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    return path
