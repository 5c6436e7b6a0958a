"""`prefkit train` exit status: no training pair left is a run-time failure (exit 1), not a usage error."""

from __future__ import annotations

from train_helpers import make_pairs, write_jsonl


def test_no_pair_left_exits_1(tiny_model_dir, tmp_path, capsys):
    from prefkit.cli import main

    rows = [dict(r, rejected=[{"role": "assistant", "content": ""}]) for r in make_pairs(4)]  # all invalid
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    rc = main(["train", "dpo", data, str(tmp_path / "out"), "--model", tiny_model_dir, "--max-steps", "1",
               "--max-length", "64", "--max-prompt-length", "32", "--precision", "fp32", "--disable-tqdm"])
    err = capsys.readouterr().err
    assert rc == 1, err
    assert "no training pairs left" in err and "Traceback" not in err
