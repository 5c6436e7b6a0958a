"""Training configuration: dataclasses with TRL's DPOConfig/RewardConfig field names, read
from YAML and overridden from the command line (`--set key=value`).

    cfg = load_config(DPOConfig, "examples/dpo_qwen2_ra.yaml", overrides=["beta=0.05"])

Every value is checked against its field's type, and an unknown key is an error that names
the key, where it came from, and the closest known names (a typo never silently does nothing).

Each field's description is its ``metadata["help"]`` (TRL's habit), the one place the CLI's flag
help reads (prefkit.commands.train; tests/train/test_config.py fails on a field without one).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from prefkit.errors import ConfigError

PRECISIONS = ("auto", "bf16", "fp16", "fp32")


@dataclass
class BaseTrainConfig:
    """Options shared by the preference (DPO-family) and reward-model trainers."""

    # --- model and data --------------------------------------------------------------
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "model to train: HF id, local dir, or a prefkit model name (same as --model)"},
    )
    tokenizer_name_or_path: str | None = field(default=None, metadata={"help": "tokenizer, when not the model's own"})
    train_file: str | None = field(
        default=None,
        metadata={"help": "training pairs: a file (.jsonl .json .parquet .csv), a saved dataset dir, or a hub id"},
    )
    train_split: str | None = field(default=None, metadata={"help": "split of train_file to read"})
    eval_file: str | None = field(
        default=None,
        metadata={"help": "separate evaluation pairs (file, saved dataset dir, or hub id)"},
    )
    eval_split: str | None = field(default=None, metadata={"help": "split of eval_file to read"})
    eval_split_ratio: float = field(
        default=0.0,
        metadata={"help": "hold out this fraction of the training pairs for evaluation when there is no eval_file"},
    )
    output_dir: str = field(
        default="prefkit_out",
        metadata={"help": "output directory: the model, checkpoints and prefkit_train_report.json"},
    )
    # --- tokenisation and bad input ----------------------------------------------------
    max_length: int | None = field(default=1024, metadata={"help": "most prompt + response tokens per sequence"})
    max_prompt_length: int | None = field(
        default=512,
        metadata={"help": "most prompt tokens (must be below max_length)"},
    )
    truncation_mode: str = field(
        default="keep_end",
        metadata={"help": "which end of an over-long prompt to keep: keep_end or keep_start"},
    )
    on_long: str = field(
        default="truncate",
        metadata={"help": "pairs over the length limits: truncate or drop (both counted in the report)"},
    )
    on_invalid: str = field(
        default="drop",
        metadata={"help": "unusable pairs (empty response, bad row): drop (counted) or error"},
    )
    weight_column: str = field(
        default="weight",
        metadata={"help": "column of per-pair loss weights, used when the data has it"},
    )
    conditioning: str = field(
        default="auto",
        metadata={"help": "reward-conditioning spec: auto (found beside the data), none, or a path"},
    )
    # --- optimisation (transformers.TrainingArguments names) ----------------------------
    learning_rate: float = field(default=1e-6, metadata={"help": "peak learning rate"})
    lr_scheduler_type: str = field(
        default="linear",
        metadata={"help": "learning-rate schedule (transformers name: linear, cosine, constant, ...)"},
    )
    warmup_ratio: float = field(default=0.0, metadata={"help": "fraction of the steps spent warming up"})
    warmup_steps: int = field(default=0, metadata={"help": "exact warmup steps (wins over warmup_ratio when > 0)"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm"})
    optim: str = field(default="adamw_torch", metadata={"help": "optimizer (transformers name)"})
    num_train_epochs: float = field(default=1.0, metadata={"help": "epochs over the training pairs"})
    max_steps: int = field(default=-1, metadata={"help": "optimizer steps to train (> 0 overrides num_train_epochs)"})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "pairs per device per micro-batch"})
    per_device_eval_batch_size: int = field(default=8, metadata={"help": "pairs per device per evaluation batch"})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    gradient_checkpointing: bool = field(
        default=False,
        metadata={"help": "recompute activations in the backward pass to save memory"},
    )
    precision: str = field(
        default="auto",
        metadata={"help": "auto (bf16 on GPUs that support it, fp16 on older GPUs, fp32 on CPU), bf16, fp16 or fp32"},
    )
    bf16: bool | None = field(
        default=None,
        metadata={"help": "TRL-style switch for bf16 mixed precision (or set precision)"},
    )
    fp16: bool | None = field(
        default=None,
        metadata={"help": "TRL-style switch for fp16 mixed precision (or set precision)"},
    )
    seed: int = field(default=42, metadata={"help": "random seed (model init, data order, dropout)"})
    data_seed: int | None = field(default=None, metadata={"help": "separate seed for the data order"})
    # --- logging and checkpoints ----------------------------------------------------------
    logging_steps: float = field(
        default=10,
        metadata={"help": "log every N steps (a fraction < 1: of the total steps)"},
    )
    save_steps: float = field(
        default=500,
        metadata={"help": "save a checkpoint every N steps (a fraction < 1: of the total steps)"},
    )
    save_strategy: str = field(default="steps", metadata={"help": "when to save checkpoints: steps, epoch or no"})
    save_total_limit: int | None = field(default=None, metadata={"help": "keep at most this many checkpoints"})
    eval_strategy: str = field(default="no", metadata={"help": "when to evaluate: no, steps or epoch"})
    eval_steps: float | None = field(
        default=None,
        metadata={"help": "evaluate every N steps with eval_strategy steps"},
    )
    report_to: list[str] = field(
        default_factory=lambda: ["none"],
        metadata={"help": "logging integrations (wandb, tensorboard, ...; comma-separated) or none; must be "
                          "installed"},
    )
    run_name: str | None = field(default=None, metadata={"help": "run name for the logging integrations"})
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={"help": "a checkpoint directory, or auto (the latest complete one in the output dir)"},
    )
    dataloader_num_workers: int = field(default=0, metadata={"help": "data-loading worker processes"})
    disable_tqdm: bool | None = field(default=None, metadata={"help": "hide progress bars"})
    # --- PEFT LoRA -----------------------------------------------------------------------------
    use_peft: bool = field(default=False, metadata={"help": "train a LoRA adapter instead of all weights"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (scale alpha / r)"})
    lora_dropout: float = field(default=0.05, metadata={"help": "dropout on the LoRA input"})
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={"help": "modules that get LoRA adapters (comma-separated); unset: all linear layers"},
    )
    # --- model loading ---------------------------------------------------------------------
    torch_dtype: str = field(
        default="auto",
        metadata={"help": "dtype the weights are loaded in: auto, float32, bfloat16 or float16"},
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "allow model code from the hub repository"})
    # --- any other transformers.TrainingArguments field, passed through as given ------------
    trainer_args: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "any other transformers.TrainingArguments field, passed through as given (YAML mapping or"
                          " --set)"},
    )

    # Names of fields that are prefkit's own (not TrainingArguments); subclasses extend.
    def check(self) -> None:
        """Validate values that do not depend on the hardware; raises ConfigError."""
        if not self.model_name_or_path:
            raise ConfigError("model_name_or_path is required (a Hugging Face id or a local model directory)")
        if not self.train_file:
            raise ConfigError("train_file is required (a .jsonl/.json/.parquet/.csv file, saved dataset dir or hub id)")
        _choice("precision", self.precision, PRECISIONS)
        _choice("on_long", self.on_long, ("truncate", "drop"))
        _choice("on_invalid", self.on_invalid, ("drop", "error"))
        _choice("truncation_mode", self.truncation_mode, ("keep_end", "keep_start"))
        if self.bf16 and self.fp16:
            raise ConfigError("bf16 and fp16 are both set; choose one (or set precision)")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if not 0.0 <= self.eval_split_ratio < 1.0:
            raise ConfigError(f"eval_split_ratio must be in [0, 1), got {self.eval_split_ratio}")
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_length is not None and self.max_prompt_length is not None \
                and self.max_prompt_length >= self.max_length:
            raise ConfigError(f"max_prompt_length ({self.max_prompt_length}) must be smaller than "
                              f"max_length ({self.max_length}) so that responses keep at least one token")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> Path:
        """Write the config as YAML (readable back with load_config)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        return path


