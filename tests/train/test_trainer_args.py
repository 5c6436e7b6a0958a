"""TrainingArguments fields prefkit has no option for pass through to the Trainer; report_to
integrations are checked at start; `prefkit train --help` describes every option once."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from prefkit.errors import ConfigError
from prefkit.train.config import DPOConfig, RMConfig, load_config, training_arguments

SRC = str(Path(__file__).resolve().parents[2] / "src")
REQUIRED = ["model_name_or_path=m", "train_file=t.jsonl"]


def test_trainer_fields_from_yaml_and_set_reach_the_trainer(tmp_path, monkeypatch):
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("beta: 0.2\nhub_model_id: me/ra-model\npush_to_hub: false\ntorch_compile: true\n"
                      "use_liger_kernel: false\nfsdp: ''\nlogging_dir: " + str(tmp_path / "tb") + "\n")
    cfg = load_config(DPOConfig, recipe, overrides=REQUIRED + ["save_only_model=true", "logging_first_step=true"])
    assert cfg.beta == 0.2
    assert cfg.trainer_args == {"hub_model_id": "me/ra-model", "push_to_hub": False, "torch_compile": True,
                                "use_liger_kernel": False, "fsdp": "", "logging_dir": str(tmp_path / "tb"),
                                "save_only_model": True, "logging_first_step": True}
    args = training_arguments(cfg)
    assert args.hub_model_id == "me/ra-model" and args.torch_compile is True and args.save_only_model is True
    assert args.logging_first_step is True and args.remove_unused_columns is False
    # transformers 5 reads the TensorBoard directory from the environment
    assert os.environ["TENSORBOARD_LOGGING_DIR"] == str(tmp_path / "tb")
    # the saved config round-trips, pass-through included
    again = load_config(DPOConfig, cfg.save(tmp_path / "saved.yaml"))
    assert again.trainer_args == cfg.trainer_args


def test_a_trainer_field_that_cannot_work_is_one_error_at_start():
    cfg = load_config(DPOConfig, overrides=REQUIRED + ["deepspeed=ds_zero3.json"])
    try:
        import deepspeed  # noqa: F401
        pytest.skip("deepspeed is installed here")
    except ImportError:
        pass
    with pytest.raises(ConfigError, match=r"TrainingArguments \(passed through: deepspeed\): .*deepspeed"):
        training_arguments(cfg)


@pytest.mark.parametrize("override, message", [
    ("deepspeeed=ds.json", r"unknown option 'deepspeeed' .*did you mean deepspeed\?"),
    ("remove_unused_columns=true", "'remove_unused_columns' is set by prefkit"),
    ("trainer_args={puhs_to_hub: true}", r"'puhs_to_hub' is not a transformers.TrainingArguments field; "
                                          r"did you mean push_to_hub\?"),
])
def test_names_that_are_neither_prefkit_nor_trainer_fields_are_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(RMConfig, overrides=REQUIRED + [override])


def _missing_integration() -> str:
    from transformers.integrations.integration_utils import get_available_reporting_integrations

    from prefkit.train.config import INTEGRATION_PACKAGE

    missing = sorted(set(INTEGRATION_PACKAGE) - set(get_available_reporting_integrations()))
    if not missing:
        pytest.skip("every reporting integration is installed here")
    return "wandb" if "wandb" in missing else missing[0]


def test_a_report_to_integration_that_is_not_installed_fails_at_start_in_one_line(tmp_path):
    name = _missing_integration()
    argv = [sys.executable, "-m", "prefkit", "train", "dpo", str(tmp_path / "absent.jsonl"), str(tmp_path / "o"),
            "--model", str(tmp_path / "no-model"), "--report-to", name]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", "")))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        f"prefkit train: error: report_to: '{name}' is not installed "
        f"(pip install {name.replace('_', '-') if name != 'azure_ml' else 'azureml-core'}), or set report_to: none"]


def test_an_unknown_report_to_integration_is_named():
    cfg = load_config(DPOConfig, overrides=REQUIRED + ["report_to=[wandbb]"])
    with pytest.raises(ConfigError, match=r"unknown integration 'wandbb'; did you mean wandb"):
        training_arguments(cfg)


@pytest.mark.parametrize("kind, cls", [("dpo", DPOConfig), ("rm", RMConfig)])
def test_train_help_describes_every_option_once(kind, cls):
    import dataclasses

    from prefkit.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["train"]
    kp = next(a for a in sub._actions if a.dest == "train_kind").choices[kind]
    text = kp.format_help()
    for action in kp._actions:
        assert action.help and action.help.strip(), action.option_strings or action.dest
        # one default at most, and never argparse's own "(default: None)"
        assert action.help.count("(default:") <= 1, action.help
    assert "(default: None)" not in text and not re.search(r"\(default: [^)]*\)\s*\(default:", text)
    flags = {s for a in kp._actions for s in a.option_strings}
    for f in dataclasses.fields(cls):
        if f.name not in ("train_file", "output_dir", "train_split", "trainer_args"):
            assert "--" + f.name.replace("_", "-") in flags
    assert "passes through to the Trainer" in text


def test_liger_kernel_without_the_package_fails_at_start():
    from transformers.utils import is_liger_kernel_available

    if is_liger_kernel_available():
        pytest.skip("liger-kernel is installed here")
    cfg = load_config(DPOConfig, overrides=REQUIRED + ["use_liger_kernel=true"])
    with pytest.raises(ConfigError, match=r"use_liger_kernel: liger-kernel is not installed"):
        training_arguments(cfg)
