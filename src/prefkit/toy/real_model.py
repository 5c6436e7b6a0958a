"""`prefkit demo --model smollm2`: the toy demo's pipeline on a real instruct model.

The same stages as the toy demo (`prefkit.toy.demo`): sample, judge, binarize, relabel, train
(DPO, DPO on reward-augmented data (RA, arXiv:2410.08067), eps-DPO (arXiv:2409.08696 is the
policy's own DPO loss with an adaptive beta; docs/methods.md)), evaluate (gold reward, RA
conditioned on the best goal), the unlearning probe during training, and goal-following curves
(mean gold reward conditioned on goals 2, 6 and 10) before training (the base policy) and
after RA training. The task is still the toy task (`prefkit.toy.task`: sort fruit names
alphabetically) with its gold reward and noisy judge, which read any text.

What changes is the "world": `RealWorld` stands for a real model (by default the bundled
SmolLM2-135M-Instruct, `prefkit.models.resolve_model_path("smollm2")`); its base policy is that
model, unchanged. Training is LoRA (`DPOConfig.use_peft`); each adapter is merged into the base
model (`prefkit.models.merge_lora`) so that sampling, the probe and the curves load a plain model directory.

The design (sizes, LoRA settings, learning rate, beta, goals, seeds) is `real_config()`, written
down in docs/real_lab.md before the first comparison run; `real_quick_config()` is the small form
the test suite runs (`--quick`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from prefkit.models import resolve_model_path
from prefkit.toy.demo import run_worlds
from prefkit.toy.demo_config import METHOD_LABELS, DemoConfig, log
from prefkit.toy.demo_report import (
    PROBE_CURVES,
    curve_table,
    main_table,
    plot_curves,
    plot_gold,
    plot_unlearning,
    summarize,
    verdict_lines,
)

# The methods the issue names, in training order.
REAL_METHODS = ("dpo", "ra", "eps-dpo")
REAL_CURVE_POLICIES = ("base", "ra")     # before training / after RA training
REAL_CURVE_GOALS = (2, 6, 10)
REAL_STAGES = ("generate", "score", "pair", "relabel", "train", "evaluate")   # the recipe's stages

# LoRA on every linear layer (prefkit.train.config's defaults for r, alpha and dropout).
LORA_OPTIONS = {"use_peft": True, "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05}


@dataclass(frozen=True)
class RealWorld:
    """A real model as the demo's world: the base policy is `model` (a shortcut such as 'smollm2',
    a directory or a hub id), and prompts name min_items..max_items words (the toy task's)."""

    model: str = "smollm2"
    min_items: int = 3
    max_items: int = 6
    goal_prior: float = 0.0    # no built-in goal prior: whatever the model knows is its own

    @property
    def name(self) -> str:
        return f"real model {self.model}"

    def key(self) -> str:
        return "real-" + "".join(c if c.isalnum() or c in "-_." else "_" for c in self.model)

    def base_policy(self) -> Path:

        return Path(resolve_model_path(self.model))


def real_config(seeds: int = 2, model: str = "smollm2") -> DemoConfig:
    """The fixed design of the real-model lab (docs/real_lab.md, "Design")."""
    return DemoConfig(seeds=seeds, n_train_prompts=16, n_eval_prompts=12, samples_per_prompt=4, eval_samples=2,
                      temperature=1.0, max_new_tokens=32, beta=0.1, learning_rate=5e-4, batch_size=2,
                      probe_pairs=8, probe_points=3, methods=REAL_METHODS, world=RealWorld(model=model),
                      ablation_world=None, train_options=dict(LORA_OPTIONS), curve_policies=REAL_CURVE_POLICIES,
                      curve_goals=REAL_CURVE_GOALS, curve_samples=None,
                      probe_threshold=4.0, select=False, reward_models=False)


def real_quick_config(seeds: int = 1, model: str = "smollm2") -> DemoConfig:
    """The test suite's form: the same stages and methods, a few prompts, short samples."""
    cfg = real_config(seeds=seeds, model=model)
    cfg.n_train_prompts, cfg.n_eval_prompts, cfg.samples_per_prompt, cfg.eval_samples = 8, 4, 2, 1
    cfg.max_new_tokens, cfg.probe_pairs, cfg.probe_points = 12, 4, 1
    return cfg


def run_real_demo(out: str | Path = "demo_real_out", config: DemoConfig | None = None, seeds=None,
                  progress: bool = True, report: bool = True) -> Path:
    """Run the real-model demo; returns the report's path (results.json beside it), or the output
    directory when `report` is False (a single seed run in parallel with another, say)."""

    config = config or real_config()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    run = run_worlds([(out, config.world, True)], config, progress=progress, seeds=seeds, processes=1)[0]
    if not report:
        return out
    path = write_real_report(out, config, run, time.time() - t_start)
    log(f"report: {path}")
    return path


# ----------------------------------------------------------------------------------- report

def write_real_report(out: Path, config: DemoConfig, run: dict, total_seconds: float) -> Path:
    """results.json (the toy demo's schema, docs/toy.md) and report.md with the plots."""

    summary = summarize(config, [run], total_seconds)
    (out / "results.json").write_text(json.dumps(summary, indent=2, default=str))
    world, results = summary["worlds"][0], run["results"]
    plot_gold(out / "gold_reward.png", world["methods"],
              f"Gold reward ({world['name']}): bar = mean ± sd over {len(results)} seeds, markers = seeds")
    if world["goal_following"]:
        plot_curves(out / "goal_following.png", [(world["name"], world["goal_following"])])
    probe_curves = [c for c in _probe_curves() if c[0] in config.methods]
    has_probe = plot_unlearning(out / "unlearning.png", results, probe_curves)
    m = summary["machine"]
    stage_names = [n for n in REAL_STAGES]
    lines = [
        f"# prefkit demo report: {world['name']}", "",
        f"Generated {summary['generated_utc']} in {total_seconds:.0f} s ({len(results)} seeds, "
        f"{run['reused']} of them reused from an earlier run; per-seed stage timings below) on "
        f"{m['platform']}, {m['cpus']} CPUs, torch {m['torch']} with {m['torch_threads']} threads, load average "
        f"at the end {m['load_average_at_end']}. Every number below is also in `results.json` beside this file.", "",
        f"Base policy: `{run['base']}`, unchanged. Task: the toy task (sort {config.world.min_items}-"
        f"{config.world.max_items} fruit names alphabetically, prefkit.toy.task) with its gold reward and noisy "
        f"judge. Per seed: {config.n_train_prompts} training prompts x {config.samples_per_prompt} samples, "
        f"{config.n_eval_prompts} held-out prompts x {config.eval_samples} samples, temperature "
        f"{config.temperature:g}, at most {config.max_new_tokens} new tokens; training "
        + ("LoRA (" + ", ".join(f"{k}={v}" for k, v in config.train_options.items() if k != "use_peft") + ")"
           if config.train_options.get("use_peft") else "full-parameter")
        + f", learning rate {config.learning_rate:g} (cosine, 10% warmup), beta {config.beta:g}, batch "
        f"{config.batch_size}, one epoch (docs/real_lab.md).", "",
        "## Gold reward on held-out prompts", "",
        *main_table(world["methods"]), "", "**Verdict:**", "", *verdict_lines(world["methods"]), "",
        "![gold reward](gold_reward.png)", "",
        "## Goal-following curves (mean gold reward conditioned on each goal)", "",
        "The base policy's curve is before any training; `ra`'s is after DPO on reward-augmented data. "
        "A flat curve means the model does not read the goal.", "",
        *curve_table(world["goal_following"]), "",
    ]
    if world["goal_following"]:
        lines += ["![goal following](goal_following.png)", ""]
    lines += ["## Unlearning probe", "",
              f"Mean log-prob of the rejected responses that the judge scored >= {config.probe_threshold:g} "
              "(at most " + f"{config.probe_pairs} pairs per seed), before training and at each logging step.", ""]
    for r in results:
        if not r.get("probe_pairs"):
            lines.append(f"- seed {r['seed']}: no rejected response scored >= {config.probe_threshold:g}, no probe")
            continue
        lines.append(f"- seed {r['seed']}: {r['probe_pairs']} probe pairs; "
                     + "; ".join(f"{m}: " + ", ".join(f"{name.split('/')[-1]} {pts[0][1]:.2f} -> {pts[-1][1]:.2f}"
                                                    for name, pts in r.get(f"probe_{m}", {}).items())
                                 for m in config.methods if r.get(f"probe_{m}")))
    if has_probe:
        lines += ["", "![unlearning probe](unlearning.png)"]
    lines += ["", "## Training and timings", "",
              "| seed | pairs | RA rows | judge-gold corr. | train sample gold | "
              + " | ".join(f"{n} s" for n in stage_names) + " | " + " | ".join(f"last loss {m}" for m in config.methods)
              + " |", "|---|---|---|---|---|" + "---|" * (len(stage_names) + len(config.methods))]
    for r in results:
        lines.append(f"| {r['seed']} | {r.get('pairs')} | {r.get('ra_pairs')} | {r.get('judge_gold_corr', float('nan')):.2f}"
                     f" | {r.get('train_samples_gold_mean', float('nan')):.2f} | "
                     + " | ".join(str(r.get(f"seconds_{n}", "-")) for n in stage_names) + " | "
                     + " | ".join(f"{r.get(f'last_log_{m}', {}).get('loss', float('nan')):.3f}" for m in config.methods)
                     + " |")
    lines += ["", f"Example held-out samples (seed {results[0]['seed']}, first sample per prompt):", ""]
    for name in ("base", "base-conditioned", *config.methods):
        for prompt, sample, score in results[0].get(f"examples_{name}", [])[:2]:
            lines.append(f"- {METHOD_LABELS[name]}: `{prompt}` -> `{' '.join(sample.split())[:160]}` (gold {score:.2f})")
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _probe_curves():

    return PROBE_CURVES
