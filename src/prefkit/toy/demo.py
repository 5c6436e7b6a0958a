"""`prefkit demo`: the whole pipeline in the toy world, through prefkit's public functions.

Per seed, the stages (each a function of a shared context, so further ones are added by
appending to STAGES):

  sample    the base policy samples 4 responses per training prompt   (prefkit.generate)
  judge     the noisy judge rates them in UltraFeedback's raw schema  (prefkit.toy.judge)
  binarize  read + published binarization                             (prefkit.data.read/binarize)
  relabel   reward-augmented pairs D^w + D^l and the conditioning spec, and the size-matched half
            (one of each pair's two rows)                              (prefkit.relabel.relabel_file)
  train     DPO, RA (DPO on the RA pairs), RA half, eps-DPO, and IRA (pairs relabeled with the DPO
            model's implicit rewards) (prefkit.train.train_dpo); DPO, RA and eps-DPO log the
            unlearning probe during training                           (prefkit.evaluate.unlearning)
  evaluate  sample on held-out prompts: the base policy with no goal and with the best goal, each
            model (RA models conditioned on the best goal through their prefkit_conditioning.json),
            gold reward                                  (prefkit.evaluate.policy.evaluate_policies)
  goal curves  mean gold reward conditioned on goals 2..10 for base, DPO, RA (prefkit.toy.world)
  select    equal-budget selection ablation: alignment potential, explicit margin, implicit margin,
            random; DPO on each subset, gold reward                   (prefkit.toy.select_ablation)
  reward models  RMBoost / RLAIF / West-of-N / RLCD pairs from the same prompts through
            prefkit.synth with the toy stand-in LLM (prefkit.toy.rewriter), a reward model on
            each (prefkit.train.train_rm), accuracy on gold-labelled held-out pairs
            (prefkit.evaluate.rm_accuracy)                            (prefkit.toy.rm_comparison)

The world is `DemoConfig.world` (by default with the goal prior, docs/toy.md); the same seeds then
run the stages up to "goal curves" in `DemoConfig.ablation_world` (by default without the prior).
then a report (Markdown + PNG plots, `prefkit.toy.demo_report`) over seeds; the configuration is
`prefkit.toy.demo_config.DemoConfig`. A seed whose results.json exists is skipped,
so an interrupted demo resumes.
"""

from __future__ import annotations

import contextlib
import gc
import json
import multiprocessing
import os
import statistics
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Callable

from prefkit import data
from prefkit.errors import ConfigError
from prefkit.evaluate.policy import PolicySpec
from prefkit.evaluate.unlearning import high_quality_rejected, rejected_logp_probe
from prefkit.generate import generate
from prefkit.models import load_causal_lm, merge_lora
from prefkit.relabel import find_conditioning, relabel_file
from prefkit.report import StageReport
from prefkit.toy import task
from prefkit.toy.demo_config import METHOD_LABELS, METHODS, DemoConfig, eval_run_dir, eval_seed, log, world_name
from prefkit.toy.demo_report import write_report
from prefkit.toy.judge import JudgeConfig, judge, write_jsonl
from prefkit.toy.rm_comparison import stage_reward_models
from prefkit.toy.select_ablation import stage_select
from prefkit.toy.world import base_policy, default_cache_dir, goal_following_curve, gold_evaluation
from prefkit.train import DPOConfig, train_dpo

PROBED = ("dpo", "ra", "eps-dpo")   # methods whose training logs the unlearning probe


# ----------------------------------------------------------------------------------- stages

def stage_sample(ctx: dict) -> None:

    cfg: DemoConfig = ctx["config"]
    world = ctx["world"]
    ctx["train_prompts"] = task.make_prompts(cfg.n_train_prompts, seed=1000 + ctx["seed"],
                                             min_items=world.min_items, max_items=world.max_items)
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

    report = StageReport("read + binarize")
    multi = data.read(str(ctx["judged_path"]), format="ultrafeedback", on_invalid="drop", report=report)
    pairs = data.binarize(multi, method="published", seed=ctx["seed"], ties="drop", report=report)
    ctx["pairs_path"] = ctx["dir"] / "pairs.jsonl"
    data.write(pairs, str(ctx["pairs_path"]))
    ctx["pairs"] = pairs
    ctx["results"]["pairs"] = len(pairs)
    ctx["results"]["binarize_dropped"] = dict(report.dropped)


