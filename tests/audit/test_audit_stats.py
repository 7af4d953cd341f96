"""Tests for securefvpa.audit.stats: reference values, mpmath oracles, exact coverage."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys

import mpmath
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from securefvpa.audit import stats
from securefvpa.audit.stats import (
    CLOPPER_PEARSON,
    ONE_RUN,
    AuditBound,
    bonferroni_confidence,
    clopper_pearson_audit,
    clopper_pearson_epsilon_lower_bound,
    clopper_pearson_lower,
    clopper_pearson_upper,
    one_run_audit,
    one_run_epsilon_lower_bound,
    one_run_p_value,
)
from securefvpa.errors import ConfigError


def one_run(m: int, r: int, v: int, delta: float, confidence: float) -> float:
    return one_run_epsilon_lower_bound(
        canaries=m, guesses=r, correct=v, delta=delta, confidence=confidence
    )


# ----------------------------------------------------------------- independent mpmath oracle


def _mp_p_value(m: int, r: int, v: int, eps: float, delta: float) -> mpmath.mpf:
    """Theorem 5.2 of Steinke, Nasr & Jagielski 2023 evaluated term by term at 40 digits:
    f(k) = P[Binomial(r, q) >= k], p = f(v) + 2 m delta max_i (f(v - i) - f(v)) / i."""
    with mpmath.workdps(40):
        q = mpmath.e ** mpmath.mpf(eps) / (1 + mpmath.e ** mpmath.mpf(eps))
        pmf = [(1 - q) ** r]  # binomial pmf by the ratio pmf[j+1]/pmf[j] = (r-j)q / ((j+1)(1-q))
        for j in range(r):
            pmf.append(pmf[-1] * (r - j) * q / ((j + 1) * (1 - q)))
        tail = [mpmath.mpf(0)] * (r + 2)  # tail[k] = f(k) = sum_{j >= k} pmf[j]
        for k in range(r, -1, -1):
            tail[k] = tail[k + 1] + pmf[k]
        f_v = tail[v]
        worst = max(((tail[v - i] - f_v) / i for i in range(1, v + 1)), default=mpmath.mpf(0))
        return min(f_v + 2 * m * mpmath.mpf(delta) * worst, mpmath.mpf(1))


def _mp_bound(m: int, r: int, v: int, delta: float, confidence: float) -> float:
    alpha = mpmath.mpf(1) - mpmath.mpf(confidence)
    if _mp_p_value(m, r, v, 0.0, delta) >= alpha:
        return 0.0
    lo, hi = 0.0, 20.0  # p(20) > 1 - confidence for every case below
    for _ in range(38):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _mp_p_value(m, r, v, mid, delta) < alpha else (lo, mid)
    return lo


ORACLE_CASES = [
    (1000, 100, 100, 0.0, 0.95),
    (1000, 100, 90, 1e-5, 0.95),
    (1000, 400, 300, 1e-5, 0.95),
    (100, 50, 40, 1e-2, 0.9),
    (500, 200, 150, 1e-4, 0.99),
    (50, 50, 45, 0.0, 0.95),
    (10, 5, 5, 0.0, 0.8),
]


def test_reference_value_from_brief_and_paper() -> None:
    # 1000 canaries, 100 guesses, all right, delta 0, 95 %: q = 0.05 ** (1/100), eps = logit(q).
    eps = one_run(1000, 100, 100, 0.0, 0.95)
    assert eps == pytest.approx(3.49, abs=5e-3)
    q = 0.05 ** (1 / 100)
    assert eps == pytest.approx(math.log(q / (1 - q)), abs=1e-8)


@pytest.mark.parametrize("r", [1, 10, 100, 1000])
@pytest.mark.parametrize("confidence", [0.5, 0.9, 0.95, 0.999])
def test_all_correct_delta_zero_is_closed_form(r: int, confidence: float) -> None:
    q = (1 - confidence) ** (1 / r)
    expected = max(0.0, math.log(q) - math.log1p(-q))  # 0 when q <= 1/2 (r = 1, c >= 0.5)
    assert one_run(5000, r, r, 0.0, confidence) == pytest.approx(expected, abs=1e-8)


@pytest.mark.parametrize(("m", "r", "v", "delta", "confidence"), ORACLE_CASES)
def test_one_run_p_value_matches_mpmath(
    m: int, r: int, v: int, delta: float, confidence: float
) -> None:
    for eps in (0.0, 0.3, 1.0, 2.5, 6.0):
        ours = one_run_p_value(canaries=m, guesses=r, correct=v, epsilon=eps, delta=delta)
        oracle = float(_mp_p_value(m, r, v, eps, delta))
        assert ours == pytest.approx(oracle, rel=1e-8, abs=1e-300)


@pytest.mark.parametrize(("m", "r", "v", "delta", "confidence"), ORACLE_CASES)
def test_one_run_bound_matches_mpmath_bisection(
    m: int, r: int, v: int, delta: float, confidence: float
) -> None:
    assert one_run(m, r, v, delta, confidence) == pytest.approx(
        _mp_bound(m, r, v, delta, confidence), abs=1e-6
    )


def test_one_run_delta_zero_is_binomial_tail() -> None:
    eps = one_run(300, 120, 100, 0.0, 0.95)
    q = math.exp(eps) / (1 + math.exp(eps))
    assert sps.binom.sf(99, 120, q) == pytest.approx(0.05, rel=1e-6)


def test_one_run_p_value_monotone_in_epsilon() -> None:
    # The bisection relies on this (stats.one_run_epsilon_lower_bound docstring).
    grid = np.linspace(0.0, 15.0, 151)
    for m, r, delta in [(100, 50, 1e-2), (1000, 100, 1e-5), (1000, 500, 0.1), (10, 10, 0.04)]:
        for v in range(r // 2, r + 1, max(1, r // 10)):
            p = [
                one_run_p_value(canaries=m, guesses=r, correct=v, epsilon=e, delta=delta)
                for e in grid
            ]
            assert np.all(np.diff(p) >= -1e-12), (m, r, v, delta)


def test_more_correct_gives_larger_bound() -> None:
    for delta in (0.0, 1e-5):
        bounds = [one_run(1000, 200, v, delta, 0.95) for v in range(100, 201, 5)]
        assert np.all(np.diff(bounds) >= 0)
        assert bounds[-1] > bounds[len(bounds) // 2] > 0


def test_higher_confidence_gives_smaller_bound() -> None:
    bounds = [one_run(1000, 200, 180, 1e-5, c) for c in (0.5, 0.8, 0.9, 0.95, 0.99, 0.999)]
    assert np.all(np.diff(bounds) < 0)


def test_larger_delta_gives_smaller_bound() -> None:
    bounds = [one_run(1000, 200, 180, d, 0.95) for d in (0.0, 1e-6, 1e-5, 1e-4, 1e-3)]
    assert np.all(np.diff(bounds) < 0)


@given(
    r=st.integers(1, 300),
    frac=st.floats(0.0, 0.5),
    delta=st.sampled_from([0.0, 1e-6, 1e-3]),
    confidence=st.floats(0.5, 0.999),
)
@settings(max_examples=40, deadline=None)
def test_bound_is_zero_at_or_below_chance(
    r: int, frac: float, delta: float, confidence: float
) -> None:
    v = int(math.floor(frac * r))
    assert one_run(1000, r, v, delta, confidence) == 0.0


@pytest.mark.parametrize("eps_true", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("delta", [0.0, 1e-3])
@pytest.mark.parametrize("confidence", [0.9, 0.95])
def test_one_run_exact_coverage_for_randomized_response(
    eps_true: float, delta: float, confidence: float
) -> None:
    # eps-randomized response guessed on all r = m canaries: V ~ Binomial(m, e^eps/(1+e^eps)).
    # It is (eps_true, delta)-DP, so P[bound > eps_true] must be <= 1 - confidence; we sum that
    # probability exactly. The test is tight for delta = 0 (coverage close to 1 - confidence).
    m = 120
    q = math.exp(eps_true) / (1 + math.exp(eps_true))
    pmf = sps.binom.pmf(np.arange(m + 1), m, q)
    wrong = sum(
        pmf[v] for v in range(m // 2, m + 1) if one_run(m, m, v, delta, confidence) > eps_true
    )
    assert wrong <= 1 - confidence
    if delta == 0.0:
        assert wrong > 0.3 * (1 - confidence)


# ----------------------------------------------------------------- Clopper–Pearson


def _cp_oracle(tp: int, n_pos: int, fp: int, n_neg: int, delta: float, c: float) -> float:
    """Jagielski et al. 2020 with scipy's two-sided exact (Clopper–Pearson) interval."""
    tpr_lo = sps.binomtest(tp, n_pos).proportion_ci(c, method="exact").low
    fpr_hi = sps.binomtest(fp, n_neg).proportion_ci(c, method="exact").high
    candidates = [0.0]
    if tpr_lo - delta > 0:
        candidates.append(math.log((tpr_lo - delta) / fpr_hi))
    if 1 - fpr_hi - delta > 0 and tpr_lo < 1:
        candidates.append(math.log((1 - fpr_hi - delta) / (1 - tpr_lo)))
    return max(candidates)


