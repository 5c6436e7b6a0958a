"""Win rates and the length-controlled GLM against cases worked by hand."""

import math

import numpy as np
import pytest

from prefkit.evaluate.winrate import (
    LC_LABELS,
    fit_l1_logistic,
    leave_one_out_difficulty,
    length_controlled_win_rate,
    length_controlled_win_rates,
    length_feature,
    mean_and_se,
    official_length_controlled,
    policy_preference,
    win_rate,
)


def test_policy_preference_reads_the_verdict_from_the_policys_side():
    assert policy_preference("A", policy_first=True) == 1.0
    assert policy_preference("B", policy_first=True) == 0.0
    assert policy_preference("A", policy_first=False) == 0.0
    assert policy_preference("B", policy_first=False) == 1.0
    assert policy_preference("tie", policy_first=True) == 0.5
    assert policy_preference(None, policy_first=False) is None


def test_win_rate_and_standard_error_by_hand():
    # 5 prompts: win, win, tie, loss, win-in-one-order-only (0.5) ; one unjudged
    prefs = [1.0, 1.0, 0.5, 0.0, 0.5, None]
    r = win_rate(prefs)
    mean = 3.0 / 5
    var = ((0.4 ** 2) * 2 + 0.1 ** 2 * 2 + 0.6 ** 2) / 4  # sample variance, ddof=1
    assert r["win_rate"] == pytest.approx(mean)
    assert r["standard_error"] == pytest.approx(math.sqrt(var / 5))
    assert (r["wins"], r["ties"], r["losses"], r["unjudged"], r["n"]) == (2, 2, 1, 1, 5)
    assert mean_and_se([0.3]) == (0.3, None) and mean_and_se([]) == (None, None)


def test_l1_logistic_one_coefficient_has_a_closed_form():
    # min |t| + C * [W * softplus(-t) + (n - W) * softplus(t)]  =>  sigmoid(t) = (W - 1/C) / n for t > 0
    y = np.array([1.0] * 15 + [0.0] * 5)
    X = np.ones((20, 1))
    for C in (1.0, 10.0, 1e4):
        (t,) = fit_l1_logistic(X, y, C)
        assert 1 / (1 + math.exp(-t)) == pytest.approx((15 - 1 / C) / 20, abs=1e-9)
    # a penalty stronger than the gradient at 0 keeps the coefficient at exactly 0: |C * (n/2 - W)| <= 1
    (t,) = fit_l1_logistic(X, y, 0.19)
    assert t == 0.0


def test_soft_labels_equal_the_duplicated_hard_labels():
    # a soft label 0.5 is one half-weighted win plus one half-weighted loss
    rng = np.random.default_rng(0)
    X = np.column_stack([rng.normal(size=30), np.ones(30)])
    y = rng.choice([0.0, 0.5, 1.0], size=30)
    w_soft = fit_l1_logistic(X, y, 5.0)
    X2 = np.vstack([X, X])
    y2 = np.concatenate([np.ones(30), np.zeros(30)])
    sw = np.concatenate([y, 1 - y])
    w_hard = fit_l1_logistic(X2, y2, 5.0, sample_weight=sw)
    assert np.allclose(w_soft, w_hard, atol=1e-8)


def test_equal_lengths_lc_is_the_raw_win_rates_model_estimate():
    prefs = [1.0] * 15 + [0.0] * 5
    lengths = [40] * 20
    r = length_controlled_win_rate(prefs, lengths, lengths, C=10.0)
    # the length column is all 0 (sd of the differences is 0): LC = sigmoid(theta) = (15 - 1/C) / 20
    assert r.weights["length"] == 0.0
    assert r.length_controlled_win_rate == pytest.approx((15 - 0.1) / 20, abs=1e-9)
    assert r.length_controlled_win_rate == pytest.approx(r.raw_model_win_rate)
    cv = length_controlled_win_rate(prefs, lengths, lengths)  # C by cross-validation
    assert cv.C in [c for c, _ in cv.cv_log_loss] and len(cv.cv_log_loss) == 10
    assert cv.length_controlled_win_rate == pytest.approx((15 - 1 / cv.C) / 20, abs=1e-9)
    assert cv.variant == "prefkit-length-only" and "prefkit variant" in cv.label


def test_a_policy_that_wins_only_by_being_longer_falls_to_one_half():
    # 12 prompts where the policy is 5 characters longer (wins 9), 4 where it is 5 shorter (wins 1):
    # P(win | longer) = 3/4, P(win | shorter) = 1/4, nothing else: raw 10/16, length-controlled 1/2.
    prefs = [1.0] * 9 + [0.0] * 3 + [1.0] + [0.0] * 3
    policy = [15] * 12 + [5] * 4
    ref = [10] * 16
    raw = win_rate(prefs)["win_rate"]
    assert raw == pytest.approx(0.625)
    # by hand: delta = +-5, mean 2.5, sample sd = 5 * sqrt(0.8); the unpenalised fit has
    # theta = 0 and w_len * tanh(1 / sqrt(0.8)) = logit(3/4) = ln 3
    feat = length_feature(policy, ref)
    assert feat[0] == pytest.approx(math.tanh(1 / math.sqrt(0.8)))
    r = length_controlled_win_rate(prefs, policy, ref, C=1e7)
    assert r.weights["theta"] == pytest.approx(0.0, abs=1e-6)
    assert r.weights["length"] == pytest.approx(math.log(3) / math.tanh(1 / math.sqrt(0.8)), rel=1e-5)
    assert r.length_controlled_win_rate == pytest.approx(0.5, abs=1e-6)
    assert r.raw_model_win_rate == pytest.approx(raw, abs=1e-6)
    cv = length_controlled_win_rate(prefs, policy, ref)
    assert cv.length_controlled_win_rate == pytest.approx(0.5, abs=0.02) and cv.weights["length"] > 0


