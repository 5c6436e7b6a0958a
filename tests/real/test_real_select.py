"""`prefkit select --model smollm2` on the real model: the policy log-probs it scores with equal
a plain forward of SmolLM2 on the same tokens, the metrics follow from them, the selection keeps
the top pairs by alignment potential, and a re-run with the row cache computes nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from real_testkit import cli, pair_rows, read_jsonl, response_logps, write_jsonl

pytestmark = pytest.mark.slow


def test_select_with_the_real_model(tmp_path, real_model, real_tokenizer):
    import datasets

    from prefkit.tokenize import encode_pairs

    rows = pair_rows(6, system_every=3, scores=True)
    write_jsonl(tmp_path / "pairs.jsonl", rows)
    args = ["select", tmp_path / "pairs.jsonl", "-o", tmp_path / "sel.jsonl", "--model", "smollm2", "--top-k", 3,
            "--scored", tmp_path / "scored.jsonl", "--cache-dir", tmp_path / "cache"]
    cli(*args)
    scored, kept = read_jsonl(tmp_path / "scored.jsonl"), read_jsonl(tmp_path / "sel.jsonl")
    assert len(scored) == 6 and len(kept) == 3

    enc = encode_pairs(datasets.Dataset.from_list(rows), real_tokenizer)
    for row, e in zip(scored, enc):
        for side in ("chosen", "rejected"):
            want = response_logps(real_model, e["prompt_ids"], e[f"{side}_ids"])
            assert row[f"policy_logps_{side}"] == pytest.approx(want, abs=2e-3), side
            assert row[f"len_{side}"] == len(e[f"{side}_ids"])
        mi = row["policy_logps_chosen"] / row["len_chosen"] - row["policy_logps_rejected"] / row["len_rejected"]
        assert row["implicit_margin"] == pytest.approx(mi, abs=1e-6)

    explicit = np.array([r["explicit_margin"] for r in scored])
    absimp = np.array([r["abs_implicit_margin"] for r in scored])
    ap = (explicit - explicit.mean()) / explicit.std() - (absimp - absimp.mean()) / absimp.std()
    np.testing.assert_allclose([r["alignment_potential"] for r in scored], ap, atol=1e-6)
    top = sorted(np.argsort(-ap)[:3].tolist())
    assert [r["selected"] for r in scored] == [i in top for i in range(6)]
    assert [r["prompt"] for r in kept] == [rows[i]["prompt"] for i in top]

    # again, from the row cache: the same output, no forward pass
    first = json.loads((tmp_path / "sel.jsonl.report.json").read_text())["notes"]
    assert first["pairs scored by the model"] == 6 and first["pairs scored from cache"] == 0
    cli(*args[:3], tmp_path / "sel2.jsonl", *args[4:])
    assert read_jsonl(tmp_path / "sel2.jsonl") == kept
    again = json.loads((tmp_path / "sel2.jsonl.report.json").read_text())["notes"]
    assert again["pairs scored by the model"] == 0 and again["pairs scored from cache"] == 6
