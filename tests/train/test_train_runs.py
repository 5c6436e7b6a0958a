"""Trainer behaviour on real tiny models: every loss type wired (closed forms at the reference
point, SimPO's formula over the initial policy) and bad input counted without a crash. Resume is
tested in test_dpo_robustness.py, reward-model training in test_rm.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

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


def test_simpo_first_loss_is_its_formula_over_the_initial_policy(tiny_model_dir, tmp_path):
    """SimPO is reference-free: -log s(beta (log pi(y_w)/|y_w| - log pi(y_l)/|y_l|) - gamma). With one
    step over all 16 pairs, the logged loss is that mean under the initial policy, whose per-sequence
    log-probs are computed here independently (one plain forward per sequence, full log-softmax)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prefkit.tokenize import encode_pair
    from prefkit.train import train_dpo

    rows = make_pairs(16)
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    beta, gamma = 2.0, 0.5
    rep = _report(train_dpo(base_config(tiny_model_dir, data, tmp_path / "simpo", max_steps=1,
                                        per_device_train_batch_size=16, loss_type="simpo", beta=beta,
                                        simpo_gamma=gamma)))
    assert rep["reference"]["mode"].startswith("none")
    assert rep["data"]["notes"].get("truncated_chosen", 0) == 0 and rep["data"]["rows_out"] == 16

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)

    def mean_logp(prompt, response):
        enc = encode_pair(prompt, response, response, tok, max_length=64, max_prompt_length=32)
        p, c = enc["prompt_ids"], enc["chosen_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([p + c])).logits.double(), dim=-1)[0]
        return sum(logp[len(p) + t - 1, c[t]].item() for t in range(len(c))) / len(c)

    losses = [-torch.nn.functional.logsigmoid(torch.tensor(
        beta * (mean_logp(r["prompt"], r["chosen"]) - mean_logp(r["prompt"], r["rejected"])) - gamma)).item()
        for r in rows]
    assert rep["log_history"][0]["loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-4)


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