# Options of the forward engine (prefkit.packed) and of the conditioning, shared by the preference
# and the supervised trainers: one definition each, so both read and document them alike.
def _forward_mode_field():
    return field(
        default="packed",
        metadata={"help": "packed: each pair (SFT: each row) as one sequence, the prompt computed once, no padding "
                          "(docs/core.md); padded: rows padded to the batch's longest"},
    )


def _pad_tolerance_field():
    return field(
        default=0.0,
        metadata={"help": "packed rows share a forward only when at most this fraction of its tokens is padding (0:"
                          " never pad)"},
    )


def _export_chat_template_field():
    return field(
        default=False,
        metadata={"help": "write the reward conditioning into the saved tokenizer's chat template, so that servers "
                          "(transformers serve, vLLM) condition plain messages as prefkit.generate does"},
    )


def _check_forward(cfg) -> None:
    _choice("forward_mode", cfg.forward_mode, ("packed", "padded"))
    if not 0.0 <= cfg.pad_tolerance < 1.0:
        raise ConfigError(f"pad_tolerance must be in [0, 1), got {cfg.pad_tolerance}")


@dataclass
class DPOConfig(BaseTrainConfig):
    """DPO-family and eps-DPO training (field names as in TRL's DPOConfig where they exist)."""

    loss_type: str = field(
        default="sigmoid",
        metadata={"help": "the loss: a registered loss (prefkit.losses, plugins included) or eps-dpo (the sigmoid "
                          "loss with eps-DPO's per-pair beta)"},
    )
    beta: float = field(default=0.1, metadata={"help": "DPO beta (eps-DPO: the initial base beta)"})
    label_smoothing: float = field(
        default=0.0,
        metadata={"help": "conservative / robust DPO label smoothing, in [0, 0.5) (the loss's label_smoothing "
                          "option)", "loss_option": "label_smoothing"},
    )
    simpo_gamma: float = field(
        default=0.5,
        metadata={"help": "SimPO's target reward margin (the simpo loss's gamma option)", "loss_option": "gamma"},
    )
    loss_options: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "options of the loss, as KEY=VALUE,... or a YAML mapping (the loss's own names; see "
                          "the list of losses below)"},
    )
    eps: float = field(default=0.01, metadata={"help": "eps-DPO's perturbation size and beta step"})
    beta_update: str = field(
        default="paper",
        metadata={"help": "eps-DPO base-beta update: paper (mean of per-pair beta) or code"},
    )
    reference_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "reference model, when not the initial policy"},
    )
    precompute_ref_log_probs: bool = field(
        default=True,
        metadata={"help": "compute reference log-probs once before training, cached on disk"},
    )
    precompute_ref_batch_size: int | None = field(
        default=None,
        metadata={"help": "pairs per batch of that pass (unset: 4 x per_device_train_batch_size; it holds no "
                          "gradients)"},
    )
    ref_cache_dir: str | None = field(
        default=None,
        metadata={"help": "reference log-prob cache directory (unset: $PREFKIT_CACHE or ~/.cache/prefkit/ref_logps)"},
    )
    forward_mode: str = _forward_mode_field()
    pad_tolerance: float = _pad_tolerance_field()
    export_chat_template: bool = _export_chat_template_field()
    learning_rate: float = field(default=1e-6, metadata={"help": "peak learning rate"})

    def loss_option_values(self) -> dict[str, Any]:
        """The options to bind to the loss (prefkit.losses.get_loss): the TRL-named fields that feed
        one (metadata ``loss_option``: label_smoothing, simpo_gamma -> gamma) when set away from
        their default, then ``loss_options``, which wins."""
        values = {}
        for f in fields(self):
            option = f.metadata.get("loss_option")
            if option is not None and getattr(self, f.name) != f.default:
                values[option] = getattr(self, f.name)
        values.update(self.loss_options)
        return values

    def check(self) -> None:
        super().check()
        if self.beta <= 0:
            raise ConfigError(f"beta must be > 0, got {self.beta}")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ConfigError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if not 0.0 < self.eps < 1.0:
            raise ConfigError(f"eps must be in (0, 1), got {self.eps}")
        _choice("beta_update", self.beta_update, ("paper", "code"))
        _check_forward(self)


