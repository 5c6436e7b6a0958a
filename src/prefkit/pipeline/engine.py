"""The engine: runs a recipe's stages round after round, each once for its inputs and options.

    from prefkit.pipeline import run
    manifest = run("examples/recipes/toy-quick.yaml", "runs/toy-quick")

Layout of a run directory:

    RUN_DIR/manifest.json                 recipe, package versions, hashes, timings, stage states
    RUN_DIR/round-K/STAGE/KEY/            one stage's work; KEY = hash of its inputs' content
                                          hashes and its options
    RUN_DIR/round-K/STAGE/KEY/done        written last (atomically): output, its hash, metrics
    RUN_DIR/round-0/evaluate/KEY/         the initial policy's evaluation (the baseline)
    RUN_DIR/report.md, results.json, plots/
    RUN_DIR/.run.lock                     held while a process runs the recipe here (`run_dir_lock`)

A stage whose `done` marker exists for its key is skipped; an interrupted one runs again in the
same directory, where its stage function resumes (see `prefkit.pipeline.runners`). A changed
option changes that stage's key and, through its output's hash, the keys of the stages after
it; the stages before it keep theirs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from prefkit import __version__
from prefkit.code_version import code, describe
from prefkit.errors import ConfigError, DataError, PrefkitError
from prefkit.evaluate.policy import load_prompts
from prefkit.files import atomic_write_text, sha256_file, try_lock
from prefkit.models import resolve_model_path
from prefkit.pipeline.recipe import Recipe, load_recipe
from prefkit.pipeline.report import write_report
from prefkit.pipeline.runners import RUNNERS, StageContext, recipe_file
from prefkit.pipeline.stages import DATA_STAGES, ORDER, ROUND1_EVALUATE, STAGES, TRAIN_STAGES
from prefkit.refs import call_ref
from prefkit.relabel import find_conditioning
from prefkit.relabel.carry import carry_conditioning

MANIFEST = "manifest.json"
DONE = "done"
RUN_LOCK = ".run.lock"
STALE_DIR = "stale"
#: what a run does with finished or started steps made by other prefkit code (`run`'s `stale`)
STALE_CHOICES = ("refuse", "rerun", "keep")
# The files that make a model what it is (not its logs, reports or checkpoints).
MODEL_FILE_SUFFIXES = (".safetensors", ".bin", ".gguf", ".model")
MODEL_FILES = ("config.json", "adapter_config.json", "prefkit_conditioning.json", "tokenizer.json",
               "tokenizer_config.json", "chat_template.jinja", "generation_config.json")


# -- hashes -----------------------------------------------------------------------------------------

def _sha_json(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


class Hasher:
    """Content hashes of files and model directories, remembered by (path, size, mtime) in
    RUN_DIR/hashes.json so a large initial policy is read once per run directory."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / "hashes.json"
        try:
            self.cache = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.cache = {}

    def file(self, path: Path) -> str:
        st = path.stat()
        sig = f"{st.st_size}:{st.st_mtime_ns}"
        key = str(path.resolve())
        got = self.cache.get(key)
        if got and got[0] == sig:
            return got[1]
        sha = sha256_file(path)
        self.cache[key] = [sig, sha]
        return sha

    def of(self, target: str) -> str:
        """A data file's hash, a model directory's (its model files), or a hub id's own text."""
        p = Path(target)
        if p.is_file():
            return self.file(p)
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.is_file() and
                           (f.name in MODEL_FILES or f.suffix in MODEL_FILE_SUFFIXES or f.suffix == ".jsonl"))
            if not files:
                raise ConfigError(f"{p}: no model or data files to hash")
            return _sha_json([(f.name, self.file(f)) for f in files])
        return _sha_json({"hub_id": target})

    def save(self) -> None:
        atomic_write_text(self.path, json.dumps(self.cache, indent=0))


# -- the plan ---------------------------------------------------------------------------------------

@dataclass
class Step:
    round: int
    stage: str
    arm: str | None = None

    @property
    def label(self) -> str:
        return (f"{self.arm}/" if self.arm is not None else "") + f"round-{self.round}/{self.stage}"


