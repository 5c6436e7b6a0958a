"""The real-model lab at the power calculation's size (docs/regimes.md, "Power: how many held-out
prompts and samples the real-model lab needs"; docs/real_lab.md, "The power-sized lab").

    prefkit demo --model smollm2 --lab power [--out DIR] [--seeds 5] [--prompts 300] [--samples 4]
                 [--only-seed S | --report-only]

The real-model demo (`prefkit.toy.real_model`, docs/real_lab.md) with its design unchanged except:

- **300 held-out prompts x 4 samples** per policy and seed, the same prompts and sampling seed for
  every policy of a seed (paired), in decoding batches of 256 rows pinned (`prefkit.hf_decode`:
  the samples of one seed depend on the batch size, so it is fixed, not chosen by free memory);
- **5 seeds**, each one engine run of the demo's main recipe (`prefkit.toy.demo.demo_overrides`),
  so a rerun skips the finished steps and resumes an interrupted one;
- one more arm, **DPO at the papers' scale** (`dpo-papers`): beta 0.01, learning rate 5e-7,
  full-parameter (with LoRA that rate barely moves the adapter; docs/regimes.md);
- goal-following curves of the base model and RA with 1 sample per prompt and goal (the goal-10
  point is the evaluation's sample 0).

Per seed, `OUT/seed<S>/lab_record.json` holds each policy's mean gold reward and its per-sample
gold rewards (prompt x sample, read from the evaluate steps' `per_prompt.jsonl`) and, per
comparison, the paired difference of means recomputed from those samples, the sd of one paired
difference, the within-prompt correlation rho of the two policies' samples and the intraclass
correlation c of the paired differences (the power table's inputs). `OUT/report.md`, `OUT/lab.png` and
`OUT/lab.json`: the decision per comparison by docs/regimes.md's rule (`prefkit.toy.regimes.decide`)
and the measured sigma, rho, c next to the power table's assumed ones.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from pathlib import Path

from prefkit.code_version import describe
from prefkit.errors import ConfigError
from prefkit.pipeline import engine
from prefkit.toy.demo import results_of_run, run_worlds
from prefkit.toy.demo_config import DemoConfig, log
from prefkit.toy.real_model import real_config, real_quick_config
from prefkit.toy.regimes import SEEDS, decide, interval

POWER_PROMPTS = 300
POWER_SAMPLES = 4
EVAL_BATCH_ROWS = 256
PAPERS_ARM = "dpo-papers"
# The papers' scale (arXiv:2410.08067 trains at beta 0.01, learning rate 5e-7): full-parameter.
PAPERS_TRAIN = {"use_peft": False, "beta": 0.01, "learning_rate": 5e-7}
POLICIES = ("base", "base-conditioned", "dpo", "ra", "eps-dpo", PAPERS_ARM)
LABELS = {"base": "base", "base-conditioned": "base@10", "dpo": "DPO", "ra": "RA@10", "eps-dpo": "eps-DPO",
          PAPERS_ARM: "DPO papers-scale"}
# (label, policy A, policy B): d = A - B on the same prompts and sampling seeds.
COMPARISONS = (
    ("RA - DPO", "ra", "dpo"),
    ("RA - base@10", "ra", "base-conditioned"),
    ("DPO - base", "dpo", "base"),
    ("DPO papers-scale - DPO", PAPERS_ARM, "dpo"),
    ("DPO papers-scale - base", PAPERS_ARM, "base"),
    ("eps-DPO - DPO", "eps-dpo", "dpo"),
    ("base@10 - base", "base-conditioned", "base"),
)
# The power table's assumptions (docs/regimes.md): sigma pooled 1.73 / largest 2.26; rho 0-0.5; c 0-0.2.
ASSUMED = {"sigma_pooled": 1.73, "sigma_largest": 2.26, "rho": [0.0, 0.3, 0.5], "c": [0.0, 0.1, 0.2]}
DELTA = 0.3
Z_SUM_SQ = 7.849   # (z_0.975 + z_0.80)^2
# Seconds per drawn held-out sample and per seed's training, used for the estimate stated before a
# run until the output directory holds a measured seed (docs/real_lab.md, "The power-sized lab").
EST_SECONDS_PER_SAMPLE = 0.33
EST_TRAIN_SECONDS = 300.0


def power_config(seeds: int = SEEDS, prompts: int = POWER_PROMPTS, samples: int = POWER_SAMPLES,
                 model: str = "smollm2", quick: bool = False) -> DemoConfig:
    """The lab's design: the real demo's (`real_config`; `real_quick_config`'s training sizes when
    `quick`) with `prompts` x `samples` held-out samples, the papers-scale arm and pinned batches."""
    if prompts < 2 or samples < 1:
        raise ConfigError(f"the lab needs at least 2 prompts and 1 sample each, got {prompts} x {samples}")
    cfg = (real_quick_config if quick else real_config)(seeds=seeds, model=model)
    cfg.n_eval_prompts, cfg.eval_samples, cfg.curve_samples = prompts, samples, 1
    cfg.extra_arms = {PAPERS_ARM: {"relabel": False, "train": dict(PAPERS_TRAIN)}}
    cfg.eval_batch_size = EVAL_BATCH_ROWS
    return cfg


def samples_per_seed(config: DemoConfig) -> int:
    """Held-out samples one seed draws: every policy's evaluation, plus the curves' other goals."""
    policies = len(POLICIES) if "eps-dpo" in config.methods else len(POLICIES) - 1
    curves = len(config.curve_policies) * (len(config.curve_goals) - 1) * config.n_eval_prompts
    return policies * config.n_eval_prompts * config.eval_samples + curves


# -- one seed's record ------------------------------------------------------------------------------------

def evaluate_dirs(run_dir: Path) -> dict[str, Path]:
    """policy -> its evaluate step's directory (the base policy: round 0's, shared by every arm)."""
    manifest = json.loads((run_dir / engine.MANIFEST).read_text())
    out: dict[str, Path] = {}
    for e in manifest["stages"].values():
        if e.get("status") != "done" or e.get("stage") != "evaluate" or not e.get("arm"):
            continue
        out["base" if e["round"] == 0 else e["arm"]] = run_dir / e["dir"]
    return out


def per_sample_gold(eval_dir: Path) -> list[list[float | None]]:
    """Gold rewards as [prompt][sample] from an evaluate step's per_prompt.jsonl."""
    # split on newlines only: the records are written with ensure_ascii=False, and a sample may hold
    # a character that str.splitlines() also breaks on (U+2028, U+0085, ...)
    text = (eval_dir / "per_prompt.jsonl").read_text(encoding="utf-8")
    rows = [json.loads(line) for line in text.split("\n") if line.strip()]
    n_prompts = 1 + max(r["prompt_index"] for r in rows)
    n = 1 + max(r["sample"] for r in rows)
    grid: list[list[float | None]] = [[None] * n for _ in range(n_prompts)]
    for r in rows:
        grid[r["prompt_index"]][r["sample"]] = r.get("reward_fn")
    return grid