def test_leave_one_out_difficulty_by_hand_and_the_joint_variant():
    prefs = {"p": [1.0, 0.0, 0.5, None], "q": [1.0, 1.0, 0.0, 0.5], "r": [0.0, None, 0.5, 1.0]}
    d = leave_one_out_difficulty(prefs)
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    # p, prompt 0: others q=1, r=0 -> (1 + 0.5) / 3 = 0.5 ; prompt 1: only q=1 -> 1.5 / 2 = 0.75
    assert d["p"][0] == pytest.approx(logit(0.5)) and d["p"][1] == pytest.approx(logit(0.75))
    # r, prompt 1: others p=0, q=1 -> 1.5 / 3 ; q, prompt 3: only r=1 -> 1.5 / 2
    assert d["r"][1] == pytest.approx(0.0) and d["q"][3] == pytest.approx(logit(0.75))
    # prompt 3 for r: p unjudged, q = 0.5 -> (0.5 + 0.5) / 2 = 0.5
    assert d["r"][3] == pytest.approx(0.0)
    comps = {name: [{"prompt_index": i, "preference": v, "policy_length": 10 + i, "reference_length": 10}
                    for i, v in enumerate(vals) if v is not None] for name, vals in prefs.items()}
    out = length_controlled_win_rates(comps, prefs, C=1.0)
    assert set(out) == {"p", "q", "r"}
    assert all(r.variant == "prefkit-joint" and "difficulty" in r.weights for r in out.values())
    assert out["p"].label == LC_LABELS["prefkit-joint"]
    single = length_controlled_win_rates({"p": comps["p"]}, {"p": prefs["p"]}, C=1.0)
    assert single["p"].variant == "prefkit-length-only" and "difficulty" not in single["p"].weights


def test_the_difficulty_term_enters_the_lc_prediction():
    # with a fixed difficulty and equal lengths, LC = mean sigmoid(w_diff * d + theta) of the fit
    prefs = [1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    diff = [1.0, 1.0, 1.0, 1.0, -1.0, -1.0, -1.0, -1.0]
    r = length_controlled_win_rate(prefs, [5] * 8, [5] * 8, difficulty=diff, C=1e7)
    # unpenalised: theta + w = logit(3/4), theta - w = logit(1/4) -> theta = 0, w = ln 3
    assert r.weights["difficulty"] == pytest.approx(math.log(3), rel=1e-5)
    assert r.weights["theta"] == pytest.approx(0.0, abs=1e-6)
    assert r.length_controlled_win_rate == pytest.approx(0.5, abs=1e-6)


def test_official_implementation_refuses_prompts_that_are_not_alpaca_evals():
    pytest.importorskip("alpaca_eval", reason="the official path needs the alpaca-eval extra")
    metrics, why = official_length_controlled(["Say hi."], [{"prompt_index": 0, "preference": 1.0,
                                                             "policy_output": "hi", "reference_output": "hello"}],
                                              policy="p", reference="r")
    assert metrics is None and ("canonical order" in why or "not available" in why)


def test_without_alpaca_eval_the_official_path_says_why():
    try:
        import alpaca_eval  # noqa: F401
        pytest.skip("alpaca-eval is installed; this checks the message given without it")
    except ImportError:
        pass
    metrics, why = official_length_controlled(["Say hi."], [], policy="p", reference="r")
    assert metrics is None and "alpaca-eval" in why


def test_judge_readers_accept_a_bare_verdict_or_rating_and_nothing_vaguer():
    from prefkit.evaluate.judging import read_score, read_verdict

    for text, want in (("A", "A"), ("**B**", "B"), ("Tie.", "tie"), (" b\n", "B"), ("Verdict: A", "A"),
                       ("reasoning...\n<verdict>B</verdict>", "B"), ("[[tie]]", "tie")):
        assert read_verdict(text) == (want, None), text
    for text in ("A is better than B, but B", "The answer that is more helpful is:", "", None, "AB"):
        v, issue = read_verdict(text)
        assert v is None and issue, text
    for text, want in (("7", 7.0), ("7/10", 7.0), ("**9**", 9.0), ("<score>3</score>", 3.0), ("score: 4", 4.0)):
        assert read_score(text) == (want, None), text
    assert read_score("11")[0] is None and "outside" in read_score("11")[1]
    assert read_score("The answer is 10.")[0] is None
