"""The sft stage (conditioning only: supervised training on every judged sample conditioned on
its own score, docs/regimes.md `cond-sft`): its recipe validation (file:line:key), and a toy run
beside an RA arm sharing its samples and scores; a rerun runs nothing, an interrupted sft step
runs again alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import TOY_RECIPE as TOY, TOY_ONE_ROUND as SMALL, line_of, recipe_error

from prefkit.pipeline import load_recipe, run

ARMS = """
arms:
  ra: {}
  cond-sft:
    pair: false
    relabel: {rows: sft}
    train: false
    sft: {learning_rate: 5.0e-4, max_steps: 3, per_device_train_batch_size: 8, max_length: 256,
          max_prompt_length: 192, logging_steps: 1, save_strategy: "no", seed: 0}
    evaluate: {goal: 10, conditioning: auto}
"""


def _recipe(tmp_path, arms: str = ARMS) -> Path:
    p = tmp_path / "sft.yaml"
    p.write_text(TOY.read_text() + arms)
    return p


def test_sft_recipe_errors_name_file_line_and_key(tmp_path):
    p = _recipe(tmp_path, ARMS.replace("    pair: false\n", ""))
    assert recipe_error(p, overrides=SMALL).startswith(
        f"{p}:{line_of(p, 'relabel: {rows: sft}')}: arms.cond-sft.relabel.rows: sft conditions every judged sample "
        "(the score stage's output), but a pair stage comes before it; drop it in this arm (pair: false)")
    p = _recipe(tmp_path, ARMS.replace("    relabel: {rows: sft}\n", "    relabel: false\n"))
    assert recipe_error(p, overrides=SMALL).startswith(
        f"{p}:{line_of(p, 'sft: {learning_rate')}: arms.cond-sft.sft: needs a relabel stage with rows: sft")
    p = _recipe(tmp_path, ARMS.replace("max_steps: 3", "beta: 0.1"))
    assert recipe_error(p, overrides=SMALL).startswith(
        f"{p}:{line_of(p, 'sft: {learning_rate')}: arms.cond-sft.sft.beta: unknown key")
    p = _recipe(tmp_path, ARMS.replace("max_steps: 3", "forward_mode: rows"))
    assert recipe_error(p, overrides=SMALL).startswith(
        f"{p}:{line_of(p, 'sft: {learning_rate')}: arms.cond-sft.sft.forward_mode: forward_mode must be one of "
        "packed, padded")
    p = _recipe(tmp_path, ARMS.replace("{rows: sft}", "{rows: triples}"))
    assert "arms.cond-sft.relabel.rows: 'triples' is not one of pairs, sft" in recipe_error(p, overrides=SMALL)


@pytest.mark.slow
def test_sft_arm_runs_beside_ra_and_resumes(tmp_path):
    d = tmp_path / "run"
    recipe = load_recipe(_recipe(tmp_path), overrides=SMALL)
    res = run(recipe, d, progress=False, log=lambda msg: None)
    step = {f"{e['arm']}/{e['stage']}": e for e in res["steps"] if e["round"] == 1}
    # the samples and the judge's scores are RA's; the sft step trains on the conditioned rows
    assert step["cond-sft/score"]["dir"] == step["ra/score"]["dir"]
    assert step["cond-sft/relabel"]["inputs"]["data"] == step["ra/score"]["output_hash"]
    assert step["cond-sft/sft"]["inputs"]["data"] == step["cond-sft/relabel"]["output_hash"]
    scored = [json.loads(x) for x in open(step["ra/score"]["output"])]
    judged = sum(1 for r in scored for s in r["responses"] if s.get("score") is not None and s["text"].strip())
    rows = [json.loads(x) for x in open(step["cond-sft/relabel"]["output"])]
    assert len(rows) == judged and {"prompt", "completion", "goal_score"} <= set(rows[0])
    marker = json.loads((d / step["cond-sft/sft"]["dir"] / "done").read_text())
    assert marker["metrics"]["steps"] == 3 and marker["metrics"]["rows"] == judged
    # the model carries RA's conditioning spec (the same text at goal 10 as the ra arm's)
    model = Path(step["cond-sft/sft"]["output"])
    ra_spec = json.loads(Path(step["ra/relabel"]["output"] + ".conditioning.json").read_text())
    assert json.loads((model / "prefkit_conditioning.json").read_text()) == ra_spec
    assert step["cond-sft/evaluate"]["inputs"]["policy"] == step["cond-sft/sft"]["output_hash"]
    # a rerun runs nothing; an interrupted sft step (no done marker) runs again, nothing before it
    again = run(load_recipe(_recipe(tmp_path), overrides=SMALL), d, progress=False, log=lambda msg: None)
    assert not any(e.get("ran") for e in again["steps"])
    (d / step["cond-sft/sft"]["dir"] / "done").unlink()
    third = run(load_recipe(_recipe(tmp_path), overrides=SMALL), d, progress=False, log=lambda msg: None)
    ran = {f"{e.get('arm')}/{e['stage']}" for e in third["steps"] if e.get("ran")}
    assert "cond-sft/sft" in ran and ran <= {"cond-sft/sft", "cond-sft/evaluate"}
