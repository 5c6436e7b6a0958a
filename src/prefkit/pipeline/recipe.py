"""Reading and validating a recipe: the whole file is checked before anything runs.

    recipe = load_recipe("examples/recipes/toy-quick.yaml", overrides=["train.beta=0.05"], rounds=1)

A recipe (docs/loop.md):

    name: toy-quick
    policy: smollm2                  # a directory, hub id, `smollm2`, a .gguf file, or
                                     # {build: MODULE:FUNCTION, args: {...}} returning a directory
    prompts:
      train: {file: prompts.jsonl, per_round: 200}   # or {dataset: ID, split: S, limit: N},
      eval: {dataset: ID, split: test, limit: 50}    # or {build: MODULE:FUNCTION, args: {...}}
    rounds: 2
    stages:                          # per round, in this order: generate score pair synth
      generate: {n: 4, temperature: 1.0}           # relabel select evolve reward_model train evaluate
      score: {reward_fn: prefkit.toy.task:gold_reward}
      ...

Every error is one line naming the file, the line and the key, with the valid keys or values
(the YAML composer's node marks give the lines); `--set key=value` overrides name `--set`.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from prefkit.errors import ConfigError
from prefkit.pipeline.backend_spec import check_backend_spec, check_server_options, sampling
from prefkit.pipeline.schema import error_key
from prefkit.pipeline.stages import ORDER, STAGES, TRAIN_ENGINE_OPTIONS, accepts_passthrough
from prefkit.train.config import DPOConfig, check_trainer_args, load_config

TOP_KEYS = ("name", "description", "policy", "prompts", "rounds", "stages", "arms")
POLICY_KEYS = ("model", "build", "args")
PROMPT_SETS = ("train", "eval")
PROBE_KEYS = ("threshold", "pairs")   # train.unlearning_probe (prefkit.pipeline.runners.unlearning_probes)
HALF_PROBE_KEYS = ("rows", "seed")   # train.half_probe (prefkit.pipeline.runners.half_probes)
PROMPT_KEYS = ("file", "dataset", "build", "args", "split", "subset", "revision", "limit", "per_round")


@dataclass
class Recipe:
    name: str
    file: str
    policy: dict
    prompts: dict
    rounds: int
    stages: dict[str, dict]             # stage -> checked options (only those the recipe sets)
    text: str = ""
    overrides: list = field(default_factory=list)
    # arm -> its stages (the recipe's `stages` with the arm's changes); empty: one arm, `stages`
    arms: dict[str, dict[str, dict]] = field(default_factory=dict)

    def arm_names(self) -> list[str | None]:
        """The arms to run: the recipe's names, or [None] for a recipe without arms."""
        return list(self.arms) or [None]

    def stages_of(self, arm: str | None) -> dict[str, dict]:
        return self.arms[arm] if arm is not None else self.stages

    def to_dict(self) -> dict:
        return {"name": self.name, "file": self.file, "policy": self.policy, "prompts": self.prompts,
                "rounds": self.rounds, "stages": self.stages, "arms": self.arms, "overrides": self.overrides}


class _Where:
    """Line numbers of every key and value of the YAML document, by dotted path."""

    def __init__(self, file: str):
        self.file = file
        self.lines: dict[str, int] = {}

    def at(self, path: str) -> str:
        line = self.lines.get(path)
        if line is None:    # a key that is not there: the nearest enclosing one that is
            parts = path.split(".")
            while parts and line is None:
                parts.pop()
                line = self.lines.get(".".join(parts))
        if line == -1:
            return "--set"
        return f"{self.file}:{line}" if line else self.file

    def error(self, path: str, msg: str) -> ConfigError:
        return ConfigError(f"{self.at(path)}: {path}: {msg}")


def _to_python(node, where: _Where, path: str):

    where.lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out = {}
        for k, v in node.value:
            key = yaml.safe_load(yaml.serialize(k)) if not isinstance(k, yaml.ScalarNode) else k.value
            sub = f"{path}.{key}" if path else str(key)
            where.lines[sub] = k.start_mark.line + 1
            if key in out:
                raise where.error(sub, "appears twice")
            out[key] = _to_python(v, where, sub)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_to_python(v, where, f"{path}.{i}") for i, v in enumerate(node.value)]
    return yaml.safe_load(yaml.serialize(node))


