"""The distributed discrete Gaussian in the ring (securefvpa.secagg.ddg).

Statistical tests use deterministic byte streams (reproducible) and state the false-alarm rate
they would have on fresh randomness: each rejects at p < 1e-6 (or a 4.89-sigma two-sided bound).
The OpenDP comparison uses OpenDP's own CSPRNG (fresh randomness, false alarm 1e-6 per sigma).
"""

from __future__ import annotations

import math
from fractions import Fraction

import mpmath
import numpy as np
import pytest
from scipy import stats

from securefvpa.errors import ConfigError, ModelError
from securefvpa.privacy import ddg as accounting
from securefvpa.secagg import ddg

from .conftest import DeterministicBytes

Z6 = 4.89  # two-sided normal quantile for a 1e-6 false-alarm rate
BETA = math.exp(-0.5)
SEED = bytes(range(32))


def exact_pmf(sigma: float, ys: np.ndarray) -> np.ndarray:
    k = np.arange(-int(40 * sigma) - 40, int(40 * sigma) + 41)
    z = np.exp(-(k.astype(float) ** 2) / (2 * sigma**2)).sum()
    return np.exp(-(ys.astype(float) ** 2) / (2 * sigma**2)) / z


def _bins(sigma: float, n: int, min_expected: float = 40.0) -> list[tuple[int, int]]:
    """Consecutive integer ranges with >= min_expected expected counts (tails merged)."""
    k = int(12 * sigma) + 5
    ys = np.arange(-k, k + 1)
    expected = n * exact_pmf(sigma, ys)
    bins, start, acc = [], -k, 0.0
    for y, e in zip(ys, expected):
        acc += e
        if acc >= min_expected:
            bins.append((start, int(y)))
            start, acc = int(y) + 1, 0.0
    bins[-1] = (bins[-1][0], k)
    return bins


def _binned(samples: np.ndarray, bins: list[tuple[int, int]]) -> np.ndarray:
    edges = np.array([b[0] for b in bins[1:]])
    return np.bincount(np.searchsorted(edges, samples, side="right"), minlength=len(bins))


def gof_pvalue(samples: np.ndarray, sigma: float) -> float:
    bins = _bins(sigma, samples.size)
    observed = _binned(samples, bins)
    k = int(12 * sigma) + 5
    pmf = exact_pmf(sigma, np.arange(-k, k + 1))
    expected = np.array([pmf[a + k : b + k + 1].sum() for a, b in bins])
    expected = expected / expected.sum() * samples.size
    return float(stats.chisquare(observed, expected).pvalue)


# --- the sampler -------------------------------------------------------------------------------


@pytest.mark.parametrize("sigma", [0.5, 1.0, 3.7, 40.0, 1234.5])
def test_sampler_matches_the_exact_pmf(sigma):
    """Chi-square goodness of fit to pmf ∝ exp(-y^2/(2 sigma^2)), 2e5 draws, rejects at p<1e-6.
    Catches: no "-0" rejection (double mass at 0), sigma vs sigma^2 in the acceptance test, an
    off-by-one geometric, a biased sign."""
    samples = ddg.sample_discrete_gaussian(
        200_000, sigma=sigma, random_bytes=DeterministicBytes(f"dg{sigma}")
    )
    assert samples.dtype == np.int64 and samples.shape == (200_000,)
    assert gof_pvalue(samples, sigma) > 1e-6


def test_sampler_matches_opendp():
    """Two-sample chi-square homogeneity against OpenDP's exact sampler (opendp 0.16
    ``then_gaussian`` on integers), 2e4 draws each, false alarm 1e-6 per sigma."""
    dp = pytest.importorskip("opendp.prelude")
    dp.enable_features("contrib")
    for sigma in (1.0, 3.7, 25.0):
        meas = (dp.vector_domain(dp.atom_domain(T=int)), dp.l2_distance(T=int)) >> (
            dp.m.then_gaussian(scale=sigma)
        )
        theirs = np.array(meas([0] * 20_000), dtype=np.int64)
        ours = ddg.sample_discrete_gaussian(20_000, sigma=sigma)
        bins = _bins(sigma, 20_000, min_expected=20.0)
        table = np.vstack([_binned(ours, bins), _binned(theirs, bins)])
        assert stats.chi2_contingency(table).pvalue > 1e-6, sigma


