"""The selection ablation as a stage of the toy-world demo (`prefkit.toy.demo.STAGES`).

Alignment potential against explicit margin, implicit margin and random, at an equal budget:
the demo's judged pairs are scored once under the base policy (`selection_ablation`), each
metric keeps the same number of pairs, DPO is trained on each subset with the demo's own
recipe, and each trained policy is scored with the gold reward on the held-out prompts.

The stage reads the demo's context (`config`, `seed`, `dir`, `base`, `eval_prompts`) and the
seed's `pairs.jsonl` (so it can run in another process than the stages before it), and writes
`results["select_*"]`; the subsets go to `<seed dir>/select_<metric>.jsonl`.
"""

from __future__ import annotations

import time

from prefkit.data import read, write
from prefkit.select.selection import selection_ablation
from prefkit.toy.demo_config import eval_run_dir, eval_seed
from prefkit.toy.world import gold_evaluation
from prefkit.train import DPOConfig, train_dpo

ABLATION_METRICS = ("alignment-potential", "explicit", "implicit", "random")


def stage_select(ctx: dict, *, fraction: float = 0.4, metrics=ABLATION_METRICS) -> None:

    cfg = ctx["config"]
    seed, seed_dir, res = ctx["seed"], ctx["dir"], ctx["results"]
    pairs = read(str(seed_dir / "pairs.jsonl"))
    subsets = selection_ablation(pairs, str(ctx["base"]), fraction=fraction, metrics=metrics, seed=seed,
                                 cache_dir=str(seed_dir / "select_cache"),
                                 score_kwargs={"max_length": 256, "max_prompt_length": 192})
    budget = len(next(iter(subsets.values())))
    res["select_budget"] = budget
    res["select_fraction"] = fraction
    for metric, subset in subsets.items():
        name = metric.replace("-", "_")
        path = seed_dir / f"select_{name}.jsonl"
        write(subset, str(path))
        res[f"select_explicit_margin_{name}"] = float(sum(subset["explicit_margin"]) / max(1, len(subset)))
        if budget == 0:
            continue
        steps = max(1, -(-budget // cfg.batch_size))
        out = seed_dir / f"select_{name}"
        dcfg = DPOConfig(model_name_or_path=str(ctx["base"]), train_file=str(path), output_dir=str(out),
                         loss_type="sigmoid", beta=cfg.beta, learning_rate=cfg.learning_rate,
                         lr_scheduler_type="cosine", warmup_ratio=0.1, num_train_epochs=1,
                         per_device_train_batch_size=cfg.batch_size, logging_steps=max(1, steps),
                         save_strategy="no", seed=seed, max_length=256, max_prompt_length=192,
                         ref_cache_dir=str(seed_dir / "ref_cache"))
        t0 = time.time()
        train_dpo(dcfg)
        res[f"select_train_seconds_{name}"] = round(time.time() - t0, 1)
        ev = gold_evaluation({f"select:{metric}": str(out)}, ctx["eval_prompts"], n=cfg.eval_samples,
                             temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, seed=eval_seed(ctx),
                             run_dir=eval_run_dir(ctx), progress=ctx.get("progress", True))
        got = ev["policies"][f"select:{metric}"]["reward_fn"]
        res[f"select_gold_{name}"] = got["mean"]
        res[f"select_gold_std_{name}"] = got["std"]
