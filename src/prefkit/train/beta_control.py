"""The beta a DPO-family loss trains with: fixed, or eps-DPO's per-pair choice (docs/methods.md).

`PreferenceTrainer` asks its beta control, never the loss name:
- `loss_name`: the registered loss (prefkit.losses) to train with;
- `needs_heads`: whether the batch's forward passes must keep their final hidden states (eps-DPO
  builds its perturbed policies from the policy's and the reference's logits);
- `pair_beta(...)`: the beta for one batch (a float, or a (B,) tensor) and metrics to log;
- `after_step(accelerator)`: after each optimiser step (eps-DPO moves its base beta here, from
  every pair of every micro-batch and every process since the last step);
- `log(logs)`, `summary()`: what the run's logs and report show;
- `state_dict()` / `load_state_dict(state)`: what a checkpoint carries so that resume is exact.

A loss with its own beta control registers it in `BETA_CONTROLS` under its loss_type.
"""

from __future__ import annotations

from typing import Any

import torch

from prefkit.losses import eps_dpo_beta, eps_dpo_update_beta


class FixedBeta:
    """The config's beta for every pair and every step (sigmoid, ipo, hinge, robust, simpo, ...)."""

    needs_heads = False

    def __init__(self, cfg):
        self.loss_name = cfg.loss_type
        self.base_beta = float(cfg.beta)

    def pair_beta(self, fwd, ref_head, batch: dict[str, Any], *, training: bool,
                  chunk_size: int | None = None) -> tuple[Any, dict[str, float]]:
        return self.base_beta, {}

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


class EpsDPOBeta(FixedBeta):
    """eps-DPO (arXiv:2502.13177): the sigmoid loss with a per-pair beta picked by comparing the
    policy with two perturbed policies (prefkit.losses.eps_dpo_beta), and a base beta that moves
    after each optimiser step (prefkit.losses.eps_dpo_update_beta, rule `cfg.beta_update`)."""

    needs_heads = True

    def __init__(self, cfg):
        super().__init__(cfg)
        self.loss_name = "sigmoid"
        self.eps = float(cfg.eps)
        self.rule = cfg.beta_update
        # (beta_tilde, steps) of every training micro-batch since the last optimiser step
        self.pending: list[tuple[torch.Tensor, torch.Tensor]] = []

    def pair_beta(self, fwd, ref_head, batch, *, training, chunk_size=None):
        from prefkit.logprobs import perturbed_sequence_logps

        if fwd.perturbed is not None:  # the packed forward computed them from its own logits chunks
            minus, plus = fwd.perturbed
        else:
            kw = {"chunk_size": chunk_size} if chunk_size else {}
            minus, plus = perturbed_sequence_logps(fwd.head, ref_head, batch["input_ids"], batch["response_mask"],
                                                   self.eps, **kw)
        b = fwd.chosen_logps.shape[0]
        # float64 so that the per-pair beta (and the base-beta average) is exact
        z = (fwd.chosen_logps - fwd.rejected_logps).detach().double()
        choice = eps_dpo_beta(z, (minus[:b] - minus[b:]).double(), (plus[:b] - plus[b:]).double(),
                              self.base_beta, self.eps)
        if training:
            self.pending.append((choice.beta_tilde.detach().cpu(), choice.steps.detach().cpu()))
        metrics = {"beta/mean": choice.beta_tilde.double().mean().item(),
                   "eps/frac_minus": (choice.steps == 1).double().mean().item(),
                   "eps/frac_plus": (choice.steps == -1).double().mean().item()}
        return choice.beta_tilde.to(fwd.chosen_logps.dtype), metrics

    def after_step(self, accelerator) -> None:
        """The base beta from every pair's choice since the last step, over all micro-batches
        (gradient accumulation) and all processes."""
        if self.pending:
            bt = torch.cat([b for b, _ in self.pending]).double()
            st = torch.cat([s for _, s in self.pending]).double()
        else:
            bt = st = torch.zeros(0, dtype=torch.float64)
        self.pending.clear()
        if accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            bt = torch.tensor(gather_object(bt.tolist()), dtype=torch.float64)
            st = torch.tensor(gather_object(st.tolist()), dtype=torch.float64)
        self.base_beta = eps_dpo_update_beta(self.base_beta, beta_tilde=bt, steps=st, eps=self.eps, rule=self.rule)

    def log(self, logs):
        logs["beta/base"] = self.base_beta

    def summary(self):
        return f" (final base beta {self.base_beta:.6g})"


BETA_CONTROLS: dict[str, type[FixedBeta]] = {"eps-dpo": EpsDPOBeta}


def beta_control(cfg) -> FixedBeta:
    """The beta control for cfg.loss_type (FixedBeta unless one is registered)."""
    return BETA_CONTROLS.get(cfg.loss_type, FixedBeta)(cfg)
