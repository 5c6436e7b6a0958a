"""The `prefkit` command line. It holds no logic: each subcommand parses options and calls
the stage's public Python function (see prefkit.commands.*). Heavy imports (torch,
transformers, datasets) happen inside the subcommand, so `prefkit --help` stays fast."""

from __future__ import annotations

import argparse
import importlib
import sys

from prefkit import __version__
from prefkit.errors import PrefkitError

# (name, module, one-line help). Each module defines `register(subparsers)`, which adds its
# parser and sets `func` to a callable taking the parsed namespace and returning an exit code.
COMMANDS = [
    ("data", "prefkit.commands.data", "read, convert, binarize and describe preference datasets"),
    ("relabel", "prefkit.commands.relabel", "reward-augmented relabeling (Zhang et al. 2024)"),
    ("synth", "prefkit.commands.synth", "synthesise preference pairs: RMBoost, RLAIF, West-of-N, RLCD"),
    ("score", "prefkit.commands.score", "score responses with an LLM judge or a reward model"),
    ("select", "prefkit.commands.select", "alignment-potential data selection (Huang et al. 2025)"),
    ("train", "prefkit.commands.train", "train a policy (DPO family, eps-DPO) or a reward model"),
    ("eval", "prefkit.commands.eval", "evaluate reward models and policies"),
    ("models", "prefkit.commands.models", "import GGUF models; list the bundled ones (smollm2)"),
    ("demo", "prefkit.commands.demo", "run the whole pipeline in the embedded toy world"),
]

EPILOG = """stage convention: prefkit STAGE INPUT -o OUTPUT [options]
  INPUT   a file (.jsonl .json .parquet .csv), a directory saved by `datasets`,
          or a Hugging Face hub id (with --split, --subset, --revision)
  OUTPUT  the extension picks the format: .jsonl, .parquet, or a directory
Every stage is also a Python function with the same options; see README.md."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prefkit",
        description="prefkit: preference-data-centric direct alignment of LLMs.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"prefkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module, help_text in COMMANDS:
        mod = importlib.import_module(module)
        mod.register(sub, name, help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        # `prefkit` or `prefkit data` alone: show the relevant help.
        (getattr(args, "_parser", None) or parser).print_help()
        return 0 if args.command is None else 2
    try:
        rc = args.func(args)
    except PrefkitError as exc:
        print(f"prefkit {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"prefkit {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    raise SystemExit(main())
