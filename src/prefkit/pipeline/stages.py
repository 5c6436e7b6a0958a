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


def _evolve_operations():
    from prefkit.select.evolve import OPERATIONS
    return tuple(OPERATIONS)


JUDGE = Option("judge", dict, None, doc="an UltraFeedback-style LLM judge (prefkit.synth.judge): {model: NAME, "
               "base_urls: [URL, ...]} (requests spread over the servers), {local: DIR} or "
               "{build: MODULE:FUNCTION, args: {...}}")
SERVERS = Option("servers", list, None, doc="OpenAI-compatible base URLs serving the policy (MODEL@URL); "
                 "none: generate locally")
SERVER_OPTIONS = Option("backend_options", dict, None,
                        doc="fields of prefkit.synth.backends.OpenAIBackend for the servers: server "
                            "(transformers: `transformers serve`, which samples only when told), concurrency, "
                            "timeout, max_retries, balance, ...")
SERVED_MODEL = Option("served_model", str, None, doc="the model name the servers serve (default: the policy path)")

STAGES: dict[str, StageDef] = {s.name: s for s in (
    StageDef("generate", _generate, "run_generate",
             exclude=("model", "prompts", "tokenizer", "progress", "desc"),
             extras=(SERVERS, SERVED_MODEL, SERVER_OPTIONS,
                     Option("chunk_size", int, 64, doc="prompts per durable chunk (a kill loses at most one chunk)"))),
    StageDef("score", _evaluate_options, "run_score", include=("reward_fn", "reward_model", "rm_options"),
             extras=(Option("batch_size", int, 16, doc="reward-model batch size"), JUDGE,
                     Option("judge_params", dict, None, doc="the judge's sampling: {temperature, top_p, max_tokens} "
                                                            "(default temperature 0, 1024 tokens)"))),
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
             choices={"operations": _evolve_operations},
             extras=(Option("backend", dict, None, doc="the LLM that rewrites the prompts and answers the rewrites: "
                                                       "{model: NAME, base_urls: [URL, ...]}, {local: DIR} or "
                                                       "{build: MODULE:FUNCTION, args: {...}}"),
                     Option("reward_model", str, None, doc="the reward model that scores the answers to the evolved "
                                                           "prompts (or judge)"),
                     Option("judge", dict, None, doc="an UltraFeedback-style judge that scores them instead (a "
                                                     "backend, as `backend`)"),
                     Option("select", dict, None, doc="SelectOptions of the second selection, and reference "
                                                      "(initial, previous) as the select stage takes it"))),
    StageDef("train", _dpo_config, "run_train",
             exclude=("model_name_or_path", "tokenizer_name_or_path", "train_file", "output_dir",
                      "reference_model_name_or_path", "resume_from_checkpoint", "trainer_args"),
             choices={"loss_type": _losses},
             extras=(Option("reference", str, None, ("initial", "previous"),
                            doc="the frozen reference from round 2 on: the initial policy or the previous round's "
                                "(required when rounds > 1)"),
                     Option("launch", dict, None, doc="{num_processes: N, config_file: accelerate.yaml}: "
                                                      "start the stage through `accelerate launch`")),
             passthrough="trainer_args"),
    StageDef("evaluate", _evaluate_options, "run_evaluate",
             include=("n", "temperature", "top_p", "max_new_tokens", "seed", "batch_size", "reward_fn",
                      "reward_model", "reference_outputs", "rm_options"),
             extras=(Option("baseline", bool, True, doc="also evaluate the initial policy (as round 0)"),)),
)}

ORDER = tuple(STAGES)
DATA_STAGES = ("generate", "score", "pair", "relabel", "select", "evolve")


def accepts_passthrough(stage: StageDef, key: str) -> bool:
    """Whether an unknown key is still valid for `stage` (train: any TrainingArguments field)."""
    if stage.passthrough == "trainer_args":
        from prefkit.train.config import trainer_arg_names
        return key in trainer_arg_names()
    return False
