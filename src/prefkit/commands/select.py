"""`prefkit select` and `prefkit select evolve`: thin front-ends over prefkit.select.

    prefkit select INPUT -o OUTPUT --model DIR [--metric alignment-potential] [--fraction 0.4 | --top-k K]
    prefkit select evolve INPUT -o OUTPUT --model DIR --generator SPEC --scorer SPEC [...]
"""

from __future__ import annotations

import argparse

from prefkit.commands import add_io_arguments, write_result


class _SelectParser(argparse.ArgumentParser):
    """`prefkit select evolve ...` goes to the evolve parser; anything else is `prefkit select INPUT`.

    (argparse cannot mix a positional INPUT with a subcommand in one parser, so the first word
    is looked at here.)"""

    evolve_parser: argparse.ArgumentParser | None = None

    def parse_known_args(self, args=None, namespace=None):
        if args and args[0] == "evolve" and self.evolve_parser is not None:
            return self.evolve_parser.parse_known_args(args[1:], namespace)
        return super().parse_known_args(args, namespace)


def _selection_options(p: argparse.ArgumentParser, *, need_model_help: str) -> None:
    from prefkit.select.metrics import available_metrics, get_metric

    p.add_argument("--model", default=None, help=need_model_help)
    p.add_argument("--metric", choices=available_metrics(), default="alignment-potential",
                   help="; ".join(f"{name}: {get_metric(name).help}" for name in available_metrics())
                        + " (metrics from plugins appear here: see docs/select.md)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--fraction", type=float, default=None, help="keep this fraction of pairs (default 0.4)")
    budget.add_argument("--top-k", type=int, default=None, help="keep this many pairs instead of a fraction")
    p.add_argument("--weight", type=float, default=1.0, help="w in z(m_e) - w z(|m_i|) (default 1.0)")
    p.add_argument("--reference", default=None, help="reference model directory (for --metric dpo-implicit)")
    p.add_argument("--beta", type=float, default=0.1, help="beta of the DPO implicit margin (default 0.1)")
    p.add_argument("--cache-dir", default=None,
                   help="row-level cache of model log-probs: an interrupted run resumes, a re-run rescoring nothing")
    p.add_argument("--batch-size", type=int, default=8, help="pairs per model forward (default 8)")
    p.add_argument("--chunk-size", type=int, default=512,
                   help="pairs per streaming chunk and per cache shard (default 512)")
    p.add_argument("--max-length", type=int, default=1024, help="token limit per prompt+response (default 1024)")
    p.add_argument("--max-prompt-length", type=int, default=512, help="prompt token limit (default 512)")
    p.add_argument("--seed", type=int, default=42, help="seed of the random metric (default 42)")
    p.add_argument("--plot", default=None, help="PNG of explicit against implicit margin with the selection boundary")


