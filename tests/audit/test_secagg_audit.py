"""Secure-aggregation server view: masked inputs look uniform, t - 1 colluders learn nothing,
and the same attack with t colluders recovers the input (the tests have power)."""

from __future__ import annotations

import numpy as np
import pytest

from securefvpa.audit.secagg_audit import (
    coalition_attack,
    interpolate_at_zero,
    run_round,
    run_secagg_audit,
    uniformity_tests,
)
from securefvpa.secagg import shamir

P_FLOOR = 1e-4  # a true-uniform p-value falls below this with probability 1e-4 per test


def test_secagg_audit_passes_with_reasonable_p_values() -> None:
    res = run_secagg_audit(n=5, d=1024, rounds=6)
    assert res["passed"] is True
    assert res["sums_correct"] == 6  # the rounds really aggregate
    for name, tests in res["uniformity_p_values"].items():
        for test, p in tests.items():
            assert p > P_FLOOR, (name, test, p)
    below = res["coalition_t_minus_1"]
    assert below["size"] == res["threshold"] - 1
    assert below["combine_refused"] == 6
    assert below["recovered_b"] == below["recovered_sk"] == below["input_recovered"] == 0
    power = res["power_check_coalition_t"]
    assert power["input_recovered"] == 6
    assert max(power["uniformity_p_values"].values()) < 1e-12


def test_uniformity_tests_reject_non_uniform_and_accept_uniform() -> None:
    rng = np.random.default_rng(1)
    uniform = rng.integers(0, 2**32, size=20_000, dtype=np.uint64).astype(np.uint32)
    assert min(uniformity_tests(uniform, 32).values()) > P_FLOOR
    biased = uniform & np.uint32(0xFFFFFFFE)  # lowest bit always 0
    p = uniformity_tests(biased, 32)
    assert p["chi2_bits_p"] < 1e-12 and p["chi2_bytes_p"] < 1e-12
    small = (uniform >> np.uint32(1))  # top bit always 0: values in [0, 2^31)
    assert uniformity_tests(small, 32)["ks_p"] < 1e-12


def test_t_minus_1_shares_interpolate_to_a_wrong_value_in_a_real_round() -> None:
    d = 128
    inputs = {i: np.zeros(d, dtype=np.uint32) for i in range(1, 6)}
    view = run_round(inputs)
    t = view.threshold
    target, others = 1, [2, 3, 4, 5]
    res = coalition_attack(view, target, others[: t - 1])
    assert res["combine_refused"] and not res["recovered_b"] and not res["recovered_sk"]
    assert not np.array_equal(res["residual"], inputs[target])
    res_t = coalition_attack(view, target, others[:t])
    assert res_t["input_recovered"]


def test_interpolation_with_t_shares_matches_combine() -> None:
    shares = shamir.split(12345, [2, 3, 4, 5], 3)
    three = dict(list(shares.items())[:3])
    assert interpolate_at_zero(three) == shamir.combine(three, 3) == 12345
    two = dict(list(shares.items())[:2])
    assert interpolate_at_zero(two) != 12345
    with pytest.raises(Exception, match="cannot reconstruct"):
        shamir.combine(two, 3)
