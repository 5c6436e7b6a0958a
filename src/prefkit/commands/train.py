"""`prefkit train dpo|rm|sft`: thin front-end over prefkit.train.train_dpo / train_rm / train_sft.

Options come from, in increasing priority: the YAML `--config`, explicit `--<option>` flags
(one for every config field, e.g. `--beta 0.05 --loss-type ipo`), and `--set key=value`. Each
flag's help is its config field's ``metadata["help"]`` (prefkit.train.config); `train dpo --help`
ends with the registered losses and their options (prefkit.losses, plugins included), read only
when the help is shown so that the CLI starts without importing torch.
"""

from __future__ import annotations

import argparse
import dataclasses

_POSITIONAL = {"train_file", "output_dir"}
_NO_FLAG = {"train_split", "trainer_args"}   # --split; TrainingArguments pass-through goes by --set

_EPILOG = """\
Any other transformers.TrainingArguments field passes through to the Trainer, from the YAML file
or --set: e.g. --set deepspeed=ds.json, --set push_to_hub=true --set hub_model_id=me/model,
--set torch_compile=true (logging_dir becomes TENSORBOARD_LOGGING_DIR, as transformers 5 reads it).
See docs/train.md."""


class _TrainParser(argparse.ArgumentParser):
    """`train dpo`'s parser: its help ends with the registered losses, listed when it is shown."""

    list_losses = False

    def format_help(self) -> str:
        if self.list_losses:
            self.epilog = f"{_EPILOG}\n\n{losses_help()}"
        return super().format_help()


def losses_help() -> str:
    """The registered losses, what each needs and its options with defaults and help."""
    from prefkit.losses import available_losses, loss_spec
    from prefkit.train.beta_control import BETA_CONTROLS

    lines = ["losses (--loss-type; options with --loss-options KEY=VALUE,...):"]
    for name in available_losses():
        spec = loss_spec(name)
        lines.append(f"  {name}{'' if spec.needs_reference else ' (reference-free)'}: {spec.help}")
        for opt, o in spec.options.items():
            lines.append(f"      {opt} (default {o.default}): {o.help}")
    for name, control in sorted(BETA_CONTROLS.items()):
        lines.append(f"  {name}: {(control.__doc__ or '').strip().splitlines()[0]}")
    return "\n".join(lines)


def register(sub, name, help_text):
    p = sub.add_parser(name, help=help_text, description=help_text)
    tsub = p.add_subparsers(dest="train_kind", metavar="KIND", parser_class=_TrainParser)
    from prefkit.train.config import DPOConfig, RMConfig, SFTConfig

    for kind, cls, help_kind in (
        ("dpo", DPOConfig, "train a policy with a DPO-family loss (sigmoid, robust, hinge, ipo, simpo, eps-dpo)"),
        ("rm", RMConfig, "train a Bradley-Terry reward model (sequence classification, one output)"),
        ("sft", SFTConfig, "supervised fine-tuning on prompt-completion rows (the loss on the completion tokens "
                           "only)"),
    ):
        kp = tsub.add_parser(kind, help=help_kind, description=help_kind, epilog=_EPILOG,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
        kp.list_losses = kind == "dpo"
        kp.add_argument("input", nargs="?", default=None,
                        help=f"training {'rows (prompt, completion)' if kind == 'sft' else 'pairs'} (file, saved "
                             "dataset dir, or hub id); or train_file in --config")
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
                               help=f"{f.metadata.get('help', '')} (default: {_show_default(f)})", **extra)
        kp.set_defaults(func=_RUN[kind], _parser=kp, _config_cls=cls)
    p.set_defaults(func=None, _parser=p)


def _show_default(f) -> str:
    value = _default(f)
    if value is None:
        return "unset"
    if isinstance(value, list):
        return ",".join(map(str, value)) or "none"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "none"
    return str(value).replace("%", "%%")


def _default(f):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def config_from_args(args):
    """The config the command line describes (YAML, then flags, then --set)."""
    from prefkit.train.config import load_config, parse_overrides

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
    values.update(parse_overrides(args.overrides))
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


def _run_sft(args) -> int:
    from prefkit.train import train_sft

    cfg = config_from_args(args)
    out = train_sft(cfg)
    _print_summary(out)
    return 0


_RUN = {"dpo": _run_dpo, "rm": _run_rm, "sft": _run_sft}


def _print_summary(output_dir) -> None:
    import json
    import os
    from pathlib import Path

    if os.environ.get("RANK", "0") != "0":   # under torchrun, the main process speaks for all
        return
    report = json.loads((Path(output_dir) / "prefkit_train_report.json").read_text())
    print(report.get("summary", ""))
    print(f"model, tokenizer and report written to {output_dir}")
