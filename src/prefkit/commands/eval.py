"""`prefkit eval WHAT ...`: evaluations. `eval rm MODEL PAIRS`: a reward model's pairwise accuracy."""

from __future__ import annotations


def register(sub, name, help_text):
    p = sub.add_parser(name, help=help_text, description=help_text)
    whats = p.add_subparsers(dest="what", metavar="WHAT")
    rm = whats.add_parser("rm", help="pairwise accuracy of a reward model on held-out pairs, overall and per source",
                          description="Pairwise accuracy of a reward model: the share of pairs where it scores "
                                      "chosen above rejected (ties count one half), overall and per source.")
    rm.add_argument("model", help="reward model directory (sequence classification, one output)")
    rm.add_argument("pairs", help="held-out pairs: any file or dataset `prefkit data` reads")
    rm.add_argument("-o", "--output", default=None, help="also write the metrics as JSON here")
    rm.add_argument("--split", default=None)
    rm.add_argument("--subset", default=None)
    rm.add_argument("--revision", default=None)
    rm.add_argument("--format", dest="input_format", default="auto")
    rm.add_argument("--batch-size", type=int, default=16)
    rm.add_argument("--max-length", type=int, default=1024)
    rm.add_argument("--no-progress", action="store_true")
    rm.set_defaults(func=run_rm, _parser=rm)
    p.set_defaults(func=None, _parser=p)


def run_rm(args) -> int:
    import json
    import sys
    from pathlib import Path

    from prefkit.data import read
    from prefkit.evaluate.rm_accuracy import format_accuracy, rm_accuracy

    pairs = read(args.pairs, split=args.split, subset=args.subset, revision=args.revision, format=args.input_format)
    result = rm_accuracy(args.model, pairs, batch_size=args.batch_size, max_length=args.max_length,
                         progress=not args.no_progress)
    print(format_accuracy(result))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.output}", file=sys.stderr)
    return 0
