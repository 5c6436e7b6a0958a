"""`prefkit demo`: the toy world's pipeline as recipes on the loop engine (`prefkit.pipeline`).

There is one pipeline runner, the engine behind `prefkit run`; the demo is recipes for it
(src/prefkit/toy/demo_recipes/) and a report over their runs:

  main.yaml  per seed: the base policy samples 4 responses per training prompt, the noisy toy
             judge scores them (`prefkit.toy.judge.judged_score`), published binarization, then
             one arm per method, each from the base policy, sharing the stages before the one it
             changes: `base-conditioned` (no training; sampled at goal 10 through the RA data's
             spec), `dpo`, `ra` (DPO on reward-augmented pairs D^w + D^l, sampled at goal 10),
             `ra-half` (one of each pair's two rows), `eps-dpo`, and the selection ablation
             (`select-<metric>`: 40% of the pairs by alignment potential, explicit margin,
             implicit margin or at random, DPO on each); the unlearning probe during training;
             4 samples per held-out prompt scored by the gold reward; goal-following curves of
             base, DPO and RA.
  rm.yaml    per seed: RMBoost / RLAIF / West-of-N / RLCD pairs through `prefkit.synth` with the
             toy stand-in LLM, a reward model on each, accuracy on gold-labelled held-out pairs.

A seed is a set of overrides (`demo_overrides`): its prompts, sampling, judge, binarization and
training seeds; the world is the policy's build arguments. The main world's seeds run in
OUT/seed<S>/, the ablation world's (`DemoConfig.ablation_world`, main table only) in
OUT/world-<key>/seed<S>/; each is a run directory of the engine, so a rerun skips what is done
and resumes what was interrupted. The demo is "run the main job": steps an OUT holds from other
prefkit code (prefkit was changed since) run again (`prefkit run --rerun-stale`), so a report
never mixes code versions. The jobs run in two worker processes (one torch thread each)
when there are two cores. `results_of_run` reads a seed's numbers back from the engine's stage
markers for the report (`prefkit.toy.demo_report`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
import os
import statistics
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

from prefkit.pipeline import engine
from prefkit.pipeline.recipe import load_recipe
from prefkit.toy import task
from prefkit.toy.demo_config import DemoConfig, log, world_name
from prefkit.toy.demo_report import write_report
from prefkit.toy.rm_comparison import RM_RECIPE, results_of_rm_run
from prefkit.toy.world import base_policy, default_cache_dir

RECIPES = Path(__file__).parent / "demo_recipes"
MAIN_RECIPE = RECIPES / "main.yaml"
SELECT_ARMS = ("select-alignment-potential", "select-explicit", "select-implicit", "select-random")
CURVE_ARMS = {"base": "base-conditioned", "dpo": "dpo", "ra": "ra"}   # curve name -> the arm that draws it


# -- a seed as overrides of the recipes ---------------------------------------------------------------

def _yaml(value) -> str:
    return json.dumps(value)   # JSON is YAML: the overrides' values are read as YAML


def policy_overrides(world) -> list[str]:
    """The recipe's policy for `world`: a toy world's build arguments, or a real model by name."""
    if hasattr(world, "base_policy"):   # a real model (prefkit.toy.real_model.RealWorld)
        return ["policy.build=", f"policy.model={world.model}", "policy.args="]
    return [f"policy.args={_yaml(dataclasses.asdict(world))}"]


def demo_overrides(config: DemoConfig, world, seed: int, arms) -> list[str]:
    """The main recipe's overrides for one seed of one world (see the recipe's header)."""
    items = {"min_items": world.min_items, "max_items": world.max_items}
    steps = max(1, math.ceil(config.n_train_prompts / config.batch_size))
    out = policy_overrides(world) + [
        f"prompts.train.args={_yaml({'n': config.n_train_prompts, 'seed': 1000 + seed, **items})}",
        f"prompts.eval.args={_yaml({'n': config.n_eval_prompts, 'seed': 2000 + seed, **items})}",
        f"generate.n={config.samples_per_prompt}", f"generate.temperature={config.temperature}",
        f"generate.max_new_tokens={config.max_new_tokens}", f"generate.seed={seed}",
        "score.reward_args=" + _yaml({"aspect_noise": config.judge.aspect_noise,
                                      "overall_noise": config.judge.overall_noise, "seed": seed}),
        f"pair.seed={seed}", f"relabel.seed={seed}",
        f"train.beta={config.beta}", f"train.learning_rate={config.learning_rate}",
        f"train.per_device_train_batch_size={config.batch_size}", f"train.seed={seed}",
        f"train.logging_steps={max(1, steps // config.probe_points)}",
        "train.unlearning_probe=" + _yaml({"threshold": config.probe_threshold, "pairs": config.probe_pairs}),
        f"evaluate.n={config.eval_samples}", f"evaluate.temperature={config.temperature}",
        f"evaluate.max_new_tokens={config.max_new_tokens}", f"evaluate.seed={10_000 + seed}",
    ]
    out += [f"train.{k}={_yaml(v)}" for k, v in config.train_options.items()]
    for name, arm in CURVE_ARMS.items():
        if arm not in arms:
            continue
        if name in config.curve_policies:
            out += [f"arms.{arm}.evaluate.curve_goals={_yaml(list(config.curve_goals))}",
                    f"arms.{arm}.evaluate.curve_samples={config.curve_samples or config.eval_samples}"]
        else:
            out.append(f"arms.{arm}.evaluate.curve_goals=")
    out += [f"arms.{arm}.select.seed={seed}" for arm in SELECT_ARMS if arm in arms]
    out += [f"arms.{name}={_yaml(spec)}" for name, spec in config.extra_arms.items() if name in arms]
    if config.eval_batch_size is not None:
        out.append(f"evaluate.batch_size={config.eval_batch_size}")
    return out


@dataclasses.dataclass(frozen=True)
class RmSeeds:
    """The seeds of one run of the reward-model recipe (rm.yaml): its training prompts
    (`prompts(n, seed=prompts)`), the stand-in LLM's (its samples, rewrites and judge noise), the
    methods' own (RMBoost's labels and aspects, RLAIF's order coin), the reward model's training
    order, the held-out prompts and their two samples each."""

    prompts: int
    backend: int
    method: int
    rm: int
    eval_prompts: int
    eval_samples: int

    @classmethod
    def demo(cls, seed: int) -> RmSeeds:
        """The demo's seeds for its seed `seed` (see the recipe's header)."""
        return cls(prompts=3000 + seed, backend=seed, method=seed, rm=seed, eval_prompts=4000 + seed,
                   eval_samples=20_000 + seed)


def rm_overrides(config: DemoConfig, world, seeds: RmSeeds, *, eval_pairs: int | None = None) -> list[str]:
    """The reward-model recipe's overrides for one seed (see the recipe's header): the world's
    policy and stand-in LLM, `config.rm_prompts` training prompts, the RM config, and held-out
    pairs from `config.rm_eval_prompts` prompts (with eval_pairs: the first that many pairs,
    `prefkit.toy.recipes.gold_pairs`). Also the regime map's RMBoost cells (`prefkit.toy.regimes`)."""
    items = {"min_items": world.min_items, "max_items": world.max_items}
    world_args = dataclasses.asdict(world)
    steps = max(1, math.ceil(config.rm_prompts / config.batch_size)) * config.rm_epochs
    held_out = {"world": world_args, "n": config.rm_eval_prompts, "seed": seeds.eval_prompts,
                "sample_seed": seeds.eval_samples, "temperature": config.temperature,
                "max_new_tokens": config.max_new_tokens}
    if eval_pairs is not None:
        held_out["pairs"] = eval_pairs
    return policy_overrides(world) + [
        f"prompts.train.args={_yaml({'n': config.rm_prompts, 'seed': seeds.prompts, **items})}",
        "synth.backend.args=" + _yaml({"world": world_args, "seed": seeds.backend,
                                       "aspect_noise": config.judge.aspect_noise,
                                       "overall_noise": config.judge.overall_noise}),
        f"synth.generation={_yaml({'temperature': config.temperature, 'max_tokens': config.max_new_tokens})}",
        f"arms.rmboost.synth.seed={seeds.method}", f"arms.rlaif.synth.seed={seeds.method}",
        f"arms.rmboost.synth.rewrite={_yaml({'temperature': 0.7, 'max_tokens': 4 * config.max_new_tokens})}",
        f"reward_model.learning_rate={config.rm_learning_rate}", f"reward_model.num_train_epochs={config.rm_epochs}",
        f"reward_model.per_device_train_batch_size={config.batch_size}", f"reward_model.seed={seeds.rm}",
        f"reward_model.logging_steps={max(1, steps // 4)}",
        "reward_model.eval_pairs.args=" + _yaml(held_out),
    ]


