"""Shamir secret sharing: reconstruction from any t shares, perfect secrecy of t - 1 shares."""

from __future__ import annotations

import itertools
import os
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securefvpa.errors import ConfigError, ProtocolAbort
from securefvpa.secagg import shamir

from .conftest import DeterministicBytes


@settings(max_examples=40, deadline=None)
@given(
    secret=st.binary(min_size=32, max_size=32),
    n=st.integers(min_value=1, max_value=9),
    data=st.data(),
)
def test_any_t_shares_reconstruct(secret, n, data):
    t = data.draw(st.integers(min_value=1, max_value=n))
    ids = data.draw(st.lists(st.integers(0, 2**64 - 1), min_size=n, max_size=n, unique=True))
    shares = shamir.split(shamir.secret_to_int(secret), [shamir.point_of(i) for i in ids], t)
    subset = data.draw(
        st.lists(st.sampled_from(sorted(shares)), min_size=t, max_size=n, unique=True)
    )
    chosen = {x: shares[x] for x in subset}
    assert shamir.int_to_secret(shamir.combine(chosen, t)) == secret


@pytest.mark.parametrize("t", [1, 13, 60])
def test_combine_equals_textbook_lagrange_interpolation(t):
    """The batch-inverted combine against the per-share textbook formula (Shamir 1979)."""
    rng = DeterministicBytes(f"lagrange-{t}")
    ids = sorted({int.from_bytes(rng(8), "big") for _ in range(t + 5)})
    secret = shamir.secret_to_int(rng(32))
    shares = shamir.split(secret, [shamir.point_of(i) for i in ids], t, rng)
    chosen = sorted(shares.items())[:t]
    p = shamir.PRIME
    oracle = 0
    for i, (xi, yi) in enumerate(chosen):
        num = den = 1
        for j, (xj, _) in enumerate(chosen):
            if j != i:
                num, den = num * xj % p, den * (xj - xi) % p
        oracle = (oracle + yi * num * pow(den, -1, p)) % p
    assert shamir.combine(shares, t) == oracle == secret


def test_points_equal_modulo_the_prime_abort():
    with pytest.raises(ProtocolAbort, match="same evaluation point"):
        shamir.combine({1: 5, 1 + shamir.PRIME: 6}, 2)


def test_fewer_than_t_shares_abort():
    shares = shamir.split(12345, [1, 2, 3, 4], 3, os.urandom)
    with pytest.raises(ProtocolAbort):
        shamir.combine({1: shares[1], 2: shares[2]}, 3)


@pytest.mark.parametrize("t", [2, 3])
def test_t_minus_1_shares_are_independent_of_the_secret(t):
    """Exhaustive over GF(7): for every secret the t - 1 shares are uniformly distributed."""
    p = 7
    points = [1, 2, 3][: t - 1]
    dists = []
    for secret in range(p):
        counts: Counter[tuple[int, ...]] = Counter()
        for coeffs in itertools.product(range(p), repeat=t - 1):
            poly = [secret, *coeffs]
            counts[tuple(sum(c * x**k for k, c in enumerate(poly)) % p for x in points)] += 1
        dists.append(counts)
        # the implementation's evaluation agrees with this brute-force polynomial
        rb = _bytes_for_coeffs(coeffs, p)
        impl = shamir.split(secret, points + [5], t, rb, prime=p)
        assert tuple(impl[x] for x in points) == tuple(
            sum(c * x**k for k, c in enumerate(poly)) % p for x in points
        )
    assert all(d == dists[0] for d in dists)
    assert set(dists[0].values()) == {1}  # p^(t-1) polynomials -> each of p^(t-1) views once


def _bytes_for_coeffs(coeffs, p):
    """random_bytes that makes split() draw exactly ``coeffs`` over GF(p) (1 byte each)."""
    stream = iter(coeffs)
    return lambda n: bytes([next(stream)])


def test_t_minus_1_shares_reconstruct_to_garbage():
    rb = DeterministicBytes("shamir")
    secret = int.from_bytes(b"\x42" * 32, "big")
    shares = shamir.split(secret, [1, 2, 3, 4, 5], 3, rb)
    # interpolating t - 1 = 2 shares as if the threshold were 2 gives an unrelated value
    assert shamir.combine({1: shares[1], 2: shares[2]}, 2) != secret


def test_share_encoding_is_strict():
    assert shamir.decode_share(shamir.encode_share(shamir.PRIME - 1)) == shamir.PRIME - 1
    with pytest.raises(ProtocolAbort):
        shamir.decode_share(b"\xff" * shamir.SHARE_BYTES)  # >= PRIME
    with pytest.raises(ProtocolAbort):
        shamir.decode_share(b"\x00" * (shamir.SHARE_BYTES - 1))
    with pytest.raises(ProtocolAbort):
        shamir.int_to_secret(1 << 256)


@pytest.mark.parametrize(
    "secret, points, t",
    [(-1, [1, 2], 1), (shamir.PRIME, [1, 2], 1), (5, [1, 2], 3), (5, [1, 1], 2), (5, [0, 1], 1)],
)
def test_split_rejects_bad_arguments(secret, points, t):
    with pytest.raises(ConfigError):
        shamir.split(secret, points, t)


def test_random_field_element_rejection_sampling_stays_in_field():
    draws = iter([b"\xff", b"\x06", b"\x03"])  # 0xff & 7 = 7 (rejected for p = 7), then 6
    assert shamir.random_field_element(lambda n: next(draws), prime=7) == 6
