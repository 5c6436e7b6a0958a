"""Pairwise win rates against reference outputs, and the length-controlled win rate.

Win rate. A judge compares a policy's output with the reference output for the same prompt, in
both orders (policy shown first, then second) to cancel position bias. Each readable verdict is
a preference for the policy: 1 (policy better), 0.5 (tie), 0 (reference better). A prompt's
preference is the mean over its readable verdicts (both orders, every sample); the win rate is
the mean over prompts and its standard error is the sample standard deviation over prompts
divided by sqrt(prompts) (the prompt is the unit, as in AlpacaEval, arXiv:2404.04475).
Verdicts the parser cannot read are counted, never guessed; a prompt with none is left out of
the win rate and counted as unjudged.

Length-controlled win rate (AlpacaEval 2, Dubois et al. 2024, arXiv:2404.04475). A logistic
model of the preference y in [0, 1] of each comparison,

    logit P(policy preferred) = w_len * tanh(delta_len / sd(delta_len)) + w_diff * difficulty + theta,

fitted with an L1 penalty (minimise |w|_1 + C * sum of soft-label cross-entropies; no free
intercept: theta is the coefficient of a constant-1 column, as in the reference implementation)
with C chosen from logspace(-4, 4, 10) by 5-fold cross-validated log loss (folds group a
prompt's comparisons), then refitted on everything at that C. The length-controlled win rate is
the mean over comparisons of sigmoid(w_diff * difficulty + theta): the predicted preference had
the two outputs been equally long. delta_len is the policy output's length in characters minus
the reference's (the sign convention does not matter: tanh is odd and the term is set to 0).

Where the difficulty comes from decides what the number is:

- `official`: AlpacaEval's own implementation (`pip install 'prefkit[alpaca-eval]'`) with its
  per-instruction difficulties, which exist only for its 805 instructions in their canonical
  order (and are fetched from the hub); prefkit calls it when those inputs are present
  (`official_length_controlled`). Even then the judge is whatever judge you used.
- `prefkit-joint`: several policies evaluated on the same prompts against the same reference.
  Each policy's difficulty for prompt i is estimated from the *other* evaluated policies:
  logit((sum of their preferences on i + 0.5) / (their number + 1)) (leave-one-policy-out, so
  a policy's own verdicts never enter its own difficulty feature).
- `prefkit-length-only`: one policy; no difficulty term.

Outputs name the variant in full (`LC_LABELS`); the prefkit variants are never the leaderboard
figure.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

LC_LABELS = {
    "official": "length-controlled win rate (AlpacaEval 2 GLM, official implementation and instruction difficulties)",
    "prefkit-joint": "length-controlled (prefkit variant: difficulty estimated from the evaluated policies)",
    "prefkit-length-only": "length-controlled (prefkit variant: length term only, no difficulty; one policy)",
}
DEFAULT_CS = tuple(float(c) for c in np.logspace(-4, 4, 10))


# -- verdicts and raw win rates -------------------------------------------------------------------

def policy_preference(verdict: str | None, policy_first: bool) -> float | None:
    """A parsed verdict ('A', 'B', 'tie' or None) as the policy's preference (1, 0.5, 0 or None)."""
    if verdict is None:
        return None
    if verdict == "tie":
        return 0.5
    policy_letter = "A" if policy_first else "B"
    return 1.0 if verdict == policy_letter else 0.0


