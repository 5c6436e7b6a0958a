"""`prefkit relabel INPUT -o OUTPUT`: reward-augmented relabeling (calls prefkit.relabel.relabel_file);
`--rows sft`: goal-conditioned SFT rows instead (prefkit.relabel.sft_rows_file), for
`prefkit train sft`."""

from __future__ import annotations

from prefkit.commands import add_io_arguments


def register(sub, name, help_text):
    p = sub.add_parser(
        name, help=help_text, description=help_text + ". Each scored pair becomes two pairs: the prompt "
        "conditioned on the chosen response's score (chosen, rejected as given) and on the rejected "
        "response's score (chosen and rejected swapped). Writes OUTPUT, OUTPUT.conditioning.json "
        "(the conditioning spec the trainer copies into the model) and OUTPUT.report.json.")
    add_io_arguments(p)
    p.add_argument("--rows", choices=["pairs", "sft"], default="pairs",
                   help="pairs (default): the two conditioned pairs per scored pair; sft: one prompt-completion row "
                        "per judged response of a multi-response INPUT, its prompt conditioned on its own score "
                        "with the same text and placement (for `prefkit train sft`; the pair options --ties, "
                        "--half, --fine-grained-filter, --attributes, --goal-from and the TruthfulQA drop do not "
                        "apply)")
    p.add_argument("--placement", choices=["system", "user", "auto"], default="system",
                   help="where S(g) goes: a system message (default), a prefix of the first user turn, "
                        "or auto (system if --tokenizer's chat template accepts a system role)")
    p.add_argument("--tokenizer", default=None,
                   help="local tokenizer directory (for --placement auto and --goal-from implicit)")
    p.add_argument("--ties", choices=["drop", "keep"], default="drop",
                   help="pairs whose chosen and rejected goals are equal: drop (default, counted) or keep")
    p.add_argument("--half", action="store_true",
                   help="size-matched ablation: each pair contributes only its D^w or its D^l row (seeded coin)")
    p.add_argument("--seed", type=int, default=42, help="seed for --half and binarization (default 42)")
    p.add_argument("--template", default=None, metavar="FILE",
                   help="conditioning template file with {goal} / {goal_lines} / {<attribute>} placeholders")
    p.add_argument("--attributes", default=None, metavar="A,B,C",
                   help="goal attributes, one line each: 'overall' (score_chosen/rejected) or fields of "
                        "aspects_chosen/rejected or columns <name>_chosen/<name>_rejected (default: overall)")
    p.add_argument("--fine-grained-filter", action="store_true",
                   help="keep only pairs with fine_grained_chosen >= fine_grained_rejected (published pre-filter)")
    p.add_argument("--round", dest="round_scores", type=int, default=None, metavar="N",
                   help="round goals to N decimals before tie detection and rendering")
    p.add_argument("--scale", default="1,10", metavar="MIN,MAX",
                   help="goal scale stated in S(g); MAX is the goal used at inference (default 1,10)")
    p.add_argument("--goal-from", choices=["scores", "implicit"], default="scores",
                   help="goals from judge scores (default) or from --model's implicit rewards "
                        "beta*(log pi - log pi_ref), mapped linearly onto --scale")
    p.add_argument("--model", default=None, metavar="DIR", help="policy directory for --goal-from implicit")
    p.add_argument("--reference", default=None, metavar="DIR",
                   help="reference model directory for --goal-from implicit (omit: reference-free)")
    p.add_argument("--beta", type=float, default=0.1, help="beta of the implicit reward (default 0.1)")
    p.add_argument("--batch-size", type=int, default=8, help="pairs per forward pass when scoring (default 8)")
    p.add_argument("--drop-truthfulqa", action="store_true",
                   help="drop prompts whose source is TruthfulQA (as `prefkit data binarize --drop-truthfulqa`)")
    p.add_argument("--truthfulqa-prompts", default=None, metavar="FILE",
                   help="TruthfulQA questions, one per line or JSON lines ('question' field): also drop prompts "
                        "of other sources that are among them (implies --drop-truthfulqa)")
    p.set_defaults(func=run, _parser=p)


def run(args) -> int:
    import dataclasses

    from prefkit.errors import ConfigError
    from prefkit.relabel import RelabelOptions, relabel_file

    try:
        lo, hi = (float(v) for v in args.scale.split(","))
    except ValueError as exc:
        raise ConfigError(f"--scale must be MIN,MAX (e.g. 1,10), got {args.scale!r}") from exc
    # one flag per RelabelOptions field, under the field's own name
    fields = {f.name: getattr(args, f.name) for f in dataclasses.fields(RelabelOptions) if f.name != "scale"}
    options = RelabelOptions(scale=(lo, hi), **fields)
    write = relabel_file
    if args.rows == "sft":
        from prefkit.relabel import sft_rows_file

        write = sft_rows_file
    try:
        report = write(args.input, args.output, options, split=args.split, subset=args.subset,
                       revision=args.revision, input_format=args.input_format, on_invalid=args.on_invalid,
                       allow_empty=args.allow_empty)
    except ConfigError as exc:   # options are named by their fields; say the flag a CLI user typed
        flags = {a.dest: a.option_strings[0] for a in args._parser._actions if a.option_strings}
        field, sep, rest = str(exc).partition(": ")
        if sep and field in fields and field in flags:
            raise ConfigError(f"{flags[field]}: {rest}") from exc
        raise
    print(report.summary())
    print(f"wrote {args.output} (+ conditioning spec {report.notes.get('conditioning_spec')})")
    return 0
