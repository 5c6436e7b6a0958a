"""Calibration of the base policy's goal-reading strength, on base policies alone (docs/regimes.md,
"Calibration").

For each world setting (goal-prior share, goal noise, pretraining steps, world seed) this trains
(or loads from the toy cache) the toy world's base policy with those settings, every other field
as in the base world (by default `ToyWorldConfig()`), and measures its goal-following curve with
`prefkit.toy.world.goal_following_curve`: the mean gold reward of `samples` samples (T = 1) on
`prompts` held-out prompts (`task.make_prompts(prompts, seed=5000)`, docs/toy.md's criterion
prompts, none of them a demo prompt) conditioned on each goal, the same samples unconditioned,
the least-squares slope of gold on goal, and the slope's standard error over prompts (the sd of
the per-prompt slopes over the square root of the number of prompts). No method is trained.
`nearest` then picks, for each target slope, the measured setting closest to it.

    python -m prefkit.toy.calibrate 0:0:300 0.5:1:300 0.75:0.5:900 \\
        --out docs/regimes_calibration.json --plot docs/regimes_calibration.png

A setting is `goal_prior:goal_noise:steps[:seed]`. Rows are added to `--out` as each setting
lands (several processes may share one file); a setting already in it under the same protocol is
not measured again, so an interrupted calibration resumes.
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import json
import math
import os
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from prefkit.errors import ConfigError
from prefkit.evaluate.goal_curve import slope
from prefkit.evaluate.policy import PolicySpec
from prefkit.toy import task
from prefkit.toy.world import (
    CURVE_GOALS,
    QUICK_CONFIG,
    ToyWorldConfig,
    base_policy,
    goal_following_curve,
    gold_evaluation,
)

TARGET_SLOPES = (0.0, 0.2, 0.4, 0.6, 0.8)
PROMPT_SEED = 5000   # docs/toy.md's goal-prior criterion prompts; the demo's prompt seeds are 1000+ and 2000+


@dataclass(frozen=True)
class Setting:
    """The world knobs calibrated: goal-prior share, goal noise, pretraining steps, world seed."""

    goal_prior: float
    goal_noise: float
    steps: int
    seed: int = 0

    def world(self, base: ToyWorldConfig) -> ToyWorldConfig:
        return dataclasses.replace(base, goal_prior=self.goal_prior, goal_noise=self.goal_noise,
                                   steps=self.steps, seed=self.seed)

    def label(self) -> str:
        return f"{self.goal_prior:g}:{self.goal_noise:g}:{self.steps}:{self.seed}"


def parse_setting(text: str) -> Setting:
    """`goal_prior:goal_noise:steps[:seed]`, e.g. `0.5:1:300`."""
    parts = text.split(":")
    try:
        if len(parts) not in (3, 4):
            raise ValueError
        prior, noise, steps = float(parts[0]), float(parts[1]), int(parts[2])
        seed = int(parts[3]) if len(parts) == 4 else 0
    except ValueError:
        raise ConfigError(f"setting {text!r}: expected goal_prior:goal_noise:steps[:seed], e.g. 0.5:1:300") from None
    if not 0.0 <= prior <= 1.0:
        raise ConfigError(f"setting {text!r}: goal_prior must be in [0, 1], got {prior:g}")
    if noise < 0:
        raise ConfigError(f"setting {text!r}: goal_noise must be >= 0, got {noise:g}")
    if steps < 1:
        raise ConfigError(f"setting {text!r}: steps must be >= 1, got {steps}")
    return Setting(prior, noise if prior > 0 else 0.0, steps, seed)


def measure(setting: Setting, *, base_world: ToyWorldConfig | None = None, prompts: int = 100,
            samples: int = 4, goals=CURVE_GOALS, eval_seed: int = 0, cache_dir=None,
            progress: bool = False) -> dict:
    """Train (or load) the base policy of `setting` and measure its goal-following curve."""
    world = setting.world(base_world or ToyWorldConfig())
    started = time.time()
    base = base_policy(world, cache_dir=cache_dir, progress=progress)
    meta = json.loads((base / "prefkit_toy_world.json").read_text())
    held_out = task.make_prompts(prompts, seed=PROMPT_SEED, min_items=world.min_items, max_items=world.max_items)
    run_dir = Path(tempfile.mkdtemp(prefix="prefkit-calibrate-"))   # the curve and the plain run share it
    try:
        t0 = time.time()
        curve = goal_following_curve(base, held_out, goals, n=samples, seed=eval_seed, run_dir=run_dir,
                                     per_prompt=True, progress=progress)
        plain = gold_evaluation({"base": PolicySpec("base", str(base), conditioning=None)}, held_out, n=samples,
                                seed=eval_seed, run_dir=run_dir)["policies"]["base"]["reward_fn"]["mean"]
        curve_seconds = time.time() - t0
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    per_prompt_slopes = [slope(list(goals), [curve["per_prompt"][g][i] for g in range(len(goals))])
                         for i in range(len(held_out))]
    per_prompt_slopes = [s for s in per_prompt_slopes if not math.isnan(s)]
    se = _sd(per_prompt_slopes) / math.sqrt(len(per_prompt_slopes)) if len(per_prompt_slopes) > 1 else float("nan")
    return {"setting": setting.label(), **dataclasses.asdict(setting), "key": world.key(),
            "goals": list(goals), "gold": curve["gold"], "slope": curve["slope"], "slope_se": se,
            "slope_ci95": [curve["slope"] - 1.96 * se, curve["slope"] + 1.96 * se],
            "unconditioned": plain, "base_train_seconds": meta["train_seconds"],
            "base_threads": meta["threads"], "curve_seconds": round(curve_seconds, 1),
            "seconds": round(time.time() - started, 1), "finished_utc": _utc(),
            "load_average": [round(x, 2) for x in os.getloadavg()]}


def nearest(rows: list[dict], targets=TARGET_SLOPES) -> dict[str, dict]:
    """For each target slope, the row whose slope is closest; a tie goes to the smaller goal prior,
    then the fewer pretraining steps (less prior knowledge, less cost). With several world seeds of
    one setting, a setting's slope is the mean over its seeds."""
    by_setting: dict[tuple, list[dict]] = {}
    for r in rows:
        by_setting.setdefault((r["goal_prior"], r["goal_noise"], r["steps"]), []).append(r)
    pooled = []
    for (prior, noise, steps), rs in by_setting.items():
        values = [r["slope"] for r in rs]
        pooled.append({"goal_prior": prior, "goal_noise": noise, "steps": steps,
                       "seeds": [r["seed"] for r in rs], "slopes": values,
                       "slope": sum(values) / len(values),
                       "slope_sd_over_seeds": _sd(values) if len(values) > 1 else None})
    out = {}
    for t in targets:
        best = min(pooled, key=lambda p: (round(abs(p["slope"] - t), 9), p["goal_prior"], p["steps"]))
        out[f"{t:g}"] = {**best, "target": t, "distance": abs(best["slope"] - t)}
    return out


