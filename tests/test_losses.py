"""Loss values against hand computations.

Two pairs used throughout (policy / reference sequence log-prob sums, response lengths):

  pair A: chosen -10, rejected -12, ref_chosen -11, ref_rejected -11, |y_w| 2, |y_l| 4
          Delta_w = -10 - (-11) = 1, Delta_l = -12 - (-11) = -1, d = 2
  pair B: chosen  -5, rejected  -4, ref_chosen  -5, ref_rejected  -5, |y_w| 1, |y_l| 2
          Delta_w = 0, Delta_l = 1, d = -1

With beta = 0.5: beta*d = 1 (A) and -0.5 (B). -log s(x) = log(1 + e^-x) =: sp(-x) (softplus).
"""

from __future__ import annotations

import math

import pytest
import torch

from prefkit.errors import ConfigError
from prefkit.losses import (
    LossOutput,
    PairLogps,
    available_losses,
    bradley_terry_loss,
    get_loss,
    loss_spec,
    register_loss,
)
from prefkit.train.eps_dpo import eps_dpo_beta, eps_dpo_update_beta


def sp(x: float) -> float:
    """softplus(x) = log(1 + e^x) = -log sigmoid(-x)."""
    return math.log1p(math.exp(x))


def pairs(dtype=torch.float64) -> PairLogps:
    t = lambda xs: torch.tensor(xs, dtype=dtype)  # noqa: E731
    return PairLogps(chosen=t([-10.0, -5.0]), rejected=t([-12.0, -4.0]),
                     ref_chosen=t([-11.0, -5.0]), ref_rejected=t([-11.0, -5.0]),
                     chosen_lengths=torch.tensor([2, 1]), rejected_lengths=torch.tensor([4, 2]))


def close(t: torch.Tensor, expected: list[float], tol: float = 1e-12):
    assert t.shape == (len(expected),)
    assert torch.allclose(t.double(), torch.tensor(expected, dtype=torch.float64), atol=tol, rtol=0), (t, expected)


def test_registry_lists_builtin_losses():
    assert {"sigmoid", "robust", "hinge", "ipo", "simpo"} <= set(available_losses())


def test_sigmoid_loss_and_dpo_rewards():
    out = get_loss("sigmoid")(pairs(), beta=0.5)
    assert isinstance(out, LossOutput)
    # -log s(1) = sp(-1); -log s(-0.5) = sp(0.5)
    close(out.losses, [sp(-1.0), sp(0.5)])
    # rewards = beta * Delta: A (0.5, -0.5), B (0, 0.5)
    close(out.chosen_rewards, [0.5, 0.0])
    close(out.rejected_rewards, [-0.5, 0.5])
    assert not out.chosen_rewards.requires_grad


def test_conservative_dpo_label_smoothing():
    out = get_loss("sigmoid", label_smoothing=0.1)(pairs(), beta=0.5)
    # 0.9 * (-log s(bd)) + 0.1 * (-log s(-bd)); bd = 1, -0.5
    close(out.losses, [0.9 * sp(-1.0) + 0.1 * sp(1.0), 0.9 * sp(0.5) + 0.1 * sp(-0.5)])


def test_robust_loss():
    out = get_loss("robust", label_smoothing=0.1)(pairs(), beta=0.5)
    # [0.9 * sp(-bd) - 0.1 * sp(bd)] / 0.8
    close(out.losses, [(0.9 * sp(-1.0) - 0.1 * sp(1.0)) / 0.8, (0.9 * sp(0.5) - 0.1 * sp(-0.5)) / 0.8])
    # with ls = 0 robust is plain DPO
    close(get_loss("robust")(pairs(), beta=0.5).losses, [sp(-1.0), sp(0.5)])
    with pytest.raises(ConfigError, match="label_smoothing"):
        get_loss("robust", label_smoothing=0.5)(pairs(), beta=0.5)


def test_hinge_loss():
    out = get_loss("hinge")(pairs(), beta=0.5)
    # max(0, 1 - bd): 1 - 1 = 0, 1 + 0.5 = 1.5
    close(out.losses, [0.0, 1.5])


def test_ipo_loss_is_length_normalised():
    out = get_loss("ipo")(pairs(), beta=0.5)
    # A: 1/2 - (-1)/4 - 1/(2*0.5) = 0.5 + 0.25 - 1 = -0.25 -> 0.0625
    # B: 0/1 - 1/2 - 1 = -1.5 -> 2.25
    close(out.losses, [0.0625, 2.25])
    close(out.chosen_rewards, [0.5, 0.0])


def test_simpo_loss_reference_free():
    p = pairs()
    p = PairLogps(chosen=p.chosen, rejected=p.rejected, chosen_lengths=p.chosen_lengths,
                  rejected_lengths=p.rejected_lengths)  # no reference at all
    out = get_loss("simpo", gamma=0.5)(p, beta=2.0)
    # averages: A -10/2 = -5, -12/4 = -3; B -5/1 = -5, -4/2 = -2
    # x = 2 * (avg_w - avg_l) - 0.5: A 2*(-2) - 0.5 = -4.5; B 2*(-3) - 0.5 = -6.5
    close(out.losses, [sp(4.5), sp(6.5)])
    close(out.chosen_rewards, [-10.0, -10.0])
    close(out.rejected_rewards, [-6.0, -4.0])


def test_per_pair_beta_and_weights():
    beta = torch.tensor([1.0, 0.5], dtype=torch.float64)
    out = get_loss("sigmoid")(pairs(), beta=beta, weights=torch.tensor([2.0, 0.5]))
    # beta*d = 1*2 = 2 and 0.5*(-1) = -0.5; losses times weights 2 and 0.5
    close(out.losses, [2.0 * sp(-2.0), 0.5 * sp(0.5)])
    # rewards use the per-pair beta: A 1*1, 1*(-1); B 0.5*0, 0.5*1
    close(out.chosen_rewards, [1.0, 0.0])
    close(out.rejected_rewards, [-1.0, 0.5])


