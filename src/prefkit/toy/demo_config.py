"""The demo's configuration, method names and progress line (shared by its stages and its report)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from prefkit.toy.judge import JudgeConfig
from prefkit.toy.world import QUICK_CONFIG, ToyWorldConfig

PROBE_THRESHOLD = 5.0


@dataclass
class DemoConfig:
    seeds: int = 3
    n_train_prompts: int = 400
    n_eval_prompts: int = 100
    samples_per_prompt: int = 4
    eval_samples: int = 4
    temperature: float = 1.0
    max_new_tokens: int = 24
    beta: float = 0.1
    learning_rate: float = 5e-4
    batch_size: int = 16
    probe_pairs: int = 48
    probe_points: int = 8
    methods: tuple[str, ...] = ("dpo", "ra", "eps-dpo")
    rm_prompts: int = 200          # training prompts per synth method (the same budget for each)
    rm_eval_prompts: int = 200     # held-out prompts for the gold-labelled RM evaluation pairs
    rm_learning_rate: float = 5e-4
    rm_epochs: int = 2
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    world: ToyWorldConfig = field(default_factory=ToyWorldConfig)


def quick_config(seeds: int = 1) -> DemoConfig:
    return DemoConfig(seeds=seeds, n_train_prompts=48, n_eval_prompts=16, eval_samples=2, probe_pairs=8,
                      probe_points=2, rm_prompts=32, rm_eval_prompts=32, world=QUICK_CONFIG)


METHOD_LABELS = {"base": "base policy", "dpo": "DPO", "ra": "DPO on reward-augmented data",
                 "eps-dpo": "eps-DPO"}
METHODS = ("dpo", "ra", "eps-dpo")


def log(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)
