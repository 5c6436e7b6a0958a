"""One process at a time in a run directory (`prefkit.pipeline.engine.run_dir_lock`): a second
`prefkit run` there is refused at once with one line naming the holder; the lock goes with its
holder however it ends (kill -9 included), so the run then resumes; a dry run and `--status` only
read, so they work beside a running process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import TOY_PAIRS as SMALL, TOY_RECIPE as TOY, run_toy_pairs

from prefkit.pipeline import load_recipe, run
from prefkit.pipeline.engine import RUN_LOCK, RunDirInUse, run_dir_lock

# A second process holding the lock as a running `prefkit run` does (the engine's own context
# manager), until it is killed: a real run could finish before the test's second command starts.
HOLDER = """
import sys, time
from pathlib import Path
from prefkit.pipeline.engine import run_dir_lock
with run_dir_lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def held(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(d)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield d, proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    proc.stdout.close()


def test_a_second_run_is_refused_naming_the_holder_then_resumes_after_kill_9(held):
    d, holder = held
    t0 = time.time()
    refused = run_toy_pairs(d)
    assert refused.returncode == 1, refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in refused.stderr
    assert f"run directory {d} is in use by another prefkit run (pid {holder.pid} on " in lines[0]
    assert not (d / "manifest.json").exists()                # refused before writing anything
    assert time.time() - t0 < 120                            # at once, not after waiting for the lock

    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    done = run_toy_pairs(d)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [p.parent.parent.name for p in sorted(d.glob("round-1/*/*/done"))] == ["generate", "pair", "score"]
    assert (d / RUN_LOCK).read_text().startswith("pid ")   # the last holder's line stays, harmless


def test_dry_run_and_status_work_beside_a_running_process(held, tmp_path):
    d, holder = held
    assert run_toy_pairs(d, "--dry-run").returncode == 0
    first = tmp_path / "first"
    assert run_toy_pairs(first).returncode == 0
    with run_dir_lock(first):   # as if a run were going on there
        st = subprocess.run([sys.executable, "-m", "prefkit", "run", "--status", str(first)],
                            capture_output=True, text=True)
        assert st.returncode == 0, st.stderr
        assert "generate" in st.stdout
    assert holder.poll() is None


def test_in_process_api_raises_run_dir_in_use(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    with run_dir_lock(d):
        with pytest.raises(RunDirInUse, match=f"pid {os.getpid()} "):
            run(load_recipe(TOY, overrides=SMALL, rounds=1), d, until="pair", progress=False, log=lambda m: None)
    # released: the same call now runs
    got = run(load_recipe(TOY, overrides=SMALL, rounds=1), d, until="pair", progress=False, log=lambda m: None)
    assert any(e.get("ran") for e in got["steps"])
