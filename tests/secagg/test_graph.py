"""SecAgg+ neighbour graph and threshold rule."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securefvpa.errors import ConfigError
from securefvpa.secagg.graph import (
    default_degree,
    degree_for,
    neighbour_graph,
    neighbours_of,
    threshold_for,
)


@settings(max_examples=30, deadline=None)
@given(
    ids=st.lists(st.integers(0, 2**64 - 1), min_size=5, max_size=60, unique=True),
    half=st.integers(1, 10),
    seed=st.binary(min_size=32, max_size=32),
)
def test_graph_is_symmetric_k_regular_and_deterministic(ids, half, seed):
    k = 2 * half
    graph = neighbour_graph(ids, k, seed)
    expected = k if k < len(ids) - 1 else len(ids) - 1
    assert set(graph) == set(ids)
    for u, nb in graph.items():
        assert u not in nb
        assert len(nb) == expected
        assert all(u in graph[v] for v in nb)
    assert graph == neighbour_graph(list(reversed(ids)), k, seed)
    for u in ids[:3]:  # what a client computes for itself
        assert neighbours_of(ids, k, seed, u) == graph[u]


def test_degree_zero_is_complete_graph():
    ids = [3, 1, 2, 9]
    graph = neighbour_graph(ids, 0, b"\x00" * 32)
    assert graph == {u: frozenset(ids) - {u} for u in ids}


def test_graph_depends_on_seed():
    ids = list(range(100))
    assert neighbour_graph(ids, 6, b"\x00" * 32) != neighbour_graph(ids, 6, b"\x01" * 32)


@pytest.mark.parametrize(
    "ids, degree, seed",
    [
        ([1, 2, 3, 4, 5], 3, b"\x00" * 32),
        ([1, 2], 0, b"\x00" * 32),
        ([1, 1, 2], 0, b"\x00" * 32),
        ([1, 2, 3, 4], 2, b"\x00" * 31),
        ([1, 2, 3, 4], -2, b"\x00" * 32),
    ],
)
def test_bad_graph_arguments_refused(ids, degree, seed):
    with pytest.raises(ConfigError):
        neighbour_graph(ids, degree, seed)
    with pytest.raises(ConfigError):
        neighbours_of(ids, degree, seed, ids[0])


def test_neighbours_of_a_non_participant_refused():
    with pytest.raises(ConfigError, match="not a participant"):
        neighbours_of([1, 2, 3, 4, 5], 2, b"\x00" * 32, 9)


def test_threshold_is_majority_of_the_neighbourhood():
    assert threshold_for(10, 0, 0.6) == 6  # m = 10
    assert threshold_for(100, 8, 0.6) == 6  # m = 9, ceil(5.4) = 6
    assert threshold_for(100, 8, 0.51) == 5  # majority of 9
    for n in range(3, 40):
        for k in (0, 2, 4, 6):
            m = (n - 1 if k == 0 or k >= n - 1 else k) + 1
            assert 2 * threshold_for(n, k, 0.51) > m
    with pytest.raises(ConfigError):
        threshold_for(10, 0, 0.5)


def test_default_degree_is_logarithmic():
    assert default_degree(5) == 0  # 2 * ceil(log2 5) = 6 >= 4 -> complete
    assert default_degree(10) == 8
    assert default_degree(500) == 2 * math.ceil(math.log2(500))
    with pytest.raises(ConfigError):
        default_degree(2)


def test_degree_for_dropout_matches_a_brute_force_binomial_tail():
    k = degree_for(500, 0.1, 0.51, failure=1e-3)
    assert k == 20

    def fail(kk):
        m, t = kk + 1, threshold_for(500, kk, 0.51)
        return 500 * sum(math.comb(m, i) * 0.9**i * 0.1 ** (m - i) for i in range(t))

    assert fail(k) <= 1e-3 < fail(k - 2)
    assert degree_for(100, 0.3, 0.6, failure=1e-3) == 0  # no sparse graph suffices: complete
    with pytest.raises(ConfigError):
        degree_for(100, 1.0, 0.6)
