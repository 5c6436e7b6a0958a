"""The toy world's parts for recipes (`examples/recipes/toy-*.yaml`), named there as
`prefkit.toy.recipes:FUNCTION`: the engine (`prefkit.pipeline`) knows nothing of the toy world.

    policy: {build: prefkit.toy.recipes:base_policy, args: {quick: true}}
    prompts:
      train: {build: prefkit.toy.recipes:prompts, args: {n: 96, seed: 1000}, per_round: 48}
    stages:
      score: {reward_fn: prefkit.toy.task:gold_reward}
      synth: {method: rmboost, backend: {build: prefkit.toy.recipes:rewriter, args: {quick: true}}}
      reward_model: {eval_pairs: {build: prefkit.toy.recipes:gold_pairs, args: {n: 64, quick: true}}}
      evolve: {backend: {build: prefkit.toy.recipes:rewriter, args: {quick: true}}, ...}
"""

from __future__ import annotations

import dataclasses

from prefkit.errors import DataError
from prefkit.generate import generate
from prefkit.models import resolve_model_path
from prefkit.toy import task
from prefkit.toy.judge import JudgeConfig
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


def rewriter(quick: bool = False, model: str | None = None, seed: int = 0, edit_success: float = 0.8,
             slip: float = 0.2, aspect_noise: float = 0.5, overall_noise: float = 1.0, batch_size: int = 64,
             evolve_failure: float = 0.1, world: dict | None = None) -> ToyRewriter:
    """The toy world's stand-in LLM (`prefkit.toy.rewriter.ToyRewriter`), as a recipe's `backend`
    or `judge`: it samples from `model` (a directory, hub id or smollm2) or, by default, the
    world's base policy (`base_policy(quick, **world)`; world: ToyWorldConfig fields), rewrites
    responses by rule (synth) and prompts for the evolve stage, and judges with the toy judge's
    noise."""
    base = str(resolve_model_path(model)) if model else base_policy(quick, **(world or {}))
    return ToyRewriter(base, seed=seed, edit_success=edit_success, slip=slip, evolve_failure=evolve_failure,
                       judge=JudgeConfig(aspect_noise, overall_noise), batch_size=batch_size)


def pairs_by_gold(base, prompts, *, temperature: float, max_new_tokens: int, seed: int):
    """Held-out pairs labelled by the gold reward: two samples of `base` per prompt; a prompt whose
    samples are both non-empty and have distinct gold rewards gives a pair (the higher chosen),
    others none."""
    import datasets  # noqa: PLC0415  heavy (datasets): lazy, so importing this module stays light

    samples = generate(base, prompts, n=2, temperature=temperature, max_new_tokens=max_new_tokens,
                       batch_size=128, seed=seed, desc="gold-labelled eval samples")
    rows = []
    for p, (a, b) in zip(prompts, samples):
        if not a.strip() or not b.strip():   # an empty sample is no response to rank
            continue
        ga, gb = task.gold_reward(p, a), task.gold_reward(p, b)
        if ga == gb:
            continue
        (c, gc), (r, gr) = ((a, ga), (b, gb)) if ga > gb else ((b, gb), (a, ga))
        rows.append({"prompt": p, "chosen": c, "rejected": r, "score_chosen": gc, "score_rejected": gr,
                     "source": "gold"})
    return datasets.Dataset.from_list(rows)


def gold_pairs(n: int, seed: int = 4000, sample_seed: int = 20_000, model: str | None = None, quick: bool = False,
               temperature: float = 1.0, max_new_tokens: int = 24, world: dict | None = None,
               pairs: int | None = None):
    """`pairs_by_gold` on n fresh toy prompts (`prompts(n, seed)`, the world's item counts), sampled
    from `model` (a directory, hub id or smollm2) or, by default, the world's base policy
    (`base_policy(quick, **world)`; world: ToyWorldConfig fields). pairs: keep the first `pairs`
    pairs in prompt order (the regime map's 400 held-out pairs, docs/regimes.md); fewer is a
    DataError naming how many the n prompts gave."""
    world = world or {}
    base = str(resolve_model_path(model)) if model else base_policy(quick, **world)
    config = dataclasses.replace(QUICK_CONFIG if quick else ToyWorldConfig(), **world)
    got = pairs_by_gold(base, prompts(n, seed, config.min_items, config.max_items), temperature=temperature,
                        max_new_tokens=max_new_tokens, seed=sample_seed)
    if pairs is None:
        return got
    if len(got) < pairs:
        raise DataError(f"gold_pairs: {n} prompts (seed {seed}) gave {len(got)} gold-labelled pairs, fewer than "
                        f"the {pairs} asked for; draw from more prompts (n)")
    return got.select(range(pairs))


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
