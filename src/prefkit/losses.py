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

The registry (the shape every prefkit extension point copies: name -> function, what it needs,
options). ``register_loss(name, needs_reference=..., options={keyword: help})`` records a
:class:`LossSpec`: the function, whether it needs the reference's log-probs (simpo does not: no
reference model is loaded or precomputed), and each option's default (from the function's
signature) and help. ``loss_spec(name)`` returns it; ``available_losses()`` lists the names. The
CLI shows them in ``prefkit train dpo --help`` and the trainer reads them (options from the
config's ``loss_options`` mapping). A loss from outside prefkit is a module that calls
``register_loss``, loaded as a plugin (prefkit.plugins)::

    @register_loss("mynewloss", options={"margin": "target margin of the log-ratio difference"})
    def mynewloss(logps, *, beta, weights=None, margin=0.0): ...

    PREFKIT_PLUGINS=my_module prefkit train dpo pairs.jsonl -o out --loss-type mynewloss \
        --loss-options margin=0.5

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

eps-DPO (docs/methods.md section 4) is the sigmoid loss with a per-pair beta; all of it is in
prefkit.train.eps_dpo.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

import torch
import torch.nn.functional as F

from prefkit.errors import ConfigError

__all__ = [
    "PairLogps",
    "LossOutput",
    "LossOption",
    "LossSpec",
    "register_loss",
    "get_loss",
    "loss_spec",
    "available_losses",
    "sigmoid_loss",
    "robust_loss",
    "hinge_loss",
    "ipo_loss",
    "simpo_loss",
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
_FIXED = ("logps", "beta", "weights")   # every loss's own arguments; the others are its options


@dataclass(frozen=True)
class LossOption:
    """One option of a registered loss: its default (from the function's signature) and help."""

    default: Any
    help: str


@dataclass(frozen=True)
class LossSpec:
    """A registered loss: the function, what it needs, its options.

    ``fn(logps: PairLogps, *, beta, weights=None, **options) -> LossOutput``; ``needs_reference``:
    whether it reads ``logps.ref_chosen``/``ref_rejected`` (False: the trainer loads no reference);
    ``options``: keyword -> LossOption; ``help``: the first paragraph of the function's docstring."""

    name: str
    fn: LossFn
    needs_reference: bool = True
    options: dict[str, LossOption] = field(default_factory=dict)
    help: str = ""


_REGISTRY: dict[str, LossSpec] = {}


def register_loss(name: str, *, needs_reference: bool = True,
                  options: dict[str, str] | None = None) -> Callable[[LossFn], LossFn]:
    """Decorator: make ``fn(logps: PairLogps, *, beta, weights=None, **options) -> LossOutput``
    available as ``get_loss(name)``, recorded as a :class:`LossSpec`.

    `options` gives the help of each keyword the function takes besides logps, beta and weights
    (each needs a default in the signature). Re-registering a name replaces it (so a user can
    override). A malformed loss is a TypeError when it is registered, not when a run starts."""

    def deco(fn: LossFn) -> LossFn:
        params = inspect.signature(fn).parameters
        for required in ("beta", "weights"):
            if required not in params:
                raise TypeError(f"loss {name!r}: a loss function must accept a '{required}' keyword")
        helps = dict(options or {})
        specs = {}
        for p, v in params.items():
            if p in _FIXED or v.kind in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL):
                continue
            if v.default is inspect.Parameter.empty:
                raise TypeError(f"loss {name!r}: option {p!r} needs a default value")
            if p not in helps:
                raise TypeError(f"loss {name!r}: option {p!r} needs a help text (register_loss(options=...))")
            specs[p] = LossOption(v.default, helps.pop(p))
        if helps:
            raise TypeError(f"loss {name!r}: help for option(s) the function does not take: {', '.join(helps)}")
        summary = " ".join((inspect.getdoc(fn) or "").split("\n\n")[0].split())
        _REGISTRY[name] = LossSpec(name, fn, needs_reference, specs, summary)
        return fn

    return deco


def available_losses() -> list[str]:
    """Names accepted by :func:`get_loss`, sorted."""
    return sorted(_REGISTRY)


def loss_spec(name: str) -> LossSpec:
    """The :class:`LossSpec` registered as `name`; ConfigError naming the registered ones otherwise."""
    if name not in _REGISTRY:
        raise ConfigError(f"unknown loss {name!r}; available: {', '.join(available_losses())}")
    return _REGISTRY[name]


def get_loss(name: str, **options) -> Callable[..., LossOutput]:
    """The loss registered as `name`, with its options bound.

    Returns ``fn(logps: PairLogps, *, beta, weights=None) -> LossOutput``. Options are the loss's
    own keywords (sigmoid/robust: label_smoothing; simpo: gamma, label_smoothing); passing one the
    loss does not take raises ConfigError naming the accepted ones.
    """
    spec = loss_spec(name)
    fn = spec.fn
    takes_var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(fn).parameters.values())
    unknown = [k for k in options if k not in spec.options]
    if unknown and not takes_var_kw:
        raise ConfigError(
            f"loss {name!r} takes no option(s) {', '.join(map(repr, unknown))}; "
            f"it accepts: {', '.join(spec.options) or 'none'}"
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


_LABEL_SMOOTHING = "probability that a preference label is flipped (conservative DPO), in [0, 0.5)"


@register_loss("sigmoid", options={"label_smoothing": _LABEL_SMOOTHING})
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


@register_loss("robust", options={"label_smoothing": "the assumed rate of flipped preference labels, in [0, 0.5)"})
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


@register_loss("simpo", needs_reference=False,
               options={"gamma": "target reward margin (TRL's simpo_gamma)", "label_smoothing": _LABEL_SMOOTHING})
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
