"""The engine on the toy world (real tiny Llama, real training, real evaluation): a two-round
on-policy reward-augmented loop, reruns that skip finished stages, a changed training option
that reruns only what follows it, and the two reference choices of round 2."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from prefkit.pipeline import load_recipe, run
from helpers import TOY_RECIPE as TOY

# toy-quick, smaller: 16 prompts a round, 8 held-out prompts
SMALL = ["prompts.train.args.n=32", "prompts.train.per_round=16", "prompts.eval.args.n=8", "evaluate.n=1",
         "train.per_device_train_batch_size=8"]


def _run(run_dir, overrides=(), **kw):
    return run(load_recipe(TOY, overrides=SMALL + list(overrides), rounds=kw.pop("rounds", None)), run_dir,
               progress=False, log=lambda msg: None, **kw)


def _ran(result) -> list[str]:
    return [f"round-{e['round']}/{e['stage']}" for e in result["steps"] if e.get("ran")]


def _step(result, label) -> dict:
    return next(e for e in result["steps"] if f"round-{e['round']}/{e['stage']}" == label)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("loop") / "run"
    return d, _run(d)


def test_two_round_on_policy_loop(base_run):
    d, res = base_run
    labels = [f"round-{e['round']}/{e['stage']}" for e in res["steps"]]
    assert labels == ["round-0/evaluate"] + [f"round-{k}/{s}" for k in (1, 2)
                                             for s in ("generate", "score", "pair", "relabel", "train", "evaluate")]
    assert _ran(res) == labels and all(e["status"] == "done" for e in res["steps"])
    # round 2 samples from round 1's policy, on its own prompts
    r1_model = _step(res, "round-1/train")["output"]
    assert _step(res, "round-2/generate")["inputs"]["policy"] == _step(res, "round-1/train")["output_hash"]
    assert _step(res, "round-2/generate")["inputs"]["prompts"] != _step(res, "round-1/generate")["inputs"]["prompts"]
    r2_train = _step(res, "round-2/train")["metrics"]
    assert r2_train["policy"] == r1_model and r2_train["reference"] == "initial"
    assert r2_train["reference_model"] == res["manifest"]["initial_policy"]["path"]
    # relabeled data carries its conditioning spec into training: the trained model is conditioned
    assert (Path(r1_model) / "prefkit_conditioning.json").is_file()
    rows = [json.loads(x) for x in open(_step(res, "round-1/relabel")["output"])]
    # conversational rows (the sampled conversation), the goal in a system turn before the user's
    assert rows and all(r["prompt"][0]["role"] == "system" and "Overall score:" in r["prompt"][0]["content"]
                        and r["prompt"][1]["role"] == "user" for r in rows)
    # the manifest, the report, results.json, plots
    manifest = json.loads((d / "manifest.json").read_text())
    assert manifest["versions"]["torch"] and manifest["initial_policy"]["hash"]
    assert manifest["recipe"]["stages"]["train"]["reference"] == "initial"
    results = json.loads((d / "results.json").read_text())
    rounds = [r["round"] for r in results["reward_per_round"]]
    assert rounds == [0, 1, 2]
    assert all(1.0 <= r["mean"] <= 10.0 for r in results["reward_per_round"])
    report = (d / "report.md").read_text()
    assert "## Reward per round" in report and "| 2 | reward_fn |" in report
    assert {p.name for p in (d / "plots").iterdir()} >= {"reward_per_round.png", "score_distribution.png",
                                                         "margin_distribution.png", "kept_dropped.png"}


def test_rerun_skips_every_finished_stage(base_run):
    d, res = base_run
    again = _run(d)
    assert _ran(again) == []
    assert [e["output_hash"] for e in again["steps"]] == [e["output_hash"] for e in res["steps"]]
    assert len(json.loads((d / "manifest.json").read_text())["history"]) >= 2


def test_changing_a_training_option_reruns_only_train_and_evaluate(base_run, tmp_path):
    d, res = base_run
    copy = tmp_path / "run"
    shutil.copytree(d, copy)
    changed = _run(copy, ["train.learning_rate=1e-3"], rounds=1)
    assert _ran(changed) == ["round-1/train", "round-1/evaluate"]
    for label in ("round-1/generate", "round-1/score", "round-1/pair", "round-1/relabel"):
        assert _step(changed, label)["key"] == _step(res, label)["key"]
    assert _step(changed, "round-1/train")["output_hash"] != _step(res, "round-1/train")["output_hash"]
    # the dry run of the original recipe still finds all of its stages done
    plan = _run(copy, dry_run=True)
    assert {e["status"] for e in plan["steps"]} == {"done"}


def test_reference_previous_differs_from_initial_and_the_manifest_says_which(base_run, tmp_path):
    d, res = base_run
    copy = tmp_path / "run"
    shutil.copytree(d, copy)
    prev = _run(copy, ["train.reference=previous"])
    # round 1's reference is the initial policy either way: only round 2's training and evaluation rerun
    assert _ran(prev) == ["round-2/train", "round-2/evaluate"]
    a, b = _step(res, "round-2/train"), _step(prev, "round-2/train")
    assert a["output_hash"] != b["output_hash"]
    assert a["metrics"]["reference"] == "initial" and b["metrics"]["reference"] == "previous"
    assert b["metrics"]["reference_model"] == _step(res, "round-1/train")["output"]
    manifest = json.loads((copy / "manifest.json").read_text())
    assert manifest["stages"]["round-2/train"]["metrics"]["reference"] == "previous"
    assert a["metrics"]["last_log"]["loss"] != b["metrics"]["last_log"]["loss"]


def test_status_and_dry_run_from_the_command_line(base_run):
    d, _ = base_run
    proc = subprocess.run([sys.executable, "-m", "prefkit", "run", "--status", str(d)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "round-2/train" in proc.stdout and "done" in proc.stdout
    args = [sys.executable, "-m", "prefkit", "run", str(TOY), "-o", str(d), "--dry-run"]
    for s in SMALL + ["train.beta=0.2"]:
        args += ["--set", s]
    proc = subprocess.run(args, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = {line.split()[0]: line for line in proc.stdout.splitlines()[1:]}
    assert " done " in lines["round-1/relabel"] and "to run" in lines["round-1/train"]
    assert "waiting" in lines["round-2/generate"]
