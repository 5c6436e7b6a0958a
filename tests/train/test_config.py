"""YAML + override parsing of training configs, and the CLI that builds them."""

from __future__ import annotations

import pytest

from prefkit.errors import ConfigError
from prefkit.train.config import DPOConfig, RMConfig, load_config


def _yaml(tmp_path, text):
    p = tmp_path / "recipe.yaml"
    p.write_text(text)
    return p


def test_yaml_then_overrides_win(tmp_path):
    p = _yaml(tmp_path, "model_name_or_path: m\ntrain_file: d.jsonl\nbeta: 0.01\nloss_type: ipo\n"
                        "report_to: [tensorboard]\nuse_peft: false\nmax_steps: 7\n")
    cfg = load_config(DPOConfig, p, overrides=["beta=0.05", "use_peft=true", "lora_target_modules=[q_proj, v_proj]"])
    assert cfg.beta == 0.05 and isinstance(cfg.beta, float)
    assert cfg.loss_type == "ipo" and cfg.max_steps == 7
    assert cfg.use_peft is True
    assert cfg.report_to == ["tensorboard"]
    assert cfg.lora_target_modules == ["q_proj", "v_proj"]
    # untouched fields keep their defaults
    assert cfg.label_smoothing == DPOConfig().label_smoothing


def test_string_values_are_coerced_to_field_types():
    cfg = load_config(DPOConfig, overrides={"beta": "0.2", "max_steps": "3", "bf16": "no",
                                            "report_to": "wandb,tensorboard", "resume_from_checkpoint": "none"})
    assert cfg.beta == 0.2 and cfg.max_steps == 3 and cfg.bf16 is False
    assert cfg.report_to == ["wandb", "tensorboard"]
    assert cfg.resume_from_checkpoint is None


@pytest.mark.parametrize("override, message", [
    (["betta=0.1"], "did you mean beta"),
    (["max_steps=1.5"], "max_steps: expected an integer"),
    (["use_peft=maybe"], "use_peft: expected true or false"),
    (["beta"], "not of the form key=value"),
])
def test_bad_overrides_name_the_problem(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(DPOConfig, overrides=override)


def test_unknown_key_in_yaml_names_file(tmp_path):
    p = _yaml(tmp_path, "model_name_or_path: m\nlearning_rat: 1e-6\n")
    with pytest.raises(ConfigError, match=r"recipe.yaml.*learning_rat.*learning_rate"):
        load_config(DPOConfig, p)


def test_check_rejects_inconsistent_values():
    base = dict(model_name_or_path="m", train_file="d.jsonl")
    DPOConfig(**base).check()
    for bad, msg in [(dict(beta=0), "beta must be > 0"), (dict(max_prompt_length=2048), "max_prompt_length"),
                     (dict(bf16=True, fp16=True), "both set"), (dict(on_long="explode"), "on_long"),
                     (dict(beta_update="fast"), "beta_update")]:
        with pytest.raises(ConfigError, match=msg):
            DPOConfig(**base, **bad).check()
    with pytest.raises(ConfigError, match="model_name_or_path is required"):
        DPOConfig(train_file="d.jsonl").check()


def test_rm_config_fields():
    cfg = load_config(RMConfig, overrides=["center_rewards_coefficient=0.01", "margin_column=m"])
    assert cfg.center_rewards_coefficient == 0.01 and cfg.margin_column == "m"
    with pytest.raises(ConfigError, match="unknown option 'beta'"):
        load_config(RMConfig, overrides=["beta=0.1"])


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(DPOConfig, overrides=["beta=0.03", "report_to=[wandb]", "lora_r=8"])
    path = cfg.save(tmp_path / "cfg.yaml")
    assert load_config(DPOConfig, path) == cfg


def test_cli_flags_yaml_and_set_priority(tmp_path):
    from prefkit.cli import build_parser
    from prefkit.commands.train import config_from_args

    p = _yaml(tmp_path, "model_name_or_path: from-yaml\nbeta: 0.01\nlearning_rate: 5.0e-7\nloss_type: ipo\n")
    args = build_parser().parse_args([
        "train", "dpo", "pairs.jsonl", "-o", str(tmp_path / "out"), "--config", str(p),
        "--beta", "0.2", "--set", "beta=0.05", "--loss-type", "hinge", "--use-peft", "--resume-from-checkpoint"])
    cfg = config_from_args(args)
    assert cfg.train_file == "pairs.jsonl" and cfg.output_dir == str(tmp_path / "out")
    assert cfg.model_name_or_path == "from-yaml"
    assert cfg.beta == 0.05            # --set beats the flag, which beats the YAML
    assert cfg.loss_type == "hinge" and cfg.learning_rate == 5e-7
    assert cfg.use_peft is True and cfg.resume_from_checkpoint == "auto"


def test_example_recipes_parse():
    from pathlib import Path

    recipes = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))
    assert recipes, "examples/*.yaml recipes are missing"
    for r in recipes:
        cls = RMConfig if r.name.startswith("rm_") else DPOConfig
        load_config(cls, r)


