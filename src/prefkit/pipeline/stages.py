"""The one map from a recipe's stage names to prefkit's stage functions and their options.

Each entry names where the stage's options come from (an options dataclass or a public
function's keyword parameters, read by `prefkit.pipeline.schema.options_of`), which of those a
recipe may not set (the engine sets them: model paths, inputs, outputs), the registries that
give the choices, the engine's own options for the stage, and the runner in
`prefkit.pipeline.runners` that calls the stage function. Rewiring a stage onto a new options
object or function is a change here only.

Stage order within a round is fixed (data flows one way): generate, score, pair, relabel,
select, evolve, train, evaluate. A recipe lists any of them, in this order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from prefkit.pipeline.schema import Option, options_of


@dataclass(frozen=True)
class StageDef:
    name: str
    source: Callable[[], Any]           # the options dataclass or function (imported lazily)
    runner: str                          # function name in prefkit.pipeline.runners
    include: tuple | None = None         # only these names of `source` (None: all)
    exclude: tuple = ()                  # names the engine sets itself
    choices: dict = field(default_factory=dict)
    extras: tuple = ()                   # the engine's own options for this stage (Option objects)
    passthrough: str | None = None       # a stage that also takes any name this check accepts

    def options(self) -> dict[str, Option]:
        opts = options_of(self.source(), include=self.include, exclude=self.exclude, choices=self.choices)
        for o in self.extras:
            opts[o.name] = o
        return opts


def _generate():
    from prefkit.generate import generate
    return generate


def _binarize():
    from prefkit.data import binarize
    return binarize


def _binarize_methods():
    from prefkit.data.binarize import METHODS
    return METHODS


def _relabel_options():
    from prefkit.relabel import RelabelOptions
    return RelabelOptions


def _select_options():
    from prefkit.select import SelectOptions
    return SelectOptions


def _select_metrics():
    from prefkit.select import available_metrics
    return available_metrics()


def _evolve_options():
    from prefkit.select.evolve import EvolveOptions
    return EvolveOptions


def _dpo_config():
    from prefkit.train import DPOConfig
    return DPOConfig


def _losses():
    """The registered losses and the losses with their own beta control (eps-dpo)."""
    from prefkit.losses import available_losses
    from prefkit.train.beta_control import BETA_CONTROLS
    return sorted(set(available_losses()) | set(BETA_CONTROLS))


def _evaluate_options():
    from prefkit.evaluate.options import EvaluateOptions
    return EvaluateOptions


SERVERS = Option("servers", list, None, doc="OpenAI-compatible base URLs serving the policy (MODEL@URL); "
                 "none: generate locally")
REWARD_ARGS = Option("reward_args", dict, None, doc="keyword arguments for reward_fn (called as "
                     "reward_fn(prompt, response, **reward_args)); it may return a number or "
                     "{score, aspects, fine_grained}")
SERVED_MODEL = Option("served_model", str, None, doc="the model name the servers serve (default: the policy path)")

STAGES: dict[str, StageDef] = {s.name: s for s in (
    StageDef("generate", _generate, "run_generate",
             exclude=("model", "prompts", "tokenizer", "progress", "desc"),
             extras=(SERVERS, SERVED_MODEL,
                     Option("chunk_size", int, 64, doc="prompts per durable chunk (a kill loses at most one chunk)"))),
    StageDef("score", _evaluate_options, "run_score", include=("reward_fn", "reward_model", "rm_options"),
             extras=(Option("batch_size", int, 16, doc="reward-model batch size"), REWARD_ARGS)),
    StageDef("pair", _binarize, "run_pair", exclude=("report", "dataset", "truthfulqa_prompts"),
             choices={"method": _binarize_methods, "ties": lambda: ("drop", "keep")}),
    StageDef("relabel", _relabel_options, "run_relabel", exclude=("model", "reference"),
             choices={"placement": lambda: ("system", "user", "auto")},
             extras=(Option("enabled", bool, True, doc="false: pass the pairs through unchanged"),)),
    StageDef("select", _select_options, "run_select",
             exclude=("progress", "plot", "scored_path", "cache_dir", "work_dir"),
             choices={"metric": _select_metrics},
             extras=(Option("reference", str, "initial", ("initial", "previous", "none"),
                            doc="reference model of dpo-implicit margins"),)),
    StageDef("evolve", _evolve_options, "run_evolve", exclude=("progress", "run_dir"),
             extras=(Option("backend", dict, None, doc="the rewriting LLM: {build: MODULE:FUNCTION} or "
                                                       "{model: NAME, base_urls: [URL, ...]}"),
                     Option("reward_model", str, None, doc="the reward model that scores the evolved prompts' responses"),
                     Option("select", dict, None, doc="SelectOptions of the second selection"))),
    StageDef("train", _dpo_config, "run_train",
             exclude=("model_name_or_path", "tokenizer_name_or_path", "train_file", "output_dir",
                      "reference_model_name_or_path", "resume_from_checkpoint", "trainer_args"),
             choices={"loss_type": _losses},
             extras=(Option("reference", str, None, ("initial", "previous"),
                            doc="the frozen reference from round 2 on: the initial policy or the previous round's "
                                "(required when rounds > 1)"),
                     Option("unlearning_probe", dict, None,
                            doc="{threshold: 5.0, pairs: 48}: log the mean log-probability of the rejected responses "
                                "of up to `pairs` of this round's pairs whose rejected response scored >= threshold, "
                                "at every logging step (on relabeled data: at the rejected response's own goal and "
                                "at the best goal) (prefkit.evaluate.unlearning)"),
                     Option("launch", dict, None, doc="{num_processes: N, config_file: accelerate.yaml}: "
                                                      "start the stage through `accelerate launch`")),
             passthrough="trainer_args"),
    StageDef("evaluate", _evaluate_options, "run_evaluate",
             include=("n", "temperature", "top_p", "max_new_tokens", "seed", "batch_size", "reward_fn",
                      "reward_model", "reference_outputs", "rm_options"),
             extras=(Option("baseline", bool, True, doc="also evaluate the initial policy (as round 0)"),
                     Option("goal", float, None, doc="condition the policy on this quality goal (e.g. 10) through "
                                                     "the conditioning below"),
                     Option("conditioning", str, "auto", ("auto", "data", "system", "user", "none"),
                            doc="the goal's spec: auto (the policy's own prefkit_conditioning.json), data (this "
                                "round's relabeled data's), system / user (the relabeler's default at that "
                                "placement), none; round 0 is always evaluated without"),
                     Option("curve_goals", list, None, doc="also a goal-following curve at these goals "
                                                           "(prefkit.evaluate.goal_curve), e.g. [2, 4, 6, 8, 10]"),
                     Option("curve_samples", int, None, doc="samples per prompt at each curve goal (default n)"),
                     REWARD_ARGS)),
)}

ORDER = tuple(STAGES)
# evaluate options that apply from round 1 on (round 0, the initial policy, is evaluated without them)
ROUND1_EVALUATE = ("goal", "conditioning", "curve_goals", "curve_samples")
DATA_STAGES = ("generate", "score", "pair", "relabel", "select", "evolve")


def accepts_passthrough(stage: StageDef, key: str) -> bool:
    """Whether an unknown key is still valid for `stage` (train: any TrainingArguments field)."""
    if stage.passthrough == "trainer_args":
        from prefkit.train.config import trainer_arg_names
        return key in trainer_arg_names()
    return False
