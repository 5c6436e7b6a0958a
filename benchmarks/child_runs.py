"""One benchmark mode per child process, for the benchmarks that compare prefkit with a peer
(train_vs_trl.py, train_vs_trl_real.py): each mode runs in a fresh interpreter so that its peak
RSS and import state are its own, and reports one `RESULT {json}` line on stdout."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def child_env(threads: int) -> dict:
    """The environment every child runs in: offline, quiet, `threads` BLAS/torch threads."""
    return dict(os.environ, TQDM_DISABLE="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
                HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS=str(threads))


def run_modes(script: str, modes: list[str], args: list[str], threads: int, echo: bool = False) -> dict:
    """{mode: its RESULT} for `python SCRIPT --child MODE ARGS...`; a mode that fails is printed
    with the tail of its stderr and left out."""
    results = {}
    for mode in modes:
        print(f"running {mode} ...", flush=True)
        proc = subprocess.run([sys.executable, script, "--child", mode, *args], env=child_env(threads),
                              capture_output=True, text=True)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not line:
            print(f"{mode} FAILED (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
            continue
        results[mode] = json.loads(line[-1][len("RESULT "):])
        if echo:
            print("  " + json.dumps(results[mode]), flush=True)
    return results