def test_exact_fallback_path_is_exact(monkeypatch):
    """With the float margin widened to 2^-3, ~1/4 of the comparisons take the exact (rational)
    path; the distribution must still be exact (GoF p > 1e-6) and the path must have run."""
    monkeypatch.setattr(ddg, "_MARGIN", 2.0**-3)  # exact path for ~1/4 of comparisons
    calls = []
    original = ddg._exact_candidate

    def counting(*args):
        calls.append(1)
        return original(*args)

    monkeypatch.setattr(ddg, "_exact_candidate", counting)
    for sigma in (1.5, 6.0):
        samples = ddg.sample_discrete_gaussian(
            20_000, sigma=sigma, random_bytes=DeterministicBytes(f"fb{sigma}")
        )
        assert gof_pvalue(samples, sigma) > 1e-6
    assert len(calls) > 5_000


def test_exact_comparisons_agree_with_high_precision_truth():
    """The exact path itself (a GoF test cannot see errors that merely reject candidates): for
    U's 53-bit prefixes far from and ON the boundary exp(-x) (the latter forces refinement),
    ``_below_exp`` answers what the refined U says against mpmath at 300 digits, and
    ``_exact_geometric`` returns v with exp(-(v+1)) <= U < exp(-v)."""
    mpmath.mp.dps = 300
    stream = DeterministicBytes("exact-path")
    for i in range(300):
        x = Fraction(int.from_bytes(stream(4), "big") % 50_000 + 1, 997 + i)
        boundary = int(mpmath.floor(mpmath.exp(-mpmath.mpf(x.numerator) / x.denominator) * 2**53))
        for j in (boundary, max(boundary - 3, 0), boundary + 3):
            u = ddg._LazyUniform(j, 53, stream)
            answer = ddg._below_exp(u, x)
            e = mpmath.exp(-mpmath.mpf(x.numerator) / x.denominator)
            lo, hi = mpmath.mpf(u.num) / 2**u.bits, mpmath.mpf(u.num + 1) / 2**u.bits
            assert (hi <= e) if answer else (lo >= e), (x, j, answer)
            if j == boundary:
                assert u.bits > 53  # the boundary case needed more bits
        u = ddg._LazyUniform(int.from_bytes(stream(7), "big") >> 3, 53, stream)
        v = ddg._exact_geometric(u, guess=int.from_bytes(stream(1), "big") % 40)
        lo, hi = mpmath.mpf(u.num) / 2**u.bits, mpmath.mpf(u.num + 1) / 2**u.bits
        assert mpmath.exp(-(v + 1)) <= lo and hi <= mpmath.exp(-v)


def test_exp_brackets_are_rigorous_and_tight():
    """The exact path's rational brackets contain exp(-x) (mpmath, 120 digits) and are narrower
    than 2^-prec, for x with huge denominators (as from sigma^2 = Fraction(float)^2)."""
    mpmath.mp.dps = 120
    stream = DeterministicBytes("brackets")
    for i in range(60):
        num = int.from_bytes(stream(8), "big") % (60 << 52)
        x = Fraction(num, 1 << 52) + Fraction(1, 3 + i)
        for prec in (60, 200):
            lo, hi, scale = ddg._exp_neg_bracket(x, prec)
            truth = mpmath.exp(-mpmath.mpf(x.numerator) / x.denominator)
            assert mpmath.mpf(lo) / 2**scale <= truth <= mpmath.mpf(hi) / 2**scale
            assert Fraction(hi - lo, 1 << scale) <= Fraction(1, 1 << prec)
    lo, hi, scale = ddg._exp_neg_bracket(Fraction(10**6, 7), 100)  # far tail: [0, 2^-5909]
    assert lo == 0 and Fraction(hi, 1 << scale) >= Fraction(1, 1 << 5909)


