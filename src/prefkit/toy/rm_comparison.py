"""The demo's reward-model stage: RMBoost versus RLAIF / West-of-N / RLCD, each through prefkit.synth.

Per seed and method, on the same fresh training prompts (the same prompt budget for every method):
`prefkit.synth.<method>` with the toy world's stand-in LLM (`prefkit.toy.rewriter.ToyRewriter`:
the base policy for sampling, rule-based imperfect rewrites, the noisy toy judge for judging) ->
`prefkit.train.train_rm` (the same RM config for every method: the base policy with a fresh
scalar head) -> `prefkit.evaluate.rm_accuracy` on held-out pairs labelled by the GOLD reward
(two base-policy samples per held-out prompt with distinct gold scores; the higher is chosen).

Also recorded per method: how many pairs the method produced, what it dropped (by reason) and the
fraction of its training pairs whose label agrees with the gold reward (label accuracy).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from prefkit import synth
from prefkit.evaluate.rm_accuracy import rm_accuracy
from prefkit.report import StageReport
from prefkit.synth import SamplingParams
from prefkit.toy import task
from prefkit.toy.demo_config import log
from prefkit.toy.judge import JudgeConfig
from prefkit.toy.recipes import pairs_by_gold
from prefkit.toy.rewriter import ToyRewriter
from prefkit.toy.world import base_policy
from prefkit.train import train_rm
from prefkit.train.config import RMConfig

RM_METHODS = ("rmboost", "rlaif", "west-of-n", "rlcd")
RM_LABELS = {"rmboost": "RMBoost", "rlaif": "RLAIF", "west-of-n": "West-of-N (N=4, toy judge)", "rlcd": "RLCD"}

# The toy task's aspects as an RMBoost / judge guideline (descriptions from prefkit.toy.task).
TOY_GUIDELINE = {
    "coverage": "lists every word the request names",
    "order": "puts the words in alphabetical order",
    "conciseness": "lists the words once each and nothing else",
}


def synthesize(method: str, prompts, backend, run_dir, *, seed: int, temperature: float, max_new_tokens: int,
               report):

    gen = SamplingParams(temperature=temperature, max_tokens=max_new_tokens)
    common = dict(run_dir=str(run_dir), generation=gen, progress=False, report=report)
    if method == "rmboost":
        return synth.rmboost(prompts, backend, guideline=TOY_GUIDELINE, aspects="llm", seed=seed,
                             rewrite=SamplingParams(temperature=0.7, max_tokens=4 * max_new_tokens), **common)
    if method == "rlaif":
        return synth.rlaif(prompts, backend, guideline=TOY_GUIDELINE, seed=seed, **common)
    if method == "west-of-n":
        return synth.west_of_n(prompts, backend, n=4, judge=backend, **common)
    if method == "rlcd":
        return synth.rlcd(prompts, backend, guideline=TOY_GUIDELINE, **common)
    raise ValueError(method)


def run_rm_comparison(out, config, world, seed: int, progress: bool = False) -> dict:
    """The comparison for one seed in directory `out`: its numbers (rm_acc_<method>, ...)."""
    cfg, out = config, Path(out)
    base = base_policy(world, progress=False)
    res: dict = {}
    prompts = task.make_prompts(cfg.rm_prompts, seed=3000 + seed, min_items=world.min_items,
                                max_items=world.max_items)
    eval_prompts = task.make_prompts(cfg.rm_eval_prompts, seed=4000 + seed, min_items=world.min_items,
                                     max_items=world.max_items)
    eval_pairs = pairs_by_gold(base, eval_prompts, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                            seed=20_000 + seed)
    res["rm_eval_pairs"] = len(eval_pairs)
    backend = ToyRewriter(base, seed=seed, judge=JudgeConfig(cfg.judge.aspect_noise, cfg.judge.overall_noise))
    ctx = {"dir": out}
    for method in RM_METHODS:
        t0 = time.time()
        report = StageReport(f"synth {method}")
        pairs = synthesize(method, prompts, backend, ctx["dir"] / "synth" / method, seed=seed,
                           temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, report=report)
        res[f"rm_pairs_{method}"] = len(pairs)
        res[f"rm_dropped_{method}"] = dict(report.dropped)
        if len(pairs):
            agree = [task.gold_reward(p, c) > task.gold_reward(p, r)
                     for p, c, r in zip(pairs["prompt"], pairs["chosen"], pairs["rejected"])]
            res[f"rm_label_gold_agreement_{method}"] = sum(agree) / len(agree)
        synth_s = time.time() - t0
        if len(pairs) < 2:
            log(f"seed {seed}: {method}: only {len(pairs)} pair(s), no reward model trained")
            res[f"rm_acc_{method}"] = None
            continue
        train = pairs.select_columns(["prompt", "chosen", "rejected"])
        steps = max(1, -(-len(train) // cfg.batch_size)) * cfg.rm_epochs
        out = ctx["dir"] / "rm" / method
        rcfg = RMConfig(model_name_or_path=str(base), output_dir=str(out), learning_rate=cfg.rm_learning_rate,
                        lr_scheduler_type="cosine", warmup_ratio=0.1, num_train_epochs=cfg.rm_epochs,
                        per_device_train_batch_size=cfg.batch_size, logging_steps=max(1, steps // 4),
                        save_strategy="no", seed=seed, max_length=256, eval_split_ratio=0.0, disable_tqdm=True)
        log(f"seed {seed}: {RM_LABELS[method]}: {len(pairs)} pairs from {len(prompts)} prompts "
            f"({synth_s:.1f}s); training a reward model ({steps} steps)")
        train_rm(rcfg, train_dataset=train)
        acc = rm_accuracy(str(out), eval_pairs, batch_size=64, max_length=256, progress=False)
        res[f"rm_acc_{method}"] = acc["accuracy"]
        res[f"rm_seconds_{method}"] = round(time.time() - t0, 1)
        log(f"seed {seed}: {RM_LABELS[method]} reward model: accuracy {acc['accuracy']:.3f} on "
            f"{acc['n']} gold-labelled pairs")
    return res


def report_lines(results: list[dict], config) -> list[str]:
    """The report section (empty when the stage did not run)."""

    if not any(f"rm_acc_{m}" in r for r in results for m in RM_METHODS):
        return []

    def mean_sd(vals):
        vals = [v for v in vals if v is not None]
        if not vals:
            return "n/a", "n/a"
        return f"{statistics.fmean(vals):.3f}", f"{statistics.stdev(vals):.3f}" if len(vals) > 1 else "0.000"

    lines = ["## Reward models: RMBoost versus RLAIF / West-of-N / RLCD", "",
             f"Per seed: {config.rm_prompts} fresh training prompts for every method, through `prefkit.synth` with "
             "the toy stand-in LLM (`prefkit.toy.rewriter`: base-policy samples, imperfect rule-based rewrites, "
             "the noisy toy judge); `prefkit.train.train_rm` (base policy + scalar head, lr "
             f"{config.rm_learning_rate}, {config.rm_epochs} epochs, batch {config.batch_size}); "
             f"`prefkit.evaluate.rm_accuracy` on held-out pairs labelled by the gold reward "
             f"({', '.join(str(r.get('rm_eval_pairs')) for r in results)} pairs per seed, from "
             f"{config.rm_eval_prompts} prompts). Label agreement = fraction of a method's own training pairs "
             "whose chosen response has the higher gold reward.", "",
             "| method | RM accuracy mean | sd over seeds | per seed | training pairs per seed | label agreement with gold |",
             "|---|---|---|---|---|---|"]
    for m in RM_METHODS:
        accs = [r.get(f"rm_acc_{m}") for r in results]
        mm, ss = mean_sd(accs)
        per = ", ".join("-" if v is None else f"{v:.3f}" for v in accs)
        npairs = ", ".join(str(r.get(f"rm_pairs_{m}")) for r in results)
        agree, _ = mean_sd([r.get(f"rm_label_gold_agreement_{m}") for r in results])
        lines.append(f"| {RM_LABELS[m]} | {mm} | {ss} | {per} | {npairs} | {agree} |")
    drops = {}
    for r in results:
        for m in RM_METHODS:
            for reason, n in (r.get(f"rm_dropped_{m}") or {}).items():
                drops[(m, reason)] = drops.get((m, reason), 0) + n
    if drops:
        lines += ["", "Prompts that gave no pair (all seeds): " + "; ".join(
            f"{RM_LABELS[m]}: {reason} x{n}" for (m, reason), n in sorted(drops.items()))]
    return lines + [""]
