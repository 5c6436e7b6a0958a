"""One test per class of bad input, asserting the exact message a user sees (file, row, field,
what was expected)."""

import json

import pytest

from prefkit.cli import main
from prefkit.data import read
from prefkit.errors import DataError
from prefkit.report import StageReport

GOOD = {"prompt": "Capital of France?", "chosen": " Paris.", "rejected": " Lyon."}


def bad_row_error(tmp_path, build, bad, *, name="d.jsonl", good=GOOD, **kw) -> DataError:
    path = build.write_jsonl(tmp_path / name, [good, bad, good])
    with pytest.raises(DataError) as e:
        read(path, **kw)
    return e.value


def test_missing_field(tmp_path, build):
    e = bad_row_error(tmp_path, build, {"prompt": "p", "chosen": "a"})
    assert str(e) == (f"{tmp_path / 'd.jsonl'}, line 2, field 'rejected': missing; expected the rejected "
                      "response (a string or a list of messages)")
    assert (e.row, e.field, e.reason) == (1, "rejected", "missing field")


def test_mistyped_score(tmp_path, build):
    e = bad_row_error(tmp_path, build, dict(GOOD, score_chosen="high"))
    assert str(e).endswith("line 2, field 'score_chosen': expected a number, got a string")


def test_mistyped_response(tmp_path, build):
    e = bad_row_error(tmp_path, build, dict(GOOD, chosen=42))
    assert str(e).endswith("line 2, field 'chosen': expected a string like 'prompt' (standard format), "
                           "got the number 42")


def test_empty_response(tmp_path, build):
    e = bad_row_error(tmp_path, build, dict(GOOD, rejected="   "))
    assert str(e).endswith("line 2, field 'rejected': is empty; expected non-empty text")


def test_empty_assistant_message(tmp_path, build):
    good = {"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "yo"}],
            "rejected": [{"role": "assistant", "content": "hey"}]}
    bad = dict(good, chosen=[{"role": "assistant", "content": ""}])
    e = bad_row_error(tmp_path, build, bad, good=good)
    assert str(e).endswith("line 2, field 'chosen': is empty; expected non-empty assistant text")


def test_nan_score(tmp_path, build):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps(dict(GOOD, score_rejected=float("nan"))) + "\n")
    with pytest.raises(DataError) as e:
        read(path)
    assert str(e.value).endswith("line 2, field 'score_rejected': is nan; expected a finite number")


def test_out_of_range_overall_score(tmp_path, build):
    c = build.completion
    rows = [build.uf_row("q0", [c("a", 8.0)]), build.uf_row("q1", [c("a", 8.0), c("b", 11.0)])]
    e = bad_row_error(tmp_path, build, rows[1], good=rows[0])
    assert str(e).endswith("line 2, field 'completions[1].overall_score': is 11; expected a number from 1 to 10")


def test_unknown_aspect_rating(tmp_path, build):
    c = build.completion
    good = build.uf_row("q0", [c("a", 8.0)])
    e = bad_row_error(tmp_path, build, build.uf_row("q1", [c("a", 8.0, ("4", "excellent", "4", "4"), fine_grained=4.0)]), good=good)
    assert str(e).endswith("line 2, field 'completions[0].annotations.honesty.Rating': is 'excellent'; "
                           "expected a rating '1'..'5' or 'N/A'")


def test_out_of_range_binarized_score(tmp_path, build):
    good = build.binarized_row("q", "a", "b", 8.0, 2.0)
    e = bad_row_error(tmp_path, build, build.binarized_row("q2", "a", "b", 8.0, 0.0), good=good)
    assert str(e).endswith("line 2, field 'score_rejected': is 0; expected a number from 1 to 10")


def test_unknown_role(tmp_path, build):
    good = {"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "yo"}],
            "rejected": [{"role": "assistant", "content": "hey"}]}
    e = bad_row_error(tmp_path, build, dict(good, prompt=[{"role": "human", "content": "hi"}]), good=good)
    assert str(e).endswith("line 2, field 'prompt[0].role': unknown role 'human'; expected one of system, user, "
                           "assistant, tool")


def test_no_user_turn(tmp_path, build):
    good = {"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "yo"}],
            "rejected": [{"role": "assistant", "content": "hey"}]}
    e = bad_row_error(tmp_path, build, dict(good, prompt=[{"role": "system", "content": "be nice"}]), good=good)
    assert str(e).endswith("line 2, field 'prompt': has no user turn; expected at least one message with role "
                           "'user'")


