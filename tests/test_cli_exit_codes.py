"""What a user or a script sees of a command: its exit status (0 done, 1 the run failed, 2 a usage
error), where the summary and the diagnostics go (stdout / stderr), --quiet and TQDM_DISABLE,
--allow-empty, and the one spelling of --on-invalid."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from prefkit.cli import build_parser, main
from prefkit.testing import FakeServer

GOOD = {"prompt": "q", "chosen": "a", "rejected": "b", "score_chosen": 8, "score_rejected": 3}


def _jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _server_down(body):
    raise RuntimeError("backend down")  # the fake server answers 500


def _prompts(tmp_path, n=3):
    return _jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Name a colour number {i}."} for i in range(n)])


# ---- exit status -------------------------------------------------------------------------------

def test_usage_errors_exit_2(tmp_path, capsys):
    src = _jsonl(tmp_path / "in.jsonl", [GOOD])
    # an input file that does not exist: the command was given wrong
    assert main(["data", "convert", str(tmp_path / "missing.jsonl"), "-o", str(tmp_path / "o.jsonl")]) == 2
    assert "missing.jsonl: no such file" in capsys.readouterr().err
    # a bad option value (ConfigError)
    assert main(["relabel", str(src), "-o", str(tmp_path / "o.jsonl"), "--scale", "ten"]) == 2
    assert "--scale must be MIN,MAX" in capsys.readouterr().err
    # argparse's own usage errors: unknown option, missing INPUT
    for argv in (["data", "convert", str(src), "-o", "x.jsonl", "--no-such-flag"], ["data", "convert"]):
        res = subprocess.run([sys.executable, "-m", "prefkit", *argv], capture_output=True, text=True)
        assert res.returncode == 2 and "usage:" in res.stderr and res.stdout == ""


def test_bad_data_content_exits_1(tmp_path, capsys):
    src = _jsonl(tmp_path / "in.jsonl", [GOOD, dict(GOOD, rejected="")])
    rc = main(["data", "convert", str(src), "-o", str(tmp_path / "o.jsonl")])
    err = capsys.readouterr().err
    assert rc == 1 and f"{src}, line 2, field 'rejected'" in err
    res = subprocess.run([sys.executable, "-m", "prefkit", "relabel", str(src), "-o", str(tmp_path / "r.jsonl")],
                         capture_output=True, text=True)
    assert res.returncode == 1 and "line 2" in res.stderr and "Traceback" not in res.stderr


# ---- 0 rows out of a non-empty input -----------------------------------------------------------

def test_no_rows_out_of_a_non_empty_input_exits_1_unless_allow_empty(tmp_path, capsys):
    src = _jsonl(tmp_path / "in.jsonl", [dict(GOOD, rejected=""), dict(GOOD, chosen="")])
    out = tmp_path / "o.jsonl"
    rc = main(["data", "convert", str(src), "-o", str(out), "--on-invalid", "drop"])
    err = capsys.readouterr().err
    assert rc == 1 and "0 rows out of 2 in (dropped: empty text: 2)" in err and "--allow-empty" in err
    assert not out.exists()  # nothing a pipeline could mistake for a result
    report = json.loads((tmp_path / "o.jsonl.report.json").read_text())  # but the drops can be read
    assert report["dropped"] == {"empty text": 2} and report["rows_out"] == 0

    assert main(["data", "convert", str(src), "-o", str(out), "--on-invalid", "drop", "--allow-empty"]) == 0
    assert out.exists() and out.read_text() == ""


def test_relabel_writing_no_rows_exits_1_unless_allow_empty(tmp_path, capsys):
    from prefkit.errors import EmptyResultError
    from prefkit.relabel import relabel_file

    src = _jsonl(tmp_path / "in.jsonl", [dict(GOOD, score_chosen=5, score_rejected=5)])  # a tie: dropped
    out = tmp_path / "ra.jsonl"
    assert main(["relabel", str(src), "-o", str(out)]) == 1
    assert "0 rows out of 1 in (dropped: tie: goal of chosen == goal of rejected: 1)" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(EmptyResultError):
        relabel_file(src, out)
    assert main(["relabel", str(src), "-o", str(out), "--allow-empty"]) == 0
    assert relabel_file(src, out, allow_empty=True).rows_out == 0 and out.exists()


def test_every_stage_that_writes_rows_has_allow_empty():
    spelled = {}
    for p in _leaf_parsers():
        opts = {s for a in p._actions for s in a.option_strings}
        if "-o" in opts and any("input" == a.dest for a in p._actions) and "--on-invalid" in opts \
                and not p.prog.startswith("prefkit train"):  # train writes a model; no pairs left is an error
            spelled[p.prog] = "--allow-empty" in opts
    assert len(spelled) >= 10, spelled  # data binarize/convert, relabel, 4 synth methods, score, select (+ evolve)
    assert all(spelled.values()), spelled


# ---- a synthesis or scoring run in which every request failed ----------------------------------

def test_synth_run_where_every_request_failed_exits_1(tmp_path, capsys):
    out = tmp_path / "pairs.jsonl"
    with FakeServer(_server_down) as srv:
        argv = ["synth", "rlcd", str(_prompts(tmp_path)), "-o", str(out), "--base-url", srv.base_url,
                "--model", "fake-model", "--max-retries", "0", "--no-progress"]
        rc = main(argv)
        cap = capsys.readouterr()
        assert rc == 1, cap.err
        assert "prefkit synth: error: every request failed (6 of 6: HTTP 500 x6; the server said: " in cap.err
        assert "backend down" in cap.err  # the server's own reason, on the console
        assert "--retry-failed" in cap.err and "--allow-empty" in cap.err
        assert not out.exists() and (tmp_path / "pairs.jsonl.report.json").exists()
        # partial results on request: written, exit 0
        assert main(argv + ["--allow-empty"]) == 0
        assert out.exists()


def test_scoring_run_where_every_request_failed_exits_1(tmp_path, capsys):
    """Scoring keeps every row (a failed judgment leaves the score empty), so only the run's own
    failure count can tell that nothing was scored."""
    src = _jsonl(tmp_path / "pairs.jsonl", [GOOD, dict(GOOD, prompt="q2")])
    out = tmp_path / "scored.jsonl"
    with FakeServer(_server_down) as srv:
        argv = ["score", str(src), "-o", str(out), "--base-url", srv.base_url, "--model", "fake-model",
                "--max-retries", "0", "--no-progress"]
        assert main(argv) == 1
        assert "every request failed (4 of 4: HTTP 500 x4; the server said:" in capsys.readouterr().err
        assert not out.exists()
        assert main(argv + ["--allow-empty"]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 2 and all(r["score_chosen"] is None for r in rows)


# ---- stdout and stderr, --quiet, TQDM_DISABLE --------------------------------------------------

def _synth_ok(tmp_path, *extra, out="pairs.jsonl"):
    with FakeServer() as srv:  # echo replies: the two principles' prompts differ, so their answers do
        return main(["synth", "rlcd", str(_prompts(tmp_path)), "-o", str(tmp_path / out), "--base-url",
                     srv.base_url, "--model", "fake-model", *extra])


def test_synth_summary_on_stdout_progress_on_stderr(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # bars are drawn on a terminal only
    assert _synth_ok(tmp_path) == 0
    cap = capsys.readouterr()
    assert "synth rlcd: 3 rows in, 3 rows out" in cap.out and "requests: 6 unique" in cap.out
    assert "wrote 3 rows to" in cap.out
    assert "synth rlcd:" not in cap.err and "requests:" not in cap.err
    assert "req/s" in cap.err or "req]" in cap.err or "100%" in cap.err  # the progress bar


@pytest.mark.parametrize("how", ["prefkit -q synth", "prefkit synth ... -q", "TQDM_DISABLE=1"])
def test_quiet_and_tqdm_disable_remove_every_bar(how, tmp_path, capsys, monkeypatch):
    import os

    if how == "TQDM_DISABLE=1":
        monkeypatch.setenv("TQDM_DISABLE", "1")
    with FakeServer() as srv:
        argv = ["synth", "rlcd", str(_prompts(tmp_path)), "-o", str(tmp_path / "p.jsonl"), "--base-url",
                srv.base_url, "--model", "fake-model"]
        rc = main(["-q"] + argv if how == "prefkit -q synth" else argv + ["-q"] if how == "prefkit synth ... -q"
                  else argv)
    cap = capsys.readouterr()
    assert rc == 0 and "synth rlcd: 3 rows in, 3 rows out" in cap.out  # the summary still prints
    assert cap.err == ""
    if how != "TQDM_DISABLE=1":
        assert "TQDM_DISABLE" not in os.environ  # --quiet is undone when main() returns


def test_a_redirected_log_gets_no_bars_and_no_carriage_returns(tmp_path, capsys):
    assert _synth_ok(tmp_path) == 0  # capsys' stderr is not a terminal, as a log file is not
    cap = capsys.readouterr()
    assert "\r" not in cap.err and "100%" not in cap.err
    assert "wrote 3 rows to" in cap.out


def test_quiet_keeps_errors(tmp_path, capsys):
    assert main(["-q", "data", "convert", str(tmp_path / "nope.jsonl"), "-o", str(tmp_path / "o.jsonl")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_every_command_takes_quiet():
    for p in _leaf_parsers():
        opts = {s for a in p._actions for s in a.option_strings}
        assert {"-q", "--quiet"} <= opts, p.prog


# ---- --on-invalid: one spelling ----------------------------------------------------------------

def test_on_invalid_is_spelled_error_or_drop_everywhere(tmp_path):
    from prefkit.commands.train import config_from_args

    seen = 0
    for p in _leaf_parsers():
        for a in p._actions:
            if "--on-invalid" in a.option_strings:
                seen += 1
                if a.choices is not None:  # data, relabel, synth, score, select: the old 'skip' is kept
                    assert set(a.choices) == {"error", "drop", "skip"} and a.metavar == "{error,drop}", p.prog
    assert seen >= 12
    # train's option is a config field checked by the config: the same two words
    from prefkit.cli import accept_old_spellings

    src = _jsonl(tmp_path / "in.jsonl", [GOOD])
    for word, expect in (("drop", "drop"), ("error", "error"), ("skip", "drop")):
        args = build_parser().parse_args(["train", "dpo", str(src), str(tmp_path / "run"), "--model", "m",
                                          "--on-invalid", word])
        accept_old_spellings(args)
        assert config_from_args(args).on_invalid == expect


def test_old_skip_spelling_still_works_with_a_note(tmp_path, capsys):
    from prefkit.data import read
    from prefkit.report import StageReport

    src = _jsonl(tmp_path / "in.jsonl", [GOOD, dict(GOOD, rejected="")])
    rep = StageReport("read")
    assert len(read(src, on_invalid="skip", report=rep)) == 1 and rep.dropped == {"empty text": 1}
    assert main(["select", str(src), "-o", str(tmp_path / "s.jsonl"), "--metric", "explicit", "--top-k", "1",
                 "--on-invalid", "skip"]) == 0
    assert "--on-invalid skip is now spelled --on-invalid drop" in capsys.readouterr().err


def _leaf_parsers():
    from prefkit.cli import all_parsers

    out = []
    for p in all_parsers(build_parser()):
        if not any(a.__class__.__name__ == "_SubParsersAction" for a in p._actions):
            out.append(p)
    return out


def test_quiet_reaches_the_trainer_bars(tmp_path, monkeypatch):
    """The Trainer draws its own bars (TrainingArguments.disable_tqdm): TQDM_DISABLE (which
    --quiet sets) turns them off unless the config says otherwise."""
    from prefkit.commands.train import config_from_args

    src = _jsonl(tmp_path / "in.jsonl", [GOOD])
    argv = ["train", "dpo", str(src), str(tmp_path / "run"), "--model", "m"]
    assert not config_from_args(build_parser().parse_args(argv)).disable_tqdm
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert config_from_args(build_parser().parse_args(argv)).disable_tqdm is True
    assert config_from_args(build_parser().parse_args(argv + ["--disable-tqdm", "false"])).disable_tqdm is False