def stage_relabel(ctx: dict) -> None:
    """RA pairs (D^w + D^l) and, for ra-half, the paper's size-matched half (one row per pair)."""

    cfg: DemoConfig = ctx["config"]
    ctx["ra_path"] = ctx["dir"] / "ra_pairs.jsonl"
    report = relabel_file(ctx["pairs_path"], ctx["ra_path"], placement="auto", tokenizer=str(ctx["base"]))
    ctx["results"]["ra_pairs"] = report.rows_out
    ctx["results"]["relabel_dropped"] = dict(report.dropped)
    if "ra-half" in cfg.methods:
        ctx["ra-half_path"] = ctx["dir"] / "ra_half_pairs.jsonl"
        report = relabel_file(ctx["pairs_path"], ctx["ra-half_path"], placement="auto", tokenizer=str(ctx["base"]),
                              half=True, seed=ctx["seed"])
        ctx["results"]["ra-half_pairs"] = report.rows_out


def relabel_implicit(ctx: dict) -> None:
    """The implicit-reward ablation's data: goals from the trained DPO model's implicit rewards
    beta * (log pi_DPO - log pi_base) of each response, mapped onto 1-10 (`prefkit.relabel`)."""

    cfg: DemoConfig = ctx["config"]
    if "dpo" not in ctx["models"]:
        raise ConfigError("methods: ira relabels with the DPO model's implicit rewards; add dpo before it")
    ctx["ira_path"] = ctx["dir"] / "ira_pairs.jsonl"
    report = relabel_file(ctx["pairs_path"], ctx["ira_path"], placement="auto", tokenizer=str(ctx["base"]),
                          goal_from="implicit", model=str(ctx["models"]["dpo"]), reference=str(ctx["base"]),
                          beta=cfg.beta, batch_size=32)
    ctx["results"]["ira_pairs"] = report.rows_out
    ctx["results"]["ira_relabel_dropped"] = dict(report.dropped)