def register(sub, name, help_text):
    description = (help_text + ".\n\nKeeps the pairs with the highest selection score (all metric columns are "
                   "added to the output).\nSee also: prefkit select evolve --help (evolve the selected prompts, "
                   "regenerate, select again, merge).")
    p = sub.add_parser(name, help=help_text, description=description,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.__class__ = _SelectParser
    add_io_arguments(p)
    _selection_options(p, need_model_help="the policy about to be trained (model directory); needed by every "
                                          "metric except explicit and random")
    p.add_argument("--scored", default=None, help="also write every row with its metric columns and `selected`")
    p.add_argument("--work-dir", default=None,
                   help="keep the metric table here, memory-mapped (for datasets larger than memory)")
    p.set_defaults(func=_run_select, _parser=p)

    e = argparse.ArgumentParser(
        prog="prefkit select evolve",
        description="Self-play 'evolve then select': rewrite the selected prompts into harder variants "
                    "(add constraints, deepen, concretise, require reasoning, broaden), drop runaway rewrites, "
                    "sample and score new responses, select again with the same metric, merge with the input.",
    )
    add_io_arguments(e)
    _selection_options(e, need_model_help="the policy about to be trained (model directory), for the second selection")
    from prefkit.commands.synth import add_backend_arguments, add_run_arguments

    add_backend_arguments(e, prefix="generator-", what="generator (rewrites prompts, samples responses)")
    add_backend_arguments(e, prefix="judge-", what="judge (scores responses; or use --reward-model)")
    g = e.add_argument_group("OpenAI-compatible servers")
    g.add_argument("--api-key-env", default="OPENAI_API_KEY",
                   help="environment variable holding the API key (default OPENAI_API_KEY; never logged)")
    g.add_argument("--api-key", default=None, help="API key (prefer --api-key-env)")
    g.add_argument("--concurrency", type=int, default=64, help="requests in flight at once (default 64)")
    g.add_argument("--timeout", type=float, default=120.0, help="seconds per request (default 120)")
    g.add_argument("--max-retries", type=int, default=6, help="retries per request (default 6)")
    ev = e.add_argument_group("evolve")
    ev.add_argument("--reward-model", default=None, metavar="DIR",
                    help="reward model directory (sequence classification) that scores the new responses")
    ev.add_argument("--n-responses", type=int, default=4, help="responses sampled per evolved prompt (default 4)")
    ev.add_argument("--operations", default=",".join(_evolve_ops()),
                    help="comma-separated evolve operations (default: all)")
    ev.add_argument("--min-ratio", type=float, default=0.5,
                    help="drop rewrites shorter than this times the original (characters; default 0.5)")
    ev.add_argument("--max-ratio", type=float, default=3.0,
                    help="drop runaway rewrites longer than this times the original (default 3.0)")
    add_run_arguments(e)
    e.set_defaults(func=_run_evolve, _parser=e, command="select")
    p.evolve_parser = e


def _evolve_ops():
    from prefkit.select.evolve import OPERATIONS

    return list(OPERATIONS)


def _read(args, report):
    from prefkit.data import read

    return read(args.input, split=args.split, subset=args.subset, revision=args.revision,
                format=args.input_format, on_invalid=args.on_invalid, report=report)


def _select_options(args, **extra):
    """The SelectOptions of `_selection_options`' flags (one flag per field, same name)."""
    from prefkit.select import SelectOptions

    return SelectOptions(
        metric=args.metric, fraction=args.fraction if args.fraction is not None else 0.4, top_k=args.top_k,
        weight=args.weight, beta=args.beta, batch_size=args.batch_size, chunk_size=args.chunk_size,
        cache_dir=args.cache_dir, seed=args.seed, plot=args.plot,
        score_kwargs={"max_length": args.max_length, "max_prompt_length": args.max_prompt_length}, **extra)


def _run_select(args) -> int:
    from prefkit.report import StageReport
    from prefkit.select import select

    report = StageReport("select")
    ds = _read(args, report)
    options = _select_options(args, scored_path=args.scored, work_dir=args.work_dir, on_invalid=args.on_invalid)
    kept = select(ds, options=options, model=args.model, reference=args.reference, report=report,
                  file=str(args.input))
    report.rows_out = len(kept)
    out, _ = write_result(kept, args.output, report, args)
    if args.scored:
        from prefkit.relabel.carry import carry_conditioning

        carry_conditioning(args.input, args.scored)
    print(report.summary())
    print(f"wrote {len(kept)} pairs to {out}" + (f"; plot: {args.plot}" if args.plot else ""))
    return 0


def _run_evolve(args) -> int:
    import dataclasses

    from prefkit.commands.synth import backend_from_args, sampling_from_args
    from prefkit.errors import ConfigError
    from prefkit.report import StageReport
    from prefkit.select import SelectOptions
    from prefkit.select.evolve import EvolveOptions, evolve_then_select

    report = StageReport("select evolve")
    ds = _read(args, report)
    backend = backend_from_args(args, "generator-")
    if backend is None:
        raise ConfigError("evolve needs a generator: --generator-base-url URL --generator-model NAME, "
                          "or --generator-local DIR")
    judge = backend_from_args(args, "judge-")
    if (args.reward_model is None) == (judge is None):
        raise ConfigError("evolve needs exactly one scorer: --reward-model DIR, or a judge (--judge-model / --judge-local)")
    from prefkit.commands.synth import run_dir_of

    run_dir = run_dir_of(args, str(args.output).rstrip("/") + ".run")
    evolve = EvolveOptions(
        n_responses=args.n_responses, operations=tuple(o.strip() for o in args.operations.split(",") if o.strip()),
        seed=args.seed, min_ratio=args.min_ratio, max_ratio=args.max_ratio,
        rewrite_params=sampling_from_args(args, "generator-", temperature=0.7, max_tokens=1024),
        generation=sampling_from_args(args, "generator-", temperature=1.0),
        judge_params=sampling_from_args(args, "judge-", temperature=0.0, max_tokens=1024),
        run_dir=run_dir, retry_failed=args.retry_failed, progress=not args.no_progress)
    # the second selection: its seed stays the default (args.seed seeds the prompt evolution)
    selection = _select_options(args)
    selection = dataclasses.replace(selection, seed=SelectOptions().seed)
    result = evolve_then_select(ds, backend, evolve, selection, reward_model=args.reward_model, judge=judge,
                                model=args.model, reference=args.reference, report=report)
    report.rows_out = len(result.merged)
    out, _ = write_result(result.merged, args.output, report, args)
    print(report.summary())
    print(f"wrote {len(result.merged)} pairs ({len(result.evolved_selected)} evolved) to {out}")
    return 0
