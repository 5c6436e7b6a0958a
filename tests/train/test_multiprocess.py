"""A real 2-process CPU run (torchrun, gloo) gives the same loss trajectory as one process with
the same global batch -- for eps-DPO, so the base-beta update's all-gather over processes is
checked too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from train_helpers import make_pairs, write_jsonl

pytestmark = pytest.mark.slow


def _run(cmd, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", PYTHONHASHSEED="0")
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _logs(out):
    rep = json.loads((Path(out) / "prefkit_train_report.json").read_text())
    return rep, [h for h in rep["log_history"] if "loss" in h]


def test_two_processes_match_one_process(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(16, seed=3))
    common = ["train", "dpo", data, "--model", tiny_model_dir, "--loss-type", "eps-dpo", "--beta", "0.1",
              "--eps", "0.05", "--max-steps", "4", "--learning-rate", "5e-3", "--logging-steps", "1",
              "--save-steps", "1000", "--max-length", "64", "--max-prompt-length", "32", "--precision", "fp32",
              "--seed", "0", "--disable-tqdm", "--set", "report_to=[none]"]
    one, two = tmp_path / "one", tmp_path / "two"
    # global batch 4 either way: 1 process x 4 pairs, or 2 processes x 2 pairs
    _run([sys.executable, "-m", "prefkit", *common, "-o", str(one), "--per-device-train-batch-size", "4"], tmp_path)
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
          "-m", "prefkit", *common, "-o", str(two), "--per-device-train-batch-size", "2"], tmp_path)
    rep1, logs1 = _logs(one)
    rep2, logs2 = _logs(two)
    assert rep1["world_size"] == 1 and rep2["world_size"] == 2
    assert [h["step"] for h in logs1] == [h["step"] for h in logs2] == [1, 2, 3, 4]
    for h1, h2 in zip(logs1, logs2):
        for key in ("loss", "rewards/margins", "logps/chosen", "beta/base", "eps/frac_plus", "eps/frac_minus"):
            assert h2[key] == pytest.approx(h1[key], abs=1e-4, rel=1e-4), (h1["step"], key, h1[key], h2[key])
    assert len({round(h["loss"], 6) for h in logs1}) > 1
