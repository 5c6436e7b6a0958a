"""`prefkit data binarize|convert|stats`: front-ends to `prefkit.data` (no logic here)."""

from __future__ import annotations

import argparse

from prefkit.commands import add_io_arguments, write_result


def register(sub, name, help_text):
    p = sub.add_parser(name, help=help_text, description=help_text)
    p.set_defaults(func=None, _parser=p)
    dsub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND")

    b = dsub.add_parser(
        "binarize", help="multi-response rows (e.g. UltraFeedback raw) to preference pairs",
        description="Turn multi-response rows into chosen/rejected pairs. 'published' is the UltraFeedback "
                    "recipe of Zhang et al. (chosen = highest overall score, rejected = a random other "
                    "completion under --seed, 'N/A'-rated completions skipped).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_io_arguments(b)
    b.add_argument("--method", choices=["published", "best-vs-worst", "all-pairs"], default="published",
                   help="how pairs are formed per prompt")
    b.add_argument("--seed", type=int, default=42, help="seed of the random rejected choice (published)")
    b.add_argument("--ties", choices=["drop", "keep"], default="drop",
                   help="pairs with equal overall scores (always counted)")
    b.add_argument("--drop-truthfulqa", action="store_true", help="remove prompts whose source is TruthfulQA")
    b.add_argument("--truthfulqa-prompts", default=None, metavar="FILE",
                   help="TruthfulQA questions, one per line or JSON lines ('question' field): also remove prompts "
                        "of other sources that are among them (implies --drop-truthfulqa)")
    b.add_argument("--fine-grained-filter", action="store_true",
                   help="keep only pairs whose mean fine-grained rating of chosen >= rejected")
    b.set_defaults(func=_binarize, _parser=b)

    c = dsub.add_parser("convert", help="read, validate and write in canonical columns",
                        description="Read any supported input, validate every row, and write the canonical "
                                    "PAIRS or MULTI columns; the output extension picks the format.")
    add_io_arguments(c)
    c.set_defaults(func=_convert, _parser=c)

    s = dsub.add_parser("stats", help="counts, score and margin distributions, lengths, per-source table",
                        description="Describe a dataset: counts, score distributions of chosen and rejected, "
                                    "margins, ties, response lengths, and a per-source breakdown.")
    add_io_arguments(s, output=False)
    s.add_argument("--tokenizer", default=None, help="local tokenizer directory: add token lengths")
    s.add_argument("--plots", default=None, metavar="DIR",
                   help="write PNG plots (score histograms, margin histogram, length vs score) here")
    s.add_argument("--json", default=None, metavar="FILE", help="also write the stats as JSON")
    s.set_defaults(func=_stats, _parser=s)


def _read(args, report):
    from prefkit.data import read

    return read(args.input, split=args.split, subset=args.subset, revision=args.revision,
                format=args.input_format, on_invalid=args.on_invalid, report=report)


def _finish(ds, report, args, what: str):
    out, path = write_result(ds, args.output, report, args)
    print(f"wrote {ds.num_rows} {what} to {out}")
    print(report.summary())
    print(f"report: {path}")


def _binarize(args) -> int:
    from prefkit.data import binarize
    from prefkit.report import StageReport

    read_rep, bin_rep = StageReport("read"), StageReport("binarize")
    ds = _read(args, read_rep)
    pairs = binarize(ds, method=args.method, seed=args.seed, ties=args.ties,
                     drop_truthfulqa=args.drop_truthfulqa, fine_grained_filter=args.fine_grained_filter,
                     truthfulqa_prompts=args.truthfulqa_prompts, report=bin_rep)
    rep = StageReport("data binarize", rows_in=read_rep.rows_in, rows_out=pairs.num_rows)
    rep.merge(read_rep)
    rep.merge(bin_rep)
    rep.notes.update({"prompts": bin_rep.rows_in, "output": str(args.output)})
    _finish(pairs, rep, args, f"pairs from {bin_rep.rows_in} prompts")
    return 0


def _convert(args) -> int:
    from prefkit.report import StageReport

    rep = StageReport("data convert")
    ds = _read(args, rep)
    _finish(ds, rep, args, f"rows ({rep.notes.get('format')} -> canonical)")
    return 0


def _stats(args) -> int:
    import json

    from prefkit.data import format_stats, plot_stats, stats
    from prefkit.models import load_tokenizer
    from prefkit.report import StageReport

    rep = StageReport("read")
    ds = _read(args, rep)
    tok = load_tokenizer(args.tokenizer) if args.tokenizer else None
    s = stats(ds, tokenizer=tok)
    print(format_stats(s))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(s, f, indent=2)
        print(f"\nstats: {args.json}")
    if args.plots:
        files = plot_stats(ds, args.plots, tokenizer=tok)
        print(f"\nplots: {', '.join(str(f) for f in files)}")
    if rep.n_dropped:
        print("\n" + rep.summary())
    return 0
