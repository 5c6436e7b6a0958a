"""`prefkit synth` (RMBoost and each baseline) and `prefkit score` through a real OpenAI-compatible
server on 127.0.0.1 (`transformers serve`) serving SmolLM2-135M-Instruct.

A 135M model follows prefkit's rewrite and judge formats poorly; that is a measured finding
(docs/synth.md, "Real model"), not a failure. What is asserted is the mechanics: every request
is accounted for (finished or failed with a reason), every input row is either written or
counted as dropped with a reason, and every unreadable judge answer is a counted failure with
no made-up score."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from real_testkit import cli, pair_rows, read_jsonl, write_jsonl

pytestmark = pytest.mark.slow
PROMPTS = ["Sort these numbers: 3 1 2", "Name a fruit.", "Give one tip for sleeping well."]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(smollm2_dir, tmp_path_factory):
    """One `transformers serve` process for the module, serving the imported SmolLM2 directory."""
    exe = shutil.which("transformers", path=str(Path(sys.executable).parent)) or shutil.which("transformers")
    if exe is None:
        pytest.fail("the `transformers` CLI is not installed (pip install 'transformers[serving]')")
    logdir = tmp_path_factory.mktemp("serve")
    port = _free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    log = open(logdir / "serve.log", "w")
    # `timeout` bounds the server's life even if the session dies without cleaning up
    proc = subprocess.Popen(["timeout", "3000", exe, "serve", smollm2_dir, "--host", "127.0.0.1", "--port",
                             str(port), "--device", "cpu"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 180
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail("transformers serve did not come up:\n" + (logdir / "serve.log").read_text()[-3000:])
            time.sleep(0.5)
        # the server loads the model on its first request: do that here, with room for a busy machine,
        # so that the tests' own requests measure the model and not the loading
        warm = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=900, json={
            "model": smollm2_dir, "max_tokens": 1, "messages": [{"role": "user", "content": "Hi"}]})
        assert warm.status_code == 200, warm.text[:500]
        yield f"http://127.0.0.1:{port}/v1", smollm2_dir
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def _report(path) -> dict:
    return json.loads(Path(str(path) + ".report.json").read_text())


def _check_requests(run: dict) -> None:
    assert run["requested"] > 0
    assert run["requested"] == run["done"] + run["failed"] + run["resumed"] + run["kept_failed"], run
    assert sum(run.get("failure_reasons", {}).values()) == run["failed"] + run["kept_failed"], run
    assert run["completion_tokens"] > 0


def _check_rows(rep: dict, n_in: int, out) -> None:
    assert rep["rows_in"] == n_in
    assert rep["rows_out"] == len(read_jsonl(out)) if Path(out).stat().st_size else rep["rows_out"] == 0
    assert rep["rows_out"] + sum(rep["dropped"].values()) == n_in, rep


@pytest.mark.parametrize("method,extra,requests_per_prompt", [
    ("rmboost", [], 2),                                   # y1, then one rewrite per usable y1
    ("rlaif", ["--judge-max-tokens", 48], 3),             # two samples, one pairwise verdict
    ("west-of-n", ["-n", 2, "--judge-model", "SAME", "--judge-max-tokens", 48], 4),  # 2 samples, 2 ratings
    ("rlcd", [], 2),                                      # positive and negative principle
])
def test_synth_through_a_real_server(server, tmp_path, method, extra, requests_per_prompt):
    url, model = server
    write_jsonl([{"prompt": p} for p in PROMPTS], tmp_path / "prompts.jsonl")
    out = tmp_path / f"{method}.jsonl"
    extra = [model if e == "SAME" else e for e in extra]
    cli("synth", method, tmp_path / "prompts.jsonl", "-o", out, "--base-url", url, "--model", model,
        "--max-tokens", 24, "--concurrency", 2, "--timeout", 600, "--max-retries", 1, "--no-progress", *extra)
    rep = _report(out)
    _check_rows(rep, len(PROMPTS), out)
    _check_requests(rep["notes"]["run"])
    assert rep["notes"]["run"]["requested"] <= requests_per_prompt * len(PROMPTS)
    if method == "rmboost":
        notes = rep["notes"]
        unusable = sum(v for k, v in rep["dropped"].items() if k.startswith("rewrite unusable"))
        assert notes["failed_rewrites"] == unusable
        assert notes["rewrites_returned"] + sum(v for k, v in rep["dropped"].items()
                                                if k.startswith(("y1 request", "rewrite request"))) == len(PROMPTS)
        if notes["rewrites_returned"]:
            assert notes["failed_rewrite_rate"] == round(unusable / notes["rewrites_returned"], 4)
    for row in read_jsonl(out) if rep["rows_out"] else []:
        assert row["chosen"] and row["rejected"] and row["chosen"] != row["rejected"]
    print(method, json.dumps({"dropped": rep["dropped"], "run": rep["notes"]["run"]}))


def test_score_through_a_real_server(server, tmp_path):
    url, model = server
    rows = pair_rows(2)
    write_jsonl(rows, tmp_path / "pairs.jsonl")
    out = tmp_path / "scored.jsonl"
    cli("score", tmp_path / "pairs.jsonl", "-o", out, "--base-url", url, "--model", model, "--max-tokens", 64,
        "--concurrency", 2, "--timeout", 600, "--max-retries", 1, "--no-progress")
    rep = _report(out)
    _check_requests(rep["notes"]["run"])
    notes = rep["notes"]
    assert rep["rows_in"] == rep["rows_out"] == 2
    assert notes["responses_scored"] + notes["responses_failed"] == 4
    assert sum(notes["failure_reasons"].values()) == notes["responses_failed"]
    scored = read_jsonl(out)
    failures = 0
    for row in scored:
        for side, failure in zip(("chosen", "rejected"), row["judge_failures"]):
            # a score exactly when the judge's answer was readable; never a made-up one
            assert (row[f"score_{side}"] is None) == (failure is not None), (side, row[f"score_{side}"], failure)
            failures += failure is not None
            # the judge's words are kept whenever it answered (a failed request has none)
            assert isinstance(row[f"judge_raw_{side}"], str) or failure.startswith("request failed"), failure
    assert failures == notes["responses_failed"]
    print("score", json.dumps(notes))
