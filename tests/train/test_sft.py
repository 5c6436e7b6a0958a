"""Supervised fine-tuning (prefkit.train.train_sft): the loss against a hand computation on a tiny
real Llama (prompt tokens masked, packed and padded forwards equal), training lowers the
completion NLL, max_steps, and the conditioning spec travelling with goal-conditioned rows."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
import torch

from train_helpers import WORDS, write_jsonl

from prefkit.tokenize import PairCollator, encode_pairs
from prefkit.train import SFTConfig, train_sft
from prefkit.train.sft_trainer import completion_forward, read_completions

ROWS = [
    {"prompt": [{"role": "user", "content": "Sort 3 1 2."}], "completion": [{"role": "assistant", "content": "1 2 3"}]},
    {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "List fruit you like."}],
     "completion": [{"role": "assistant", "content": "apple, banana, cherry and a date"}]},
    {"prompt": [{"role": "user", "content": "Count to five."}],
     "completion": [{"role": "assistant", "content": "one two three four five"}]},
]


def _tiny(tok, seed=0):
    from prefkit.toy.tiny import tiny_causal_lm

    return tiny_causal_lm(tok, hidden=32, layers=2, heads=2, seed=seed)


def _hand_nll(model, tok, rows) -> float:
    """Sum over rows of -log p(completion token | everything before it) from an unpadded plain HF
    forward of the whole chat-templated conversation, over the completion tokens only (the tokens
    after the rendering of the prompt with its generation header), divided by their number."""
    total, n = 0.0, 0
    for r in rows:
        prompt = tok.apply_chat_template(r["prompt"], tokenize=True, add_generation_prompt=True, return_dict=True)
        full = tok.apply_chat_template(r["prompt"] + r["completion"], tokenize=True, return_dict=True)
        p, ids = list(prompt["input_ids"]), list(full["input_ids"])
        assert ids[:len(p)] == p and len(ids) > len(p)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0].double()
        logp = torch.log_softmax(logits, -1)
        for t in range(len(p), len(ids)):
            total -= float(logp[t - 1, ids[t]])
            n += 1
    return total / n


def _batch(tok, rows):
    enc = encode_pairs(read_completions(datasets.Dataset.from_list(rows)), tok, max_length=None,
                       max_prompt_length=None)
    return PairCollator.for_tokenizer(tok, meta_columns=())(list(enc))


@pytest.mark.parametrize("mode", ["packed", "padded"])
def test_sft_loss_equals_a_hand_computation(mode):
    from prefkit.toy.tiny import build_tokenizer

    tok = build_tokenizer(template="chatml")
    model = _tiny(tok)
    batch = _batch(tok, ROWS)
    with torch.no_grad():
        logps, lengths = completion_forward(model, batch, forward_mode=mode)
    got = float(-logps.sum() / lengths.sum())
    assert got == pytest.approx(_hand_nll(model, tok, ROWS), rel=1e-5)
    # prompt tokens are masked: a different prompt length changes nothing but the conditioning
    assert int(lengths.sum()) == sum(
        len(tok.apply_chat_template(r["prompt"] + r["completion"], tokenize=True, return_dict=True)["input_ids"])
        - len(tok.apply_chat_template(r["prompt"], tokenize=True, add_generation_prompt=True,
                                      return_dict=True)["input_ids"]) for r in ROWS)


def test_packed_and_padded_give_equal_values_and_gradients():
    from prefkit.toy.tiny import build_tokenizer

    tok = build_tokenizer(template="chatml")
    grads = {}
    for mode in ("packed", "padded"):
        model = _tiny(tok)
        logps, lengths = completion_forward(model, _batch(tok, ROWS), forward_mode=mode)
        loss = -logps.sum() / lengths.sum()
        loss.backward()
        grads[mode] = (float(loss), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert grads["packed"][0] == pytest.approx(grads["padded"][0], rel=1e-5)
    assert torch.allclose(grads["packed"][1], grads["padded"][1], atol=1e-6, rtol=1e-4)


def test_rows_missing_a_completion_are_dropped_or_named(tmp_path):
    from prefkit.errors import DataError
    from prefkit.report import StageReport

    f = write_jsonl(tmp_path / "sft.jsonl", [ROWS[0], {"prompt": "x"}, ROWS[1]])
    rep = StageReport("read")
    ds = read_completions(f, report=rep)
    assert len(ds) == 2 and rep.dropped == {"missing or invalid completion": 1}
    assert ds[0]["chosen"] == ds[0]["rejected"] == ROWS[0]["completion"]
    with pytest.raises(DataError, match=r"sft.jsonl, line 2, field 'completion'"):
        read_completions(f, on_invalid="error")


def _fruit_rows(n: int) -> list[dict]:
    import random

    rng = random.Random(0)
    rows = []
    for _ in range(n):
        items = rng.sample(WORDS, rng.randint(2, 4))
        rows.append({"prompt": [{"role": "user", "content": f"Sort these words: {', '.join(items)}."}],
                     "completion": [{"role": "assistant", "content": ", ".join(sorted(items))}]})
    return rows


def test_training_lowers_the_completion_nll_and_stops_at_max_steps(tiny_model_dir, tmp_path):
    from prefkit.models import load_causal_lm
    from prefkit.relabel import make_spec

    rows = _fruit_rows(16)
    f = write_jsonl(tmp_path / "sft.jsonl", rows)
    spec = make_spec(placement="system")
    spec.write_beside(f)     # goal-conditioned rows carry their spec, as prefkit.relabel.sft_rows_file writes it

    def nll(model_dir) -> float:
        model, tok = load_causal_lm(model_dir)
        with torch.no_grad():
            logps, lengths = completion_forward(model, _batch(tok, rows))
        return float(-logps.sum() / lengths.sum())

    before = nll(tiny_model_dir)
    out = train_sft(SFTConfig(model_name_or_path=tiny_model_dir, train_file=f, output_dir=str(tmp_path / "out"),
                              per_device_train_batch_size=4, max_steps=6, learning_rate=3e-3, logging_steps=1,
                              save_strategy="no", precision="fp32", disable_tqdm=True, seed=0))
    rep = json.loads((Path(out) / "prefkit_train_report.json").read_text())
    assert rep["kind"] == "sft" and rep["global_step"] == 6
    losses = [h["loss"] for h in rep["log_history"] if "loss" in h]
    assert len(losses) == 6
    after = nll(out)
    assert after < before - 0.5, (before, after)
    assert json.loads((Path(out) / "prefkit_conditioning.json").read_text()) == spec.to_dict()


def test_sft_config_rejects_preference_options():
    from prefkit.errors import ConfigError
    from prefkit.train import load_config

    with pytest.raises(ConfigError, match="unknown option 'beta' for SFTConfig"):
        load_config(SFTConfig, overrides=["beta=0.1"])
    with pytest.raises(ConfigError, match="forward_mode must be one of packed, padded"):
        load_config(SFTConfig, overrides=["forward_mode=rows"], model_name_or_path="m", train_file="f").check()


def test_cli_train_sft(tiny_model_dir, tmp_path):
    from helpers import run_prefkit

    f = write_jsonl(tmp_path / "sft.jsonl", _fruit_rows(8))
    proc = run_prefkit("train", "sft", f, str(tmp_path / "out"), "--model", tiny_model_dir, "--max-steps", "2",
                       "--per-device-train-batch-size", "4", "--learning-rate", "1e-3", "--save-strategy", "no",
                       "--precision", "fp32")
    assert proc.returncode == 0, proc.stderr
    assert "prefkit train sft: completion-only NLL, 2 steps" in proc.stdout
    bad = run_prefkit("train", "sft", f, str(tmp_path / "bad"), "--model", tiny_model_dir, "--beta", "0.1")
    assert bad.returncode == 2 and "unrecognized arguments: --beta" in bad.stderr


def test_lora_sft_trains_the_adapter_only(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    f = write_jsonl(tmp_path / "sft.jsonl", _fruit_rows(8))
    out = train_sft(SFTConfig(model_name_or_path=tiny_model_dir, train_file=f, output_dir=str(tmp_path / "lora"),
                              per_device_train_batch_size=4, max_steps=2, learning_rate=1e-2, use_peft=True,
                              lora_r=4, save_strategy="no", precision="fp32", disable_tqdm=True))
    weights = load_file(str(Path(out) / "adapter_model.safetensors"))
    assert weights and all("lora_" in k for k in weights)
    assert any(float(v.abs().sum()) > 0 for k, v in weights.items() if "lora_B" in k)   # B starts at 0