@pytest.mark.parametrize(
    ("tp", "n_pos", "fp", "n_neg"),
    [
        (90, 100, 10, 100),
        (100, 100, 0, 100),
        (0, 100, 0, 100),
        (50, 50, 3, 80),
        (5, 100, 95, 100),
        (400, 500, 1, 500),
        (30, 60, 30, 60),
    ],
)
@pytest.mark.parametrize("delta", [0.0, 1e-5, 0.05])
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_clopper_pearson_matches_scipy_exact_interval(
    tp: int, n_pos: int, fp: int, n_neg: int, delta: float, confidence: float
) -> None:
    ours = clopper_pearson_epsilon_lower_bound(
        true_positives=tp,
        positives=n_pos,
        false_positives=fp,
        negatives=n_neg,
        delta=delta,
        confidence=confidence,
    )
    assert ours == pytest.approx(_cp_oracle(tp, n_pos, fp, n_neg, delta, confidence), abs=1e-9)


def test_clopper_pearson_one_sided_bounds() -> None:
    # P[Binomial(n, lower) >= k] = alpha and P[Binomial(n, upper) <= k] = alpha.
    assert sps.binom.sf(6, 20, clopper_pearson_lower(7, 20, 0.05)) == pytest.approx(0.05)
    assert sps.binom.cdf(7, 20, clopper_pearson_upper(7, 20, 0.05)) == pytest.approx(0.05)
    assert clopper_pearson_lower(0, 20, 0.05) == 0.0
    assert clopper_pearson_upper(20, 20, 0.05) == 1.0
    assert clopper_pearson_upper(0, 20, 0.05) == pytest.approx(1 - 0.05 ** (1 / 20))