def test_float_fast_path_error_is_far_inside_the_margin():
    """The fast path assumes float64 exp(-x) within 2^-44 relative over the arguments it meets
    (x <= 40): checked against mpmath on 2e4 arguments (the margin is 2^-32)."""
    mpmath.mp.dps = 40
    xs = np.concatenate([np.linspace(0, 40, 10_000), np.geomspace(1e-9, 40, 10_000)])
    got = np.exp(-xs)
    worst = max(
        abs(float(mpmath.mpf(float(g)) / mpmath.exp(-mpmath.mpf(float(x))) - 1))
        for x, g in zip(xs[::7], got[::7])
    )
    assert worst < 2.0**-44


def test_sum_of_shares_has_the_configured_variance():
    """n = 7 shares of N_Z(0, 3.3^2) per coordinate, 3e5 coordinates: the sample variance of the
    sum is 7 Var[N_Z(0, 3.3^2)] (exact, from the pmf) within 4.89 sd of the sample-variance
    estimator (false alarm 1e-6), and the mean is 0 within 4.89 sd. Catches a wrong sigma (5 %),
    a missing share, or a biased share."""
    n, sigma, m = 7, 3.3, 300_000
    ys = np.arange(-200, 201)
    var_one = float((ys.astype(float) ** 2 * exact_pmf(sigma, ys)).sum())
    total = sum(
        ddg.sample_discrete_gaussian(m, sigma=sigma, random_bytes=DeterministicBytes(f"v{i}"))
        for i in range(n)
    )
    v = n * var_one
    assert abs(total.var(ddof=1) / v - 1) <= Z6 * math.sqrt(2 / (m - 1))
    assert abs(total.mean()) <= Z6 * math.sqrt(v / m)


def test_sampler_rejects_bad_arguments():
    for sigma in (0.0, -1.0, float("inf"), float("nan"), 2.0**41, "1"):
        with pytest.raises(ConfigError, match="sigma"):
            ddg.sample_discrete_gaussian(3, sigma=sigma)
    for count in (-1, 2.5, True):
        with pytest.raises(ConfigError, match="count"):
            ddg.sample_discrete_gaussian(count, sigma=1.0)
    assert ddg.sample_discrete_gaussian(0, sigma=1.0).shape == (0,)


# --- rotation ----------------------------------------------------------------------------------


def test_rotation_is_orthogonal_blockwise_and_inverted():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 1024))
    y = ddg.rotate(x, seed=SEED, block_size=256)
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), np.linalg.norm(x, axis=1), rtol=1e-12)
    np.testing.assert_allclose(ddg.unrotate(y, seed=SEED, block_size=256), x, atol=1e-12)
    e = np.zeros(1024)
    e[300] = 1.0
    flat = ddg.rotate(e, seed=SEED, block_size=256)
    assert np.allclose(np.abs(flat[256:512]), 1 / 16) and not flat[:256].any()
    assert not np.allclose(y, ddg.rotate(x, seed=bytes(32), block_size=256))  # seed matters
    np.testing.assert_allclose(np.abs(ddg.rotate(x, seed=SEED, block_size=1)), np.abs(x))
    with pytest.raises(ConfigError, match="block_size"):
        ddg.rotate(x, seed=SEED, block_size=48)
    with pytest.raises(ConfigError, match="seed"):
        ddg.rotate(x, seed=b"short", block_size=256)
    assert ddg.padded_dim(66_005, 4096) == 69_632


# --- rounding and sensitivity --------------------------------------------------------------------