def plan(recipe: Recipe, until: str | None = None, arms=None) -> list[Step]:
    """The steps, arm after arm (an arm's steps that equal an earlier arm's run once: their keys
    are equal). arms: the names to run (default: all of them)."""
    names_all = recipe.arm_names()
    if arms:
        unknown = [a for a in arms if a not in names_all]
        if unknown or names_all == [None]:
            raise ConfigError(f"--arm {', '.join(unknown or arms)}: not an arm of this recipe"
                              + (f" ({', '.join(names_all)})" if names_all != [None] else " (it has none)"))
        names_all = [a for a in names_all if a in arms]
    return [s for arm in names_all for s in _plan_arm(recipe, arm, until)]


def _plan_arm(recipe: Recipe, arm: str | None, until: str | None) -> list[Step]:
    steps: list[Step] = []
    stages = recipe.stages_of(arm)
    names = [s for s in ORDER if s in stages]
    ev = stages.get("evaluate")
    if ev is not None and ev.get("baseline", True):
        steps.append(Step(0, "evaluate", arm))
    for k in range(1, recipe.rounds + 1):
        steps.extend(Step(k, s, arm) for s in names)
    if until:
        r, _, stage = until.rpartition("/") if "/" in until else until.rpartition(":")
        stage = stage.strip()
        if stage not in stages:
            if arm is not None and any(stage in recipe.stages_of(a) for a in recipe.arm_names()):
                return steps   # an arm without that stage runs whole
            raise ConfigError(f"--until {until!r}: {stage!r} is not a stage of this recipe "
                              f"({', '.join(names)})")
        k = recipe.rounds
        if r:
            try:
                k = int(r.replace("round-", ""))
            except ValueError:
                raise ConfigError(f"--until {until!r}: expected STAGE or round-K/STAGE") from None
        idx = next((i for i, s in enumerate(steps) if s.round == k and s.stage == stage), None)
        if idx is None:
            raise ConfigError(f"--until {until!r}: no such step (rounds 1..{recipe.rounds})")
        steps = steps[:idx + 1]
    return steps


# -- inputs -----------------------------------------------------------------------------------------

def resolve_policy(recipe: Recipe) -> str:
    if recipe.policy.get("build"):
        out = call_ref(recipe.policy["build"], recipe.policy.get("args"))
        return str(out)

    return str(resolve_model_path(recipe.policy["model"]))


def load_prompt_set(src: dict | None, recipe_dir: Path) -> list:
    if src is None:
        return []

    if src.get("build"):
        prompts = call_ref(src["build"], src.get("args"))
        rows = load_prompts(list(prompts))
    elif src.get("file"):
        f = Path(src["file"])
        if not f.is_absolute() and not f.exists() and (recipe_dir / f).exists():
            f = recipe_dir / f
        rows = load_prompts(str(f), split=src.get("split"))
    else:
        rows = load_prompts(src["dataset"], split=src.get("split"), subset=src.get("subset"),
                            revision=src.get("revision"))
    if src.get("limit"):
        rows = rows[:src["limit"]]
    return rows


@dataclass(frozen=True)
class _Unloaded:
    """A hub prompt set a dry run did not load (not in the local cache): its hash is its source's."""
    prompt: str
    prompt_id: str


def _load_offline(src: dict | None, recipe_dir: Path) -> list:
    """A dry run's prompts: hub datasets from the local cache only (no network, no retries); one
    that is not cached stands for itself, so the plan still shows every step (the generate step's
    key then waits on the real prompts)."""
    if not src or not src.get("dataset"):
        return load_prompt_set(src, recipe_dir)
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    os.environ.update({k: "1" for k in saved})
    try:
        return load_prompt_set(src, recipe_dir)
    except (ConfigError, DataError):
        return [_Unloaded(f"{src['dataset']} (not in the local cache; not loaded in a dry run)", "unloaded")]
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def round_prompts(rows: list, src: dict, k: int) -> list:
    """Round k's prompts: all of them, or the k-th slice of `per_round` (wrapping around)."""
    n = src.get("per_round")
    if not n or n >= len(rows):
        return rows
    start = ((k - 1) * n) % len(rows)
    got = rows[start:start + n]
    return got + rows[:n - len(got)]


def _prompts_hash(rows) -> str:
    return _sha_json([[r.prompt, r.prompt_id] for r in rows])


# -- the run ----------------------------------------------------------------------------------------

