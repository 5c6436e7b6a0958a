"""Metric functions, z-scores, streaming moments and budgets against hand-computed values."""

import math

import numpy as np
import pytest

from prefkit.select import metrics as M


def test_explicit_and_length_normalised_margins_by_hand():
    assert M.explicit_margin([8.0, 5.5], [3.0, 6.0]).tolist() == [5.0, -0.5]
    # chosen: -6 over 3 tokens = -2 per token; rejected: -10 over 4 tokens = -2.5 -> +0.5
    m = M.length_normalised_margin([-6.0], [-10.0], [3], [4])
    assert m.tolist() == [0.5]


def test_dpo_implicit_margin_by_hand():
    # beta * ((-5 - -6) - (-9 - -7)) = 0.1 * (1 - (-2)) = 0.3
    m = M.dpo_implicit_margin([-5.0], [-9.0], [-6.0], [-7.0], beta=0.1)
    assert m[0] == pytest.approx(0.3)


def test_alignment_potential_code_and_paper_forms_by_hand():
    me = np.array([1.0, 2.0, 3.0])
    mi = np.array([0.5, -0.1, 0.3])
    # population std, as numpy / the authors' code
    ze = (me - 2.0) / math.sqrt(2.0 / 3.0)
    ami = np.abs(mi)
    zi = (ami - ami.mean()) / ami.std()
    ap = M.alignment_potential(M.zscore(me, me.mean(), me.std()), M.zscore(ami, ami.mean(), ami.std()), weight=2.5)
    np.testing.assert_allclose(ap, ze - 2.5 * zi)
    np.testing.assert_allclose(M.alignment_potential_paper(me, mi), [0.5, 1.9, 2.7])


def test_zscore_of_constant_column_is_zero_not_nan():
    z = M.zscore([3.0, 3.0, 3.0], 3.0, 0.0)
    assert z.tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("chunks", [[7], [1, 1, 5], [3, 4], [2, 2, 2, 1]])
def test_running_moments_match_numpy_whatever_the_batching(chunks):
    x = np.random.default_rng(0).normal(3.0, 2.0, size=sum(chunks))
    mom = M.RunningMoments()
    start = 0
    for c in chunks:
        mom.update(x[start:start + c])
        start += c
    assert mom.n == x.size
    assert mom.mean == pytest.approx(x.mean(), rel=1e-12)
    assert mom.std == pytest.approx(x.std(), rel=1e-12)
    assert (mom.min, mom.max) == (x.min(), x.max())


def test_running_moments_constant_column_has_exactly_zero_std():
    mom = M.RunningMoments()
    for _ in range(5):
        mom.update([0.1, 0.1, 0.1])  # 0.1 is not exact in binary: variance must still be exactly 0
    assert mom.is_constant and mom.std == 0.0


def test_budget_and_top_indices():
    assert M.budget(10, 0.4) == 4
    assert M.budget(9, 0.4) == 3  # floor, as the authors' int(ratio * n)
    assert M.budget(10, top_k=25) == 10
    s = np.array([0.1, 5.0, 5.0, -1.0, 2.0])
    # ties break toward the earlier row; result in row order
    assert M.top_indices(s, 2).tolist() == [1, 2]
    assert M.top_indices(s, 3).tolist() == [1, 2, 4]
    assert M.top_indices(s, 0).tolist() == []
    assert M.threshold_of(s, 3) == 2.0
