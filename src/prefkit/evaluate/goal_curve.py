"""Goal-following curves: how a policy's score moves with the quality goal it is conditioned on.

A policy trained on reward-augmented data (docs/methods.md, section 1) is asked for a goal at
inference; the curve samples it on the same prompts with the same seeds at each goal g (its
conditioning spec rendering g) and reports the mean score per goal and the least-squares slope
of score on goal (1.0: the policy reaches every goal exactly; 0: it ignores the goal).
"""

from __future__ import annotations

from prefkit.evaluate.options import EvaluateOptions
from prefkit.evaluate.policy import PolicySpec, evaluate_policies


def slope(xs, ys) -> float:
    """Least-squares slope of ys on xs."""
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else float("nan")


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def goal_following_curve(model, prompts, goals, *, spec, options: EvaluateOptions | None = None,
                         per_prompt: bool = False, **overrides) -> dict:
    """Mean score of `model`'s samples on `prompts` conditioned on each goal of `goals` through
    `spec` (a `ConditioningSpec`, or a path holding one), every goal sampled with the same seeds
    (`evaluate_policies` with `options` / `overrides`; one scorer, the first chosen).

    Returns {"goals", "mean" (per goal), "slope", "scorer"}; with `per_prompt` also "per_prompt":
    for each goal, each prompt's mean score over its samples (a failed sample counts as missing).
    A shared `run_dir` makes an evaluation at one of the goals and the curve reuse each other's
    samples."""
    o = EvaluateOptions.of(options, **overrides)
    policies = {f"goal {g}": PolicySpec(f"goal {g}", str(model), conditioning=spec, goal=g) for g in goals}
    res = evaluate_policies(policies, prompts, o)
    scorer = next(k for k in res["policies"][f"goal {goals[0]}"] if k in ("reward_fn", "reward_model", "judge"))
    means = [res["policies"][f"goal {g}"][scorer]["mean"] for g in goals]
    out = {"goals": list(goals), "mean": means, "slope": slope(list(goals), means), "scorer": scorer}
    if per_prompt:
        out["per_prompt"] = [[_mean(v for v in row if v is not None) for row in res["scores"][f"goal {g}"][scorer]]
                             for g in goals]
    return out