def calibrate(settings: list[Setting], out: str | Path, *, base_world: ToyWorldConfig | None = None,
              prompts: int = 100, samples: int = 4, goals=CURVE_GOALS, eval_seed: int = 0, cache_dir=None,
              targets=TARGET_SLOPES, plot: str | Path | None = None, command: str | None = None,
              progress: bool = False) -> dict:
    """Measure each setting not yet in `out` (under the same protocol), adding its row to `out` as
    it lands; then recompute `nearest` and (with `plot`) draw the curves. Returns the file's object."""
    base_world = base_world or ToyWorldConfig()
    protocol = {"prompts": prompts, "prompt_seed": PROMPT_SEED, "samples": samples, "temperature": 1.0,
                "goals": list(goals), "eval_seed": eval_seed,
                "base_world": {k: v for k, v in dataclasses.asdict(base_world).items()
                               if k not in ("goal_prior", "goal_noise", "steps", "seed")}}
    out = Path(out)
    with _locked(out) as doc:
        _check_protocol(doc, protocol, out)
        doc["runs"].append({"command": command, "started_utc": _utc(), "settings": [s.label() for s in settings],
                            "load_average": [round(x, 2) for x in os.getloadavg()], "pid": os.getpid()})
    for s in settings:
        with _locked(out) as doc:
            if any(r["setting"] == s.label() for r in doc["rows"]):
                continue
        row = measure(s, base_world=base_world, prompts=prompts, samples=samples, goals=goals,
                      eval_seed=eval_seed, cache_dir=cache_dir, progress=progress)
        print(json.dumps({k: row[k] for k in ("setting", "gold", "slope", "slope_se", "unconditioned",
                                               "base_train_seconds", "seconds", "load_average")}), flush=True)
        with _locked(out) as doc:
            doc["rows"] = [r for r in doc["rows"] if r["setting"] != row["setting"]] + [row]
            doc["nearest"] = nearest(doc["rows"], targets)
            doc["targets"] = list(targets)
    with _locked(out) as doc:
        if doc["rows"]:
            doc["nearest"] = nearest(doc["rows"], targets)
        result = json.loads(json.dumps(doc))
    if plot is not None and result["rows"]:
        plot_calibration(result, plot)
    return result


