"""The toy world's goal prior, measured on the base policy alone (docs/toy.md, "The goal prior").

Not a timing benchmark: the world-design measurement behind the default `ToyWorldConfig.goal_prior`
and `goal_noise`. For each (goal_prior, goal_noise) given, trains (or loads from the cache) the
base policy of the default world with those settings and prints its goal-following curve: the
mean gold reward of 4 samples (T=1) on each of 100 held-out prompts when conditioned on goals
2, 4, 6, 8, 10, unconditioned, and the least-squares slope of gold on goal. No method is trained.

    python benchmarks/toy_goal_prior.py 0:0 0.1:1 0.25:1 0.5:1 0.25:2 --out prior_grid.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import tempfile
import time
from pathlib import Path


def main(argv=None) -> int:
    from prefkit.evaluate.policy import PolicySpec
    from prefkit.toy import task
    from prefkit.toy.world import ToyWorldConfig, base_policy, goal_following_curve, gold_evaluation

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("settings", nargs="+", help="goal_prior:goal_noise pairs, e.g. 0.25:1")
    ap.add_argument("--prompts", type=int, default=100)
    ap.add_argument("--out", default=None, help="also write the rows as JSON here")
    args = ap.parse_args(argv)
    prompts = task.make_prompts(args.prompts, seed=5000)  # not the demo's prompt seeds (1000+, 2000+, ...)
    rows = []
    for item in args.settings:
        frac, noise = (float(x) for x in item.split(":"))
        cfg = dataclasses.replace(ToyWorldConfig(), goal_prior=frac, goal_noise=noise)
        t0 = time.time()
        base = base_policy(cfg, progress=False)
        trained = time.time() - t0
        run_dir = Path(tempfile.mkdtemp(prefix="toy-goal-prior-"))   # the curve and the plain run share it
        curve = goal_following_curve(base, prompts, n=4, seed=0, run_dir=run_dir)
        plain = gold_evaluation({"base": PolicySpec("base", str(base), conditioning=None)}, prompts, n=4,
                                seed=0, run_dir=run_dir)["policies"]["base"]["reward_fn"]["mean"]
        shutil.rmtree(run_dir)
        row = {"goal_prior": frac, "goal_noise": noise, "key": cfg.key(), **curve, "unconditioned": plain,
               "base_seconds": round(trained, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
