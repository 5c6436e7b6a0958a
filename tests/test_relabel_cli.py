"""`prefkit relabel` end to end on files, and multi-response input (binarized first)."""

from __future__ import annotations

import json

import pytest

from helpers import write_jsonl

from prefkit.cli import main


def test_cli_writes_data_spec_and_report(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    write_jsonl(src, [
        {"prompt": [{"role": "user", "content": "Sort 3 1 2"}], "chosen": [{"role": "assistant", "content": "1 2 3"}],
         "rejected": [{"role": "assistant", "content": "3 2 1"}], "score_chosen": 8, "score_rejected": 3.5},
        {"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "Hello"}],
         "rejected": [{"role": "assistant", "content": "Go"}], "score_chosen": 6, "score_rejected": 6},
    ])
    tpl = tmp_path / "t.txt"
    tpl.write_text("Goal: {goal}\n")
    out = tmp_path / "ra.jsonl"
    rc = main(["relabel", str(src), "-o", str(out), "--placement", "user", "--template", str(tpl)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "relabel: 2 rows in, 2 rows out" in printed
    assert "tie: goal of chosen == goal of rejected" in printed
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["relabel_half"] for r in rows] == ["w", "l"]
    assert rows[0]["prompt"] == [{"role": "user", "content": "Goal: 8\n\nSort 3 1 2"}]
    assert rows[1]["prompt"] == [{"role": "user", "content": "Goal: 3.5\n\nSort 3 1 2"}]
    assert rows[1]["chosen"] == [{"role": "assistant", "content": "3 2 1"}]
    from prefkit.relabel import find_conditioning

    spec = find_conditioning(out)
    assert spec.placement == "user" and spec.template == "Goal: {goal}" and spec.prompt_format == "conversational"
    report = json.loads((tmp_path / "ra.jsonl.report.json").read_text())
    assert report["dropped"] == {"tie: goal of chosen == goal of rejected": 1}


def test_cli_errors_are_one_line(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    write_jsonl(src, [{"prompt": "q", "chosen": "c", "rejected": "r", "score_chosen": 8, "score_rejected": 3}])
    rc = main(["relabel", str(src), "-o", str(tmp_path / "o.jsonl"), "--fine-grained-filter"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "fine_grained_chosen" in err
    rc = main(["relabel", str(src), "-o", str(tmp_path / "o.jsonl"), "--placement", "auto"])
    assert rc == 2 and "tokenizer" in capsys.readouterr().err


def test_multi_response_input_is_binarized_first(tmp_path):
    from datasets import Dataset

    from prefkit.relabel import relabel
    from prefkit.report import StageReport

    def resp(text, score, fg):
        return {"text": text, "score": score, "fine_grained": fg, "aspects": None, "model": "m"}

    multi = Dataset.from_list([
        {"prompt": "q0", "responses": [resp("best", 9.0, 5.0), resp("worst", 2.0, 1.0)], "prompt_id": "a",
         "source_row": 0, "source": "s"},
        {"prompt": "q1", "responses": [resp("only", 9.0, 5.0)], "prompt_id": "b", "source_row": 1, "source": "s"},
    ])
    rep = StageReport("relabel")
    out = relabel(multi, report=rep, template="G {goal}")
    assert rep.rows_in == 2 and len(out) == 2 and rep.n_dropped >= 1  # q1 has one response only
    assert out["prompt"] == ["G 9\n\nq0", "G 2\n\nq0"]
    assert out["chosen"] == ["best", "worst"] and out["rejected"] == ["worst", "best"]


def test_cli_and_python_share_one_options_object(tmp_path):
    """Every RelabelOptions field is a `prefkit relabel` flag, parsed under the field's own name, and
    an options object gives the same rows as the same options passed as keywords."""
    import argparse
    import dataclasses

    from datasets import Dataset

    from prefkit.commands import relabel as cmd
    from prefkit.errors import ConfigError
    from prefkit.relabel import RelabelOptions, relabel

    parser = argparse.ArgumentParser()
    cmd.register(parser.add_subparsers(), "relabel", "relabel")
    args = parser.parse_args(["relabel", "in.jsonl", "-o", "out.jsonl"])
    for f in dataclasses.fields(RelabelOptions):
        assert hasattr(args, f.name), f"RelabelOptions.{f.name} has no CLI flag"
        if f.name != "scale":  # the flag is the text MIN,MAX
            assert getattr(args, f.name) == f.default, f.name

    rows = [{"prompt": f"Sort {i}", "chosen": "a b", "rejected": "b a", "score_chosen": 8 - i % 3,
             "score_rejected": 2 + i % 2} for i in range(6)]
    ds = Dataset.from_list(rows)
    opts = RelabelOptions(half=True, seed=7, placement="user")
    assert relabel(ds, opts).to_list() == relabel(ds, half=True, seed=7, placement="user").to_list()
    assert relabel(ds, opts, seed=8)["pair_id"] == relabel(ds, half=True, seed=8, placement="user")["pair_id"]
    with pytest.raises(ConfigError, match="ties must be 'drop' or 'keep'"):
        RelabelOptions(ties="maybe")
