"""The HTTP path against a real `transformers serve` process serving a tiny local model directory."""

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from prefkit.synth.backends import OpenAIBackend, SamplingParams
from prefkit.synth.runs import Request, Run

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def served_model(tmp_path, chatml_tokenizer):
    from prefkit.toy.tiny import tiny_causal_lm

    model_dir = tmp_path / "tiny-chat"
    tiny_causal_lm(chatml_tokenizer, arch="qwen2", hidden=32, layers=1, heads=2).save_pretrained(model_dir)
    chatml_tokenizer.save_pretrained(model_dir)
    exe = shutil.which("transformers", path=str(Path(sys.executable).parent)) or shutil.which("transformers")
    if exe is None:
        pytest.skip("the `transformers` CLI is not installed")
    port = _free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    log = open(tmp_path / "serve.log", "w")
    # `timeout` bounds the server's life even if this test dies without cleaning up
    proc = subprocess.Popen(["timeout", "180", exe, "serve", str(model_dir), "--host", "127.0.0.1", "--port",
                             str(port), "--device", "cpu"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail("transformers serve did not come up:\n" + (tmp_path / "serve.log").read_text()[-3000:])
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/v1", str(model_dir)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def test_chat_completions_through_a_real_transformers_server(served_model, tmp_path):
    url, model = served_model
    backend = OpenAIBackend(model=model, base_urls=[url], concurrency=2, timeout=60, max_retries=2)
    params = SamplingParams(temperature=0.0, max_tokens=6)
    reqs = [Request([{"role": "user", "content": f"Sort these numbers {i} 3 1"}], params, 0, "t") for i in range(4)]
    with Run(tmp_path / "run", progress=False) as run:
        recs = run.generate(backend, reqs)
    assert all(r["ok"] for r in recs), [r.get("detail") for r in recs]
    assert all(isinstance(r["text"], str) for r in recs)
    assert all(0 < r["completion_tokens"] <= 6 and r["prompt_tokens"] > 0 for r in recs)
    assert run.stats.completion_tokens == sum(r["completion_tokens"] for r in recs)
    # resuming asks the server nothing
    with Run(tmp_path / "run", progress=False) as run:
        again = run.generate(backend, reqs)
    assert run.stats.resumed == 4 and run.stats.done == 0 and again == recs
