"""Fixed-point encoding: round-trip error bound, no-wrap guarantee, overflow refusal."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securefvpa.errors import ConfigError, ModelError
from securefvpa.secagg.quantization import (
    FixedPointSpec,
    check_clip_range,
    clip_range_for,
    clipped_share_bound,
    decode,
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


# --- clip counting and the clip range -------------------------------------------------------


def test_the_issue_example_is_counted_not_silent():
    """encode([20.0]) with clip 8 decodes to 8.0 (as before) and now reports 1 clipped coordinate."""
    spec = FixedPointSpec.fit(clip=8.0, bits=32, max_weight=1, max_clients=3, count_clipped=True)
    ring = encode(np.array([20.0]), spec, weight=1)
    assert ring.size == 1 + spec.extra_coordinates == 3
    decoded = decode(ring, spec, 1)
    assert decoded.weighted_sum[0] == pytest.approx(8.0, abs=1 / spec.scale)
    assert decoded.clipped == 1 and decoded.clipped_share == 1.0


def test_clip_counts_are_secure_summed_and_the_old_layout_is_unchanged():
    """Three clients; |x| == clip is not clipped, |x| > clip is (either sign). The ring sum
    carries the total count; decode_sum / decode_weighted_mean still work on both layouts."""
    xs = [np.array([1.0, 1.5, -2.0, 0.2]), np.array([-1.0, 0.0, 3.0, 1.0000001]), np.zeros(4)]
    ws = [2, 3, 5]
    counted = FixedPointSpec.fit(clip=1.0, bits=64, max_weight=5, max_clients=3, count_clipped=True)
    plain = FixedPointSpec.fit(clip=1.0, bits=64, max_weight=5, max_clients=3)
    assert plain.extra_coordinates == 1 and counted.extra_coordinates == 2
    for spec in (counted, plain):
        total = sum(encode(x, spec, weight=w) for x, w in zip(xs, ws))
        assert total.size == 4 + spec.extra_coordinates
        decoded = decode(total, spec, 3)
        assert decoded.total_weight == 10
        assert decoded.clipped == (4 if spec.count_clipped else None)
        assert decoded.clipped_share == (4 / 12 if spec.count_clipped else None)
        expected = sum(w * np.clip(x, -1, 1) for x, w in zip(xs, ws)) / 10
        assert np.allclose(decode_weighted_mean(total, spec, 3), expected, atol=3 / spec.scale)
        weighted, w = decode_sum(total, spec, 3)
        assert w == 10 and weighted.size == 4


def test_a_count_that_could_wrap_is_refused():
    spec = FixedPointSpec.fit(
        clip=1.0, bits=32, max_weight=1, max_clients=40_000, count_clipped=True
    )
    with pytest.raises(ConfigError, match=r"n=40000 clients x d=60000"):
        encode(np.zeros(60_000), spec)


@pytest.mark.parametrize("s", [0.01, 0.05])
@pytest.mark.parametrize("k", [1, 10, 300, 3000, 20_000])
def test_clipped_share_bound_holds_for_adversarial_signals(k, s):
    """x spreads its norm L over k coordinates (|x_j| = L / sqrt(k): the worst shape for some
    range), z ~ N(0, s^2) (s = 0.05: the noise tail dominates). Over 20 draws of d = 20,000 coordinates the measured clipped share is
    below clipped_share_bound (+ 4.89 binomial sd: false alarm 1e-6). Catches dropping either
    the signal term or the noise tail."""
    d, big_l = 20_000, 3.0
    rng = np.random.default_rng(k)
    x = np.zeros(d)
    x[:k] = big_l / np.sqrt(k)
    for r in (0.02, 0.05, 0.1, 0.5):
        bound = clipped_share_bound(clip_range=r, signal_l2_bound=big_l, noise_std=s, dim=d)
        clipped = [np.mean(np.abs(x + rng.normal(0, s, d)) > r) for _ in range(20)]
        measured = float(np.mean(clipped))
        slack = 4.89 * np.sqrt(max(bound, 1 / d) * (1 - min(bound, 1)) / (20 * d))
        assert measured <= bound + slack, (k, r, measured, bound)


def test_clip_range_for_meets_the_target_and_pure_noise_is_exact():
    d, big_l, s = 66_005, 2.0, 0.004
    r = clip_range_for(signal_l2_bound=big_l, noise_std=s, dim=d, max_clipped_share=0.01)
    assert clipped_share_bound(clip_range=r, signal_l2_bound=big_l, noise_std=s, dim=d) <= 0.01
    assert (
        clipped_share_bound(clip_range=r * 0.99, signal_l2_bound=big_l, noise_std=s, dim=d) > 0.01
    )
    # No signal: the bound is the exact two-sided Gaussian tail.
    assert clipped_share_bound(clip_range=0.02, signal_l2_bound=0.0, noise_std=0.01, dim=5) == (
        pytest.approx(0.0455002638963584)
    )
    # No noise: at most L^2 / R^2 coordinates can exceed R.
    assert clipped_share_bound(clip_range=0.5, signal_l2_bound=1.0, noise_std=0.0, dim=100) == 0.04


def test_a_range_that_clips_too_much_is_refused_with_the_numbers():
    with pytest.raises(ConfigError) as err:
        check_clip_range(
            clip_range=0.01,
            signal_l2_bound=2.0,
            noise_std=0.004,
            dim=66_005,
            max_clipped_share=0.01,
        )
    msg = str(err.value)
    for part in ("clip_range=0.01", "d=66005", "L2 norm <= 2.0", "noise std 0.004", "1%"):
        assert part in msg, (part, msg)
    assert "a range of at least" in msg
    ok = check_clip_range(
        clip_range=1.0, signal_l2_bound=2.0, noise_std=0.004, dim=66_005, max_clipped_share=0.01
    )
    assert 0 <= ok <= 0.01
    for bad in (dict(dim=0), dict(noise_std=-1.0), dict(max_clipped_share=1.5)):
        kw = dict(
            clip_range=1.0, signal_l2_bound=2.0, noise_std=0.004, dim=10, max_clipped_share=0.01
        )
        with pytest.raises(ConfigError):
            check_clip_range(**(kw | bad))