def test_one_unit_moves_the_sum_by_at_most_the_rounded_bound():
    """Per-unit rounding: each unit's contribution r to the integer sum (quantize_units of that
    unit alone) has sum r_j^2 <= floor(D2^2) and ||r||_1 <= min(sqrt(d) D2, D2^2) exactly, for
    adversarial units of norm exactly C (all coordinates at half a level: unconditional rounding
    exceeds the conditional bound with probability ~2.3 % per unit), one-hot units, random
    directions and units of norm 10 C (clipped first); hence a replacement moves it by <= 2 D2.
    These are the sensitivities the accountant uses. Catches skipping the conditional check,
    skipping the clip, or a float norm check."""
    d, c_levels = 1024, 16.0
    spec = ddg.DdgSpec(dim=d, clip=1.0, gamma=1.0 / c_levels, local_sigma=1.0, block_size=1)
    bound = spec.unit_l2_bound
    assert spec.unit_l2_bound_sq == 544 and bound == pytest.approx(math.sqrt(544))
    l1_bound = accounting.rounded_l1_bound(rounded_l2=bound, dim=d)
    rnd = spec.privacy_round(sample_rate=0.1, honest_shares=5, relation="replace_one")
    assert rnd.sensitivities == pytest.approx((2 * bound, 2 * l1_bound))
    rng = np.random.default_rng(1)
    half = np.full(d, 0.5 / c_levels) * np.where(rng.random(d) < 0.5, -1, 1)
    one_hot = np.zeros(d)
    one_hot[7] = 1.0
    units = [half] * 400 + [one_hot] * 20
    units += [v / np.linalg.norm(v) for v in rng.normal(size=(40, d))]
    units += [10 * v / np.linalg.norm(v) for v in rng.normal(size=(40, d))]
    stream = DeterministicBytes("units")
    contributions = []
    for u in units:
        r = ddg.quantize_units(u[None, :], spec=spec, rotation_seed=SEED, random_bytes=stream)
        assert int(r @ r) <= spec.unit_l2_bound_sq
        assert np.abs(r).sum() <= l1_bound
        contributions.append(r)
    worst = max(float(np.linalg.norm(a - b)) for a, b in zip(contributions[:-1], contributions[1:]))
    assert worst <= 2 * bound
    # The sum over units is the sum of per-unit contributions (nothing else enters).
    both = ddg.quantize_units(np.stack([one_hot, one_hot]), spec=spec, rotation_seed=SEED)
    assert np.array_equal(both, 2 * contributions[400])


def test_rounding_of_rotated_units_respects_the_bound():
    spec = ddg.DdgSpec(dim=3000, clip=2.0, gamma=2.0**-3, local_sigma=1.0, block_size=1024)
    rng = np.random.default_rng(2)
    stream = DeterministicBytes("rot")
    for _ in range(30):
        g = rng.normal(size=(1, 3000))
        g *= 2.0 / np.linalg.norm(g)
        r = ddg.quantize_units(g, spec=spec, rotation_seed=SEED, random_bytes=stream)
        assert int(r @ r) <= spec.unit_l2_bound_sq


def test_conditional_rounding_refuses_an_unbounded_row():
    with pytest.raises(ModelError, match="conditional rounding failed"):
        ddg.conditional_round(np.full((1, 100), 0.5), bound_sq=10)


# --- end to end ----------------------------------------------------------------------------------


def _clients(rng: np.random.Generator, sizes: list[int], d: int) -> list[np.ndarray]:
    out = []
    for b in sizes:
        g = rng.normal(size=(b, d))
        g *= rng.uniform(0, 2, size=(b, 1)) / np.maximum(np.linalg.norm(g, axis=1), 1e-12)[:, None]
        out.append(g)
    return out


