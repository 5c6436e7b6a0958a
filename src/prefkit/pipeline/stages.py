"""The one map from a recipe's stage names to prefkit's stage functions and their options.

Each entry names where the stage's options come from (an options dataclass or a public
function's keyword parameters, read by `prefkit.pipeline.schema.options_of`), which of those a
recipe may not set (the engine sets them: model paths, inputs, outputs), the registries that
give the choices, the engine's own options for the stage, and the runner in
`prefkit.pipeline.runners` that calls the stage function. Rewiring a stage onto a new options
object or function is a change here only.

Stage order within a round is fixed (data flows one way): generate, score, pair, synth,
relabel, select, evolve, reward_model, train, sft, evaluate. A recipe lists any of them, in this
order; `needs` says which stage must come before a stage (one of them; `needs_for` when that
depends on the stage's options: relabel with `rows: sft` conditions the judged samples, so it
needs score instead of pair), `replaces` which stages it cannot share a recipe with (synth builds
the round's pairs from its prompts, as generate, score and pair do from samples).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from prefkit.errors import ConfigError
from prefkit.pipeline.schema import Option, error_key, options_of


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
    # the option that picks the options object: `source(value)` (synth: method -> its options class)
    variant: str | None = None
    variant_choices: Callable[[], Any] | None = None
    check: Callable[[dict], None] | None = None   # cross-option checks; ConfigError("KEY[.SUB]: what")
    needs: tuple = ()                    # one of these stages must come before it
    replaces: tuple = ()                 # stages it cannot share a recipe with
    needs_for: Callable[[dict], tuple] | None = None   # `needs` for these options (default: needs)

    def needs_of(self, opts: dict) -> tuple:
        """The stages one of which must come before this one, for the stage's options."""
        return self.needs_for(opts) if self.needs_for is not None else self.needs

    def options(self, given: dict | None = None) -> dict[str, Option]:
        """The stage's options; for a stage with a `variant`, those of the variant `given` names
        (ConfigError "VARIANT: ..." when it is missing or not one of the choices)."""
        if self.variant is None:
            return self._with_extras(options_of(self.source(), include=self.include, exclude=self.exclude,
                                                choices=self.choices))
        pick = Option(self.variant, str, None, tuple(self.variant_choices()))
        which = pick.check((given or {}).get(self.variant))
        if which is None:
            raise ConfigError(f"{self.variant}: missing; one of {', '.join(pick.choices)}")
        opts = {self.variant: pick}
        opts.update(options_of(self.source(which), include=self.include, exclude=self.exclude, choices=self.choices))
        return self._with_extras(opts)

    def _with_extras(self, opts: dict) -> dict[str, Option]:
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


def _synth_options(method: str):
    from prefkit.synth.methods import get_synth_method
    return get_synth_method(method).options


def _synth_methods():
    from prefkit.synth.methods import available_synth_methods
    return available_synth_methods()


def _check_synth(opts: dict) -> None:
    from prefkit.pipeline.backend_spec import check_backend_spec
    from prefkit.synth.methods import get_synth_method

    if opts.get("backend") is None:
        raise ConfigError("backend: missing; the LLM that writes the pairs: {build: MODULE:FUNCTION, args: {...}}, "
                          "{model: NAME, base_urls: [URL, ...]} or {local: policy | DIR}")
    check_backend_spec(opts["backend"], "backend")
    if opts.get("judge") is not None:
        if not get_synth_method(opts["method"]).uses_judge:
            raise ConfigError(f"judge: {opts['method']} takes no judge (rlaif and west-of-n do)")
        check_backend_spec(opts["judge"], "judge")


def _rm_config():
    from prefkit.train import RMConfig
    return RMConfig