def demo_arms(config: DemoConfig, main: bool) -> list[str]:
    """The main recipe's arms to run: the base policy at goal 10, the methods, the config's extra
    arms, and (main toy world) the selection ablation."""
    arms = ["base-conditioned"] + [m for m in config.methods] + list(config.extra_arms)
    if main and config.select:
        arms += list(SELECT_ARMS)
    return arms


# -- a seed's numbers, read back from its run ---------------------------------------------------------

def _marker(run_dir: Path, entry: dict) -> dict:
    return json.loads((run_dir / entry["dir"] / "done").read_text())


def results_of_run(run_dir: Path, seed: int) -> dict:
    """One seed's numbers (the report's keys) from a main-recipe run: gold reward per arm, curves,
    probes, pair counts, selection and training logs."""
    manifest = json.loads((run_dir / engine.MANIFEST).read_text())
    steps: dict[str, dict] = {}
    for e in manifest["stages"].values():
        if e.get("status") == "done" and e.get("arm"):
            steps.setdefault(e["arm"], {})[(e["round"], e["stage"])] = {**_marker(run_dir, e), "dir": e["dir"]}
    res: dict = {"seed": seed}
    for arm, st in steps.items():
        if (0, "evaluate") in st and "gold_base" not in res:
            ev = st[(0, "evaluate")]["metrics"]
            res["gold_base"], res["gold_std_base"] = ev["reward_fn"]["mean"], ev["reward_fn"]["std"]
            res["examples_base"] = ev.get("examples", [])
        if (1, "score") in st and "pairs" not in res:
            res.update(_training_data(run_dir, st))
        name = arm.replace("select-", "select_gold_").replace("-", "_") if arm.startswith("select-") else arm
        ev = st.get((1, "evaluate"), {}).get("metrics")
        if ev is None:
            continue
        if arm.startswith("select-"):
            sel = st[(1, "select")]["metrics"]
            res[name] = ev["reward_fn"]["mean"]
            res[name.replace("select_gold_", "select_gold_std_")] = ev["reward_fn"]["std"]
            res["select_budget"], res["select_fraction"] = sel["kept"], sel.get("fraction")
            res[name.replace("select_gold_", "select_train_seconds_")] = st[(1, "train")]["seconds"]
            continue
        res[f"gold_{arm}"], res[f"gold_std_{arm}"] = ev["reward_fn"]["mean"], ev["reward_fn"]["std"]
        res[f"examples_{arm}"] = ev.get("examples", [])
        if (1, "relabel") in st and arm != "base-conditioned":
            res[f"{arm}_pairs"] = st[(1, "relabel")]["metrics"]["rows_out"]
            res.setdefault("relabel_dropped", st[(1, "relabel")]["metrics"].get("dropped", {}))
        tr = st.get((1, "train"))
        if tr is not None:
            m = tr["metrics"]
            res[f"train_seconds_{arm}"] = tr["seconds"]
            res[f"last_log_{arm}"] = {k: v for k, v in m.get("last_log", {}).items()
                                      if k in ("loss", "rewards/accuracies", "rewards/margins")}
            if "probes" in m:
                res[f"probe_{arm}"] = m["probes"]
                res["probe_pairs"] = m.get("probe_pairs")
        for curve, curve_arm in CURVE_ARMS.items():
            if curve_arm == arm and ev.get("curve"):
                c = ev["curve"]
                res[f"curve_{curve}"] = {"goals": [int(g) if float(g).is_integer() else g for g in c["goals"]],
                                         "gold": c["mean"], "slope": c["slope"]}
    for s in ("generate", "score", "pair", "relabel", "train", "evaluate"):
        secs = [st[(1, s)]["seconds"] for st in steps.values() if (1, s) in st]
        res[f"seconds_{s}"] = round(sum(set(secs)), 1)
    return res


