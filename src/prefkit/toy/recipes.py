"""The toy world's parts for recipes (`examples/recipes/toy-*.yaml`), named there as
`prefkit.toy.recipes:FUNCTION`: the engine (`prefkit.pipeline`) knows nothing of the toy world.

    policy: {build: prefkit.toy.recipes:base_policy, args: {quick: true}}
    prompts:
      train: {build: prefkit.toy.recipes:prompts, args: {n: 96, seed: 1000}, per_round: 48}
    stages:
      score: {reward_fn: prefkit.toy.task:gold_reward}
      evolve: {backend: {build: prefkit.toy.recipes:rewriter, args: {quick: true}}, ...}
"""

from __future__ import annotations

import dataclasses

from prefkit.toy import task
from prefkit.toy.rewriter import ToyRewriter
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


def rewriter(quick: bool = False, seed: int = 0, evolve_failure: float = 0.1, **world) -> ToyRewriter:
    """The toy world's stand-in LLM (`prefkit.toy.rewriter.ToyRewriter`) over its base policy: it
    rewrites prompts for the evolve stage, answers them (sampling the base policy) and judges
    answers (the noisy toy judge), as a recipe's `backend` or `judge`."""
    return ToyRewriter(base_policy(quick, **world), seed=seed, evolve_failure=evolve_failure)
