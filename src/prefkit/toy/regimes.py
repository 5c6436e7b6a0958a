"""The pre-registered regime map (docs/regimes.md, issue 21): its cells, generated from the
design's tables, run as recipes on the engine (`prefkit.pipeline`), and the map's report.

    prefkit demo --regimes [--method ra|ap|eps|rmboost] [--cells N|FILTER] [--seeds 5] [--out DIR]
    python -m prefkit.toy.regimes --method eps --cells "eps=0.01,length=1ep,beta0=0.1"
    python -m prefkit.toy.regimes --mechanism [--seeds 5] --out DIR   # RA's mechanism panel

A **cell** is one setting of a method's axes (docs/regimes.md's tables: RA 40 core + 8 sweep
cells, AP 36, eps-DPO 16, RMBoost 9). A **cell-seed** is one run of
src/prefkit/toy/demo_recipes/regimes.yaml with the overrides of that cell and seed
(`group_overrides`): the world setting chosen by the calibration, the seed's prompts, sampling and
judge seeds, and the cell's arms. An RMBoost cell-seed is one run of the demo's reward-model recipe
src/prefkit/toy/demo_recipes/rm.yaml (`rm_group_overrides`, `rm_arms`): RMBoost at the cell's
rewriter fidelity and RLAIF, West-of-N and RLCD on the cell's prompt budget, one reward model each,
their accuracies on the seed's 400 held-out gold-labelled pairs. Cells that share their data
(world, judge noise, data size, pair options and seed; for RMBoost: budget and seed) share one run
directory (`OUT/data/<group>/seed<S>`), so the samples, scores and pairs are made once, and an arm
trained for one cell (DPO at 1 epoch, say; RLAIF, West-of-N and RLCD for RMBoost's three
fidelities) is found done by the next. A rerun skips what is done (the engine's `done` markers) and resumes
what was interrupted.

RA cells also run the conditioning-only control `cond-sft` (supervised training on every judged
sample conditioned on its own score, for RA's optimiser steps in the cell-seed; the engine's
relabel `rows: sft` and sft stage), compared as `ra - cond-sft`; adding it changed none of the
other arms' steps (tests/toy/test_regimes.py), so their finished results stay valid.

**Learning rates** are part of the map: a learning-rate cell is (method, world setting,
regularisation); it trains the method at each rate of the grid {5e-5, 2e-4, 5e-4, 2e-3} at 1
epoch on validation seeds 100 and 101 and picks the rate with the best mean gold reward on the
validation prompts (ties: the smaller rate). A map cell runs its learning-rate cells first and
uses the rates they chose.

The report (`write_map`): per method and comparison, method - baseline per cell with the paired
95% interval over the 5 seeds (t(0.975, 4) = 2.776), the pre-registered decision (helps / hurts /
cannot be told apart; `decide`), plots against each axis, and "not run" for cells not run yet.
"""

from __future__ import annotations

import argparse
import calendar
import hashlib
import json
import math
import re
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from prefkit.code_version import code, describe
from prefkit.errors import ConfigError, DataError
from prefkit.toy.mechanism import PROBE_ROWS, probe_arm, write_panel
from prefkit.toy.rm_comparison import RM_METHODS, RM_RECIPE, results_of_rm_run

RECIPE = Path(__file__).parent / "demo_recipes" / "regimes.yaml"
SEEDS = 5
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}
LR_GRID = (5e-5, 2e-4, 5e-4, 2e-3)
VAL_SEEDS = (100, 101)
CURVE_GOALS = [2, 4, 6, 8, 10]

# The world settings chosen by the calibration's rule (docs/regimes_calibration.json, `nearest`;
# docs/regimes.md, "Calibration"): target slope -> (goal_prior, goal_noise, steps), world seed 0,
# and the slope measured there (the map's x-axis). 0.6 is not reached within 0.05: its nearest.
WORLDS = {
    "0": ((0.0, 0.0, 300), -0.0035),
    "0.2": ((0.5, 1.0, 300), 0.1979),
    "0.4": ((0.75, 0.5, 300), 0.3647),
    "0.6": ((0.5, 1.0, 600), 0.5327),
    "0.8": ((1.0, 0.0, 900), 0.8211),
}
DEFAULT_WORLD = "0.2"
# Judge noise levels (overall; aspect); the default is the toy judge's.
NOISES = {"0;0": (0.0, 0.0), "1;0.5": (1.0, 0.5), "2;1": (2.0, 1.0)}
DEFAULT_NOISE = "1;0.5"
SIZES = (100, 400, 1600)
DEFAULT_SIZE = 400
# Regularisations: today's (beta 0.1, no label smoothing, ties dropped, no fine-grained filter);
# the papers' (beta 0.01, label smoothing 0.3, ties kept, the fine-grained filter on the pairs, so
# DPO and RA train on the same pairs); eps-DPO's beta0 = 0.01 level (today's otherwise).
REGS = {
    "today": {"beta": 0.1, "label_smoothing": 0.0, "ties": "drop", "fine_grained_filter": False},
    "papers": {"beta": 0.01, "label_smoothing": 0.3, "ties": "keep", "fine_grained_filter": True},
    "beta0.01": {"beta": 0.01, "label_smoothing": 0.0, "ties": "drop", "fine_grained_filter": False},
}
METHODS = ("ra", "ap", "eps", "rmboost")
# RMBoost's axes (docs/regimes.md, "RMBoost"): the stand-in LLM's rewriter fidelity (`edit_success`
# of prefkit.toy.rewriter.ToyRewriter, with `slip` 0.2) and the budget (training prompts per arm).
# No learning-rate cells: the design names none; every reward model uses the demo's RM config
# (rm.yaml with `prefkit.toy.demo.rm_overrides`: lr 5e-4, 2 epochs, batch 16).
FIDELITIES = (0.5, 0.8, 0.95)
BUDGETS = (100, 200, 800)
DEFAULT_FIDELITY, DEFAULT_BUDGET = 0.8, 200
SLIP = 0.2
# The metric of each method's cells (docs/regimes.md, "Rules": RMBoost's is the RM accuracy).
METRIC = {"rmboost": "accuracy"}
METRIC_LABELS = {"gold": "held-out gold reward", "accuracy": "RM accuracy on held-out gold-labelled pairs"}


@dataclass(frozen=True)
class Scale:
    """The sizes of a run: the design's (`DESIGN`), or tiny ones for tests through the same code."""

    train_prompts: int = 400
    samples: int = 4
    test_prompts: int = 200
    test_samples: int = 4
    val_prompts: int = 100
    val_samples: int = 2
    curve_samples: int = 2
    curves: bool = True
    lr_grid: tuple = LR_GRID
    val_seeds: tuple = VAL_SEEDS
    max_new_tokens: int = 24
    world_args: dict | None = None   # replaces every world's build arguments (tests: {quick: true})
    rm_prompts: int = DEFAULT_BUDGET  # RMBoost's default budget level (prompts per arm); other levels as named
    rm_eval_prompts: int = 500       # held-out prompts the 400 gold-labelled pairs are drawn from (the first 400)
    rm_eval_pairs: int = 400


DESIGN = Scale()


# -- cells --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Cell:
    method: str                 # ra, ap, eps, rmboost
    axes: tuple                 # ((axis, level), ...) in the table's order
    part: str = "core"          # core or sweep

    @property
    def a(self) -> dict:
        return dict(self.axes)

    @property
    def name(self) -> str:
        return f"{self.method}:" + ",".join(f"{k}={v}" for k, v in self.axes)

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.=,-]", "_", self.name.replace(":", "__"))


def ra_cells() -> list[Cell]:
    core = [Cell("ra", (("slope", w), ("length", n), ("reg", r), ("noise", DEFAULT_NOISE), ("size", DEFAULT_SIZE)))
            for w in WORLDS for n in ("1ep", "2ep", "3ep", "stepmatched") for r in ("today", "papers")]
    sweep = [Cell("ra", (("slope", w), ("length", "1ep"), ("reg", "today"), ("noise", nz), ("size", DEFAULT_SIZE)),
                  "sweep") for w in ("0.2", "0.6") for nz in NOISES if nz != DEFAULT_NOISE]
    sweep += [Cell("ra", (("slope", w), ("length", "1ep"), ("reg", "today"), ("noise", DEFAULT_NOISE), ("size", n)),
                   "sweep") for w in ("0.2", "0.6") for n in SIZES if n != DEFAULT_SIZE]
    return core + sweep


