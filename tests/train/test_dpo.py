"""train_dpo end to end on transformers.Trainer: a tiny real Llama saved to disk, pairs read from
jsonl through prefkit.data.read, the reference precomputed and cached on disk."""

from __future__ import annotations

import json
import math
from pathlib import Path

from train_helpers import base_config, make_pairs, train_losses, write_jsonl


def _report(out):
    return json.loads((Path(out) / "prefkit_train_report.json").read_text())


def test_sigmoid_end_to_end_cached_reference_and_outputs(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prefkit.train import train_dpo

    data = tmp_path / "pairs.jsonl"
    write_jsonl(data, make_pairs(16))
    seen = []

    from transformers import TrainerCallback

    class Count(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            seen.append(state.global_step)

    def probe(model):  # e.g. the demo's unlearning probe: called in eval mode, without gradients
        assert not model.training and not __import__("torch").is_grad_enabled()
        return float(model.get_output_embeddings().weight.double().sum())

    cfg = base_config(tiny_model_dir, str(data), tmp_path / "out", max_steps=3)
    out = train_dpo(cfg, callbacks=[Count()], probes={"probe/head_sum": probe})
    rep = _report(out)
    assert seen == [1, 2, 3]
    logs = [h for h in rep["log_history"] if "loss" in h]
    assert len(logs) == 3
    assert len({h["probe/head_sum"] for h in logs}) == 3  # logged at each logging step, after each update
    for name in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                 "logps/chosen", "logps/rejected"):
        assert all(math.isfinite(h[name]) for h in logs), name
    # step 1: the policy is the reference, so rewards are 0 and the loss is log 2
    assert logs[0]["loss"] == __import__("pytest").approx(math.log(2), abs=1e-4)
    assert abs(logs[0]["rewards/margins"]) < 1e-4
    assert rep["reference"]["mode"].startswith("precomputed") and rep["reference"]["cache_hit"] is False
    assert rep["data"]["rows_out"] == 16 and rep["conditioning"] is None
    # the saved model and tokenizer load and differ from the initial weights
    AutoTokenizer.from_pretrained(out)
    trained = AutoModelForCausalLM.from_pretrained(out)
    init = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    diff = sum((a - b).abs().sum().item() for a, b in zip(trained.parameters(), init.parameters()))
    assert diff > 0

    # second run through the CLI, same model/data/settings, on relabeled data (a conditioning spec
    # beside the file): the reference cache is reused, the run is identical, the spec is copied in
    from prefkit.cli import main
    from prefkit.relabel import ConditioningSpec

    ConditioningSpec().write_beside(data)
    out2 = tmp_path / "out2"
    rc = main(["train", "dpo", str(data), str(out2), "--model", tiny_model_dir, "--max-steps", "3",
               "--per-device-train-batch-size", "4", "--learning-rate", "1e-3", "--logging-steps", "1",
               "--save-steps", "1000", "--max-length", "64", "--max-prompt-length", "32", "--precision", "fp32",
               "--seed", "0", "--disable-tqdm", "--ref-cache-dir", str(tmp_path / "out") + "_refcache"])
    assert rc == 0
    rep2 = _report(out2)
    assert rep2["reference"]["cache_hit"] is True and rep2["reference"]["key"] == rep["reference"]["key"]
    assert train_losses(out2) == train_losses(out)
    assert (out2 / "prefkit_conditioning.json").is_file()
    assert ConditioningSpec.from_dict(json.loads((out2 / "prefkit_conditioning.json").read_text())) == ConditioningSpec()