def test_user_turn_in_a_response(tmp_path, build):
    good = {"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "yo"}],
            "rejected": [{"role": "assistant", "content": "hey"}]}
    e = bad_row_error(tmp_path, build, dict(good, chosen=[{"role": "user", "content": "yo"}]), good=good)
    assert str(e).endswith("line 2, field 'chosen[0].role': role 'user' in a response; expected 'assistant' "
                           "turns only")


def test_mixed_prompt_formats(tmp_path, build):
    bad = {"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "yo"}],
           "rejected": [{"role": "assistant", "content": "hey"}]}
    e = bad_row_error(tmp_path, build, bad)
    assert str(e).endswith("line 2, field 'prompt': is a message list but earlier rows use strings; expected one "
                           "prompt format per dataset")


def test_invalid_utf8_bytes(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}\n')
    with pytest.raises(DataError) as e:
        read(path)
    assert str(e.value) == f"{path}, line 2: not valid UTF-8 (byte 15); expected UTF-8 text"


def test_lone_surrogate_is_undecodable_text(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + '{"prompt": "bad \\ud800 text", "chosen": "a", "rejected": "b"}\n')
    with pytest.raises(DataError) as e:
        read(path)
    assert str(e.value).endswith("line 2, field 'prompt': contains undecodable text (a lone surrogate); expected "
                                 "valid Unicode")


def test_line_that_is_not_an_object(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(GOOD) + "\n[1, 2]\n")
    with pytest.raises(DataError, match=r"line 2: is a JSON list; expected an object"):
        read(path)


def test_truncated_jsonl(tmp_path):
    path = tmp_path / "data.jsonl"
    lines = [json.dumps(dict(GOOD, prompt=f"q{i}")) for i in range(7)]
    path.write_text("\n".join(lines[:6]) + "\n" + lines[6][:25])  # half-written last line
    with pytest.raises(DataError) as e:
        read(path)
    assert str(e.value).startswith(f"{path}, line 7: not valid JSON (truncated?)")
    assert "\n" not in str(e.value)


def test_blank_lines_are_not_rows(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(GOOD) + "\n\n" + json.dumps(dict(GOOD, chosen="")) + "\n")
    with pytest.raises(DataError) as e:
        read(path)
    assert e.value.row == 1


def test_corrupt_parquet(tmp_path, build):
    from prefkit.data import write

    good = write(read(build.examples / "trl_standard.jsonl"), tmp_path / "good.parquet")
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DataError) as e:
        read(bad)
    msg = str(e.value)
    assert msg.startswith(f"{bad}: is not a readable Parquet file (") and msg.endswith("truncated or corrupt?")
    assert "\n" not in msg


def test_cli_prints_one_line_not_a_traceback(tmp_path, capsys):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps(GOOD)[:20])
    rc = main(["data", "convert", str(path), "-o", str(tmp_path / "out.jsonl")])
    err = capsys.readouterr().err.strip()
    assert rc == 1  # bad data content: the run failed (a usage error is 2)
    assert err.startswith(f"prefkit data: error: {path}, line 2: not valid JSON (truncated?)")
    assert "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "out.jsonl").exists()


def test_skip_counts_every_reason(tmp_path, build):
    rows = [GOOD, {"prompt": "p", "chosen": "a"}, dict(GOOD, chosen=""), dict(GOOD, score_chosen="x"),
            '{"prompt": "half', GOOD]
    path = build.write_jsonl(tmp_path / "d.jsonl", rows)
    rep = StageReport("read")
    ds = read(path, on_invalid="drop", report=rep)
    assert len(ds) == 2 and ds["source_row"] == [0, 5]
    assert dict(rep.dropped) == {"missing field": 1, "empty text": 1, "wrong type": 1, "invalid JSON line": 1}
    assert rep.rows_in == 6 and rep.rows_out == 2
    assert any("line 2, field 'rejected'" in ex for ex in rep.examples["missing field"])


def test_drop_on_the_cli_prints_and_writes_the_report(tmp_path, build, capsys):
    path = build.write_jsonl(tmp_path / "d.jsonl", [GOOD, dict(GOOD, rejected=""), GOOD])
    out = tmp_path / "out.parquet"
    assert main(["data", "convert", str(path), "-o", str(out), "--on-invalid", "skip"]) == 0  # the old word
    assert "--on-invalid skip is now spelled --on-invalid drop" in capsys.readouterr().err
    assert main(["data", "convert", str(path), "-o", str(out), "--on-invalid", "drop"]) == 0
    printed = capsys.readouterr().out
    assert "data convert: 3 rows in, 2 rows out" in printed
    assert "dropped/skipped        1  empty text" in printed
    report = json.loads((tmp_path / "out.parquet.report.json").read_text())
    assert report["dropped"] == {"empty text": 1} and report["rows_out"] == 2
    assert len(read(out)) == 2