@dataclass
class SFTConfig(BaseTrainConfig):
    """Supervised fine-tuning on prompt-completion rows (prefkit.train.sft_trainer): the mean
    negative log-likelihood of the completion tokens given the chat-templated prompt.

    Its own dataclass rather than DPOConfig with a `loss_type: sft`: the preference options (beta,
    the loss and its options, the reference, eps-DPO's) mean nothing without a preference loss, and
    an option that silently does nothing is what load_config's unknown-key errors exist to prevent.
    The options both trainers have are BaseTrainConfig's and the forward/conditioning fields above,
    defined once."""

    forward_mode: str = _forward_mode_field()
    pad_tolerance: float = _pad_tolerance_field()
    export_chat_template: bool = _export_chat_template_field()
    learning_rate: float = field(default=2e-5, metadata={"help": "peak learning rate"})

    def check(self) -> None:
        super().check()
        _check_forward(self)


@dataclass
class RMConfig(BaseTrainConfig):
    """Bradley-Terry reward-model training (AutoModelForSequenceClassification, num_labels=1)."""

    margin_column: str = field(
        default="margin",
        metadata={"help": "column of per-pair margins m in -log sigmoid(r_w - r_l - m), used when present"},
    )
    center_rewards_coefficient: float | None = field(
        default=None,
        metadata={"help": "c in c * mean((r_w + r_l)^2), which keeps rewards centred"},
    )
    learning_rate: float = field(default=1e-5, metadata={"help": "peak learning rate"})
    eval_split_ratio: float = field(
        default=0.1,
        metadata={"help": "hold out this fraction of the training pairs for evaluation when there is no eval_file"},
    )
    max_prompt_length: int | None = field(
        default=None,
        metadata={"help": "most prompt tokens (must be below max_length)"},
    )

    def check(self) -> None:
        super().check()
        if self.center_rewards_coefficient is not None and self.center_rewards_coefficient < 0:
            raise ConfigError("center_rewards_coefficient must be >= 0")


