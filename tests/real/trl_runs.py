"""Run TRL 1.16's DPOTrainer and prefkit's train_dpo on the same real model, data and settings,
and compare what both log at every step (tests/real/test_real_train_*.py)."""

from __future__ import annotations

import datasets

STEP_KEYS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
             "logps/chosen", "logps/rejected")
# fp32 on CPU; the two sides batch and pad the same rows the same way, so what is left is the
# order of floating-point sums. Log-probs are sums over ~10 tokens (values around -20 to -60).
TOL = {"loss": 2e-4, "rewards/chosen": 2e-4, "rewards/rejected": 2e-4, "rewards/margins": 2e-4,
       "rewards/accuracies": 1e-9, "logps/chosen": 2e-3, "logps/rejected": 2e-3}


def step_logs(log_history) -> list[dict]:
    return [h for h in log_history if "loss" in h and "train_runtime" not in h]


def trl_dpo(model, tokenizer, rows: datasets.Dataset, out, *, steps: int, lr: float, beta: float,
            peft_config=None, precompute: bool = True, seed: int = 42):
    """A TRL DPOTrainer trained `steps` full-batch steps; returns the trainer."""
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(output_dir=str(out), per_device_train_batch_size=len(rows), max_steps=steps,
                     learning_rate=lr, lr_scheduler_type="linear", beta=beta, loss_type=["sigmoid"],
                     max_length=1024, report_to=[], use_cpu=True, bf16=False, logging_steps=1,
                     save_strategy="no", seed=seed, precompute_ref_log_probs=precompute, disable_tqdm=True,
                     gradient_checkpointing=False)
    trainer = DPOTrainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer,
                         peft_config=peft_config)
    trainer.train()
    return trainer


def prefkit_config(out, *, steps: int, lr: float, beta: float, cache, seed: int = 42, **extra):
    from prefkit.train.config import DPOConfig, load_config

    return load_config(DPOConfig, overrides=dict(
        output_dir=str(out), max_steps=steps, learning_rate=lr, beta=beta, per_device_train_batch_size=4,
        logging_steps=1, save_strategy="no", disable_tqdm=True, ref_cache_dir=str(cache), seed=seed, **extra))


def assert_steps_equal(prefkit_logs, trl_logs, keys=STEP_KEYS, grad_rtol: float | None = 2e-3):
    assert len(prefkit_logs) == len(trl_logs) > 0, (len(prefkit_logs), len(trl_logs))
    for step, (ours, theirs) in enumerate(zip(prefkit_logs, trl_logs), start=1):
        for k in keys:
            assert abs(ours[k] - theirs[k]) <= TOL[k], (step, k, ours[k], theirs[k])
        if grad_rtol is None:
            continue
        # the same gradient, not only the same loss
        assert abs(ours["grad_norm"] - theirs["grad_norm"]) <= grad_rtol * theirs["grad_norm"], \
            (step, ours["grad_norm"], theirs["grad_norm"])
