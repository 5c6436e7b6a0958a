"""`prefkit train rm` on SmolLM2-135M-Instruct equals TRL 1.16's RewardTrainer step for step:
the same sequence-classification model (one randomly initialised head, shared by both), the
same 4 pairs, optimiser, schedule and seed; loss, accuracy, reward margin, mean reward and
gradient norm agree at both steps."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
LR = 1e-5


@pytest.fixture(scope="module")
def reward_model(smollm2_dir):
    from transformers import set_seed

    from prefkit.models import load_pretrained

    set_seed(0)   # the score head is new: one draw, copied to both trainers
    return load_pretrained(smollm2_dir, kind="sequence-classification", dtype="float32", num_labels=1)


def test_reward_model_equals_trl(tmp_path, reward_model, real_tokenizer, pairs):
    from trl import RewardConfig, RewardTrainer

    from prefkit.train import train_rm
    from prefkit.train.config import RMConfig, load_config

    args = RewardConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=len(pairs), max_steps=2,
                        learning_rate=LR, lr_scheduler_type="linear", max_length=1024, report_to=[], use_cpu=True,
                        bf16=False, logging_steps=1, save_strategy="no", seed=42, disable_tqdm=True,
                        gradient_checkpointing=False)
    trl = RewardTrainer(model=copy.deepcopy(reward_model).train(), args=args, train_dataset=pairs,
                        processing_class=real_tokenizer)
    trl.train()

    cfg = load_config(RMConfig, overrides=dict(
        output_dir=str(tmp_path / "pk"), max_steps=2, learning_rate=LR, per_device_train_batch_size=len(pairs),
        logging_steps=1, save_strategy="no", disable_tqdm=True, eval_split_ratio=0.0, seed=42))
    out = train_rm(cfg, model=copy.deepcopy(reward_model).train(), tokenizer=real_tokenizer, train_dataset=pairs)
    report = json.loads((Path(out) / "prefkit_train_report.json").read_text())

    ours = [h for h in report["log_history"] if "loss" in h and "train_runtime" not in h]
    theirs = [h for h in trl.state.log_history if "loss" in h and "train_runtime" not in h]
    assert len(ours) == len(theirs) == 2
    for step, (a, b) in enumerate(zip(ours, theirs), start=1):
        assert abs(a["loss"] - b["loss"]) <= 2e-4, (step, a["loss"], b["loss"])
        assert a["accuracy"] == pytest.approx(b["accuracy"], abs=1e-9), step
        assert abs(a["rewards/margins"] - b["margin"]) <= 1e-3, (step, a, b)
        assert abs((a["rewards/chosen"] + a["rewards/rejected"]) / 2 - b["mean_reward"]) <= 1e-3, (step, a, b)
        assert abs(a["grad_norm"] - b["grad_norm"]) <= 2e-3 * b["grad_norm"], (step, a["grad_norm"], b["grad_norm"])
    assert ours[0]["loss"] != ours[1]["loss"]   # the second step ran on updated weights