def ap_cells() -> list[Cell]:
    return [Cell("ap", (("budget", b), ("noise", nz), ("w", w)))
            for b in (0.1, 0.2, 0.4, 0.6) for nz in NOISES for w in (0.0, 1.0, 2.5)]


def eps_cells() -> list[Cell]:
    return [Cell("eps", (("eps", e), ("length", n), ("beta0", b)))
            for e in (0.005, 0.01, 0.03, 0.1) for n in ("1ep", "3ep") for b in (0.01, 0.1)]


def rmboost_cells() -> list[Cell]:
    return [Cell("rmboost", (("fidelity", f), ("budget", b))) for f in FIDELITIES for b in BUDGETS]


def all_cells(method: str | None = None) -> list[Cell]:
    out = {"ra": ra_cells, "ap": ap_cells, "eps": eps_cells, "rmboost": rmboost_cells}
    return [c for m in ([method] if method else METHODS) for c in out[m]()]


def is_default(cell: Cell) -> bool:
    a = cell.a
    if cell.method == "ra":
        return (a["slope"] == DEFAULT_WORLD and a["length"] == "1ep" and a["reg"] == "today"
                and a["noise"] == DEFAULT_NOISE and a["size"] == DEFAULT_SIZE)
    if cell.method == "ap":
        return a["budget"] == 0.4 and a["noise"] == DEFAULT_NOISE and a["w"] == 1.0
    if cell.method == "rmboost":
        return a["fidelity"] == DEFAULT_FIDELITY and a["budget"] == DEFAULT_BUDGET
    return a["eps"] == 0.01 and a["length"] == "1ep" and a["beta0"] == 0.1


def select_cells(cells: list[Cell], spec: str | None) -> list[Cell]:
    """`--cells`: N (the first N, in the map's order), `default` (each method's default cell), or
    a filter `axis=level,axis=level` (e.g. `slope=0.2,length=1ep`; `slope=0|0.2` for either)."""
    if not spec:
        return cells
    if spec.isdigit():
        return cells[:int(spec)]
    if spec == "default":
        return [c for c in cells if is_default(c)]
    want = {}
    for part in spec.split(","):
        k, eq, v = part.partition("=")
        if not eq:
            raise ConfigError(f"--cells {spec!r}: expected N, 'default' or axis=level[,axis=level]")
        want[k.strip()] = set(v.strip().split("|"))
    axes = {k for c in cells for k in c.a}
    bad = [k for k in want if k not in axes]
    if bad:
        raise ConfigError(f"--cells: unknown axis {', '.join(bad)}; axes: {', '.join(sorted(axes))}")
    return [c for c in cells if all(_level(c.a.get(k)) in v for k, v in want.items())]


