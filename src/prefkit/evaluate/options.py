"""`EvaluateOptions`: every option of a policy evaluation, in one object.

`evaluate_policies` and `prefkit eval policy` take it; the function also accepts the fields as
keywords, which override the object (`evaluate_policies(p, prompts, options, n=4)`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from prefkit.errors import ConfigError
from prefkit.evaluate.scorers import get_scorer
from prefkit.synth.backends import Backend, SamplingParams


@dataclass(frozen=True)
class EvaluateOptions:
    """scorers: names registered with `prefkit.evaluate.scorers.register_scorer` (built in:
    'reward-fn', 'reward-model', 'judge-single' (1-10 grade), 'pairwise' (against a reference,
    both orders; win rates)); None picks them from what is given: reward-fn with `reward_fn`,
    reward-model with `reward_model`, and with a `judge` 'pairwise' when a reference is given,
    else 'judge-single'.

    Generation: n samples per prompt at temperature / top_p, max_new_tokens, seed; batch_size
    for local policies. Scorer inputs: reward_fn (a callable or 'module:function'), reward_model
    (a directory or a `RewardModelScorer`; rm_options go to its constructor), judge (a backend)
    with judge_params (default temperature 0, 512 tokens) and judge_explain (False: verdict or
    rating alone), reference (the name of one of the policies, whose sample 0 is the reference)
    or reference_outputs (a file or a list aligned with the prompts), official_lc ('auto' calls
    AlpacaEval's own length-controlled GLM when its inputs are present, False never).
    Files: output_dir (results.json, report.md, per_prompt.jsonl, outputs/), run_dir (finished
    requests; default output_dir/run, else a scratch directory), retry_failed, progress.
    prompt_options: passed to `load_prompts` (split, subset, revision, format)."""

    scorers: tuple[str, ...] | None = None
    n: int = 1
    temperature: float = 0.7
    top_p: float = 1.0
    max_new_tokens: int = 512
    seed: int = 0
    batch_size: int = 16
    reward_fn: Any = None
    reward_model: Any = None
    rm_options: dict | None = None
    judge: Backend | None = None
    judge_params: SamplingParams | None = None
    judge_explain: bool = True
    reference: str | None = None
    reference_outputs: Any = None
    official_lc: bool | str = "auto"
    output_dir: Any = None
    run_dir: Any = None
    retry_failed: bool = False
    progress: bool = True
    prompt_options: dict | None = None

    def __post_init__(self):
        if self.scorers is not None:
            names = (self.scorers,) if isinstance(self.scorers, str) else tuple(self.scorers)
            for name in names:
                get_scorer(name)  # an unknown name is a ConfigError naming the registered ones
            object.__setattr__(self, "scorers", names)
        if self.n < 1:
            raise ConfigError(f"n must be >= 1, got {self.n}")

    @classmethod
    def of(cls, options: EvaluateOptions | None = None, **overrides) -> EvaluateOptions:
        """`options` (default: all defaults) with `overrides` (field=value) applied."""
        return replace(options if options is not None else cls(), **overrides)

    @property
    def generation(self) -> SamplingParams:
        return SamplingParams(temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_new_tokens,
                              seed=self.seed)

    def chosen_scorers(self) -> tuple[str, ...]:
        """The scorers to run: `scorers`, or those the given inputs call for (see the class doc)."""
        if self.scorers is not None:
            return self.scorers
        picked = [name for name, given in (("reward-fn", self.reward_fn), ("reward-model", self.reward_model))
                  if given is not None]
        if self.judge is not None:
            has_reference = self.reference is not None or self.reference_outputs is not None
            picked.append("pairwise" if has_reference else "judge-single")
        return tuple(picked)
