"""forward_mode: the packed, prefix-shared trainer equals the padded one (losses, metrics, eps-DPO's
beta choices and base beta, final weights) for every reference mode."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from train_helpers import base_config, make_pairs, write_jsonl


def _logs(out):
    rep = json.loads((Path(out) / "prefkit_train_report.json").read_text())
    return [h for h in rep["log_history"] if "loss" in h and "train_runtime" not in h], rep


@pytest.mark.parametrize("extra", [
    dict(loss_type="sigmoid"),                                   # precomputed reference (packed pass)
    dict(loss_type="sigmoid", precompute_ref_log_probs=False),   # live frozen copy
    dict(loss_type="ipo"),
    dict(loss_type="eps-dpo", eps=0.1, beta=0.2),                # live reference, perturbed log-probs
    dict(loss_type="simpo"),                                     # reference-free
], ids=["precomputed", "live", "ipo", "eps-dpo", "simpo"])
def test_packed_training_equals_padded(tiny_model_dir, tmp_path, extra):
    from safetensors.torch import load_file

    from prefkit.train import train_dpo

    data = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(12, seed=3))
    runs = {}
    for mode in ("padded", "packed"):
        out = tmp_path / mode
        # plain SGD: Adam's normalisation turns float noise in near-zero gradients into full steps
        cfg = base_config(tiny_model_dir, data, out, forward_mode=mode, max_steps=3, optim="sgd",
                          learning_rate=0.5, **extra)
        train_dpo(cfg)
        runs[mode] = _logs(out)
    (pad_logs, pad_rep), (pack_logs, pack_rep) = runs["padded"], runs["packed"]
    assert len(pad_logs) == len(pack_logs) == 3
    for a, b in zip(pad_logs, pack_logs):
        assert set(a) == set(b)
        for k, v in a.items():
            if k in ("epoch", "grad_norm", "learning_rate", "step"):
                continue
            assert b[k] == pytest.approx(v, rel=1e-4, abs=1e-5), k
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-3, abs=1e-6)
    assert pack_rep["final_base_beta"] == pytest.approx(pad_rep["final_base_beta"], rel=1e-9)
    w_pad, w_pack = load_file(tmp_path / "padded" / "model.safetensors"), load_file(tmp_path / "packed" / "model.safetensors")
    init = load_file(Path(tiny_model_dir) / "model.safetensors")
    moved = 0
    for name, w in w_pad.items():
        assert torch.allclose(w_pack[name], w, atol=1e-6, rtol=1e-4), name
        moved += int(not torch.equal(w, init[name]))
    assert moved > 0


def test_forward_mode_is_checked(tiny_model_dir, tmp_path):
    from prefkit.errors import ConfigError
    from prefkit.train import train_dpo

    data = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(4))
    with pytest.raises(ConfigError, match="forward_mode must be one of packed, padded"):
        train_dpo(base_config(tiny_model_dir, data, tmp_path / "o", forward_mode="shared"))
    with pytest.raises(ConfigError, match="pad_tolerance must be in"):
        train_dpo(base_config(tiny_model_dir, data, tmp_path / "o", pad_tolerance=1.5))
