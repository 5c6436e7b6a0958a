"""The score stage's LLM judge and the evolve stage, in the toy world (real tiny Llama policy, the
toy stand-in LLM `prefkit.toy.rewriter.ToyRewriter` as rewriter and judge): their recipe checks,
a judged score stage that resumes from its request run, and evolve-then-select end to end."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from prefkit.errors import ConfigError
from prefkit.pipeline import load_recipe, run
from prefkit.toy.task import gold_reward

RECIPES = Path(__file__).resolve().parents[2] / "examples" / "recipes"
TOY = RECIPES / "toy-quick.yaml"
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
    assert _error(recipe, []) == (f"{recipe}:{line}: stages.score.judge.concurency: unknown key; valid keys: "
                                  + _error(recipe, []).split("valid keys: ")[1])
    assert "concurrency" in _error(recipe, [])
    assert _error(recipe, ["score.judge.concurency=", "score.judge.base_urls=[localhost:8000]"]).endswith(
        "stages.score.judge.base_urls: expected a list of http(s) URLs, got ['localhost:8000']")
    assert _error(recipe, ["score.judge.concurency=", "score.judge_params={temprature: 0}"]).endswith(
        "stages.score.judge_params.temprature: unknown key; valid keys: temperature, top_p, max_tokens, seed, stop")
    assert _error(recipe, ["score.judge.concurency=", "score.judge.build=a:b"]).endswith(
        "stages.score.judge: give {model: NAME, base_urls: [URL, ...]}, {local: MODEL_DIR} or "
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


def test_every_shipped_recipe_with_an_evolve_stage_validates():
    for path in RECIPES.glob("*.yaml"):
        recipe = load_recipe(path)
        if "evolve" in recipe.stages:
            assert recipe.stages["evolve"]["backend"]


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


# -- evolve then select --------------------------------------------------------------------------------

@pytest.mark.slow
def test_evolve_then_select_recipe_runs_and_a_rerun_skips_it(tmp_path):
    overrides = ["prompts.train.args.n=48", "prompts.eval.args.n=8", "evaluate.n=1"]
    d = tmp_path / "run"
    res = run(load_recipe(EVOLVE, overrides=overrides), d, progress=False, log=lambda m: None)
    assert all(e["status"] == "done" for e in res["steps"])
    sel, evo, train = (_step(res, f"round-1/{s}") for s in ("select", "evolve", "train"))
    m = evo["metrics"]
    assert m["pairs_in"] == sel["metrics"]["kept"] == 12                      # 25% of 48 prompts' pairs
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