def test_clopper_pearson_swapped_direction() -> None:
    # Every member flagged (FNR = 0) but half the non-members too: the complement event
    # ("guess out") gives log(TNR_lo / FNR_hi), far above log(TPR_lo / FPR_hi).
    half = 0.025
    tpr_lo = clopper_pearson_lower(100, 100, half)
    fpr_hi = clopper_pearson_upper(50, 100, half)
    direct = math.log(tpr_lo / fpr_hi)
    swapped = math.log((1 - fpr_hi) / (1 - tpr_lo))
    assert swapped > direct + 1
    eps = clopper_pearson_epsilon_lower_bound(
        true_positives=100,
        positives=100,
        false_positives=50,
        negatives=100,
        delta=0.0,
        confidence=0.95,
    )
    assert eps == pytest.approx(swapped)
    # An inverted attack (flags non-members) is not credited: negate its scores instead.
    assert (
        clopper_pearson_epsilon_lower_bound(
            true_positives=5,
            positives=100,
            false_positives=95,
            negatives=100,
            delta=0.0,
            confidence=0.95,
        )
        == 0.0
    )


def test_clopper_pearson_monotone_and_zero_at_chance() -> None:
    kw = {"positives": 200, "negatives": 200, "delta": 1e-5}
    assert (
        clopper_pearson_epsilon_lower_bound(
            true_positives=100, false_positives=100, confidence=0.95, **kw
        )
        == 0.0
    )
    by_tp = [
        clopper_pearson_epsilon_lower_bound(
            true_positives=tp, false_positives=20, confidence=0.95, **kw
        )
        for tp in range(60, 201, 20)
    ]
    assert np.all(np.diff(by_tp) > 0)
    by_conf = [
        clopper_pearson_epsilon_lower_bound(
            true_positives=150, false_positives=20, confidence=c, **kw
        )
        for c in (0.8, 0.9, 0.95, 0.99)
    ]
    assert np.all(np.diff(by_conf) < 0)


