"""Helpers for the trainer tests (tiny pairs, jsonl files, configs, logged losses)."""

from __future__ import annotations

import json
import random

from helpers import write_jsonl  # noqa: F401  (the shared one; train tests import it from here)

WORDS = ["apple", "banana", "cherry", "date", "fig", "grape", "lemon", "mango", "pear", "plum"]


def make_pairs(n: int, seed: int = 0, conversational: bool = True) -> list[dict]:
    """Prompts asking for a list of fruits; chosen lists them in order, rejected shuffles them."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        items = rng.sample(WORDS, rng.randint(2, 4))
        prompt = f"Sort these words: {', '.join(items)}."
        good = ", ".join(sorted(items))
        bad = ", ".join(sorted(items, reverse=True))
        if conversational:
            rows.append({"prompt": [{"role": "user", "content": prompt}],
                         "chosen": [{"role": "assistant", "content": good}],
                         "rejected": [{"role": "assistant", "content": bad}]})
        else:
            rows.append({"prompt": prompt + "\n", "chosen": good, "rejected": bad})
    return rows


def base_config(model_dir, train_file, out, **kw):
    from prefkit.train import DPOConfig

    defaults = dict(model_name_or_path=model_dir, train_file=train_file, output_dir=str(out),
                    per_device_train_batch_size=4, per_device_eval_batch_size=4, max_steps=4,
                    learning_rate=1e-3, logging_steps=1, save_steps=1000, max_length=64, max_prompt_length=32,
                    precision="fp32", disable_tqdm=True, report_to=["none"], seed=0,
                    ref_cache_dir=str(out) + "_refcache")
    defaults.update(kw)
    return DPOConfig(**defaults)


def train_losses(out_dir, prefix="") -> list[float]:
    from pathlib import Path

    rep = json.loads((Path(out_dir) / "prefkit_train_report.json").read_text())
    return [h[prefix + "loss"] for h in rep["log_history"] if prefix + "loss" in h]
