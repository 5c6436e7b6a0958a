"""`prefkit run RECIPE.yaml`: run a recipe's rounds of stages, resumably (prefkit.pipeline)."""

from __future__ import annotations

import sys

DESCRIPTION = """Run a recipe: per round, the stages it names (generate, score, pair, synth, relabel,
select, evolve, reward_model, train, sft, evaluate) with the options of their stage functions; with
arms, each arm (the stages with its changes) from the initial policy, sharing the steps they have
in common. Each stage's output is kept under RUN_DIR/round-K/STAGE/KEY (KEY: a hash of its inputs
and options): running the same command again skips finished stages and resumes an interrupted
one; a changed option reruns the stages from it on. The whole recipe is checked before anything
runs. Each step records the prefkit code that made it: when steps were made by other code (prefkit
was changed since), the run stops before running anything (exit 2) until told --rerun-stale or
--keep-stale. See docs/loop.md."""


def register(sub, name, help_text):
    p = sub.add_parser(name, help=help_text, description=DESCRIPTION)
    p.add_argument("target", metavar="RECIPE", help="recipe YAML file (with --status: a run directory)")
    p.add_argument("-o", "--output", dest="run_dir", default=None,
                   help="run directory (default: runs/<recipe name>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set train.beta=0.05 --set rounds=3 (repeatable)")
    p.add_argument("--rounds", type=int, default=None, help="number of rounds (overrides the recipe's)")
    p.add_argument("--until", default=None, metavar="STAGE",
                   help="stop after this stage: STAGE (in the last round) or round-K/STAGE")
    p.add_argument("--arm", dest="arms", action="append", default=None, metavar="ARM",
                   help="run only this arm of a recipe with arms (repeatable; default: every arm)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (stages, inputs, outputs, what is already done) and run nothing")
    p.add_argument("--status", action="store_true", help="say where the run in RUN_DIR (the argument) stands")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--rerun-stale", dest="stale", action="store_const", const="rerun",
                   help="steps made by other prefkit code run again (the steps after them too, where their "
                   "outputs change); their directories move to RUN_DIR/stale/")
    g.add_argument("--keep-stale", dest="stale", action="store_const", const="keep",
                   help="use steps made by other prefkit code as they are (the manifest says which code made each)")
    p.set_defaults(func=run_cmd, _parser=p, stale="refuse")


def run_cmd(args) -> int:
    from prefkit.pipeline import engine
    from prefkit.pipeline.report import format_plan, format_status

    if args.status:
        print(format_status(engine.status(args.run_dir or args.target)))
        return 0
    from prefkit.pipeline.recipe import load_recipe

    recipe = load_recipe(args.target, overrides=args.overrides, rounds=args.rounds)
    result = engine.run(recipe, args.run_dir, until=args.until, arms=args.arms, dry_run=args.dry_run,
                        progress=not args.no_progress, stale=args.stale)
    if args.dry_run:
        print(format_plan(result))
        return 0
    print(format_plan(result, title="finished"))
    print(f"report: {result['report']}", file=sys.stderr)
    return 0
