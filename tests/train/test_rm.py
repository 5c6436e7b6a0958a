"""Bradley-Terry reward-model training: learns a tiny task (pairwise accuracy rises on held-out
pairs), margin/centring reach the loss, CLI end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch

from helpers import save_tiny
from train_helpers import make_pairs, write_jsonl


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory, chatml_tokenizer):
    return save_tiny(tmp_path_factory.mktemp("tiny_rm"), chatml_tokenizer, reward_model=True)


def _accuracy(model_dir, tok, rows):
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification

    from prefkit.tokenize import PairCollator, encode_pairs
    from prefkit.train.reward_trainer import pair_rewards, pairwise_accuracy

    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    enc = encode_pairs(Dataset.from_list(rows), tok, max_length=64, max_prompt_length=None)
    batch = PairCollator.for_tokenizer(tok)([enc[i] for i in range(len(enc))])
    with torch.no_grad():
        return pairwise_accuracy(*pair_rewards(model, batch))


def test_rm_learns_and_reports_pairwise_accuracy(rm_dir, chatml_tokenizer, tmp_path):
    from prefkit.cli import main

    train = write_jsonl(tmp_path / "train.jsonl", make_pairs(48, seed=1))
    held_out = make_pairs(24, seed=2)
    ev = write_jsonl(tmp_path / "eval.jsonl", held_out)
    before = _accuracy(rm_dir, chatml_tokenizer, held_out)
    out = tmp_path / "rm"
    rc = main(["train", "rm", train, "-o", str(out), "--model", rm_dir, "--eval-file", ev,
               "--max-steps", "30", "--per-device-train-batch-size", "8", "--learning-rate", "3e-3",
               "--logging-steps", "10", "--save-steps", "1000", "--max-length", "64", "--precision", "fp32",
               "--disable-tqdm", "--set", "center_rewards_coefficient=0.01", "--seed", "0"])
    assert rc == 0
    rep = json.loads((out / "prefkit_train_report.json").read_text())
    after = _accuracy(str(out), chatml_tokenizer, held_out)
    assert rep["eval_accuracy"] == pytest.approx(after, abs=1e-6)   # the report is the saved model's accuracy
    assert rep["initial_eval"]["initial_accuracy"] == pytest.approx(before, abs=1e-6)   # and the initial model's
    from transformers import AutoModelForSequenceClassification

    assert AutoModelForSequenceClassification.from_pretrained(out).config.num_labels == 1
    print(f"held-out pairwise accuracy: before {before:.3f}, after {after:.3f}")
    assert after >= 0.9 and after > before + 0.2, (before, after)
    assert rep["final_eval"]["eval_loss"] < math.log(2)


def test_margin_and_centring_reach_the_loss(rm_dir, chatml_tokenizer, tmp_path):
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification

    from prefkit.tokenize import DEFAULT_META_COLUMNS, PairCollator, encode_pairs
    from prefkit.train.config import RMConfig, training_arguments
    from prefkit.train.reward_trainer import MARGIN, RewardTrainer, pair_rewards

    rows = [dict(r, margin=float(i % 3)) for i, r in enumerate(make_pairs(6))]
    enc = encode_pairs(Dataset.from_list(rows), chatml_tokenizer, max_length=64, max_prompt_length=None)
    batch = PairCollator.for_tokenizer(chatml_tokenizer, meta_columns=tuple(DEFAULT_META_COLUMNS) + (MARGIN,))(
        [enc[i] for i in range(len(enc))])
    model = AutoModelForSequenceClassification.from_pretrained(rm_dir).eval()
    cfg = RMConfig(output_dir=str(tmp_path / "o"), precision="fp32", center_rewards_coefficient=0.5,
                   report_to=["none"])
    trainer = RewardTrainer(model=model, args=training_arguments(cfg), prefkit_config=cfg)
    with torch.no_grad():
        loss, metrics = trainer.pair_loss(model, batch)
        rc, rr = pair_rewards(model, batch)
    m = batch["meta"][MARGIN]
    want = (-torch.nn.functional.logsigmoid(rc - rr - m) + 0.5 * (rc + rr) ** 2).mean()
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)
    assert metrics["rewards/margins"] == pytest.approx((rc - rr).mean().item(), rel=1e-6)
