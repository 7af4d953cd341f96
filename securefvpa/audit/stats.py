"""Lower bounds on epsilon from the outcome of a privacy audit (pure statistics).

Two tests, each answering "with confidence ``c``, the mechanism is *not* (eps, delta)-DP for
any eps below the returned value":

* :func:`one_run_epsilon_lower_bound` — Steinke, Nasr & Jagielski, "Privacy Auditing with One
  (1) Training Run", NeurIPS 2023 (arXiv:2305.08846), Theorem 5.2 and Algorithm 3 / Appendix D.
  ``m`` canaries are each included independently with probability 1/2 in ONE training run; the
  auditor guesses "in"/"out" for ``r`` of them (abstaining on the rest) and ``v`` guesses are
  right. Valid for many canaries inside one run — the dependence between canaries is handled by
  the theorem.
* :func:`clopper_pearson_epsilon_lower_bound` — Jagielski, Ullman & Oprea, "Auditing
  Differentially Private Machine Learning: How Private is Private SGD?", NeurIPS 2020
  (arXiv:2006.07709), Algorithm 2: eps >= log((TPR - delta) / FPR) with Clopper–Pearson bounds
  on the two rates. Its binomial model needs INDEPENDENT trials (e.g. one training run per
  trial); for many canaries in one run use the one-run bound.

Contract (never changes meaning): ``confidence`` is the probability, over the audit's own
randomness, that the returned bound does not exceed the mechanism's true epsilon at the given
``delta``; every returned bound is >= 0, and 0 means "the data refute no epsilon".

numpy/scipy only: this module imports neither torch nor flwr, so an auditor can recompute a
reported bound from the counts alone.
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
from scipy import special, stats

from securefvpa.errors import ConfigError

ONE_RUN = "one_run_steinke_nasr_jagielski_2023"
CLOPPER_PEARSON = "clopper_pearson_jagielski_ullman_oprea_2020"

_EPS_TOL = 1e-10


@dataclass(frozen=True)
class AuditBound:
    """One epsilon lower bound and the counts it was computed from.

    ``canaries`` is the number of canaries (trials); ``guesses`` the number of non-abstaining
    guesses (Clopper–Pearson: the number guessed "in", TP + FP); ``correct`` the number of
    correct guesses (Clopper–Pearson: TP). ``note`` records how guesses or threshold were
    chosen (e.g. the Bonferroni family size), so the bound can be recomputed.
    """

    method: str
    epsilon_lower_bound: float
    confidence: float
    delta: float
    canaries: int
    guesses: int
    correct: int
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, allow_nan=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AuditBound:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        missing = sorted(names - set(data) - {"note"})
        if unknown or missing:
            raise ConfigError(
                f"AuditBound fields do not match: unknown {unknown}, missing {missing}."
            )
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> AuditBound:
        return cls.from_dict(json.loads(text))


# --------------------------------------------------------------------------- validation


def _check_int(name: str, value: object, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}. Found {value!r}.")
    return int(value)


def check_confidence(confidence: object) -> float:
    """Return ``confidence`` as a float, or raise ConfigError unless it lies in (0, 1)."""
    if not isinstance(confidence, numbers.Real) or not 0.0 < float(confidence) < 1.0:
        raise ConfigError(f"confidence must be in (0, 1). Found {confidence!r}.")
    return float(confidence)


def check_delta(delta: object) -> float:
    """Return ``delta`` as a float, or raise ConfigError unless it lies in [0, 1)."""
    if not isinstance(delta, numbers.Real) or not 0.0 <= float(delta) < 1.0:
        raise ConfigError(f"delta must be in [0, 1). Found {delta!r}.")
    return float(delta)


def check_counts(*, canaries: object, guesses: object, correct: object) -> tuple[int, int, int]:
    """Validate ``0 <= correct <= guesses <= canaries`` and ``canaries >= 1``."""
    m = _check_int("canaries", canaries, 1)
    r = _check_int("guesses", guesses)
    v = _check_int("correct", correct)
    if r > m:
        raise ConfigError(f"guesses must be <= canaries ({m}). Found {r}.")
    if v > r:
        raise ConfigError(f"correct must be <= guesses ({r}). Found {v}.")
    return m, r, v


# --------------------------------------------------------------------------- one run


def _one_run_p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    q = float(special.expit(epsilon))  # accuracy of eps-DP randomized response
    beta = float(stats.binom.sf(v - 1, r, q))  # P[Binomial(r, q) >= v]
    if delta == 0.0 or v == 0:
        return min(beta, 1.0)
    # alpha = max_{1<=i<=v} P[v - i <= Binomial(r, q) < v] / i  (Algorithm 3's loop).
    window = np.cumsum(stats.binom.pmf(np.arange(v - 1, -1, -1), r, q))
    alpha = float(np.max(window / np.arange(1, v + 1)))
    return min(beta + alpha * delta * 2 * m, 1.0)


def one_run_p_value(
    *, canaries: int, guesses: int, correct: int, epsilon: float, delta: float
) -> float:
    """P-value of ``>= correct`` right guesses if the mechanism were (epsilon, delta)-DP.

    Steinke, Nasr & Jagielski 2023, Theorem 5.2: with ``f(v) = P[Binomial(r, q) >= v]`` and
    ``q = e^eps / (1 + e^eps)``, ``P[V >= v] <= f(v) + 2 m delta max_{1<=i<=v} (f(v-i) -
    f(v)) / i``, capped at 1 (their Algorithm 3, ``p_value_DP_audit``). For ``delta = 0`` it is
    the binomial tail ``f(v)``.
    """
    m, r, v = check_counts(canaries=canaries, guesses=guesses, correct=correct)
    if not isinstance(epsilon, numbers.Real) or not 0.0 <= float(epsilon) < math.inf:
        raise ConfigError(f"epsilon must be finite and >= 0. Found {epsilon!r}.")
    return _one_run_p_value(m, r, v, float(epsilon), check_delta(delta))


def one_run_epsilon_lower_bound(
    *, canaries: int, guesses: int, correct: int, delta: float, confidence: float
) -> float:
    """Largest epsilon refuted with probability ``confidence`` by one audit run.

    Returns the epsilon at which :func:`one_run_p_value` reaches ``1 - confidence`` (0 if it is
    already there at epsilon 0), found by bracketing and bisection as in Steinke, Nasr &
    Jagielski 2023, Algorithm 3 (``get_eps_audit``), to 1e-10 absolute. The p-value is
    non-decreasing in epsilon (``test_one_run_p_value_monotone_in_epsilon`` in
    tests/audit/test_audit_stats.py), so the crossing is unique. Example: 1000 canaries, 100
    guesses all right, delta 0, confidence 0.95 -> 3.4930.

    Valid only if which canaries are guessed, and how, depends on the trained model alone, not
    on which canaries were included (see :mod:`securefvpa.audit.scores`).
    """
    m, r, v = check_counts(canaries=canaries, guesses=guesses, correct=correct)
    d = check_delta(delta)
    significance = 1.0 - check_confidence(confidence)

    def rejected(eps: float) -> bool:
        return _one_run_p_value(m, r, v, eps, d) < significance

    if not rejected(0.0):
        return 0.0
    lo, hi = 0.0, 1.0
    # Terminates: by eps = 64, expit(eps) rounds to 1.0, so the p-value is 1.
    while rejected(hi):
        lo, hi = hi, 2.0 * hi
    while hi - lo > _EPS_TOL:
        mid = 0.5 * (lo + hi)
        if rejected(mid):
            lo = mid
        else:
            hi = mid
    return lo


def one_run_audit(
    *, canaries: int, guesses: int, correct: int, delta: float, confidence: float, note: str = ""
) -> AuditBound:
    """:func:`one_run_epsilon_lower_bound` packed into an :class:`AuditBound`."""
    eps = one_run_epsilon_lower_bound(
        canaries=canaries, guesses=guesses, correct=correct, delta=delta, confidence=confidence
    )
    return AuditBound(
        method=ONE_RUN,
        epsilon_lower_bound=eps,
        confidence=float(confidence),
        delta=float(delta),
        canaries=int(canaries),
        guesses=int(guesses),
        correct=int(correct),
        note=note,
    )


# --------------------------------------------------------------------------- Clopper–Pearson


def clopper_pearson_lower(successes: int, trials: int, significance: float) -> float:
    """One-sided Clopper–Pearson lower bound: P[p < bound] <= significance."""
    k = _check_int("successes", successes)
    n = _check_int("trials", trials, 1)
    if k > n:
        raise ConfigError(f"successes must be <= trials ({n}). Found {k}.")
    if k == 0:
        return 0.0
    return float(stats.beta.ppf(significance, k, n - k + 1))


def clopper_pearson_upper(successes: int, trials: int, significance: float) -> float:
    """One-sided Clopper–Pearson upper bound: P[p > bound] <= significance."""
    k = _check_int("successes", successes)
    n = _check_int("trials", trials, 1)
    if k > n:
        raise ConfigError(f"successes must be <= trials ({n}). Found {k}.")
    if k == n:
        return 1.0
    return float(stats.beta.ppf(1.0 - significance, k + 1, n - k))


def _log_ratio(numerator: float, denominator: float) -> float:
    if numerator <= 0.0 or denominator <= 0.0:
        return 0.0
    return max(0.0, math.log(numerator) - math.log(denominator))


def clopper_pearson_epsilon_lower_bound(
    *,
    true_positives: int,
    positives: int,
    false_positives: int,
    negatives: int,
    delta: float,
    confidence: float,
) -> float:
    """Epsilon lower bound of Jagielski, Ullman & Oprea 2020 (Algorithm 2).

    ``TPR_lo`` is the one-sided Clopper–Pearson lower bound on TP/positives and ``FPR_hi`` the
    one-sided upper bound on FP/negatives, each at significance ``(1 - confidence) / 2`` (the
    ends of the two-sided interval at level ``confidence``), so both hold together with
    probability ``>= confidence`` by a union bound. The result is the larger of
    ``log((TPR_lo - delta) / FPR_hi)`` and the swapped test ``log((TNR_lo - delta) / FNR_hi)``
    with ``TNR_lo = 1 - FPR_hi`` and ``FNR_hi = 1 - TPR_lo``; the swap reuses the same two
    intervals, so taking the maximum costs no further correction. Clipped at 0.
    """
    tp = _check_int("true_positives", true_positives)
    n_pos = _check_int("positives", positives, 1)
    fp = _check_int("false_positives", false_positives)
    n_neg = _check_int("negatives", negatives, 1)
    if tp > n_pos:
        raise ConfigError(f"true_positives must be <= positives ({n_pos}). Found {tp}.")
    if fp > n_neg:
        raise ConfigError(f"false_positives must be <= negatives ({n_neg}). Found {fp}.")
    d = check_delta(delta)
    half = (1.0 - check_confidence(confidence)) / 2.0
    tpr_lo = clopper_pearson_lower(tp, n_pos, half)
    fpr_hi = clopper_pearson_upper(fp, n_neg, half)
    return max(_log_ratio(tpr_lo - d, fpr_hi), _log_ratio((1.0 - fpr_hi) - d, 1.0 - tpr_lo))


def clopper_pearson_audit(
    *,
    true_positives: int,
    positives: int,
    false_positives: int,
    negatives: int,
    delta: float,
    confidence: float,
    note: str = "",
) -> AuditBound:
    """:func:`clopper_pearson_epsilon_lower_bound` packed into an :class:`AuditBound`."""
    eps = clopper_pearson_epsilon_lower_bound(
        true_positives=true_positives,
        positives=positives,
        false_positives=false_positives,
        negatives=negatives,
        delta=delta,
        confidence=confidence,
    )
    return AuditBound(
        method=CLOPPER_PEARSON,
        epsilon_lower_bound=eps,
        confidence=float(confidence),
        delta=float(delta),
        canaries=int(positives) + int(negatives),
        guesses=int(true_positives) + int(false_positives),
        correct=int(true_positives),
        note=note,
    )


def bonferroni_confidence(confidence: float, tests: int) -> float:
    """Per-test confidence so that ``tests`` tests all hold with prob. ``>= confidence``."""
    c = check_confidence(confidence)
    k = _check_int("tests", tests, 1)
    return 1.0 - (1.0 - c) / k