def plot_calibration(doc: dict, path: str | Path) -> None:
    """Left: each setting's goal-following curve (gold reward against goal); right: each setting's
    slope with its 95% interval over prompts, the targets as dotted lines."""
    import matplotlib  # noqa: PLC0415  heavy (matplotlib): lazy, so importing this module stays light

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415  heavy (matplotlib): lazy, so importing this module stays light

    rows = sorted(doc["rows"], key=lambda r: r["slope"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    cmap = plt.get_cmap("viridis")
    for k, r in enumerate(rows):
        colour = cmap(k / max(1, len(rows) - 1))
        left.plot(r["goals"], r["gold"], marker="o", color=colour, label=f"{r['setting']} ({r['slope']:.2f})")
        right.errorbar([k], [r["slope"]], yerr=[[r["slope"] - r["slope_ci95"][0]], [r["slope_ci95"][1] - r["slope"]]],
                       fmt="o", color=colour, capsize=3)
    goals = rows[0]["goals"] if rows else list(CURVE_GOALS)
    left.plot(goals, goals, color="grey", linestyle=":", linewidth=1, label="gold = goal (slope 1)")
    left.set_xlabel("goal in the system message")
    left.set_ylabel("mean gold reward (1-10)")
    left.set_title("base policies' goal-following curves")
    left.legend(fontsize=7, title="prior:noise:steps:seed (slope)", title_fontsize=7, loc="upper left")
    for t in doc.get("targets", TARGET_SLOPES):
        right.axhline(t, color="grey", linestyle=":", linewidth=1)
    right.set_xticks(range(len(rows)))
    right.set_xticklabels([r["setting"] for r in rows], rotation=45, ha="right", fontsize=7)
    right.set_ylabel("slope (gold per goal point), 95% interval over prompts")
    right.set_title("slopes against the targets (dotted)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _check_protocol(doc: dict, protocol: dict, out: Path) -> None:
    if doc.get("protocol") is None:
        doc["protocol"] = protocol
    elif doc["protocol"] != protocol:
        raise ConfigError(f"{out}: field 'protocol' records another measurement protocol "
                          f"({json.dumps(doc['protocol'], sort_keys=True)}); write to another file")


@contextmanager
def _locked(path: Path):
    """Read-modify-write `path` (JSON) under an exclusive lock on `path`.lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(str(path) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():
            try:
                doc = json.loads(path.read_text())
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}, line {e.lineno}: not valid JSON ({e.msg})") from None
        else:
            doc = {"schema_version": 1, "protocol": None, "runs": [], "rows": []}
        yield doc
        tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
        os.replace(tmp, path)


def _sd(values) -> float:
    values = list(values)
    if len(values) < 2:
        return 0.0
    m = sum(values) / len(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def _utc() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m prefkit.toy.calibrate",
                                 description="Goal-reading strength of toy base policies (no method is trained).")
    ap.add_argument("settings", nargs="+", help="goal_prior:goal_noise:steps[:seed], e.g. 0.5:1:300")
    ap.add_argument("--out", required=True, help="JSON file the rows are added to (resumable)")
    ap.add_argument("--plot", default=None, help="also draw the curves and slopes here (PNG)")
    ap.add_argument("--prompts", type=int, default=100, help="held-out prompts (default 100)")
    ap.add_argument("--samples", type=int, default=4, help="samples per prompt and goal (default 4)")
    ap.add_argument("--quick", action="store_true", help="the quick world (width 64) as the base world, for tests")
    args = ap.parse_args(argv)
    try:
        settings = [parse_setting(s) for s in args.settings]
        if args.prompts < 2 or args.samples < 1:
            raise ConfigError("--prompts must be >= 2 and --samples >= 1")
        calibrate(settings, args.out, base_world=QUICK_CONFIG if args.quick else ToyWorldConfig(),
                  prompts=args.prompts, samples=args.samples, plot=args.plot,
                  command=" ".join(["python -m prefkit.toy.calibrate", *(argv if argv is not None else sys.argv[1:])]))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
