"""Evaluation scorers: a registry (`register_scorer`) and the built-in per-output scorers.

A scorer is either

- per output (`compares=False`): ``score(ctx, policy, items) -> Scores`` gets one policy's
  generated outputs as `items`, a list of (PromptRow, text) (failed generations are left out), and
  returns one value per item (None: could not score it). `Scores.summary` adds fields to the
  policy's summary (mean, std, standard_error, n, failed are computed here) and `Scores.details`
  adds columns to each output's row in per_prompt.jsonl; or
- comparing (`compares=True`): ``score(ctx, outputs, records) -> {policy: {key: value}}`` gets
  every policy's outputs ({name: [[text or None] * n per prompt]}) and the per-output records
  keyed by (policy, prompt index, sample), and returns entries for the policies' results
  (the built-in 'pairwise' in `prefkit.evaluate.pairwise`).

`ctx` is a `ScoringContext`: the `EvaluateOptions` (the scorer inputs reward_fn, reward_model,
judge, judge_params, reference, ...), the prompt rows and the durable request `Run` (judge
requests go through it, so a killed evaluation resumes). A scorer's results sit under
`results["policies"][name][key]` with key = its name with '-' as '_' ('reward-fn' ->
'reward_fn'), and its values per output under `results["scores"][name][key]`.

Built in: 'reward-fn' (a Python function f(prompt, response) -> float), 'reward-model' (a
sequence-classification reward model), 'judge-single' (an LLM judge's 1-10 grade), 'pairwise'.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any, Callable

from prefkit.evaluate.judging import grade_single
from prefkit.evaluate.winrate import mean_and_se
from prefkit.refs import resolve_ref
from prefkit.registry import Registry
from prefkit.reward_model import RewardModelScorer
from prefkit.synth.runs import Run

__all__ = ["Scorer", "Scores", "ScoringContext", "register_scorer", "get_scorer", "available_scorers",
           "summary_of", "resolve_reward_fn", "NEEDS"]

#: what a scorer may need from the options, and how a user gives it (for the error)
NEEDS = {
    "reward_fn": "a reward function (--reward-fn MODULE:FUNCTION)",
    "reward_model": "a reward model (--reward-model DIR)",
    "judge": "a judge backend (--judge-model with --judge-base-url, or --judge-local DIR)",
    "reference": "exactly one of a reference policy (--reference NAME) or reference outputs (--reference-outputs FILE)",
}


@dataclass
class ScoringContext:
    """What a scorer may use: `options` (an `EvaluateOptions`), `rows` (the PromptRows), `run`."""

    options: Any
    rows: list
    run: Run


@dataclass
class Scores:
    """One value per output (None: not scored), plus summary fields and per-output columns."""

    values: list
    summary: dict = field(default_factory=dict)
    details: list[dict] | None = None


@dataclass(frozen=True)
class Scorer:
    name: str
    score: Callable
    needs: frozenset
    help: str
    compares: bool = False
    #: the per-output column in per_prompt.jsonl (default: `key`)
    column: str | None = None

    @property
    def key(self) -> str:
        return self.name.replace("-", "_")

    def missing(self, options) -> list[str]:
        """The needs that `options` does not give."""
        given = {"reward_fn": options.reward_fn is not None, "reward_model": options.reward_model is not None,
                 "judge": options.judge is not None,
                 "reference": (options.reference is None) != (options.reference_outputs is None)}
        return [n for n in sorted(self.needs) if not given[n]]


_SCORERS: Registry[Scorer] = Registry("scorer")


def register_scorer(name: str, *, needs=(), help: str = "", compares: bool = False, column: str | None = None):
    """Decorator: make `score` the evaluation scorer `name` (`prefkit eval policy --scorer NAME`,
    `EvaluateOptions(scorers=(NAME,))`); see the module docstring for the two shapes. needs: which
    of NEEDS the options must give (checked before anything is generated)."""
    bad = sorted(set(needs) - set(NEEDS))
    if bad:
        raise TypeError(f"scorer {name!r}: needs must be among {sorted(NEEDS)}, not {bad}")
    return _SCORERS.decorator(name, lambda score: Scorer(name, score, frozenset(needs), help or name, compares,
                                                         column))


#: get_scorer(name) -> Scorer (ConfigError naming the choices if none); available_scorers() -> sorted names
get_scorer = _SCORERS.get
available_scorers = _SCORERS.names


def summary_of(values: list) -> dict:
    """mean, population std, standard error, n scored and n failed of per-output values."""
    got = [v for v in values if v is not None]
    m, se = mean_and_se(got)
    return {"mean": m, "std": statistics.pstdev(got) if len(got) > 1 else (0.0 if got else None),
            "standard_error": se, "n": len(got), "failed": len(values) - len(got)}


def resolve_reward_fn(fn) -> Callable:
    """A callable, or 'module:function' (e.g. 'prefkit.toy.task:gold_reward')."""
    if callable(fn):
        return fn
    return resolve_ref(fn, what="--reward-fn", example="prefkit.toy.task:gold_reward")


# -- the built-in per-output scorers ----------------------------------------------------------------

@register_scorer("reward-fn", needs=("reward_fn",), help="a Python reward function f(prompt, response) -> float")
def score_reward_fn(ctx: ScoringContext, policy: str, items: list) -> Scores:
    fn = resolve_reward_fn(ctx.options.reward_fn)
    name = getattr(fn, "__module__", "") + "." + getattr(fn, "__qualname__", str(fn))
    return Scores([float(fn(row.prompt, text)) for row, text in items], summary={"name": name})


@register_scorer("reward-model", needs=("reward_model",), help="a sequence-classification reward model")
def score_reward_model(ctx: ScoringContext, policy: str, items: list) -> Scores:
    rm = ctx.options.reward_model
    scorer = rm if isinstance(rm, RewardModelScorer) else RewardModelScorer(rm, **(ctx.options.rm_options or {}))
    values = scorer.score([row.prompt for row, _ in items], [text for _, text in items],
                          progress=ctx.options.progress, desc=f"reward model {policy}")
    return Scores(list(values), summary={"name": scorer.name})


@register_scorer("judge-single", needs=("judge",), column="judge_score",
                 help="an LLM judge grades each output 1-10")
def score_judge_single(ctx: ScoringContext, policy: str, items: list) -> Scores:
    o = ctx.options
    grades = grade_single(ctx.run, o.judge, [(row.messages, text) for row, text in items], o.judge_params,
                          desc=f"judge {policy}", explain=o.judge_explain)
    fails: dict[str, int] = {}
    for g in grades:
        if g.failure:
            key = g.failure.split(":")[0]
            fails[key] = fails.get(key, 0) + 1
    return Scores([g.score for g in grades], summary={"failures": fails, "judge": o.judge.describe()},
                  details=[{"judge_failure": g.failure, "judge_raw": g.raw} for g in grades])
