import json

import datasets
import pytest

from prefkit.cli import main
from prefkit.data import format_stats, plot_stats, read, stats

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture()
def pairs():
    rows = [
        {"prompt": "p0", "chosen": "aaaa", "rejected": "bb", "score_chosen": 8, "score_rejected": 3, "source": "a"},
        {"prompt": "p1", "chosen": "cc", "rejected": "dddddd", "score_chosen": 7, "score_rejected": 7, "source": "a"},
        {"prompt": "p1", "chosen": "e", "rejected": "f", "score_chosen": 5, "score_rejected": 6, "source": "b"},
        {"prompt": "p2", "chosen": "gg", "rejected": "hh", "source": None},
    ]
    return read(datasets.Dataset.from_list(rows))


def test_pair_stats_by_hand(pairs):
    s = stats(pairs)
    assert (s["pairs"], s["prompts"], s["ties"], s["negative_margins"], s["unscored_pairs"]) == (4, 3, 1, 1, 1)
    assert s["margin"]["n"] == 3 and s["margin"]["mean"] == pytest.approx((5 + 0 - 1) / 3)
    assert s["score_chosen"]["max"] == 8 and s["score_rejected"]["min"] == 3
    assert s["chars_chosen"]["mean"] == pytest.approx((4 + 2 + 1 + 2) / 4)
    assert s["by_source"]["a"] == {"pairs": 2, "mean_score_chosen": 7.5, "mean_score_rejected": 5.0,
                                   "mean_margin": 2.5, "ties": 1}
    assert s["by_source"]["(none)"]["mean_margin"] is None
    table = format_stats(s)
    assert "pairs: 4   prompts: 3   ties: 1   negative margins: 1   unscored pairs: 1" in table
    assert [ln.split()[:2] for ln in table.splitlines() if ln.startswith("margin")] == [["margin", "3"]]


def test_multi_stats_by_hand(build):
    s = stats(read(build.examples / "ultrafeedback_raw.jsonl"))
    raw = [json.loads(line) for line in open(build.examples / "ultrafeedback_raw.jsonl")]
    comps = [c for r in raw for c in r["completions"]]
    assert s["prompts"] == len(raw) and s["responses"] == len(comps)
    assert s["na_rated_responses"] == sum(any(a["Rating"] == "N/A" for a in c["annotations"].values()) for c in comps)
    assert s["score"]["max"] == max(c["overall_score"] for c in comps)
    assert s["by_source"]["truthful_qa"]["prompts"] == 1
    assert "'N/A'-rated responses" in format_stats(s)


def test_token_lengths_with_a_local_tokenizer(tmp_path, chatml_tokenizer):
    chatml_tokenizer.save_pretrained(tmp_path / "tok")
    ds = read(datasets.Dataset.from_list([
        {"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "hello there"}],
         "rejected": [{"role": "assistant", "content": "no"}], "score_chosen": 2.0, "score_rejected": 1.0}]))
    s = stats(ds, tokenizer=tmp_path / "tok")
    n = len(chatml_tokenizer("hello there", add_special_tokens=False)["input_ids"])
    assert s["tokens_chosen"]["mean"] == n and n > 1
    assert s["chars_chosen"]["mean"] == len("hello there")


def test_plots_are_written(tmp_path, pairs, build):
    files = plot_stats(pairs, tmp_path / "plots")
    assert sorted(f.name for f in files) == ["length_vs_score.png", "margin_hist.png", "score_hist.png"]
    for f in files:
        assert f.read_bytes()[:8] == PNG and f.stat().st_size > 5000
    multi_files = plot_stats(read(build.examples / "ultrafeedback_raw.jsonl"), tmp_path / "multi")
    assert len(multi_files) == 3 and all(f.exists() for f in multi_files)


def test_cli_binarize_writes_pairs_and_report(tmp_path, build, capsys):
    out = tmp_path / "pairs.jsonl"
    rc = main(["data", "binarize", str(build.examples / "ultrafeedback_raw.jsonl"), "-o", str(out),
               "--drop-truthfulqa", "--seed", "1"])
    assert rc == 0
    printed = capsys.readouterr().out
    pairs = read(out)
    assert f"wrote {len(pairs)} pairs from 8 prompts" in printed
    assert "prompt: TruthfulQA source (drop_truthfulqa)" in printed
    report = json.loads((tmp_path / "pairs.jsonl.report.json").read_text())
    assert report["rows_out"] == len(pairs) and report["notes"]["seed"] == 1
    assert report["dropped"]["prompt: TruthfulQA source (drop_truthfulqa)"] == 1
    assert "truthful_qa" not in pairs["source"]


def test_cli_convert_and_stats(tmp_path, build, capsys):
    out = tmp_path / "canon"
    assert main(["data", "convert", str(build.examples / "ultrafeedback_binarized.jsonl"), "-o", str(out)]) == 0
    assert (out / "prefkit_report.json").exists()
    capsys.readouterr()
    assert main(["data", "stats", str(out), "--plots", str(tmp_path / "plots"), "--json",
                 str(tmp_path / "s.json")]) == 0
    printed = capsys.readouterr().out
    assert "pairs: 6" in printed and "score_chosen" in printed and "source" in printed
    assert (tmp_path / "plots" / "margin_hist.png").exists()
    assert json.loads((tmp_path / "s.json").read_text())["pairs"] == 6


def test_cli_stats_bad_tokenizer_is_one_line(tmp_path, build, capsys):
    rc = main(["data", "stats", str(build.examples / "trl_standard.jsonl"), "--tokenizer", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith(f"prefkit data: error: tokenizer {tmp_path}: cannot load a tokenizer")
    assert "\n" not in err
