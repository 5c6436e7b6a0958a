"""A noisy AI judge for the toy task, writing UltraFeedback's raw schema.

For each completion the judge rates every gold aspect on 1-5 and gives an overall 1-10 score:

    rating(aspect)  = clip(round(1 + 4 * aspect + N(0, aspect_noise)), 1, 5)
    overall_score   = clip(round_to_half(gold_overall + N(0, overall_noise)), 1, 10)
    fine-grained_score = mean of the aspect ratings

Rows follow openbmb/UltraFeedback: {source, instruction, models, completions: [{model,
principle, custom_system_prompt, response, annotations: {aspect: {Rating: "1".."5",
Rationale}}, fine-grained_score, overall_score, critique}]}, so `prefkit.data.read` reads them
with its UltraFeedback adapter. The aspects are the toy task's (coverage, order,
conciseness), not UltraFeedback's four; the adapter keeps whatever aspects a row names.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from prefkit.toy import task


@dataclass(frozen=True)
class JudgeConfig:
    aspect_noise: float = 0.5     # std of the noise on each 1-5 aspect rating (before rounding)
    overall_noise: float = 1.0    # std of the noise on the 1-10 overall score (before rounding)
    seed: int = 0


def judge_completion(prompt, response: str, rng: random.Random, config: JudgeConfig = JudgeConfig(),
                     model: str = "policy") -> dict:
    """One UltraFeedback-style completion record for `response`."""
    aspects = task.gold_aspects(prompt, response)
    ratings = {}
    for name, value in aspects.as_dict().items():
        r = round(1 + 4 * value + rng.gauss(0, config.aspect_noise))
        ratings[name] = int(min(5, max(1, r)))
    gold = task.overall_score(aspects)
    overall = min(10.0, max(1.0, round(2 * (gold + rng.gauss(0, config.overall_noise))) / 2))
    return {
        "model": model,
        "principle": "helpfulness",
        "custom_system_prompt": "",
        "response": response,
        "annotations": {name: {"Rating": str(r), "Rationale": f"{name} judged {r} of 5"}
                        for name, r in ratings.items()},
        "fine-grained_score": sum(ratings.values()) / len(ratings),
        "overall_score": overall,
        "critique": f"gold {gold:.2f} seen with noise",
    }


def judged_score(prompt, response: str, *, aspect_noise: float = 0.5, overall_noise: float = 1.0,
                 seed: int = 0) -> dict:
    """The noisy judge as a reward function for a recipe's score stage (`reward_fn:
    prefkit.toy.judge:judged_score`, `reward_args: {aspect_noise, overall_noise, seed}`):
    {score (the overall 1-10 score), aspects (1-5 ratings), fine_grained}. Its noise is drawn
    from a generator seeded by (seed, prompt, response), so a response's rating does not depend
    on the order responses are scored in (a resumed or reordered stage rates alike), and the same
    response to the same prompt always gets the same rating."""
    instruction = prompt if isinstance(prompt, str) else task.user_text(prompt)
    digest = hashlib.sha256(json.dumps([seed, instruction, response]).encode()).digest()
    rng = random.Random(int.from_bytes(digest[:8], "big"))
    c = judge_completion(instruction, response, rng, JudgeConfig(aspect_noise, overall_noise, seed))
    return {"score": c["overall_score"], "fine_grained": c["fine-grained_score"],
            "aspects": {name: float(a["Rating"]) for name, a in c["annotations"].items()}}


def judge(prompts: Sequence, responses: Sequence[Sequence[str]], config: JudgeConfig = JudgeConfig(),
          source: str = "toy_sort", models: Sequence[str] | None = None) -> list[dict]:
    """UltraFeedback raw rows: one per prompt, one completion per response."""
    rng = random.Random(config.seed)
    rows = []
    for prompt, resps in zip(prompts, responses):
        names = list(models) if models is not None else [f"sample_{j}" for j in range(len(resps))]
        instruction = prompt if isinstance(prompt, str) else task.user_text(prompt)
        rows.append({
            "source": source,
            "instruction": instruction,
            "models": names,
            "completions": [judge_completion(instruction, r, rng, config, model=m) for r, m in zip(resps, names)],
        })
    return rows


def write_jsonl(rows: list[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path