def _mean(grid) -> float:
    vals = [v for row in grid for v in row if v is not None]
    return statistics.fmean(vals) if vals else float("nan")


def _sd(vals) -> float:
    return statistics.stdev(vals) if len(vals) > 1 else float("nan")


def icc(groups: list[list[float]]) -> float:
    """One-way intraclass correlation of values grouped by prompt (ANOVA estimator,
    (MSB - MSW) / (MSB + (m - 1) MSW), m the mean group size)."""
    groups = [g for g in groups if g]
    k, total = len(groups), sum(len(g) for g in groups)
    if k < 2 or total <= k:
        return float("nan")
    grand = statistics.fmean(v for g in groups for v in g)
    msb = sum(len(g) * (statistics.fmean(g) - grand) ** 2 for g in groups) / (k - 1)
    msw = sum((v - statistics.fmean(g)) ** 2 for g in groups for v in g) / (total - k)
    m = total / k
    den = msb + (m - 1) * msw
    return (msb - msw) / den if den > 0 else float("nan")


def paired(a: list[list], b: list[list]) -> dict:
    """One comparison on one seed from per-sample values: d = mean(a - b) over the samples both
    policies have, the sd of one paired difference, rho (a and b's samples of one prompt and sample
    index) and c (the differences' intraclass correlation within a prompt)."""
    if len(a) != len(b) or any(len(x) != len(y) for x, y in zip(a, b)):
        raise ConfigError("paired comparison: the two policies were evaluated on different prompts or samples")
    pairs = [[(x, y) for x, y in zip(ra, rb) if x is not None and y is not None] for ra, rb in zip(a, b)]
    flat = [p for row in pairs for p in row]
    diffs = [x - y for x, y in flat]
    try:
        rho = statistics.correlation([x for x, _ in flat], [y for _, y in flat])
    except statistics.StatisticsError:   # a constant policy
        rho = float("nan")
    return {"d": statistics.fmean(diffs) if diffs else float("nan"), "n": len(diffs),
            "missing": sum(len(r) for r in a) - len(diffs), "sd_diff": _sd(diffs), "rho": rho,
            "c": icc([[x - y for x, y in row] for row in pairs])}


