"""The row cache resumes an interrupted scoring pass; the CLI end to end on a small file."""

import json

import numpy as np
import pytest
from helpers import save_tiny, write_jsonl

import prefkit.logprobs
from prefkit.cli import main
from prefkit.select import score_margins


class _Counting:
    """Wraps the real score_logps: counts the rows it scores and can fail after `fail_after` calls."""

    def __init__(self, real, fail_after=None):
        self.real, self.fail_after, self.calls, self.rows = real, fail_after, 0, 0

    def __call__(self, model, tokenizer, dataset, **kw):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.calls += 1
        self.rows += len(dataset)
        return self.real(model, tokenizer, dataset, **kw)


def test_interrupted_scoring_resumes_from_the_cache(tiny_llama, llama3_tokenizer, pairs, tmp_path, monkeypatch):
    real = prefkit.logprobs.score_logps
    fresh = score_margins(pairs, model=tiny_llama, tokenizer=llama3_tokenizer, progress=False).dataset

    first = _Counting(real, fail_after=2)
    monkeypatch.setattr(prefkit.logprobs, "score_logps", first)
    with pytest.raises(KeyboardInterrupt):
        score_margins(pairs, model=tiny_llama, tokenizer=llama3_tokenizer, chunk_size=3, cache_dir=tmp_path, progress=False)
    assert first.rows == 6  # two chunks of 3 were scored and cached before the interruption

    second = _Counting(real)
    monkeypatch.setattr(prefkit.logprobs, "score_logps", second)
    resumed = score_margins(pairs, model=tiny_llama, tokenizer=llama3_tokenizer, chunk_size=3, cache_dir=tmp_path,
                    progress=False)
    assert second.rows == len(pairs) - 6  # only the remaining rows
    assert resumed.report.notes["pairs scored from cache"] == 6
    for col in ("policy_logps_chosen", "implicit_margin", "alignment_potential"):
        np.testing.assert_allclose(resumed.dataset[col], fresh[col], rtol=1e-6)

    # another chunking, a subset in another order: all from the cache (rows are keyed by content)
    third = _Counting(real)
    monkeypatch.setattr(prefkit.logprobs, "score_logps", third)
    score_margins(pairs.select([7, 2, 5]), model=tiny_llama, tokenizer=llama3_tokenizer, chunk_size=2, cache_dir=tmp_path,
          progress=False)
    assert third.rows == 0


def test_cache_is_keyed_by_model_weights_and_settings(tiny_llama, llama3_tokenizer, pairs, tmp_path, monkeypatch):
    from prefkit.toy.tiny import tiny_causal_lm

    score_margins(pairs, model=tiny_llama, tokenizer=llama3_tokenizer, cache_dir=tmp_path, progress=False)
    counting = _Counting(prefkit.logprobs.score_logps)
    monkeypatch.setattr(prefkit.logprobs, "score_logps", counting)
    other = tiny_causal_lm(llama3_tokenizer, seed=3)  # same architecture, other weights
    score_margins(pairs, model=other, tokenizer=llama3_tokenizer, cache_dir=tmp_path, progress=False)
    assert counting.rows == len(pairs)
    score_margins(pairs, model=tiny_llama, tokenizer=llama3_tokenizer, cache_dir=tmp_path, progress=False,
          score_kwargs={"max_length": 64, "max_prompt_length": 32})
    assert counting.rows == 2 * len(pairs)


def test_cli_select_end_to_end(tiny_llama, llama3_tokenizer, pairs, tmp_path, capsys):
    model_dir = tmp_path / "policy"
    tiny_llama.save_pretrained(model_dir)
    llama3_tokenizer.save_pretrained(model_dir)
    src = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    out = tmp_path / "selected.jsonl"
    args = ["select", str(src), "-o", str(out), "--model", str(model_dir), "--fraction", "0.5",
            "--plot", str(tmp_path / "sel.png"), "--cache-dir", str(tmp_path / "cache"),
            "--scored", str(tmp_path / "scored.jsonl")]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "select: 8 rows in, 4 rows out" in printed
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 4
    for col in ("explicit_margin", "implicit_margin", "alignment_potential", "alignment_potential_paper",
                "selection_score", "prompt", "chosen", "rejected"):
        assert col in rows[0]
    scored = [json.loads(line) for line in (tmp_path / "scored.jsonl").read_text().splitlines()]
    assert len(scored) == 8 and sum(r["selected"] for r in scored) == 4
    report = json.loads((tmp_path / "selected.jsonl.report.json").read_text())
    assert report["rows_out"] == 4 and report["notes"]["pairs scored by the model"] == 8
    assert (tmp_path / "sel.png").read_bytes()[:4] == b"\x89PNG"

    # second run: everything from the cache, same selection
    out2 = tmp_path / "again.jsonl"
    assert main(args[:3] + [str(out2)] + args[4:]) == 0
    assert "pairs scored from cache: 8" in capsys.readouterr().out
    assert [json.loads(x)["prompt"] for x in out2.read_text().splitlines()] == [r["prompt"] for r in rows]


def test_cli_errors_are_one_line(pairs, tmp_path, capsys):
    src = tmp_path / "pairs.jsonl"
    with src.open("w") as f:
        for i, row in enumerate(pairs):
            if i == 2:
                row = {**row, "score_chosen": None}
            f.write(json.dumps(row) + "\n")
    assert main(["select", str(src), "-o", str(tmp_path / "o.jsonl"), "--metric", "explicit"]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "row 2" in errors[0] and "field 'score_chosen'" in errors[0]
    assert main(["select", str(src), "-o", str(tmp_path / "o.jsonl")]) == 2
    assert "needs a model" in capsys.readouterr().err


def test_cli_dpo_implicit_loads_the_reference_directory(llama3_tokenizer, pairs, tmp_path, capsys):
    for name, seed in (("policy", 0), ("reference", 1)):
        save_tiny(tmp_path / name, llama3_tokenizer, hidden=64, heads=4, intermediate=None, max_position=2048,
                  seed=seed)
    src = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    out = tmp_path / "dpo.jsonl"
    assert main(["select", str(src), "-o", str(out), "--model", str(tmp_path / "policy"),
                 "--reference", str(tmp_path / "reference"), "--beta", "0.1", "--metric", "dpo-implicit",
                 "--top-k", "3"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3
    # different weights, so the DPO implicit margin is not identically zero
    assert any(abs(r["dpo_implicit_margin"]) > 0 for r in rows)
    assert "metric: dpo-implicit" in capsys.readouterr().out
