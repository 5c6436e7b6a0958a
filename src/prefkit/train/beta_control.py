"""The beta a DPO-family loss trains with: the protocol `PreferenceTrainer` talks to, the fixed
beta, and the registry of the others (eps-DPO's lives in prefkit.train.eps_dpo).

A beta control has:
- `loss_name`: the registered loss (prefkit.losses) to train with;
- `base_beta`: the current base beta (reported, and saved in checkpoints);
- `statistic`: a LogitStatistic (prefkit.lm_head) the forward computes from the policy's and the
  reference's logits for it, or None; with one, the run needs a live reference (its logits);
- `per_pair`: whether `pair_beta(fwd, training=)` picks each batch's beta (a (B,) tensor) and
  metrics from the forward (prefkit.logprobs.PairForward, whose `statistics` hold the sums of
  `statistic`); otherwise every pair trains with `base_beta`;
- `after_step(accelerator)`: after each optimiser step (eps-DPO moves its base beta here);
- `log(logs)`, `summary()`: what the run's logs and report show;
- `state_dict()` / `load_state_dict(state)`: what a checkpoint carries so that resume is exact.

A loss_type with its own beta control is registered in `BETA_CONTROLS`; `beta_control(cfg)` builds
the run's control once.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from prefkit.lm_head import LogitStatistic
from prefkit.logprobs import PairForward
from prefkit.train.eps_dpo import EpsDPOBeta


class BetaControl(Protocol):
    loss_name: str
    base_beta: float
    statistic: LogitStatistic | None
    per_pair: bool

    def after_step(self, accelerator) -> None: ...

    def log(self, logs: dict[str, float]) -> None: ...

    def summary(self) -> str: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class PerPairBeta(BetaControl, Protocol):
    """A beta control with ``per_pair = True``."""

    def pair_beta(self, fwd: PairForward, *, training: bool) -> tuple[torch.Tensor, dict[str, float]]: ...


class FixedBeta:
    """The config's beta for every pair and every step (sigmoid, ipo, hinge, robust, simpo, ...)."""

    statistic = None
    per_pair = False

    def __init__(self, cfg):
        self.loss_name = cfg.loss_type
        self.base_beta = float(cfg.beta)

    def after_step(self, accelerator) -> None:
        pass

    def log(self, logs: dict[str, float]) -> None:
        pass

    def summary(self) -> str:
        return ""

    def state_dict(self) -> dict[str, float]:
        return {"base_beta": self.base_beta}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base_beta = float(state["base_beta"])


#: loss_type -> the class of its beta control (constructed with the run's config)
BETA_CONTROLS: dict[str, type] = {"eps-dpo": EpsDPOBeta}


def beta_control(cfg) -> BetaControl:
    """The beta control for cfg.loss_type (FixedBeta unless one is registered)."""
    return BETA_CONTROLS.get(cfg.loss_type, FixedBeta)(cfg)