def _choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(map(str, allowed))}; got {value!r}")


# ---------------------------------------------------------------------------------------------
# Loading: YAML file, then overrides, each value coerced to its field's type.

def load_config(cls=DPOConfig, path: str | Path | None = None, overrides=None, **kwargs):
    """Build `cls` from a YAML file, then `overrides` ('key=value' strings or a dict), then kwargs.

    Later sources win. Values in 'key=value' strings are parsed as YAML scalars/lists
    ('beta=0.05', 'report_to=[wandb]', 'use_peft=true'); a key not in `cls` raises ConfigError.
    """
    values: dict[str, Any] = {}
    passthrough: dict[str, Any] = {}
    sources = [(f"config file {path}", _read_yaml(path))] if path is not None else []
    sources += [("override", parse_overrides(overrides)), ("argument", kwargs)]
    for source, items in sources:
        for k, v in items.items():
            if k == "trainer_args":
                passthrough.update(check_trainer_args(v, source))
            elif _check_key(cls, k, source) == "trainer_args":
                passthrough[k] = v
            else:
                values[k] = v
    known = {f.name: f for f in fields(cls)}
    hints = typing.get_type_hints(cls)
    coerced = {k: coerce_value(k, v, hints[known[k].name]) for k, v in values.items()}
    cfg = cls(**coerced)
    cfg.trainer_args = passthrough
    return cfg


# TrainingArguments fields prefkit sets itself (a pass-through value would break the collator or
# disagree with a prefkit option of another name).
_RESERVED_TRAINER_ARGS = {"remove_unused_columns": "prefkit's collator needs its own columns",
                          "output_dir": "use output_dir", "activation_checkpointing": "use gradient_checkpointing",
                          "bf16": "use precision or bf16", "fp16": "use precision or fp16"}


# Names older transformers had as TrainingArguments fields and transformers 5 reads elsewhere:
# logging_dir is now the TENSORBOARD_LOGGING_DIR environment variable (set from it at start).
_MOVED_TRAINER_ARGS = {"logging_dir": "TENSORBOARD_LOGGING_DIR"}


def trainer_arg_names() -> set[str]:
    """The fields of transformers.TrainingArguments (what `trainer_args` may hold)."""
    from transformers import TrainingArguments  # noqa: PLC0415  heavy (transformers): lazy, so the CLI reads configs without it

    return {f.name for f in fields(TrainingArguments) if f.init} | set(_MOVED_TRAINER_ARGS)


