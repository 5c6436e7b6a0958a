"""Resume reproduces the uninterrupted loss curve (and eps-DPO's base beta); on_invalid=error names
the row and field; LoRA uses the adapter-disabled base model as its reference; per-pair weights."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from transformers import TrainerCallback

from train_helpers import base_config, make_pairs, write_jsonl


def _report(out):
    return json.loads((Path(out) / "prefkit_train_report.json").read_text())


def _logs(out):
    return {h["step"]: h for h in _report(out)["log_history"] if "loss" in h}


class _StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.step:
            control.should_training_stop = True


@pytest.mark.parametrize("loss_type", ["sigmoid", "eps-dpo"])
def test_resume_reproduces_uninterrupted_loss_curve(tiny_model_dir, tmp_path, loss_type):
    """Stopped after step 3 and resumed from its checkpoint, a run logs the same steps 4-6 as an
    uninterrupted one (gradient accumulation 2): sigmoid with the precomputed (cached) reference,
    and eps-DPO, whose own state (the base beta) must survive too."""
    from prefkit.train import train_dpo

    data = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(24))
    kw = dict(loss_type=loss_type, beta=0.1, eps=0.05, max_steps=6, save_steps=3, per_device_train_batch_size=2,
              gradient_accumulation_steps=2, learning_rate=5e-3)
    keys = ["loss", "rewards/margins", "logps/chosen"] + (["beta/base"] if loss_type == "eps-dpo" else [])
    full = _logs(train_dpo(base_config(tiny_model_dir, data, tmp_path / "full", **kw)))
    part_dir = tmp_path / "part"
    stopped = _logs(train_dpo(base_config(tiny_model_dir, data, part_dir, **kw), callbacks=[_StopAt(3)]))
    assert sorted(stopped) == [1, 2, 3] and (part_dir / "checkpoint-3").is_dir()
    resumed_out = train_dpo(base_config(tiny_model_dir, data, part_dir, resume_from_checkpoint="auto", **kw))
    rep = _report(resumed_out)
    assert rep["resumed_from"].endswith("checkpoint-3")
    resumed = _logs(resumed_out)
    assert sorted(resumed) == [1, 2, 3, 4, 5, 6]
    for step in (4, 5, 6):
        for key in keys:
            assert resumed[step][key] == pytest.approx(full[step][key], abs=1e-5), (step, key)
    assert len({round(full[s]["loss"], 6) for s in full}) > 1   # the curve moves
    if loss_type == "eps-dpo":
        assert len({full[s]["beta/base"] for s in full}) > 1   # the base beta actually moved
    else:
        assert rep["reference"]["mode"].startswith("precomputed")


def _bad_rows():
    rows = make_pairs(8)
    long_answer = ", ".join(["banana"] * 60)
    rows.append({"prompt": [{"role": "user", "content": "List bananas."}],
                 "chosen": [{"role": "assistant", "content": long_answer}],
                 "rejected": [{"role": "assistant", "content": "no"}]})                      # over max_length
    rows.append({"prompt": [{"role": "user", "content": "Say something."}],
                 "chosen": [{"role": "assistant", "content": ""}],
                 "rejected": [{"role": "assistant", "content": "no"}]})                      # empty response
    rows.append({"prompt": [{"role": "user", "content": "Sort: " + ", ".join(["cherry"] * 40)}],
                 "chosen": [{"role": "assistant", "content": "cherry"}],
                 "rejected": [{"role": "assistant", "content": "no"}]})                      # prompt over limit
    return rows


def test_bad_input_error_mode_names_row_and_field(tiny_model_dir, tmp_path):
    from prefkit.errors import DataError
    from prefkit.train import train_dpo

    data = write_jsonl(tmp_path / "bad.jsonl", _bad_rows())
    with pytest.raises(DataError, match=r"line 10, field .chosen"):
        train_dpo(base_config(tiny_model_dir, data, tmp_path / "out", on_invalid="error"))


def test_lora_reference_is_the_adapter_disabled_base(tiny_model_dir, tmp_path):
    from prefkit.train import train_dpo

    data = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(8))
    out = train_dpo(base_config(tiny_model_dir, data, tmp_path / "lora", use_peft=True, lora_r=4, lora_alpha=8,
                                lora_dropout=0.0, precompute_ref_log_probs=False, max_steps=3, learning_rate=1e-2,
                                per_device_train_batch_size=4))
    rep = _report(out)
    assert rep["reference"]["mode"] == "live: the adapter-disabled base model"
    logs = _logs(out)
    # LoRA starts as the identity (B = 0): policy == adapter-disabled reference at step 1
    assert logs[1]["loss"] == pytest.approx(math.log(2), abs=1e-5) and logs[1]["rewards/margins"] == pytest.approx(0, abs=1e-5)
    assert logs[3]["rewards/margins"] != pytest.approx(0, abs=1e-6)
    assert (Path(out) / "adapter_config.json").is_file()


def test_weight_column_scales_the_loss(tiny_model_dir, tmp_path):
    from prefkit.train import train_dpo

    rows = [dict(r, weight=2.0) for r in make_pairs(8)]
    data = write_jsonl(tmp_path / "w.jsonl", rows)
    out = train_dpo(base_config(tiny_model_dir, data, tmp_path / "w", max_steps=1))
    assert _logs(out)[1]["loss"] == pytest.approx(2 * math.log(2), abs=1e-4)