def mean_and_se(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and standard error (sample sd, ddof=1, / sqrt(n)); SE is None below two values."""
    vals = [float(v) for v in values]
    if not vals:
        return None, None
    m = sum(vals) / len(vals)
    if len(vals) < 2:
        return m, None
    var = sum((v - m) ** 2 for v in vals) / (len(vals) - 1)
    return m, math.sqrt(var / len(vals))


def win_rate(prompt_preferences: Sequence[float | None]) -> dict:
    """Win rate over prompts from per-prompt preferences in [0, 1] (None: unjudged prompt).

    Returns {win_rate, standard_error, n, wins, losses, ties, unjudged}: a prompt is a win when
    its preference is above 0.5, a tie at exactly 0.5."""
    judged = [p for p in prompt_preferences if p is not None]
    m, se = mean_and_se(judged)
    return {"win_rate": m, "standard_error": se, "n": len(judged),
            "wins": sum(p > 0.5 for p in judged), "losses": sum(p < 0.5 for p in judged),
            "ties": sum(p == 0.5 for p in judged), "unjudged": len(prompt_preferences) - len(judged)}


# -- L1-regularised logistic regression with soft labels -------------------------------------------

def _sigmoid(z):
    return np.exp(-np.logaddexp(0.0, -z))


def _log_loss(X, y, w, sw) -> float:
    z = X @ w
    # -[y log s + (1-y) log(1-s)] = y*softplus(-z) + (1-y)*softplus(z)
    per = y * np.logaddexp(0.0, -z) + (1.0 - y) * np.logaddexp(0.0, z)
    return float(np.sum(sw * per) / np.sum(sw))


def fit_l1_logistic(X, y, C: float, sample_weight=None, *, tol: float = 1e-12, max_cycles: int = 5000) -> np.ndarray:
    """argmin_w |w|_1 + C * sum_i s_i * CE(y_i, sigmoid(x_i . w)), y_i in [0, 1] (soft labels).

    Cyclic coordinate descent; each coordinate's one-dimensional problem is solved exactly
    (soft-threshold test at 0, then a bracketed Newton search on the side the gradient points to).
    """
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    sw = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, dtype=float)
    n, d = X.shape
    w = np.zeros(d)
    z = np.zeros(n)

    def grad(j, zj):  # C * dL/dw_j at linear predictor zj
        return C * float(np.sum(sw * (_sigmoid(zj) - y) * X[:, j]))

    for _ in range(max_cycles):
        biggest = 0.0
        for j in range(d):
            xj = X[:, j]
            if not np.any(xj):
                continue
            base = z - w[j] * xj  # predictor without coordinate j
            g0 = grad(j, base)
            if abs(g0) <= 1.0:
                t = 0.0
            else:
                s = -1.0 if g0 > 0 else 1.0  # the solution lies on the side opposite the gradient

                def phi(t):  # derivative of |t| + C L(t) on that side; increasing in s*t
                    return grad(j, base + t * xj) + s  # noqa: B023 - called only within this iteration

                lo, hi = 0.0, s * max(1.0, abs(w[j]) * 2)
                while s * phi(hi) < 0:
                    lo, hi = hi, hi * 2
                    if abs(hi) > 1e12:
                        break
                t = w[j] if (min(lo, hi) <= w[j] <= max(lo, hi)) else (lo + hi) / 2
                for _ in range(200):
                    f = phi(t)
                    if s * f < 0:
                        lo = t
                    else:
                        hi = t
                    p = _sigmoid(base + t * xj)
                    h = C * float(np.sum(sw * p * (1 - p) * xj * xj))
                    nt = t - f / h if h > 0 else (lo + hi) / 2
                    if not (min(lo, hi) < nt < max(lo, hi)):
                        nt = (lo + hi) / 2
                    if abs(nt - t) <= 1e-15 * max(1.0, abs(t)) or abs(hi - lo) <= 1e-15 * max(1.0, abs(t)):
                        t = nt
                        break
                    t = nt
            change = abs(t - w[j])
            if change:
                z = base + t * xj
                w[j] = t
            biggest = max(biggest, change)
        if biggest <= tol:
            break
    return w


def l1_logistic_cv(X, y, groups, Cs: Sequence[float] = DEFAULT_CS, n_splits: int = 5) -> tuple[np.ndarray, float, list]:
    """Fit with C chosen by `n_splits`-fold cross-validated soft log loss (folds keep each group
    together; group g goes to fold g-rank mod n_splits); returns (weights refitted on all rows at
    the chosen C, C, [(C, mean held-out log loss)]). Ties go to the smaller C, as in scikit-learn."""
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    uniq = list(dict.fromkeys(groups))
    k = min(n_splits, len(uniq))
    if k < 2:
        C = float(Cs[-1])
        return fit_l1_logistic(X, y, C), C, []
    fold_of_group = {g: r % k for r, g in enumerate(uniq)}
    fold = np.array([fold_of_group[g] for g in groups])
    scores = []
    for C in Cs:
        losses = []
        for f in range(k):
            tr, te = fold != f, fold == f
            w = fit_l1_logistic(X[tr], y[tr], C)
            losses.append(_log_loss(X[te], y[te], w, np.ones(int(te.sum()))))
        scores.append((float(C), float(np.mean(losses))))
    best = min(range(len(scores)), key=lambda i: (scores[i][1], i))
    C = scores[best][0]
    return fit_l1_logistic(X, y, C), C, scores


# -- the length-controlled GLM ------------------------------------------------------------------------

@dataclass
class LCResult:
    variant: str
    length_controlled_win_rate: float | None
    raw_model_win_rate: float | None  # the fitted model's mean prediction with lengths as they are
    weights: dict = field(default_factory=dict)
    C: float | None = None
    cv_log_loss: list = field(default_factory=list)
    n: int = 0
    note: str | None = None

    @property
    def label(self) -> str:
        return LC_LABELS[self.variant]

    def to_dict(self) -> dict:
        return {"variant": self.variant, "label": self.label,
                "length_controlled_win_rate": self.length_controlled_win_rate,
                "raw_model_win_rate": self.raw_model_win_rate, "weights": self.weights, "C": self.C,
                "cv_log_loss": self.cv_log_loss, "n": self.n, "note": self.note}


def length_feature(policy_lengths: Sequence[float], reference_lengths: Sequence[float]) -> np.ndarray:
    """tanh(delta / sd(delta)), delta = policy length - reference length, sd with ddof=1; all 0 when
    every delta is equal (sd 0: the lengths carry no information)."""
    delta = np.asarray(policy_lengths, dtype=float) - np.asarray(reference_lengths, dtype=float)
    sd = float(np.std(delta, ddof=1)) if len(delta) > 1 else 0.0
    if not sd > 0:
        return np.zeros(len(delta))
    return np.tanh(delta / sd)


def length_controlled_win_rate(preferences: Sequence[float], policy_lengths: Sequence[float],
                               reference_lengths: Sequence[float], *, difficulty: Sequence[float] | None = None,
                               groups: Sequence | None = None, C: float | None = None,
                               Cs: Sequence[float] = DEFAULT_CS, n_splits: int = 5,
                               variant: str | None = None) -> LCResult:
    """The GLM of the module docstring on comparisons (preference in [0, 1], output lengths).

    difficulty: one value per comparison (None: the length-only model). groups: the prompt of
    each comparison, for the folds (default: each comparison its own group). C: a fixed penalty
    instead of cross-validation."""
    y = np.asarray(preferences, dtype=float)
    n = len(y)
    variant = variant or ("prefkit-length-only" if difficulty is None else "prefkit-joint")
    if n == 0:
        return LCResult(variant, None, None, n=0, note="no judged comparisons")
    cols = {"length": length_feature(policy_lengths, reference_lengths)}
    if difficulty is not None:
        cols["difficulty"] = np.asarray(difficulty, dtype=float)
    cols["theta"] = np.ones(n)
    X = np.column_stack(list(cols.values()))
    if C is None:
        w, C, scores = l1_logistic_cv(X, y, list(groups) if groups is not None else list(range(n)), Cs, n_splits)
    else:
        w, scores = fit_l1_logistic(X, y, C), []
    weights = dict(zip(cols, (float(v) for v in w)))
    X0 = X.copy()
    X0[:, 0] = 0.0  # as if the outputs were equally long
    return LCResult(variant, float(np.mean(_sigmoid(X0 @ w))), float(np.mean(_sigmoid(X @ w))), weights,
                    float(C), [list(s) for s in scores], n)


def leave_one_out_difficulty(prompt_preferences: dict[str, Sequence[float | None]]) -> dict[str, list[float]]:
    """Per policy, per prompt: logit((sum of the other policies' preferences + 0.5) / (their count + 1)),
    from per-prompt preferences {policy: [preference or None per prompt]} on the same prompts."""
    names = list(prompt_preferences)
    n = len(next(iter(prompt_preferences.values()))) if names else 0
    out = {}
    for m in names:
        vals = []
        for i in range(n):
            others = [prompt_preferences[k][i] for k in names if k != m and prompt_preferences[k][i] is not None]
            p = (sum(others) + 0.5) / (len(others) + 1)
            vals.append(math.log(p / (1 - p)))
        out[m] = vals
    return out


def length_controlled_win_rates(comparisons: dict[str, list[dict]], prompt_preferences: dict[str, list],
                                **kw) -> dict[str, LCResult]:
    """The prefkit variant for every policy. comparisons: {policy: [{prompt_index, preference,
    policy_length, reference_length}, ...]} (judged comparisons only); prompt_preferences:
    {policy: per-prompt preference or None}, all on the same prompts. One policy: length only;
    several: with the leave-one-policy-out difficulty."""
    joint = len(comparisons) > 1
    diff = leave_one_out_difficulty(prompt_preferences) if joint else None
    out = {}
    for name, rows in comparisons.items():
        out[name] = length_controlled_win_rate(
            [r["preference"] for r in rows], [r["policy_length"] for r in rows],
            [r["reference_length"] for r in rows],
            difficulty=[diff[name][r["prompt_index"]] for r in rows] if joint else None,
            groups=[r["prompt_index"] for r in rows], **kw)
    return out


# -- the official implementation ------------------------------------------------------------------

def official_length_controlled(instructions: Sequence[str], comparisons: list[dict], *, policy: str,
                               reference: str, annotator: str = "prefkit-judge") -> tuple[dict | None, str]:
    """AlpacaEval's own `get_length_controlled_winrate`, when its inputs are present: the
    `alpaca_eval` package importable, the prompts exactly its 805 evaluation instructions in
    their canonical order (`alpaca_eval.json` of the `tatsu-lab/alpaca_eval` hub dataset),
    and its precomputed difficulty files reachable. Returns (metrics or None, why not)."""
    try:
        from alpaca_eval.metrics.glm_winrate import get_length_controlled_winrate  # noqa: PLC0415  optional extra
    except ImportError:
        return None, "the alpaca-eval package is not installed (pip install 'prefkit[alpaca-eval]')"
    try:
        from huggingface_hub import hf_hub_download  # noqa: PLC0415  only with the optional extra

        path = hf_hub_download("tatsu-lab/alpaca_eval", "alpaca_eval.json", repo_type="dataset")
        with open(path) as fh:
            canonical = [row["instruction"] for row in json.load(fh)]
    except Exception as exc:  # noqa: BLE001 - absent offline; reported, not raised
        return None, f"AlpacaEval's evaluation set is not available ({type(exc).__name__})"
    if list(instructions) != canonical:
        return None, "the prompts are not AlpacaEval's 805 instructions in their canonical order"

    rows = [{"instruction": instructions[c["prompt_index"]], "output_1": c["reference_output"],
             "output_2": c["policy_output"], "generator_1": reference, "generator_2": policy,
             "annotator": annotator, "index": c["prompt_index"],
             # AlpacaEval's scale: 1 = output_1 (reference) preferred, 2 = output_2 (policy), 1.5 tie
             "preference": 1.0 + c["preference"]} for c in comparisons]
    try:
        import pandas as pd  # noqa: PLC0415  heavy, only for the optional AlpacaEval GLM

        metrics = get_length_controlled_winrate(pd.DataFrame(rows), save_weights_dir=None)
    except Exception as exc:  # noqa: BLE001 - e.g. the hub files cannot be fetched
        return None, f"AlpacaEval's GLM failed ({type(exc).__name__}: {str(exc)[:150]})"
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}, ""