def test_conversational_prompt_with_string_response(tmp_path, build):
    good = {"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "yo"}],
            "rejected": [{"role": "assistant", "content": "hey"}]}
    e = bad_row_error(tmp_path, build, dict(good, rejected="hey"), good=good)
    assert str(e).endswith("line 2, field 'rejected': expected a list of messages like 'prompt' (conversational "
                           "format), got a string")


# ---- where an error points: the line a user opens, or the row index, said as such ----

def test_jsonl_error_names_the_line_after_blank_lines(tmp_path):
    """Blank lines are not rows, but they are lines: the error names the line an editor shows."""
    path = tmp_path / "gaps.jsonl"
    path.write_text("\n".join([json.dumps(GOOD), "", "", json.dumps(GOOD),
                               json.dumps({"prompt": "p", "chosen": "a", "rejected": ""}), ""]) + "\n")
    with pytest.raises(DataError) as e:
        read(path)
    assert str(e.value) == f"{path}, line 5, field 'rejected': is empty; expected non-empty text"
    assert (e.value.row, e.value.line) == (2, 5)


def test_csv_error_names_the_line_with_quoted_newlines_before_it(tmp_path):
    """A quoted field that spans lines shifts every later row's line; the error still names the
    line on which the bad record starts."""
    path = tmp_path / "pairs.csv"
    path.write_text('prompt,chosen,rejected\n'
                    '"a prompt\nover two lines",good,bad\n'
                    '\n'
                    'p2,c2,r2\n'
                    'p3,c3," "\n')
    with pytest.raises(DataError) as e:
        read(path)
    assert str(e.value) == f"{path}, line 6, field 'rejected': is empty; expected non-empty text"
    assert e.value.row == 2


def test_parquet_error_names_the_row_index(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"prompt": ["p0", "p1", "p2"], "chosen": ["c", "c", "c"], "rejected": ["r", "r", ""]}),
                   path)
    with pytest.raises(DataError) as e:
        read(path)
    assert str(e.value) == f"{path}, row index 2, field 'rejected': is empty; expected non-empty text"


def test_skipped_rows_are_counted_with_their_lines(tmp_path, build):
    path = build.write_jsonl(tmp_path / "d.jsonl", [GOOD, {"prompt": "p"}, GOOD, {"prompt": "q"}])
    rep = StageReport("read")
    ds = read(path, on_invalid="drop", report=rep)
    assert len(ds) == 2 and rep.dropped == {"missing field": 2}
    assert [ex.split(", field")[0] for ex in rep.examples["missing field"]] == [f"{path}, line 2", f"{path}, line 4"]


def test_identical_chosen_and_rejected_are_counted_and_dropped(tmp_path, build):
    """A pair without a preference trains nothing; it is dropped in every mode and counted."""
    same = {"prompt": "p", "chosen": " same", "rejected": " same"}
    path = build.write_jsonl(tmp_path / "d.jsonl", [GOOD, same, GOOD])
    for mode in ("error", "skip"):
        rep = StageReport("read")
        ds = read(path, on_invalid=mode, report=rep)
        assert len(ds) == 2 and rep.dropped == {"chosen equals rejected": 1}
        assert rep.examples["chosen equals rejected"] == [f"{path}, line 2: chosen equals rejected"]


def test_all_pairs_binarize_drops_completions_with_the_same_text(tmp_path, build):
    from prefkit.data import binarize

    path = build.write_jsonl(tmp_path / "m.jsonl", [{"prompt": "p", "responses": [
        {"text": "a", "score": 9.0}, {"text": "a", "score": 5.0}, {"text": "b", "score": 2.0}]}])
    multi = read(path, format="multi")
    rep = StageReport("binarize")
    pairs = binarize(multi, method="all-pairs", report=rep)
    assert sorted(zip(pairs["chosen"], pairs["rejected"])) == [("a", "b"), ("a", "b")]
    assert rep.dropped == {"pair: chosen equals rejected (two completions with the same text)": 1}


def test_prompt_ending_with_an_assistant_turn_is_an_error(tmp_path, build):
    bad = {"prompt": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
           "chosen": [{"role": "assistant", "content": "a"}], "rejected": [{"role": "assistant", "content": "b"}]}
    good = {"prompt": [{"role": "user", "content": "hi"}],
            "chosen": [{"role": "assistant", "content": "a"}], "rejected": [{"role": "assistant", "content": "b"}]}
    e = bad_row_error(tmp_path, build, bad, good=good)
    assert str(e).endswith("line 2, field 'prompt[1].role': ends the prompt with an assistant turn; expected the "
                           "turns before the answer (the answer belongs in chosen/rejected)")
