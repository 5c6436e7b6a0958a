"""`prefkit demo [--out DIR] [--seeds N] [--quick] [--methods ...] [--world W] [--no-ablation-world]`:
the whole pipeline in the toy world; `prefkit demo --regimes [--method M] [--cells N|FILTER]`: the
pre-registered regime map (prefkit.toy.regimes, docs/regimes.md); `prefkit demo --model smollm2 [--quick] [--only-seed N]`: the same
pipeline on a real model (prefkit.toy.real_model, docs/real_lab.md); `prefkit demo --model smollm2 --lab power
[--prompts 300] [--samples 4] [--seeds 5] [--only-seed S]`: that pipeline at the power calculation's size
(prefkit.toy.real_lab)."""

from __future__ import annotations


def register(sub, name, help_text):
    p = sub.add_parser(name, help=help_text, description=help_text + ". Writes a Markdown report with "
                       "PNG plots and results.json to --out; a seed already finished there is skipped (resume).")
    p.add_argument("--out", default=None, help="output directory (default: demo_out; regimes_out with --regimes)")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (default 3; 1 with --quick)")
    p.add_argument("--quick", action="store_true", help="a small, fast configuration (about 2 minutes)")
    p.add_argument("--methods", default="dpo,ra,ra-half,eps-dpo",
                   help="comma-separated methods to train (arms of the demo's recipe): dpo, ra (DPO on "
                        "reward-augmented data), ra-half (a random half of the RA rows), eps-dpo (default: all)")
    p.add_argument("--world", choices=("prior", "no-prior"), default="prior",
                   help="the main world: base policy with the goal prior (default) or without it; the other "
                        "one runs as the ablation world")
    p.add_argument("--no-ablation-world", action="store_true",
                   help="skip the ablation world (the main table in the other world)")
    p.add_argument("--model", default=None,
                   help="run the pipeline on a real model instead of the toy world: a shortcut (smollm2), a "
                        "directory or a hub id; trains dpo, ra and eps-dpo with LoRA (docs/real_lab.md). "
                        "--methods, --world and --no-ablation-world do not apply")
    p.add_argument("--only-seed", type=int, default=None,
                   help="with --model: run this one seed and write no report (to run seeds in parallel; a "
                        "later run with --seeds finds its results and writes the report)")
    lab = p.add_argument_group("the power-sized real-model lab (--model M --lab power; docs/real_lab.md): a "
                               "documented long job, about 55 CPU-minutes per seed (one torch thread)")
    lab.add_argument("--lab", choices=("power",), default=None,
                     help="with --model: the lab at the power calculation's size (docs/regimes.md): 300 held-out "
                          "prompts x 4 samples per policy, 5 seeds, and a papers-scale DPO arm (beta 0.01, "
                          "learning rate 5e-7, full-parameter); writes OUT/report.md and OUT/lab.json; with --quick, the "
                          "real demo's --quick training sizes (for tests)")
    lab.add_argument("--prompts", type=int, default=None, help="with --lab: held-out prompts per seed (default 300)")
    lab.add_argument("--samples", type=int, default=None,
                     help="with --lab: samples per held-out prompt and policy (default 4)")
    g = p.add_argument_group("the regime map (--regimes; docs/regimes.md): a documented long job, hours of CPU")
    g.add_argument("--regimes", action="store_true",
                   help="run (resuming) the pre-registered regime map's cells, 5 seeds each, and write its report "
                        "(OUT/map.md); the estimated cost is stated before anything runs")
    from prefkit.toy.regimes import add_arguments

    add_arguments(g)
    p.set_defaults(func=run, _parser=p)


