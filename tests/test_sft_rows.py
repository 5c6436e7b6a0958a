"""Goal-conditioned SFT rows (prefkit.relabel.sft_rows): every judged response, its prompt
conditioned on its own score with exactly RA's conditioning (text and placement), checked
against prefkit.relabel.relabel on the same judged samples."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from prefkit import data
from prefkit.errors import ConfigError, DataError
from prefkit.relabel import find_conditioning, relabel, sft_rows, sft_rows_file

JUDGED = [
    {"prompt": [{"role": "user", "content": "Sort 3 1 2"}], "prompt_id": "p0", "source_row": 0,
     "responses": [{"text": "1 2 3", "score": 8.0}, {"text": "3 2 1", "score": 3.25}, {"text": "2 1", "score": None}]},
    {"prompt": [{"role": "system", "content": "Be nice."}, {"role": "user", "content": "Hi"}], "prompt_id": "p1",
     "source_row": 1, "responses": [{"text": "Hello", "score": 7.0}, {"text": "Go", "score": 2.5}]},
]


def _multi(tmp_path, rows=JUDGED):
    f = tmp_path / "scored.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return data.read(str(f), format="multi"), f


@pytest.mark.parametrize("opts", [{}, {"placement": "user"}, {"round_scores": 0}])
def test_each_rows_prompt_is_ras_prompt_for_its_score(tmp_path, opts):
    multi, _ = _multi(tmp_path)
    rows, spec = sft_rows(multi, **opts)
    ra = relabel(data.binarize(multi, method="all-pairs"), **opts)
    # RA's prompt for (prompt_id, goal) -> the SFT row of that response must have the same prompt
    ra_prompt = {(r["prompt_id"], r["goal_score"]): r["prompt"] for r in ra}
    got = rows.to_list()
    assert [(r["prompt_id"], r["response_index"]) for r in got] == [("p0", 0), ("p0", 1), ("p1", 0), ("p1", 1)]
    for r in got:
        assert r["prompt"] == ra_prompt[(r["prompt_id"], r["goal_score"])]
        assert r["completion"][0]["role"] == "assistant"
        assert any(spec.render(r["goal_score"]) in m["content"] for m in r["prompt"])
    texts = {r["completion"][0]["content"]: r["goal_score"] for r in got}
    assert texts == ({"1 2 3": 8.0, "3 2 1": 3.0, "Hello": 7.0, "Go": 2.0} if opts.get("round_scores") == 0
                     else {"1 2 3": 8.0, "3 2 1": 3.25, "Hello": 7.0, "Go": 2.5})


def test_pairs_and_options_that_do_not_apply_are_errors(tmp_path):
    multi, f = _multi(tmp_path)
    with pytest.raises(DataError, match="holds pairs"):
        sft_rows(data.binarize(multi))
    for bad in ({"fine_grained_filter": True}, {"half": True}, {"attributes": "helpfulness"},
                {"goal_from": "implicit"}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            sft_rows(multi, **bad)
    with pytest.raises(ConfigError, match="half"):
        sft_rows_file(f, tmp_path / "never.jsonl", half=True)
    assert not (tmp_path / "never.jsonl").exists()


def test_file_writes_rows_spec_and_counts(tmp_path):
    _, f = _multi(tmp_path)
    out = tmp_path / "sft.jsonl"
    rep = sft_rows_file(f, out, placement="system")
    got = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(got) == 4 and rep.rows_out == 4 and rep.dropped == {"response without an overall score": 1}
    assert find_conditioning(out).placement == "system"
    from prefkit.train.sft_trainer import read_completions

    assert len(read_completions(str(out))) == 4     # what the SFT trainer reads


def test_cli_rows_sft_writes_the_same_rows_and_names_the_flag_that_does_not_apply(tmp_path):
    from prefkit.cli import main

    _, f = _multi(tmp_path)
    cli_out, api_out = tmp_path / "cli.jsonl", tmp_path / "api.jsonl"
    assert main(["-q", "relabel", str(f), "-o", str(cli_out), "--rows", "sft", "--placement", "user"]) == 0
    sft_rows_file(f, api_out, placement="user")
    assert cli_out.read_text() == api_out.read_text() and len(cli_out.read_text().splitlines()) == 4
    assert find_conditioning(cli_out).placement == "user"
    for flag, shown in ((["--half"], "--half: does not apply"),
                        (["--fine-grained-filter"], "--fine-grained-filter: does not apply"),
                        (["--goal-from", "implicit"], "--goal-from: SFT rows")):
        res = subprocess.run([sys.executable, "-m", "prefkit", "relabel", str(f), "-o", str(tmp_path / "x.jsonl"),
                              "--rows", "sft", *flag], capture_output=True, text=True)
        assert res.returncode == 2 and shown in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert not (tmp_path / "x.jsonl").exists()
