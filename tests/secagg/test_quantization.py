"""Fixed-point encoding: round-trip error bound, no-wrap guarantee, overflow refusal."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securefvpa.errors import ConfigError, ModelError
from securefvpa.secagg.quantization import (
    FixedPointSpec,
    decode_sum,
    decode_weighted_mean,
    encode,
)

from .conftest import DeterministicBytes


@settings(max_examples=50, deadline=None)
@given(
    values=st.lists(st.floats(-100, 100, allow_nan=False), min_size=1, max_size=50),
    clip=st.floats(0.01, 10),
    bits=st.sampled_from([32, 64]),
    weight=st.integers(0, 50),
)
def test_round_trip_error_below_one_level(values, clip, bits, weight):
    spec = FixedPointSpec.fit(clip=clip, bits=bits, max_weight=50, max_clients=100)
    x = np.array(values)
    ring = encode(x, spec, weight=weight, random_bytes=DeterministicBytes("q"))
    assert ring.dtype == (np.uint32 if bits == 32 else np.uint64) and ring.size == x.size + 1
    weighted, total = decode_sum(ring, spec, 1)
    assert total == weight
    assert np.all(np.abs(weighted - weight * np.clip(x, -clip, clip)) < 1.0 / spec.scale)


def test_worst_case_sum_of_max_clients_does_not_wrap():
    spec = FixedPointSpec.fit(clip=2.0, bits=32, max_weight=1000, max_clients=50)
    for sign in (1.0, -1.0):
        total = np.zeros(4, dtype=np.uint32)
        for i in range(spec.max_clients):
            enc = encode(
                np.full(3, sign * 5.0), spec, weight=1000, random_bytes=DeterministicBytes(f"w{i}")
            )
            total += enc
        weighted, w = decode_sum(total, spec, spec.max_clients)
        assert w == 50 * 1000
        assert np.all(np.abs(weighted - sign * 2.0 * 1000 * 50) <= 50 / spec.scale)


def test_fit_picks_the_largest_safe_power_of_two_scale():
    spec = FixedPointSpec.fit(clip=1.0, bits=32, max_weight=10, max_clients=100)
    with pytest.raises(ConfigError):
        FixedPointSpec(clip=1.0, scale=spec.scale * 2, bits=32, max_weight=10, max_clients=100)


def test_overflowing_config_is_refused_with_the_numbers():
    with pytest.raises(ConfigError) as err:
        FixedPointSpec(clip=8.0, scale=2.0**20, bits=32, max_weight=100, max_clients=1000)
    msg = str(err.value)
    for part in ("n=1000", "W=100", "c=8.0", f"s={2.0**20}", "bits=32"):
        assert part in msg


def test_weighted_mean_of_several_clients():
    spec = FixedPointSpec.fit(clip=1.0, bits=64, max_weight=100, max_clients=10)
    xs = [np.array([0.5, -0.25, 0.9]), np.array([-0.5, 0.75, 0.1]), np.array([2.0, 0.0, -3.0])]
    ws = [10, 30, 60]
    total = sum(encode(x, spec, weight=w) for x, w in zip(xs, ws))
    mean = decode_weighted_mean(total, spec, 3)
    expected = sum(w * np.clip(x, -1, 1) for x, w in zip(xs, ws)) / 100
    assert np.allclose(mean, expected, atol=3 / spec.scale / 100)


def test_stochastic_rounding_is_unbiased():
    spec = FixedPointSpec(clip=1.0, scale=1.0, bits=32, max_weight=1, max_clients=1)
    ring = encode(np.full(20_000, 0.3), spec, random_bytes=DeterministicBytes("sr"))
    levels, _ = decode_sum(ring, spec, 1)
    assert set(np.unique(levels)) == {0.0, 1.0}
    assert abs(levels.mean() - 0.3) < 0.02  # 6 sigma of Binomial(20000, 0.3) / 20000


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(clip=0.0, scale=1.0, bits=32, max_weight=1, max_clients=1),
        dict(clip=float("inf"), scale=1.0, bits=32, max_weight=1, max_clients=1),
        dict(clip=1.0, scale=-1.0, bits=32, max_weight=1, max_clients=1),
        dict(clip=1.0, scale=1.0, bits=16, max_weight=1, max_clients=1),
        dict(clip=1.0, scale=1.0, bits=32, max_weight=0, max_clients=1),
        dict(clip=1.0, scale=1.0, bits=32, max_weight=1, max_clients=0),
        dict(clip=1.0, scale=1.0, bits=32, max_weight=2**31, max_clients=1),
    ],
)
def test_bad_specs_refused(kwargs):
    with pytest.raises(ConfigError):
        FixedPointSpec(**kwargs)


def test_bad_inputs_refused():
    spec = FixedPointSpec.fit(clip=1.0, bits=32, max_weight=5, max_clients=3)
    with pytest.raises(ModelError, match="index 1"):
        encode(np.array([0.0, np.nan]), spec)
    for w in (-1, 6, 1.5, True):
        with pytest.raises(ConfigError):
            encode(np.zeros(2), spec, weight=w)
    with pytest.raises(ConfigError):
        decode_sum(np.zeros(3, dtype=np.uint32), spec, 4)
    with pytest.raises(ConfigError):
        decode_sum(np.zeros(3, dtype=np.uint64), spec, 1)
    with pytest.raises(ConfigError):
        decode_weighted_mean(np.zeros(3, dtype=np.uint32), spec, 1)