def read_yaml(path: str | Path) -> tuple[dict, _Where, str]:

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"recipe not found: {p}")
    text = p.read_text()
    where = _Where(str(p))
    try:
        node = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{p}{line}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    data = _to_python(node, where, "") if node is not None else {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}:1: a recipe is a mapping of {', '.join(TOP_KEYS)}")
    return data, where, text


def _unknown(where: _Where, path: str, key: str, valid) -> ConfigError:
    valid = list(valid)
    close = difflib.get_close_matches(str(key), valid, n=2)
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    return where.error(path, f"unknown key{hint}; valid keys: {', '.join(valid)}")


def apply_overrides(data: dict, where: _Where, overrides) -> None:
    """`key.sub=value` (YAML values); a leading stage name means `stages.<stage>`."""

    for item in overrides or ():
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.beta=0.05")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        if parts[0] in STAGES:
            parts = ["stages"] + parts
        try:
            value = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            pass
        d = data
        for i, part in enumerate(parts[:-1]):
            if not isinstance(d.get(part), dict):
                d[part] = {}
            d = d[part]
            where.lines[".".join(parts[:i + 1])] = where.lines.get(".".join(parts[:i + 1]), -1)
        d[parts[-1]] = value
        where.lines[".".join(parts)] = -1


def _check_source(src, where: _Where, path: str, required: bool) -> dict | None:
    if src is None:
        if required:
            raise where.error(path, "missing; give {file: PATH}, {dataset: HUB_ID, split: SPLIT} or "
                                    "{build: MODULE:FUNCTION, args: {...}}")
        return None
    if isinstance(src, str):
        src = {"file": src}
    if not isinstance(src, dict):
        raise where.error(path, f"expected a mapping with one of file, dataset, build; got {src!r}")
    for k in src:
        if k not in PROMPT_KEYS:
            raise _unknown(where, f"{path}.{k}", k, PROMPT_KEYS)
    given = [k for k in ("file", "dataset", "build") if src.get(k) is not None]
    if len(given) != 1:
        raise where.error(path, "give exactly one of file, dataset, build")
    for k in ("limit", "per_round"):
        if src.get(k) is not None and (not isinstance(src[k], int) or isinstance(src[k], bool) or src[k] < 1):
            raise where.error(f"{path}.{k}", f"expected a positive integer, got {src[k]!r}")
    if src.get("args") is not None and not isinstance(src["args"], dict):
        raise where.error(f"{path}.args", "expected a mapping of keyword arguments")
    if "build" in given:
        _check_ref(src["build"], where, f"{path}.build")
    return dict(src)


def _check_ref(ref, where: _Where, path: str) -> None:
    if not isinstance(ref, str) or ":" not in ref:
        raise where.error(path, f"expected MODULE:FUNCTION (e.g. prefkit.toy.recipes:quick_base_policy), got {ref!r}")


def _check_policy(policy, where: _Where) -> dict:
    if policy is None:
        raise where.error("policy", "missing; a model directory, hub id, smollm2, a .gguf file, or "
                                    "{build: MODULE:FUNCTION}")
    if isinstance(policy, str):
        return {"model": policy}
    if not isinstance(policy, dict):
        raise where.error("policy", f"expected a model name or a mapping, got {policy!r}")
    for k in policy:
        if k not in POLICY_KEYS:
            raise _unknown(where, f"policy.{k}", k, POLICY_KEYS)
    if (policy.get("model") is None) == (policy.get("build") is None):
        raise where.error("policy", "give exactly one of model, build")
    if policy.get("build") is not None:
        _check_ref(policy["build"], where, "policy.build")
    return dict(policy)


