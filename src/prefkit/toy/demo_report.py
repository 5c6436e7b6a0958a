"""The demo's report: results.json (for scripts), report.md and PNG plots, over seeds and worlds.

results.json (schema in docs/toy.md, "results.json"): for every method a name, its per-seed
values, their mean and sd (sample sd, n - 1; 0 for one seed), per world, plus the world
settings, the goal-following curves and the prior ablation (the main table of each world side
by side).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import time
from pathlib import Path

from prefkit.toy.demo_config import (
    CONDITIONED,
    CURVE_POLICIES,
    METHOD_LABELS,
    POLICIES,
    PROBE_THRESHOLD,
    SELECT_METRICS,
    DemoConfig,
    world_name,
)
from prefkit.toy.rm_comparison import RM_LABELS, RM_METHODS
from prefkit.toy.rm_comparison import report_lines as rm_report_lines

SCHEMA_VERSION = 1
SELECT_PREFIX, RM_PREFIX = "select:", "rm:"

# One colour per policy, the same in every plot (matplotlib's tab10 order).
COLOURS = {"base": "#7f7f7f", "base-conditioned": "#17becf", "dpo": "#1f77b4", "ra": "#d62728",
           "ra-half": "#ff7f0e", "eps-dpo": "#2ca02c"}
SEED_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def mean_sd(values) -> tuple[float, float]:
    vals = [v for v in values if v is not None]
    if not vals:
        return float("nan"), float("nan")
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def entry(values, label: str, metric: str) -> dict:
    m, s = mean_sd(values)
    return {"label": label, "metric": metric, "values": list(values), "mean": m, "sd": s}


def world_methods(results: list[dict]) -> dict:
    """{method name: entry} for every method with a value on every seed of one world."""
    out = {}
    for name in POLICIES:
        vals = [r.get(f"gold_{name}") for r in results]
        if results and all(v is not None for v in vals):
            out[name] = entry(vals, METHOD_LABELS[name], "gold reward")
    for metric in SELECT_METRICS:
        vals = [r.get(f"select_gold_{metric.replace('-', '_')}") for r in results]
        if results and all(v is not None for v in vals):
            out[SELECT_PREFIX + metric] = entry(vals, f"selection: {metric} ({results[0].get('select_fraction')} "
                                                      "of the pairs), DPO", "gold reward")
    for m in RM_METHODS:
        vals = [r.get(f"rm_acc_{m}") for r in results]
        if results and all(v is not None for v in vals):
            out[RM_PREFIX + m] = entry(vals, f"reward model: {RM_LABELS[m]}", "RM accuracy on gold-labelled pairs")
    return out


def world_curves(results: list[dict]) -> dict:
    out = {}
    for name in CURVE_POLICIES:
        curves = [r.get(f"curve_{name}") for r in results]
        if not results or any(c is None for c in curves):
            continue
        goals = curves[0]["goals"]
        per_goal = list(zip(*[c["gold"] for c in curves]))
        out[name] = {"goals": goals, "values": [c["gold"] for c in curves],
                     "mean": [statistics.fmean(v) for v in per_goal],
                     "slope": entry([c["slope"] for c in curves], f"slope of {METHOD_LABELS[name]}",
                                    "gold reward per goal point")}
    return out


def summarize(config: DemoConfig, runs: list[dict], total_seconds: float) -> dict:
    worlds = []
    for i, run in enumerate(runs):
        worlds.append({"name": world_name(run["world"]), "main": i == 0, "key": run["world"].key(),
                       "settings": dataclasses.asdict(run["world"]), "base_dir": str(run["base"]),
                       "seeds": [r["seed"] for r in run["results"]],
                       "methods": world_methods(run["results"]), "goal_following": world_curves(run["results"]),
                       "per_seed": run["results"]})
    out = {"schema_version": SCHEMA_VERSION,
           "generated_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "seconds": round(total_seconds, 1), "machine": machine(), "config": dataclasses.asdict(config),
           "world": worlds[0]["settings"], "methods": worlds[0]["methods"], "worlds": worlds}
    if len(worlds) > 1:
        out["prior_ablation"] = prior_ablation(worlds[0], worlds[1])
    return out


def prior_ablation(main: dict, other: dict) -> dict:
    """The main table in both worlds: with and without the goal prior, and their per-seed difference."""
    with_w, without_w = (main, other) if main["settings"]["goal_prior"] > 0 else (other, main)
    out = {}
    for name in POLICIES:
        a, b = with_w["methods"].get(name), without_w["methods"].get(name)
        if a is None or b is None or len(a["values"]) != len(b["values"]):
            continue
        diff = [x - y for x, y in zip(a["values"], b["values"])]
        out[name] = {"label": METHOD_LABELS[name], "with_prior": {k: a[k] for k in ("values", "mean", "sd")},
                     "without_prior": {k: b[k] for k in ("values", "mean", "sd")},
                     "difference": entry(diff, "with minus without", "gold reward")}
    return out


def _threads_text(runs: list[dict], mach: dict) -> str:
    """How the seeds ran: torch threads per seed job (recorded by each seed) and whether two
    processes ran jobs side by side."""
    threads = sorted({r.get("torch_threads") for run in runs for r in run["results"]} - {None})
    if not threads:
        return f"{mach['torch_threads']} torch threads"
    where = "; jobs in 2 processes" if any(run.get("processes", 1) > 1 for run in runs) else ""
    return f"{'/'.join(map(str, threads))} torch thread(s) per seed job{where}"


def machine() -> dict:
    import torch  # noqa: PLC0415  heavy (torch): lazy, so importing this module stays light

    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "load_average_at_end": load}


# ----------------------------------------------------------------------------------- plots

def _plt():
    import matplotlib  # noqa: PLC0415  heavy (matplotlib): lazy, so importing this module stays light

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415  heavy (matplotlib): lazy, so importing this module stays light

    return plt


def plot_gold(path: Path, methods: dict, title: str) -> None:
    plt = _plt()
    names = [n for n in POLICIES if n in methods]
    fig, ax = plt.subplots(figsize=(9, 4.2))
    for i, n in enumerate(names):
        e = methods[n]
        ax.bar(i, e["mean"], yerr=e["sd"], capsize=5, color=COLOURS[n], alpha=0.55)
        for j, v in enumerate(e["values"]):
            ax.scatter(i + (j - (len(e["values"]) - 1) / 2) * 0.12, v, color="k", s=18, zorder=3,
                       marker=SEED_MARKERS[j % len(SEED_MARKERS)], label=f"seed {j}" if i == 0 else None)
    ax.set_xticks(range(len(names)), [n for n in names])
    ax.set_ylabel("gold reward (1-10), held-out prompts")
    ax.set_title(title, fontsize=10)
    lo = min(v for n in names for v in methods[n]["values"])
    ax.set_ylim(max(0.0, lo - 1.0), 10.0)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title="bar = mean ± sd", title_fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(path: Path, curves_by_world: list[tuple[str, dict]]) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, len(curves_by_world), figsize=(5.2 * len(curves_by_world) + 1.6, 4), sharey=True,
                             squeeze=False)
    for ax, (title, curves) in zip(axes[0], curves_by_world):
        for n, c in curves.items():
            ax.plot(c["goals"], c["mean"], color=COLOURS[n], lw=2.2, label=f"{n} (mean)")
            for j, vals in enumerate(c["values"]):
                ax.plot(c["goals"], vals, color=COLOURS[n], lw=0.8, alpha=0.6, ls=":",
                        marker=SEED_MARKERS[j % len(SEED_MARKERS)], ms=4)
        ax.plot([1, 10], [1, 10], color="k", lw=0.6, ls="--", label="gold = goal")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("goal in the conditioning (Overall score: g.)")
        ax.set_xticks([2, 4, 6, 8, 10])
    axes[0][0].set_ylabel("mean gold reward, held-out prompts")
    axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8,
                       title="dotted: one line per seed\n(marker = seed)", title_fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


PROBE_CURVES = [("dpo", "probe/hq_rejected_logp", "-", "DPO: log π(y_l | x)"),
                ("ra", "probe/hq_rejected_logp", "-", "RA: log π(y_l | S(r_l), x)"),
                ("ra", "probe/hq_rejected_logp_best_goal", "--", "RA: log π(y_l | S(10), x)"),
                ("eps-dpo", "probe/hq_rejected_logp", "-.", "eps-DPO: log π(y_l | x)")]


def plot_unlearning(path: Path, results: list[dict], curves) -> bool:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.5, 4))
    drawn = False
    for m, name, ls, label in curves:
        for j, r in enumerate(results):
            pts = r.get(f"probe_{m}", {}).get(name)
            if not pts:
                continue
            xs, ys = zip(*pts)
            total = max(xs) or 1
            ax.plot([x / total for x in xs], ys, color=COLOURS[m], ls=ls, lw=1.4 if m != "dpo" else 2.4, alpha=0.85,
                    marker=SEED_MARKERS[j % len(SEED_MARKERS)], ms=4, label=f"{label}, seed {r['seed']}")
            drawn = True
    ax.set_xlabel("fraction of training")
    ax.set_ylabel("mean log-prob of rejected responses")
    ax.set_title(f"Unlearning probe: rejected responses with judge score >= {PROBE_THRESHOLD:g}", fontsize=10)
    if drawn:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7)
    else:
        ax.text(0.5, 0.5, "no probe points (no rejected response scored >= 5)", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return drawn


# ----------------------------------------------------------------------------------- Markdown

def _per(values) -> str:
    return ", ".join("-" if v is None else f"{v:.3f}" for v in values)


def main_table(methods: dict) -> list[str]:
    lines = ["| method | name in results.json | mean over seeds | sd over seeds | per seed |", "|---|---|---|---|---|"]
    for n in POLICIES:
        if n in methods:
            e = methods[n]
            lines.append(f"| {e['label']} | `{n}` | {e['mean']:.3f} | {e['sd']:.3f} | {_per(e['values'])} |")
    return lines


def _difference(methods: dict, a: str, b: str) -> tuple[float, float, int, int] | None:
    if a not in methods or b not in methods:
        return None
    d = [x - y for x, y in zip(methods[a]["values"], methods[b]["values"])]
    m, s = mean_sd(d)
    return m, s, sum(x > 0 for x in d), len(d)


def verdict_lines(methods: dict) -> list[str]:
    """Plain statements of who beat whom, per seed and on average; nothing is hidden when a method loses."""
    checks = [("ra", "dpo", "reward augmentation (RA) vs DPO"),
              ("ra-half", "dpo", "RA half (as many pairs as DPO) vs DPO"),
              ("eps-dpo", "dpo", "eps-DPO vs DPO"),
              ("base-conditioned", "base", "base policy conditioned on goal 10 vs no goal"),
              (SELECT_PREFIX + "alignment-potential", SELECT_PREFIX + "random",
               "alignment-potential selection vs random selection (same budget)")]
    out = []
    for a, b, what in checks:
        d = _difference(methods, a, b)
        if d is None:
            continue
        m, s, wins, n = d
        if all(x == y for x, y in zip(methods[a]["values"], methods[b]["values"])):
            word = "a tie on every seed (identical values)"
        elif m > 0 and wins == n:
            word = "WINS on every seed"
        elif m > 0:
            word = f"ahead on average but not on every seed ({wins} of {n}): not a consistent win"
        else:
            word = f"does NOT win ({wins} of {n} seeds ahead)"
        out.append(f"- {what}: `{a}` minus `{b}` = {m:+.3f} (sd {s:.3f} over {n} seeds): {word}.")
    return out


def curve_table(curves: dict) -> list[str]:
    if not curves:
        return []
    goals = next(iter(curves.values()))["goals"]
    lines = ["| policy | " + " | ".join(f"goal {g}" for g in goals) + " | slope (mean ± sd over seeds) | slope per seed |",
             "|---|" + "---|" * len(goals) + "---|---|"]
    for n, c in curves.items():
        sl = c["slope"]
        lines.append(f"| {n} | " + " | ".join(f"{v:.2f}" for v in c["mean"])
                     + f" | {sl['mean']:.3f} ± {sl['sd']:.3f} | {_per(sl['values'])} |")
    return lines


def write_report(out: Path, config: DemoConfig, runs: list[dict], total_seconds: float) -> Path:
    summary = summarize(config, runs, total_seconds)
    (out / "results.json").write_text(json.dumps(summary, indent=2, default=str))
    main, results = summary["worlds"][0], runs[0]["results"]
    methods = main["methods"]
    world = runs[0]["world"]

    plot_gold(out / "gold_reward.png", methods,
              f"Gold reward ({main['name']} world): bar = mean ± sd over {len(results)} seeds, markers = seeds")
    curve_sets = [(f"{w['name']} world", w["goal_following"]) for w in summary["worlds"] if w["goal_following"]]
    if curve_sets:
        plot_curves(out / "goal_following.png", curve_sets)
    probe_curves = [c for c in PROBE_CURVES if c[0] in config.methods]
    plot_unlearning(out / "unlearning.png", results, probe_curves)

    mach = summary["machine"]
    lines = [
        "# prefkit demo report: the toy world", "",
        f"Generated {summary['generated_utc']} on {mach['platform']} ({mach['cpus']} CPUs, torch {mach['torch']}, "
        f"{_threads_text(runs, mach)}; load average at the end {mach['load_average_at_end']}); this invocation "
        f"took {total_seconds:.0f}s (base policies: "
        + ", ".join(f"{world_name(r['world'])} " + ("loaded from cache" if r.get("base_cached")
                                                      else f"trained in {r['base_seconds']:.0f}s") for r in runs)
        + ("; finished seeds reused from an earlier run: " + ", ".join(str(r["reused"]) for r in runs)
           if any(r["reused"] for r in runs) else "")
        + "). Every number below is also in `results.json` beside this file.", "",
        "**Task.** Sort 3-6 fruit names alphabetically. Gold reward = 1 + 9 (0.4 coverage + 0.4 order + "
        "0.2 conciseness), on 1-10 (see docs/toy.md). The base policy is a 2-layer Llama "
        f"(width {world.hidden}) trained from scratch on noisy demonstrations; "
        + (f"{world.goal_prior:.0%} of them carry a goal in the relabeler's conditioning format, the "
           f"demonstration's gold score plus N(0, {world.goal_noise:g}) (the goal prior, docs/toy.md)"
           if world.goal_prior > 0 else "none of them carries a goal (no goal prior)")
        + f"; base dir `{runs[0]['base']}`.", "",
        "**Pipeline per seed**: one run of the recipe `src/prefkit/toy/demo_recipes/main.yaml` on the loop engine "
        "(`prefkit run`), one arm per method, each from the base policy, sharing the stages before the one it "
        f"changes. {config.n_train_prompts} training prompts x {config.samples_per_prompt} "
        f"samples (T={config.temperature}) -> noisy judge (aspect noise {config.judge.aspect_noise}, overall noise "
        f"{config.judge.overall_noise}) in UltraFeedback's schema -> `prefkit.data.read` + `binarize` (published: "
        "best vs random other) -> `prefkit.relabel` (D^w + D^l; half: one of the two rows per pair, by a seeded coin) "
        "-> "
        f"`prefkit.train.train_dpo` (sigmoid, beta {config.beta}, lr {config.learning_rate}, batch "
        f"{config.batch_size}, 1 epoch, cosine; eps-DPO: the same with `loss_type=\"eps-dpo\"`) -> "
        f"{config.eval_samples} samples per held-out prompt ({config.n_eval_prompts} prompts, T={config.temperature}), "
        f"{', '.join(f'`{n}`' for n in CONDITIONED)} conditioned on the best goal (10) -> gold reward.", "",
        f"## Gold reward on held-out prompts ({main['name']} world)", "",
        *main_table(methods), "",
        "**Verdict** (differences are per seed, then averaged):", "",
        *verdict_lines(methods), "",
        "![gold reward](gold_reward.png)", "",
    ]
    if curve_sets:
        lines += ["## Goal-following curves", "",
                  "Mean gold reward on the held-out prompts when the prompt is conditioned on goal g (the RA data's "
                  "conditioning: system message, `Overall score: g.`), "
                  f"{config.curve_samples or config.eval_samples} samples per prompt with the same seeds for every "
                  "goal (the evaluation's first samples); slope = "
                  "least-squares gold reward per goal point (a policy that reaches every goal exactly: 1.0).", ""]
        for title, curves in curve_sets:
            lines += [f"**{title}**", "", *curve_table(curves), ""]
        lines += ["![goal-following curves](goal_following.png)", ""]

    lines += ["## Unlearning probe", "",
              f"Mean log-probability of the rejected responses of up to {config.probe_pairs} training pairs whose "
              f"rejected response the judge scored >= {PROBE_THRESHOLD:g} of 10, logged by `train_dpo`'s probes. "
              "For the RA model, conditioned on the rejected response's own score (the goal under which it "
              "is the right answer) and on the best score 10.", "",
              "| curve | change over training (mean ± sd over seeds) | per seed |", "|---|---|---|"]
    for m, name, _, label in probe_curves:
        drops = [r[f"probe_{m}"][name][-1][1] - r[f"probe_{m}"][name][0][1]
                 for r in results if r.get(f"probe_{m}", {}).get(name)]
        mm, ss = mean_sd(drops)
        lines.append(f"| {label} | {mm:+.3f} ± {ss:.3f} | {_per(drops)} |" if drops
                     else f"| {label} | no probe points (no rejected response scored >= {PROBE_THRESHOLD:g}) | |")
    lines += ["", "![unlearning](unlearning.png)", ""]

    sel = [SELECT_PREFIX + m for m in SELECT_METRICS if SELECT_PREFIX + m in methods]
    if sel:
        budget = ", ".join(str(r.get("select_budget")) for r in results)
        lines += ["## Selection ablation (equal budget, DPO on each subset)", "",
                  f"Pairs kept per seed: {budget} (fraction {results[0].get('select_fraction')}); each subset "
                  "trained with the DPO settings above and scored with the gold reward on the same held-out prompts.",
                  "", "| selection metric | name in results.json | gold reward mean over seeds | sd over seeds | per seed |",
                  "|---|---|---|---|---|"]
        for n in sel:
            e = methods[n]
            lines.append(f"| {n[len(SELECT_PREFIX):]} | `{n}` | {e['mean']:.3f} | {e['sd']:.3f} | {_per(e['values'])} |")
        lines.append("")
    lines += rm_report_lines(results, config)

    for w in summary["worlds"][1:]:
        lines += [f"## The same table in the {w['name']} world (ablation)", "",
                  f"World settings: goal_prior {w['settings']['goal_prior']}, goal_noise {w['settings']['goal_noise']} "
                  f"(otherwise as above); base dir `{w['base_dir']}`. Stages up to the goal curves only.", "",
                  *main_table(w["methods"]), "", "**Verdict in this world:**", "", *verdict_lines(w["methods"]), ""]
    if "prior_ablation" in summary:
        lines += ["## Prior ablation: each method with and without the goal prior", "",
                  "| method | with the prior (mean ± sd) | without (mean ± sd) | with minus without, per seed | mean ± sd |",
                  "|---|---|---|---|---|"]
        for a in summary["prior_ablation"].values():
            d = a["difference"]
            lines.append(f"| {a['label']} | {a['with_prior']['mean']:.3f} ± {a['with_prior']['sd']:.3f} | "
                         f"{a['without_prior']['mean']:.3f} ± {a['without_prior']['sd']:.3f} | {_per(d['values'])} | "
                         f"{d['mean']:+.3f} ± {d['sd']:.3f} |")
        lines.append("")

    lines += ["## Per-seed details", ""]
    for w, run in zip(summary["worlds"], runs):
        for r in run["results"]:
            lines.append(
                f"- {w['name']}, seed {r['seed']}: {r.get('pairs')} pairs, {r.get('ra_pairs')} RA pairs, "
                f"{r.get('ra-half_pairs')} RA-half pairs; judge/gold correlation "
                f"{r.get('judge_gold_corr', float('nan')):.2f}; mean gold of training samples "
                f"{r.get('train_samples_gold_mean', float('nan')):.2f}; last train logs: "
                + "; ".join(f"{m}: " + ", ".join(f"{k}={v:.3g}" for k, v in r.get(f"last_log_{m}", {}).items())
                            for m in config.methods)
                + "; stage seconds: " + ", ".join(f"{k[len('seconds_'):]}={v}" for k, v in r.items()
                                                   if k.startswith("seconds_")))
    lines += ["", f"Example held-out samples ({main['name']} world, seed {results[0]['seed']}, first sample per prompt):", ""]
    for m in POLICIES:
        for p, s, g in results[0].get(f"examples_{m}", [])[:2]:
            lines.append(f"- {METHOD_LABELS[m]}: `{p}` -> `{s}` (gold {g:.2f})")
    lines += ["", "## Configuration", "", "```json", json.dumps(summary["config"], indent=2, default=str), "```", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