def run(args) -> int:
    from prefkit.errors import ConfigError
    from prefkit.toy.demo import run_demo
    from prefkit.toy.demo_config import METHODS, DemoConfig, no_prior, quick_config

    if args.seeds is not None and args.seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {args.seeds}")
    if args.regimes:
        return run_regimes(args)
    if args.stale is not None:
        raise ConfigError(f"--{args.stale}-stale applies to the regime map (--regimes); the demo always runs "
                          "steps made by other prefkit code again")
    regime_only = [f for f in ("method", "cells", "stop_at") if getattr(args, f) is not None] + \
        [f for f in ("dry_run", "mechanism") if getattr(args, f)] + \
        (["report_only"] if args.report_only and args.lab is None else []) + \
        [f for f in ("levels",) if getattr(args, f) is not None]
    if regime_only:
        raise ConfigError(f"--{regime_only[0].replace('_', '-')} applies to the regime map (--regimes)"
                          + (" and the power lab (--model M --lab power)" if regime_only[0] == "report_only" else ""))
    lab_only = [f for f in ("lab", "prompts", "samples") if getattr(args, f) is not None]
    if lab_only and args.model is None:
        raise ConfigError(f"--{lab_only[0]} applies to the real-model lab (--model M --lab power)")
    if args.lab is None and lab_only:
        raise ConfigError(f"--{lab_only[0]} applies to the power-sized lab (--lab power)")
    args.out = args.out or "demo_out"
    if args.lab is not None:
        return run_lab(args)
    if args.model is not None:
        return run_real(args)
    if args.only_seed is not None:
        raise ConfigError("--only-seed applies to the real-model demo (--model)")
    if args.quick:
        config = quick_config(seeds=args.seeds or 1)
    else:
        config = DemoConfig(seeds=args.seeds or 3)
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise ConfigError(f"--methods: unknown {', '.join(bad) or '(none given)'}; choose from {', '.join(METHODS)}")
    config.methods = methods
    if args.world == "no-prior":
        config.world, config.ablation_world = config.ablation_world or no_prior(config.world), config.world
    if args.no_ablation_world:
        config.ablation_world = None
    report = run_demo(args.out, config)
    print(report.read_text().split("## Goal-following curves")[0].split("## Unlearning probe")[0])
    return 0


def run_one_seed(args, run_seeds, config, record: str) -> int:
    """--only-seed S (the real demo and the power lab): that seed alone, without the report, so
    seeds can run as separate processes; the same command without it writes the report."""
    from prefkit.errors import ConfigError

    if args.only_seed < 0:
        raise ConfigError(f"--only-seed must be >= 0, got {args.only_seed}")
    out = run_seeds(args.out, config, seeds=[args.only_seed], report=False)
    print(f"seed {args.only_seed}: {out / f'seed{args.only_seed}' / record}")
    return 0


def run_real(args) -> int:
    from prefkit.toy.real_model import real_config, real_quick_config, run_real_demo

    seeds = args.seeds or (1 if args.quick else 2)
    config = (real_quick_config if args.quick else real_config)(seeds=seeds, model=args.model)
    if args.only_seed is not None:
        return run_one_seed(args, run_real_demo, config, "results.json")
    report = run_real_demo(args.out, config)
    print(report.read_text().split("## Unlearning probe")[0])
    return 0


def run_lab(args) -> int:
    from pathlib import Path

    from prefkit.errors import ConfigError
    from prefkit.toy.real_lab import POWER_PROMPTS, POWER_SAMPLES, power_config
    from prefkit.toy.real_lab import run_lab as run_power_lab

    pick = lambda given, default: default if given is None else given   # noqa: E731
    config = power_config(seeds=pick(args.seeds, 5), prompts=pick(args.prompts, POWER_PROMPTS),
                          samples=pick(args.samples, POWER_SAMPLES), model=args.model, quick=args.quick)
    if args.only_seed is not None:
        if args.report_only:
            raise ConfigError("--report-only runs nothing; --only-seed runs one seed: give one of them")
        return run_one_seed(args, run_power_lab, config, "lab_record.json")
    if args.report_only:   # the seeds' records as they are, whatever code made them (the report names it)
        from prefkit.toy.real_lab import write_lab_report

        print(write_lab_report(Path(args.out), config).read_text())
        return 0
    print(run_power_lab(args.out, config).read_text())
    return 0


def run_regimes(args) -> int:
    from prefkit.toy.regimes import run_args

    p = run_args(args)
    if p is not None and p.suffix == ".md":
        print(p.read_text())
    elif p is not None:
        print(p)
    return 0