def stage_train(ctx: dict) -> None:
    from transformers import AutoTokenizer  # noqa: PLC0415  heavy (transformers): lazy, so importing this module stays light

    cfg: DemoConfig = ctx["config"]
    tok = AutoTokenizer.from_pretrained(str(ctx["base"]))
    hq = high_quality_rejected(ctx["pairs"], threshold=cfg.probe_threshold, limit=cfg.probe_pairs, seed=ctx["seed"])
    spec = find_conditioning(str(ctx["ra_path"]))
    ctx["results"]["probe_pairs"] = len(hq)
    ctx["models"] = {}
    for method in [m for m in METHODS if m in cfg.methods]:
        if method == "ira":
            relabel_implicit(ctx)
        data_path = ctx[f"{method}_path"] if method in ("ra", "ra-half", "ira") else ctx["pairs_path"]
        n_pairs = ctx["results"][f"{method}_pairs"] if method in ("ra", "ra-half", "ira") else ctx["results"]["pairs"]
        steps = max(1, -(-n_pairs // cfg.batch_size))
        probes = {}
        if len(hq) and method in PROBED:
            if method == "ra":
                probes["probe/hq_rejected_logp"] = rejected_logp_probe(hq, tok, spec=spec, goal="own")
                probes["probe/hq_rejected_logp_goal10"] = rejected_logp_probe(hq, tok, spec=spec, goal=spec.best_goal)
            else:
                probes["probe/hq_rejected_logp"] = rejected_logp_probe(hq, tok)
        out = ctx["dir"] / method
        dcfg = DPOConfig(**{**dict(
                         model_name_or_path=str(ctx["base"]), train_file=str(data_path), output_dir=str(out),
                         loss_type="eps-dpo" if method == "eps-dpo" else "sigmoid", beta=cfg.beta, learning_rate=cfg.learning_rate,
                         lr_scheduler_type="cosine", warmup_ratio=0.1, num_train_epochs=1,
                         per_device_train_batch_size=cfg.batch_size, logging_steps=max(1, steps // cfg.probe_points),
                         save_strategy="no", seed=ctx["seed"], max_length=256, max_prompt_length=192,
                         ref_cache_dir=str(ctx["dir"] / "ref_cache"), disable_tqdm=False), **cfg.train_options})
        log(f"seed {ctx['seed']}: training {METHOD_LABELS[method]} on {n_pairs} pairs ({steps} steps)")
        t0 = time.time()
        # The probe before any update, then at every logging step (train_dpo's probes).
        if probes:   # the base policy once for all of this method's probes, then let go before training
            base_model = load_causal_lm(ctx["base"], need_tokenizer=False)[0]
            initial = {name: fn(base_model) for name, fn in probes.items()}
            del base_model
        else:
            initial = {}
        train_dpo(dcfg, probes=probes)
        ctx["results"][f"train_seconds_{method}"] = round(time.time() - t0, 1)
        history = json.loads((out / "prefkit_train_report.json").read_text())["log_history"]
        curves = {name: [(0, v)] + [(h["step"], h[name]) for h in history if name in h] for name, v in initial.items()}
        ctx["results"][f"probe_{method}"] = curves
        last = [h for h in history if "loss" in h]
        ctx["results"][f"last_log_{method}"] = {k: last[-1][k] for k in ("loss", "rewards/accuracies", "rewards/margins")
                                                if last and k in last[-1]}
        if dcfg.use_peft:   # a LoRA adapter: the later stages load the merged model

            out = merge_lora(out, ctx["dir"] / f"{method}-merged", base=ctx["base"])
        ctx["models"][method] = out


def stage_evaluate(ctx: dict) -> None:
    """Gold reward on held-out prompts through `prefkit.evaluate.policy.evaluate_policies`: the
    base policy without a goal and conditioned on the best goal (the RA data's spec), each trained
    model (RA models conditioned on the best goal through their prefkit_conditioning.json). The
    evaluation's report, per-prompt rows and AlpacaEval-format outputs go to <seed>/eval; its
    requests to <seed>/eval/run, which the goal curves share."""

    cfg: DemoConfig = ctx["config"]
    spec = find_conditioning(str(ctx["ra_path"]))
    base = str(ctx["base"])
    policies = {"base": PolicySpec("base", base, conditioning=None),
                "base-conditioned": PolicySpec("base-conditioned", base, conditioning=spec),
                **{m: PolicySpec(m, str(path)) for m, path in ctx["models"].items()}}
    res = gold_evaluation(policies, ctx["eval_prompts"], n=cfg.eval_samples, temperature=cfg.temperature,
                          max_new_tokens=cfg.max_new_tokens, seed=eval_seed(ctx), run_dir=eval_run_dir(ctx),
                          output_dir=ctx["dir"] / "eval", progress=ctx.get("progress", True))
    for method in policies:
        got = res["policies"][method]["reward_fn"]
        ctx["results"][f"gold_{method}"] = got["mean"]
        ctx["results"][f"gold_std_{method}"] = got["std"]
        ctx["results"][f"examples_{method}"] = [
            [p, res["outputs"][method][i][0], res["scores"][method]["reward_fn"][i][0]]
            for i, p in enumerate(ctx["eval_prompts"][:3])]
        log(f"seed {ctx['seed']}: {METHOD_LABELS[method]}: mean gold reward {got['mean']:.3f}")


def stage_goal_curves(ctx: dict) -> None:
    """Goal-following curves: mean gold reward conditioned on goals 2, 4, 6, 8, 10 (the RA data's
    conditioning spec, the evaluation's prompts, seeds and request run, so a curve's goal-10 point
    is made of the conditioned evaluation's first `curve_samples` samples) for the base policy,
    DPO and RA."""

    cfg: DemoConfig = ctx["config"]
    spec = find_conditioning(str(ctx["ra_path"]))
    policies = {"base": ctx["base"], **ctx["models"]}
    for name in cfg.curve_policies:
        if name not in policies:
            continue
        curve = goal_following_curve(policies[name], ctx["eval_prompts"], cfg.curve_goals,
                                     n=cfg.curve_samples or cfg.eval_samples,
                                     temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                                     seed=eval_seed(ctx), spec=spec, run_dir=eval_run_dir(ctx),
                                     progress=ctx.get("progress", True))
        ctx["results"][f"curve_{name}"] = curve
        log(f"seed {ctx['seed']}: goal-following of {name}: "
            + ", ".join(f"{g}: {v:.2f}" for g, v in zip(curve["goals"], curve["gold"]))
            + f" (slope {curve['slope']:.3f})")


STAGES: list[tuple[str, Callable[[dict], None]]] = [
    ("sample", stage_sample),
    ("judge", stage_judge),
    ("binarize", stage_binarize),
    ("relabel", stage_relabel),
    ("train", stage_train),
    ("evaluate", stage_evaluate),
    ("goal curves", stage_goal_curves),
    ("select", stage_select),  # alignment-potential selection ablation (prefkit.toy.select_ablation)
    ("reward models", stage_reward_models),  # RMBoost vs baselines (prefkit.toy.rm_comparison)
]
# The ablation world runs the main table's stages only.
ABLATION_STAGES = ("sample", "judge", "binarize", "relabel", "train", "evaluate", "goal curves")


def _corr(a, b) -> float:
    try:
        return statistics.correlation(a, b)
    except statistics.StatisticsError:
        return float("nan")


# ----------------------------------------------------------------------------------- driver

def run_demo(out: str | Path = "demo_out", config: DemoConfig | None = None, progress: bool = True) -> Path:
    """Run the demo; returns the path of the Markdown report (results.json is written beside it).

    The main world's seeds go to OUT/seed<N>; the ablation world's (`config.ablation_world`, the
    main table's stages only) to OUT/<world key>/seed<N>."""
    config = config or DemoConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    worlds = [(out, config.world, [n for n, _ in STAGES])]
    if config.ablation_world is not None:
        worlds.append((out / f"world-{config.ablation_world.key()}", config.ablation_world, list(ABLATION_STAGES)))
    workers = os.cpu_count() or 1
    if config.parallel_worlds and workers >= 2:
        runs = _run_in_two_processes(worlds, config, workers, progress)
    else:
        runs = [run_world(o, config, w, _stages(names), progress) for o, w, names in worlds]
    report = write_report(out, config, runs, time.time() - t_start)
    log(f"report: {report}")
    return report


def _stages(names) -> list[tuple[str, Callable[[dict], None]]]:
    return [(n, f) for n, f in STAGES if n in names]


# -- two processes --------------------------------------------------------------------------------
# The jobs share nothing but files in their own seed directories, so two processes run them side by
# side, each on half the cores, the longest ready job first: each world's base policy, then per
# seed its part up to the goal curves, and (main world) the selection ablation, which reads that
# part's pairs.jsonl, and the reward-model comparison, which needs only the base policy. Every
# number is the same as in one process: each stage is seeded per world and seed, and the toy
# models give bit-identical results at 1 and 2 torch threads (docs/toy.md).

PARTS = (("core", ABLATION_STAGES), ("select", ("select",)), ("reward models", ("reward models",)))


def _job_base(world, threads: int, progress: bool):
    import torch  # noqa: PLC0415  heavy (torch): lazy, so importing this module stays light

    torch.set_num_threads(threads)
    return prepare_base(world, progress)


def _job_part(out: Path, config: DemoConfig, world, stage_names, seed: int, base: Path, part: str,
              threads: int, progress: bool):
    import torch  # noqa: PLC0415  heavy (torch): lazy, so importing this module stays light

    torch.set_num_threads(threads)
    return run_seed(out, config, world, base, _stages(stage_names), seed, progress, part=part)


def _run_in_two_processes(worlds, config: DemoConfig, workers: int, progress: bool) -> list[dict]:

    threads = max(1, workers // 2)
    log(f"running the demo's jobs in 2 processes, {threads} torch thread(s) each")
    runs = [{"world": w, "results": [None] * config.seeds, "reused": 0, "processes": 2} for _, w, _ in worlds]
    parts = {(k, seed): [name for name, stages in PARTS if any(s in names for s in stages)]
             for k, (_, _, names) in enumerate(worlds) for seed in range(config.seeds)}
    partial: dict[tuple[int, int], dict] = {key: {} for key in parts}
    ready: list[tuple[int, int, int, str]] = []   # (rank, world, seed, part): lower rank runs first
    running = {}

    def add(k, seed, part):
        rank = [p for p, _ in PARTS].index(part) * 2 + (k > 0)   # core before extras, main world first
        ready.append((rank, k, seed, part))
        ready.sort()

    def finished(k, seed):
        earlier = _earlier_results(worlds[k][0] / f"seed{seed}" / "results.json", seed, worlds[k][1])
        if earlier is not None:
            runs[k]["results"][seed] = earlier
            runs[k]["reused"] += 1
        return earlier is not None

    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        for k, (_, world, _) in enumerate(worlds):
            running[pool.submit(_job_base, world, threads, progress and k == 0)] = (k, None, None)
        while running:
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in done:
                k, seed, part = running.pop(fut)
                if seed is None:
                    base, seconds, cached = fut.result()
                    runs[k].update(base=base, base_seconds=seconds, base_cached=cached)
                    for s in range(config.seeds):
                        if not finished(k, s):
                            for p in parts[(k, s)]:
                                if p != "select":   # select waits for the seed's pairs (core)
                                    add(k, s, p)
                    continue
                partial[(k, seed)][part] = fut.result()[0]
                if part == "core" and "select" in parts[(k, seed)]:
                    add(k, seed, "select")
                if set(partial[(k, seed)]) == set(parts[(k, seed)]):
                    runs[k]["results"][seed] = merge_parts(worlds[k][0], seed, partial[(k, seed)])
            while ready and len(running) < 2:
                _, k, seed, part = ready.pop(0)
                o, world, names = worlds[k]
                job = pool.submit(_job_part, o, config, world, names, seed, runs[k]["base"], part, threads,
                                  progress and k == 0)
                running[job] = (k, seed, part)
    return runs


def merge_parts(out: Path, seed: int, parts: dict[str, dict]) -> dict:
    """One seed's results.json from its parts' results (in PARTS order), then the parts' files go."""
    seed_dir = out / f"seed{seed}"
    merged = {}
    for name, _ in PARTS:
        merged.update(parts.get(name, {}))
    (seed_dir / "results.json").write_text(json.dumps(merged, indent=2, default=str))
    for name in parts:
        (seed_dir / _part_file(name)).unlink(missing_ok=True)
    return merged


def _part_file(part: str) -> str:
    return f"results-{part.replace(' ', '-')}.json"


# -- one world --------------------------------------------------------------------------------------

def prepare_base(world, progress: bool = True) -> tuple[Path, float, bool]:
    """(base policy directory, seconds it took, whether it was cached). A world with its own
    `base_policy()` method (the real model, prefkit.toy.real_model) supplies it that way."""
    log(f"{'world' if hasattr(world, 'base_policy') else 'toy world'} ({world_name(world)}): base policy "
        f"(config {world.key()})")
    t0 = time.time()
    if hasattr(world, "base_policy"):
        cached, base = True, world.base_policy()
    else:
        cached = (default_cache_dir() / f"base-{world.key()}" / "prefkit_toy_world.json").exists()
        base = base_policy(world, progress=progress)
    seconds = time.time() - t0
    log(f"base policy ({world_name(world)}) ready in {seconds:.1f}s: {base}")
    return base, seconds, cached


def run_seed(out: Path, config: DemoConfig, world, base: Path, stages, seed: int, progress: bool = True,
             part: str | None = None):
    """One seed's stages in `out/seed<seed>`: (results, 1 if read from an earlier run else 0).
    Without `part`: all of them, written to results.json. With `part` (a name of `PARTS`): only
    that part's stages, written to results-<part>.json (read back when it exists, so an
    interrupted demo resumes part by part)."""
    seed_dir = out / f"seed{seed}"
    done = seed_dir / ("results.json" if part is None else _part_file(part))
    if part is not None:
        names = dict(PARTS)[part]
        stages = [(n, f) for n, f in stages if n in names]
    earlier = _earlier_results(done, seed, world, part)
    if earlier is not None:
        return earlier, 1
    seed_dir.mkdir(parents=True, exist_ok=True)
    import torch  # noqa: PLC0415  heavy (torch): lazy, so importing this module stays light

    ctx = {"config": config, "world": world, "seed": seed, "dir": seed_dir, "base": base,
           "results": {"seed": seed, "torch_threads": torch.get_num_threads()}, "progress": progress,
           "eval_prompts": task.make_prompts(config.n_eval_prompts, seed=2000 + seed, min_items=world.min_items,
                                             max_items=world.max_items)}
    with _frozen_heap():
        for name, fn in stages:
            t = time.time()
            log(f"seed {seed} ({world_name(world)}): stage {name}")
            fn(ctx)
            ctx["results"][f"seconds_{name}"] = round(time.time() - t, 1)
    done.write_text(json.dumps(ctx["results"], indent=2, default=str))
    return ctx["results"], 0


def _earlier_results(done: Path, seed: int, world, part: str | None = None) -> dict | None:
    """The results an earlier run wrote to `done` (said on the log), or None."""
    if not done.exists():
        return None
    log(f"seed {seed} ({world_name(world)}){' ' + part if part else ''}: results found, skipping "
        f"(delete {done} to rerun)")
    return json.loads(done.read_text())


@contextlib.contextmanager
def _frozen_heap():
    """Collect, then keep every object alive now in the collector's permanent generation until
    the block ends. Each trainer run ends in a full `gc.collect()` (accelerate's cache clearing),
    which otherwise walks the ~400k objects that torch, transformers and datasets leave after
    import: about 0.2 s each time, 13 times a seed. Only objects alive at the start are frozen,
    and they are unfrozen at the end, so nothing collectable stays uncollected."""

    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def run_world(out: Path, config: DemoConfig, world, stages, progress: bool = True, seeds=None) -> dict:
    """All seeds in one world, in this process: {world, base, base_seconds, base_cached, reused,
    results (one dict per seed)}. seeds: the seeds to run (default range(config.seeds))."""
    base, base_seconds, cached = prepare_base(world, progress)
    all_results, reused = [], 0
    for seed in (range(config.seeds) if seeds is None else seeds):
        results, was_reused = run_seed(out, config, world, base, stages, seed, progress)
        all_results.append(results)
        reused += was_reused
    return {"world": world, "base": base, "base_seconds": base_seconds, "base_cached": cached, "reused": reused,
            "results": all_results}
