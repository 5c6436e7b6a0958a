"""`prefkit eval WHAT ...`: evaluations.

- `eval rm MODEL PAIRS`: a reward model's pairwise accuracy.
- `eval policy PROMPTS --policy [NAME=]MODEL ... -o DIR`: generate with policies, score with the
  scorers of `prefkit.evaluate.scorers` (a reward function, a reward model and/or an LLM judge:
  1-10 grades; win rate against references in both orders, with the length-controlled win rate;
  or a plugin's); see docs/evaluate.md.
- `eval unlearning MODEL PAIRS`: the unlearning probe (log-probability of high-quality rejected
  responses, conditioned on their own goal for a reward-augmented model).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


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
    _register_policy(whats)
    _register_unlearning(whats)
    p.set_defaults(func=None, _parser=p)


def run_rm(args) -> int:
    from prefkit.data import read
    from prefkit.evaluate.rm_accuracy import format_accuracy, rm_accuracy

    pairs = read(args.pairs, split=args.split, subset=args.subset, revision=args.revision, format=args.input_format)
    result = rm_accuracy(args.model, pairs, batch_size=args.batch_size, max_length=args.max_length,
                         progress=not args.no_progress)
    print(format_accuracy(result))
    _write_json(result, args.output)
    return 0


def _write_json(obj, output) -> None:
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(json.dumps(obj, indent=2, default=str))
        print(f"wrote {output}", file=sys.stderr)


# -- eval policy ------------------------------------------------------------------------------------

#: `--judge MODES` names scorers
JUDGE_MODES = {"single": "judge-single", "pairwise": "pairwise"}


def _register_policy(whats) -> None:
    from prefkit.commands.synth import add_backend_arguments

    desc = ("Generate with one or more policies on a prompt set and score what they wrote: a Python reward "
            "function, a reward model, and/or an LLM judge (single-answer 1-10 grades; pairwise win rate against "
            "reference outputs, asked in both orders, with its standard error and the length-controlled win "
            "rate). Writes results.json, report.md, per_prompt.jsonl, length.png and the outputs in AlpacaEval's "
            "format to OUTPUT. Generations and judge answers are kept in a run directory: re-running the same "
            "command resumes.")
    p = whats.add_parser("policy", help="generate with policies on prompts; reward / judge scores, win rates",
                         description=desc, epilog="See docs/evaluate.md.")
    p.add_argument("prompts", help="prompts: a file with a prompt or instruction column, any preference dataset "
                                   "(its prompts), a saved dataset or a hub id")
    p.add_argument("--policy", action="append", required=True, metavar="[NAME=]MODEL[@URL]",
                   help="a policy: model directory, hub id, .gguf file, `smollm2`, or LoRA adapter directory "
                        "(generated locally; a prefkit_conditioning.json beside it is applied), or "
                        "MODEL@http://HOST:PORT/v1 for a model behind an OpenAI-compatible server; repeat for more")
    p.add_argument("-o", "--output", required=True, help="output directory")
    p.add_argument("--split", default=None)
    p.add_argument("--subset", default=None)
    p.add_argument("--revision", default=None)
    p.add_argument("--format", dest="input_format", default="auto",
                   choices=["auto", "ultrafeedback", "ultrafeedback-binarized", "trl", "multi"])
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N prompts")
    g = p.add_argument_group("generation")
    g.add_argument("-n", "--num-samples", type=int, default=1, help="samples per prompt (default 1)")
    g.add_argument("--temperature", type=float, default=0.7)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--max-new-tokens", type=int, default=512)
    g.add_argument("--seed", type=int, default=0, help="sample j of every prompt uses seed + j")
    g.add_argument("--goal", type=float, default=None,
                   help="conditioning goal for reward-augmented policies (default: the best score)")
    g.add_argument("--conditioning", default=None, metavar="PATH",
                   help="a prefkit_conditioning.json (or the directory holding it) to apply to every policy, "
                        "e.g. for a reward-augmented model behind a server")
    g.add_argument("--no-conditioning", action="store_true", help="never condition prompts")
    g.add_argument("--batch-size", type=int, default=16, help="local generation batch size")
    from prefkit.evaluate.scorers import available_scorers, get_scorer

    s = p.add_argument_group("scoring")
    s.add_argument("--scorer", action="append", default=None, choices=available_scorers(), metavar="NAME",
                   help="a scorer to run (repeat for more): "
                        + "; ".join(f"{n}: {get_scorer(n).help}" for n in available_scorers())
                        + ". Default: those whose inputs are given (reward-fn with --reward-fn, reward-model with "
                          "--reward-model, and with a judge pairwise when a reference is given, else judge-single). "
                          "Scorers from plugins appear here: see docs/evaluate.md")
    s.add_argument("--reward-fn", default=None, metavar="MODULE:FUNCTION",
                   help="a Python reward function f(prompt, response) -> float, e.g. prefkit.toy.task:gold_reward")
    s.add_argument("--reward-model", default=None, metavar="DIR", help="a sequence-classification reward model")
    s.add_argument("--judge", default=None, metavar="MODES",
                   help="judge modes, comma-separated: single (= --scorer judge-single), pairwise (= --scorer pairwise)")
    s.add_argument("--reference", default=None, metavar="NAME", help="the policy whose outputs are the reference")
    s.add_argument("--reference-outputs", default=None, metavar="FILE",
                   help="reference outputs: AlpacaEval format ({instruction, output}) or prefkit outputs")
    s.add_argument("--judge-verdict-only", action="store_true",
                   help="ask the judge for the verdict / rating alone, without an explanation (small judges)")
    s.add_argument("--no-official-lc", action="store_true",
                   help="do not try AlpacaEval's own length-controlled GLM (see docs/evaluate.md)")
    add_backend_arguments(p, prefix="judge-", what="judge")
    c = p.add_argument_group("servers (policies and judge)")
    c.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    c.add_argument("--api-key", default=None, help="API key (prefer --api-key-env)")
    c.add_argument("--concurrency", type=int, default=16, help="requests in flight per server backend (default 16)")
    c.add_argument("--timeout", type=float, default=300.0, help="seconds per request (default 300)")
    c.add_argument("--max-retries", type=int, default=6)
    r = p.add_argument_group("run directory")
    r.add_argument("--run-dir", default=None, help="where finished requests are kept (default OUTPUT/run)")
    r.add_argument("--retry-failed", action="store_true", help="retry requests recorded as failed")
    r.add_argument("--fresh", action="store_true",
                   help="discard the run directory's recorded generations and verdicts first")
    r.add_argument("--strict", action="store_true", help="exit 1 when any request failed (results still written)")
    r.add_argument("--no-progress", action="store_true")
    c.add_argument("--base-url", dest="policy_base_url", default=None, metavar="URL",
                   help="OpenAI-compatible server for every --policy given without @URL (like the other "
                        "commands' --base-url)")
    p.set_defaults(func=run_policy, _parser=p, base_url=None)


def run_policy(args) -> int:
    from prefkit.commands.synth import backend_from_args, run_dir_of, sampling_from_args, strict_failure
    from prefkit.errors import ConfigError
    from prefkit.evaluate.options import EvaluateOptions
    from prefkit.evaluate.policy import evaluate_policies, load_prompts, parse_policy
    from prefkit.report import StageReport

    if args.policy_base_url:  # MODEL -> MODEL@URL (a policy with its own @URL keeps it)
        args.policy = [t if "@http" in t else f"{t}@{args.policy_base_url}" for t in args.policy]
    specs = [parse_policy(t) for t in args.policy]
    if args.fresh:
        run_dir_of(args, str(Path(args.output) / "run"))
    for spec in specs:
        if args.no_conditioning:
            spec.conditioning = None
        elif args.conditioning:
            spec.conditioning = args.conditioning
        spec.goal = args.goal
        if spec.served:
            spec.backend_options = dict(api_key=args.api_key, api_key_env=args.api_key_env,
                                        concurrency=args.concurrency, timeout=args.timeout,
                                        max_retries=args.max_retries)
    judge = backend_from_args(args, "judge-")
    scorers = list(args.scorer or [])
    for mode in (m.strip() for m in (args.judge or "").split(",") if m.strip()):
        if mode not in JUDGE_MODES:
            raise ConfigError(f"--judge {args.judge!r}: modes are {', '.join(JUDGE_MODES)}, not {mode!r}")
        scorers.append(JUDGE_MODES[mode])
    report = StageReport("eval policy")
    rows = load_prompts(args.prompts, split=args.split, subset=args.subset, revision=args.revision,
                        format=args.input_format, report=report)
    if args.limit is not None:
        rows = rows[:args.limit]
    options = EvaluateOptions(
        scorers=tuple(dict.fromkeys(scorers)) or None, n=args.num_samples, temperature=args.temperature,
        top_p=args.top_p, max_new_tokens=args.max_new_tokens, seed=args.seed, batch_size=args.batch_size,
        reward_fn=args.reward_fn, reward_model=args.reward_model, judge=judge,
        judge_params=sampling_from_args(args, "judge-", temperature=0.0, max_tokens=512, seed=0),
        judge_explain=not args.judge_verdict_only, reference=args.reference,
        reference_outputs=args.reference_outputs, official_lc=not args.no_official_lc, output_dir=args.output,
        run_dir=args.run_dir, retry_failed=args.retry_failed, progress=not args.no_progress)
    res = evaluate_policies(specs, rows, options)
    from prefkit.evaluate.report import markdown_tables
    from prefkit.synth.runs import RunStats

    print(markdown_tables(res))
    st = RunStats.from_dict(res["run"])
    print(st.summary(), file=sys.stderr)
    if report.n_dropped:
        print(report.summary(), file=sys.stderr)
    print(f"wrote {args.output}/results.json, report.md, per_prompt.jsonl, outputs/", file=sys.stderr)
    return strict_failure(args, st)


# -- eval unlearning --------------------------------------------------------------------------------

def _register_unlearning(whats) -> None:
    desc = ("The unlearning probe: the mean log-probability the model gives to high-quality rejected responses "
            "(score_rejected >= --threshold). A reward-augmented model (a prefkit_conditioning.json in its "
            "directory) is probed with each prompt conditioned on the rejected response's own score, the goal under "
            "which that response is the right answer (Zhang et al. 2024, arXiv 2410.08067).")
    u = whats.add_parser("unlearning", help="log-probability of high-quality rejected responses under a model",
                         description=desc)
    u.add_argument("model", help="policy: model directory, hub id, .gguf file or `smollm2`")
    u.add_argument("pairs", help="scored pairs (with score_rejected): any file or dataset `prefkit data` reads")
    u.add_argument("-o", "--output", default=None, help="also write the result as JSON here")
    u.add_argument("--split", default=None)
    u.add_argument("--subset", default=None)
    u.add_argument("--revision", default=None)
    u.add_argument("--format", dest="input_format", default="auto")
    u.add_argument("--threshold", type=float, default=5.0, help="minimum score_rejected (default 5, on 1-10)")
    u.add_argument("--limit", type=int, default=None, help="probe a seeded sample of at most N pairs")
    u.add_argument("--seed", type=int, default=0)
    u.add_argument("--goal", default="own",
                   help="conditioning goal for a reward-augmented model: own (default), a number, or none")
    u.add_argument("--batch-size", type=int, default=16)
    u.add_argument("--max-length", type=int, default=1024)
    u.add_argument("--no-progress", action="store_true")
    u.set_defaults(func=run_unlearning, _parser=u)


def run_unlearning(args) -> int:
    from prefkit.data import read
    from prefkit.errors import ConfigError
    from prefkit.evaluate.unlearning import UnlearningOptions, unlearning_probe

    goal = args.goal.strip().lower()
    if goal == "none":
        goal = None
    elif goal != "own":
        try:
            goal = float(goal)
        except ValueError:
            raise ConfigError(f"--goal must be own, none or a number, not {args.goal!r}") from None
    pairs = read(args.pairs, split=args.split, subset=args.subset, revision=args.revision, format=args.input_format)
    options = UnlearningOptions(threshold=args.threshold, limit=args.limit, seed=args.seed, goal=goal,
                                batch_size=args.batch_size, max_length=args.max_length, progress=not args.no_progress)
    res = unlearning_probe(args.model, pairs, options)
    cond = f"conditioned on goal {res['goal']}" if res["conditioned"] else "unconditioned"
    mean = "n/a" if res["mean_rejected_logp"] is None else f"{res['mean_rejected_logp']:.4f}"
    per_tok = "n/a" if res["mean_rejected_logp_per_token"] is None else f"{res['mean_rejected_logp_per_token']:.4f}"
    print(f"unlearning probe {res['model']} ({cond})")
    print(f"  high-quality rejected (score >= {res['threshold']:g}): {res['pairs']} of {res['pairs_total']} pairs"
          + (f", {res.get('scored', 0)} scored" if res["pairs"] else ""))
    print(f"  mean log p(rejected | prompt)   {mean}")
    print(f"  per token                       {per_tok}")
    for reason, k in res["skipped"].items():
        print(f"  skipped {k:>6}  {reason}")
    _write_json(res, args.output)
    return 0
