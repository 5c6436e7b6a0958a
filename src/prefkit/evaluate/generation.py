"""Policy evaluation: sample on held-out prompts, score each sample with a reward function.

    from prefkit.evaluate.generation import evaluate_policy
    res = evaluate_policy("runs/ra", prompts, reward_fn=gold_reward, n=4)
    res["mean"], res["std"], res["scores"]     # per-sample rewards, prompt-major

A model directory holding `prefkit_conditioning.json` is conditioned automatically (best score
as goal unless `goal` is given), through `prefkit.generate.generate`.
"""

from __future__ import annotations

import statistics
from typing import Any, Callable, Sequence


def evaluate_policy(model, prompts: Sequence, reward_fn: Callable[[Any, str], float], *, tokenizer=None,
                    n: int = 4, temperature: float = 1.0, top_p: float = 1.0, max_new_tokens: int = 64,
                    batch_size: int = 64, seed: int = 0, goal: float | None = None,
                    conditioning: Any = "auto", progress: bool = True, desc: str = "evaluate") -> dict:
    """Sample `n` responses per prompt and score them with `reward_fn(prompt, response)`.

    Returns {mean, std, per_prompt_mean, scores, samples, n, temperature}: `scores` and
    `samples` are lists (one per prompt) of `n` values. `prompt` passed to `reward_fn` is the
    unconditioned prompt.
    """
    from prefkit.generate import generate

    samples = generate(model, prompts, tokenizer=tokenizer, n=n, temperature=temperature, top_p=top_p,
                       max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed, goal=goal,
                       conditioning=conditioning, progress=progress, desc=desc)
    scores = [[float(reward_fn(p, r)) for r in rs] for p, rs in zip(prompts, samples)]
    flat = [s for row in scores for s in row]
    return {
        "mean": statistics.fmean(flat) if flat else float("nan"),
        "std": statistics.pstdev(flat) if len(flat) > 1 else 0.0,
        "per_prompt_mean": [statistics.fmean(r) for r in scores],
        "scores": scores,
        "samples": samples,
        "n": n,
        "temperature": temperature,
    }
