"""eps-DPO (Lee et al. 2025, arXiv:2502.13177; docs/methods.md section 4), all of it.

eps-DPO trains the sigmoid DPO loss with a per-pair beta. For each pair it compares the policy
with two perturbed policies built from the policy's and the reference's logits f_theta, f_ref:
    pi-  = softmax((1+eps) f_theta - eps f_ref)   (the optimal policy for beta- = beta/(1+eps))
    pi+  = softmax((1-eps) f_theta + eps f_ref)   (the optimal policy for beta+ = beta/(1-eps))

(`perturbation`, a LogitStatistic the forward engine evaluates on the same logits chunks as the
policy's log-probs, prefkit.lm_head.chunk_logps), picks beta-, beta+ or beta by how the log-ratio
z = log pi(y_w|x) - log pi(y_l|x) moves (`eps_dpo_beta`), and after each optimiser step moves the
base beta from every pair's choice (`eps_dpo_update_beta`). `EpsDPOBeta` is the trainer's beta
control (the protocol in prefkit.train.beta_control): the trainer never names eps.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from accelerate.utils import gather_object

from prefkit.errors import ConfigError
from prefkit.lm_head import DEFAULT_CHUNK_SIZE, LogitStatistic, sum_rows
from prefkit.logprobs import PairForward
from prefkit.packed import plan_rows

__all__ = ["EpsDpoChoice", "EpsDPOBeta", "perturbation", "perturbed_sequence_logps", "eps_dpo_beta",
           "eps_dpo_update_beta"]


def perturbation(eps: float) -> LogitStatistic:
    """The per-token log-probs (minus, plus) of the perturbed policies pi-, pi+ (module docstring)
    from a chunk's policy logits, reference logits (each (m, V) fp32) and labels (m,)."""

    def perturbed(fp: torch.Tensor, fr: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = []
        for coef in (1.0 + eps, 1.0 - eps):
            # (1+eps) fp - eps fr | (1-eps) fp + eps fr, written as fp + (coef-1)(fp - fr) so that a
            # policy equal to its reference (step 1 of every run) gives exactly fp: otherwise rounding
            # alone decides the per-pair beta there (seen on SmolLM2, whose logits reach ~30)
            z = fp + (coef - 1.0) * (fp - fr)
            out.append(z.gather(-1, labels[:, None]).squeeze(-1) - torch.logsumexp(z, -1))
        return tuple(out)

    return perturbed


@torch.no_grad()
def perturbed_sequence_logps(policy_logits: torch.Tensor, reference_logits: torch.Tensor, input_ids: torch.Tensor,
                             response_mask: torch.Tensor, eps: float, *,
                             chunk_size: int = DEFAULT_CHUNK_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """(minus, plus), each (N,): the perturbed policies' sequence log-probs from full logits tensors
    (N, T, V) of the policy and the reference (for tests and small vocabularies; the trainer gets
    them from `perturbation` inside its forward)."""
    plan = plan_rows(input_ids, response_mask)
    zp = policy_logits.reshape(-1, policy_logits.shape[-1])[plan.groups[0].flat_index]
    zr = reference_logits.reshape(-1, reference_logits.shape[-1])[plan.groups[0].flat_index]
    stat = perturbation(eps)
    minus, plus = [], []
    for start in range(0, zp.shape[0], chunk_size):
        sl = slice(start, start + chunk_size)
        m, p = stat(zp[sl].float(), zr[sl].float(), plan.labels[sl])
        minus.append(m)
        plus.append(p)
    cat = (lambda xs: torch.cat(xs) if xs else zp.new_zeros(0, dtype=torch.float32))  # noqa: E731
    return sum_rows(cat(minus), plan.rows, plan.n), sum_rows(cat(plus), plan.rows, plan.n)


class EpsDpoChoice(NamedTuple):
    """beta_tilde (B,) the per-pair beta to train with; steps (B,) int64 in {+1, 0, -1}."""

    beta_tilde: torch.Tensor
    steps: torch.Tensor


@torch.no_grad()
def eps_dpo_beta(z: torch.Tensor, z_minus: torch.Tensor, z_plus: torch.Tensor, beta: float,
                 eps: float) -> EpsDpoChoice:
    """eps-DPO's per-pair beta choice (no gradient).

    z = log pi(y_w|x) - log pi(y_l|x) under the current policy; z_minus / z_plus the same under the
    perturbed policies pi- (beta- = beta/(1+eps)) and pi+ (beta+ = beta/(1-eps)); all (B,).

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


class EpsDPOBeta:
    """eps-DPO: the sigmoid loss with a per-pair beta from perturbed policies (options eps, beta_update).

    The beta control (protocol in prefkit.train.beta_control): a per-pair beta from
    `perturbation`'s sums (`eps_dpo_beta`), and a base beta that moves after each optimiser step
    (`eps_dpo_update_beta`, rule `cfg.beta_update`)."""

    loss_name = "sigmoid"
    per_pair = True

    def __init__(self, cfg):
        self.base_beta = float(cfg.beta)
        self.eps = float(cfg.eps)
        self.rule = cfg.beta_update
        self.statistic: LogitStatistic | None = perturbation(self.eps)
        # (beta_tilde, steps) of every training micro-batch since the last optimiser step
        self.pending: list[tuple[torch.Tensor, torch.Tensor]] = []

    def pair_beta(self, fwd: PairForward, *, training: bool) -> tuple[torch.Tensor, dict[str, float]]:
        minus, plus = fwd.statistics
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
            bt = torch.tensor(gather_object(bt.tolist()), dtype=torch.float64)
            st = torch.tensor(gather_object(st.tolist()), dtype=torch.float64)
        self.base_beta = eps_dpo_update_beta(self.base_beta, beta_tilde=bt, steps=st, eps=self.eps, rule=self.rule)

    def log(self, logs: dict[str, float]) -> None:
        logs["beta/base"] = self.base_beta

    def summary(self) -> str:
        return f" (final base beta {self.base_beta:.6g})"

    def state_dict(self) -> dict[str, float]:
        return {"base_beta": self.base_beta}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base_beta = float(state["base_beta"])
