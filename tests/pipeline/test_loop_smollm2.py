"""The two-round on-policy reward-augmentation loop on the real SmolLM2-135M-Instruct (LoRA), in
the form `examples/recipes/smollm2-ra-onpolicy.yaml` ships, with fewer prompts and shorter samples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prefkit.pipeline import load_recipe, run

pytestmark = pytest.mark.slow

RECIPE = Path(__file__).resolve().parents[2] / "examples" / "recipes" / "smollm2-ra-onpolicy.yaml"
SMALL = ["prompts.train.args.n=8", "prompts.train.per_round=4", "prompts.eval.args.n=4", "generate.n=3",
         "generate.max_new_tokens=12", "evaluate.max_new_tokens=12", "train.per_device_train_batch_size=2",
         # a round may have one optimizer step here: with warmup its learning rate would be 0 and the
         # round's model would equal the previous one
         "train.warmup_ratio=0"]


def test_two_round_loop_on_smollm2(smollm2_dir, tmp_path):
    d = tmp_path / "run"
    res = run(load_recipe(RECIPE, overrides=SMALL), d, progress=False, log=lambda m: None)
    steps = {f"round-{e['round']}/{e['stage']}": e for e in res["steps"]}
    assert all(e["status"] == "done" for e in res["steps"]) and len(steps) == 13
    assert res["manifest"]["initial_policy"]["path"] == str(smollm2_dir)
    r1, r2 = steps["round-1/train"], steps["round-2/train"]
    # LoRA merged into a whole model that round 2 samples from; the reference stays the initial policy
    assert (Path(r1["output"]) / "config.json").is_file() and r1["output"].endswith("merged")
    assert steps["round-2/generate"]["inputs"]["policy"] == r1["output_hash"] != r2["output_hash"]
    assert r2["metrics"]["reference"] == "initial" and r2["metrics"]["reference_model"] == str(smollm2_dir)
    results = json.loads((d / "results.json").read_text())
    assert [r["round"] for r in results["reward_per_round"]] == [0, 1, 2]
    assert (d / "report.md").is_file()
