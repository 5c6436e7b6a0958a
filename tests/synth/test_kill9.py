"""kill -9 in the middle of `prefkit synth`, then resume: every row once, finished work never redone."""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

N_PROMPTS = 40


def _start_server(*extra):
    proc = subprocess.Popen([sys.executable, "-m", "prefkit.testing", "--port", "0", "--max-lifetime", "90",
                             *extra], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.startswith("READY"), line
    return proc, int(line.split()[1])


def _lines(path: Path):
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_kill9_mid_run_then_resume(tmp_path):
    src = tmp_path / "prompts.jsonl"
    src.write_text("".join(json.dumps({"prompt": f"Prompt {i}: say something."}) + "\n" for i in range(N_PROMPTS)))
    out = tmp_path / "pairs.jsonl"
    run_file = tmp_path / "pairs.jsonl.run" / "requests.jsonl"
    server, port = _start_server("--latency", "0.08", "--p-500", "0.1", "--p-429", "0.1", "--p-drop", "0.05",
                                 "--p-malformed", "0.05", "--seed", "3")
    cmd = [sys.executable, "-m", "prefkit", "synth", "rlcd", str(src), "-o", str(out), "--base-url",
           f"http://127.0.0.1:{port}/v1", "--model", "fake", "--concurrency", "4", "--max-retries", "30",
           "--no-progress"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    try:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 60
        while len(_lines(run_file)) < 20 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
        before = _lines(run_file)
        assert 20 <= len(before) < 2 * N_PROMPTS and not out.exists()
        # a write torn by the kill leaves half a line: simulate the worst case on top
        with open(run_file, "ab") as fh:
            fh.write(b'{"key": "deadbeef", "ok": true, "te')

        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr[-2000:]
        assert f"{len(before)} resumed" in res.stdout  # the summary is on stdout, diagnostics on stderr
    finally:
        server.kill()
        server.wait(10)
    after = _lines(run_file)
    assert after[:len(before)] == before  # nothing finished was rewritten
    keys = Counter(x["key"] for x in after)
    assert len(keys) == 2 * N_PROMPTS and set(keys.values()) == {1}  # every request once, no duplicates
    assert all(x["ok"] for x in after)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted(r["source_row"] for r in rows) == list(range(N_PROMPTS))
