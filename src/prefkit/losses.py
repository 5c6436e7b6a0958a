"""Preference losses as pure functions of per-sequence statistics.

Every loss here sees only per-pair numbers, never a model or a batch of tokens:

    PairLogps(chosen, rejected, ref_chosen, ref_rejected, chosen_lengths, rejected_lengths)

all 1-D tensors of shape (B,) (B = number of pairs):

- ``chosen`` / ``rejected``: log pi_theta(y|x), the SUM of the response tokens' log-probs under the
  policy (with gradient when training).
- ``ref_chosen`` / ``ref_rejected``: the same under the frozen reference (no gradient needed);
  ``None`` for reference-free losses (simpo).
- ``chosen_lengths`` / ``rejected_lengths``: |y|, the number of response tokens (float or int);
  needed by ipo and simpo, ignored by the others.

A loss is called as ``loss_fn(logps, beta=..., weights=None) -> LossOutput`` where

- ``beta`` is a float or a (B,) tensor (per-pair beta, e.g. eps-DPO's choice),
- ``weights`` is ``None`` or a (B,) tensor of per-pair weights; the returned per-pair losses are
  multiplied by them (the trainer reduces by the plain batch mean, as TRL does),
- ``LossOutput.losses`` has shape (B,); ``chosen_rewards`` / ``rejected_rewards`` have shape (B,)
  and are detached (they are for metrics).

Loss-specific options (``label_smoothing``, ``gamma``) are bound when the loss is looked up:
``get_loss("sigmoid", label_smoothing=0.1)``; an unknown option raises ``ConfigError``.

Conventions follow Hugging Face TRL 1.16 (DPOTrainer; CPOTrainer for simpo), with
Delta_w = chosen - ref_chosen, Delta_l = rejected - ref_rejected, d = Delta_w - Delta_l:

  sigmoid  -(1-ls) log s(beta d) - ls log s(-beta d)    (ls > 0: conservative DPO; TRL 1.16's
           own 'sigmoid' has no label smoothing, i.e. ls = 0)
  robust   [-(1-ls) log s(beta d) + ls log s(-beta d)] / (1 - 2 ls)
  hinge    max(0, 1 - beta d)
  ipo      (Delta_w/|y_w| - Delta_l/|y_l| - 1/(2 beta))^2   (lengths clamped to >= 1)
  simpo    -(1-ls) log s(beta (pi_w/|y_w| - pi_l/|y_l|) - gamma) - ls log s(-(...))
           where pi_w = chosen (policy log-prob sum); reference-free

Rewards for metrics: beta * Delta_w and beta * Delta_l (per-pair beta when beta is a tensor);
for simpo beta * chosen/|y_w| and beta * rejected/|y_l| (TRL's CPOTrainer convention).

eps-DPO (docs/methods.md section 4) is the sigmoid loss with a per-pair beta chosen by
:func:`eps_dpo_beta`; the base beta moves after each optimiser step by :func:`eps_dpo_update_beta`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F

from prefkit.errors import ConfigError

__all__ = [
    "PairLogps",
    "LossOutput",
    "EpsDpoChoice",
    "register_loss",
    "get_loss",
    "available_losses",
    "sigmoid_loss",
    "robust_loss",
    "hinge_loss",
    "ipo_loss",
    "simpo_loss",
    "eps_dpo_beta",
    "eps_dpo_update_beta",
    "bradley_terry_loss",
    "pair_metrics",
]


@dataclass(frozen=True)
class PairLogps:
    """Per-pair sequence statistics, every field a (B,) tensor (see the module docstring)."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    ref_chosen: torch.Tensor | None = None
    ref_rejected: torch.Tensor | None = None
    chosen_lengths: torch.Tensor | None = None
    rejected_lengths: torch.Tensor | None = None

    def logratios(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(Delta_w, Delta_l) = (chosen - ref_chosen, rejected - ref_rejected)."""
        if self.ref_chosen is None or self.ref_rejected is None:
            raise ConfigError("this loss needs reference log-probs (ref_chosen, ref_rejected)")
        return self.chosen - self.ref_chosen, self.rejected - self.ref_rejected

    def lengths(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(|y_w|, |y_l|) as float tensors clamped to >= 1 (an empty response cannot divide by 0)."""
        if self.chosen_lengths is None or self.rejected_lengths is None:
            raise ConfigError("this loss needs response lengths (chosen_lengths, rejected_lengths)")
        lw = torch.as_tensor(self.chosen_lengths, device=self.chosen.device).to(self.chosen.dtype)
        ll = torch.as_tensor(self.rejected_lengths, device=self.rejected.device).to(self.rejected.dtype)
        return lw.clamp(min=1.0), ll.clamp(min=1.0)


class LossOutput(NamedTuple):
    """losses (B,) per pair, already multiplied by the weights; rewards (B,) detached, for metrics."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


LossFn = Callable[..., LossOutput]
_REGISTRY: dict[str, LossFn] = {}


def register_loss(name: str) -> Callable[[LossFn], LossFn]:
    """Decorator: make ``fn(logps: PairLogps, *, beta, weights=None, **options) -> LossOutput``
    available as ``get_loss(name)``. Re-registering a name replaces it (so a user can override)."""

    def deco(fn: LossFn) -> LossFn:
        params = inspect.signature(fn).parameters
        for required in ("beta", "weights"):
            if required not in params:
                raise TypeError(f"loss {name!r}: a loss function must accept a '{required}' keyword")
        _REGISTRY[name] = fn
        return fn

    return deco


def available_losses() -> list[str]:
    """Names accepted by :func:`get_loss`, sorted."""
    return sorted(_REGISTRY)


def get_loss(name: str, **options) -> Callable[..., LossOutput]:
    """The loss registered as `name`, with its options bound.

    Returns ``fn(logps: PairLogps, *, beta, weights=None) -> LossOutput``. Options are the loss's
    own keywords (sigmoid/robust: label_smoothing; simpo: gamma, label_smoothing); passing one the
    loss does not take raises ConfigError naming the accepted ones.
    """
    if name not in _REGISTRY:
        raise ConfigError(f"unknown loss {name!r}; available: {', '.join(available_losses())}")
    fn = _REGISTRY[name]
    params = inspect.signature(fn).parameters
    keyword_kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    accepted = [p for p, v in params.items() if p not in ("logps", "beta", "weights") and v.kind in keyword_kinds]
    takes_var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = [k for k in options if k not in accepted]
    if unknown and not takes_var_kw:
        raise ConfigError(
            f"loss {name!r} takes no option(s) {', '.join(map(repr, unknown))}; "
            f"it accepts: {', '.join(accepted) or 'none'}"
        )

    def bound(logps: PairLogps, *, beta, weights=None) -> LossOutput:
        return fn(logps, beta=beta, weights=weights, **options)

    bound.__name__ = f"{name}_loss"
    bound.__doc__ = fn.__doc__
    return bound


def _weighted(losses: torch.Tensor, weights) -> torch.Tensor:
    if weights is None:
        return losses
    w = torch.as_tensor(weights, device=losses.device).to(losses.dtype)
    return losses * w


def _beta(beta, like: torch.Tensor) -> torch.Tensor | float:
    if isinstance(beta, torch.Tensor):
        return beta.to(device=like.device, dtype=like.dtype)
    return float(beta)


def _dpo_rewards(logps: PairLogps, beta) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dw, dl = logps.logratios()
    b = _beta(beta, dw)
    return dw - dl, (b * dw).detach(), (b * dl).detach()


@register_loss("sigmoid")
def sigmoid_loss(logps: PairLogps, *, beta, weights=None, label_smoothing: float = 0.0) -> LossOutput:
    """DPO: -log s(beta d); with label_smoothing ls > 0 conservative DPO:
    -(1-ls) log s(beta d) - ls log s(-beta d)."""
    d, rw, rl = _dpo_rewards(logps, beta)
    b = _beta(beta, d)
    ls = float(label_smoothing)
    losses = -F.logsigmoid(b * d)
    if ls:
        losses = (1.0 - ls) * losses - ls * F.logsigmoid(-b * d)
    return LossOutput(_weighted(losses, weights), rw, rl)


@register_loss("robust")
def robust_loss(logps: PairLogps, *, beta, weights=None, label_smoothing: float = 0.0) -> LossOutput:
    """Robust DPO (unbiased under label noise ls): [-(1-ls) log s(beta d) + ls log s(-beta d)] / (1-2ls)."""
    ls = float(label_smoothing)
    if not 0.0 <= ls < 0.5:
        raise ConfigError(f"robust loss needs 0 <= label_smoothing < 0.5, got {ls}")
    d, rw, rl = _dpo_rewards(logps, beta)
    b = _beta(beta, d)
    losses = (-(1.0 - ls) * F.logsigmoid(b * d) + ls * F.logsigmoid(-b * d)) / (1.0 - 2.0 * ls)
    return LossOutput(_weighted(losses, weights), rw, rl)


@register_loss("hinge")
def hinge_loss(logps: PairLogps, *, beta, weights=None) -> LossOutput:
    """SLiC hinge: max(0, 1 - beta d)."""
    d, rw, rl = _dpo_rewards(logps, beta)
    losses = torch.relu(1.0 - _beta(beta, d) * d)
    return LossOutput(_weighted(losses, weights), rw, rl)


@register_loss("ipo")
def ipo_loss(logps: PairLogps, *, beta, weights=None) -> LossOutput:
    """IPO, length-normalised as TRL does: (Delta_w/|y_w| - Delta_l/|y_l| - 1/(2 beta))^2.
    Rewards stay beta * Delta (unnormalised), as TRL logs them."""
    dw, dl = logps.logratios()
    lw, ll = logps.lengths()
    b = _beta(beta, dw)
    losses = (dw / lw - dl / ll - 1.0 / (2.0 * b)) ** 2
    return LossOutput(_weighted(losses, weights), (b * dw).detach(), (b * dl).detach())


@register_loss("simpo")
def simpo_loss(logps: PairLogps, *, beta, weights=None, gamma: float = 0.5,
               label_smoothing: float = 0.0) -> LossOutput:
    """SimPO (reference-free): -log s(beta (pi_w/|y_w| - pi_l/|y_l|) - gamma), optional label smoothing
    as in TRL's CPOTrainer. `gamma` is the target reward margin (TRL's simpo_gamma).
    Rewards: beta * pi_w/|y_w|, beta * pi_l/|y_l|."""
    lw, ll = logps.lengths()
    aw, al = logps.chosen / lw, logps.rejected / ll
    b = _beta(beta, aw)
    x = b * (aw - al) - float(gamma)
    ls = float(label_smoothing)
    losses = -F.logsigmoid(x)
    if ls:
        losses = (1.0 - ls) * losses - ls * F.logsigmoid(-x)
    return LossOutput(_weighted(losses, weights), (b * aw).detach(), (b * al).detach())


def pair_metrics(output: LossOutput, logps: PairLogps) -> dict[str, float]:
    """The per-step metrics TRL's DPOTrainer logs, as batch means over the pairs given:
    rewards/chosen, rewards/rejected, rewards/margins (chosen - rejected reward),
    rewards/accuracies (fraction with chosen reward > rejected reward), logps/chosen,
    logps/rejected (policy sequence log-prob sums). Pass tensors gathered over processes to get
    the global values."""
    cr, rr = output.chosen_rewards.detach().float(), output.rejected_rewards.detach().float()
    return {
        "rewards/chosen": cr.mean().item(),
        "rewards/rejected": rr.mean().item(),
        "rewards/accuracies": (cr > rr).float().mean().item(),
        "rewards/margins": (cr - rr).mean().item(),
        "logps/chosen": logps.chosen.detach().float().mean().item(),
        "logps/rejected": logps.rejected.detach().float().mean().item(),
    }


# --------------------------------------------------------------------------------------------
# eps-DPO (Lee et al. 2025): per-pair beta by perturbation, base-beta update


class EpsDpoChoice(NamedTuple):
    """beta_tilde (B,) the per-pair beta to train with; steps (B,) int64 in {+1, 0, -1}."""

    beta_tilde: torch.Tensor
    steps: torch.Tensor


@torch.no_grad()
def eps_dpo_beta(z: torch.Tensor, z_minus: torch.Tensor, z_plus: torch.Tensor, beta: float,
                 eps: float) -> EpsDpoChoice:
    """eps-DPO's per-pair beta choice (no gradient).

    z = log pi(y_w|x) - log pi(y_l|x) under the current policy; z_minus / z_plus the same under the
    perturbed policies softmax((1+eps) f_theta - eps f_ref) (beta- = beta/(1+eps)) and
    softmax((1-eps) f_theta + eps f_ref) (beta+ = beta/(1-eps)); all (B,).

    - z_minus > z > z_plus  -> beta_tilde = beta/(1+eps), step +1
    - z_minus < z < z_plus  -> beta_tilde = beta/(1-eps), step -1
    - otherwise             -> beta_tilde = beta,         step  0
    """
    if not 0.0 < eps < 1.0:
        raise ConfigError(f"eps-DPO needs 0 < eps < 1, got {eps}")
    z, z_minus, z_plus = z.detach(), z_minus.detach().to(z.dtype), z_plus.detach().to(z.dtype)
    lower = (z_minus > z) & (z > z_plus)
    raise_ = (z_minus < z) & (z < z_plus)
    steps = lower.long() - raise_.long()
    beta_tilde = torch.full_like(z, float(beta))
    beta_tilde = torch.where(lower, torch.full_like(z, beta / (1.0 + eps)), beta_tilde)
    beta_tilde = torch.where(raise_, torch.full_like(z, beta / (1.0 - eps)), beta_tilde)
    return EpsDpoChoice(beta_tilde, steps)


def eps_dpo_update_beta(beta: float, *, beta_tilde: torch.Tensor | None = None,
                        steps: torch.Tensor | None = None, eps: float | None = None,
                        rule: str = "paper") -> float:
    """The base beta after an optimiser step.

    Pass every pair's choice since the last update (all micro-batches, all processes, concatenated).
    - rule="paper" (default): beta <- mean(beta_tilde)
    - rule="code" (the authors' code): beta <- beta / (1 + eps * mean(steps))
    The two agree to first order in eps.
    """
    if rule == "paper":
        if beta_tilde is None or beta_tilde.numel() == 0:
            return float(beta)
        return float(beta_tilde.detach().double().mean())
    if rule == "code":
        if steps is None or eps is None:
            raise ConfigError("eps-DPO rule='code' needs steps and eps")
        if steps.numel() == 0:
            return float(beta)
        return float(beta) / (1.0 + float(eps) * float(steps.detach().double().mean()))
    raise ConfigError(f"unknown eps-DPO beta update rule {rule!r}; choose 'paper' or 'code'")


# --------------------------------------------------------------------------------------------
# Reward model


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, margin: torch.Tensor | None = None,
                       centering: float = 0.0, weights=None) -> LossOutput:
    """Bradley-Terry reward-model loss per pair: -log s(r_w - r_l - m) + c (r_w + r_l)^2.

    r_chosen, r_rejected, margin: (B,) (margin optional, per pair). `centering` c is the coefficient
    of the centring term; its batch mean equals c * mean((r_w + r_l)^2) (TRL's
    center_rewards_coefficient). Rewards returned are r_w and r_l (detached).
    """
    diff = r_chosen - r_rejected
    if margin is not None:
        diff = diff - torch.as_tensor(margin, device=diff.device).to(diff.dtype)
    losses = -F.logsigmoid(diff)
    if centering:
        losses = losses + float(centering) * (r_chosen + r_rejected) ** 2
    return LossOutput(_weighted(losses, weights), r_chosen.detach(), r_rejected.detach())
