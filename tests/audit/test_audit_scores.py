"""Tests for securefvpa.audit.scores: guesses from scores, Bonferroni and split audits."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from securefvpa.audit.scores import (
    clopper_pearson_at_threshold,
    clopper_pearson_bonferroni,
    clopper_pearson_split,
    count_guesses,
    guesses_from_scores,
    one_run_audit_from_scores,
    one_run_audit_grid,
)
from securefvpa.audit.stats import (
    ONE_RUN,
    bonferroni_confidence,
    clopper_pearson_epsilon_lower_bound,
    one_run_audit,
    one_run_epsilon_lower_bound,
)
from securefvpa.errors import ConfigError


def test_guesses_from_scores_known_example() -> None:
    scores = [0.3, 2.0, -1.0, 0.9, 5.0, -3.0]
    assert guesses_from_scores(scores, 2, 1).tolist() == [0, 1, 0, 0, 1, -1]
    assert guesses_from_scores(scores, 0, 0).tolist() == [0] * 6
    assert guesses_from_scores(scores, 3, 3).tolist() == [-1, 1, -1, 1, 1, -1]


def test_guesses_ties_broken_by_index() -> None:
    assert guesses_from_scores([1.0, 1.0, 1.0, 0.0], 1, 1).tolist() == [0, 0, 1, -1]


@given(
    scores=hnp.arrays(np.float64, st.integers(1, 60), elements=st.floats(-1e6, 1e6)),
    data=st.data(),
)
@settings(max_examples=60, deadline=None)
def test_guesses_from_scores_properties(scores: np.ndarray, data: st.DataObject) -> None:
    m = scores.size
    k_plus = data.draw(st.integers(0, m))
    k_minus = data.draw(st.integers(0, m - k_plus))
    g = guesses_from_scores(scores, k_plus, k_minus)
    assert np.count_nonzero(g == 1) == k_plus and np.count_nonzero(g == -1) == k_minus
    # Every "in" guess scores >= every abstention >= every "out" guess.
    for hi, lo in [(1, 0), (0, -1), (1, -1)]:
        if np.any(g == hi) and np.any(g == lo):
            assert scores[g == hi].min() >= scores[g == lo].max()
    membership = data.draw(hnp.arrays(np.bool_, m))
    r, v = count_guesses(g, membership)
    brute = sum((gi == 1 and mi) or (gi == -1 and not mi) for gi, mi in zip(g, membership))
    assert (r, v) == (k_plus + k_minus, brute)


def test_one_run_from_scores_counts_and_bound() -> None:
    scores = np.array([9.0, 8.0, 7.0, 0.5, 0.4, -5.0, -6.0, -7.0])
    membership = np.array([True, True, False, True, False, False, True, False])
    bound = one_run_audit_from_scores(
        scores, membership, k_plus=3, k_minus=3, delta=0.0, confidence=0.6
    )
    # in-guesses 9, 8, 7 -> 2 right; out-guesses -5, -6, -7 -> 2 right.
    assert (bound.method, bound.canaries, bound.guesses, bound.correct) == (ONE_RUN, 8, 6, 4)
    assert bound == one_run_audit(
        canaries=8,
        guesses=6,
        correct=4,
        delta=0.0,
        confidence=0.6,
        note="k_plus=3, k_minus=3",
    )


def _separable(m: int, gap: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    membership = rng.random(m) < 0.5
    scores = rng.normal(size=m) + gap * membership
    return scores, membership


def test_one_run_grid_is_bonferroni_max() -> None:
    scores, membership = _separable(1000, 3.0, 0)
    grid = [(50, 50), (100, 0), (100, 100), (200, 200)]
    result = one_run_audit_grid(scores, membership, k_grid=grid, delta=1e-5, confidence=0.95)
    per_test = bonferroni_confidence(0.95, len(grid))
    singles = [
        one_run_audit_from_scores(
            scores, membership, k_plus=kp, k_minus=km, delta=1e-5, confidence=per_test
        ).epsilon_lower_bound
        for kp, km in grid
    ]
    assert result.epsilon_lower_bound == pytest.approx(max(singles))
    assert result.confidence == 0.95 and "Bonferroni over 4" in result.note
    uncorrected = max(
        one_run_audit_from_scores(
            scores, membership, k_plus=kp, k_minus=km, delta=1e-5, confidence=0.95
        ).epsilon_lower_bound
        for kp, km in grid
    )
    assert 0 < result.epsilon_lower_bound < uncorrected


def test_one_run_grid_scores_unrelated_to_membership_give_small_bound() -> None:
    rng = np.random.default_rng(1)
    membership = rng.random(2000) < 0.5
    scores = rng.normal(size=2000)
    result = one_run_audit_grid(
        scores,
        membership,
        k_grid=[(k, k) for k in (10, 50, 100, 500)],
        delta=1e-5,
        confidence=0.95,
    )
    assert result.epsilon_lower_bound < 0.5


def test_one_run_bound_grows_with_signal() -> None:
    bounds = []
    for gap in (0.0, 1.0, 2.0, 4.0, 8.0):
        scores, membership = _separable(1000, gap, 2)
        bounds.append(
            one_run_audit_from_scores(
                scores, membership, k_plus=100, k_minus=100, delta=1e-5, confidence=0.95
            ).epsilon_lower_bound
        )
    assert bounds[0] == 0.0 and np.all(np.diff(bounds) >= 0) and bounds[-1] > 2.5


def test_clopper_pearson_bonferroni_is_corrected_max_over_thresholds() -> None:
    rng = np.random.default_rng(3)
    ins, outs = rng.normal(1.5, 1.0, 60), rng.normal(0.0, 1.0, 60)
    result = clopper_pearson_bonferroni(ins, outs, delta=1e-5, confidence=0.95)
    family = np.union1d(ins, outs)
    per_test = 1 - 0.05 / family.size

    def at(t: float, c: float) -> float:
        return clopper_pearson_epsilon_lower_bound(
            true_positives=int(np.sum(ins >= t)),
            positives=60,
            false_positives=int(np.sum(outs >= t)),
            negatives=60,
            delta=1e-5,
            confidence=c,
        )

    assert result.epsilon_lower_bound == pytest.approx(max(at(t, per_test) for t in family))
    assert result.confidence == 0.95 and "Bonferroni over 120 thresholds" in result.note
    assert 0 < result.epsilon_lower_bound < max(at(t, 0.95) for t in family)
    # A pre-registered small family pays less.
    small = clopper_pearson_bonferroni(
        ins, outs, delta=1e-5, confidence=0.95, thresholds=[0.5, 1.0, 1.5]
    )
    assert small.epsilon_lower_bound == pytest.approx(
        max(at(t, 1 - 0.05 / 3) for t in (0.5, 1.0, 1.5))
    )


def test_clopper_pearson_at_threshold_counts() -> None:
    bound = clopper_pearson_at_threshold(
        [3.0, 2.0, 1.0, 0.0], [2.5, -1.0, -2.0], threshold=1.0, delta=0.0, confidence=0.9
    )
    assert (bound.canaries, bound.guesses, bound.correct) == (7, 4, 3)


def test_clopper_pearson_split_is_seeded_and_uses_held_out_part() -> None:
    rng = np.random.default_rng(4)
    ins, outs = rng.normal(3.0, 1.0, 200), rng.normal(0.0, 1.0, 200)
    first = clopper_pearson_split(
        ins, outs, delta=1e-5, confidence=0.95, rng=np.random.default_rng(7)
    )
    again = clopper_pearson_split(
        ins, outs, delta=1e-5, confidence=0.95, rng=np.random.default_rng(7)
    )
    assert first == again
    assert first.canaries == 200 and first.confidence == 0.95 and "chosen on 100+100" in first.note
    assert first.epsilon_lower_bound > 1.0
    quarter = clopper_pearson_split(
        ins,
        outs,
        delta=1e-5,
        confidence=0.95,
        rng=np.random.default_rng(7),
        selection_fraction=0.25,
    )
    assert quarter.canaries == 300


# ----------------------------------------------------------------- bad input


def test_bad_inputs_name_the_value() -> None:
    with pytest.raises(ConfigError, match=r"k_plus \+ k_minus must be <= .*\(3\)\. Found 2 \+ 2"):
        guesses_from_scores([1.0, 2.0, 3.0], 2, 2)
    with pytest.raises(ConfigError, match=r"k_minus must be an integer >= 0\. Found -1"):
        guesses_from_scores([1.0, 2.0, 3.0], 1, -1)
    with pytest.raises(ConfigError, match=r"scores must be finite\. Found nan"):
        guesses_from_scores([1.0, float("nan")], 1, 0)
    with pytest.raises(ConfigError, match=r"scores must be one-dimensional\. Found shape \(1, 2\)"):
        guesses_from_scores([[1.0, 2.0]], 1, 0)
    with pytest.raises(ConfigError, match=r"membership must be a boolean array\. Found dtype int"):
        count_guesses([1, 0], [1, 0])
    with pytest.raises(ConfigError, match=r"membership must have shape \(2,\)\. Found \(3,\)"):
        count_guesses([1, 0], [True, False, True])
    with pytest.raises(ConfigError, match="guesses must be"):
        count_guesses([2, 0], [True, False])
    with pytest.raises(ConfigError, match=r"confidence must be in \(0, 1\)\. Found 1\.2"):
        one_run_audit_grid([1.0, 2.0], [True, False], k_grid=[(1, 1)], delta=0.0, confidence=1.2)
    with pytest.raises(ConfigError, match="k_grid must be non-empty"):
        one_run_audit_grid([1.0, 2.0], [True, False], k_grid=[], delta=0.0, confidence=0.9)
    with pytest.raises(ConfigError, match=r"delta must be in \[0, 1\)\. Found 1\.5"):
        clopper_pearson_bonferroni([1.0], [0.0], delta=1.5, confidence=0.9)
    with pytest.raises(ConfigError, match=r"rng must be a numpy\.random\.Generator\. Found int"):
        clopper_pearson_split([1.0, 2.0], [0.0, 1.0], delta=0.0, confidence=0.9, rng=7)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"selection_fraction must be in \(0, 1\)\. Found 1\.0"):
        clopper_pearson_split(
            [1.0, 2.0],
            [0.0, 1.0],
            delta=0.0,
            confidence=0.9,
            rng=np.random.default_rng(0),
            selection_fraction=1.0,
        )
    with pytest.raises(ConfigError, match="in_scores has 1 scores"):
        clopper_pearson_split(
            [1.0], [0.0, 1.0], delta=0.0, confidence=0.9, rng=np.random.default_rng(0)
        )
    with pytest.raises(ConfigError, match="out_scores must not be empty"):
        clopper_pearson_at_threshold([1.0], [], threshold=0.0, delta=0.0, confidence=0.9)


def test_one_run_bound_matches_stats_directly() -> None:
    scores, membership = _separable(500, 2.0, 5)
    g = guesses_from_scores(scores, 40, 40)
    r, v = count_guesses(g, membership)
    assert one_run_audit_from_scores(
        scores, membership, k_plus=40, k_minus=40, delta=1e-5, confidence=0.95
    ).epsilon_lower_bound == one_run_epsilon_lower_bound(
        canaries=500, guesses=r, correct=v, delta=1e-5, confidence=0.95
    )
