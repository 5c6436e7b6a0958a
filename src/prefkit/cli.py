"""The `prefkit` command line. It holds no logic: each subcommand parses options and calls
the stage's public Python function (see prefkit.commands.*). Heavy imports (torch,
transformers, datasets) happen inside the subcommand, so `prefkit --help` stays fast."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys
import warnings

from prefkit import __version__
from prefkit.errors import EXIT_USAGE, PrefkitError, exit_code
from prefkit.plugins import load_plugins

# (name, module, one-line help). Each module defines `register(subparsers)`, which adds its
# parser and sets `func` to a callable taking the parsed namespace and returning an exit code.
COMMANDS = [
    ("data", "prefkit.commands.data", "read, convert, binarize and describe preference datasets"),
    ("relabel", "prefkit.commands.relabel", "reward-augmented relabeling (Zhang et al. 2024)"),
    ("synth", "prefkit.commands.synth", "synthesise preference pairs: RMBoost, RLAIF, West-of-N, RLCD"),
    ("score", "prefkit.commands.score", "score responses with an LLM judge or a reward model"),
    ("select", "prefkit.commands.select", "alignment-potential data selection (Huang et al. 2025)"),
    ("train", "prefkit.commands.train", "train a policy (DPO family, eps-DPO, SFT) or a reward model"),
    ("eval", "prefkit.commands.eval", "evaluate reward models and policies"),
    ("models", "prefkit.commands.models", "import GGUF models (smollm2), merge LoRA adapters, export chat templates"),
    ("run", "prefkit.commands.run", "run a recipe: rounds of generate, score, pair, relabel, select, train, evaluate"),
    ("demo", "prefkit.commands.demo", "run the whole pipeline in the embedded toy world"),
]

EPILOG = """stage convention: prefkit STAGE INPUT -o OUTPUT [options]
  INPUT   a file (.jsonl .json .parquet .csv), a directory saved by `datasets`,
          or a Hugging Face hub id (with --split, --subset, --revision)
  OUTPUT  the extension picks the format: .jsonl, .parquet, or a directory
Every stage is also a Python function with the same options; see README.md.

output: summaries on stdout; warnings, progress bars and errors on stderr. -q/--quiet (here or
after any command) or TQDM_DISABLE=1 turns progress bars off; --quiet also silences warnings and
the trainer's per-step log lines. Bars are drawn only when stderr is a terminal (a redirected log
gets no carriage returns).
exit status: 0 done; 1 the run failed (bad data, every request failed, no rows written from a
non-empty input: --allow-empty writes partial results); 2 a usage error (bad option or config,
an input file that does not exist); 130 interrupted."""

QUIET_HELP = "no progress bars and no warnings on stderr (errors and the summary still print)"


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The whole parser; given the command line `argv`, only the command it names is built in
    full (its module imported, its choices read from the registries) and the others are one-line
    entries for `prefkit --help`: start-up then costs one command's imports, not all of them."""
    parser = argparse.ArgumentParser(
        prog="prefkit",
        description="prefkit: preference-data-centric direct alignment of LLMs.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"prefkit {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = None if argv is None else next((a for a in argv if not a.startswith("-")), "")
    for name, module, help_text in COMMANDS:
        if wanted is None or name == wanted:
            importlib.import_module(module).register(sub, name, help_text)
        else:
            stub = sub.add_parser(name, help=help_text, description=help_text)
            stub.set_defaults(func=None, _parser=stub)
    for p in all_parsers(parser):
        # The same flag after any command; SUPPRESS keeps `prefkit -q CMD` from being reset.
        p.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help=QUIET_HELP)
    return parser


def all_parsers(parser: argparse.ArgumentParser):
    """Every parser below `parser` (commands, their subcommands, `select evolve`)."""
    seen = []
    todo = [parser]
    while todo:
        p = todo.pop()
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo.extend(action.choices.values())
        extra = getattr(p, "evolve_parser", None)
        if extra is not None:
            todo.append(extra)
        if p is not parser and all(p is not q for q in seen):
            seen.append(p)
    return seen


_QUIET_ENV = {
    "TQDM_DISABLE": "1",  # our bars (prefkit.report.progress_enabled) and plain tqdm ones
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "DATASETS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "PREFKIT_QUIET": "1",  # prefkit.report.quiet(): e.g. no per-step log lines from the trainers
}


_BAR_ENV = ("TQDM_DISABLE", "HF_DATASETS_DISABLE_PROGRESS_BARS", "HF_HUB_DISABLE_PROGRESS_BARS")


@contextlib.contextmanager
def _quiet(on: bool, *, bars_off: bool = False):
    """--quiet: no progress bars and no warnings while the command runs; errors still print.
    `bars_off` alone (stderr is not a terminal): no progress bars, warnings kept.
    Everything is put back afterwards (main() is also called in-process, e.g. by tests)."""
    if not (on or bars_off):
        yield
        return
    env = _QUIET_ENV if on else {k: _QUIET_ENV[k] for k in _BAR_ENV}
    saved_env = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    logger = logging.getLogger("prefkit")
    saved_level = logger.level
    if on:
        logger.setLevel(logging.ERROR)
    hf = []
    ds = sys.modules.get("datasets")  # already imported: its switch was read at import time
    if ds is not None and ds.is_progress_bar_enabled():
        ds.disable_progress_bars()
        hf.append(ds.enable_progress_bars)
    hub = sys.modules.get("huggingface_hub.utils")
    if hub is not None and not hub.are_progress_bars_disabled():
        hub.disable_progress_bars()
        hf.append(hub.enable_progress_bars)
    tf_logging = sys.modules.get("transformers.utils.logging")
    if tf_logging is not None:
        if tf_logging.is_progress_bar_enabled():
            tf_logging.disable_progress_bar()
            hf.append(tf_logging.enable_progress_bar)
        if on:
            level = tf_logging.get_verbosity()
            tf_logging.set_verbosity_error()
            hf.append(lambda: tf_logging.set_verbosity(level))
    try:
        with warnings.catch_warnings():
            if on:
                warnings.simplefilter("ignore")
            yield
    finally:
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        logger.setLevel(saved_level)
        for undo in hf:
            undo()


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def accept_old_spellings(args) -> None:
    """`--on-invalid skip` (every stage's old word for 'drop') still works, with a note."""
    for attr in ("on_invalid", "opt_on_invalid"):
        if getattr(args, attr, None) == "skip":
            setattr(args, attr, "drop")
            if not getattr(args, "quiet", False):
                print(f"prefkit {args.command}: note: --on-invalid skip is now spelled --on-invalid drop",
                      file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    try:
        load_plugins()  # before the parser, so plugins' names are among its choices
    except PrefkitError as exc:
        print(f"prefkit: error: {exc}", file=sys.stderr)
        return exit_code(exc)
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        # `prefkit` or `prefkit data` alone: show the relevant help.
        (getattr(args, "_parser", None) or parser).print_help()
        return 0 if args.command is None else EXIT_USAGE
    accept_old_spellings(args)
    try:
        with _quiet(getattr(args, "quiet", False), bars_off=not _is_terminal(sys.stderr)):
            rc = args.func(args)
    except PrefkitError as exc:
        print(f"prefkit {args.command}: error: {exc}", file=sys.stderr)
        return exit_code(exc)
    except KeyboardInterrupt:
        print(f"prefkit {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    raise SystemExit(main())
