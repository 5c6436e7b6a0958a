"""Pairwise accuracy of a reward model on held-out preference pairs.

accuracy = (number of pairs with r(x, chosen) > r(x, rejected) + 0.5 * ties) / pairs scored,
overall and per `source`. Pairs the model cannot score (e.g. an empty response) are counted in
`skipped`, not in the accuracy.
"""

from __future__ import annotations

from collections import defaultdict

from prefkit.data import read
from prefkit.data import records as R
from prefkit.errors import ConfigError
from prefkit.reward_model import RewardModelScorer


def rm_accuracy(model, pairs, *, tokenizer=None, batch_size: int = 16, max_length: int = 1024,
                max_prompt_length: int | None = 512, by: str | None = R.SOURCE, progress: bool = True) -> dict:
    """Accuracy of `model` (a directory, a loaded model with `tokenizer`, or a RewardModelScorer)
    on `pairs` (a canonical PAIRS dataset or a path `prefkit.data.read` understands).

    Returns {"accuracy", "n", "correct", "ties", "skipped", "mean_margin", "per_source":
    {source: {"accuracy", "n"}}, "model"}; per-pair rewards are not kept (use `prefkit score`)."""

    if not hasattr(pairs, "column_names"):

        pairs = read(pairs)
    if R.kind_of(pairs.column_names) != "pairs":

        raise ConfigError("rm_accuracy needs preference pairs (prompt, chosen, rejected)")
    scorer = model if isinstance(model, RewardModelScorer) else RewardModelScorer(
        model, tokenizer, batch_size=batch_size, max_length=max_length, max_prompt_length=max_prompt_length)
    n = len(pairs)
    prompts = list(pairs[R.PROMPT])
    rewards = scorer.score(prompts + prompts, list(pairs[R.CHOSEN]) + list(pairs[R.REJECTED]), progress=progress,
                           desc="reward model")
    groups = list(pairs[by]) if by and by in pairs.column_names else [None] * n
    total = _Tally()
    per: dict[str, _Tally] = defaultdict(_Tally)
    for i in range(n):
        rc, rr = rewards[i], rewards[n + i]
        if rc is None or rr is None:
            total.skipped += 1
            per[str(groups[i])].skipped += 1
            continue
        for t in (total, per[str(groups[i])]):
            t.add(rc - rr)
    out = total.to_dict()
    out["model"] = scorer.name
    out["per_source"] = {k: v.to_dict() for k, v in sorted(per.items())} if by and by in pairs.column_names else {}
    return out


class _Tally:
    def __init__(self):
        self.n = self.correct = self.ties = self.skipped = 0
        self.margin = 0.0

    def add(self, margin: float) -> None:
        self.n += 1
        self.margin += margin
        if margin > 0:
            self.correct += 1
        elif margin == 0:
            self.ties += 1

    def to_dict(self) -> dict:
        acc = (self.correct + 0.5 * self.ties) / self.n if self.n else None
        return {"accuracy": acc, "n": self.n, "correct": self.correct, "ties": self.ties,
                "skipped": self.skipped, "mean_margin": self.margin / self.n if self.n else None}


def format_accuracy(result: dict) -> str:
    def fmt(d):
        acc = "n/a" if d["accuracy"] is None else f"{d['accuracy']:.4f}"
        extra = f", {d['ties']} ties" if d["ties"] else ""
        extra += f", {d['skipped']} skipped" if d["skipped"] else ""
        return f"{acc}  ({d['correct']}/{d['n']} pairs{extra})"

    lines = [f"reward model {result['model']}", f"  accuracy     {fmt(result)}"]
    for src, d in result.get("per_source", {}).items():
        lines.append(f"  {src:<12} {fmt(d)}")
    return "\n".join(lines)