def _step_seconds(run_dir: Path) -> float:
    """Wall seconds of the seed's finished steps, each step once (across resumed invocations)."""
    manifest = json.loads((run_dir / engine.MANIFEST).read_text())
    dirs = {e["dir"] for e in manifest["stages"].values() if e.get("status") == "done"}
    return round(sum(json.loads((run_dir / d / "done").read_text()).get("seconds") or 0.0 for d in dirs), 1)


def seed_record(run_dir: Path, seed: int) -> dict:
    """A finished seed's record (see the module's header), written to RUN_DIR/lab_record.json."""
    res = results_of_run(run_dir, seed)
    dirs = evaluate_dirs(run_dir)
    missing = [p for p in POLICIES if p not in dirs]
    gold = {p: per_sample_gold(d) for p, d in dirs.items() if p in POLICIES}
    rec = {"seed": seed, "run_dir": str(run_dir), "missing_policies": missing,
           "policies": {p: {"mean": _mean(g), "sd": _sd([v for row in g for v in row if v is not None]),
                            "engine_mean": res.get(f"gold_{p}"), "samples": g} for p, g in gold.items()},
           "comparisons": {label: paired(gold[a], gold[b]) for label, a, b in COMPARISONS
                           if a in gold and b in gold},
           "train": {arm: {"seconds": res.get(f"train_seconds_{arm}"), "last_log": res.get(f"last_log_{arm}")}
                     for arm in POLICIES if res.get(f"train_seconds_{arm}") is not None},
           "curves": {k: res[k] for k in ("curve_base", "curve_ra") if k in res},
           "stage_seconds": {k: v for k, v in res.items() if k.startswith("seconds_")},
           "step_seconds": _step_seconds(run_dir), "pairs": res.get("pairs"), "ra_pairs": res.get("ra_pairs")}
    (run_dir / "lab_record.json").write_text(json.dumps(rec, indent=1))
    return rec


# -- running --------------------------------------------------------------------------------------------

