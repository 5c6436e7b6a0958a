"""`prefkit score INPUT -o OUTPUT`: an UltraFeedback-style LLM judge (--model/--base-url or --local)
or a reward model (--reward-model DIR) scores every response of a PAIRS or MULTI dataset."""

from __future__ import annotations

from prefkit.commands import add_io_arguments


def register(sub, name, help_text):
    from prefkit.commands.synth import add_backend_arguments, add_run_arguments

    p = sub.add_parser(name, help=help_text, description=help_text + ". The judge rates UltraFeedback's four "
                       "aspects (1-5, with rationales) and an overall score (1-10); an unreadable answer is a "
                       "recorded failure, never a made-up score.")
    add_io_arguments(p)
    add_backend_arguments(p, what="judge")
    add_run_arguments(p)
    p.add_argument("--reward-model", default=None, metavar="DIR",
                   help="score with this sequence-classification reward model instead of a judge")
    p.add_argument("--max-length", type=int, default=1024, help="reward model: longest input in tokens")
    p.set_defaults(func=run, _parser=p)


def run(args) -> int:
    from prefkit.commands.synth import backend_from_args, finish, run_dir_of, sampling_from_args
    from prefkit.data import read
    from prefkit.errors import ConfigError
    from prefkit.report import StageReport
    from prefkit.synth.judge import ScoreOptions, score

    judge_given = bool(args.base_url or args.model or args.local)
    if judge_given == bool(args.reward_model):
        raise ConfigError("give a judge (--model [--base-url URL] or --local DIR) or --reward-model DIR, not both")
    report = StageReport("score")
    ds = read(args.input, split=args.split, subset=args.subset, revision=args.revision,
              format=args.input_format, on_invalid=args.on_invalid, report=report)
    n_in = report.rows_in  # the input's rows, also those --on-invalid drop removed
    report.rows_in = report.rows_out = 0  # counted again by score()
    options = ScoreOptions(run_dir=run_dir_of(args, str(args.output).rstrip("/") + ".run"),
                           params=sampling_from_args(args, temperature=0.0, max_tokens=1024),
                           retry_failed=args.retry_failed, batch_size=args.batch_size, max_length=args.max_length,
                           progress=not args.no_progress)
    out = score(ds, options, judge=backend_from_args(args) if judge_given else None,
                reward_model=args.reward_model, report=report)
    report.rows_in = max(report.rows_in, n_in)
    return finish(out, args.output, report, args)
