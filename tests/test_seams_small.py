"""The smaller seams a new user hits (issue 23, point 6): each checked as the user meets it."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time

import pytest

from prefkit.cli import main


def test_a_near_miss_of_a_bundled_model_suggests_it(capsys):
    from prefkit.errors import ConfigError
    from prefkit.models import load_tokenizer

    with pytest.raises(ConfigError, match=r"tokenizer directory not found: smollm; did you mean 'smollm2'"):
        load_tokenizer("smollm")


def test_a_hub_id_while_offline_fails_at_once(monkeypatch):
    from prefkit.errors import ConfigError
    from prefkit.models import hub_reachable_with, load_pretrained

    hub_reachable_with.cache_clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match="the hub is not reachable"):
        load_pretrained("prefkit-test-org/no-such-model")
    assert time.monotonic() - t0 < 30   # (not a timing assertion on prefkit: the hub client retried ~52 s)


def test_no_connection_to_the_hub_counts_as_offline(monkeypatch):
    import socket

    from prefkit.models import hub_reachable_with, hub_reachable

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there: the connection is refused
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    hub_reachable_with.cache_clear()
    assert hub_reachable() is False
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{srv.getsockname()[1]}")
    try:
        assert hub_reachable() is True
    finally:
        srv.close()
        hub_reachable_with.cache_clear()


def test_cli_errors_name_the_format_flag(tmp_path, capsys):
    src = tmp_path / "odd.jsonl"
    src.write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    assert main(["data", "convert", str(src), "-o", str(tmp_path / "o.jsonl")]) != 0
    err = capsys.readouterr().err
    assert "--format on the command line" in err and "pass format=" not in err


def test_prefkit_help_lists_every_command_the_readme_shows():
    out = subprocess.run([sys.executable, "-m", "prefkit", "--help"], capture_output=True, text=True).stdout
    for name in ("data", "relabel", "synth", "score", "select", "train", "eval", "models", "demo"):
        assert f"\n    {name} " in out, name


def test_trained_weights_have_normal_file_modes_and_a_card(tmp_path, capsys):
    from prefkit.model_card import card_front_matter
    from prefkit.toy.tiny import build_tokenizer, tiny_causal_lm

    base = tmp_path / "base"
    tok = build_tokenizer(template="chatml")
    tiny_causal_lm(tok, arch="qwen2", hidden=32, layers=1, heads=2).save_pretrained(base)
    tok.save_pretrained(base)
    rows = [{"prompt": f"Sort {i} 3 1", "chosen": f"1 3 {i}", "rejected": f"{i} 3 1"} for i in range(4)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    old = os.umask(0o022)
    try:
        assert main(["-q", "train", "dpo", str(data), "-o", str(out), "--model", str(base), "--max-steps", "1",
                     "--per-device-train-batch-size", "2", "--precision", "fp32",
                     "--ref-cache-dir", str(tmp_path / "c"), "--loss-type", "ipo", "--beta", "0.2",
                     "--save-strategy", "steps", "--save-steps", "1"]) == 0
    finally:
        os.umask(old)
    cap = capsys.readouterr()
    assert "{'train_runtime'" not in cap.out and "'loss'" not in cap.out   # -q: no per-step log dicts
    assert stat.S_IMODE((out / "model.safetensors").stat().st_mode) == 0o644
    assert stat.S_IMODE((out / "checkpoint-1" / "model.safetensors").stat().st_mode) == 0o644
    meta = card_front_matter(out / "README.md")
    assert meta["base_model"] == str(base) and "ipo" in meta["tags"] and meta["library_name"] == "transformers"
    card = (out / "README.md").read_text()
    from prefkit.model_card import data_fingerprint

    assert data_fingerprint(data) in card and "| beta | 0.2 |" in card and "| optimizer steps | 1 |" in card
    assert "Conditioning" not in card       # not trained on relabeled data


def test_the_card_of_a_conditioned_model_says_how_to_apply_it():
    from prefkit.model_card import render_card
    from prefkit.relabel.conditioning import ConditioningSpec

    spec = ConditioningSpec(placement="user")
    report = {"kind": "dpo", "global_step": 7, "train_loss": 0.5,
              "config": {"model_name_or_path": "org/base", "train_file": "ra.jsonl", "loss_type": "eps-dpo",
                         "beta": 0.1, "eps": 0.01}, "final_base_beta": 0.09}
    card = render_card(report, spec.to_dict(), lora=True, data_sha256="ab" * 32)
    assert card.startswith("---\nlibrary_name: peft\n")
    assert "| eps | 0.01 |" in card and "| final base beta | 0.09 |" in card
    assert spec.render(None) in card and "in front of the first user message" in card
    assert "prefkit models merge-lora" in card and "export-chat-template" in card


def length_reward(prompt, response) -> float:
    return float(len(response))


def test_eval_policy_takes_base_url_like_the_other_commands(tmp_path, capsys):
    from prefkit.testing import FakeServer

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Say {i}."}) + "\n" for i in range(2)))
    with FakeServer() as srv:
        rc = main(["-q", "eval", "policy", str(prompts), "--policy", "served=fake-model", "--base-url", srv.base_url,
                   "--reward-fn", "test_seams_small:length_reward", "--max-new-tokens", "8", "-o",
                   str(tmp_path / "ev")])
        served = srv.stats["ok"]
    assert rc == 0, capsys.readouterr().err
    res = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert served == 2 and "openai:fake-model" in res["policies"]["served"]["backend"]
