"""`prefkit select` and `prefkit select evolve`: thin front-ends over prefkit.select.

    prefkit select INPUT -o OUTPUT --model DIR [--metric alignment-potential] [--fraction 0.4 | --top-k K]
    prefkit select evolve INPUT -o OUTPUT --model DIR --generator SPEC --scorer SPEC [...]
"""

from __future__ import annotations

import argparse

from prefkit.commands import add_io_arguments

METRIC_CHOICES = ["alignment-potential", "ap-paper", "dpo-implicit", "explicit", "implicit", "random"]


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
    p.add_argument("--model", default=None, help=need_model_help)
    p.add_argument("--metric", choices=METRIC_CHOICES, default="alignment-potential",
                   help="alignment-potential: z(explicit margin) - weight * z(|implicit margin|) (default); "
                        "ap-paper: |explicit| - |implicit| raw; dpo-implicit: alignment potential with the "
                        "DPO implicit margin (needs --reference); explicit: largest explicit margin; "
                        "implicit: smallest |implicit margin|; random")
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
    e.add_argument("--generator", required=True,
                   help="backend that rewrites prompts and samples responses: an OpenAI-compatible base URL "
                        "(http://host:port/v1, with --generator-model) or a local model directory")
    e.add_argument("--generator-model", default=None, help="model name on the OpenAI-compatible server")
    e.add_argument("--reward-model", required=True,
                   help="reward model directory (sequence classification) that scores the new responses")
    e.add_argument("--n-responses", type=int, default=4, help="responses sampled per evolved prompt (default 4)")
    e.add_argument("--operations", default=",".join(_evolve_ops()),
                   help="comma-separated evolve operations (default: all)")
    e.add_argument("--min-ratio", type=float, default=0.5, help="drop rewrites shorter than this x the original")
    e.add_argument("--max-ratio", type=float, default=3.0, help="drop rewrites longer than this x the original")
    e.add_argument("--max-tokens", type=int, default=512, help="generation limit per request (default 512)")
    e.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (default 0.8)")
    e.add_argument("--run-dir", default=None, help="where the resumable request runs are kept (default: beside -o)")
    e.set_defaults(func=_run_evolve, _parser=e, command="select")
    p.evolve_parser = e


def _evolve_ops():
    from prefkit.select.evolve import OPERATIONS

    return list(OPERATIONS)


def _read(args, report):
    from prefkit.data import read

    return read(args.input, split=args.split, subset=args.subset, revision=args.revision,
                format=args.input_format, on_invalid=args.on_invalid, report=report)


def _score_kwargs(args) -> dict:
    return {"max_length": args.max_length, "max_prompt_length": args.max_prompt_length}


def _run_select(args) -> int:
    from prefkit.data import write
    from prefkit.report import StageReport
    from prefkit.select import select

    report = StageReport("select")
    ds = _read(args, report)
    kept = select(ds, args.metric, fraction=args.fraction if args.fraction is not None else 0.4, top_k=args.top_k,
                  weight=args.weight, model=args.model, reference=args.reference, beta=args.beta, plot=args.plot,
                  scored_path=args.scored, report=report, cache_dir=args.cache_dir, batch_size=args.batch_size,
                  chunk_size=args.chunk_size, seed=args.seed, work_dir=args.work_dir, on_invalid=args.on_invalid,
                  score_kwargs=_score_kwargs(args), file=str(args.input))
    out = write(kept, args.output)
    print(report.summary())
    report.write_beside(out)
    print(f"wrote {len(kept)} pairs to {out}" + (f"; plot: {args.plot}" if args.plot else ""))
    return 0


def _run_evolve(args) -> int:
    from prefkit.data import write
    from prefkit.report import StageReport
    from prefkit.select.evolve import evolve_then_select, synth_callables

    report = StageReport("select evolve")
    ds = _read(args, report)
    run_dir = args.run_dir or (str(args.output).rstrip("/") + ".evolve-runs")
    rewrite, respond, score_responses = synth_callables(
        generator=args.generator, generator_model=args.generator_model, reward_model=args.reward_model,
        run_dir=run_dir, max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed)
    result = evolve_then_select(
        ds, rewrite=rewrite, respond=respond, score_responses=score_responses, n_responses=args.n_responses,
        metric=args.metric, fraction=args.fraction if args.fraction is not None else 0.4, top_k=args.top_k,
        weight=args.weight, model=args.model, reference=args.reference, beta=args.beta,
        operations=[o.strip() for o in args.operations.split(",") if o.strip()], seed=args.seed,
        min_ratio=args.min_ratio, max_ratio=args.max_ratio, report=report, cache_dir=args.cache_dir,
        batch_size=args.batch_size, chunk_size=args.chunk_size, score_kwargs=_score_kwargs(args),
        plot=args.plot)
    out = write(result.merged, args.output)
    print(report.summary())
    report.write_beside(out)
    print(f"wrote {len(result.merged)} pairs ({len(result.evolved_selected)} evolved) to {out}")
    return 0