def _training_data(run_dir: Path, st: dict) -> dict:
    """Pair counts, drops, and how the judge's scores relate to the gold reward on the training samples."""
    scored = [json.loads(line) for line in Path(st[(1, "score")]["output"]).read_text().splitlines() if line]
    gold, judged = [], []
    for row in scored:
        for r in row["responses"]:
            if r.get("score") is not None:
                gold.append(task.gold_reward(row["prompt"], r["text"]))
                judged.append(r["score"])
    pair = st[(1, "pair")]["metrics"]
    try:
        corr = statistics.correlation(gold, judged)
    except statistics.StatisticsError:
        corr = float("nan")
    return {"pairs": pair["pairs"], "binarize_dropped": pair.get("dropped", {}),
            "train_samples_gold_mean": statistics.fmean(gold) if gold else float("nan"), "judge_gold_corr": corr}


# -- jobs -----------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Job:
    world_index: int
    seed: int
    part: str            # "main" (the main recipe) or "rm" (the reward-model comparison)
    run_dir: Path
    world: object
    arms: tuple = ()


def run_job(job: Job, config: DemoConfig, threads: int | None, progress: bool) -> dict:
    """One seed's part through the engine; its numbers."""
    import torch  # noqa: PLC0415  heavy (torch): lazy, so importing this module stays light

    if threads:
        torch.set_num_threads(threads)
    if job.part == "rm":
        recipe = load_recipe(RM_RECIPE, overrides=rm_overrides(config, job.world, RmSeeds.demo(job.seed)))
        log(f"seed {job.seed} ({world_name(job.world)}): prefkit run {RM_RECIPE.name} -o {job.run_dir} --rerun-stale")
        got = engine.run(recipe, job.run_dir, progress=progress, stale="rerun",
                         log=lambda msg: log(f"seed {job.seed} ({world_name(job.world)}): {msg}"))
        res = results_of_rm_run(job.run_dir)
        res["_ran"] = sum(1 for e in got["steps"] if e.get("ran"))
    else:
        recipe = load_recipe(MAIN_RECIPE, overrides=demo_overrides(config, job.world, job.seed, job.arms))
        log(f"seed {job.seed} ({world_name(job.world)}): prefkit run {MAIN_RECIPE.name} -o {job.run_dir} "
            f"--rerun-stale (arms {', '.join(job.arms)})")
        got = engine.run(recipe, job.run_dir, arms=list(job.arms), progress=progress, stale="rerun",
                         log=lambda msg: log(f"seed {job.seed} ({world_name(job.world)}): {msg}"))
        res = results_of_run(job.run_dir, job.seed)
        res["_ran"] = sum(1 for e in got["steps"] if e.get("ran"))
    res["torch_threads"] = torch.get_num_threads()
    return res


