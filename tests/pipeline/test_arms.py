"""Arms: several variants of one recipe (DPO vs reward-augmented DPO, say) in one run directory,
each from the initial policy, sharing the steps they have in common; their validation, the
evaluate stage's goal / conditioning / curve options, and the score stage's reward_args."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import TOY_RECIPE as TOY, TOY_ONE_ROUND as SMALL, line_of, recipe_error

from prefkit.errors import ConfigError
from prefkit.pipeline import load_recipe, plan, run
from prefkit.pipeline.report import format_plan

ARMS = """
arms:
  dpo: {relabel: false}
  ra:
    evaluate: {curve_goals: [2, 10], curve_samples: 1}
  base-at-10:
    train: false
    evaluate: {conditioning: data, goal: 10}
"""


def _recipe(tmp_path, extra: str = ARMS, overrides=()) -> Path:
    text = TOY.read_text().replace("score: {reward_fn: \"prefkit.toy.task:gold_reward\"}",
                                   "score:\n    reward_fn: \"prefkit.toy.judge:judged_score\"\n"
                                   "    reward_args: {overall_noise: 0.5, seed: 3}")
    p = tmp_path / "arms.yaml"
    p.write_text(text + extra)
    return p



def _error(path, overrides=()) -> str:
    return recipe_error(path, overrides=SMALL + list(overrides))




def test_arm_errors_name_file_line_and_key(tmp_path):
    p = _recipe(tmp_path, ARMS.replace("relabel: false", "relabl: false"))
    assert _error(p).startswith(f"{p}:{line_of(p, 'relabl')}: arms.dpo.relabl: unknown key (did you mean relabel?)")
    p = _recipe(tmp_path, ARMS.replace("curve_samples: 1", "curve_samples: many"))
    assert _error(p) == f"{p}:{line_of(p, 'curve_samples')}: arms.ra.evaluate.curve_samples: expected an integer, " \
                        "got 'many'"
    p = _recipe(tmp_path, ARMS.replace("{conditioning: data, goal: 10}", "{conditioning: sideways}"))
    assert "arms.base-at-10.evaluate.conditioning: 'sideways' is not one of auto, data, system, user, none" in _error(p)
    p = _recipe(tmp_path, ARMS + "  bad/name: {}\n")
    assert "arms.bad/name: an arm's name is a word without '/'" in _error(p)
    p = _recipe(tmp_path, ARMS.replace("relabel: false", "train: {unlearning_probe: {treshold: 5}}"))
    assert _error(p).startswith(f"{p}:{line_of(p, 'treshold')}: arms.dpo.train.unlearning_probe.treshold: unknown "
                                "key (did you mean threshold?)")
    p = _recipe(tmp_path, ARMS.replace("    evaluate: {curve_goals", "    train: {half_probe: {row: 8}}\n    evaluate: {curve_goals"))
    assert _error(p).startswith(f"{p}:{line_of(p, 'row:')}: arms.ra.train.half_probe.row: unknown key (did you mean "
                                "rows?); valid keys: rows, seed")
    p = _recipe(tmp_path, ARMS.replace("    evaluate: {curve_goals", "    train: {half_probe: {rows: 0}}\n    evaluate: {curve_goals"))
    assert _error(p) == f"{p}:{line_of(p, 'rows:')}: arms.ra.train.half_probe.rows: expected a positive integer, got 0"
    p = _recipe(tmp_path, ARMS.replace("relabel: false", "generate: false"))   # score then has no generate
    assert f"{p}:{line_of(p, 'dpo:')}: arms.dpo.score: needs a generate stage before it" in _error(p)


def test_plan_shares_the_steps_arms_have_in_common(tmp_path):
    recipe = load_recipe(_recipe(tmp_path), overrides=SMALL)
    steps = plan(recipe)
    assert [s.label for s in steps if s.arm == "base-at-10"] == [
        "base-at-10/round-0/evaluate", "base-at-10/round-1/generate", "base-at-10/round-1/score",
        "base-at-10/round-1/pair", "base-at-10/round-1/relabel", "base-at-10/round-1/evaluate"]
    assert {s.arm for s in plan(recipe, arms=["ra"])} == {"ra"}
    with pytest.raises(ConfigError, match="--arm nope: not an arm of this recipe"):
        plan(recipe, arms=["nope"])


@pytest.fixture(scope="module")
def arms_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("arms")
    d = tmp / "run"
    res = run(load_recipe(_recipe(tmp), overrides=SMALL), d, progress=False, log=lambda msg: None)
    return d, res


def _step(res, label) -> dict:
    return next(e for e in res["steps"] if (f"{e['arm']}/" if e.get("arm") else "") +
                f"round-{e['round']}/{e['stage']}" == label)


def test_arms_run_from_the_initial_policy_and_share_their_data(arms_run):
    d, res = arms_run
    ran = [e for e in res["steps"] if e.get("ran")]
    # generate, score, pair once for all three arms; the baseline evaluation once
    assert sum(e["stage"] == "generate" for e in ran) == 1 and sum(e["stage"] == "pair" for e in ran) == 1
    assert sum(e["round"] == 0 for e in ran) == 1
    assert _step(res, "dpo/round-1/pair")["dir"] == _step(res, "ra/round-1/pair")["dir"]
    # dpo trains on the pairs, ra on the relabeled pairs; both from the initial policy
    assert _step(res, "dpo/round-1/train")["inputs"]["data"] == _step(res, "ra/round-1/pair")["output_hash"]
    assert _step(res, "ra/round-1/train")["inputs"]["data"] == _step(res, "ra/round-1/relabel")["output_hash"]
    initial = res["manifest"]["initial_policy"]["hash"]
    assert _step(res, "dpo/round-1/train")["inputs"]["policy"] == initial == _step(res, "ra/round-1/train")["inputs"]["policy"]
    # the arm without training evaluates the initial policy at goal 10 through the relabeled data's spec
    ev = _step(res, "base-at-10/round-1/evaluate")
    assert ev["inputs"]["policy"] == initial and ev["metrics"]["goal"] == 10
    # the judge's aspect ratings travel with the scored responses
    scored = [json.loads(x) for x in open(_step(res, "ra/round-1/score")["output"])]
    first = scored[0]["responses"][0]
    assert set(first["aspects"]) == {"coverage", "order", "conciseness"} and 1 <= first["score"] <= 10
    # a rerun runs nothing; --arm runs one arm only (all done)
    again = run(load_recipe(_recipe(d.parent), overrides=SMALL), d, progress=False, log=lambda msg: None, arms=["dpo"])
    assert not any(e.get("ran") for e in again["steps"]) and {e["arm"] for e in again["steps"]} == {"dpo"}
    assert "dpo/round-1/train" in format_plan(again)


def test_conditioned_evaluation_and_curve(arms_run):
    from prefkit.evaluate.goal_curve import goal_following_curve
    from prefkit.relabel import find_conditioning
    from prefkit.toy import task

    d, res = arms_run
    ev = _step(res, "ra/round-1/evaluate")["metrics"]
    curve = ev["curve"]
    assert curve["goals"] == [2.0, 10.0] and len(curve["mean"]) == 2
    # the curve is the trained model's at those goals through its own spec (computed again, alike)
    model = _step(res, "ra/round-1/train")["output"]
    spec = find_conditioning(_step(res, "ra/round-1/relabel")["output"])
    prompts = task.make_prompts(6, seed=7)
    again = goal_following_curve(model, prompts, [2.0, 10.0], spec=spec, reward_fn=task.gold_reward, n=1,
                                 temperature=1.0, max_new_tokens=24, seed=0, progress=False)
    assert again["mean"] == pytest.approx(curve["mean"]) and again["slope"] == pytest.approx(curve["slope"])
    # the base policy at goal 10 differs from the unconditioned baseline only by its conditioning
    base10 = _step(res, "base-at-10/round-1/evaluate")["metrics"]["reward_fn"]["mean"]
    from prefkit.evaluate.policy import PolicySpec, evaluate_policies

    initial = res["manifest"]["initial_policy"]["path"]
    by_hand = evaluate_policies({"b": PolicySpec("b", initial, conditioning=spec, goal=10)}, prompts,
                                reward_fn=task.gold_reward, n=1, temperature=1.0, max_new_tokens=24, seed=0,
                                progress=False)
    assert by_hand["policies"]["b"]["reward_fn"]["mean"] == pytest.approx(base10)


def test_report_has_a_row_per_arm(arms_run):
    d, _ = arms_run
    results = json.loads((d / "results.json").read_text())
    assert set(results["arms"]) == {"dpo", "ra", "base-at-10"}
    arms = {(r["arm"], r["round"]) for r in results["reward_per_round"]}
    assert arms == {(a, k) for a in ("dpo", "ra", "base-at-10") for k in (0, 1)}
    report = (d / "report.md").read_text()
    assert "| dpo | 1 | reward_fn |" in report and "| base-at-10 | 1 |" in report