def check_trainer_args(value, source: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: trainer_args must be a mapping of TrainingArguments field: value")
    names = trainer_arg_names()
    for k in value:
        if k not in names:
            close = difflib.get_close_matches(k, sorted(names), n=3)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise ConfigError(f"{source}: trainer_args: {k!r} is not a transformers.TrainingArguments field{hint}")
        if k in _RESERVED_TRAINER_ARGS:
            raise ConfigError(f"{source}: trainer_args: {k!r} is set by prefkit ({_RESERVED_TRAINER_ARGS[k]})")
    return dict(value)


def _read_yaml(path) -> dict:
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of option: value at the top level")
    return data


def parse_overrides(overrides) -> dict:
    if overrides is None:
        return {}
    if isinstance(overrides, dict):
        return dict(overrides)
    out = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        k, v = item.split("=", 1)
        k = k.strip().replace("-", "_")
        try:
            out[k] = yaml.safe_load(v) if v.strip() != "" else None
        except yaml.YAMLError:
            out[k] = v
    return out


def _check_key(cls, key: str, source: str) -> str:
    """'field' for an option of `cls`, 'trainer_args' for another transformers.TrainingArguments
    field (passed through to the Trainer); anything else is a ConfigError with the closest names."""
    names = [f.name for f in fields(cls)]
    if key in names:
        return "field"
    if key in trainer_arg_names():
        check_trainer_args({key: None}, source)
        return "trainer_args"
    close = difflib.get_close_matches(key, names, n=3) or difflib.get_close_matches(key, sorted(trainer_arg_names()), n=3)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    raise ConfigError(f"{source}: unknown option {key!r} for {cls.__name__} (and not a "
                      f"transformers.TrainingArguments field){hint}")


_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}


