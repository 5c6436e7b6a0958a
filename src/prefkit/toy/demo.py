"""`prefkit demo`: the whole pipeline in the toy world, through prefkit's public functions.

Per seed, the stages (each a function of a shared context, so further ones are added by
appending to STAGES):

  sample    the base policy samples 4 responses per training prompt   (prefkit.generate)
  judge     the noisy judge rates them in UltraFeedback's raw schema  (prefkit.toy.judge)
  binarize  read + published binarization                             (prefkit.data.read/binarize)
  relabel   reward-augmented pairs D^w + D^l and the conditioning spec (prefkit.relabel.relabel_file)
  train     DPO on the pairs, DPO on the RA pairs, eps-DPO on the pairs (prefkit.train.train_dpo),
            with the unlearning probe logged during training           (prefkit.evaluate.unlearning)
  evaluate  sample on held-out prompts (the RA model conditioned on the best score through its
            prefkit_conditioning.json), score with the gold reward    (prefkit.evaluate.generation)
  select    equal-budget selection ablation: alignment potential, explicit margin, implicit margin,
            random; DPO on each subset, gold reward                   (prefkit.select.toy_ablation)
  reward models  RMBoost / RLAIF / West-of-N / RLCD pairs from the same prompts through
            prefkit.synth with the toy stand-in LLM (prefkit.toy.rewriter), a reward model on
            each (prefkit.train.train_rm), accuracy on gold-labelled held-out pairs
            (prefkit.evaluate.rm_accuracy)                            (prefkit.toy.rm_comparison)

then a report (Markdown + PNG plots) over seeds. A seed whose results.json exists is skipped,
so an interrupted demo resumes.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from prefkit.select.toy_ablation import stage_select
from prefkit.toy import task
from prefkit.toy.judge import JudgeConfig, judge, write_jsonl
from prefkit.toy.rm_comparison import report_lines as rm_report_lines
from prefkit.toy.rm_comparison import stage_reward_models
from prefkit.toy.world import QUICK_CONFIG, ToyWorldConfig, base_policy

PROBE_THRESHOLD = 5.0


@dataclass
class DemoConfig:
    seeds: int = 3
    n_train_prompts: int = 400
    n_eval_prompts: int = 100
    samples_per_prompt: int = 4
    eval_samples: int = 4
    temperature: float = 1.0
    max_new_tokens: int = 24
    beta: float = 0.1
    learning_rate: float = 5e-4
    batch_size: int = 16
    probe_pairs: int = 48
    probe_points: int = 8
    methods: tuple[str, ...] = ("dpo", "ra", "eps-dpo")
    rm_prompts: int = 200          # training prompts per synth method (the same budget for each)
    rm_eval_prompts: int = 200     # held-out prompts for the gold-labelled RM evaluation pairs
    rm_learning_rate: float = 5e-4
    rm_epochs: int = 2
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    world: ToyWorldConfig = field(default_factory=ToyWorldConfig)


def quick_config(seeds: int = 1) -> DemoConfig:
    return DemoConfig(seeds=seeds, n_train_prompts=48, n_eval_prompts=16, eval_samples=2, probe_pairs=8,
                      probe_points=2, rm_prompts=32, rm_eval_prompts=32, world=QUICK_CONFIG)


METHOD_LABELS = {"base": "base policy", "dpo": "DPO", "ra": "DPO on reward-augmented data",
                 "eps-dpo": "eps-DPO"}
METHODS = ("dpo", "ra", "eps-dpo")


def log(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------------- stages

def stage_sample(ctx: dict) -> None:
    from prefkit.generate import generate

    cfg: DemoConfig = ctx["config"]
    ctx["train_prompts"] = task.make_prompts(cfg.n_train_prompts, seed=1000 + ctx["seed"],
                                             min_items=cfg.world.min_items, max_items=cfg.world.max_items)
    ctx["eval_prompts"] = task.make_prompts(cfg.n_eval_prompts, seed=2000 + ctx["seed"],
                                            min_items=cfg.world.min_items, max_items=cfg.world.max_items)
    ctx["train_samples"] = generate(ctx["base"], ctx["train_prompts"], n=cfg.samples_per_prompt,
                                    temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                                    batch_size=128, seed=ctx["seed"], desc="sample (base policy)")


def stage_judge(ctx: dict) -> None:
    cfg: DemoConfig = ctx["config"]
    jcfg = JudgeConfig(cfg.judge.aspect_noise, cfg.judge.overall_noise, seed=ctx["seed"])
    rows = judge(ctx["train_prompts"], ctx["train_samples"], jcfg)
    ctx["judged_path"] = write_jsonl(rows, ctx["dir"] / "judged.jsonl")
    gold = [task.gold_reward(p, r) for p, rs in zip(ctx["train_prompts"], ctx["train_samples"]) for r in rs]
    judged = [c["overall_score"] for row in rows for c in row["completions"]]
    ctx["results"]["train_samples_gold_mean"] = statistics.fmean(gold)
    ctx["results"]["judge_gold_corr"] = _corr(gold, judged)


def stage_binarize(ctx: dict) -> None:
    from prefkit import data
    from prefkit.report import StageReport

    report = StageReport("read + binarize")
    multi = data.read(str(ctx["judged_path"]), format="ultrafeedback", on_invalid="skip", report=report)
    pairs = data.binarize(multi, method="published", seed=ctx["seed"], ties="drop", report=report)
    ctx["pairs_path"] = ctx["dir"] / "pairs.jsonl"
    data.write(pairs, str(ctx["pairs_path"]))
    ctx["pairs"] = pairs
    ctx["results"]["pairs"] = len(pairs)
    ctx["results"]["binarize_dropped"] = dict(report.dropped)


def stage_relabel(ctx: dict) -> None:
    from prefkit.relabel import relabel_file

    ctx["ra_path"] = ctx["dir"] / "ra_pairs.jsonl"
    report = relabel_file(ctx["pairs_path"], ctx["ra_path"], placement="auto", tokenizer=str(ctx["base"]))
    ctx["results"]["ra_pairs"] = report.rows_out
    ctx["results"]["relabel_dropped"] = dict(report.dropped)


def stage_train(ctx: dict) -> None:
    from prefkit.evaluate.unlearning import high_quality_rejected, rejected_logp_probe
    from prefkit.relabel import find_conditioning
    from prefkit.train import DPOConfig, train_dpo
    from transformers import AutoTokenizer

    cfg: DemoConfig = ctx["config"]
    tok = AutoTokenizer.from_pretrained(str(ctx["base"]))
    hq = high_quality_rejected(ctx["pairs"], threshold=PROBE_THRESHOLD, limit=cfg.probe_pairs, seed=ctx["seed"])
    spec = find_conditioning(str(ctx["ra_path"]))
    ctx["results"]["probe_pairs"] = len(hq)
    ctx["models"] = {}
    for method in cfg.methods:
        data_path = ctx["ra_path"] if method == "ra" else ctx["pairs_path"]
        n_pairs = ctx["results"]["ra_pairs"] if method == "ra" else ctx["results"]["pairs"]
        steps = max(1, -(-n_pairs // cfg.batch_size))
        probes = {}
        if len(hq):
            if method == "ra":
                probes["probe/hq_rejected_logp"] = rejected_logp_probe(hq, tok, spec=spec, goal="own")
                probes["probe/hq_rejected_logp_goal10"] = rejected_logp_probe(hq, tok, spec=spec, goal=spec.best_goal)
            else:
                probes["probe/hq_rejected_logp"] = rejected_logp_probe(hq, tok)
        out = ctx["dir"] / method
        dcfg = DPOConfig(model_name_or_path=str(ctx["base"]), train_file=str(data_path), output_dir=str(out),
                         loss_type="eps-dpo" if method == "eps-dpo" else "sigmoid", beta=cfg.beta, learning_rate=cfg.learning_rate,
                         lr_scheduler_type="cosine", warmup_ratio=0.1, num_train_epochs=1,
                         per_device_train_batch_size=cfg.batch_size, logging_steps=max(1, steps // cfg.probe_points),
                         save_strategy="no", seed=ctx["seed"], max_length=256, max_prompt_length=192,
                         ref_cache_dir=str(ctx["dir"] / "ref_cache"), disable_tqdm=False)
        log(f"seed {ctx['seed']}: training {METHOD_LABELS[method]} on {n_pairs} pairs ({steps} steps)")
        t0 = time.time()
        # The probe before any update, then at every logging step (train_dpo's probes).
        initial = {name: fn(_load_policy(ctx["base"])) for name, fn in probes.items()}
        train_dpo(dcfg, probes=probes)
        ctx["results"][f"train_seconds_{method}"] = round(time.time() - t0, 1)
        history = json.loads((out / "prefkit_train_report.json").read_text())["log_history"]
        curves = {name: [(0, v)] + [(h["step"], h[name]) for h in history if name in h] for name, v in initial.items()}
        ctx["results"][f"probe_{method}"] = curves
        last = [h for h in history if "loss" in h]
        ctx["results"][f"last_log_{method}"] = {k: last[-1][k] for k in ("loss", "rewards/accuracies", "rewards/margins")
                                                if last and k in last[-1]}
        ctx["models"][method] = out


def stage_evaluate(ctx: dict) -> None:
    from prefkit.evaluate.generation import evaluate_policy

    cfg: DemoConfig = ctx["config"]
    models = {"base": ctx["base"], **ctx["models"]}
    for method, path in models.items():
        res = evaluate_policy(path, ctx["eval_prompts"], task.gold_reward, n=cfg.eval_samples,
                              temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, batch_size=128,
                              seed=10_000 + ctx["seed"], desc=f"evaluate {method}")
        ctx["results"][f"gold_{method}"] = res["mean"]
        ctx["results"][f"gold_std_{method}"] = res["std"]
        ctx["results"][f"examples_{method}"] = [[p, res["samples"][i][0], res["scores"][i][0]]
                                                for i, p in enumerate(ctx["eval_prompts"][:3])]
        log(f"seed {ctx['seed']}: {METHOD_LABELS[method]}: mean gold reward {res['mean']:.3f}")


STAGES: list[tuple[str, Callable[[dict], None]]] = [
    ("sample", stage_sample),
    ("judge", stage_judge),
    ("binarize", stage_binarize),
    ("relabel", stage_relabel),
    ("train", stage_train),
    ("evaluate", stage_evaluate),
    ("select", stage_select),  # alignment-potential selection ablation (prefkit.select.toy_ablation)
    ("reward models", stage_reward_models),  # RMBoost vs baselines (prefkit.toy.rm_comparison)
]

# Stages the method issues describe that this demo does not run yet (listed in the report).
NOT_YET = [
    "the paper's 'half' augmentation ablation (relabel --half)",
]


def _load_policy(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path))


def _corr(a, b) -> float:
    try:
        return statistics.correlation(a, b)
    except statistics.StatisticsError:
        return float("nan")


# ----------------------------------------------------------------------------------- driver

def run_demo(out: str | Path = "demo_out", config: DemoConfig | None = None, progress: bool = True) -> Path:
    """Run the demo; returns the path of the Markdown report."""
    config = config or DemoConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    log(f"toy world: base policy (config {config.world.key()})")
    t0 = time.time()
    base = base_policy(config.world, progress=progress)
    base_seconds = time.time() - t0
    log(f"base policy ready in {base_seconds:.1f}s: {base}")
    all_results = []
    reused = 0
    for seed in range(config.seeds):
        seed_dir = out / f"seed{seed}"
        done = seed_dir / "results.json"
        if done.exists():
            log(f"seed {seed}: results found, skipping (delete {done} to rerun)")
            all_results.append(json.loads(done.read_text()))
            reused += 1
            continue
        seed_dir.mkdir(parents=True, exist_ok=True)
        ctx = {"config": config, "seed": seed, "dir": seed_dir, "base": base, "results": {"seed": seed}}
        for name, fn in STAGES:
            t = time.time()
            log(f"seed {seed}: stage {name}")
            fn(ctx)
            ctx["results"][f"seconds_{name}"] = round(time.time() - t, 1)
        done.write_text(json.dumps(ctx["results"], indent=2, default=str))
        all_results.append(ctx["results"])
    report = write_report(out, config, all_results, base, base_seconds, time.time() - t_start, reused)
    log(f"report: {report}")
    return report


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
        f"| method | mean over seeds | sd over seeds | per seed |",
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
                     + "; stage seconds: " + ", ".join(f"{n}={r.get(f'seconds_{n}')}" for n, _ in STAGES))
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
