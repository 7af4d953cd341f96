"""Metric definitions against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from securefvpa.errors import DataError
from securefvpa.models import metrics


def test_accuracy_counts_ties_as_half() -> None:
    assert metrics.preference_accuracy([1.0, -1.0, 0.0, 2.0]) == pytest.approx(2.5 / 4)
    np.testing.assert_array_equal(metrics.pair_correct([0.3, 0.0, -2]), [1.0, 0.5, 0.0])
    with pytest.raises(DataError, match="Found 0"):
        metrics.preference_accuracy([])
    with pytest.raises(DataError, match="nan"):
        metrics.preference_accuracy([np.nan])


def test_mutual_information_known_values() -> None:
    types = np.array([0, 1] * 50)
    assert metrics.mutual_information_bits(types, types) == pytest.approx(1.0)
    assert metrics.mutual_information_bits(5 - types, types) == pytest.approx(
        1.0
    )  # labels arbitrary
    assert metrics.mutual_information_bits(np.zeros(100), types) == pytest.approx(0.0)
    # independent balanced 2x2: exactly 0
    a = np.array([0, 0, 1, 1] * 25)
    b = np.array([0, 1, 0, 1] * 25)
    assert metrics.mutual_information_bits(a, b) == pytest.approx(0.0, abs=1e-12)
    # a 2x2 table [[40, 10], [10, 40]]: I = 1 - H(0.2) bits
    a = np.array([0] * 50 + [1] * 50)
    b = np.array([0] * 40 + [1] * 10 + [0] * 10 + [1] * 40)
    h = -(0.2 * math.log2(0.2) + 0.8 * math.log2(0.8))
    assert metrics.mutual_information_bits(a, b) == pytest.approx(1 - h)


def test_miller_madow_and_permutation_null() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 4, 60), rng.integers(0, 2, 60)
    plug = metrics.mutual_information_bits(a, b)
    mm = metrics.miller_madow_mi_bits(a, b)
    # 4x2 fully occupied table: correction ((4-1) + (2-1) - (8-1)) / (2N) nats
    assert mm == pytest.approx(plug - 3 / (2 * 60) / math.log(2))
    null_mean, p = metrics.permutation_null_mi_bits(a, b, rounds=100, seed=1)
    assert 0 < null_mean < 0.2 and p > 0.01  # independent labels: not significant
    t = np.array([0, 1] * 30)
    null_mean, p = metrics.permutation_null_mi_bits(t, t, rounds=100, seed=1)
    assert p == pytest.approx(1 / 101) and null_mean < 0.1


def test_active_components_threshold() -> None:
    assignments = np.array([0] * 97 + [1] * 2 + [2])
    assert metrics.active_components(assignments) == 2  # 2 % counts, 1 % does not
    assert metrics.active_components(np.array([3, 3, 4])) == 2
    assert metrics.active_components(np.array([])) == 0


def test_posterior_collapse_flag() -> None:
    assert metrics.posterior_collapse(0.01, 8, 0.0) is True  # 0.00125 nats/dim, no MI
    assert metrics.posterior_collapse(0.01, 8, 0.5) is False  # informative about the type
    assert metrics.posterior_collapse(2.0, 8, 0.0) is False  # 0.25 nats/dim
    with pytest.raises(DataError, match="Found 0"):
        metrics.posterior_collapse(1.0, 0, 0.0)


def test_kmeans_is_seeded_and_separates_clusters() -> None:
    rng = np.random.default_rng(0)
    pts = np.concatenate([rng.normal(-5, 0.1, (20, 2)), rng.normal(5, 0.1, (20, 2))])
    a = metrics.kmeans_assignments(pts, 2, seed=3)
    assert metrics.mutual_information_bits(a, np.repeat([0, 1], 20)) == pytest.approx(1.0)
    np.testing.assert_array_equal(a, metrics.kmeans_assignments(pts, 2, seed=3))
