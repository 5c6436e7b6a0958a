"""The train stage started in 2 real CPU processes (torchrun, gloo) gives the loss trajectory of
one process with the same global batch; the data stages before it are shared in one RUN_DIR."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prefkit.pipeline import load_recipe, run
from helpers import TOY_RECIPE as TOY

pytestmark = pytest.mark.slow

SETTINGS = ["prompts.train.args.n=16", "prompts.train.per_round=16", "train.logging_steps=1", "train.max_steps=3",
            "train.precision=fp32"]


def _train(run_dir, extra):
    recipe = load_recipe(TOY, overrides=SETTINGS + extra, rounds=1)
    res = run(recipe, run_dir, until="train", progress=False, log=lambda m: None)
    step = next(e for e in res["steps"] if e["stage"] == "train")
    return json.loads((Path(run_dir) / step["dir"] / "done").read_text()), res   # with the per-step losses


def test_two_process_train_stage_matches_one_process(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONHASHSEED", "0")
    d = tmp_path / "run"
    one, _ = _train(d, ["train.per_device_train_batch_size=4"])
    two, res = _train(d, ["train.per_device_train_batch_size=2", "train.launch={num_processes: 2}"])
    # the data stages (and the baseline evaluation) are shared; only training runs again
    assert [f"round-{e['round']}/{e['stage']}" for e in res["steps"] if e.get("ran")] == ["round-1/train"]
    a, b = one["metrics"]["loss_values"], two["metrics"]["loss_values"]
    assert [s for s, _ in a] == [s for s, _ in b] == [1, 2, 3]
    assert [v for _, v in b] == pytest.approx([v for _, v in a], abs=1e-4, rel=1e-4)
    reps = [json.loads(p.read_text()) for p in Path(d).glob("round-1/train/*/model/prefkit_train_report.json")]
    assert sorted(r["world_size"] for r in reps) == [1, 2]