@pytest.mark.parametrize("eps_true", [0.5, 1.5])
def test_clopper_pearson_exact_coverage(eps_true: float) -> None:
    # Randomized response trials: TPR = e^eps/(1+e^eps), FPR = 1/(1+e^eps), independent
    # Binomial counts. P[bound > eps_true] summed exactly over all (TP, FP) must be <= 0.1.
    n, confidence = 30, 0.9
    tpr = math.exp(eps_true) / (1 + math.exp(eps_true))
    p_tp = sps.binom.pmf(np.arange(n + 1), n, tpr)
    p_fp = sps.binom.pmf(np.arange(n + 1), n, 1 - tpr)
    wrong = 0.0
    for tp in range(n + 1):
        for fp in range(n + 1):
            eps = clopper_pearson_epsilon_lower_bound(
                true_positives=tp,
                positives=n,
                false_positives=fp,
                negatives=n,
                delta=0.0,
                confidence=confidence,
            )
            if eps > eps_true:
                wrong += p_tp[tp] * p_fp[fp]
    assert wrong <= 1 - confidence


def test_bonferroni_confidence() -> None:
    assert bonferroni_confidence(0.95, 1) == pytest.approx(0.95)
    assert bonferroni_confidence(0.95, 10) == pytest.approx(0.995)


# ----------------------------------------------------------------- result type


def test_audit_bound_json_round_trip() -> None:
    bound = one_run_audit(canaries=1000, guesses=100, correct=100, delta=0.0, confidence=0.95)
    assert bound.method == ONE_RUN
    assert (bound.canaries, bound.guesses, bound.correct) == (1000, 100, 100)
    data = json.loads(bound.to_json())
    assert data["epsilon_lower_bound"] == pytest.approx(3.4929654, abs=1e-6)
    assert AuditBound.from_json(bound.to_json()) == bound
    cp = clopper_pearson_audit(
        true_positives=80,
        positives=100,
        false_positives=10,
        negatives=100,
        delta=0.0,
        confidence=0.95,
    )
    assert cp.method == CLOPPER_PEARSON and (cp.canaries, cp.guesses, cp.correct) == (200, 90, 80)
    assert AuditBound.from_dict(cp.to_dict()) == cp


def test_audit_bound_from_dict_rejects_unknown_fields() -> None:
    data = one_run_audit(canaries=10, guesses=5, correct=5, delta=0.0, confidence=0.9).to_dict()
    with pytest.raises(ConfigError, match="surprise"):
        AuditBound.from_dict({**data, "surprise": 1})


