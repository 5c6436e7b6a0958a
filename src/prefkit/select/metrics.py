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
from typing import Callable

import numpy as np

from prefkit.registry import Registry

# Built-in metric names as the CLI and the Python API spell them (registered at the end of this module).
ALIGNMENT_POTENTIAL = "alignment-potential"
AP_PAPER = "ap-paper"
DPO_IMPLICIT = "dpo-implicit"
EXPLICIT = "explicit"
IMPLICIT = "implicit"
RANDOM = "random"

#: what a metric may need: the pairs' scores, the policy's log-probs, a reference model's log-probs
NEEDS = ("reward", "policy", "reference")


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


# -- the registry of selection metrics --------------------------------------------------------------

#: column(name) -> that metric column of the scored table as float64 (NaN for unscorable rows)
Column = Callable[[str], np.ndarray]


@dataclass(frozen=True)
class Metric:
    """A selection metric: `score(column, weight) -> (N,) array`, larger kept first (NaN: never kept).

    needs: which of NEEDS the scoring pass must provide ('policy': the policy's log-probs and the
    implicit-margin columns; 'reference': a reference model too, for the DPO-form columns;
    'reward': the pairs' score columns). ranked_by: one line for the report. uses_weight: the
    metric reads `weight` (the report and the plot show it). implicit_column: the plot's y axis.
    boundary(threshold, stats, weight, xs): the selection boundary in the plot's (explicit margin,
    |implicit margin|) plane: None, ('vline', x), ('hline', y) or ('curve', ys over xs).
    """

    name: str
    score: Callable[[Column, float], np.ndarray]
    needs: frozenset
    ranked_by: str
    help: str = ""
    uses_weight: bool = False
    implicit_column: str = "implicit_margin"
    boundary: Callable | None = None


_METRICS: Registry[Metric] = Registry("metric")


def register_metric(name: str, *, needs=("reward",), ranked_by: str, help: str = "", uses_weight: bool = False,
                    implicit_column: str = "implicit_margin", boundary: Callable | None = None):
    """Decorator: make `score(column, weight) -> np.ndarray` the selection metric `name`
    (`prefkit select --metric NAME`, `SelectOptions(metric=NAME)`); see `Metric` for the rest.
    The scored table's columns are listed in `prefkit.select.scoring`."""
    bad = sorted(set(needs) - set(NEEDS))
    if bad:
        raise TypeError(f"metric {name!r}: needs must be among {NEEDS}, not {bad}")
    return _METRICS.decorator(name, lambda score: Metric(name, score, frozenset(needs), ranked_by, help or ranked_by,
                                                         uses_weight, implicit_column, boundary))


#: get_metric(name) -> Metric (ConfigError naming the choices if none); available_metrics() -> sorted names
get_metric = _METRICS.get
available_metrics = _METRICS.names


def _z_boundary(implicit_stat: str):
    """z(m_e) - w z(|m_i|) >= t is the line |m_i| = mu_i + sd_i ((m_e - mu_e) / sd_e - t) / w."""

    def boundary(threshold, stats, weight, xs):
        st_e, st_i = stats["explicit_margin"], stats[implicit_stat]
        if st_e["std"] == 0 and (st_i["std"] == 0 or weight == 0):
            return None
        if st_i["std"] == 0 or weight == 0:  # only the explicit term ranks: z_e >= t
            return ("vline", st_e["mean"] + st_e["std"] * threshold)
        if st_e["std"] == 0:  # only the implicit term ranks: -w z_i >= t
            return ("hline", st_i["mean"] - st_i["std"] * threshold / weight)
        return ("curve", st_i["mean"] + st_i["std"] * ((xs - st_e["mean"]) / st_e["std"] - threshold) / weight)

    return boundary


@register_metric(ALIGNMENT_POTENTIAL, needs=("reward", "policy"), uses_weight=True,
                 boundary=_z_boundary("abs_implicit_margin"),
                 ranked_by="z(explicit margin) - weight * z(|implicit margin|), largest first",
                 help="z(explicit margin) - weight * z(|implicit margin|) (the default)")
def _alignment_potential(column: Column, weight: float) -> np.ndarray:
    return alignment_potential(column("z_explicit_margin"), column("z_abs_implicit_margin"), weight)


@register_metric(AP_PAPER, needs=("reward", "policy"),
                 boundary=lambda t, stats, weight, xs: ("curve", np.abs(xs) - t),
                 ranked_by="|explicit margin| - |implicit margin| (raw), largest first",
                 help="|explicit| - |implicit| raw (the paper's form)")
def _ap_paper(column: Column, weight: float) -> np.ndarray:
    return column("alignment_potential_paper")


@register_metric(DPO_IMPLICIT, needs=("reward", "policy", "reference"), uses_weight=True,
                 implicit_column="dpo_implicit_margin", boundary=_z_boundary("abs_dpo_implicit_margin"),
                 ranked_by="z(explicit margin) - weight * z(|beta * DPO implicit margin|), largest first",
                 help="alignment potential with the DPO implicit margin (needs --reference; uses beta)")
def _dpo_implicit(column: Column, weight: float) -> np.ndarray:
    return alignment_potential(column("z_explicit_margin"), column("z_abs_dpo_implicit_margin"), weight)


@register_metric(EXPLICIT, needs=("reward",), boundary=lambda t, stats, weight, xs: ("vline", t),
                 ranked_by="explicit margin, largest first", help="largest explicit margin")
def _explicit(column: Column, weight: float) -> np.ndarray:
    return column("explicit_margin")


@register_metric(IMPLICIT, needs=("policy",), boundary=lambda t, stats, weight, xs: ("hline", -t),
                 ranked_by="|implicit margin|, smallest first", help="smallest |implicit margin|")
def _implicit(column: Column, weight: float) -> np.ndarray:
    return -column("abs_implicit_margin")


@register_metric(RANDOM, needs=(), ranked_by="uniform random (seeded)", help="uniform random (seeded by --seed)")
def _random(column: Column, weight: float) -> np.ndarray:
    return column("random_score")