def _check_reward_model(opts: dict) -> None:
    from prefkit.train import RMConfig, load_config

    spec = opts.get("eval_pairs")
    if spec is not None:
        keys = ("file", "build", "args", "split")
        for k in spec:
            if k not in keys:
                raise ConfigError(f"eval_pairs.{k}: unknown key; valid keys: {', '.join(keys)}")
        if (spec.get("file") is None) == (spec.get("build") is None):
            raise ConfigError("eval_pairs: give exactly one of file (a preference dataset), build (MODULE:FUNCTION "
                              "returning pairs)")
        if spec.get("build") is not None and ":" not in str(spec["build"]):
            raise ConfigError(f"eval_pairs.build: expected MODULE:FUNCTION, got {spec['build']!r}")
        if spec.get("args") is not None and not isinstance(spec["args"], dict):
            raise ConfigError("eval_pairs.args: expected a mapping of keyword arguments")
    fields = {k: v for k, v in opts.items() if k not in RM_EXTRAS}
    try:
        load_config(RMConfig, overrides=fields, model_name_or_path="policy", train_file="pairs.jsonl").check()
    except ConfigError as exc:   # the trainer's message, under the key it is about
        key = error_key(str(exc), fields)
        raise ConfigError(f"{key}: {exc}" if key else str(exc)) from None


def _sft_config():
    from prefkit.train import SFTConfig
    return SFTConfig


def _check_sft(opts: dict) -> None:
    """The trainer's own checks on the recipe's values (an SFTConfig with placeholder paths)."""
    from prefkit.train import SFTConfig, load_config

    try:
        load_config(SFTConfig, overrides=opts, model_name_or_path="policy", train_file="rows.jsonl").check()
    except ConfigError as exc:   # the trainer's message, under the key it is about
        key = error_key(str(exc), opts)
        raise ConfigError(f"{key}: {exc}" if key else str(exc)) from None


def _relabel_needs(opts: dict) -> tuple:
    return ("score",) if opts.get("rows") == "sft" else PAIRS


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
REWARD_ARGS = Option("reward_args", dict, None, doc="keyword arguments for reward_fn (called as "
                     "reward_fn(prompt, response, **reward_args)); it may return a number or "
                     "{score, aspects, fine_grained}")
SERVER_OPTIONS = Option("backend_options", dict, None,
                        doc="fields of prefkit.synth.backends.OpenAIBackend for the servers: server "
                            "(transformers: `transformers serve`, which samples only when told), concurrency, "
                            "timeout, max_retries, balance, ...")
SERVED_MODEL = Option("served_model", str, None, doc="the model name the servers serve (default: the policy path)")

BACKEND_DOC = ("{build: MODULE:FUNCTION, args: {...}} (a Backend), {model: NAME, base_urls: [URL, ...]} "
               "(OpenAI-compatible servers), or {local: policy | DIR} (a transformers model in this process)")
RM_EXTRAS = ("model", "eval_pairs")
PAIRS = ("pair", "synth")   # the stages that make a round's pairs