def _level(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


# -- arms ---------------------------------------------------------------------------------------------

def _train(reg: str, lr: float, length: str = "1ep", *, max_steps: int | None = None, **extra) -> dict:
    r = REGS[reg]
    t = {"beta": r["beta"], "label_smoothing": r["label_smoothing"], "learning_rate": lr, **extra}
    if max_steps is not None:
        t["max_steps"] = max_steps
    else:
        t["num_train_epochs"] = int(length[0]) if length[0].isdigit() else 1
    return t


def _curve(scale: Scale) -> dict:
    return {"curve_goals": CURVE_GOALS, "curve_samples": scale.curve_samples} if scale.curves else {}


def _recipe_train() -> dict:
    """The regimes recipe's own train options (its schedule, batch, lengths, logging)."""
    import yaml  # noqa: PLC0415  read when an arm is built

    return dict(yaml.safe_load(RECIPE.read_text())["stages"]["train"])


def _sft(lr: float, length: str, max_steps: int | None, seed: int) -> dict:
    """The sft stage of `cond-sft`: the recipe's train options that supervised training shares (the
    schedule, warmup, batch size, length limits, logging, checkpoints; not beta, the loss or
    label smoothing), with its learning rate, the seed's training seed, and its length."""
    from prefkit.train.config import SFTConfig  # noqa: PLC0415  (no torch)

    shared = set(SFTConfig.__dataclass_fields__) - {"learning_rate", "num_train_epochs", "max_steps", "seed"}
    t = {k: v for k, v in _recipe_train().items() if k in shared}
    t.update(learning_rate=lr, seed=seed)
    if max_steps is not None:
        t["max_steps"] = max_steps
    else:
        t["num_train_epochs"] = int(length[0]) if length[0].isdigit() else 1
    return t


def arm(method: str, reg: str, lr: float, *, length: str = "1ep", scale: Scale = DESIGN, budget=None, w=None,
        eps=None, max_steps=None, validation: bool = False, seed: int = 0) -> tuple[str, dict]:
    """One arm: (name, its stage changes). Methods: dpo, dpo@10, base@10, ra, cond-sft (RA's
    arms), ap, random, explicit (DPO on a selected subset), eps (eps-DPO).

    cond-sft (docs/regimes.md, the conditioning-only control): supervised training of the base on
    every judged sample conditioned on its own judged score with RA's conditioning (relabel
    `rows: sft`; no pair stage, no preference loss), for `max_steps` (RA's optimiser steps in the
    cell) or, in a learning-rate cell, one epoch; evaluated at goal 10 as `ra` is."""
    ln = "" if length == "1ep" else f"-{length}"
    tag = f"-{reg}-lr{lr:g}{ln}"
    curve = {} if validation else _curve(scale)
    if method == "dpo":
        return f"dpo{tag}", {"relabel": False, "train": _train(reg, lr, length)}
    if method == "dpo@10":
        return f"dpo@10{tag}", {"relabel": False, "train": _train(reg, lr, length),
                                "evaluate": {"goal": 10, "conditioning": "system", **curve}}
    if method == "base@10":
        return "base@10", {"train": False, "evaluate": {"goal": 10, "conditioning": "data", **curve}}
    if method == "ra":
        name = f"ra{tag}" if max_steps is None else f"ra-{reg}-lr{lr:g}-steps{max_steps}"
        return name, {"train": _train(reg, lr, length, max_steps=max_steps),
                      "evaluate": {"goal": 10, "conditioning": "auto", **curve}}
    if method == "cond-sft":
        name = f"cond-sft-{reg}-lr{lr:g}" + (ln if max_steps is None else f"-steps{max_steps}")
        # no pairs: the pair options a papers' cell sets on relabel do not apply to these rows
        return name, {"pair": False, "relabel": {"rows": "sft", "fine_grained_filter": False}, "train": False,
                      "sft": _sft(lr, length, max_steps, seed),
                      "evaluate": {"goal": 10, "conditioning": "auto", **curve}}
    if method in ("ap", "random", "explicit"):
        metric = {"ap": "alignment-potential", "random": "random", "explicit": "explicit"}[method]
        sel = {"metric": metric, "fraction": budget, "seed": seed}
        name = f"{method}-b{budget:g}" + (f"-w{w:g}" if method == "ap" else "") + tag
        if method == "ap":
            sel["weight"] = w
        return name, {"relabel": False, "select": sel, "train": _train(reg, lr, length)}
    if method == "eps":
        return f"eps{eps:g}{tag}", {"relabel": False, "train": _train(reg, lr, length, loss_type="eps-dpo", eps=eps)}
    raise ConfigError(f"unknown arm method {method!r}")


# -- learning-rate cells ------------------------------------------------------------------------------

@dataclass(frozen=True)
class LrCell:
    """The learning-rate selection of one (method, world setting, regularisation): the grid's
    rates at 1 epoch on the validation seeds (with AP's default budget and weight, eps-DPO's
    default eps)."""

    method: str       # dpo, ra, cond-sft, ap, random, explicit, eps
    world: str
    reg: str

    @property
    def name(self) -> str:
        return f"lr:{self.method},slope={self.world},reg={self.reg}"

    def arm(self, lr: float, scale: Scale, seed: int) -> tuple[str, dict]:
        extra = {"budget": 0.4, "w": 1.0, "seed": seed} if self.method in ("ap", "random", "explicit") else {}
        if self.method == "cond-sft":
            extra = {"seed": seed}
        if self.method == "eps":
            extra = {"eps": 0.01}
        return arm(self.method, self.reg, lr, scale=scale, validation=True, **extra)


def comparisons(cell: Cell) -> list[tuple[str, str, str]]:
    """(label, method arm role, baseline arm role) of a cell; the first is the primary."""
    if cell.method == "ra":
        return [("ra - dpo", "ra", "dpo"), ("ra - dpo@10", "ra", "dpo@10"), ("ra - base@10", "ra", "base@10"),
                ("ra - cond-sft", "ra", "cond-sft")]
    if cell.method == "ap":
        return [("ap - random", "ap", "random"), ("ap - explicit", "ap", "explicit")]
    if cell.method == "rmboost":   # each decided on its own (no best baseline picked after the fact)
        return [(f"rmboost - {b}", "rmboost", b) for b in RM_METHODS[1:]]
    return [("eps - dpo", "eps", "dpo")]


def lr_cells(cell: Cell) -> dict[str, LrCell]:
    """Role -> the learning-rate cell whose chosen rate that arm trains with."""
    a = cell.a
    if cell.method == "ra":
        w, reg = a["slope"], a["reg"]
        return {"dpo": LrCell("dpo", w, reg), "dpo@10": LrCell("dpo", w, reg), "ra": LrCell("ra", w, reg),
                "cond-sft": LrCell("cond-sft", w, reg)}
    if cell.method == "ap":
        return {m: LrCell(m, DEFAULT_WORLD, "today") for m in ("ap", "random", "explicit")}
    if cell.method == "rmboost":   # none: the reward models use the demo's config
        return {}
    reg = "today" if a["beta0"] == 0.1 else "beta0.01"
    return {"eps": LrCell("eps", DEFAULT_WORLD, reg), "dpo": LrCell("dpo", DEFAULT_WORLD, reg)}


def cell_world(cell: Cell) -> str:
    return cell.a.get("slope", DEFAULT_WORLD)


def cell_reg_data(cell: Cell) -> str:
    """The regularisation whose pair options the cell's data stages use."""
    return cell.a.get("reg", "today")


def cell_arms(cell: Cell, rates: dict[str, float], scale: Scale, seed: int = 0,
              dpo_steps: int | None = None, ra_steps: int | None = None) -> dict[str, tuple]:
    """Role -> (arm name, changes) of a cell, with the chosen rates. RA cells: `ra` once DPO's
    steps are known in a step-matched cell (dpo_steps), `cond-sft` once RA's are (ra_steps: the
    optimiser steps `ra` took in this cell-seed); the other arms do not depend on either."""
    a = cell.a
    if cell.method == "ra":
        reg, length = a["reg"], a["length"]
        dl = "1ep" if length == "stepmatched" else length
        out = {"dpo": arm("dpo", reg, rates["dpo"], length=dl, scale=scale),
               "dpo@10": arm("dpo@10", reg, rates["dpo"], length=dl, scale=scale),
               "base@10": arm("base@10", reg, 0, scale=scale)}
        if length == "stepmatched":
            if dpo_steps is not None:
                out["ra"] = arm("ra", reg, rates["ra"], max_steps=dpo_steps, scale=scale)
        else:
            out["ra"] = arm("ra", reg, rates["ra"], length=length, scale=scale)
        if ra_steps is not None:
            out["cond-sft"] = arm("cond-sft", reg, rates["cond-sft"], max_steps=ra_steps, scale=scale, seed=seed)
        return out
    if cell.method == "rmboost":
        return rm_arms(rm_group_overrides(a["budget"], seed, scale), a["fidelity"])
    if cell.method == "ap":
        b, w = a["budget"], a["w"]
        return {"ap": arm("ap", "today", rates["ap"], budget=b, w=w, scale=scale, seed=seed),
                "random": arm("random", "today", rates["random"], budget=b, scale=scale, seed=seed),
                "explicit": arm("explicit", "today", rates["explicit"], budget=b, scale=scale, seed=seed)}
    reg = "today" if a["beta0"] == 0.1 else "beta0.01"
    return {"eps": arm("eps", reg, rates["eps"], length=a["length"], eps=a["eps"], scale=scale),
            "dpo": arm("dpo", reg, rates["dpo"], length=a["length"], scale=scale)}


# -- overrides: a seed of a data group ----------------------------------------------------------------

def _j(v) -> str:
    return json.dumps(v)


def world_args(world: str, scale: Scale) -> dict:
    if scale.world_args is not None:
        return dict(scale.world_args)
    (prior, noise, steps), _ = WORLDS[world]
    return {"goal_prior": float(prior), "goal_noise": float(noise), "steps": int(steps), "seed": 0}


def group_overrides(world: str, reg: str, noise: str, size: int, seed: int, scale: Scale, *,
                    validation: bool = False) -> list[str]:
    """The recipe's overrides for one data group and seed (docs/regimes.md, "Rules" and "How each
    cell is a recipe"); validation: a learning-rate cell's seed (training prompts 1100 + s,
    validation prompts 4000 + s without any test prompt, 100 x 2 samples)."""
    overall, aspect = NOISES[noise]
    r = REGS[reg]
    n_train = scale.train_prompts if size == DEFAULT_SIZE else size
    if validation:
        train = {"n": n_train, "seed": 1100 + seed}
        ev = ["prompts.eval.build=prefkit.toy.recipes:validation_prompts",
              "prompts.eval.args=" + _j({"n": scale.val_prompts, "seed": 4000 + seed,
                                         "exclude": {"n": scale.test_prompts,
                                                     "seeds": sorted({2000 + seed, *range(2000, 2000 + SEEDS)})}}),
              f"evaluate.n={scale.val_samples}", "evaluate.baseline=false"]
    else:
        train = {"n": n_train, "seed": 1000 + seed}
        ev = ["prompts.eval.args=" + _j({"n": scale.test_prompts, "seed": 2000 + seed}),
              f"evaluate.n={scale.test_samples}"]
    return [
        "policy.args=" + _j(world_args(world, scale)),
        "prompts.train.args=" + _j(train), *ev,
        f"generate.n={scale.samples}", f"generate.seed={1000 + seed}", f"generate.max_new_tokens={scale.max_new_tokens}",
        "score.reward_args=" + _j({"aspect_noise": aspect, "overall_noise": overall, "seed": seed}),
        f"pair.seed={seed}", f"pair.ties={r['ties']}", f"pair.fine_grained_filter={_j(r['fine_grained_filter'])}",
        f"relabel.seed={seed}", f"relabel.ties={r['ties']}",
        f"relabel.fine_grained_filter={_j(r['fine_grained_filter'])}",
        f"train.seed={seed}", f"evaluate.seed={10_000 + seed}", f"evaluate.max_new_tokens={scale.max_new_tokens}",
    ]


def group_dir(out: Path, world: str, reg: str, noise: str, size: int, seed: int, validation: bool) -> Path:
    pair = "pairs-papers" if REGS[reg]["ties"] == "keep" else "pairs-today"
    g = f"slope{world}-{pair}-noise{noise.replace(';', '_')}-n{size}"
    return out / ("validation" if validation else "data") / g / f"seed{seed}"


# -- RMBoost's cells: a seed of a budget -----------------------------------------------------------

def rm_world(scale: Scale):
    """The RMBoost cells' world: the default world setting (slope 0.2), as a ToyWorldConfig."""
    from prefkit.toy.world import QUICK_CONFIG, ToyWorldConfig  # noqa: PLC0415  heavy (torch)

    args = world_args(DEFAULT_WORLD, scale)
    quick = args.pop("quick", False)
    return replace(QUICK_CONFIG if quick else ToyWorldConfig(), **args)


def rm_group_overrides(budget: int, seed: int, scale: Scale) -> list[str]:
    """The reward-model recipe's overrides for one budget and seed: the demo's (`rm_overrides`,
    its RM config) with the map's seed rules (docs/regimes.md, "Rules"): training prompts
    `make_prompts(budget, seed=1000 + s)`; the stand-in LLM's seed 1000 + s (its base-policy samples,
    as every cell's generation seed, and its rewrites' and judge's draws); the methods' own seeds
    (RMBoost's labels and aspects, RLAIF's order coin) and the reward model's training order s; the
    held-out pairs: the first 400 of two base samples (seed 10000 + s) per test prompt
    `make_prompts(500, seed=2000 + s)` with distinct gold scores, the same file for every arm."""
    from prefkit.toy.demo import RmSeeds, rm_overrides  # noqa: PLC0415  heavy (the engine, torch)
    from prefkit.toy.demo_config import DemoConfig  # noqa: PLC0415

    n = scale.rm_prompts if budget == DEFAULT_BUDGET else budget
    config = DemoConfig(rm_prompts=n, rm_eval_prompts=scale.rm_eval_prompts, max_new_tokens=scale.max_new_tokens)
    seeds = RmSeeds(prompts=1000 + seed, backend=1000 + seed, method=seed, rm=seed, eval_prompts=2000 + seed,
                    eval_samples=10_000 + seed)
    return rm_overrides(config, rm_world(scale), seeds, eval_pairs=scale.rm_eval_pairs)


def rm_arms(overrides: list[str], fidelity: float) -> dict[str, tuple[str, dict]]:
    """Role -> (arm name, changes): the reward-model recipe's arms with these overrides, RMBoost's
    stand-in LLM at `fidelity` (edit_success; slip 0.2). The other arms never rewrite (the
    rewriter's edit_success and slip act on RMBoost's rewrite prompt only), so they keep the
    recipe's stand-in LLM and are shared by the three fidelity cells of a budget and seed."""
    from prefkit.pipeline.recipe import apply_overrides, read_yaml  # noqa: PLC0415  heavy (the stages)

    data, where, _ = read_yaml(RM_RECIPE)
    apply_overrides(data, where, overrides)
    backend = data["stages"]["synth"]["backend"]
    rmboost = {**data["arms"]["rmboost"]["synth"],
               "backend": {**backend, "args": {**backend["args"], "edit_success": fidelity, "slip": SLIP}}}
    out = {"rmboost": (f"rmboost-fidelity{fidelity:g}", {"synth": rmboost})}
    out.update({m: (m, data["arms"][m]) for m in RM_METHODS[1:]})
    return out


def rm_group_dir(out: Path, budget: int, seed: int) -> Path:
    return out / "data" / f"rm-slope{DEFAULT_WORLD}-budget{budget}" / f"seed{seed}"


# -- running ------------------------------------------------------------------------------------------

def _log(msg: str) -> None:
    print(f"[regimes {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_arms(run_dir: Path, overrides: list[str], arms: dict[str, dict], *, progress: bool = False,
             recipe_file: Path = RECIPE, stale: str = "refuse") -> dict:
    """One engine run of the regimes recipe (or `recipe_file`) with these arms; arm -> {stage: done
    marker + seconds}. stale: the engine's choice for steps made by other prefkit code
    (`prefkit.pipeline.run`)."""
    from prefkit.pipeline import engine  # noqa: PLC0415  heavy (torch via the runners)
    from prefkit.pipeline.recipe import load_recipe  # noqa: PLC0415

    recipe = load_recipe(recipe_file, overrides=overrides + ["arms=" + _j(arms)])
    got = engine.run(recipe, run_dir, arms=list(arms), progress=progress, log=lambda m: _log(f"{run_dir}: {m}"),
                     stale=stale)
    out: dict[str, dict] = {}
    for e in got["steps"]:
        if e.get("status") != "done":
            raise ConfigError(f"{run_dir}: step {e.get('arm')}/round-{e['round']}/{e['stage']} did not finish")
        marker = json.loads((Path(run_dir) / e["dir"] / "done").read_text())
        out.setdefault(e["arm"], {})[f"{e['round']}/{e['stage']}"] = {
            "metrics": marker.get("metrics", {}), "seconds": marker.get("seconds"), "ran": bool(e.get("ran")),
            "dir": e["dir"]}
    return out


def _gold(steps: dict, stage: str = "1/evaluate") -> float:
    return steps[stage]["metrics"]["reward_fn"]["mean"]


def _fresh_seconds(result: dict) -> float:
    """Seconds of the steps this invocation ran (not found done), each step counted once."""
    seen = {}
    for steps in result.values():
        for s in steps.values():
            if s["ran"]:
                seen[s["dir"]] = s["seconds"] or 0.0
    return round(sum(seen.values()), 1)


def _cached(path: Path, stale: str) -> dict | None:
    """A cell's cached result, or None where it is to be made: not there, or made by other prefkit
    code and stale == "rerun" (run_map refuses before running anything when stale == "refuse")."""
    if not path.is_file():
        return None
    got = json.loads(path.read_text())
    if stale == "keep" or (got.get("code") or {}).get("fingerprint") == code()["fingerprint"]:
        return got
    if stale == "refuse":
        raise ConfigError(f"{path}: made by other prefkit code ({describe(got.get('code'))}; this is "
                          f"{describe(code())}): choose --rerun-stale or --keep-stale")
    _log(f"{path}: made by other prefkit code ({describe(got.get('code'))}): made again")
    return None


def _lr_path(out: Path, lc: LrCell) -> Path:
    return out / "lr" / (re.sub(r"[^A-Za-z0-9_.=,-]", "_", lc.name) + ".json")


def run_lr_cell(lc: LrCell, out: Path, scale: Scale = DESIGN, stale: str = "refuse") -> dict:
    """The learning-rate cell: every rate on every validation seed; the chosen rate (the best mean
    validation gold reward, ties to the smaller rate). Cached in OUT/lr/<name>.json."""
    path = _lr_path(out, lc)
    if (got := _cached(path, stale)) is not None:
        return got
    per_rate: dict[str, list[float]] = {f"{r:g}": [] for r in scale.lr_grid}
    seconds = 0.0
    for s in scale.val_seeds:
        arms = dict(lc.arm(r, scale, s) for r in scale.lr_grid)
        names = {f"{r:g}": lc.arm(r, scale, s)[0] for r in scale.lr_grid}
        run_dir = group_dir(out, lc.world, lc.reg, DEFAULT_NOISE, DEFAULT_SIZE, s, True)
        res = run_arms(run_dir, group_overrides(lc.world, lc.reg, DEFAULT_NOISE, DEFAULT_SIZE, s, scale,
                                                validation=True), arms, stale=stale)
        seconds += _fresh_seconds(res)
        for r, name in names.items():
            per_rate[r].append(_gold(res[name]))
    means = {r: statistics.fmean(v) for r, v in per_rate.items()}
    best = max(means.values())
    chosen = min(float(r) for r, m in means.items() if m == best)
    got = {"cell": lc.name, "method": lc.method, "world": lc.world, "reg": lc.reg, "val_seeds": list(scale.val_seeds),
           "gold": per_rate, "mean": means, "chosen": chosen, "seconds_run": round(seconds, 1),
           "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "code": code()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(got, indent=2))
    _log(f"{lc.name}: chosen learning rate {chosen:g} (validation gold {means})")
    return got


def _steps(steps: dict) -> int | None:
    """The optimiser steps of an arm's training step (train or sft) in round 1."""
    for stage in ("1/train", "1/sft"):
        if stage in steps:
            return steps[stage]["metrics"].get("steps")
    return None


def run_cell_seed(cell: Cell, seed: int, out: Path, scale: Scale = DESIGN, stale: str = "refuse") -> dict:
    """One cell-seed: its learning-rate cells, then its arms in its data group's run directory;
    the arms' gold rewards and the comparisons' differences. Cached in OUT/cells/<cell>/seed<S>.json.
    stale: what to do with results and steps made by other prefkit code (`run_map`).

    RA cells: `cond-sft` runs after `ra`, for RA's optimiser steps in this cell-seed (read from
    RA's train step). A record of this code written before `cond-sft` existed is completed: every
    other arm's steps have the same keys and are found done, so only `cond-sft` (and its
    learning-rate cell) runs, and its seconds are added to the record's."""
    path = out / "cells" / cell.slug / f"seed{seed}.json"
    old = _cached(path, stale)
    if old is not None and all(label in old["diff"] for label, _, _ in comparisons(cell)):
        return old
    if cell.method == "rmboost":
        return _run_rm_cell_seed(cell, seed, out, scale, path, stale)
    lrs = {role: run_lr_cell(lc, out, scale, stale)["chosen"] for role, lc in lr_cells(cell).items()}
    a = cell.a
    world, reg = cell_world(cell), cell_reg_data(cell)
    noise, size = a.get("noise", DEFAULT_NOISE), a.get("size", DEFAULT_SIZE)
    run_dir = group_dir(out, world, reg, noise, size, seed, False)
    overrides = group_overrides(world, reg, noise, size, seed, scale)
    t0 = time.time()
    roles = cell_arms(cell, lrs, scale, seed)
    res = run_arms(run_dir, overrides, {n: c for n, c in roles.values()}, stale=stale)
    seconds = _fresh_seconds(res)
    dpo_steps = None
    if cell.method == "ra" and a["length"] == "stepmatched":
        dpo_steps = res[roles["dpo"][0]]["1/train"]["metrics"]["steps"]
        roles = cell_arms(cell, lrs, scale, seed, dpo_steps=dpo_steps)
        more = run_arms(run_dir, overrides, {n: c for n, c in roles.values()}, stale=stale)
        seconds += _fresh_seconds({k: v for k, v in more.items() if k == roles["ra"][0]})
        res.update(more)
    if cell.method == "ra":
        roles = cell_arms(cell, lrs, scale, seed, dpo_steps=dpo_steps, ra_steps=_steps(res[roles["ra"][0]]))
        name, changes = roles["cond-sft"]
        more = run_arms(run_dir, overrides, {name: changes}, stale=stale)
        seconds += _fresh_seconds(more)
        res.update(more)
    gold = {role: _gold(res[name]) for role, (name, _) in roles.items()}
    first = next(iter(res.values()))
    base = next((v["0/evaluate"] for v in res.values() if "0/evaluate" in v), None)
    got = {"cell": cell.name, "seed": seed, "rates": lrs, "arms": {r: n for r, (n, _) in roles.items()},
           "gold": gold, "gold_base": _gold({"e": base}, "e") if base else None,
           "diff": {label: gold[m] - gold[b] for label, m, b in comparisons(cell)},
           "train_steps": {r: _steps(res[n]) for r, (n, _) in roles.items() if _steps(res[n]) is not None},
           "pairs": first.get("1/pair", {}).get("metrics", {}).get("pairs"),
           "curves": {r: res[n]["1/evaluate"]["metrics"]["curve"]["slope"] for r, (n, _) in roles.items()
                      if res[n]["1/evaluate"]["metrics"].get("curve")},
           "seconds_run": seconds, "wall_seconds": round(time.time() - t0, 1),
           "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "code": code()}
    if old is not None:   # completed with cond-sft: the seconds are the earlier run's and this one's
        got["seconds_run"] = round(old.get("seconds_run", 0.0) + seconds, 1)
        got["wall_seconds"] = round(old.get("wall_seconds", 0.0) + got["wall_seconds"], 1)
        got["first_finished"] = old.get("first_finished", old.get("finished"))
    if cell.method == "eps":
        got["eps_train"] = eps_summary(run_dir / res[roles["eps"][0]]["1/train"]["dir"] / "model")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(got, indent=2))
    _log(f"{cell.name} seed {seed}: " + ", ".join(f"{k} {v:+.3f}" for k, v in got["diff"].items()))
    return got


def _run_rm_cell_seed(cell: Cell, seed: int, out: Path, scale: Scale, path: Path, stale: str = "refuse") -> dict:
    """An RMBoost cell-seed: one engine run of rm.yaml (RMBoost at the cell's fidelity and the three
    baselines on the cell's budget) in its budget's run directory; each arm's RM accuracy on the
    seed's held-out pairs (checked to be one file for every arm), the differences, the pairs, label
    agreement with gold and the share of RMBoost's rewrites that were near-copies of y1."""
    t0 = time.time()
    budget = cell.a["budget"]
    overrides = rm_group_overrides(budget, seed, scale)
    roles = rm_arms(overrides, cell.a["fidelity"])
    run_dir = rm_group_dir(out, budget, seed)
    res = run_arms(run_dir, overrides, {n: c for n, c in roles.values()}, recipe_file=RM_RECIPE, stale=stale)
    names = {role: name for role, (name, _) in roles.items()}
    got_rm = results_of_rm_run(run_dir, names)
    held_out = {role: (run_dir / res[name]["1/reward_model"]["dir"] / "eval_pairs.jsonl").read_bytes()
                for role, name in names.items()}
    if len(set(held_out.values())) != 1:
        raise DataError(f"{run_dir}: the arms' held-out pairs differ ({', '.join(names.values())}); "
                        "every arm of a seed must be scored on the same pairs (docs/regimes.md, RMBoost)")
    acc = {role: got_rm[f"rm_acc_{role}"] for role in names}
    got = {"cell": cell.name, "seed": seed, "arms": names, "metric": METRIC["rmboost"], "accuracy": acc,
           "diff": {label: acc[m] - acc[b] for label, m, b in comparisons(cell)},
           "eval_pairs": got_rm["rm_eval_pairs"],
           "eval_pairs_sha256": hashlib.sha256(next(iter(held_out.values()))).hexdigest(),
           "pairs": {role: got_rm[f"rm_pairs_{role}"] for role in names},
           "dropped": {role: got_rm[f"rm_dropped_{role}"] for role in names},
           "label_agreement": {role: got_rm.get(f"rm_label_gold_agreement_{role}") for role in names},
           "near_copy_share": got_rm.get("rm_near_copy_share_rmboost"),
           "train_steps": {role: res[name]["1/reward_model"]["metrics"].get("steps") for role, name in names.items()},
           "seconds_run": _fresh_seconds(res), "wall_seconds": round(time.time() - t0, 1),
           "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "code": code()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(got, indent=2))
    _log(f"{cell.name} seed {seed}: " + ", ".join(f"{k} {v:+.3f}" for k, v in got["diff"].items()))
    return got


def eps_summary(model_dir: Path) -> dict:
    """eps-DPO's control per run (reported, not decided on): the mean share of pairs whose per-pair
    beta step was +1 / -1 over the logging steps, and the base-beta path (prefkit_train_report.json)."""
    rep = json.loads((Path(model_dir) / "prefkit_train_report.json").read_text())
    logs = [h for h in rep.get("log_history", []) if "eps/frac_plus" in h]
    plus = statistics.fmean(h["eps/frac_plus"] for h in logs) if logs else None
    minus = statistics.fmean(h["eps/frac_minus"] for h in logs) if logs else None
    return {"frac_plus": plus, "frac_minus": minus, "frac_zero": None if plus is None else 1 - plus - minus,
            "base_beta_path": [[h["step"], h["beta/base"]] for h in logs if "beta/base" in h],
            "final_base_beta": rep.get("final_base_beta"), "steps": rep.get("global_step")}


def _eps_of(out: Path, cell: Cell, got: dict) -> dict | None:
    """A cell-seed's eps-DPO summary, from its record or (older records) its run directory."""
    if got.get("eps_train", {}).get("frac_plus") is not None:
        return got["eps_train"]
    run_dir = group_dir(out, cell_world(cell), cell_reg_data(cell), DEFAULT_NOISE, DEFAULT_SIZE, got["seed"], False)
    try:
        e = json.loads((run_dir / "manifest.json").read_text())["stages"][f"{got['arms']['eps']}/round-1/train"]
        return eps_summary(run_dir / e["dir"] / "model")
    except (OSError, KeyError, ValueError):
        return None


# -- the RA mechanism panel (prefkit.toy.mechanism) ---------------------------------------------------

def run_mechanism_seed(world: str, seed: int, out: Path, scale: Scale = DESIGN, rows: int = PROBE_ROWS,
                       stale: str = "refuse") -> dict:
    """One goal-reading level and seed of the mechanism panel: RA at 1 epoch and today's
    regularisation, on the data of that map cell-seed (its data group's run directory, so the
    samples, scores and pairs are the map's), at the rate of the learning-rate cell
    lr:ra,slope=W,reg=today, with the half probe on. Cached in OUT/mechanism/slope<W>/seed<S>.json.
    stale: what to do with records and steps made by other prefkit code (as in `run_cell_seed`)."""
    path = out / "mechanism" / f"slope{world}" / f"seed{seed}.json"
    if (got := _cached(path, stale)) is not None:
        return got
    lr = run_lr_cell(LrCell("ra", world, "today"), out, scale, stale)["chosen"]
    name, changes = probe_arm(*arm("ra", "today", lr, scale=scale), rows=rows)
    run_dir = group_dir(out, world, "today", DEFAULT_NOISE, DEFAULT_SIZE, seed, False)
    res = run_arms(run_dir, group_overrides(world, "today", DEFAULT_NOISE, DEFAULT_SIZE, seed, scale), {name: changes},
                   stale=stale)
    train = res[name]["1/train"]
    got = {"world": world, "slope": WORLDS[world][1], "seed": seed, "learning_rate": lr, "arm": name,
           "rows": train["metrics"]["half_probe"]["rows"], "steps": train["metrics"].get("steps"),
           "values": train["metrics"]["half_probe"]["values"], "loss_values": train["metrics"].get("loss_values"),
           "seconds_run": _fresh_seconds(res), "run_dir": str(run_dir), "train_dir": train["dir"],
           "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "code": code()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(got, indent=2))
    cos = got["values"].get("grad_cosine") or [[None, float("nan")]]
    _log(f"mechanism slope={world} seed {seed}: {got['steps']} steps, last gradient cosine {cos[-1][1]:+.3f}")
    return got


def run_mechanism(out: str | Path, *, seeds: int = SEEDS, scale: Scale = DESIGN, rows: int = PROBE_ROWS,
                  worlds=None, stop_at: float | None = None, stale: str = "refuse") -> Path:
    """The mechanism panel (docs/regimes.md): every goal-reading level x seed (resuming what is
    done), then OUT/mechanism.json and OUT/mechanism.png; stop_at and stale as in `run_map`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    worlds = list(worlds or WORLDS)
    unknown = [w for w in worlds if w not in WORLDS]
    if unknown:
        raise ConfigError(f"mechanism panel: unknown world level(s) {', '.join(unknown)}; levels: {', '.join(WORLDS)}")
    records = []
    for w in worlds:
        for s in range(seeds):
            done = (out / "mechanism" / f"slope{w}" / f"seed{s}.json").is_file()
            if stop_at is not None and time.time() > stop_at and not done:
                _log("stop time reached: no new mechanism run starts")
                continue
            records.append(run_mechanism_seed(w, s, out, scale, rows, stale))
    jp, png = write_panel(out, records)
    _log(f"mechanism panel: {jp}, {png}")
    return jp


# -- cost ---------------------------------------------------------------------------------------------

# CPU-seconds per unit on a quiet core, the design's estimates (docs/regimes.md, "Cost"), until a
# measured cost is found in OUT (then the measured seconds per finished cell-seed are used).
EST_SECONDS = {"ra": 70.0, "ap": 2 * 3600 / 180, "eps": 1.5 * 3600 / 80, "rmboost": 1.5 * 3600 / 45,
               "lr_training": 1.3 * 3600 / 240}
# The design's RA estimate predates `cond-sft` (amendment of 2026-12-06 22:50). Measured at the
# default cell (docs/regimes.md, "Measured cost"): a cell-seed took 206 s with it against 130 s
# without, and its learning-rate cell 337 s against 125 s (SFT trains on every judged sample, about
# four times DPO's pairs), so it adds these factors to the design's figures.
COND_SFT_CELL_FACTOR = 206 / 130
COND_SFT_LR_FACTOR = 337 / 125


def estimate(cells: list[Cell], seeds: list[int], out: Path) -> dict:
    todo = [(c, s) for c in cells for s in seeds if not (out / "cells" / c.slug / f"seed{s}.json").is_file()]
    lcs = {lc for c, _ in todo for lc in lr_cells(c).values()}
    lcs = [lc for lc in lcs if not (out / "lr" / (re.sub(r"[^A-Za-z0-9_.=,-]", "_", lc.name) + ".json")).is_file()]
    measured = [json.loads(p.read_text()).get("seconds_run") for p in out.glob("cells/*/seed*.json")]
    measured = [m for m in measured if m]
    per = {m: EST_SECONDS[m] for m in METHODS}
    per["ra"] *= COND_SFT_CELL_FACTOR
    lr_units = sum(COND_SFT_LR_FACTOR if lc.method == "cond-sft" else 1.0 for lc in lcs)
    seconds = sum(per[c.method] for c, _ in todo) + lr_units * len(LR_GRID) * len(VAL_SEEDS) * EST_SECONDS["lr_training"]
    return {"cell_seeds": len(todo), "lr_cells": len(lcs), "cpu_hours": seconds / 3600,
            "measured_cell_seed_seconds": statistics.fmean(measured) if measured else None}


# -- the decision rule --------------------------------------------------------------------------------

def interval(diffs: list[float]) -> tuple[float, float, float]:
    """(mean, low, high): the paired 95% interval over seeds, mean ± t(0.975, n-1) · sd / √n."""
    n = len(diffs)
    mean = statistics.fmean(diffs)
    if n < 2:
        return mean, float("nan"), float("nan")
    half = T975[n - 1] * statistics.stdev(diffs) / math.sqrt(n)
    return mean, mean - half, mean + half


def decide(diffs: list[float], seeds: int = SEEDS) -> str:
    """docs/regimes.md's rule, fixed before any run: with all 5 seeds, 'helps' when the interval
    excludes 0 on the positive side and d_s > 0 on at least 4 of 5; 'hurts' likewise on the
    negative side; otherwise 'cannot be told apart'. Fewer seeds: 'incomplete (k of 5 seeds)'."""
    if len(diffs) < seeds:
        return f"incomplete ({len(diffs)} of {seeds} seeds)"
    _, lo, hi = interval(diffs)
    need = math.ceil(0.8 * seeds)
    if lo > 0 and sum(d > 0 for d in diffs) >= need:
        return "helps"
    if hi < 0 and sum(d < 0 for d in diffs) >= need:
        return "hurts"
    return "cannot be told apart"


# -- the map report -----------------------------------------------------------------------------------

def collect(out: Path, cells: list[Cell], seeds: list[int]) -> list[dict]:
    rows = []
    for c in cells:
        got = [json.loads(p.read_text()) for s in seeds if (p := out / "cells" / c.slug / f"seed{s}.json").is_file()]
        for label, _, _ in comparisons(c):
            have = [g for g in got if label in g["diff"]]   # a record from before cond-sft lacks its comparison
            d = [g["diff"][label] for g in have]
            row = {"cell": c.name, "method": c.method, "axes": c.a, "part": c.part, "comparison": label,
                   "seeds": [g["seed"] for g in have], "diffs": d}
            if c.method == "eps" and got:
                eps = [e for g in got if (e := _eps_of(out, c, g)) and e["frac_plus"] is not None]
                row["eps_control"] = {k: statistics.fmean(e[k] for e in eps) if eps else None
                                      for k in ("frac_plus", "frac_minus", "frac_zero", "final_base_beta")}
            if d and c.method == "rmboost":
                mean, lo, hi = interval(d)
                row.update(mean=mean, low=lo, high=hi, decision=decide(d), metric=METRIC["rmboost"],
                           accuracy={k: statistics.fmean(g["accuracy"][k] for g in got) for k in got[0]["accuracy"]},
                           label_agreement={k: _mean(g["label_agreement"][k] for g in got) for k in got[0]["arms"]},
                           pairs={k: statistics.fmean(g["pairs"][k] for g in got) for k in got[0]["arms"]},
                           near_copy_share=_mean(g["near_copy_share"] for g in got),
                           eval_pairs=[g["eval_pairs"] for g in got], seconds_run=[g["seconds_run"] for g in got])
            elif d:
                mean, lo, hi = interval(d)
                roles = sorted({k for g in got for k in g["gold"]})
                row.update(mean=mean, low=lo, high=hi, decision=decide(d), metric="gold",
                           gold={k: statistics.fmean(g["gold"][k] for g in got if k in g["gold"]) for k in roles},
                           gold_base=statistics.fmean(g["gold_base"] for g in got if g.get("gold_base") is not None)
                           if any(g.get("gold_base") is not None for g in got) else None,
                           rates={k: v for g in got for k, v in g["rates"].items()},
                           seconds_run=[g["seconds_run"] for g in got])
            else:
                row["decision"] = "not run"
            rows.append(row)
    return rows


def _mean(values) -> float | None:
    got = [v for v in values if v is not None]
    return statistics.fmean(got) if got else None


def _fmt(r: dict) -> str:
    if not r["diffs"]:
        return "not run"
    lo = "" if math.isnan(r["low"]) else f" ({r['low']:+.3f} to {r['high']:+.3f})"
    return f"{r['mean']:+.3f}{lo}"


def write_map(out: Path, cells: list[Cell], seeds: list[int]) -> Path:
    """OUT/map.md, OUT/map.json and OUT/map_<method>_<axis>.png."""
    rows = collect(out, cells, seeds)
    (out / "map.json").write_text(json.dumps(rows, indent=2, default=str))
    lines = ["# The regime map (docs/regimes.md)", "",
             f"Seeds {seeds}; per cell and comparison: mean of d_s = method - baseline (held-out gold reward; "
             f"for rmboost the reward model's accuracy on held-out gold-labelled pairs) with the paired 95% "
             f"interval over seeds (t(0.975, n-1) · sd / √n; t(0.975, 4) = 2.776) and the pre-registered decision.",
             ""]
    made: dict[str, int] = {}
    for p in (out / "cells" / c.slug / f"seed{s}.json" for c in cells for s in seeds):
        if p.is_file():
            k = describe(json.loads(p.read_text()).get("code"))
            made[k] = made.get(k, 0) + 1
    if made:
        lines += [("Code: " if len(made) == 1 else "**Code: mixed versions (not one map; rerun with --rerun-stale):** ")
                  + "; ".join(f"{n} cell-seed(s) made by prefkit {k}" for k, n in sorted(made.items()))
                  + f"; this is {describe(code())}.", ""]
    for m in METHODS:
        mr = [r for r in rows if r["method"] == m]
        if not mr:
            continue
        axes = list(mr[0]["axes"])
        lines += [f"## {m}", "", f"d = difference in {METRIC_LABELS[METRIC.get(m, 'gold')]}.", "", "| " + " | ".join(axes) + " | comparison | d per seed | mean (95%) | decision |",
                  "|" + "---|" * (len(axes) + 4)]
        for r in mr:
            per = " ".join(f"{d:+.3f}" for d in r["diffs"]) or "-"
            lines.append("| " + " | ".join(_level(r["axes"][a]) for a in axes)
                         + f" | {r['comparison']} | {per} | {_fmt(r)} | {r['decision']} |")
        lines.append("")
        if m == "eps":
            lines += ["eps-DPO's control (mean over seeds; reported, not decided on):", "",
                      "| cell | share of +1 steps | 0 | -1 | final base beta |", "|---|---|---|---|---|"]
            for r in mr:
                e = r.get("eps_control")
                if e and e["frac_plus"] is not None:
                    lines.append(f"| {r['cell']} | {e['frac_plus']:.3f} | {e['frac_zero']:.3f} | {e['frac_minus']:.3f} "
                                 f"| {e['final_base_beta']:.4f} |")
            lines.append("")
        if m == "ra":
            lines += ["Gold reward per arm (mean over the seeds run; base = the base policy without a goal) and the "
                      "chosen learning rates:", "", "| cell | base | base@10 | dpo | dpo@10 | ra | cond-sft | rates |",
                      "|---|---|---|---|---|---|---|---|"]
            for r in mr:
                if r["comparison"] == "ra - dpo" and r["diffs"]:
                    g, rates = r["gold"], r["rates"]
                    sft = f"{g['cond-sft']:.3f}" if "cond-sft" in g else "not run"
                    lines.append(f"| {r['cell']} | {r['gold_base']:.3f} | {g['base@10']:.3f} | {g['dpo']:.3f} | "
                                 f"{g['dpo@10']:.3f} | {g['ra']:.3f} | {sft} | dpo {rates['dpo']:g}, ra {rates['ra']:g}"
                                 + (f", cond-sft {rates['cond-sft']:g}" if "cond-sft" in rates else "") + " |")
            lines.append("")
        if m == "rmboost":
            roles = list(RM_METHODS)
            lines += ["RM accuracy per arm, label agreement of each arm's training pairs with gold, training pairs "
                      "per arm (means over the seeds run) and the share of RMBoost's rewrites that were near-copies "
                      "of y1 (dropped); held-out pairs per seed:", "",
                      "| cell | " + " | ".join(f"acc {k}" for k in roles) + " | " + " | ".join(f"agree {k}" for k in roles)
                      + " | " + " | ".join(f"pairs {k}" for k in roles) + " | near-copy share | held-out pairs |",
                      "|" + "---|" * (3 * len(roles) + 3)]
            for r in mr:
                if r["comparison"] == f"rmboost - {roles[1]}" and r["diffs"]:
                    nc = "-" if r["near_copy_share"] is None else f"{r['near_copy_share']:.3f}"
                    lines.append(f"| {r['cell']} | " + " | ".join(f"{r['accuracy'][k]:.3f}" for k in roles) + " | "
                                 + " | ".join("-" if r["label_agreement"][k] is None else f"{r['label_agreement'][k]:.3f}"
                                              for k in roles)
                                 + " | " + " | ".join(f"{r['pairs'][k]:.0f}" for k in roles)
                                 + f" | {nc} | {', '.join(str(n) for n in r['eval_pairs'])} |")
            lines.append("")
        for png in _plots(out, m, mr, axes):
            lines.append(f"![{png.stem}]({png.name})")
        lines.append("")
    p = out / "map.md"
    p.write_text("\n".join(lines) + "\n")
    return p


def _plots(out: Path, method: str, rows: list[dict], axes: list[str]) -> list[Path]:
    import matplotlib  # noqa: PLC0415  heavy: only when a map is written

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    done = [r for r in rows if r["diffs"]]
    paths = []
    if not done:
        return paths
    comparisons = list(dict.fromkeys(r["comparison"] for r in done))   # the table's order: the primary first
    for axis in axes:
        levels = sorted({r["axes"][axis] for r in rows}, key=lambda v: (isinstance(v, str), v))
        xs = {lv: (WORLDS[lv][1] if axis == "slope" else i) for i, lv in enumerate(levels)}
        # One panel per comparison; in a panel one line per setting of the other axes. A setting
        # with one level of this axis run (a sweep cell seen along another axis) is no line against
        # this axis, so it is left out when some setting has two or more.
        cols = min(2, len(comparisons))
        nrows = math.ceil(len(comparisons) / cols)
        fig, panels = plt.subplots(nrows, cols, figsize=(6.5 * cols, 3.8 * nrows), squeeze=False)
        for ax, comp in zip(panels.flat, comparisons, strict=False):
            series: dict = {}
            for r in done:
                if r["comparison"] == comp:
                    key = tuple(f"{a}={_level(r['axes'][a])}" for a in axes if a != axis)
                    series.setdefault(key, []).append(r)
            if any(len(rs) > 1 for rs in series.values()):
                series = {k: rs for k, rs in series.items() if len(rs) > 1}
            for key, rs in sorted(series.items()):
                rs.sort(key=lambda r: xs[r["axes"][axis]])
                x = [xs[r["axes"][axis]] for r in rs]
                y = [r["mean"] for r in rs]
                err = [[0 if math.isnan(r["low"]) else r["mean"] - r["low"] for r in rs],
                       [0 if math.isnan(r["high"]) else r["high"] - r["mean"] for r in rs]]
                ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=" ".join(key))
            ax.axhline(0, color="gray", lw=0.8)
            ax.set_xlabel(axis + (" (measured base slope)" if axis == "slope" else ""))
            if axis != "slope":
                ax.set_xticks(list(xs.values()), [_level(lv) for lv in levels])
            ax.set_ylabel("difference (RM accuracy)" if METRIC.get(method) == "accuracy" else "difference (gold)")
            ax.set_title(comp, fontsize=10)
            ax.legend(fontsize=6)
        for ax in list(panels.flat)[len(comparisons):]:
            ax.set_visible(False)
        fig.suptitle(f"{method}: against {axis} (95% paired intervals over seeds)")
        fig.tight_layout()
        p = out / f"map_{method}_{axis}.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths


# -- the command --------------------------------------------------------------------------------------

def run_map(out: str | Path, *, method: str | None = None, cells: str | None = None, seeds: int = SEEDS,
            scale: Scale = DESIGN, report_only: bool = False, dry_run: bool = False,
            stop_at: float | None = None, stale: str = "refuse") -> Path | None:
    """Run (resuming) the chosen cells' seeds, cheapest groups first, then write the map.
    stop_at: a Unix time after which no new cell-seed starts. stale: when results or engine steps
    in OUT were made by other prefkit code, "refuse" (default) raises before running anything,
    "rerun" makes them again, "keep" uses them (the map must not mix code versions unless told)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    chosen = select_cells(all_cells(method), cells)
    if not chosen:
        raise ConfigError(f"--cells {cells!r}: no cell matches")
    seed_list = list(range(seeds))
    est = estimate(chosen, seed_list, out)
    msg = (f"{len(chosen)} cell(s) x {seeds} seed(s): {est['cell_seeds']} cell-seed(s) and {est['lr_cells']} "
           f"learning-rate cell(s) to run; estimated {est['cpu_hours']:.1f} CPU-hours on a quiet core "
           "(docs/regimes.md, 'Cost')")
    if est["measured_cell_seed_seconds"]:
        msg += f"; measured so far in {out}: {est['measured_cell_seed_seconds']:.0f} s per cell-seed"
    _log(msg)
    if dry_run:
        return None
    if not report_only and stale == "refuse":
        refuse_other_code(out, chosen, seed_list)
    if not report_only:
        for c in chosen:
            for s in seed_list:
                if stop_at is not None and time.time() > stop_at and \
                        not (out / "cells" / c.slug / f"seed{s}.json").is_file():
                    _log("stop time reached: no new cell-seed starts")
                    return write_map(out, chosen, seed_list)
                run_cell_seed(c, s, out, scale, stale)
    p = write_map(out, chosen, seed_list)
    _log(f"map: {p}")
    return p


def refuse_other_code(out: Path, cells: list[Cell], seeds: list[int]) -> None:
    """Raise (ConfigError: exit 2) when the chosen cells' cached results, or any engine step in OUT,
    were made by other prefkit code than this process's."""
    from prefkit.pipeline.engine import other_code_steps  # noqa: PLC0415  heavy (torch via the runners)

    now = code()["fingerprint"]
    paths = {out / "cells" / c.slug / f"seed{s}.json" for c in cells for s in seeds}
    paths |= {_lr_path(out, lc) for c in cells for lc in lr_cells(c).values()}
    found = [(p, json.loads(p.read_text()).get("code")) for p in sorted(paths) if p.is_file()]
    found = [(p, c) for p, c in found if (c or {}).get("fingerprint") != now]
    found += other_code_steps(out)
    if found:
        made = sorted({describe(c) for _, c in found})
        shown = ", ".join(str(p.relative_to(out)) for p, _ in found[:5])
        raise ConfigError(
            f"{out}: {len(found)} result(s) or step(s) were made by other prefkit code ({shown}"
            f"{f' and {len(found) - 5} more' if len(found) > 5 else ''}). Made by: {'; '.join(made)}; this is "
            f"{describe(code())}. The map must not mix code versions. Choose: --rerun-stale makes them again "
            "with this code, or --keep-stale uses them as they are (each cell-seed's record says which code "
            "made it).")


def add_arguments(p) -> None:
    p.add_argument("--method", choices=METHODS, default=None, help="one method's cells (default: all)")
    p.add_argument("--cells", default=None, help="N (the first N cells), 'default', or a filter "
                   "axis=level[,axis=level] (e.g. slope=0|0.2,length=1ep)")
    p.add_argument("--report-only", action="store_true", help="write the map from what has run; run nothing "
                   "(also the power lab's: --model M --lab power --report-only)")
    p.add_argument("--dry-run", action="store_true", help="state the cells and the estimated cost; run nothing")
    p.add_argument("--stop-at", default=None, help="HH:MM (UTC): start no new cell-seed after this time")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--rerun-stale", dest="stale", action="store_const", const="rerun",
                   help="results and steps in OUT made by other prefkit code are made again (default: refuse to run)")
    g.add_argument("--keep-stale", dest="stale", action="store_const", const="keep",
                   help="use results and steps in OUT made by other prefkit code as they are")
    p.add_argument("--mechanism", action="store_true",
                   help="instead of the map: the RA mechanism panel (per-step implicit rewards of the D^w and D^l "
                        "halves and their gradients' cosine, each goal-reading level at 1 epoch; OUT/mechanism.json, "
                        "OUT/mechanism.png; prefkit.toy.mechanism)")
    p.add_argument("--levels", default=None,
                   help="with --mechanism: the goal-reading levels to run, e.g. 0,0.4 (default: all of "
                        + ", ".join(WORLDS) + ")")


def check_mechanism_args(args) -> None:
    """--mechanism runs the panel, not cells: the map-only options do not apply to it (nor --levels
    to the map)."""
    if getattr(args, "levels", None) is not None and not getattr(args, "mechanism", False):
        raise ConfigError("--levels applies to the mechanism panel (--mechanism), not to the map's cells")
    if getattr(args, "mechanism", False):
        bad = [f for f in ("method", "cells") if getattr(args, f) is not None] + \
            [f for f in ("report_only", "dry_run") if getattr(args, f)]
        if bad:
            raise ConfigError(f"--{bad[0].replace('_', '-')} applies to the map's cells, not to --mechanism")


def _stop_time(text: str | None, now: float | None = None) -> float | None:
    """--stop-at HH:MM (UTC) as a Unix time: its next occurrence (a time already past today is
    tomorrow's, so `--stop-at 00:30` given at 23:00 means in 90 minutes)."""
    if not text:
        return None
    h, _, m = text.partition(":")
    now = time.time() if now is None else now
    try:
        t = time.gmtime(now)
        at = float(calendar.timegm((t.tm_year, t.tm_mon, t.tm_mday, int(h), int(m), 0)))
    except ValueError:
        raise ConfigError(f"--stop-at {text!r}: expected HH:MM (UTC)") from None
    return at if at > now else at + 86400


def run_args(args) -> Path | None:
    """The map or the mechanism panel from parsed arguments (`add_arguments`; `prefkit demo
    --regimes` and `python -m prefkit.toy.regimes` both call it): the map's report, the panel's
    json, or None after --dry-run."""
    check_mechanism_args(args)
    out, seeds, stale = args.out or "regimes_out", args.seeds or SEEDS, args.stale or "refuse"
    if args.mechanism:
        levels = [v.strip() for v in args.levels.split(",")] if args.levels else None
        return run_mechanism(out, seeds=seeds, worlds=levels, stop_at=_stop_time(args.stop_at), stale=stale)
    return run_map(out, method=args.method, cells=args.cells, seeds=seeds, report_only=args.report_only,
                   dry_run=args.dry_run, stop_at=_stop_time(args.stop_at), stale=stale)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m prefkit.toy.regimes", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="regimes_out")
    p.add_argument("--seeds", type=int, default=SEEDS)
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        run_args(args)
    except ConfigError as exc:
        print(f"prefkit.toy.regimes: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
