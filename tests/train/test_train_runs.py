"""Trainer behaviour on real tiny models: every loss type wired, resume reproduces the loss curve,
bad input counted without a crash, and a reward model that learns."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from transformers import TrainerCallback

from train_helpers import base_config, make_pairs, train_losses, write_jsonl


def _report(out):
    return json.loads((Path(out) / "prefkit_train_report.json").read_text())


def test_each_loss_type_at_the_reference_point(tiny_model_dir, pairs_file, tmp_path):
    """At step 1 the policy equals the reference (margin 0), so each loss has a closed form; its
    value proves the configured loss (not another) is the one trained."""
    from prefkit.train import train_dpo

    beta, ls = 0.25, 0.1
    want = {"sigmoid": math.log(2), "robust": math.log(2), "hinge": 1.0, "ipo": (1 / (2 * beta)) ** 2}
    first = {}
    for loss_type, expected in want.items():
        cfg = base_config(tiny_model_dir, pairs_file, tmp_path / loss_type, max_steps=1, loss_type=loss_type,
                          beta=beta, label_smoothing=ls if loss_type in ("sigmoid", "robust") else 0.0)
        rep = _report(train_dpo(cfg))
        first[loss_type] = rep["log_history"][0]
        assert first[loss_type]["loss"] == pytest.approx(expected, rel=1e-4), loss_type
    # at margin 0 the loss gradients are d/dz = -beta/2 * (1 - 2ls) (cDPO) and -beta/2 / (1 - 2ls)
    # (robust): same direction, so the gradient norms stand in the ratio 1 / (1 - 2ls)^2
    ratio = first["robust"]["grad_norm"] / first["sigmoid"]["grad_norm"]
    assert ratio == pytest.approx(1 / (1 - 2 * ls) ** 2, rel=1e-3)
    # simpo is reference-free: no reference pass at all, and a finite loss
    rep = _report(train_dpo(base_config(tiny_model_dir, pairs_file, tmp_path / "simpo", max_steps=2,
                                        loss_type="simpo", beta=2.0, simpo_gamma=0.5)))
    assert rep["reference"]["mode"].startswith("none") and all(map(math.isfinite, train_losses(tmp_path / "simpo")))


class _StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kw):
        if state.global_step >= self.step:
            control.should_training_stop = True


def test_resume_reproduces_the_uninterrupted_loss_curve(tiny_model_dir, pairs_file, tmp_path):
    from prefkit.train import train_dpo

    kw = dict(max_steps=6, save_steps=3, per_device_train_batch_size=2, gradient_accumulation_steps=2)
    full = train_losses(train_dpo(base_config(tiny_model_dir, pairs_file, tmp_path / "full", **kw)))
    out = tmp_path / "resumed"
    train_dpo(base_config(tiny_model_dir, pairs_file, out, **kw), callbacks=[_StopAt(3)])
    assert (out / "checkpoint-3").is_dir() and len(train_losses(out)) == 3
    rep = _report(train_dpo(base_config(tiny_model_dir, pairs_file, out, resume_from_checkpoint="auto", **kw)))
    assert rep["resumed_from"].endswith("checkpoint-3")
    resumed = train_losses(out)
    assert len(full) == len(resumed) == 6
    assert resumed == pytest.approx(full, abs=1e-5)
    assert len(set(round(x, 6) for x in full)) > 1  # the curve moves


def test_bad_input_is_counted_never_a_crash(tiny_model_dir, tmp_path):
    from prefkit.train import train_dpo

    rows = make_pairs(8)
    long_text = " ".join(["banana"] * 80)
    rows.append({"prompt": [{"role": "user", "content": "Sort: " + long_text}],
                 "chosen": [{"role": "assistant", "content": "banana"}],
                 "rejected": [{"role": "assistant", "content": "apple"}]})           # prompt over the limit
    rows.append({"prompt": [{"role": "user", "content": "Sort: fig."}],
                 "chosen": [{"role": "assistant", "content": long_text}],
                 "rejected": [{"role": "assistant", "content": "fig"}]})           # pair over max_length
    rows.append({"prompt": [{"role": "user", "content": "Sort: plum."}],
                 "chosen": [{"role": "assistant", "content": ""}],
                 "rejected": [{"role": "assistant", "content": "plum"}]})          # empty response
    data = write_jsonl(tmp_path / "bad.jsonl", rows)

    lim = dict(max_length=96, max_prompt_length=48, max_steps=2)   # the 8 ordinary pairs fit
    rep = _report(train_dpo(base_config(tiny_model_dir, data, tmp_path / "trunc", **lim)))
    d = rep["data"]
    assert d["rows_in"] == 11 and d["rows_out"] == 10 and d["dropped"] == {"empty text": 1}
    assert "line 11, field 'chosen'" in d["examples"]["empty text"][0]
    assert d["notes"]["truncated_prompts"] == 1 and d["notes"]["truncated_chosen"] == 1
    assert all(map(math.isfinite, train_losses(tmp_path / "trunc")))

    rep = _report(train_dpo(base_config(tiny_model_dir, data, tmp_path / "drop", on_long="drop", **lim)))
    d = rep["data"]
    assert d["rows_out"] == 8 and d["dropped"] == {"empty text": 1, "prompt over max_prompt_length (on_long=drop)": 1,
                                                   "pair over max_length (on_long=drop)": 1}
    assert "truncated" in rep["summary"] and "dropped" in rep["summary"]


def test_reward_model_learns_a_learnable_task(tmp_path):
    """Chosen = the words sorted, rejected = reverse-sorted: held-out pairwise accuracy rises."""
    from prefkit.toy.tiny import build_tokenizer, tiny_reward_model
    from prefkit.train import RMConfig, train_rm

    d = tmp_path / "rm_init"
    tok = build_tokenizer(template="chatml")
    tiny_reward_model(tok, hidden=32, layers=2, heads=2, intermediate=64, max_position=256).save_pretrained(d)
    tok.save_pretrained(d)
    data = write_jsonl(tmp_path / "rm.jsonl", make_pairs(96, seed=1))
    cfg = RMConfig(model_name_or_path=str(d), train_file=data, output_dir=str(tmp_path / "rm"),
                   eval_split_ratio=0.25, per_device_train_batch_size=8, per_device_eval_batch_size=24,
                   num_train_epochs=4, learning_rate=3e-3, logging_steps=9, save_strategy="no",
                   max_length=64, precision="fp32", disable_tqdm=True, seed=0)
    rep = _report(train_rm(cfg))
    before, after = rep["initial_eval"]["initial_accuracy"], rep["final_eval"]["eval_accuracy"]
    assert after >= 0.9 and after > before + 0.2, (before, after)
    assert rep["final_eval"]["eval_rewards/margins"] > 0
    from transformers import AutoModelForSequenceClassification

    assert AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").config.num_labels == 1
