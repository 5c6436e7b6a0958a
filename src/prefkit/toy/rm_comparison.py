"""The demo's reward-model comparison: RMBoost versus RLAIF / West-of-N / RLCD, the arms of the
recipe src/prefkit/toy/demo_recipes/rm.yaml (run per seed by `prefkit.toy.demo`).

Per seed, on the same fresh training prompts (the same prompt budget for every method): a synth
stage per arm (`prefkit.synth.<method>` with the toy world's stand-in LLM,
`prefkit.toy.rewriter.ToyRewriter`: the base policy for sampling, rule-based imperfect rewrites,
the noisy toy judge for judging) -> a reward_model stage (`prefkit.train.train_rm`, the same RM
config for every method: the base policy with a fresh scalar head) and its accuracy
(`prefkit.evaluate.rm_accuracy`) on held-out pairs labelled by the GOLD reward (two base-policy
samples per held-out prompt with distinct gold scores; the higher is chosen).

Also recorded per method (`results_of_rm_run`): how many pairs the method produced, what it
dropped (by reason) and the fraction of its training pairs whose label agrees with the gold
reward (label accuracy). This module reads a run back and writes the report's section.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from prefkit.toy import task

RM_RECIPE = Path(__file__).parent / "demo_recipes" / "rm.yaml"
RM_METHODS = ("rmboost", "rlaif", "west-of-n", "rlcd")
RM_LABELS = {"rmboost": "RMBoost", "rlaif": "RLAIF", "west-of-n": "West-of-N (N=4, toy judge)", "rlcd": "RLCD"}


def near_copy_share(synth_metrics: dict) -> float | None:
    """The share of RMBoost's returned rewrites that were near-copies of y1 (dropped by
    `prefkit.synth.rmboost`): near-copy drops / (pairs + every 'rewrite unusable' drop)."""
    dropped = synth_metrics.get("dropped", {})
    unusable = sum(n for reason, n in dropped.items() if reason.startswith("rewrite unusable"))
    returned = synth_metrics["pairs"] + unusable
    near = sum(n for reason, n in dropped.items() if "near-copy" in reason)
    return near / returned if returned else None


def results_of_rm_run(run_dir: Path, arms: dict[str, str] | None = None) -> dict:
    """One seed's numbers (rm_acc_<method>, rm_pairs_<method>, ...) from a run of rm.yaml; arms:
    method -> the arm that ran it (default: the recipe's arm names, the methods')."""
    manifest = json.loads((Path(run_dir) / "manifest.json").read_text())
    res: dict = {}
    for m in RM_METHODS:
        arm = (arms or {}).get(m, m)
        synth = manifest["stages"].get(f"{arm}/round-1/synth")
        rm = manifest["stages"].get(f"{arm}/round-1/reward_model")
        if not synth or synth.get("status") != "done":
            continue
        res[f"rm_pairs_{m}"] = synth["metrics"]["pairs"]
        res[f"rm_dropped_{m}"] = synth["metrics"].get("dropped", {})
        if m == "rmboost":
            res["rm_near_copy_share_rmboost"] = near_copy_share(synth["metrics"])
        rows = [json.loads(line) for line in Path(synth["output"]).read_text().splitlines() if line.strip()]
        if rows:
            agree = [task.gold_reward(r["prompt"], r["chosen"]) > task.gold_reward(r["prompt"], r["rejected"])
                     for r in rows]
            res[f"rm_label_gold_agreement_{m}"] = sum(agree) / len(agree)
        if rm and rm.get("status") == "done":
            acc = rm["metrics"].get("eval_accuracy") or {}
            res[f"rm_acc_{m}"] = acc.get("accuracy")
            res["rm_eval_pairs"] = acc.get("n")
            res[f"rm_seconds_{m}"] = round((synth.get("seconds") or 0) + (rm.get("seconds") or 0), 1)
        else:
            res[f"rm_acc_{m}"] = None
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
