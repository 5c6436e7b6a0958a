"""Generation and judging spread over two real `transformers serve` servers on localhost, each
serving a tiny Qwen2 model directory (the cheapest model a server can load; the same test passes
with the real SmolLM2-135M-Instruct in about five minutes on this machine): a recipe whose
generate stage samples from both servers and whose score stage judges on both runs end to end,
and each server's own access log shows it answered requests of both stages. (A `kill -9` while
judging is tests/pipeline/test_score_evolve.py's, on servers slow on purpose.)"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

POSTS = '"POST /v1/chat/completions HTTP/1.1" 200'   # uvicorn's access log line of an answered request
N_PROMPTS, N = 4, 2


def _posts(log: Path) -> int:
    return log.read_text().count(POSTS)


def _counts(logs, at_least: int) -> list[int]:
    """Each server's answered requests, once their sum reaches `at_least` (a server writes its
    access-log line just after the answer, so the last line may trail the client by a moment)."""
    deadline = time.monotonic() + 60
    while sum(_posts(log) for log in logs) < at_least and time.monotonic() < deadline:
        time.sleep(0.2)
    return [_posts(log) for log in logs]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny Qwen2 policy with a ChatML tokenizer, saved as a model directory."""
    from prefkit.toy.tiny import build_tokenizer, tiny_causal_lm

    d = tmp_path_factory.mktemp("tiny")
    tok = build_tokenizer(template="chatml")
    tiny_causal_lm(tok, arch="qwen2", hidden=32, layers=1, heads=2).save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def servers(model_dir, tmp_path_factory):
    from prefkit.testing import transformers_serve

    logs = tmp_path_factory.mktemp("serve")
    with transformers_serve(model_dir, logs / "a.log", lifetime=600, warm_up=True) as a, \
            transformers_serve(model_dir, logs / "b.log", lifetime=600, warm_up=True) as b:
        yield [a, b], [logs / "a.log", logs / "b.log"]


def _recipe(path: Path, model: Path, urls: list[str]) -> Path:
    served = {"server": "transformers", "concurrency": 4, "timeout": 300, "max_retries": 1}
    path.write_text(json.dumps({      # JSON is YAML
        "name": "two-servers",
        "policy": str(model),
        "prompts": {"train": {"build": "prefkit.toy.recipes:prompts", "args": {"n": N_PROMPTS, "seed": 3}}},
        "rounds": 1,
        "stages": {
            "generate": {"n": N, "temperature": 1.0, "max_new_tokens": 8, "seed": 0, "servers": urls,
                         "backend_options": served},
            "score": {"judge": {"model": str(model), "base_urls": urls, **served},
                      "judge_params": {"temperature": 0.0, "max_tokens": 12}},
        }}, indent=1))
    return path


def _cmd(recipe, run_dir, *extra):
    return [sys.executable, "-m", "prefkit", "run", str(recipe), "-o", str(run_dir), "--no-progress", *extra]


def _done(run_dir, stage) -> dict:
    (marker,) = list(Path(run_dir).glob(f"round-1/{stage}/*/done"))
    return json.loads(marker.read_text())


def test_generate_and_judge_over_two_servers(servers, model_dir, tmp_path):
    urls, logs = servers
    before = _counts(logs, len(logs))               # the warm-up requests, one a server
    recipe, d = _recipe(tmp_path / "recipe.yaml", model_dir, urls), tmp_path / "run"

    proc = subprocess.run(_cmd(recipe, d, "--until", "generate"), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    gen = _done(d, "generate")
    assert gen["metrics"] == {"prompts": N_PROMPTS, "responses": N_PROMPTS * N, "failed": 0}
    after_generate = _counts(logs, sum(before) + N_PROMPTS * N)
    generated = [a - b for a, b in zip(after_generate, before)]
    assert sum(generated) == N_PROMPTS * N and min(generated) >= 1, generated       # both servers sampled

    proc = subprocess.run(_cmd(recipe, d), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _done(d, "generate") == gen                                                # not run again
    score = _done(d, "score")
    m = score["metrics"]
    rows = [json.loads(x) for x in open(score["output"])]
    responses = [resp for r in rows for resp in r["responses"]]
    asked = [resp for resp in responses if resp["text"]]       # an empty sample is not sent to the judge
    assert len(responses) == N_PROMPTS * N and len(asked) >= N_PROMPTS * N - 2
    assert m["judge_run"]["requested"] == m["judge_run"]["done"] == len(asked)
    assert m["scorer"] == f"judge openai:{model_dir} @ {urls[0]}, {urls[1]} (concurrency 4)"
    judged = [c - a for c, a in zip(_counts(logs, sum(after_generate) + len(asked)), after_generate)]
    assert sum(judged) == len(asked) and min(judged) >= 1, judged                   # both servers judged

    # every judged response has the judge's score or the recorded reason why not (a random tiny
    # model does not write the 'overall:' line the parser reads): never a made-up score
    for resp in asked:
        assert (resp["score"] is not None) != bool(resp.get("judge_failure"))
    assert sum(m["judge_failures"].values()) == sum(resp["score"] is None for resp in responses)