def coerce_value(name: str, value, tp):
    """Coerce `value` to the annotated type `tp` (handles Optional, bool, int, float, str, list[str])."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            if type(None) in args:
                return None
        last_err = None
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce_value(name, value, a)
            except ConfigError as exc:
                last_err = exc
        raise last_err or ConfigError(f"{name}: cannot use {value!r}")
    if origin is dict:
        if isinstance(value, str):   # KEY=VALUE,KEY=VALUE (the command line), values read as YAML scalars
            pairs = [item.split("=", 1) for item in value.split(",") if item.strip()]
            if any(len(kv) != 2 for kv in pairs):
                raise ConfigError(f"{name}: expected KEY=VALUE,... or a mapping, got {value!r}")
            value = parse_overrides([f"{k.strip()}={v}" for k, v in pairs])
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a mapping of option: value, got {value!r}")
        return dict(value)
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            value = [value]
        return [coerce_value(name, v, args[0] if args else str) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, float)) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise ConfigError(f"{name}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: expected an integer, got {value!r}") from None
        if f != int(f):
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        return int(f)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: expected a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{name}: expected a string, got {json.dumps(value)}")
        return str(value)
    return value


# ---------------------------------------------------------------------------------------------
# Hardware-dependent settings.

def resolve_precision(cfg: BaseTrainConfig) -> str:
    """'bf16', 'fp16' or 'fp32' for this machine; an explicit request the hardware cannot do is an error."""
    import torch  # noqa: PLC0415  heavy (torch): lazy, so the CLI reads configs without it

    want = cfg.precision
    if cfg.bf16:
        want = "bf16"
    elif cfg.fp16:
        want = "fp16"
    elif cfg.bf16 is False and cfg.fp16 is False and want == "auto":
        want = "fp32"
    cuda = torch.cuda.is_available()
    bf16_ok = cuda and torch.cuda.is_bf16_supported()
    if want == "auto":
        return "bf16" if bf16_ok else ("fp16" if cuda else "fp32")
    if want == "bf16" and not bf16_ok:
        raise ConfigError("bf16 mixed precision needs a GPU that supports bfloat16 (none found); "
                          "set precision: auto or fp32")
    if want == "fp16" and not cuda:
        raise ConfigError("fp16 mixed precision needs a CUDA GPU (none found); set precision: auto or fp32")
    return want


def training_arguments(cfg: BaseTrainConfig, **extra):
    """The transformers.TrainingArguments for `cfg` (prefkit's own options stay in cfg)."""
    import torch  # noqa: PLC0415  heavy (torch): lazy, so the CLI reads configs without it
    from transformers import TrainingArguments  # noqa: PLC0415  heavy (transformers): lazy, so the CLI reads configs without it

    precision = resolve_precision(cfg)
    report_to = [r for r in (cfg.report_to or []) if r] or ["none"]
    check_report_to(report_to)
    kw = dict(
        output_dir=cfg.output_dir,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=cfg.warmup_steps if cfg.warmup_steps > 0 else cfg.warmup_ratio,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        optim=cfg.optim,
        num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        per_device_eval_batch_size=cfg.per_device_eval_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        activation_checkpointing=cfg.gradient_checkpointing,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        seed=cfg.seed,
        data_seed=cfg.data_seed,
        logging_steps=cfg.logging_steps,
        save_steps=cfg.save_steps,
        save_strategy=cfg.save_strategy,
        save_total_limit=cfg.save_total_limit,
        eval_strategy=cfg.eval_strategy,
        eval_steps=cfg.eval_steps,
        report_to=report_to if report_to != ["none"] else "none",
        run_name=cfg.run_name,
        dataloader_num_workers=cfg.dataloader_num_workers,
        remove_unused_columns=False,   # the collator needs prefkit's columns
        dataloader_pin_memory=torch.cuda.is_available(),
        # Without an accelerator, say so: Accelerate then runs torchrun's processes as MULTI_CPU
        # (gloo) DDP instead of N independent single-process runs.
        use_cpu=not _has_accelerator(),
        disable_tqdm=cfg.disable_tqdm,
    )
    passthrough = check_trainer_args(cfg.trainer_args, "config")
    for name, env in _MOVED_TRAINER_ARGS.items():
        if passthrough.get(name) is not None:
            os.environ[env] = str(passthrough[name])
        passthrough.pop(name, None)
    if passthrough.get("use_liger_kernel"):
        from transformers.utils import is_liger_kernel_available  # noqa: PLC0415  heavy (transformers): lazy, so the CLI reads configs without it

        if not is_liger_kernel_available():   # the Trainer would find out only inside train()
            raise ConfigError("use_liger_kernel: liger-kernel is not installed (pip install liger-kernel)")
    kw.update(passthrough)
    kw.update(extra)
    try:
        return TrainingArguments(**kw)
    except (ValueError, TypeError, ImportError, RuntimeError) as exc:
        passed = f" (passed through: {', '.join(sorted(cfg.trainer_args))})" if cfg.trainer_args else ""
        msg = " ".join(str(exc).split())
        raise ConfigError(f"TrainingArguments{passed}: {msg}") from None


INTEGRATION_PACKAGE = {"azure_ml": "azureml-core", "comet_ml": "comet-ml", "dagshub": "dagshub",
                        "dvclive": "dvclive", "mlflow": "mlflow", "neptune": "neptune", "tensorboard": "tensorboard",
                        "wandb": "wandb", "codecarbon": "codecarbon", "clearml": "clearml", "swanlab": "swanlab",
                        "trackio": "trackio"}


def check_report_to(report_to: list[str]) -> None:
    """Every report_to integration is one transformers knows and is installed, checked before any
    model is loaded ('all' and 'none' as transformers reads them)."""
    from transformers.integrations.integration_utils import (  # noqa: PLC0415  heavy (transformers): lazy, so the CLI reads configs without it
        INTEGRATION_TO_CALLBACK,
        get_available_reporting_integrations,
    )

    names = [r for r in report_to if r not in ("none", "all")]
    if not names:
        return
    available = set(get_available_reporting_integrations())
    for name in names:
        if name not in INTEGRATION_TO_CALLBACK:
            close = difflib.get_close_matches(name, sorted(INTEGRATION_TO_CALLBACK), n=2)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise ConfigError(f"report_to: unknown integration {name!r}{hint} "
                              f"(known: {', '.join(sorted(INTEGRATION_TO_CALLBACK))})")
        if name in INTEGRATION_PACKAGE and name not in available:
            raise ConfigError(f"report_to: {name!r} is not installed (pip install {INTEGRATION_PACKAGE[name]}), "
                              "or set report_to: none")


def _has_accelerator() -> bool:
    import torch  # noqa: PLC0415  heavy (torch): lazy, so the CLI reads configs without it

    if torch.cuda.is_available():
        return True
    for name in ("mps", "xpu", "npu"):
        backend = getattr(torch.backends, name, None) or getattr(torch, name, None)
        if backend is not None and getattr(backend, "is_available", lambda: False)():
            return True
    return False