def _check_stage(name: str, opts, where: _Where, path: str | None = None) -> dict:
    path = path or f"stages.{name}"
    stage = STAGES[name]
    if opts is None:
        opts = {}
    if not isinstance(opts, dict):
        raise where.error(path, f"expected a mapping of options, got {opts!r}")
    try:
        schema = stage.options(opts)
    except ConfigError as exc:   # the variant option (synth's method) is missing or not a choice
        raise _keyed(where, path, exc, opts, missing_ok=True) from None
    out = {}
    for key, value in opts.items():
        sub = f"{path}.{key}"
        option = schema.get(key)
        if option is None:
            if accepts_passthrough(stage, key):
                try:
                    check_trainer_args({key: value}, "recipe")
                except ConfigError as exc:
                    raise where.error(sub, str(exc).split(": ", 2)[-1]) from None
                out[key] = value
                continue
            valid = list(schema) + (["(any transformers.TrainingArguments field)"] if stage.passthrough else [])
            raise _unknown(where, sub, key, valid)
        try:
            out[key] = option.check(value)
        except ConfigError as exc:
            raise _keyed(where, path, exc, {key: value}) from None
    if stage.check is not None:
        try:
            stage.check(out)
        except ConfigError as exc:
            raise _keyed(where, path, exc, out) from None
    return out


def _keyed(where: _Where, path: str, exc: ConfigError, opts: dict, missing_ok: bool = False) -> ConfigError:
    """A stage option's error "KEY[.SUB...]: what" as the recipe's error at that key's line."""
    msg = str(exc)
    head, sep, rest = msg.partition(": ")
    if sep and head.split(".")[0] in opts or (missing_ok and sep and " " not in head):
        return where.error(f"{path}.{head}", rest)
    return where.error(path, msg)


def validate(data: dict, where: _Where, *, rounds: int | None = None) -> Recipe:
    for k in data:
        if k not in TOP_KEYS:
            raise _unknown(where, str(k), k, TOP_KEYS)
    policy = _check_policy(data.get("policy"), where)
    prompts = data.get("prompts")
    if not isinstance(prompts, dict):
        raise where.error("prompts", "missing; a mapping {train: SOURCE, eval: SOURCE}")
    for k in prompts:
        if k not in PROMPT_SETS:
            raise _unknown(where, f"prompts.{k}", k, PROMPT_SETS)
    checked_prompts = {"train": _check_source(prompts.get("train"), where, "prompts.train", True),
                       "eval": _check_source(prompts.get("eval"), where, "prompts.eval", False)}
    n_rounds = data.get("rounds", 1) if rounds is None else rounds
    if not isinstance(n_rounds, int) or isinstance(n_rounds, bool) or n_rounds < 1:
        raise where.error("rounds", f"expected a positive integer, got {n_rounds!r}")
    stages = data.get("stages")
    if not isinstance(stages, dict) or not stages:
        raise where.error("stages", f"missing; a mapping of stages, in this order: {', '.join(ORDER)}")
    last = -1
    checked: dict[str, dict] = {}
    for name, opts in stages.items():
        if name not in STAGES:
            raise _unknown(where, f"stages.{name}", name, ORDER)
        if ORDER.index(name) < last:
            raise where.error(f"stages.{name}", f"stages run in this order: {', '.join(ORDER)}; "
                                                 f"move {name} before {ORDER[last]}")
        last = ORDER.index(name)
        if opts is False:
            continue
        checked[name] = _check_stage(name, opts, where)
    arms = _check_arms(data.get("arms"), stages, checked, where)
    for arm, arm_stages in (arms.items() if arms else [(None, checked)]):
        _check_stage_set(arm_stages, checked_prompts, n_rounds, where, arm)
    return Recipe(name=str(data.get("name") or Path(where.file).stem), file=where.file, policy=policy,
                  prompts=checked_prompts, rounds=n_rounds, stages=checked, arms=arms)