def estimate(out: Path, config: DemoConfig, seeds: list[int]) -> dict:
    """The cost stated before a run: seeds still to run x (samples x seconds per sample + training),
    from a seed already measured in OUT when there is one."""
    todo = [s for s in seeds if not (out / f"seed{s}" / "lab_record.json").is_file()]
    measured = [json.loads(p.read_text()).get("step_seconds") for p in sorted(out.glob("seed*/lab_record.json"))]
    measured = [m for m in measured if m]
    per_seed = samples_per_seed(config) * EST_SECONDS_PER_SAMPLE + EST_TRAIN_SECONDS
    basis = f"{EST_SECONDS_PER_SAMPLE} s per sample and {EST_TRAIN_SECONDS:.0f} s of training per seed (docs/real_lab.md)"
    if measured:
        per_seed, basis = statistics.fmean(measured), f"the {len(measured)} seed(s) measured in {out}"
    return {"seeds_to_run": todo, "samples_per_seed": samples_per_seed(config), "seconds_per_seed": per_seed,
            "hours": len(todo) * per_seed / 3600, "basis": basis}


def run_lab(out: str | Path, config: DemoConfig, seeds=None, progress: bool = True, report: bool = True) -> Path:
    """Run (resuming) each seed, write its record, then the report over every seed recorded in OUT;
    returns the report's path (OUT when `report` is False)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = list(range(config.seeds) if seeds is None else seeds)
    est = estimate(out, config, seeds)
    log(f"power lab: {config.n_eval_prompts} held-out prompts x {config.eval_samples} samples, "
        f"{len(POLICIES) - (0 if 'eps-dpo' in config.methods else 1)} policies, seeds {seeds}; "
        f"{est['samples_per_seed']} samples per seed; estimated {est['seconds_per_seed'] / 60:.0f} min per seed, "
        f"{est['hours']:.1f} h for the {len(est['seeds_to_run'])} seed(s) still to run ({est['basis']}); "
        f"load average {os.getloadavg()}")
    for s in seeds:
        path = out / f"seed{s}" / "lab_record.json"
        prior = json.loads(path.read_text()) if path.is_file() else {}   # a finished seed keeps its cost
        t0, load0 = time.time(), os.getloadavg()
        run_worlds([(out, config.world, True)], config, progress=progress, seeds=[s], processes=1)
        rec = seed_record(out / f"seed{s}", s)
        rec["wall_seconds"] = rec_seconds = prior.get("wall_seconds") or round(time.time() - t0, 1)
        rec["load_average"] = prior.get("load_average") or {"start": [round(x, 2) for x in load0],
                                                            "end": [round(x, 2) for x in os.getloadavg()]}
        path.write_text(json.dumps(rec, indent=1))
        log(f"seed {s}: record {path} ({rec_seconds:.0f} s)")
    if not report:
        return out
    return write_lab_report(out, config)


# -- the report -----------------------------------------------------------------------------------------

def _seed_code(run_dir: Path) -> dict | None:
    """The code that ran a seed, from its engine manifest (None for a run before code was recorded)."""
    try:
        return json.loads((run_dir / engine.MANIFEST).read_text()).get("code")
    except (OSError, ValueError):
        return None


def plot_lab(summary: dict, path: Path) -> Path:
    """One row per comparison: each seed's paired difference d_s (grey dots, just above), their mean and the 95%
    interval over seeds (bar; none with fewer than 2 seeds), the decision beside it, 0 marked."""
    import matplotlib  # noqa: PLC0415  heavy (matplotlib): only when a report is written

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    comps = list(summary["comparisons"].items())
    fig, ax = plt.subplots(figsize=(8.5, 0.55 * len(comps) + 1.4))
    for i, (_, c) in enumerate(comps):
        y = len(comps) - 1 - i
        ax.scatter(c["d"], [y + 0.2] * len(c["d"]), s=14, color="0.45", zorder=2)   # above the bar, not under it
        if not math.isnan(c["low"]):
            ax.plot([c["low"], c["high"]], [y, y], color="C0", lw=2.5, zorder=3)
        ax.scatter([c["mean"]], [y], s=40, color="C0", zorder=4)
        ax.annotate(c["decision"], (1.01, y), xycoords=("axes fraction", "data"), va="center", fontsize=8)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(range(len(comps)), [label for label, _ in reversed(comps)])
    ax.set_xlabel("paired difference in mean gold reward (dots: seeds; bar: 95% interval over seeds)")
    ax.set_title(f"power lab: {summary['prompts']} prompts x {summary['samples']} samples, "
                 f"seeds {summary['seeds']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _needed_prompts(sd_diff: float, c: float, m: int) -> float:
    n = Z_SUM_SQ * sd_diff ** 2 / DELTA ** 2
    return n * (1 + (m - 1) * max(c, 0.0)) / m


def _distinct_sds(record: dict) -> list[float]:
    """Each policy's sample sd, a policy whose samples equal an earlier one's counted once (eps-DPO's
    often equal DPO's, as in docs/regimes.md's table; a barely moved model's, the base's)."""
    seen, out = [], []
    for p in POLICIES:
        v = record["policies"].get(p)
        if v is not None and v["samples"] not in seen:
            seen.append(v["samples"])
            out.append(v["sd"])
    return out


def summarize(records: list[dict], config: DemoConfig) -> dict:
    seeds = [r["seed"] for r in records]
    policies = {p: [r["policies"][p]["mean"] for r in records if p in r["policies"]] for p in POLICIES}
    sds = [sd for r in records for sd in _distinct_sds(r)]
    comps = {}
    for label, _, _ in COMPARISONS:
        got = [r["comparisons"][label] for r in records if label in r["comparisons"]]
        if not got:
            continue
        d = [g["d"] for g in got]
        mean, lo, hi = interval(d)
        sd_diff = math.sqrt(statistics.fmean(g["sd_diff"] ** 2 for g in got))
        rho = statistics.fmean(g["rho"] for g in got)
        c = statistics.fmean(g["c"] for g in got)
        comps[label] = {"d": d, "mean": mean, "low": lo, "high": hi, "decision": decide(d, SEEDS),
                        "positive_seeds": sum(x > 0 for x in d), "sd_over_seeds": _sd(d),
                        "sd_diff": sd_diff, "rho": rho, "c": c,
                        "needed_prompts": _needed_prompts(sd_diff, c, config.eval_samples)}
    return {"seeds": seeds, "prompts": config.n_eval_prompts, "samples": config.eval_samples,
            "policies": {p: {"per_seed": v, "mean": statistics.fmean(v) if v else None} for p, v in policies.items()},
            "sigma_pooled": math.sqrt(statistics.fmean(s ** 2 for s in sds)) if sds else None,
            "sigma_largest": max(sds) if sds else None, "assumed": ASSUMED, "comparisons": comps,
            "seed_sd_for_power": 0.18,
            "papers_arm": {"arm": PAPERS_ARM, **PAPERS_TRAIN},
            "step_seconds": {r["seed"]: r.get("step_seconds") for r in records},
            "wall_seconds": {r["seed"]: r.get("wall_seconds") for r in records},
            "load_average": {r["seed"]: r.get("load_average") for r in records}}


def write_lab_report(out: Path, config: DemoConfig) -> Path:
    records = [json.loads(p.read_text()) for p in sorted(out.glob("seed*/lab_record.json"),
                                                         key=lambda p: int(p.parent.name[4:]))]
    if not records:
        raise ConfigError(f"{out}: no seed has finished (no seed*/lab_record.json)")
    s = summarize(records, config)
    s["code"] = {str(r["seed"]): _seed_code(out / f"seed{r['seed']}") for r in records}
    (out / "lab.json").write_text(json.dumps(s, indent=1))
    plot = plot_lab(s, out / "lab.png")
    f = lambda x: "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"  # noqa: E731
    whole = lambda x: "-" if math.isnan(x) else f"{x:.0f}"  # noqa: E731
    lines = [f"# The power-sized real-model lab ({config.world.name})", "",
             f"Seeds {s['seeds']} ({len(records)} of {SEEDS}); {s['prompts']} held-out prompts x {s['samples']} "
             "samples per policy and seed, the same prompts and sampling seed for every policy of a seed. "
             f"Design: docs/real_lab.md, \"The power-sized lab\"; the papers-scale arm `{PAPERS_ARM}` trains "
             f"full-parameter at beta {PAPERS_TRAIN['beta']} and learning rate {PAPERS_TRAIN['learning_rate']:g}; "
             "the other trained arms are the real demo's (LoRA, beta 0.1, learning rate 5e-4).", "",
             "## Mean gold reward per policy", "",
             "| policy | " + " | ".join(f"seed {x}" for x in s["seeds"]) + " | mean |",
             "|---|" + "---|" * (len(s["seeds"]) + 1)]
    for p, v in s["policies"].items():
        if v["per_seed"]:
            lines.append(f"| {LABELS[p]} | " + " | ".join(f(x) for x in v["per_seed"]) + f" | {f(v['mean'])} |")
    lines += ["", "## Decisions (docs/regimes.md, \"Rules that hold for every cell\")", "",
              "Per seed d_s = mean of the paired per-sample differences; interval mean ± t(0.975, n-1) · sd / √n "
              "(t(0.975, 4) = 2.776); helps / hurts need the interval to exclude 0 and 4 of 5 seeds on its side.", "",
              "| comparison | d per seed | mean | 95% interval | seeds > 0 | decision |", "|---|---|---|---|---|---|"]
    for label, c in s["comparisons"].items():
        lines.append(f"| {label} | " + ", ".join(f"{x:+.3f}" for x in c["d"]) + f" | {c['mean']:+.3f} | "
                     f"[{f(c['low'])}, {f(c['high'])}] | {c['positive_seeds']} of {len(c['d'])} | {c['decision']} |")
    lines += ["", f"![paired differences per seed and their 95% intervals]({plot.name})", "",
              "## Measured spread against the power table's assumptions", "",
              "sigma (sd of one sample's gold reward, root mean square over policies and seeds, a policy whose "
              f"samples equal another's counted once): "
              f"measured {f(s['sigma_pooled'])} (largest {f(s['sigma_largest'])}); assumed "
              f"{ASSUMED['sigma_pooled']} (largest {ASSUMED['sigma_largest']}).", "",
              "| comparison | sd of a paired difference | rho | c | prompts needed (x "
              f"{s['samples']} samples, delta {DELTA}, 80% power) | sd of d_s over seeds (power needs <= 0.18) |",
              "|---|---|---|---|---|---|"]
    for label, c in s["comparisons"].items():
        lines.append(f"| {label} | {f(c['sd_diff'])} | {f(c['rho'])} | {f(c['c'])} | {whole(c['needed_prompts'])} | "
                     f"{f(c['sd_over_seeds'])} |")
    lines += ["", f"Assumed (docs/regimes.md): rho {ASSUMED['rho']}, c {ASSUMED['c']}; the design's 300 prompts "
              "cover sigma 2.26, rho 0, c 0.1.", "", "## Cost", "",
              "Seconds of the seed's steps (each once, across resumed runs); the wall time and load average of "
              "the invocation that wrote the record; the prefkit code that ran the seed (its run's manifest).", "",
              "| seed | step s | wall s | load average start | end | code |", "|---|---|---|---|---|---|"]
    for r in records:
        la = r.get("load_average") or {}
        lines.append(f"| {r['seed']} | {r.get('step_seconds')} | {r.get('wall_seconds')} | {la.get('start')} | "
                     f"{la.get('end')} | {describe(s['code'][str(r['seed'])])} |")
    versions = {(c or {}).get("fingerprint") for c in s["code"].values()}
    if len(versions) > 1:
        lines += ["", f"**The seeds were run by {len(versions)} code versions** (above): their differences mix "
                  "code changes with seed-to-seed spread; run them again on one version for a decision."]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
