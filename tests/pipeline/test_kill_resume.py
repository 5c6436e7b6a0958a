"""`kill -9` in the middle of a stage, then the same command: the same data hashes and the same
training metrics as an uninterrupted run (generation resumes chunk by chunk, training from its
latest checkpoint). A checkpoint that cannot be resumed is one line naming it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import TOY_RECIPE as TOY, kill_when

# one round, up to training; generation in 16 chunks of 1 prompt (a chunk takes milliseconds: with 4
# chunks the run sometimes finished generating before the kill landed), a checkpoint every 2 steps
SETTINGS = ["prompts.train.args.n=16", "prompts.train.per_round=16", "generate.chunk_size=1",
            "train.per_device_train_batch_size=4", "train.save_strategy=steps", "train.save_steps=2",
            "train.logging_steps=1"]
DATA_STAGES = ("generate", "score", "pair", "relabel")


def _cmd(run_dir) -> list[str]:
    args = [sys.executable, "-m", "prefkit", "run", str(TOY), "-o", str(run_dir), "--rounds", "1",
            "--until", "train", "--no-progress"]
    for s in SETTINGS:
        args += ["--set", s]
    return args


def _markers(run_dir) -> dict:
    out = {}
    for stage in DATA_STAGES + ("train",):
        (done,) = list((Path(run_dir) / "round-1" / stage).glob("*/done"))
        out[stage] = json.loads(done.read_text())
    return out


def _kill_when(run_dir, ready, timeout=600) -> None:
    kill_when(_cmd(run_dir), run_dir, ready, timeout)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    d = tmp_path_factory.mktemp("kill") / "whole"
    proc = subprocess.run(_cmd(d), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return _markers(d)


def _same_as(whole: dict, run_dir) -> dict:
    proc = subprocess.run(_cmd(run_dir), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = _markers(run_dir)
    for stage in DATA_STAGES:
        assert got[stage]["output_hash"] == whole[stage]["output_hash"], stage
    a, b = whole["train"]["metrics"]["loss_values"], got["train"]["metrics"]["loss_values"]
    assert [s for s, _ in a] == [s for s, _ in b] and len(a) >= 4
    assert [v for _, v in b] == pytest.approx([v for _, v in a], abs=1e-5)
    return got


@pytest.mark.slow
def test_kill_during_generation_then_rerun(uninterrupted, tmp_path):
    d = tmp_path / "run"
    _kill_when(d, lambda p: len(list(p.glob("round-1/generate/*/chunks/chunk-*.json"))) >= 2)
    chunks = list(d.glob("round-1/generate/*/chunks/chunk-*.json"))
    assert 2 <= len(chunks) < 16 and not list(d.glob("round-1/generate/*/done"))
    status = subprocess.run([sys.executable, "-m", "prefkit", "run", "--status", str(d)], capture_output=True,
                            text=True)
    assert "round-1/generate" in status.stdout and "interrupted" in status.stdout
    _same_as(uninterrupted, d)


@pytest.mark.slow
def test_kill_during_training_then_rerun(uninterrupted, tmp_path):
    d = tmp_path / "run"
    _kill_when(d, lambda p: any(p.glob("round-1/train/*/model/checkpoint-2/prefkit_trainer_state.json")))
    assert not list(d.glob("round-1/train/*/done"))
    got = _same_as(uninterrupted, d)
    (report,) = list(d.glob("round-1/train/*/model/prefkit_train_report.json"))
    assert json.loads(report.read_text())["resumed_from"].endswith("checkpoint-2")
    assert got["train"]["output_hash"]


@pytest.mark.slow
def test_a_checkpoint_without_weights_is_one_line(tmp_path):
    d = tmp_path / "run"
    _kill_when(d, lambda p: any(p.glob("round-1/train/*/model/checkpoint-2/prefkit_trainer_state.json")))
    (ckpt,) = list(d.glob("round-1/train/*/model/checkpoint-2"))
    for extra in ckpt.parent.glob("checkpoint-*"):
        if extra != ckpt:
            import shutil
            shutil.rmtree(extra)
    (ckpt / "model.safetensors").unlink()
    proc = subprocess.run(_cmd(d), capture_output=True, text=True)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last == (f"prefkit run: error: {ckpt}: cannot resume from this checkpoint: its weights file "
                    f"(model.safetensors or pytorch_model.bin) is missing; delete {ckpt} to resume from the one "
                    "before it")
    assert "Traceback" not in proc.stderr