def prepare_base(world, progress: bool = True) -> tuple[Path, float, bool]:
    """(base policy directory, seconds it took, whether it was cached)."""
    log(f"{'world' if hasattr(world, 'base_policy') else 'toy world'} ({world_name(world)}): base policy "
        f"(config {world.key()})")
    t0 = time.time()
    if hasattr(world, "base_policy"):
        cached, base = True, world.base_policy()
    else:
        cached = (default_cache_dir() / f"base-{world.key()}" / "prefkit_toy_world.json").exists()
        base = base_policy(world, progress=progress)
    seconds = time.time() - t0
    log(f"base policy ({world_name(world)}) ready in {seconds:.1f}s: {base}")
    return base, seconds, cached


def _job_base(world, threads: int, progress: bool):
    import torch  # noqa: PLC0415  heavy (torch): lazy, so importing this module stays light

    torch.set_num_threads(threads)
    return prepare_base(world, progress)


def run_worlds(worlds: list[tuple[Path, object, bool]], config: DemoConfig, *, progress: bool = True,
               seeds=None, processes: int | None = None) -> list[dict]:
    """Every seed of every world (out dir, world, whether it is the main world); one dict per world:
    {world, base, base_seconds, base_cached, reused, processes, results (one dict per seed)}."""
    seeds = list(range(config.seeds) if seeds is None else seeds)
    jobs = []
    for k, (out, world, main) in enumerate(worlds):
        for s in seeds:
            jobs.append(Job(k, s, "main", out / f"seed{s}", world, tuple(demo_arms(config, main))))
            if main and config.reward_models:
                jobs.append(Job(k, s, "rm", out / f"seed{s}" / "rm", world))
    runs = [{"world": w, "results": [dict(seed=s) for s in seeds], "reused": 0, "processes": 1}
            for _, w, _ in worlds]
    workers = processes if processes is not None else (2 if config.parallel_worlds and (os.cpu_count() or 1) >= 2
                                                      else 1)
    if workers < 2:
        for k, (_, world, _) in enumerate(worlds):
            base, secs, cached = prepare_base(world, progress)
            runs[k].update(base=base, base_seconds=secs, base_cached=cached)
        for job in jobs:
            _merge(runs, seeds, job, run_job(job, config, None, progress))
        return runs
    threads = max(1, (os.cpu_count() or 2) // 2)
    log(f"running the demo's jobs in 2 processes, {threads} torch thread(s) each")
    for run in runs:
        run["processes"] = 2
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        bases = {pool.submit(_job_base, w, threads, progress and k == 0): k for k, (_, w, _) in enumerate(worlds)}
        for fut in bases:
            base, secs, cached = fut.result()
            runs[bases[fut]].update(base=base, base_seconds=secs, base_cached=cached)
        # the longest first: main parts before reward-model parts, the main world first
        pending = sorted(jobs, key=lambda j: (j.part != "main", j.world_index, j.seed))
        running = {}
        while pending or running:
            while pending and len(running) < 2:
                job = pending.pop(0)
                running[pool.submit(run_job, job, config, threads, progress and job.world_index == 0)] = job
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in done:
                job = running.pop(fut)
                _merge(runs, seeds, job, fut.result())
    return runs


def _merge(runs, seeds, job: Job, res: dict) -> None:
    if not res.pop("_ran", 1):   # a part whose every step was done already
        runs[job.world_index]["reused"] += 1
    runs[job.world_index]["results"][seeds.index(job.seed)].update(res)


def run_demo(out: str | Path = "demo_out", config: DemoConfig | None = None, progress: bool = True) -> Path:
    """Run the demo; returns the path of the Markdown report (results.json is written beside it)."""
    config = config or DemoConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    worlds = [(out, config.world, True)]
    if config.ablation_world is not None:
        worlds.append((out / f"world-{config.ablation_world.key()}", config.ablation_world, False))
    runs = run_worlds(worlds, config, progress=progress)
    for (world_out, _, _), run in zip(worlds, runs):
        for r in run["results"]:
            seed_dir = world_out / f"seed{r['seed']}"
            seed_dir.mkdir(parents=True, exist_ok=True)
            (seed_dir / "results.json").write_text(json.dumps(r, indent=2, default=str))
    report = write_report(out, config, runs, time.time() - t_start)
    log(f"report: {report}")
    return report