def test_distributed_sum_with_vanishing_noise_equals_the_plaintext_sum():
    """4 clients (0, 3, 7, 12 units of norm up to 2C, clipped to C), sigma = 1 level at gamma =
    2^-12: decode(ring sum) equals sum of clipped units within the deterministic quantization
    bound gamma (N sqrt(p) + 1.5 sqrt(n p)) (N units, n noise shares, p ring coordinates), and
    within 2x its typical size gamma sqrt(p (N/4 + n)). Catches a wrong inverse rotation, a
    missing 1/gamma, biased (floor) rounding, a missing clip or noise at the wrong scale."""
    d, sizes = 3000, [0, 3, 7, 12]
    spec = ddg.DdgSpec(dim=d, clip=1.0, gamma=2.0**-12, local_sigma=1.0, block_size=1024)
    rng = np.random.default_rng(3)
    units = _clients(rng, sizes, d)
    total = np.zeros(spec.padded_dim, dtype=np.uint32)
    for i, u in enumerate(units):
        ring = ddg.encode(
            u, spec=spec, rotation_seed=SEED, random_bytes=DeterministicBytes(f"c{i}")
        )
        assert ring.dtype == np.uint32 and ring.shape == (spec.padded_dim,)
        total += ring
    decoded = ddg.decode(total, spec=spec, rotation_seed=SEED)
    clipped = [
        u * np.minimum(1.0, 1.0 / np.maximum(np.linalg.norm(u, axis=1), 1e-300))[:, None]
        for u in units
    ]
    plain = sum(c.sum(axis=0) for c in clipped)
    err = float(np.linalg.norm(decoded - plain))
    n_units, n, p = sum(sizes), len(sizes), spec.padded_dim
    assert err <= spec.gamma * (n_units * math.sqrt(p) + 1.5 * math.sqrt(n * p))
    assert err <= 2 * spec.gamma * math.sqrt(p * (n_units / 4 + n))