def _check_arms(arms, raw: dict, base: dict[str, dict], where: _Where) -> dict[str, dict[str, dict]]:
    """`arms: {NAME: {STAGE: false | {option: value}}}`: each arm is the recipe's stages with
    these changes (false drops the stage; options are set over the recipe's, or add the stage)."""
    if arms is None:
        return {}
    if not isinstance(arms, dict) or not arms:
        raise where.error("arms", "expected a mapping {ARM: {STAGE: false or {option: value}}}")
    out = {}
    for arm, changes in arms.items():
        path = f"arms.{arm}"
        if not isinstance(arm, str) or not arm or "/" in arm or arm.startswith("round-"):
            raise where.error(path, "an arm's name is a word without '/' (it names directories and rows of the report)")
        changes = changes or {}
        if not isinstance(changes, dict):
            raise where.error(path, f"expected a mapping {{STAGE: false or {{option: value}}}}, got {changes!r}")
        stages = {k: dict(v) for k, v in base.items()}
        for name, opts in changes.items():
            if name not in STAGES:
                raise _unknown(where, f"{path}.{name}", name, ORDER)
            if opts is False:
                stages.pop(name, None)
                continue
            if not isinstance(opts, dict):
                raise where.error(f"{path}.{name}", f"expected false or a mapping of options, got {opts!r}")
            # the arm's options over the recipe's, checked together (a stage's schema may depend on
            # them: synth's method picks its options)
            merged = {**(raw.get(name) or {}), **opts} if name in base else opts
            stages[name] = _check_stage(name, merged, where, f"{path}.{name}")
        out[arm] = {name: stages[name] for name in ORDER if name in stages}
    return out


def _check_stage_set(checked: dict[str, dict], prompts: dict, n_rounds: int, where: _Where, arm: str | None) -> None:
    """What one arm's stages need of each other and of the prompts."""
    at = (lambda name: f"arms.{arm}.{name}" if arm is not None else f"stages.{name}")
    if "evaluate" in checked and prompts["eval"] is None:
        raise where.error("prompts", "the evaluate stage needs held-out prompts: add prompts.eval")
    if "evaluate" in checked and not any(checked["evaluate"].get(k) for k in ("reward_fn", "reward_model")):
        raise where.error(at("evaluate"), "nothing to score with: set reward_fn or reward_model")
    if "score" in checked:
        _check_scorer(checked["score"], where, at("score"), ("reward_fn", "reward_model", "judge"))
    if "evolve" in checked:
        _check_evolve(checked["evolve"], where, at("evolve"))
    if checked.get("generate", {}).get("backend_options") is not None:
        _check_sub(where, f"{at('generate')}.backend_options", check_server_options,
                   checked["generate"]["backend_options"])
    if "train" in checked and n_rounds > 1 and checked["train"].get("reference") is None:
        raise where.error(at("train"), "with more than one round, say which model is the reference: "
                                       "reference: initial (the first policy) or previous (the last round's)")
    if "train" in checked:
        _check_train(checked["train"], where, at("train"))
    _check_sft_rows(checked, where, at)
    for name in checked:
        stage = STAGES[name]
        needs = stage.needs_of(checked[name])
        if needs and not any(n in checked for n in needs):
            what = " or ".join(f"a {n} stage" for n in needs)
            raise where.error(at(name), f"needs {what} before it" + (
                " (pair: generate, score, pair; synth: pairs from the prompts through an LLM)"
                if set(needs) == {"pair", "synth"} else ""))
        clash = [n for n in stage.replaces if n in checked]
        if clash:
            raise where.error(at(clash[0]), f"{name} makes the round's pairs from its prompts in place of "
                                            f"{', '.join(stage.replaces)}; a recipe has one or the other")


def _check_sft_rows(checked: dict[str, dict], where: _Where, at) -> None:
    """relabel `rows: sft` conditions every judged sample (the score stage's output), so no pair or
    synth stage may come before it; the sft stage trains on those rows and on nothing else."""
    rows = checked.get("relabel", {}).get("rows", "pairs")
    if rows == "sft":
        made = [n for n in ("pair", "synth") if n in checked]
        if made:
            raise where.error(f"{at('relabel')}.rows", f"sft conditions every judged sample (the score stage's "
                                                       f"output), but a {made[0]} stage comes before it; drop it "
                                                       f"in this arm ({made[0]}: false)")
    if "sft" in checked and rows != "sft":
        raise where.error(at("sft"), "needs a relabel stage with rows: sft before it (the judged samples, each "
                                     "conditioned on its own score, that it trains on)")


