"""The demo's configuration, method names and progress line (shared by its stages and its report)."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

from prefkit.toy.judge import JudgeConfig
from prefkit.toy.world import CURVE_GOALS, QUICK_CONFIG, ToyWorldConfig

PROBE_THRESHOLD = 5.0

# Trained methods: arms of the demo's main recipe (src/prefkit/toy/demo_recipes/main.yaml).
METHODS = ("dpo", "ra", "ra-half", "eps-dpo")
# Every policy the main table reports: the base policy twice (no goal; the best goal), then the methods.
POLICIES = ("base", "base-conditioned", *METHODS)
CONDITIONED = ("base-conditioned", "ra", "ra-half")   # sampled with the best goal (10)
CURVE_POLICIES = ("base", "dpo", "ra")
# The selection ablation's metrics: the arms select-<metric> of the main recipe.
SELECT_METRICS = ("alignment-potential", "explicit", "implicit", "random")                      # goal-following curves

METHOD_LABELS = {
    "base": "base policy, no goal",
    "base-conditioned": "base policy conditioned on goal 10",
    "dpo": "DPO",
    "ra": "DPO on reward-augmented data (RA), goal 10",
    "ra-half": "RA half: a random half of D^w + D^l, goal 10",
    "eps-dpo": "eps-DPO",
}


def no_prior(world: ToyWorldConfig) -> ToyWorldConfig:
    """The same world without the goal prior (today's world before it had one)."""
    return dataclasses.replace(world, goal_prior=0.0, goal_noise=0.0)


@dataclass
class DemoConfig:
    seeds: int = 3
    n_train_prompts: int = 400
    n_eval_prompts: int = 100
    samples_per_prompt: int = 4
    eval_samples: int = 4
    # Samples per held-out prompt for each goal-following curve point (None: eval_samples). Two,
    # not four, to keep the default demo within 5 minutes (docs/toy.md, "Timing"); the samples are
    # the evaluation's first ones (the same requests), so a curve's goal-10 point is the mean of
    # the conditioned evaluation's samples 0 and 1.
    curve_samples: int | None = 2
    temperature: float = 1.0
    max_new_tokens: int = 24
    beta: float = 0.1
    learning_rate: float = 5e-4
    batch_size: int = 16
    probe_pairs: int = 48
    probe_points: int = 8
    methods: tuple[str, ...] = METHODS
    rm_prompts: int = 200          # training prompts per synth method (the same budget for each)
    rm_eval_prompts: int = 200     # held-out prompts for the gold-labelled RM evaluation pairs
    rm_learning_rate: float = 5e-4
    rm_epochs: int = 2
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    world: ToyWorldConfig = field(default_factory=ToyWorldConfig)
    # The ablation world: the main table again (no selection or reward-model stage) in this world;
    # None skips it. Default: the main world without its goal prior.
    ablation_world: ToyWorldConfig | None = field(default_factory=lambda: no_prior(ToyWorldConfig()))
    # Hooks for other worlds (the real model, prefkit.toy.real_model): extra DPOConfig fields for
    # every trained method (e.g. use_peft), the policies that get a goal-following curve, and the
    # judged score from which a rejected response counts as high quality in the unlearning probe.
    train_options: dict = field(default_factory=dict)
    curve_policies: tuple[str, ...] = CURVE_POLICIES
    curve_goals: tuple[float, ...] = CURVE_GOALS
    probe_threshold: float = PROBE_THRESHOLD
    # Run the worlds' jobs (base policies, then seeds) in two processes (when there are 2+ cores).
    parallel_worlds: bool = True
    # The main world's extra parts: the selection ablation (arms of the main recipe) and the
    # reward-model comparison.
    select: bool = True
    reward_models: bool = True
    # Arms beyond the main recipe's (name -> the arm's recipe mapping, e.g. the real-model lab's
    # papers-scale DPO, prefkit.toy.real_lab), run after the methods; and the evaluation's rows per
    # decoding batch (None: the recipe's).
    extra_arms: dict = field(default_factory=dict)
    eval_batch_size: int | None = None


def quick_config(seeds: int = 1) -> DemoConfig:
    return DemoConfig(seeds=seeds, n_train_prompts=48, n_eval_prompts=16, eval_samples=2, curve_samples=1,
                      probe_pairs=8, probe_points=2, rm_prompts=32, rm_eval_prompts=32, world=QUICK_CONFIG,
                      ablation_world=no_prior(QUICK_CONFIG))


def world_name(world: ToyWorldConfig) -> str:
    if getattr(world, "name", None):   # a world that names itself (the real model's)
        return world.name
    return "goal prior" if world.goal_prior > 0 else "no goal prior"


def log(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)
