"""`prefkit train dpo|rm`: thin front-end over prefkit.train.train_dpo / train_rm.

Options come from, in increasing priority: the YAML `--config`, explicit `--<option>` flags
(one for every config field, e.g. `--beta 0.05 --loss-type ipo`), and `--set key=value`.
"""

from __future__ import annotations

import argparse
import dataclasses

_POSITIONAL = {"train_file", "output_dir"}
_NO_FLAG = {"train_split", "trainer_args"}   # --split; TrainingArguments pass-through goes by --set

# One description per config option (DPOConfig and RMConfig); the default is added once.
FIELD_HELP = {
    "model_name_or_path": "model to train: HF id, local dir, or a prefkit model name (same as --model)",
    "tokenizer_name_or_path": "tokenizer, when not the model's own",
    "eval_file": "separate evaluation pairs (file, saved dataset dir, or hub id)",
    "eval_split": "split of eval_file to read",
    "eval_split_ratio": "hold out this fraction of the training pairs for evaluation when there is no eval_file",
    "max_length": "most prompt + response tokens per sequence",
    "max_prompt_length": "most prompt tokens (must be below max_length)",
    "truncation_mode": "which end of an over-long prompt to keep: keep_end or keep_start",
    "on_long": "pairs over the length limits: truncate or drop (both counted in the report)",
    "on_invalid": "unusable pairs (empty response, bad row): drop (counted) or error",
    "weight_column": "column of per-pair loss weights, used when the data has it",
    "conditioning": "reward-conditioning spec: auto (found beside the data), none, or a path",
    "learning_rate": "peak learning rate",
    "lr_scheduler_type": "learning-rate schedule (transformers name: linear, cosine, constant, ...)",
    "warmup_ratio": "fraction of the steps spent warming up",
    "warmup_steps": "exact warmup steps (wins over warmup_ratio when > 0)",
    "weight_decay": "AdamW weight decay",
    "max_grad_norm": "gradient clipping norm",
    "optim": "optimizer (transformers name)",
    "num_train_epochs": "epochs over the training pairs",
    "max_steps": "optimizer steps to train (> 0 overrides num_train_epochs)",
    "per_device_train_batch_size": "pairs per device per micro-batch",
    "per_device_eval_batch_size": "pairs per device per evaluation batch",
    "gradient_accumulation_steps": "micro-batches per optimizer step",
    "gradient_checkpointing": "recompute activations in the backward pass to save memory",
    "precision": "auto (bf16 on GPUs that support it, fp16 on older GPUs, fp32 on CPU), bf16, fp16 or fp32",
    "bf16": "TRL-style switch for bf16 mixed precision (or set precision)",
    "fp16": "TRL-style switch for fp16 mixed precision (or set precision)",
    "seed": "random seed (model init, data order, dropout)",
    "data_seed": "separate seed for the data order",
    "logging_steps": "log every N steps (a fraction < 1: of the total steps)",
    "save_steps": "save a checkpoint every N steps (a fraction < 1: of the total steps)",
    "save_strategy": "when to save checkpoints: steps, epoch or no",
    "save_total_limit": "keep at most this many checkpoints",
    "eval_strategy": "when to evaluate: no, steps or epoch",
    "eval_steps": "evaluate every N steps with eval_strategy steps",
    "report_to": "logging integrations (wandb, tensorboard, ...; comma-separated) or none; must be installed",
    "run_name": "run name for the logging integrations",
    "resume_from_checkpoint": "a checkpoint directory, or auto (the latest complete one in the output dir)",
    "dataloader_num_workers": "data-loading worker processes",
    "disable_tqdm": "hide progress bars",
    "use_peft": "train a LoRA adapter instead of all weights",
    "lora_r": "LoRA rank",
    "lora_alpha": "LoRA alpha (scale alpha / r)",
    "lora_dropout": "dropout on the LoRA input",
    "lora_target_modules": "modules that get LoRA adapters (comma-separated); unset: all linear layers",
    "torch_dtype": "dtype the weights are loaded in: auto, float32, bfloat16 or float16",
    "trust_remote_code": "allow model code from the hub repository",
    # DPOConfig
    "loss_type": "sigmoid, robust, hinge, ipo, simpo, eps-dpo, or a registered loss name",
    "beta": "DPO beta (eps-DPO: the initial base beta)",
    "label_smoothing": "conservative / robust DPO label smoothing, in [0, 0.5)",
    "simpo_gamma": "SimPO's target reward margin",
    "eps": "eps-DPO's perturbation size and beta step",
    "beta_update": "eps-DPO base-beta update: paper (mean of per-pair beta) or code",
    "reference_model_name_or_path": "reference model, when not the initial policy",
    "precompute_ref_log_probs": "compute reference log-probs once before training, cached on disk",
    "precompute_ref_batch_size": "pairs per batch of that pass (unset: 4 x per_device_train_batch_size; it "
                                 "holds no gradients)",
    "forward_mode": "packed: each pair as one sequence, the prompt computed once, no padding (docs/core.md); "
                    "padded: chosen and rejected rows padded to the batch's longest",
    "pad_tolerance": "packed rows share a forward only when at most this fraction of its tokens is padding "
                     "(0: never pad)",
    "ref_cache_dir": "reference log-prob cache directory (unset: $PREFKIT_CACHE or ~/.cache/prefkit/ref_logps)",
    "export_chat_template": "write the reward conditioning into the saved tokenizer's chat template, so that "
                            "servers (transformers serve, vLLM) condition plain messages as prefkit.generate does",
    # RMConfig
    "margin_column": "column of per-pair margins m in -log sigmoid(r_w - r_l - m), used when present",
    "center_rewards_coefficient": "c in c * mean((r_w + r_l)^2), which keeps rewards centred",
}