STAGES: dict[str, StageDef] = {s.name: s for s in (
    StageDef("generate", _generate, "run_generate",
             exclude=("model", "prompts", "tokenizer", "progress", "desc"),
             extras=(SERVERS, SERVED_MODEL, SERVER_OPTIONS,
                     Option("chunk_size", int, 64, doc="prompts per durable chunk (a kill loses at most one chunk)"))),
    StageDef("score", _evaluate_options, "run_score", include=("reward_fn", "reward_model", "rm_options"),
             extras=(Option("batch_size", int, 16, doc="reward-model batch size"), REWARD_ARGS, JUDGE,
                     Option("judge_params", dict, None, doc="the judge's sampling: {temperature, top_p, max_tokens} "
                                                            "(default temperature 0, 1024 tokens)")),
             needs=("generate",)),
    StageDef("pair", _binarize, "run_pair", exclude=("report", "dataset", "truthfulqa_prompts"),
             choices={"method": _binarize_methods, "ties": lambda: ("drop", "keep")}, needs=("score",)),
    StageDef("synth", _synth_options, "run_synth", exclude=("run_dir", "progress"),
             variant="method", variant_choices=_synth_methods, check=_check_synth,
             extras=(Option("backend", dict, None, doc="the LLM that writes the pairs: " + BACKEND_DOC),
                     Option("judge", dict, None, doc="rlaif, west-of-n: the judge LLM (default: the backend), "
                                                     "in the same forms"),
                     Option("chunk_size", int, 64, doc="prompts per durable chunk (a kill re-samples at most "
                                                       "one chunk from a local model)")),
             replaces=("generate", "score", "pair")),
    StageDef("relabel", _relabel_options, "run_relabel", exclude=("model", "reference"),
             choices={"placement": lambda: ("system", "user", "auto")},
             extras=(Option("enabled", bool, True, doc="false: pass the pairs through unchanged"),
                     Option("rows", str, "pairs", ("pairs", "sft"),
                            doc="pairs: reward-augmented pairs D^w + D^l; sft: every judged sample as a "
                                "prompt-completion row conditioned on its own score (prefkit.relabel.sft_rows), "
                                "for the sft stage; reads the score stage's output (no pair stage in that arm)")),
             needs=PAIRS, needs_for=_relabel_needs),
    StageDef("select", _select_options, "run_select",
             exclude=("progress", "plot", "scored_path", "cache_dir", "work_dir"),
             choices={"metric": _select_metrics},
             extras=(Option("reference", str, "initial", ("initial", "previous", "none"),
                            doc="reference model of dpo-implicit margins"),), needs=PAIRS),
    StageDef("evolve", _evolve_options, "run_evolve", exclude=("progress", "run_dir"), needs=PAIRS,
             choices={"operations": _evolve_operations},
             extras=(Option("backend", dict, None, doc="the LLM that rewrites the prompts and answers the rewrites: "
                                                       + BACKEND_DOC),
                     Option("reward_model", str, None, doc="the reward model that scores the answers to the evolved "
                                                           "prompts (or judge)"),
                     Option("judge", dict, None, doc="an UltraFeedback-style judge that scores them instead (a "
                                                     "backend, as `backend`)"),
                     Option("select", dict, None, doc="SelectOptions of the second selection, and reference "
                                                      "(initial, previous) as the select stage takes it"))),
    StageDef("reward_model", _rm_config, "run_reward_model",
             exclude=("model_name_or_path", "tokenizer_name_or_path", "train_file", "output_dir",
                      "resume_from_checkpoint", "trainer_args"),
             extras=(Option("model", str, None, doc="the reward model's base (default: the round's policy): a "
                                                    "directory, hub id or smollm2"),
                     Option("eval_pairs", dict, None, doc="held-out labelled pairs to score its accuracy on: "
                                                          "{file: PATH} or {build: MODULE:FUNCTION, args: {...}}")),
             passthrough="trainer_args", check=_check_reward_model, needs=PAIRS),
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
                     Option("half_probe", dict, None,
                            doc="{rows: 32, seed: S}: on relabeled data (D^w + D^l), log at every logging step "
                                "the mean implicit reward of the chosen (and rejected) responses of up to `rows` "
                                "D^w rows and `rows` D^l rows, each half's loss gradient norm and the two "
                                "gradients' cosine (prefkit.train.half_probe; seed: the train seed)"),
                     Option("launch", dict, None, doc="{num_processes: N, config_file: accelerate.yaml}: "
                                                      "start the stage through `accelerate launch`")),
             passthrough="trainer_args", needs=PAIRS),
    StageDef("sft", _sft_config, "run_sft",
             exclude=("model_name_or_path", "tokenizer_name_or_path", "train_file", "output_dir",
                      "resume_from_checkpoint", "trainer_args"),
             passthrough="trainer_args", check=_check_sft, needs=("relabel",)),
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
# the train stage's options that are the engine's, not the trainer's (DPOConfig / TrainingArguments)
TRAIN_ENGINE_OPTIONS = ("reference", "launch", "unlearning_probe", "half_probe")
# evaluate options that apply from round 1 on (round 0, the initial policy, is evaluated without them)
ROUND1_EVALUATE = ("goal", "conditioning", "curve_goals", "curve_samples")
DATA_STAGES = ("generate", "score", "pair", "synth", "relabel", "select", "evolve")
TRAIN_STAGES = ("train", "sft")   # the stages whose output is the round's next policy


def accepts_passthrough(stage: StageDef, key: str) -> bool:
    """Whether an unknown key is still valid for `stage` (train: any TrainingArguments field)."""
    if stage.passthrough == "trainer_args":
        from prefkit.train.config import trainer_arg_names
        return key in trainer_arg_names()
    return False
