"""The toy world's parts for recipes (`examples/recipes/toy-*.yaml`), named there as
`prefkit.toy.recipes:FUNCTION`: the engine (`prefkit.pipeline`) knows nothing of the toy world.

    policy: {build: prefkit.toy.recipes:base_policy, args: {quick: true}}
    prompts:
      train: {build: prefkit.toy.recipes:prompts, args: {n: 96, seed: 1000}, per_round: 48}
    stages:
      score: {reward_fn: prefkit.toy.task:gold_reward}
"""

from __future__ import annotations

import dataclasses

from prefkit.toy import task
from prefkit.toy.world import QUICK_CONFIG, ToyWorldConfig
from prefkit.toy.world import base_policy as _base_policy


def base_policy(quick: bool = False, **world) -> str:
    """The world's base policy directory (trained on first use, then cached): the demo's world,
    or with quick=True the small one of `prefkit demo --quick`; `world` overrides ToyWorldConfig
    fields (e.g. goal_prior: 0)."""
    config = QUICK_CONFIG if quick else ToyWorldConfig()
    return str(_base_policy(dataclasses.replace(config, **world), progress=False))


def prompts(n: int, seed: int = 0, min_items: int = 3, max_items: int = 6) -> list[str]:
    """n sorting prompts of the toy task (`prefkit.toy.task.make_prompts`)."""
    return task.make_prompts(n, seed=seed, min_items=min_items, max_items=max_items)


def validation_prompts(n: int, seed: int, exclude: dict | None = None, min_items: int = 3,
                       max_items: int = 6) -> list[str]:
    """n sorting prompts (`task.make_prompts(n, seed)`) without any whose text is also a prompt of
    `exclude` = {n: N, seeds: [...]} (the test prompts `task.make_prompts(N, seed=S)`): the regime
    map's validation prompts, disjoint from its test prompts (docs/regimes.md, "Learning rates")."""
    got = task.make_prompts(n, seed=seed, min_items=min_items, max_items=max_items)
    if not exclude:
        return got
    test = {p for s in exclude.get("seeds", ()) for p in task.make_prompts(int(exclude["n"]), seed=int(s),
                                                                          min_items=min_items, max_items=max_items)}
    return [p for p in got if p not in test]