def test_prepare_run_leaves_the_callers_config_alone(tiny_model_dir, tmp_path):
    """In-memory inputs are named in the run's own copy of the config (what the report shows);
    the caller's DPOConfig keeps its empty fields, so it can be reused for another run."""
    import dataclasses

    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    from train_helpers import base_config, make_pairs

    cfg = base_config("", None, tmp_path / "out", tokenizer_name_or_path=tiny_model_dir)
    before = dataclasses.asdict(cfg)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    from prefkit.train.prepare import prepare_run

    run = prepare_run(cfg, model=model, train_dataset=Dataset.from_list(make_pairs(4)))
    assert dataclasses.asdict(cfg) == before
    assert run.cfg is not cfg
    assert run.cfg.model_name_or_path == tiny_model_dir  # the in-memory model's own _name_or_path
    assert run.cfg.train_file == "<in-memory dataset>"
    assert len(run.train_enc) == 4


def test_every_config_field_has_its_help_in_metadata():
    """The one description of each option: the CLI flag's help reads it (a missing one fails here,
    not at parser build time)."""
    import dataclasses

    for cls in (DPOConfig, RMConfig):
        missing = [f.name for f in dataclasses.fields(cls) if not f.metadata.get("help")]
        assert missing == [], f"{cls.__name__} fields without metadata['help']: {missing}"


def test_cli_flags_show_the_field_help_and_default(capsys):
    from prefkit.cli import main

    with pytest.raises(SystemExit):
        main(["train", "dpo", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--beta BETA DPO beta (eps-DPO: the initial base beta) (default: 0.1)" in out
    assert "simpo (reference-free): SimPO" in out and "gamma (default 0.5)" in out
    assert "eps-dpo: eps-DPO: the sigmoid loss with a per-pair beta" in out


def test_loss_options_from_the_command_line_and_the_trl_named_fields():
    cfg = load_config(DPOConfig, overrides={"loss_options": "gamma=0.3,label_smoothing=0.1", "loss_type": "simpo"})
    assert cfg.loss_options == {"gamma": 0.3, "label_smoothing": 0.1}
    assert cfg.loss_option_values() == {"gamma": 0.3, "label_smoothing": 0.1}
    # label_smoothing / simpo_gamma (TRL's names) feed the loss's options; loss_options wins
    cfg = load_config(DPOConfig, overrides={"simpo_gamma": 1.0, "label_smoothing": 0.2,
                                            "loss_options": {"gamma": 2.0}})
    assert cfg.loss_option_values() == {"gamma": 2.0, "label_smoothing": 0.2}
    assert DPOConfig().loss_option_values() == {}
    with pytest.raises(ConfigError, match="loss_options: expected KEY=VALUE"):
        load_config(DPOConfig, overrides={"loss_options": "gamma"})