def test_wrap_rate_stays_below_the_bound_under_worst_case_inputs():
    """Worst case without rotation: every unit is C e_1 (all signal on one coordinate), 5 clients
    x 4 units, 5 noise shares. gamma is chosen so that the bound is ~0.05 (not a power of two, so
    the test sits near the edge); over 3000 rounds of encode/sum/decode the measured wrap rate
    (a decoded coordinate off by 2^32 levels) is <= 0.05 and wraps do occur. With rotation
    (block 64), the same check at the bound choose_gamma certifies at 0.05."""
    c_levels_unit, n_units, shares = 10_000_000.0, 20, 5
    level = 2.0**31
    d2 = accounting.rounded_l2_bound(l2_norm=c_levels_unit, dim=1, beta=BETA)
    # choose sigma so that 2 exp(-(L - N D2)^2 / (2 m sigma^2)) = 0.05
    sigma = (level - n_units * d2) / math.sqrt(2 * shares * math.log(2 / 0.05))
    spec = ddg.DdgSpec(dim=1, clip=1.0, gamma=1.0 / c_levels_unit, local_sigma=sigma, block_size=1)
    bound = ddg.wrap_probability_bound(spec=spec, max_units=n_units, max_shares=shares)
    assert bound == pytest.approx(0.05, rel=1e-6)
    unit = np.ones((n_units // shares, 1))
    wraps, rounds = 0, 3000
    stream = DeterministicBytes("wrap")
    for _ in range(rounds):
        total = np.zeros(1, dtype=np.uint32)
        for _ in range(shares):
            total += ddg.encode(unit, spec=spec, rotation_seed=SEED, random_bytes=stream)
        decoded = ddg.decode(total, spec=spec, rotation_seed=SEED)
        wraps += int(abs(decoded[0] - n_units) > 2.0**31 * spec.gamma)
    assert 0 < wraps <= bound * rounds

    gamma = ddg.choose_gamma(
        clip=1.0, local_std=1e-3, dim=64, max_units=8, max_shares=4, wrap_bound=0.05,
        block_size=64,
    )  # fmt: skip
    rot = ddg.DdgSpec(dim=64, clip=1.0, gamma=gamma, local_sigma=1e-3 / gamma, block_size=64)
    assert ddg.wrap_probability_bound(spec=rot, max_units=8, max_shares=4) <= 0.05
    coarse = ddg.DdgSpec(dim=64, clip=1.0, gamma=gamma / 2, local_sigma=2e-3 / gamma, block_size=64)
    assert ddg.wrap_probability_bound(spec=coarse, max_units=8, max_shares=4) > 0.05
    flat = np.full((2, 64), 1 / 8)  # norm C: the rotated coordinates are as large as they get
    wraps = 0
    for _ in range(300):
        seed = stream(32)  # a fresh public rotation per round
        total = np.zeros(64, dtype=np.uint32)
        exact = np.zeros(64, dtype=np.int64)
        for _ in range(4):
            q = ddg.quantize_units(flat, spec=rot, rotation_seed=seed, random_bytes=stream)
            q = q + ddg.noise_share(rot, random_bytes=stream)
            exact += q
            total += ddg.to_ring(q, 32)
        wraps += int(np.any(total.view(np.int32).astype(np.int64) != exact))
    assert wraps <= 0.05 * 300


def test_colluders_removing_their_noise_leave_at_least_sigma():
    """t = 8 survivors, T = 3 colluders who add no noise (equivalently: subtract their own shares
    with the server). sigma_loc is calibrated for h = t - T = 5 honest shares; the reference is the
    noise a single trusted party would need for the same epsilon (calibration with h = 1). The
    residual noise of the decoded sum (ring sum minus every client's exact integer signal) has
    std >= that reference (measured on 10 rounds x 2048 coordinates, 4.89-sd slack). Catches
    sizing shares for t (or n) instead of t - T."""
    t, colluders, dim = 8, 3, 2048
    kw = dict(
        target_epsilon=4.0, delta=1e-5, rounds=100, sample_rate=0.05, clip=1.0, gamma=2.0**-10,
        beta=BETA, dim=dim, relation="replace_one",
    )  # fmt: skip
    sigma = accounting.calibrate_local_sigma(honest_shares=t - colluders, **kw)
    reference = accounting.calibrate_local_sigma(honest_shares=1, **kw)
    spec = ddg.DdgSpec(dim=dim, clip=1.0, gamma=2.0**-10, local_sigma=sigma, block_size=1024)
    rng = np.random.default_rng(4)
    residuals = []
    for rnd in range(10):
        seed = bytes([rnd]) * 32
        total = np.zeros(dim, dtype=np.uint32)
        signal = np.zeros(dim, dtype=np.int64)
        for client in range(t):
            stream = DeterministicBytes(f"col{rnd}/{client}")
            q = ddg.quantize_units(
                _clients(rng, [3], dim)[0], spec=spec, rotation_seed=seed, random_bytes=stream
            )
            signal += q
            honest = client >= colluders
            share = ddg.noise_share(spec, random_bytes=stream) if honest else 0
            total += ddg.to_ring(q + share, 32)
        residuals.append(total.view(np.int32).astype(np.int64) - signal)
    res = np.concatenate(residuals).astype(float)
    measured = res.std(ddof=1)
    assert measured >= reference * (1 - Z6 * math.sqrt(1 / (2 * (res.size - 1))))
    assert measured == pytest.approx(math.sqrt(t - colluders) * sigma, rel=0.03)


@pytest.mark.parametrize(
    "bits,eps,figure_mse", [(12, 4.0, 4.43e-4), (14, 2.0, 5.81e-4), (18, 3.0, 2.38e-4)]
)
def test_reproduces_the_ddg_dme_figure_end_to_end(bits, eps, figure_mse):
    """DDG paper's distributed mean estimation figure (n = 1000, d = 250, c = 10, k = 2; see
    tests/privacy/test_ddg_accounting.py for the source and how values were read): our encoder
    and decoder, at the authors' gamma and integer noise ceil(sigma/gamma) from our accountant,
    give the figure's MSE within 15 % (3 repetitions: the MSE estimate's relative sd is ~5 %)."""
    from tests.privacy.test_ddg_accounting import dme_gamma, dme_sigma_levels

    gamma = dme_gamma(bits, eps)
    sigma = math.ceil(dme_sigma_levels(eps, gamma) - 1e-9)
    spec = ddg.DdgSpec(dim=250, clip=10.0, gamma=gamma, local_sigma=sigma, block_size=256)
    rng = np.random.default_rng(5)
    mses = []
    for rep in range(3):
        x = rng.normal(size=(1000, 250))
        x *= 10.0 / np.linalg.norm(x, axis=1, keepdims=True)
        stream = DeterministicBytes(f"dme{bits}/{rep}")
        signal = ddg.quantize_units(x, spec=spec, rotation_seed=SEED, random_bytes=stream)
        noise = ddg.sample_discrete_gaussian(
            1000 * spec.padded_dim, sigma=sigma, random_bytes=stream
        ).reshape(1000, -1)
        ring = ddg.to_ring(signal + noise.sum(axis=0), 32)
        mean = ddg.decode(ring, spec=spec, rotation_seed=SEED) / 1000
        mses.append(float(np.mean((mean - x.mean(axis=0)) ** 2)))
    assert float(np.mean(mses)) == pytest.approx(figure_mse, rel=0.15)


def test_plan_is_consistent_and_gamma_is_the_finest_that_fits():
    p = ddg.plan(
        target_epsilon=8.0, delta=1e-5, rounds=50, sample_rate=0.1, clip=1.0, dim=5000,
        threshold=20, max_colluding=4, max_shares=30, max_units=30 * 16, wrap_bound=1e-6,
        block_size=1024,
    )  # fmt: skip
    assert p.honest_shares == 16
    assert math.log2(p.spec.gamma).is_integer()
    rnd = p.spec.privacy_round(sample_rate=0.1, honest_shares=16)
    assert p.epsilon == accounting.epsilon([rnd] * 50, delta=1e-5) <= 8.0
    assert p.wrap_bound == ddg.wrap_probability_bound(spec=p.spec, max_units=480, max_shares=30)
    assert p.wrap_bound <= 1e-6 and p.bits_needed <= 32
    finer_sigma = accounting.calibrate_local_sigma(
        target_epsilon=8.0, delta=1e-5, rounds=50, sample_rate=0.1, clip=1.0,
        gamma=p.spec.gamma / 2, beta=BETA, dim=p.spec.padded_dim, honest_shares=16,
    )  # fmt: skip
    finer = ddg.DdgSpec(
        dim=5000, clip=1.0, gamma=p.spec.gamma / 2, local_sigma=finer_sigma, block_size=1024
    )
    assert ddg.wrap_probability_bound(spec=finer, max_units=480, max_shares=30) > 1e-6
    with pytest.raises(ConfigError, match="t - T"):
        ddg.plan(
            target_epsilon=8.0, delta=1e-5, rounds=5, sample_rate=0.1, clip=1.0, dim=10,
            threshold=3, max_colluding=3, max_shares=3, max_units=3,
        )  # fmt: skip


def test_client_without_sampled_units_sends_only_its_share():
    spec = ddg.DdgSpec(dim=100, clip=1.0, gamma=2.0**-8, local_sigma=50.0, block_size=128)
    ring = ddg.encode(np.zeros((0, 100)), spec=spec, rotation_seed=SEED)
    values = ring.view(np.int32).astype(float)
    assert 30 < values.std() < 70  # the share, N_Z(0, 50^2), nothing else


def test_bad_inputs_are_refused_with_the_value():
    spec = ddg.DdgSpec(dim=10, clip=1.0, gamma=0.01, local_sigma=2.0, block_size=8)
    with pytest.raises(ModelError, match=r"\[B, 10\]"):
        ddg.encode(np.zeros(10), spec=spec, rotation_seed=SEED)
    bad = np.zeros((2, 10))
    bad[1, 3] = np.nan
    with pytest.raises(ModelError, match="unit gradient 1 .* index 3"):
        ddg.encode(bad, spec=spec, rotation_seed=SEED)
    with pytest.raises(ConfigError, match="uint32"):
        ddg.decode(np.zeros(16, dtype=np.uint64), spec=spec, rotation_seed=SEED)
    for kw in (
        dict(local_sigma=0.5),
        dict(gamma=0.0),
        dict(clip=float("inf")),
        dict(beta=1.0),
        dict(bits=16),
        dict(block_size=12),
        dict(gamma=1e-12),
    ):
        args = dict(dim=10, clip=1.0, gamma=0.01, local_sigma=2.0, block_size=8) | kw
        with pytest.raises(ConfigError):
            ddg.DdgSpec(**args)
    with pytest.raises(ConfigError, match="wrap_bound"):
        ddg.aggregate_bits(spec=spec, max_units=1, max_shares=1, wrap_bound=2.0)
