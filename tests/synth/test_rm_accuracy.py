"""Reward-model pairwise accuracy, checked against rewards computed by hand with the model."""

import json

import datasets
import pytest
import torch

from prefkit.cli import main
from prefkit.evaluate import rm_accuracy


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory):
    from prefkit.toy.tiny import build_tokenizer, tiny_reward_model

    tok = build_tokenizer(template="chatml")
    d = tmp_path_factory.mktemp("tiny-rm")
    tiny_reward_model(tok, hidden=32, layers=1, heads=2, seed=3).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def _pairs():
    rows = []
    words = ["apple", "banana", "cherry", "date", "fig", "grape", "kiwi", "lemon"]
    for i in range(12):
        rows.append({"prompt": [{"role": "user", "content": f"Name fruit {i}."}],
                     "chosen": [{"role": "assistant", "content": f"{words[i % 8]} is a fruit"}],
                     "rejected": [{"role": "assistant", "content": f"{words[(i * 3 + 1) % 8]} {i}"}],
                     "source": "a" if i < 7 else "b"})
    return rows


def _reward(model, tok, prompt, response):
    ids = tok.apply_chat_template(prompt + response, tokenize=True, return_dict=True)["input_ids"]
    with torch.no_grad():
        return float(model(input_ids=torch.tensor([ids])).logits[0, 0])


def test_accuracy_matches_hand_computed_rewards(rm_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    rows = _pairs()
    model = AutoModelForSequenceClassification.from_pretrained(rm_dir).eval()
    tok = AutoTokenizer.from_pretrained(rm_dir)
    wins = {"a": [], "b": []}
    for r in rows:
        m = _reward(model, tok, r["prompt"], r["chosen"]) - _reward(model, tok, r["prompt"], r["rejected"])
        wins[r["source"]].append(m > 0)
    res = rm_accuracy(str(rm_dir), datasets.Dataset.from_list(rows), batch_size=5, progress=False)
    allw = wins["a"] + wins["b"]
    assert res["n"] == 12 and res["correct"] == sum(allw) and res["ties"] == 0
    assert res["accuracy"] == pytest.approx(sum(allw) / 12)
    assert res["per_source"]["a"]["accuracy"] == pytest.approx(sum(wins["a"]) / 7)
    assert res["per_source"]["b"]["n"] == 5
    # swapping chosen and rejected mirrors the accuracy
    swapped = [dict(r, chosen=r["rejected"], rejected=r["chosen"]) for r in rows]
    res2 = rm_accuracy(str(rm_dir), datasets.Dataset.from_list(swapped), progress=False)
    assert res2["accuracy"] == pytest.approx(1 - res["accuracy"])


def test_cli_eval_rm(rm_dir, tmp_path, capsys):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _pairs()))
    out = tmp_path / "metrics.json"
    assert main(["eval", "rm", str(rm_dir), str(path), "-o", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads(out.read_text())
    assert metrics["n"] == 12 and set(metrics["per_source"]) == {"a", "b"}
    assert f"{metrics['accuracy']:.4f}" in printed and "b " in printed
