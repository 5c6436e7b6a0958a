"""`prefkit train dpo` on SmolLM2-135M-Instruct equals TRL 1.16's DPOTrainer step for step.

Both train the real model for two full-batch steps on the same 4 pairs with the same optimiser,
schedule and seed; at every step the loss, the reward metrics, the policy log-probs and the
gradient norm must agree. Step 1 checks the reference (policy = reference: rewards 0, loss
log 2); step 2 runs after a real update, so the rewards are non-zero and the comparison is not
vacuous."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from trl_runs import assert_steps_equal, prefkit_config, step_logs, trl_dpo

pytestmark = pytest.mark.slow
LR, BETA = 2e-5, 0.5


def _report(out) -> dict:
    return json.loads((Path(out) / "prefkit_train_report.json").read_text())


@pytest.fixture(scope="module")
def trl_default(real_model, real_tokenizer, pairs, tmp_path_factory):
    """TRL's DPOTrainer with its defaults (sigmoid loss, precomputed reference), two steps."""
    import copy

    return trl_dpo(copy.deepcopy(real_model).train(), real_tokenizer, pairs, tmp_path_factory.mktemp("trl"),
                   steps=2, lr=LR, beta=BETA)


def test_default_dpo_equals_trl_with_reference_logps_precomputed_and_cached(tmp_path, trl_default, pairs):
    from prefkit.train import train_dpo

    trl = trl_default
    # the defaults, loading the real model by its shortcut name (the path a new user takes)
    cfg = prefkit_config(tmp_path / "pk", steps=2, lr=LR, beta=BETA, cache=tmp_path / "cache",
                         model_name_or_path="smollm2")
    out = train_dpo(cfg, train_dataset=pairs)
    report = _report(out)
    assert report["reference"]["mode"] == "precomputed (disk cache)"
    assert report["reference"]["cache_hit"] is False and Path(report["reference"]["path"]).exists()

    # the cached reference log-probs are TRL's precomputed ones
    import numpy as np

    from prefkit.train import reference_cache as rc

    cached = rc.load_or_compute(report["reference"]["key"], lambda: pytest.fail("the cache was not written"),
                                cache_dir=tmp_path / "cache", expected_rows=len(pairs))
    assert cached.hit
    np.testing.assert_allclose(cached.chosen, trl.train_dataset["ref_chosen_logps"], atol=2e-3, rtol=0)
    np.testing.assert_allclose(cached.rejected, trl.train_dataset["ref_rejected_logps"], atol=2e-3, rtol=0)

    ours, theirs = step_logs(report["log_history"]), step_logs(trl.state.log_history)
    assert_steps_equal(ours, theirs)
    assert abs(ours[0]["loss"] - math.log(2)) < 1e-4 and ours[0]["rewards/margins"] == pytest.approx(0, abs=1e-4)
    assert abs(ours[1]["rewards/margins"]) > 1e-3, ours[1]   # step 2 compares real, non-zero rewards


def test_lora_dpo_equals_trl(tmp_path, fresh_model, real_tokenizer, pairs):
    from peft import LoraConfig

    from prefkit.train import train_dpo

    lora = dict(r=8, lora_alpha=16, lora_dropout=0.0)
    peft_config = LoraConfig(task_type="CAUSAL_LM", target_modules="all-linear", **lora)
    trl = trl_dpo(fresh_model(), real_tokenizer, pairs, tmp_path / "trl", steps=2, lr=1e-3, beta=BETA,
                  peft_config=peft_config, precompute=False)
    cfg = prefkit_config(tmp_path / "pk", steps=2, lr=1e-3, beta=BETA, cache=tmp_path / "cache", use_peft=True,
                         lora_r=8, lora_alpha=16, lora_dropout=0.0, precompute_ref_log_probs=False)
    out = train_dpo(cfg, model=fresh_model(), tokenizer=real_tokenizer, train_dataset=pairs)
    report = _report(out)
    assert report["reference"]["mode"] == "live: the adapter-disabled base model"
    ours, theirs = step_logs(report["log_history"]), step_logs(trl.state.log_history)
    assert_steps_equal(ours, theirs)
    assert abs(ours[1]["rewards/margins"]) > 1e-3, ours[1]
    assert (Path(out) / "adapter_config.json").exists()


def test_eps_dpo_with_a_live_reference(tmp_path, fresh_model, real_tokenizer, pairs, trl_default):
    """TRL has no eps-DPO loss. At step 1 the live reference equals the policy, every pair keeps
    the base beta and eps-DPO is DPO: that step is compared with TRL in full (gradient included).
    Step 2 checks the per-pair beta choice and the base-beta update (the rule itself is tested
    in tests/train/test_eps_dpo.py)."""
    from prefkit.train import train_dpo

    trl = trl_default
    cfg = prefkit_config(tmp_path / "pk", steps=2, lr=LR, beta=BETA, cache=tmp_path / "cache",
                         loss_type="eps-dpo", eps=0.05)
    out = train_dpo(cfg, model=fresh_model(), tokenizer=real_tokenizer, train_dataset=pairs)
    report = _report(out)
    assert report["reference"]["mode"] == "live: a frozen copy of the initial policy"
    ours, theirs = step_logs(report["log_history"]), step_logs(trl.state.log_history)
    assert len(ours) == 2
    # step 1: the policy is its reference, so both perturbed policies equal it and no pair moves its
    # beta; eps-DPO is then exactly DPO, and its loss, log-probs and gradient are TRL's
    assert ours[0]["eps/frac_minus"] == ours[0]["eps/frac_plus"] == 0.0, ours[0]
    assert ours[0]["beta/mean"] == pytest.approx(BETA, rel=1e-12)
    assert_steps_equal(ours[:1], theirs[:1])
    # step 2: each pair keeps beta or moves it to beta/(1 +- eps); the base beta becomes their mean
    b = ours[0]["beta/base"] if "beta/base" in ours[0] else BETA
    assert b / 1.05 - 1e-12 <= ours[1]["beta/mean"] <= b / 0.95 + 1e-12
    assert report["final_base_beta"] == pytest.approx(ours[1]["beta/mean"], rel=1e-9)
    assert abs(ours[1]["loss"] - math.log(2)) > 1e-4    # the policy moved away from the reference