def test_gradient_flows_to_policy_logps():
    p = pairs()
    chosen = p.chosen.clone().requires_grad_(True)
    p2 = PairLogps(chosen, p.rejected, p.ref_chosen, p.ref_rejected)
    get_loss("sigmoid")(p2, beta=0.5).losses.sum().backward()
    # d/dc [-log s(b(c - rc - Dl))] = -b * s(-b d): A -0.5*s(-1), B -0.5*s(0.5)
    s = lambda x: 1.0 / (1.0 + math.exp(-x))  # noqa: E731
    close(chosen.grad, [-0.5 * s(-1.0), -0.5 * s(0.5)])


def test_unknown_loss_and_option_are_config_errors():
    with pytest.raises(ConfigError, match="unknown loss 'dpo-x'"):
        get_loss("dpo-x")
    with pytest.raises(ConfigError, match="gamma"):
        get_loss("hinge", gamma=1.0)
    with pytest.raises(ConfigError, match="reference"):
        get_loss("sigmoid")(PairLogps(torch.zeros(1), torch.zeros(1)), beta=0.1)


def test_user_loss_plugs_in():
    @register_loss("test_margin_sq", options={"target": "the margin beta * d aims at"})
    def margin_sq(logps, *, beta, weights=None, target: float = 1.0):
        dw, dl = logps.logratios()
        losses = (beta * (dw - dl) - target) ** 2
        return LossOutput(losses if weights is None else losses * weights, (beta * dw).detach(), (beta * dl).detach())

    out = get_loss("test_margin_sq", target=2.0)(pairs(), beta=0.5)
    # (bd - 2)^2: (1-2)^2 = 1, (-0.5-2)^2 = 6.25
    close(out.losses, [1.0, 6.25])
    spec = loss_spec("test_margin_sq")
    assert spec.fn is margin_sq and spec.needs_reference
    assert spec.options["target"].default == 1.0 and spec.options["target"].help == "the margin beta * d aims at"
    with pytest.raises(TypeError):
        register_loss("bad")(lambda logps: None)


def test_the_registry_records_each_loss_options_and_whether_it_needs_a_reference():
    assert [n for n in available_losses() if not loss_spec(n).needs_reference] == ["simpo"]
    simpo = loss_spec("simpo")
    assert {k: o.default for k, o in simpo.options.items()} == {"gamma": 0.5, "label_smoothing": 0.0}
    assert all(o.help for n in available_losses() for o in loss_spec(n).options.values())
    assert loss_spec("hinge").options == {} and loss_spec("sigmoid").help.startswith("DPO")
    # an option without help or without a default is refused when the loss is registered
    with pytest.raises(TypeError, match="'target' needs a help text"):
        register_loss("no_help")(lambda logps, *, beta, weights=None, target=1.0: None)
    with pytest.raises(TypeError, match="'target' needs a default"):
        register_loss("no_default", options={"target": "t"})(lambda logps, *, beta, weights=None, target: None)


def test_eps_dpo_beta_choice():
    z = torch.zeros(4)
    z_minus = torch.tensor([1.0, -1.0, 1.0, 0.0])
    z_plus = torch.tensor([-1.0, 1.0, 2.0, 0.0])
    choice = eps_dpo_beta(z, z_minus, z_plus, beta=0.1, eps=0.1)
    # pair 0: z- > z > z+ -> beta/(1+eps), step +1; pair 1: z- < z < z+ -> beta/(1-eps), step -1;
    # pair 2: z- > z but z+ > z -> beta, 0; pair 3: ties -> beta, 0
    assert choice.steps.tolist() == [1, -1, 0, 0]
    close(choice.beta_tilde, [0.1 / 1.1, 0.1 / 0.9, 0.1, 0.1], tol=1e-7)


def test_eps_dpo_base_beta_update_rules():
    beta_tilde = torch.tensor([0.1 / 1.1, 0.1 / 1.1, 0.1], dtype=torch.float64)
    steps = torch.tensor([1, 1, 0])
    # paper: mean(beta_tilde) = (2 * 0.1/1.1 + 0.1) / 3
    assert eps_dpo_update_beta(0.1, beta_tilde=beta_tilde) == pytest.approx((2 * 0.1 / 1.1 + 0.1) / 3, abs=1e-15)
    # code: beta / (1 + eps * mean(s)) = 0.1 / (1 + 0.1 * 2/3)
    assert eps_dpo_update_beta(0.1, steps=steps, eps=0.1, rule="code") == pytest.approx(0.1 / (1 + 0.1 * 2 / 3))
    with pytest.raises(ConfigError):
        eps_dpo_update_beta(0.1, steps=steps, eps=0.1, rule="median")


def test_bradley_terry_with_margin_and_centering():
    rc = torch.tensor([1.0, 0.0], dtype=torch.float64)
    rr = torch.tensor([0.0, 1.0], dtype=torch.float64)
    out = bradley_terry_loss(rc, rr, margin=torch.tensor([0.5, 0.0]), centering=0.1)
    # A: -log s(1 - 0 - 0.5) + 0.1 * (1+0)^2 = sp(-0.5) + 0.1; B: -log s(-1) + 0.1 = sp(1) + 0.1
    close(out.losses, [sp(-0.5) + 0.1, sp(1.0) + 0.1])
    close(bradley_terry_loss(rc, rr).losses, [sp(-1.0), sp(1.0)])
    close(out.chosen_rewards, [1.0, 0.0])