def package_versions() -> dict:

    out = {"python": platform.python_version()}
    for name in ("prefkit", "torch", "transformers", "datasets", "accelerate", "peft", "trl"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    if out.get("prefkit") is None:
        out["prefkit"] = __version__
    return out


class Runner:
    def __init__(self, recipe: Recipe, run_dir: Path, *, progress: bool = True, log=None):
        self.recipe = recipe
        self.run_dir = run_dir
        self.progress = progress
        self.log = log or (lambda msg: print(f"prefkit run: {msg}", file=sys.stderr, flush=True))
        self.hasher = Hasher(run_dir)
        self.manifest_path = run_dir / MANIFEST

    # ---- state
    def _load_manifest(self) -> dict:
        try:
            old = json.loads(self.manifest_path.read_text())
        except (OSError, ValueError):
            old = {}
        return {"recipe_file": self.recipe.file, "recipe": self.recipe.to_dict(), "recipe_text": self.recipe.text,
                "versions": package_versions(), "started": old.get("started", time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                              time.gmtime())),
                "invocations": old.get("invocations", 0) + 1,
                # earlier invocations' steps stay (a step of this plan replaces its own line)
                "stages": {k: v for k, v in old.get("stages", {}).items() if k in self._labels()},
                "history": old.get("history", [])}

    def _labels(self) -> set[str]:
        """Every step of the whole recipe (all arms and rounds)."""
        return {s.label for s in plan(self.recipe)}

    def _save_manifest(self) -> None:
        self.manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        order = {s.label: i for i, s in enumerate(plan(self.recipe))}   # the plan's order, whatever ran when
        self.manifest["stages"] = dict(sorted(self.manifest["stages"].items(), key=lambda kv: order.get(kv[0], 0)))
        atomic_write_text(self.manifest_path, json.dumps(self.manifest, indent=2, default=str))
        self.hasher.save()

    def step_dir(self, step: Step, key: str) -> Path:
        return self.run_dir / f"round-{step.round}" / step.stage / key[:12]

    # ---- one step
    def inputs(self, step: Step, state: dict) -> dict[str, str]:
        """Named input hashes of a step (None where an upstream step has not finished)."""
        s = step.stage
        options = self.recipe.stages_of(step.arm)
        ins = {} if s in ("score", "pair") else {"policy": state["policy_hash"]}
        if s in ("generate", "synth"):
            ins["prompts"] = state["prompts_hash"]
        elif s == "evaluate":
            ins["eval_prompts"] = state["eval_hash"]
        elif s == "train":
            ins["data"] = state.get("data_hash")
            ins["reference"] = state["initial_hash"] if (options["train"].get("reference") or "initial") \
                == "initial" else state["policy_hash"]
        elif s == "reward_model":   # its base: the round's policy, or the model it names (in its options)
            ins = {"data": state.get("data_hash")} if options[s].get("model") else \
                {"policy": state["policy_hash"], "data": state.get("data_hash")}
            f = (options[s].get("eval_pairs") or {}).get("file")
            if f:
                ins["eval_pairs"] = self.hasher.of(str(recipe_file(f, Path(self.recipe.file).parent)))
        else:
            ins["data"] = state.get("data_hash")
        return ins

    def options(self, step: Step) -> dict:
        """The step's options: its arm's, without those that apply from round 1 on in round 0."""
        return {k: v for k, v in self.recipe.stages_of(step.arm)[step.stage].items()
                if not (step.round == 0 and k in ROUND1_EVALUATE)}

    def key(self, step: Step, inputs: dict) -> str | None:
        if any(v is None for v in inputs.values()):
            return None
        # train's `reference` is in its inputs (the reference model's hash): in round 1 both choices
        # name the initial policy, so they share round 1's work
        opts = {k: v for k, v in self.options(step).items() if not (step.stage == "train" and k == "reference")}
        return _sha_json({"stage": step.stage, "options": opts, "inputs": inputs})

    def execute(self, steps: list[Step], *, dry_run: bool = False, stale: str = "refuse") -> dict:
        """Run (or plan) `steps`. stale: what to do with steps made by other prefkit code (see `run`)."""
        if stale not in STALE_CHOICES:
            raise ConfigError(f"stale={stale!r}: expected one of {', '.join(STALE_CHOICES)}")
        self.manifest = self._load_manifest()
        self.manifest["code"] = code()
        initial = resolve_policy(self.recipe)
        recipe_dir = Path(self.recipe.file).parent
        load = _load_offline if dry_run else load_prompt_set
        train_rows = load(self.recipe.prompts["train"], recipe_dir)
        eval_rows = load(self.recipe.prompts.get("eval"), recipe_dir)
        initial_hash = self.hasher.of(initial)
        self.manifest["initial_policy"] = {"path": initial, "hash": initial_hash}
        self.manifest["prompts"] = {"train": {"n": len(train_rows), "hash": _prompts_hash(train_rows)},
                                    "eval": {"n": len(eval_rows), "hash": _prompts_hash(eval_rows)}}
        start = {"policy": initial, "policy_hash": initial_hash, "initial_hash": initial_hash,
                 "eval_hash": _prompts_hash(eval_rows)}
        if not dry_run:
            # every step whose key is known now, as a dry run sees it: refuse before running anything
            # when some were made by other code, unless told what to do with them
            planned = self._walk(steps, start, train_rows, eval_rows, dry_run=True)
            found = [e for e in planned if e.get("stale")]
            if found and stale == "refuse":
                raise StaleStepsError(found)
            if stale == "keep" and found:
                self.log(f"{len(found)} step(s) made by other prefkit code kept as they are (--keep-stale)")
            if stale == "rerun":
                self._move_aside_other_code()
        lines = self._walk(steps, start, train_rows, eval_rows, dry_run=dry_run, stale=stale)
        if not dry_run:
            self.manifest["history"].append({"finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                             "seconds": round(time.time() - self.t_start, 1),
                                             "code": code(), "stale": stale,
                                             "ran": [_label(e) for e in lines if e.get("ran")],
                                             "kept_stale": [_label(e) for e in lines
                                                            if e.get("stale") and not e.get("ran")]})
            self._save_manifest()
        return {"steps": lines, "manifest": self.manifest}

    def _walk(self, steps: list[Step], start: dict, train_rows, eval_rows, *, dry_run: bool,
              stale: str = "refuse") -> list[dict]:
        """The steps in order: each one's key from the outputs before it; done ones read from their
        markers, the others run (or, in a dry run, said). One manifest entry a step."""
        lines = []
        timings: dict[str, list[float]] = {}
        self.t_start = time.time()
        now = code()
        current_round, current_arm, state = None, object(), {}
        for i, step in enumerate(steps):
            if step.arm != current_arm:   # each arm starts from the initial policy
                current_arm, current_round, state = step.arm, None, dict(start)
            if step.round != current_round:
                current_round = step.round
                if step.round >= 1:
                    rows = round_prompts(train_rows, self.recipe.prompts["train"], step.round)
                    state.update(round_rows=rows, prompts_hash=_prompts_hash(rows), data=None, data_hash=None)
                    state["round_start_policy"] = state["policy"]
            ins = self.inputs(step, state)
            key = self.key(step, ins)
            entry = {"round": step.round, "stage": step.stage, "inputs": ins, "key": key}
            if step.arm is not None:
                entry["arm"] = step.arm
            if key is None:
                entry["status"] = "waiting"
                lines.append(entry)
                self._advance_unknown(step, state)
                continue
            d = self.step_dir(step, key)
            entry["dir"] = str(d.relative_to(self.run_dir))
            done = d / DONE
            made_by = _made_by(d)
            if made_by is not False and made_by.get("fingerprint") != now["fingerprint"]:
                entry["stale"] = True
                entry["code"] = made_by
                if stale == "refuse" and not dry_run:
                    # found only now: a step before it ran and made the output it was keyed on again
                    raise StaleStepsError([entry], ran=[_label(e) for e in lines if e.get("ran")])
            if done.is_file():
                marker = json.loads(done.read_text())
                entry.update(status="done", output=marker["output"], output_hash=marker["output_hash"],
                             seconds=marker.get("seconds"), metrics=_light(marker.get("metrics", {})),
                             code=marker.get("code"))
            elif dry_run:
                entry["status"] = "interrupted" if d.exists() else "to run"
                lines.append(entry)
                self._advance_unknown(step, state)
                continue
            else:
                eta = _eta(steps[i:], timings)
                self.log((f"{step.arm} · " if step.arm is not None else "")
                         + f"round {step.round}/{self.recipe.rounds} · {step.stage} ({i + 1}/{len(steps)})"
                         f" · elapsed {_clock(time.time() - self.t_start)}" + (f" · ETA {_clock(eta)}" if eta else "")
                         + (" · resuming" if d.exists() else ""))
                d.mkdir(parents=True, exist_ok=True)
                marker = self._run_step(step, d, state, eval_rows, key, ins)
                timings.setdefault(step.stage, []).append(marker["seconds"])
                entry.update(status="done", output=marker["output"], output_hash=marker["output_hash"],
                             seconds=marker["seconds"], metrics=_light(marker["metrics"]), code=marker["code"],
                             ran=True)
            lines.append(entry)
            # whether a step is stale depends on the code reading the manifest: --status works it out
            self.manifest["stages"][step.label] = {k: v for k, v in entry.items() if k != "stale"}
            if not dry_run:
                self._save_manifest()
            self._advance(step, state, entry)
        return lines

    def _move_aside_other_code(self) -> None:
        """--rerun-stale: every step directory of RUN_DIR made (or started) by other prefkit code
        moves to RUN_DIR/stale/, planned or not (steps keyed on a stale step's old output included),
        so the run directory holds one code version; the plan's steps then run again as needed."""
        moved = []
        for d, made_by in other_code_steps(self.run_dir):
            to = _move_aside(self.run_dir, d, made_by)
            moved.append(str(d.relative_to(self.run_dir)))
            self.log(f"{moved[-1]}: made by other prefkit code ({describe(made_by)}; this is "
                     f"{describe(code())}): moved to {to.relative_to(self.run_dir)}, to run again")
        if moved:
            self.manifest["stages"] = {k: v for k, v in self.manifest["stages"].items() if v.get("dir") not in moved}

    def _run_step(self, step: Step, d: Path, state: dict, eval_rows, key: str, ins: dict) -> dict:
        stage = STAGES[step.stage]
        ctx = StageContext(round=step.round, stage=step.stage, dir=d, options=self.options(step),
                           pairs=state.get("pairs"),
                           policy=state["policy"], initial=self.manifest["initial_policy"]["path"],
                           data=state.get("data"), prompts=state.get("round_rows", []), eval_prompts=eval_rows,
                           run_dir=self.run_dir, progress=self.progress, recipe_dir=Path(self.recipe.file).parent)
        partial = _made_by(d)   # a started step resumed (--keep-stale) over partial work of other code
        atomic_write_text(d / "stage.json", json.dumps({"round": step.round, "stage": step.stage, "key": key,
                                                        "inputs": ins, "options": ctx.options, "code": code()},
                                                       indent=2, default=str))
        t0 = time.time()
        result = RUNNERS[stage.runner](ctx)
        out = result["output"]
        # a relabeled dataset's spec follows its rows through later data stages (a stage that wrote
        # its own spec, relabel, keeps it)
        if step.stage in DATA_STAGES and state.get("data") and out != state["data"] and find_conditioning(out) is None:
            carry_conditioning(state["data"], out)
        marker = {"key": key, "output": out, "output_hash": self.hasher.of(out),
                  "metrics": result.get("metrics", {}), "seconds": round(time.time() - t0, 2),
                  "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "code": code()}
        if partial is not False and partial.get("fingerprint") != marker["code"]["fingerprint"]:
            marker["resumed_from_code"] = partial
        atomic_write_text(d / DONE, json.dumps(marker, indent=2, default=str))
        return marker

    def _advance(self, step: Step, state: dict, entry: dict) -> None:
        if step.stage in DATA_STAGES:
            state["data"], state["data_hash"] = entry["output"], entry["output_hash"]
        if step.stage == "pair":
            state["pairs"] = entry["output"]
        elif step.stage in TRAIN_STAGES:
            state["policy"], state["policy_hash"] = entry["output"], entry["output_hash"]

    def _advance_unknown(self, step: Step, state: dict) -> None:
        if step.stage in DATA_STAGES:
            state["data"], state["data_hash"] = None, None
        elif step.stage in TRAIN_STAGES:
            state["policy"], state["policy_hash"] = None, None


class StaleStepsError(ConfigError):
    """Finished (or started) steps of the plan were made by other prefkit code than this process's:
    the run stops before running anything rather than build on them (exit 2 on the command line).
    `steps`: their manifest entries (label, dir, the code that made them)."""

    def __init__(self, steps: list[dict], ran: list[str] | None = None):
        self.steps = steps
        now = code()
        labels = [_label(e) for e in steps]
        made = sorted({describe(e.get("code")) for e in steps})
        shown = ", ".join(labels[:6]) + (f" and {len(labels) - 6} more" if len(labels) > 6 else "")
        first = "" if not ran else f"after running {len(ran)} step(s) ({', '.join(ran[:3])}), "
        super().__init__(
            f"{first}{len(steps)} step(s) in this run directory were made by other prefkit code: {shown}. "
            f"Made by: {'; '.join(made)}; this is {describe(now)}. A run must not mix code versions. "
            "Choose: --rerun-stale runs them again with this code (their directories move to RUN_DIR/stale/; "
            "the steps after them follow from their new outputs), or --keep-stale uses them as they are "
            "(the manifest keeps saying which code made each step).")


def _made_by(d: Path) -> dict | bool:
    """The code recorded in a step directory: its done marker's, else (a started step) its
    stage.json's; {} when the file records none (older prefkit); False when neither file exists."""
    for name in (DONE, "stage.json"):
        try:
            return json.loads((d / name).read_text()).get("code") or {}
        except FileNotFoundError:
            continue
        except ValueError:
            return {}
    return False


def _move_aside(run_dir: Path, d: Path, made_by: dict) -> Path:
    """Move a step directory to RUN_DIR/stale/<its code>/round-K/STAGE/KEY in one rename (a kill
    leaves it either where it was or moved, never half of each)."""
    base = run_dir / STALE_DIR / (made_by.get("fingerprint") or "unknown") / d.relative_to(run_dir)
    target, n = base, 1
    while target.exists():
        n += 1
        target = base.with_name(f"{base.name}-{n}")
    target.parent.mkdir(parents=True, exist_ok=True)
    os.rename(d, target)
    return target


def _label(entry: dict) -> str:
    return (f"{entry['arm']}/" if entry.get("arm") is not None else "") + f"round-{entry['round']}/{entry['stage']}"


def _light(metrics: dict) -> dict:
    """Metrics for the manifest: without the per-row value lists (kept in the done markers)."""
    return {k: v for k, v in metrics.items() if not k.endswith("_values")}


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _eta(remaining: list[Step], timings: dict) -> float | None:
    if not timings:
        return None
    overall = sum(sum(v) for v in timings.values()) / sum(len(v) for v in timings.values())
    return sum((sum(timings[s.stage]) / len(timings[s.stage])) if s.stage in timings else overall
               for s in remaining)


# -- the public entry points ------------------------------------------------------------------------

def default_run_dir(recipe: Recipe) -> Path:
    return Path("runs") / recipe.name


def run(recipe, run_dir=None, *, overrides=None, rounds: int | None = None, until: str | None = None,
        arms=None, dry_run: bool = False, progress: bool = True, log=None, stale: str = "refuse") -> dict:
    """Run (or, with dry_run, plan) a recipe in `run_dir`; returns {"steps": [...], "manifest": {...},
    "run_dir": path}. `recipe`: a path or a `Recipe` from `load_recipe`; arms: the arms to run
    (default: all).

    stale: what to do when steps of the plan in `run_dir` were made by other prefkit code
    (`prefkit.code_version.fingerprint()`; a marker without one counts as other code):
    "refuse" (default) raises `StaleStepsError` before running anything; "rerun" moves every step
    directory of RUN_DIR made by other code to RUN_DIR/stale/ and runs the plan's steps again (those
    after a rerun step follow from its output's hash); "keep" uses them as they are (their markers
    and manifest entries keep the code that made them)."""
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe, overrides=overrides, rounds=rounds)
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(recipe)
    steps = plan(recipe, until, arms)
    if not dry_run:
        run_dir.mkdir(parents=True, exist_ok=True)
    runner = Runner(recipe, run_dir, progress=progress, log=log)
    if dry_run:
        runner.hasher.save = lambda: None
        result = runner.execute(steps, dry_run=True, stale=stale)
    else:
        with run_dir_lock(run_dir):
            result = runner.execute(steps, dry_run=False, stale=stale)
            result["report"] = str(write_report(run_dir))
    result["run_dir"] = str(run_dir)
    return result