def _check_scorer(opts: dict, where: _Where, path: str, scorers: tuple) -> None:
    """Exactly one scorer; a judge's backend spec and its sampling checked."""
    given = [k for k in scorers if opts.get(k)]
    if not given:
        raise where.error(path, f"nothing to score with: set {', '.join(scorers[:-1])} or {scorers[-1]}")
    if len(given) > 1:
        raise where.error(f"{path}.{given[1]}", f"set only one of {', '.join(given)}")
    for name in ("judge", "backend"):
        if opts.get(name) is not None:
            _check_sub(where, f"{path}.{name}", check_backend_spec, opts[name])
    for name in ("judge_params", "rewrite_params", "generation"):
        if opts.get(name) is not None:
            _check_sub(where, f"{path}.{name}", sampling, opts[name])


def _check_sub(where: _Where, path: str, check, value) -> None:
    """`check(value)`; its 'KEY: what' error becomes one naming path.KEY and its line."""
    try:
        check(value)
    except ConfigError as exc:
        key, sep, what = str(exc).partition(": ")
        if sep and " " not in key:
            raise where.error(f"{path}.{key}", what) from None
        raise where.error(path, str(exc)) from None


def _check_evolve(opts: dict, where: _Where, path: str = "stages.evolve") -> None:
    if not opts.get("backend"):
        raise where.error(path, "set backend: the LLM that rewrites the prompts ({model: NAME, "
                                           "base_urls: [URL, ...]}, {local: DIR} or {build: MODULE:FUNCTION})")
    _check_scorer(opts, where, path, ("reward_model", "judge"))
    sel = opts.get("select")
    if sel is not None:
        opts["select"] = _check_stage("select", sel, where, path=f"{path}.select")


def _check_train(opts: dict, where: _Where, path: str = "stages.train") -> None:
    """The trainer's own checks on the recipe's values (a DPOConfig with placeholder paths)."""
    fields = {k: v for k, v in opts.items() if k not in TRAIN_ENGINE_OPTIONS}
    try:
        cfg = load_config(DPOConfig, overrides=fields, model_name_or_path="policy", train_file="data.jsonl")
        cfg.check()
    except ConfigError as exc:
        msg = str(exc)
        key = error_key(msg, fields)
        raise where.error(f"{path}.{key}" if key else path, msg) from None
    probe = opts.get("unlearning_probe")
    for k in probe or {}:
        if k not in PROBE_KEYS:
            raise _unknown(where, f"{path}.unlearning_probe.{k}", k, PROBE_KEYS)
    half = opts.get("half_probe")
    for k, v in (half or {}).items():
        if k not in HALF_PROBE_KEYS:
            raise _unknown(where, f"{path}.half_probe.{k}", k, HALF_PROBE_KEYS)
        if isinstance(v, bool) or not isinstance(v, int) or (k == "rows" and v < 1):
            raise where.error(f"{path}.half_probe.{k}", f"expected {'a positive' if k == 'rows' else 'an'} integer, "
                                                         f"got {v!r}")
    if half is not None and opts.get("launch"):
        raise where.error(f"{path}.half_probe", "the half probe runs in this process; it cannot be combined with "
                                                "launch")
    launch = opts.get("launch")
    if launch is not None:
        for k in launch:
            if k not in ("num_processes", "config_file"):
                raise _unknown(where, f"{path}.launch.{k}", k, ("num_processes", "config_file"))


def load_recipe(path: str | Path, *, overrides=None, rounds: int | None = None) -> Recipe:
    """Read, override and validate a recipe; ConfigError (one line: file:line: key: what) if bad."""
    data, where, text = read_yaml(path)
    apply_overrides(data, where, overrides)
    recipe = validate(data, where, rounds=rounds)
    recipe.text = text
    recipe.overrides = list(overrides or [])
    return recipe