# ----------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"canaries": 10, "guesses": 5, "correct": 6},
            r"correct must be <= guesses \(5\)\. Found 6",
        ),
        (
            {"canaries": 10, "guesses": 11, "correct": 6},
            r"guesses must be <= canaries \(10\)\. Found 11",
        ),
        (
            {"canaries": 0, "guesses": 0, "correct": 0},
            r"canaries must be an integer >= 1\. Found 0",
        ),
        ({"canaries": 10, "guesses": -1, "correct": 0}, r"guesses .* Found -1"),
        ({"canaries": 10, "guesses": 5.0, "correct": 0}, r"guesses .* Found 5\.0"),
        ({"canaries": 10, "guesses": True, "correct": 0}, r"guesses .* Found True"),
        ({"confidence": 0.0}, r"confidence must be in \(0, 1\)\. Found 0\.0"),
        ({"confidence": 1.0}, r"confidence must be in \(0, 1\)\. Found 1\.0"),
        ({"confidence": 1.5}, r"Found 1\.5"),
        ({"confidence": float("nan")}, r"confidence .* Found nan"),
        ({"delta": -0.1}, r"delta must be in \[0, 1\)\. Found -0\.1"),
        ({"delta": 1.0}, r"delta must be in \[0, 1\)\. Found 1\.0"),
    ],
)
def test_one_run_bad_input(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {
        "canaries": 10,
        "guesses": 5,
        "correct": 4,
        "delta": 0.0,
        "confidence": 0.95,
    }
    args.update(kwargs)
    with pytest.raises(ConfigError, match=message):
        one_run_epsilon_lower_bound(**args)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=message):
        one_run_audit(**args)  # type: ignore[arg-type]


def test_one_run_p_value_bad_epsilon() -> None:
    for eps in (-1.0, math.inf, float("nan")):
        with pytest.raises(ConfigError, match="epsilon must be finite"):
            one_run_p_value(canaries=10, guesses=5, correct=4, epsilon=eps, delta=0.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"true_positives": 11}, r"true_positives must be <= positives \(10\)\. Found 11"),
        ({"false_positives": 21}, r"false_positives must be <= negatives \(20\)\. Found 21"),
        ({"positives": 0, "true_positives": 0}, r"positives must be an integer >= 1\. Found 0"),
        ({"confidence": 1.0}, r"confidence must be in \(0, 1\)\. Found 1\.0"),
        ({"delta": 2.0}, r"delta must be in \[0, 1\)\. Found 2\.0"),
    ],
)
def test_clopper_pearson_bad_input(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {
        "true_positives": 8,
        "positives": 10,
        "false_positives": 2,
        "negatives": 20,
        "delta": 0.0,
        "confidence": 0.95,
    }
    args.update(kwargs)
    with pytest.raises(ConfigError, match=message):
        clopper_pearson_epsilon_lower_bound(**args)  # type: ignore[arg-type]


def test_audit_statistics_import_neither_torch_nor_flwr() -> None:
    code = (
        "import sys, securefvpa.audit.stats, securefvpa.audit.scores; "
        "print(sorted(m for m in ('torch', 'flwr', 'opacus') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(stats.__file__))),
    )
    assert out.stdout.strip() == "[]"


# ----------------------------------------------------------------- optional cross-check


def test_matches_jax_privacy_auditing_module() -> None:
    """Cross-check against google-deepmind/jax_privacy's auditing.py (needs only numpy, scipy,
    dp-accounting). Point SECUREFVPA_JAX_PRIVACY_AUDITING at that file from an unpacked
    `pip download --no-deps jax-privacy` wheel; jax itself is not needed."""
    path = os.environ.get("SECUREFVPA_JAX_PRIVACY_AUDITING")
    if not path:
        pytest.skip("SECUREFVPA_JAX_PRIVACY_AUDITING (path to jax_privacy/auditing.py) unset")
    spec = importlib.util.spec_from_file_location("_jax_privacy_auditing", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    for m, r, v, delta, confidence in ORACLE_CASES:
        theirs = module._epsilon_one_run(0, m, r, v, 1 - confidence, delta)
        assert one_run(m, r, v, delta, confidence) == pytest.approx(theirs, abs=1e-5)
