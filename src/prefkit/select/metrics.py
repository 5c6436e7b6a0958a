"""Selection metrics as pure functions of per-pair columns (numpy arrays).

Notation follows docs/methods.md section 3 (Huang et al., "Larger or Smaller Reward Margins
to Select Preferences for Alignment?", ICML 2025):

- explicit margin    m_e = r(x, y_w) - r(x, y_l)                       (judge / reward model)
- implicit margin    m_i = mean_t log pi(y_w|x) - mean_t log pi(y_l|x) (length-normalised,
                     reference-free; the authors' code uses its absolute value)
- DPO implicit margin  beta * ((log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l)))

Every metric is "larger is better": selection keeps the rows with the largest score. Metrics
that the papers rank smallest-first (|implicit margin|) are negated here so one rule serves all.

z-scores use the population standard deviation (numpy's default, as the authors' code does).
A margin that is constant over the dataset has standard deviation 0; its z-score is defined
as 0 for every row (it cannot rank anything), where the authors' code would produce NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Metric names as the CLI and the Python API spell them.
ALIGNMENT_POTENTIAL = "alignment-potential"
AP_PAPER = "ap-paper"
DPO_IMPLICIT = "dpo-implicit"
EXPLICIT = "explicit"
IMPLICIT = "implicit"
RANDOM = "random"
METRICS = (ALIGNMENT_POTENTIAL, AP_PAPER, DPO_IMPLICIT, EXPLICIT, IMPLICIT, RANDOM)

#: metrics that need the policy's log-probabilities (a model)
NEEDS_MODEL = frozenset({ALIGNMENT_POTENTIAL, AP_PAPER, DPO_IMPLICIT, IMPLICIT})
#: metrics that need a reference model as well
NEEDS_REFERENCE = frozenset({DPO_IMPLICIT})


def explicit_margin(score_chosen, score_rejected) -> np.ndarray:
    """m_e = r(y_w) - r(y_l), the judge's / reward model's margin."""
    return np.asarray(score_chosen, dtype=np.float64) - np.asarray(score_rejected, dtype=np.float64)


def length_normalised_margin(logps_chosen, logps_rejected, len_chosen, len_rejected) -> np.ndarray:
    """mean_t log pi(y_w|x) - mean_t log pi(y_l|x): summed log-probs divided by token counts.

    Signed; the alignment potential uses its absolute value. A response with zero tokens has
    no per-token mean: the caller must not pass one (the scoring step reports such rows).
    """
    lc = np.asarray(len_chosen, dtype=np.float64)
    lr = np.asarray(len_rejected, dtype=np.float64)
    return np.asarray(logps_chosen, dtype=np.float64) / lc - np.asarray(logps_rejected, dtype=np.float64) / lr


def dpo_implicit_margin(logps_chosen, logps_rejected, ref_logps_chosen, ref_logps_rejected,
                        beta: float) -> np.ndarray:
    """beta * ((log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l))), sums over tokens."""
    pc = np.asarray(logps_chosen, dtype=np.float64)
    pr = np.asarray(logps_rejected, dtype=np.float64)
    rc = np.asarray(ref_logps_chosen, dtype=np.float64)
    rr = np.asarray(ref_logps_rejected, dtype=np.float64)
    return beta * ((pc - rc) - (pr - rr))


def zscore(x, mean: float, std: float) -> np.ndarray:
    """(x - mean) / std, and 0 everywhere when std == 0 (a constant column ranks nothing)."""
    x = np.asarray(x, dtype=np.float64)
    if std == 0.0:
        return np.zeros_like(x)
    return (x - mean) / std


def alignment_potential(z_explicit, z_abs_implicit, weight: float = 1.0) -> np.ndarray:
    """The authors' code form: z(m_e) - w * z(|m_i|); larger is better."""
    return np.asarray(z_explicit, dtype=np.float64) - weight * np.asarray(z_abs_implicit, dtype=np.float64)


def alignment_potential_paper(explicit, implicit) -> np.ndarray:
    """The paper's raw form: |r_w - r_l| - |r_hat(y_w) - r_hat(y_l)|; larger is better.

    Unlike the code form the two terms are not standardised, so their scales must be
    comparable for the difference to mean anything (documented in docs/select.md).
    """
    return np.abs(np.asarray(explicit, dtype=np.float64)) - np.abs(np.asarray(implicit, dtype=np.float64))


@dataclass
class RunningMoments:
    """Streaming count / mean / population variance / min / max (Chan et al. parallel update).

    Batches are merged exactly as if the whole column had been seen at once (up to float
    rounding); min and max let `is_constant` be exact rather than a tolerance on the variance.
    """

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0
    min: float = math.inf
    max: float = -math.inf

    def update(self, values) -> None:
        x = np.asarray(values, dtype=np.float64)
        if x.size == 0:
            return
        nb = int(x.size)
        mb = float(x.mean())
        m2b = float(((x - mb) ** 2).sum())
        if self.n == 0:
            self.n, self.mean, self.m2 = nb, mb, m2b
        else:
            n = self.n + nb
            delta = mb - self.mean
            self.mean += delta * nb / n
            self.m2 += m2b + delta * delta * self.n * nb / n
            self.n = n
        self.min = min(self.min, float(x.min()))
        self.max = max(self.max, float(x.max()))

    @property
    def is_constant(self) -> bool:
        return self.n > 0 and self.min == self.max

    @property
    def std(self) -> float:
        """Population standard deviation; exactly 0.0 for a constant column."""
        if self.n == 0 or self.is_constant:
            return 0.0
        return math.sqrt(max(self.m2, 0.0) / self.n)

    def to_dict(self) -> dict:
        return {"n": self.n, "mean": self.mean, "std": self.std, "min": self.min, "max": self.max}


def budget(n_rows: int, fraction: float | None = None, top_k: int | None = None) -> int:
    """How many rows to keep: floor(fraction * n) as the authors' code does, or top_k (capped at n)."""
    if top_k is not None:
        return min(int(top_k), n_rows)
    return int(math.floor(float(fraction) * n_rows))


def top_indices(scores, k: int) -> np.ndarray:
    """Indices of the k largest scores, in ascending row order. Ties break toward earlier rows."""
    s = np.asarray(scores, dtype=np.float64)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    if k >= s.size:
        return np.arange(s.size, dtype=np.int64)
    # stable sort on -score: among equal scores the earlier row comes first
    order = np.argsort(-s, kind="stable")
    return np.sort(order[:k]).astype(np.int64)


def threshold_of(scores, k: int) -> float | None:
    """The smallest kept score (the selection boundary) for a top-k selection; None if k == 0."""
    s = np.asarray(scores, dtype=np.float64)
    if k <= 0 or s.size == 0:
        return None
    k = min(k, s.size)
    return float(np.partition(s, s.size - k)[s.size - k])