class RunDirInUse(PrefkitError):
    """Another process is running a recipe in this run directory."""


@contextlib.contextmanager
def run_dir_lock(run_dir: Path):
    """One process at a time in a run directory. Two processes there would both see a step
    unfinished and write its directory, the manifest and the hash cache at once; the second is
    refused at once, naming the holder. An advisory `flock` on RUN_DIR/.run.lock: the kernel
    releases it when the holder exits however it ends (kill -9 included), so a resumed run never
    meets a stale lock. A dry run or `status` takes no lock (they only read)."""
    path = Path(run_dir) / RUN_LOCK
    fh = try_lock(path)
    if fh is None:
        holder = path.read_text().strip() or "a process that has not written its pid yet"
        raise RunDirInUse(f"run directory {run_dir} is in use by another prefkit run ({holder}); "
                          "wait for it to finish, or stop it and run again (the run resumes)")
    try:
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {platform.node()} since "
                 f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n")
        fh.flush()
        yield
    finally:
        fh.close()   # releases the flock


def status(run_dir) -> dict:
    """Where a run stands: each planned step's state from the manifest and the markers on disk."""
    run_dir = Path(run_dir)
    path = run_dir / MANIFEST
    if not path.is_file():
        raise ConfigError(f"{run_dir}: not a run directory (no {MANIFEST})")
    manifest = json.loads(path.read_text())
    now = code()
    rows = []
    for label, e in manifest.get("stages", {}).items():
        # the marker on disk is the record (the manifest's copy is the one it read when it ran)
        made = _made_by(run_dir / e["dir"]) if e.get("dir") else False
        made = (e.get("code") or {}) if made is False else made
        rows.append({"step": label, "status": e.get("status"), "seconds": e.get("seconds"), "dir": e.get("dir"),
                     "code": made, "stale": e.get("status") == "done" and made.get("fingerprint") != now["fingerprint"]})
    # stage directories started but not finished (a killed run)
    for d in sorted(run_dir.glob("round-*/*/*")):
        if d.is_dir() and not (d / DONE).exists() and (d / "stage.json").exists():
            label = f"{d.parent.parent.name}/{d.parent.name}"
            detail = _partial(d)
            made = _made_by(d) or {}
            rows.append({"step": label, "status": "interrupted", "dir": str(d.relative_to(run_dir)), "detail": detail,
                         "code": made, "stale": made.get("fingerprint") != now["fingerprint"]})
    return {"run_dir": str(run_dir), "recipe": manifest.get("recipe_file"), "rounds": manifest["recipe"]["rounds"],
            "started": manifest.get("started"), "updated": manifest.get("updated"), "steps": rows,
            "history": manifest.get("history", []), "code": now}


def other_code_steps(root) -> list[tuple[Path, dict]]:
    """Step directories anywhere under `root` (one run directory or a folder of them) that were
    finished, or started, by other prefkit code than this process's: (directory, its recorded code).
    Directories already moved to a RUN_DIR/stale/ are not counted."""
    now = code()["fingerprint"]
    found = {}
    for name in (DONE, "stage.json"):
        for f in Path(root).rglob(name):
            d = f.parent
            if d in found or not d.parent.parent.name.startswith("round-") or \
                    STALE_DIR in d.relative_to(root).parts[:-3]:
                continue
            made = _made_by(d)
            if made is not False and made.get("fingerprint") != now:
                found[d] = made
            elif made is not False:
                found[d] = None
    return sorted((d, m) for d, m in found.items() if m is not None)


def _partial(d: Path) -> str:
    chunks = list((d / "chunks").glob("chunk-*.json")) if (d / "chunks").is_dir() else []
    if chunks:
        return f"{len(chunks)} generation chunks written"
    ckpts = sorted((d / "model").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1])) \
        if (d / "model").is_dir() else []
    if ckpts:
        return f"latest checkpoint {ckpts[-1].name}"
    if (d / "run").is_dir():
        return "request run in progress"
    return "started"
