"""The score stage's LLM judge and the evolve stage, in the toy world (real tiny Llama policy, the
toy stand-in LLM `prefkit.toy.rewriter.ToyRewriter` as rewriter and judge): their recipe checks,
a judged score stage that resumes from its request run, and evolve-then-select end to end."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prefkit.errors import ConfigError
from prefkit.pipeline import load_recipe, run
from prefkit.toy.task import gold_reward
from helpers import RECIPES, TOY_RECIPE as TOY

EVOLVE = RECIPES / "toy-evolve-select.yaml"
TOY_LLM = "{build: prefkit.toy.recipes:rewriter, args: {quick: true}}"


def _error(recipe, overrides) -> str:
    with pytest.raises(ConfigError) as exc:
        load_recipe(recipe, overrides=overrides)
    return str(exc.value)


def _step(result, label) -> dict:
    return next(e for e in result["steps"] if f"round-{e['round']}/{e['stage']}" == label)


# -- recipe checks ------------------------------------------------------------------------------------

def test_score_needs_exactly_one_scorer():
    assert _error(TOY, ["score.reward_fn="]).endswith(
        "stages.score: nothing to score with: set reward_fn, reward_model or judge")
    msg = _error(TOY, [f"score.judge={TOY_LLM}"])
    assert msg.startswith("--set: stages.score.judge: set only one of reward_fn, judge")


def test_a_judge_spec_is_checked_with_its_line(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(TOY.read_text().replace(
        'score: {reward_fn: "prefkit.toy.task:gold_reward"}',
        "score:\n    judge:\n      model: m\n      base_urls: [http://127.0.0.1:1/v1]\n      concurency: 2"))
    line = recipe.read_text().splitlines().index("      concurency: 2") + 1
    assert _error(recipe, []) == (f"{recipe}:{line}: stages.score.judge.concurency: unknown key for a model backend; valid keys: "
                                  + _error(recipe, []).split("valid keys: ")[1])
    assert "concurrency" in _error(recipe, [])
    assert _error(recipe, ["score.judge.concurency=", "score.judge.base_urls=[localhost:8000]"]).endswith(
        "stages.score.judge.base_urls: expected a list of http(s) URLs (the servers' OpenAI-compatible endpoints, "
        "e.g. [http://localhost:8000/v1]), got ['localhost:8000']")
    assert _error(recipe, ["score.judge.concurency=", "score.judge_params={temprature: 0}"]).endswith(
        "stages.score.judge_params.temprature: unknown key; valid keys: temperature, top_p, max_tokens, seed, stop")
    assert _error(recipe, ["score.judge.concurency=", "score.judge.build=a:b"]).endswith(
        "stages.score.judge: give {model: NAME, base_urls: [URL, ...]}, {local: policy or MODEL_DIR} or "
        "{build: MODULE:FUNCTION, args: {...}}")


def test_evolve_options_are_checked():
    assert _error(EVOLVE, ["evolve.backend="]).split(": ", 2)[1:] == [
        "stages.evolve", "set backend: the LLM that rewrites the prompts ({model: NAME, base_urls: [URL, ...]}, "
                         "{local: DIR} or {build: MODULE:FUNCTION})"]
    assert "stages.evolve: nothing to score with: set reward_model or judge" in _error(EVOLVE, ["evolve.judge="])
    assert "stages.evolve.select.metrc: unknown key (did you mean metric?)" in _error(EVOLVE, ["evolve.select.metrc=x"])
    assert "stages.evolve.operations: 'deep' is not one of add-constraints, deepen" in \
        _error(EVOLVE, ["evolve.operations=[deep]"])
    assert "stages.evolve.generation.temp: unknown key" in _error(EVOLVE, ["evolve.generation.temp=1"])
    assert "stages.generate.backend_options.model: unknown key" in _error(TOY, ["generate.backend_options={model: x}"])
    assert load_recipe(EVOLVE).stages["evolve"]["select"] == {"metric": "alignment-potential", "fraction": 0.5}


# -- the judge as the score stage's scorer --------------------------------------------------------------

def test_judged_score_stage_resumes_from_its_request_run(tmp_path):
    """The toy judge rates every response (its noisy score follows the gold reward); the stage's
    requests are kept in its run directory, so running it again asks for nothing."""
    overrides = ["prompts.train.args.n=12", "prompts.train.per_round=12", "score.reward_fn=",
                 f"score.judge={TOY_LLM}"]
    d = tmp_path / "run"
    res = run(load_recipe(TOY, overrides=overrides, rounds=1), d, until="score", progress=False, log=lambda m: None)
    score = _step(res, "round-1/score")
    m = score["metrics"]
    assert m["scorer"].startswith("judge toy:toy-rewriter") and m["judge_failures"] == {}
    assert m["judge_run"]["requested"] == m["scores"]["n"] == 48 and m["judge_run"]["resumed"] == 0
    rows = [json.loads(x) for x in open(score["output"])]
    pairs = [(r["prompt"], resp) for r in rows for resp in r["responses"]]
    assert all(1 <= resp["score"] <= 10 and set(resp["aspects"]) for _, resp in pairs)
    judged = [resp["score"] for _, resp in pairs]
    gold = [gold_reward(p, resp["text"]) for p, resp in pairs]
    assert statistics.correlation(judged, gold) > 0.5             # each rating is of its own response

    done = Path(score["output"]).parent / "done"
    done.unlink()                                                   # as if killed before the marker
    again = run(load_recipe(TOY, overrides=overrides, rounds=1), d, until="score", progress=False,
                log=lambda m: None)
    second = _step(again, "round-1/score")
    assert second["ran"] and second["output_hash"] == score["output_hash"]
    assert second["metrics"]["judge_run"]["resumed"] == 48 and second["metrics"]["judge_run"]["done"] == 0


def _grader(body: dict) -> str:
    """A judge's answer in UltraFeedback's format, its ratings a digest of the request: the same
    request always gets the same ratings (so a resumed run must equal an uninterrupted one)."""
    from prefkit.synth.judge import ASPECTS

    h = int(hashlib.sha1(body["messages"][-1]["content"].encode()).hexdigest(), 16)
    lines = [f"{a}: {1 + (h >> (4 * k)) % 5}\nrationale: digest" for k, a in enumerate(ASPECTS)]
    return "\n".join(lines + [f"overall: {1 + h % 10}"])


def _judge_cmd(run_dir, urls) -> list[str]:
    sets = ["prompts.train.args.n=8", "prompts.train.per_round=8", "score.reward_fn=", "score.judge.model=judge",
            f"score.judge.base_urls=[{urls[0]}, {urls[1]}]", "score.judge.concurrency=2"]
    return [sys.executable, "-m", "prefkit", "run", str(TOY), "-o", str(run_dir), "--rounds", "1", "--until", "score",
            "--no-progress"] + [a for s in sets for a in ("--set", s)]


@pytest.mark.slow
def test_kill_while_judging_then_rerun(tmp_path):
    """Two OpenAI-compatible servers that take a quarter second per answer; `kill -9` once four
    judge requests are recorded, then the same command: every recorded request is kept, at most
    the ones in flight are asked again, and the scores equal an uninterrupted run's."""
    from prefkit.testing import FakeServer

    with FakeServer(_grader, latency=0.25, max_lifetime=600) as a, \
            FakeServer(_grader, latency=0.25, max_lifetime=600) as b:
        urls = [a.base_url, b.base_url]
        whole = subprocess.run(_judge_cmd(tmp_path / "whole", urls), capture_output=True, text=True)
        assert whole.returncode == 0, whole.stderr[-3000:]
        served_whole = a.stats["ok"] + b.stats["ok"]
        assert a.stats["ok"] >= 1 and b.stats["ok"] >= 1                     # spread over both

        d = tmp_path / "killed"
        proc = subprocess.Popen(_judge_cmd(d, urls), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        records = lambda: [x for f in d.glob("round-1/score/*/run/requests.jsonl")  # noqa: E731
                           for x in f.read_text().splitlines()]
        t0 = time.time()
        while len(records()) < 4:
            assert proc.poll() is None, f"the run ended before the kill: {proc.stderr.read()[-2000:]}"
            assert time.time() - t0 < 300
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
        kept = len(records())
        assert kept < served_whole and not list(d.glob("round-1/score/*/done"))
        served_before = a.stats["ok"] + b.stats["ok"]
        again = subprocess.run(_judge_cmd(d, urls), capture_output=True, text=True)
        assert again.returncode == 0, again.stderr[-3000:]
        served_again = a.stats["ok"] + b.stats["ok"] - served_whole
    (w,) = [json.loads(p.read_text()) for p in (tmp_path / "whole").glob("round-1/score/*/done")]
    (k,) = [json.loads(p.read_text()) for p in d.glob("round-1/score/*/done")]
    assert k["output_hash"] == w["output_hash"]                         # the same scores, file for file
    assert k["metrics"]["judge_run"]["resumed"] == kept and w["metrics"]["judge_failures"] == {}
    assert served_whole <= served_again <= served_whole + 2             # concurrency 2: at most 2 asked twice
    assert served_before - served_whole >= kept


# -- evolve then select --------------------------------------------------------------------------------

@pytest.mark.slow
def test_evolve_then_select_recipe_runs_and_a_rerun_skips_it(tmp_path):
    overrides = ["prompts.train.args.n=48", "prompts.eval.args.n=8", "evaluate.n=1"]
    d = tmp_path / "run"
    res = run(load_recipe(EVOLVE, overrides=overrides), d, progress=False, log=lambda m: None)
    assert all(e["status"] == "done" for e in res["steps"])
    pair, sel, evo, train = (_step(res, f"round-1/{s}") for s in ("pair", "select", "evolve", "train"))
    m = evo["metrics"]
    assert 40 <= pair["metrics"]["pairs"] <= 48                               # 48 prompts, ties dropped
    assert m["pairs_in"] == sel["metrics"]["kept"] == int(0.25 * pair["metrics"]["pairs"])     # the top 25%
    assert 0 < m["evolved_prompts"] <= m["pairs_in"] and m["evolved_pairs"] <= m["evolved_prompts"]
    assert m["evolved_kept"] == round(0.5 * m["evolved_pairs"])               # the second selection's fraction
    assert m["merged"] == m["pairs_in"] + m["evolved_kept"]
    rows = [json.loads(x) for x in open(evo["output"])]
    evolved = [r for r in rows if r.get("evolved_from")]
    parents = {r["prompt_id"]: r["prompt"] for r in rows if not r.get("evolved_from")}
    assert len(evolved) == m["evolved_kept"]
    for r in evolved:                           # a harder sorting prompt of a selected one
        assert r["source"].startswith("evolve:") and r["evolved_from"] in parents
        assert r["prompt"] != parents[r["evolved_from"]] and r["score_chosen"] > r["score_rejected"]
    assert train["inputs"]["data"] == evo["output_hash"]                     # DPO trains on the merge
    assert (evo["metrics"]["merged"] + 7) // 8 == train["metrics"]["steps"]   # batch 8, one epoch

    again = run(load_recipe(EVOLVE, overrides=overrides), d, progress=False, log=lambda m: None)
    assert not any(e.get("ran") for e in again["steps"])
    assert _step(again, "round-1/evolve")["output_hash"] == evo["output_hash"]
