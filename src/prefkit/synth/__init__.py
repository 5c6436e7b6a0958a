"""Synthetic preference data and AI feedback.

    from prefkit.synth import OpenAIBackend, rmboost
    backend = OpenAIBackend(model="Qwen/Qwen2.5-7B-Instruct", base_urls=["http://localhost:8000/v1"])
    pairs = rmboost("prompts.jsonl", backend, run_dir="runs/rmboost", guideline="ultrafeedback")

Backends (`backends`), durable resumable request runs (`runs`), the synth-method registry and
shared options (`methods`: `register_synth_method` adds a method), RMBoost (`rmboost`), the
RLAIF / West-of-N / RLCD baselines (`baselines`), the UltraFeedback-style judge and reward-model
scoring (`judge.score`; the reward-model scorer itself is `prefkit.reward_model`, shared with
`prefkit.evaluate`). See docs/synth.md.
"""

from prefkit.synth.backends import Backend, Completion, LocalBackend, OpenAIBackend, RequestFailed, SamplingParams
from prefkit.synth.baselines import RlaifOptions, RlcdOptions, WestOfNOptions, rlaif, rlcd, west_of_n
from prefkit.synth.judge import ScoreOptions, score
from prefkit.synth.methods import (
                                   SynthMethod,
                                   SynthOptions,
                                   available_synth_methods,
                                   get_synth_method,
                                   register_synth_method,
)
from prefkit.synth.rmboost import RMBoostOptions, rmboost
from prefkit.synth.runs import Request, Run, RunStore

__all__ = ["Backend", "Completion", "LocalBackend", "OpenAIBackend", "RequestFailed", "SamplingParams",
           "rmboost", "rlaif", "west_of_n", "rlcd", "score", "ScoreOptions", "Request", "Run", "RunStore",
           "SynthOptions", "RMBoostOptions", "RlaifOptions", "WestOfNOptions", "RlcdOptions", "SynthMethod",
           "register_synth_method", "get_synth_method", "available_synth_methods"]
