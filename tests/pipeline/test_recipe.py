"""Recipe validation: the whole recipe is checked before anything runs, and a bad one is one
line naming the file, the line and the key, with the valid keys or values, exit status 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import RECIPES, TOY_RECIPE as TOY, line_of, recipe_error

from prefkit.pipeline import load_recipe
from prefkit.pipeline.stages import STAGES



def _write(tmp_path, text: str) -> Path:
    p = tmp_path / "recipe.yaml"
    p.write_text(text)
    return p


def _edited(tmp_path, old: str, new: str) -> Path:
    text = TOY.read_text()
    assert old in text
    return _write(tmp_path, text.replace(old, new, 1))






@pytest.mark.parametrize("recipe", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_validates(recipe):
    r = load_recipe(recipe)
    assert r.stages and r.rounds >= 1


def test_toy_quick_resolves_to_the_stage_options():
    r = load_recipe(TOY)
    assert r.rounds == 2
    assert list(r.stages) == ["generate", "score", "pair", "relabel", "train", "evaluate"]
    assert r.stages["train"]["learning_rate"] == 5e-4 and r.stages["train"]["reference"] == "initial"
    assert r.stages["relabel"]["round_scores"] == 0


def test_unknown_stage_option_names_file_line_key_and_valid_keys(tmp_path):
    p = _edited(tmp_path, "temperature: 1.0, max_new_tokens: 24, seed: 0}", "temprature: 1.0}")
    msg = recipe_error(p)
    assert msg.startswith(f"{p}:{line_of(p, 'temprature')}: stages.generate.temprature: unknown key")
    assert "did you mean temperature?" in msg
    assert "valid keys: n, temperature, top_p, max_new_tokens" in msg


def test_bad_choice_lists_the_valid_values(tmp_path):
    p = _edited(tmp_path, "method: best-vs-worst", "method: best-vs-best")
    msg = recipe_error(p)
    assert msg == (f"{p}:{line_of(p, 'best-vs-best')}: stages.pair.method: 'best-vs-best' is not one of "
                   "published, best-vs-worst, all-pairs")


def test_loss_choices_come_from_the_loss_registry(tmp_path):
    from prefkit.losses import available_losses

    p = _edited(tmp_path, "loss_type: sigmoid", "loss_type: sigmod")
    msg = recipe_error(p)
    assert f"{p}:{line_of(p, 'sigmod')}: stages.train.loss_type: 'sigmod' is not one of" in msg
    for name in available_losses() + ["eps-dpo"]:
        assert name in msg


def test_bad_type(tmp_path):
    p = _edited(tmp_path, "beta: 0.1", "beta: high")
    assert recipe_error(p) == f"{p}:{line_of(p, 'beta: high')}: stages.train.beta: expected a number, got 'high'"


def test_unknown_top_level_key_and_stage(tmp_path):
    p = _edited(tmp_path, "rounds: 2", "rounds: 2\nfoo: 1")
    assert recipe_error(p) == (f"{p}:{line_of(p, 'foo: 1')}: foo: unknown key; valid keys: name, description, policy, "
                         "prompts, rounds, stages, arms")
    p = _edited(tmp_path, "  pair:", "  pairs:")
    msg = recipe_error(p)
    assert f"{p}:{line_of(p, 'pairs:')}: stages.pairs: unknown key (did you mean pair?)" in msg
    assert "generate, score, pair, synth, relabel, select, evolve, reward_model, train, sft, evaluate" in msg


def test_trainer_checks_point_at_the_key(tmp_path):
    p = _edited(tmp_path, "max_prompt_length: 192", "max_prompt_length: 300")
    msg = recipe_error(p)
    assert msg.startswith(f"{p}:{line_of(p, 'max_prompt_length: 300')}: stages.train.max_prompt_length:")


def test_any_training_arguments_field_passes_and_a_reserved_one_does_not(tmp_path):
    r = load_recipe(TOY, overrides=["train.logging_first_step=true"])
    assert r.stages["train"]["logging_first_step"] is True
    msg = recipe_error(TOY, overrides=["train.remove_unused_columns=false"])
    assert msg.startswith("--set: stages.train.remove_unused_columns:") and "set by prefkit" in msg


def test_more_than_one_round_needs_an_explicit_reference(tmp_path):
    p = _edited(tmp_path, "    reference: initial", "")
    msg = recipe_error(p)
    assert msg.startswith(f"{p}:{line_of(p, '  train:', exact=True)}: stages.train: with more than one round")
    assert load_recipe(p, rounds=1).rounds == 1


def test_overrides_are_checked_and_named(tmp_path):
    assert recipe_error(TOY, overrides=["train.bta=1"]).startswith("--set: stages.train.bta: unknown key (did you mean beta?)")
    r = load_recipe(TOY, overrides=["train.beta=0.05", "rounds=3", "pair.ties=keep"])
    assert r.stages["train"]["beta"] == 0.05 and r.rounds == 3 and r.stages["pair"]["ties"] == "keep"


def test_stage_order_and_yaml_syntax(tmp_path):
    text = TOY.read_text()
    moved = text.replace("  pair: {method: best-vs-worst, ties: drop}\n", "")
    moved = moved.replace("  evaluate:", "  pair: {method: best-vs-worst}\n  evaluate:")
    p = _write(tmp_path, moved)
    assert "stages run in this order" in recipe_error(p)
    p = _write(tmp_path, "name: x\nstages: {generate: {n: 2}\n")
    assert recipe_error(p).startswith(f"{p}:3: not valid YAML")


def test_schema_is_read_from_the_options_objects():
    """Every field of the options objects appears in the schema, with its default (one spelling)."""
    import dataclasses

    from prefkit.evaluate.options import EvaluateOptions
    from prefkit.relabel import RelabelOptions
    from prefkit.select import SelectOptions, available_metrics

    relabel = STAGES["relabel"].options()
    for f in dataclasses.fields(RelabelOptions):
        if f.name not in STAGES["relabel"].exclude:
            assert relabel[f.name].default == f.default
    select = STAGES["select"].options()
    assert select["metric"].choices == tuple(available_metrics())
    assert set(select) >= {f.name for f in dataclasses.fields(SelectOptions)} - set(STAGES["select"].exclude)
    assert {"n", "temperature", "top_p", "max_new_tokens"} <= set(STAGES["generate"].options())
    evaluate = STAGES["evaluate"].options()
    for f in dataclasses.fields(EvaluateOptions):
        if f.name in STAGES["evaluate"].include:
            assert evaluate[f.name].default == f.default


def test_cli_bad_recipe_exits_2_with_one_line(tmp_path):
    p = _edited(tmp_path, "ties: drop", "ties: sometimes")
    proc = subprocess.run([sys.executable, "-m", "prefkit", "run", str(p)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"prefkit run: error: {p}:{line_of(p, 'sometimes')}: stages.pair.ties: "
                                   "'sometimes' is not one of drop, keep")
    assert not (tmp_path / "runs").exists()


def test_dry_run_plans_a_recipe_whose_hub_prompts_are_not_cached(tmp_path):
    """A paper-scale recipe's --dry-run reads hub prompts from the local cache only: one that is not
    there stands for itself (no network, no retries), and the plan still lists every step."""
    from prefkit.pipeline import run

    p = _edited(tmp_path, "train: {build: prefkit.toy.recipes:prompts, args: {n: 96, seed: 1000}, per_round: 48}",
                "train: {dataset: prefkit-test/not-on-this-machine, split: train_prefs, per_round: 48}")
    res = run(load_recipe(p), tmp_path / "run", dry_run=True,
              log=lambda msg: None)
    labels = [f"round-{e['round']}/{e['stage']}" for e in res["steps"]]
    assert labels[:3] == ["round-0/evaluate", "round-1/generate", "round-1/score"]
    assert res["steps"][1]["status"] == "to run" and res["steps"][2]["status"] == "waiting"
    assert not (tmp_path / "run").exists()