_EPILOG = """\
Any other transformers.TrainingArguments field passes through to the Trainer, from the YAML file
or --set: e.g. --set deepspeed=ds.json, --set push_to_hub=true --set hub_model_id=me/model,
--set torch_compile=true (logging_dir becomes TENSORBOARD_LOGGING_DIR, as transformers 5 reads it).
See docs/train.md."""


def register(sub, name, help_text):
    p = sub.add_parser(name, help=help_text, description=help_text)
    tsub = p.add_subparsers(dest="train_kind", metavar="KIND")
    from prefkit.train.config import DPOConfig, RMConfig

    for kind, cls, help_kind in (
        ("dpo", DPOConfig, "train a policy with a DPO-family loss (sigmoid, robust, hinge, ipo, simpo, eps-dpo)"),
        ("rm", RMConfig, "train a Bradley-Terry reward model (sequence classification, one output)"),
    ):
        kp = tsub.add_parser(kind, help=help_kind, description=help_kind, epilog=_EPILOG,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
        kp.add_argument("input", nargs="?", default=None,
                        help="training pairs (file, saved dataset dir, or hub id); or train_file in --config")
        kp.add_argument("output_dir", nargs="?", default=None, metavar="OUTPUT_DIR",
                        help="output directory (same as -o; config: output_dir)")
        kp.add_argument("-o", "--output", default=None, help="output directory (config: output_dir)")
        kp.add_argument("--model", default=None, help="model to train: HF id or local dir (config: model_name_or_path)")
        kp.add_argument("--config", default=None, help="YAML recipe (see examples/*.yaml)")
        kp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config option or TrainingArguments field (repeatable), e.g. --set beta=0.05")
        kp.add_argument("--split", default=None, help="split of the input to train on (config: train_split)")
        group = kp.add_argument_group("config options (each also settable in the YAML file)")
        for f in dataclasses.fields(cls):
            if f.name in _POSITIONAL or f.name in _NO_FLAG:
                continue
            flag = "--" + f.name.replace("_", "-")
            extra = {}
            if f.name == "resume_from_checkpoint":
                extra = dict(nargs="?", const="auto")
            elif "bool" in str(f.type):
                extra = dict(nargs="?", const="true")
            group.add_argument(flag, dest=f"opt_{f.name}", default=None, metavar=f.name.upper(),
                               help=f"{FIELD_HELP[f.name]} (default: {_show_default(f)})", **extra)
        kp.set_defaults(func=_run_dpo if kind == "dpo" else _run_rm, _parser=kp, _config_cls=cls)
    p.set_defaults(func=None, _parser=p)


def _show_default(f) -> str:
    value = _default(f)
    if value is None:
        return "unset"
    if isinstance(value, list):
        return ",".join(map(str, value)) or "none"
    return str(value).replace("%", "%%")


def _default(f):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def config_from_args(args):
    """The config the command line describes (YAML, then flags, then --set)."""
    from prefkit.train.config import _parse_overrides, load_config

    values = {}
    for k, v in vars(args).items():
        if k.startswith("opt_") and v is not None:
            values[k[4:]] = v
    if args.input is not None:
        values["train_file"] = args.input
    if args.output is not None and args.output_dir is not None and args.output != args.output_dir:
        from prefkit.errors import ConfigError

        raise ConfigError(f"two output directories given: {args.output_dir!r} and -o {args.output!r}")
    if (args.output or args.output_dir) is not None:
        values["output_dir"] = args.output or args.output_dir
    if args.model is not None:
        values["model_name_or_path"] = args.model
    if args.split is not None:
        values["train_split"] = args.split
    values.update(_parse_overrides(args.overrides))
    from prefkit.report import progress_enabled

    if not progress_enabled() and "disable_tqdm" not in values:  # --quiet or TQDM_DISABLE
        values["disable_tqdm"] = True
    return load_config(args._config_cls, args.config, overrides=values)


def _run_dpo(args) -> int:
    from prefkit.train import train_dpo

    cfg = config_from_args(args)
    out = train_dpo(cfg)
    _print_summary(out)
    return 0


def _run_rm(args) -> int:
    from prefkit.train import train_rm

    cfg = config_from_args(args)
    out = train_rm(cfg)
    _print_summary(out)
    return 0


def _print_summary(output_dir) -> None:
    import json
    import os
    from pathlib import Path

    if os.environ.get("RANK", "0") != "0":   # under torchrun, the main process speaks for all
        return
    report = json.loads((Path(output_dir) / "prefkit_train_report.json").read_text())
    print(report.get("summary", ""))
    print(f"model, tokenizer and report written to {output_dir}")
