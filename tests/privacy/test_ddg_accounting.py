"""Accounting of the distributed discrete Gaussian (securefvpa.privacy.ddg).

Oracles: dp-accounting (exact Poisson-subsampled Gaussian RDP, discrete-Gaussian PLD), exact
Rényi divergences of sums of discrete Gaussians (log-domain convolution, cross-checked against
mpmath at 40 digits), and the distributed-mean-estimation figure of Kairouz, Liu & Steinke 2021
(see :func:`test_reproduces_the_ddg_dme_figure`).
"""

from __future__ import annotations

import math

import dp_accounting
import mpmath
import numpy as np
import pytest
from dp_accounting.pld import privacy_loss_distribution as pld_lib
from dp_accounting.rdp import rdp_privacy_accountant as rdp_lib
from scipy.special import logsumexp

from securefvpa.errors import AccountingError
from securefvpa.privacy import ddg
from securefvpa.privacy.events import neighboring_relation

BETA = math.exp(-0.5)


def make(**kw) -> ddg.DdgRound:
    base = dict(
        sample_rate=0.05,
        clip=1.0,
        gamma=2.0**-10,
        beta=BETA,
        dim=4096,
        local_sigma=200.0,
        honest_shares=20,
        relation="add_remove_one",
    )
    base.update(kw)
    return ddg.DdgRound(**base)


# --- Zhu & Wang subsampling -----------------------------------------------------------------


@pytest.mark.parametrize("q,sigma", [(0.01, 1.1), (0.1, 2.0), (0.3, 0.8)])
def test_zhu_wang_algebra_matches_dp_accounting_for_the_gaussian(q, sigma):
    """With the terms l >= 3 weighted 1 instead of 3, Zhu & Wang's expression is the exact
    sampled-Gaussian moment (Mironov, Talwar & Zhang 2019) that dp-accounting evaluates: equal to
    1e-9. With the theorem's weight 3 it is an upper bound (never below the library)."""
    orders = np.arange(2, 65)
    base = np.arange(2, 65) / (2 * sigma**2)
    acc = rdp_lib.RdpAccountant([float(a) for a in orders])
    acc.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)))
    tight = ddg._zhu_wang(base, q, orders, coeff=1.0)
    np.testing.assert_allclose(tight, acc.rdp, rtol=1e-9, atol=1e-14)
    general = ddg.poisson_subsampled_rdp(base_rdp=base, sample_rate=q, orders=orders)
    assert np.all(general >= acc.rdp * (1 - 1e-12))
    assert np.all(general <= base + 1e-12)  # never above the unsampled curve


def test_subsampling_matches_a_direct_transcription_of_zhu_wang_theorem_6():
    """Oracle: Zhu & Wang 2019 Thm. 6 written out term by term with exact binomials in mpmath
    (50 digits), for an arbitrary base curve; the vectorised version agrees to 1e-10. Catches the
    weight 3 on l >= 3 becoming 1 (which would be unsound for general mechanisms) or an index
    shift."""
    mpmath.mp.dps = 50
    base = 0.3 * np.arange(2, 41) ** 1.2 + 0.05  # any increasing RDP curve
    for q, a in [(0.07, a) for a in (2, 3, 5, 17, 40)] + [(0.7, 3), (0.9, 8)]:
        _check_zhu_wang_order(base, q, a)


def _check_zhu_wang_order(base: np.ndarray, q: float, a: int) -> None:
    ours = ddg.poisson_subsampled_rdp(base_rdp=base, sample_rate=q, orders=range(2, 41))
    qq = mpmath.mpf(q)
    total = (1 - qq) ** (a - 1) * (a * qq - qq + 1)
    total += mpmath.binomial(a, 2) * qq**2 * (1 - qq) ** (a - 2) * mpmath.e ** base[0]
    for ell in range(3, a + 1):
        total += (
            3 * mpmath.binomial(a, ell) * (1 - qq) ** (a - ell) * qq**ell
            * mpmath.e ** ((ell - 1) * base[ell - 2])
        )  # fmt: skip
    expected = min(float(mpmath.log(total) / (a - 1)), base[a - 2])
    assert ours[a - 2] == pytest.approx(expected, rel=1e-10), (q, a)
    if (q, a) in ((0.7, 3), (0.9, 8)):  # here the unsampled curve is smaller: the minimum matters
        assert expected == base[a - 2]


def test_subsampled_bounds_are_above_the_exact_gaussian_accountants():
    """Soundness sanity where the truth is known: our subsampling constructions applied to the
    continuous Gaussian's curve a / (2 z^2) are never below dp-accounting's PLD epsilon for the
    Poisson-sampled Gaussian, under add/remove and (via the weak triangle) replace-one."""
    orders = np.array(ddg.DEFAULT_ORDERS)
    a = orders.astype(float)
    wide = np.arange(2, 2 * int(orders.max()) + 1)
    for q, z, steps in [(0.1, 2.3, 150), (0.3, 4.0, 20)]:
        base = wide / (2 * z * z)
        rho = ddg.poisson_subsampled_rdp(base_rdp=base, sample_rate=q, orders=wide)
        fwd = ddg.poisson_forward_rdp(base_rdp=base, sample_rate=q, orders=wide)
        curves = {
            "add_remove_one": rho[orders - 2],
            "replace_one": np.minimum(
                (a - 0.5) / (a - 1) * fwd[2 * orders - 2] + rho[2 * orders - 3],
                4 * orders / (2 * z * z),
            ),
        }
        for relation, curve in curves.items():
            ours = rdp_lib.compute_epsilon(list(orders), list(steps * curve), 1e-5)[0]
            acc = dp_accounting.pld.PLDAccountant(neighboring_relation(relation))
            acc.compose(
                dp_accounting.SelfComposedDpEvent(
                    dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), steps
                )
            )
            assert ours >= acc.get_epsilon(1e-5), (q, z, relation)


def test_subsampled_discrete_gaussian_is_above_the_library_pld():
    """h = 1, dim = 1, integer sensitivity, q < 1, add/remove: dp-accounting has this exact
    mechanism (Poisson-sampled discrete Gaussian PLD); our epsilon is an upper bound of it."""
    for sigma, q, steps in [(4.0, 0.1, 50), (10.0, 0.02, 300)]:
        pld = pld_lib.from_discrete_gaussian_mechanism(
            sigma, sensitivity=1, sampling_prob=q, value_discretization_interval=1e-4
        ).self_compose(steps)
        curve = ddg.poisson_subsampled_rdp(
            base_rdp=ddg.discrete_gaussian_sum_rdp(
                orders=range(2, 257), l2_sensitivity=1, l1_sensitivity=1, local_sigma=sigma,
                shares=1, dim=1,
            ),
            sample_rate=q,
            orders=ddg.DEFAULT_ORDERS,
        )  # fmt: skip
        ours = rdp_lib.compute_epsilon(list(ddg.DEFAULT_ORDERS), list(steps * curve), 1e-5)[0]
        assert pld.get_epsilon_for_delta(1e-5) <= ours, (sigma, q)


# --- the sum-of-discrete-Gaussians bound ----------------------------------------------------


def _exact_renyi(sigma: float, shares: int, shift: int, alpha: int, k: int = 30) -> float:
    """D_alpha(X || X + shift), X a sum of ``shares`` i.i.d. N_Z(0, sigma^2) (truncated at |y|<=k
    per share, mass outside < e^-400), by log-domain convolution."""
    ys = np.arange(-k, k + 1)
    lp = -(ys.astype(float) ** 2) / (2 * sigma**2)
    lp -= logsumexp(lp)
    ld = lp.copy()
    for _ in range(shares - 1):
        new = np.full(ld.size + lp.size - 1, -np.inf)
        for i, v in enumerate(ld):
            new[i : i + lp.size] = np.logaddexp(new[i : i + lp.size], v + lp)
        ld = new
    p, q = ld[shift:], ld[: ld.size - shift]
    return float(logsumexp(alpha * p + (1 - alpha) * q) / (alpha - 1))


def _mpmath_renyi(sigma: float, shares: int, shift: int, alpha: int, k: int = 30) -> float:
    mpmath.mp.dps = 40
    s2 = mpmath.mpf(sigma) ** 2
    w = {y: mpmath.e ** (-(mpmath.mpf(y) ** 2) / (2 * s2)) for y in range(-k, k + 1)}
    z = mpmath.fsum(w.values())
    one = {y: v / z for y, v in w.items()}
    dist = dict(one)
    for _ in range(shares - 1):
        new: dict = {}
        for a, pa in dist.items():
            for b, pb in one.items():
                new[a + b] = new.get(a + b, 0) + pa * pb
        dist = new
    total = mpmath.fsum(
        dist[x] ** alpha * dist[x - shift] ** (1 - alpha) for x in dist if x - shift in dist
    )
    return float(mpmath.log(total) / (alpha - 1))


def test_two_exact_renyi_divergences_match_mpmath_and_sit_under_the_bound():
    """Two exact numbers, computed independently at 40 digits with mpmath (convolution of exact
    discrete-Gaussian pmfs): D_8(X||X+1) = 2.0000001467586042 for X a sum of 2 N_Z(0, 1), and
    D_4(X||X+2) = 2.6666666911456332 for a sum of 3. Both lie ABOVE the continuous-Gaussian value
    a D^2 / (2 h sigma^2) (2 and 8/3) and below DDG's bound (which adds tau ~ 5e-4): the bound is
    not the Gaussian's, and it holds. Catches dropping tau, or sqrt(h) vs h in the scale."""
    assert _mpmath_renyi(1.0, 2, 1, 8) == pytest.approx(2.0000001467586042, rel=1e-14)
    assert _mpmath_renyi(1.0, 3, 2, 4) == pytest.approx(2.6666666911456332, rel=1e-14)
    for sigma, h, shift, alpha, exact in [
        (1.0, 2, 1, 8, 2.0000001467586042),
        (1.0, 3, 2, 4, 2.6666666911456332),
    ]:
        assert _exact_renyi(sigma, h, shift, alpha) == pytest.approx(exact, rel=1e-13)
        gauss = alpha * shift**2 / (2 * h * sigma**2)
        assert exact > gauss + 1e-8
        bound = ddg.discrete_gaussian_sum_rdp(
            orders=[alpha],
            l2_sensitivity=shift,
            l1_sensitivity=shift,
            local_sigma=sigma,
            shares=h,
            dim=1,
        )[0]
        assert exact <= bound


@pytest.mark.parametrize("sigma", [1.0, 1.3, 2.0])
@pytest.mark.parametrize("shares", [1, 2, 4])
def test_bound_is_above_the_exact_renyi_divergence_of_sums(sigma, shares):
    for shift in (1, 3):
        for alpha in (2, 5, 16):
            exact = _exact_renyi(sigma, shares, shift, alpha, k=40)
            bound = ddg.discrete_gaussian_sum_rdp(
                orders=[alpha],
                l2_sensitivity=shift,
                l1_sensitivity=shift,
                local_sigma=sigma,
                shares=shares,
                dim=1,
            )[0]
            assert exact <= bound * (1 + 1e-12), (sigma, shares, shift, alpha, exact, bound)


def test_one_share_one_coordinate_upper_bounds_the_library_discrete_gaussian_pld():
    """h = 1, dim = 1, integer sensitivity: exactly dp-accounting's discrete Gaussian mechanism.
    Our RDP epsilon must be >= its (tight) PLD epsilon and within 35 % of it (the RDP->DP
    conversion's usual slack) — an oracle where the library has the mechanism."""
    for sigma, sens in [(3.0, 1), (8.0, 2), (20.0, 5)]:
        pld = pld_lib.from_discrete_gaussian_mechanism(
            sigma, sensitivity=sens, value_discretization_interval=1e-4
        )
        exact = pld.get_epsilon_for_delta(1e-5)
        curve = ddg.discrete_gaussian_sum_rdp(
            orders=ddg.DEFAULT_ORDERS,
            l2_sensitivity=sens,
            l1_sensitivity=sens,
            local_sigma=sigma,
            shares=1,
            dim=1,
        )
        ours = rdp_lib.compute_epsilon(list(ddg.DEFAULT_ORDERS), list(curve), 1e-5)[0]
        assert exact <= ours <= 1.35 * exact, (sigma, sens, exact, ours)


@pytest.mark.parametrize("q,rounds", [(1.0, 20), (0.02, 200)])
def test_converges_to_the_continuous_gaussian_as_the_grid_refines(q, rounds):
    """DDG's qualitative claim (abstract; DME figure: curves approach the Gaussian as bits grow):
    at a fixed float noise std, DDG's epsilon decreases as gamma -> 0 to the epsilon of the same
    accounting applied to the continuous Gaussian's RDP a / (2 z^2), z = sqrt(h) sigma gamma / C.
    At q = 1 that is exactly dp-accounting's Gaussian; at q < 1 it is Zhu & Wang's general
    subsampling bound, which is above the exact sampled-Gaussian RDP (here by ~19 %: the price of
    a subsampling theorem valid for any mechanism)."""
    h, delta, z = 50, 1e-5, 1.0
    orders = ddg.DEFAULT_ORDERS
    acc = rdp_lib.RdpAccountant([float(a) for a in orders])
    acc.compose(
        dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), rounds
        )
    )
    exact_gauss = acc.get_epsilon(delta)
    base = np.arange(2, max(orders) + 1) / (2 * z * z)
    limit_curve = rounds * ddg.poisson_subsampled_rdp(base_rdp=base, sample_rate=q, orders=orders)
    limit = rdp_lib.compute_epsilon(list(orders), list(limit_curve), delta)[0]
    assert limit >= exact_gauss * (1 - 1e-12)
    if q == 1.0:
        assert limit == pytest.approx(exact_gauss, rel=1e-9)
    else:
        assert 1.1 < limit / exact_gauss < 1.3
    previous = math.inf
    for exponent in (4, 6, 8, 10, 14):
        gamma = 2.0**-exponent
        r = make(
            sample_rate=q,
            gamma=gamma,
            local_sigma=z / math.sqrt(h) / gamma,
            honest_shares=h,
            dim=1024,
        )
        eps = ddg.epsilon([r] * rounds, delta=delta)
        assert limit * (1 - 1e-9) <= eps <= previous
        previous = eps
    assert previous == pytest.approx(limit, rel=2e-3)


# --- the paper's figure ----------------------------------------------------------------------

# Kairouz, Liu & Steinke 2021, distributed mean estimation figure (n = 1000 clients, d = 250,
# k = 2; README of google-research/federated distributed_dp, images/dme-n1000-k2-linear.png at
# commit 94b2854, made by dme_run.py: c = 10, delta = 1e-5, beta = e^-0.5, q = 1, one step,
# gamma from get_ddgauss_gamma with k = 2 and the n^2 norm growth, padded d = 256, local noise
# ceil(sigma / gamma) levels). Values read from the PNG's pixels (log axis, 161 px per decade;
# reading error ~2 %). Their implementation rounds the noise scale up to an integer number of
# levels, so the B = 12 and B = 14 curves are staircases: MSE = gamma^2 (ceil(sigma/gamma)^2 +
# 1/6) / n (1/6 = mean variance of randomized rounding). The step index at each epsilon is a sharp
# test of the accountant: it must put sigma/gamma on the same side of every integer.
DME_N, DME_D, DME_C, DME_K = 1000, 256, 10.0, 2
DME_FIGURE = {
    12: {0.75: 5.68e-3, 1: 3.60e-3, 1.5: 1.59e-3, 2: 1.56e-3, 2.5: 1.47e-3, 3: 4.65e-4, 4: 4.43e-4,
         5: 4.36e-4, 6: 4.30e-4},
    14: {1: 1.92e-3, 1.5: 8.61e-4, 2: 5.81e-4, 2.5: 3.70e-4, 3: 3.70e-4, 4: 2.10e-4, 5: 2.15e-4,
         6: 9.44e-5},
    18: {1: 1.69e-3, 2: 4.46e-4, 3: 2.38e-4, 4: 1.36e-4, 5: 9.11e-5, 6: 7.20e-5},
}  # fmt: skip
DME_STEPS = {  # ceil(sigma / gamma) visible as plateaus: MSE ratios 16:9:4:1 (B=12), 16:9:4 (B=14)
    12: {0.75: 4, 1: 3, 1.5: 2, 2: 2, 2.5: 2, 3: 1, 4: 1, 5: 1, 6: 1},
    14: {2.5: 4, 3: 4, 4: 3, 5: 3, 6: 2},
}


def dme_sigma_levels(eps: float, gamma: float) -> float:
    return ddg.calibrate_local_sigma(
        target_epsilon=eps,
        delta=1e-5,
        rounds=1,
        sample_rate=1.0,
        clip=DME_C,
        gamma=gamma,
        beta=BETA,
        dim=DME_D,
        honest_shares=DME_N,
        relation="add_remove_one",
    )


def dme_gamma(bits: int, eps: float) -> float:
    """The authors' heuristic: 2^B gamma = 2k sqrt(c^2 n^2 / d + (gamma^2/4 + sigma^2) n)."""
    n, c, d, k = DME_N, DME_C, DME_D, DME_K
    gamma = 2 * k * math.sqrt(c * c * n * n / d) / 2**bits
    for _ in range(8):
        sigma = dme_sigma_levels(eps, gamma) * gamma
        gamma = 2 * k * math.sqrt(c * c * n * n / d + (gamma**2 / 4 + sigma**2) * n) / 2**bits
    return gamma


def test_reproduces_the_ddg_dme_figure():
    """Figure: DDG paper's distributed mean estimation (n=1000, d=250, k=2) — see DME_FIGURE.
    (1) B=12 and B=14: our calibrated sigma/gamma rounds up to the figure's step at every
    epsilon read (9 + 5 values), and the predicted MSE is within 12 % of the figure; (2) B=18
    (gamma ~ 0.0095, rounding negligible): sigma^2 / n within 10 % of the figure at 6 epsilons.
    tests/secagg/test_ddg.py runs the encoder end to end on the same setting."""
    for bits, steps in DME_STEPS.items():
        for eps, step in steps.items():
            gamma = dme_gamma(bits, eps)
            assert math.ceil(dme_sigma_levels(eps, gamma) - 1e-9) == step, (bits, eps)
    for bits in (12, 14):
        for eps, mse in DME_FIGURE[bits].items():
            gamma = dme_gamma(bits, eps)
            step = math.ceil(dme_sigma_levels(eps, gamma) - 1e-9)
            predicted = gamma**2 * (step**2 + 1 / 6) / DME_N
            assert predicted == pytest.approx(mse, rel=0.12), (bits, eps, predicted, mse)
    for eps, mse in DME_FIGURE[18].items():
        gamma = dme_gamma(18, eps)
        predicted = (dme_sigma_levels(eps, gamma) * gamma) ** 2 / DME_N
        assert predicted == pytest.approx(mse, rel=0.10), (eps, predicted, mse)


# --- relations, composition, calibration -----------------------------------------------------


def test_replace_one_at_q1_is_the_unsampled_bound_at_twice_the_sensitivity():
    r = make(sample_rate=1.0, relation="replace_one")
    d2, d1 = r.sensitivities
    assert d2 == pytest.approx(2 * r.unit_l2_bound)
    expected = ddg.discrete_gaussian_sum_rdp(
        orders=ddg.DEFAULT_ORDERS,
        l2_sensitivity=d2,
        l1_sensitivity=d1,
        local_sigma=r.local_sigma,
        shares=r.honest_shares,
        dim=r.dim,
    )
    np.testing.assert_allclose(ddg.round_rdp(r), expected, rtol=1e-12)
    # Replace-one never costs less than add/remove, and sampling never costs more than q = 1.
    for q in (0.01, 0.2, 1.0):
        rep = ddg.round_rdp(make(sample_rate=q, relation="replace_one"))
        add = ddg.round_rdp(make(sample_rate=q))
        assert np.all(rep >= add - 1e-12)
        assert np.all(rep <= ddg.round_rdp(make(sample_rate=1.0, relation="replace_one")) + 1e-12)


def test_replace_one_is_the_weak_triangle_of_forward_and_add_remove_curves():
    """eps_R(a) = min(unsampled at 2 D2, (a - 1/2)/(a - 1) fwd(2a) + rho(2a - 1)) with fwd the
    exact forward (removal) expansion and rho the two-sided add/remove curve. Catches using the
    forward expansion for the reverse direction (unsound) or swapping the orders."""
    r = make(sample_rate=0.05, relation="replace_one")
    orders = np.array(ddg.DEFAULT_ORDERS)
    wide = range(2, 2 * int(orders.max()) + 1)
    rho = ddg.round_rdp(make(sample_rate=0.05), orders=wide)
    base = ddg.round_rdp(make(sample_rate=1.0), orders=wide)
    fwd = ddg.poisson_forward_rdp(base_rdp=base, sample_rate=0.05, orders=wide)
    assert np.all(fwd <= rho + 1e-15) and np.any(fwd < rho * 0.99)
    triangle = (orders - 0.5) / (orders - 1) * fwd[2 * orders - 2] + rho[2 * orders - 3]
    np.testing.assert_allclose(
        ddg.round_rdp(r),
        np.minimum(triangle, ddg.round_rdp(make(sample_rate=1.0, relation="replace_one"))),
        rtol=1e-12,
    )


def test_composition_adds_curves_and_mixed_rounds_are_order_free():
    a = make(sample_rate=0.05, local_sigma=150.0)
    b = make(sample_rate=0.1, local_sigma=400.0, honest_shares=7)
    curve = ddg.rdp([a, b, a])
    np.testing.assert_allclose(curve, 2 * ddg.round_rdp(a) + ddg.round_rdp(b))
    eps = ddg.epsilon([a, b, a], delta=1e-6)
    assert eps == ddg.epsilon([b, a, a], delta=1e-6)
    assert eps == pytest.approx(
        rdp_lib.compute_epsilon(list(ddg.DEFAULT_ORDERS), list(curve), 1e-6)[0]
    )
    assert ddg.epsilon([a, a], delta=1e-6) < eps < ddg.epsilon([a, b, a, b], delta=1e-6)
    assert ddg.epsilon([], delta=1e-6) == 0.0


def test_more_honest_shares_more_privacy():
    eps = [
        ddg.epsilon([make(honest_shares=h, local_sigma=3.0)] * 10, delta=1e-5)
        for h in (1, 2, 8, 64)
    ]
    assert eps == sorted(eps, reverse=True) and eps[0] > eps[-1]


@pytest.mark.parametrize("relation", ["replace_one", "add_remove_one"])
def test_calibrated_sigma_meets_the_target_and_is_tight(relation):
    kw = dict(
        delta=1e-5,
        rounds=100,
        sample_rate=0.02,
        clip=1.0,
        gamma=2.0**-8,
        beta=BETA,
        dim=69632,
        honest_shares=30,
        relation=relation,
    )
    sigma = ddg.calibrate_local_sigma(target_epsilon=4.0, **kw)
    fields = {k: v for k, v in kw.items() if k not in ("delta", "rounds")}
    eps = ddg.epsilon([ddg.DdgRound(local_sigma=sigma, **fields)] * 100, delta=1e-5)
    loose = ddg.epsilon([ddg.DdgRound(local_sigma=sigma * 0.999, **fields)] * 100, delta=1e-5)
    assert eps <= 4.0 < loose
    coarse = {**kw, "gamma": 1.0, "dim": 4}  # one level per clip norm: sigma = 1 level suffices
    assert ddg.calibrate_local_sigma(target_epsilon=50.0, **coarse) == ddg.MIN_LOCAL_SIGMA
    with pytest.raises(AccountingError, match="target_epsilon"):
        ddg.calibrate_local_sigma(target_epsilon=0.0, **kw)


def test_group_privacy_is_the_standard_conversion():
    eps, delta = ddg.group_privacy(epsilon=0.5, delta=1e-7, group_size=4)
    assert eps == 2.0 and delta == pytest.approx(4 * math.exp(1.5) * 1e-7)
    rounds = [make(local_sigma=400.0)] * 50
    bound = ddg.group_epsilon(rounds, delta=1e-5, group_size=4)
    assert bound.delta <= 1e-5 * (1 + 1e-9)
    unit_eps = ddg.epsilon(rounds, delta=bound.unit_delta)
    assert bound.epsilon == pytest.approx(4 * unit_eps)
    assert bound.epsilon > 4 * ddg.epsilon(rounds, delta=1e-5)  # paid for with a smaller delta
    assert ddg.group_epsilon(rounds, delta=1e-5, group_size=1).epsilon == ddg.epsilon(
        rounds, delta=1e-5
    )
    weak = [make(local_sigma=1.0, sample_rate=1.0)] * 50
    assert ddg.group_epsilon(weak, delta=1e-5, group_size=16).epsilon == math.inf


@pytest.mark.parametrize(
    "field,value",
    [
        ("sample_rate", 0.0),
        ("sample_rate", 1.5),
        ("clip", -1.0),
        ("gamma", 0.0),
        ("beta", 1.0),
        ("dim", 0),
        ("local_sigma", 0.5),
        ("local_sigma", float("nan")),
        ("honest_shares", 0),
        ("honest_shares", 2.5),
        ("relation", "nope"),
    ],
)
def test_bad_round_fields_are_refused_with_their_value(field, value):
    with pytest.raises(AccountingError, match=field if field != "relation" else "relation"):
        make(**{field: value})


def test_bad_arguments_are_refused():
    with pytest.raises(AccountingError, match="delta"):
        ddg.epsilon([make()], delta=1.0)
    with pytest.raises(AccountingError, match="orders"):
        ddg.round_rdp(make(), orders=[1.5, 2])
    with pytest.raises(AccountingError, match="beta"):
        ddg.rounded_l2_bound(l2_norm=1.0, dim=4, beta=-0.1)
    with pytest.raises(AccountingError, match="base_rdp"):
        ddg.poisson_subsampled_rdp(base_rdp=np.ones(3), sample_rate=0.1, orders=[2, 10])


def test_rounded_norm_bound_formula():
    """DDG Thm. 1: min(c + sqrt(d), sqrt(c^2 + d/4 + sqrt(2 ln(1/beta)) (c + sqrt(d)/2)))."""
    c, d = 30.0, 1024
    assert ddg.rounded_l2_bound(l2_norm=c, dim=d, beta=0.0) == c + 32.0
    assert ddg.rounded_l2_bound(l2_norm=c, dim=d, beta=BETA) == pytest.approx(
        math.sqrt(c * c + 256 + 1.0 * (c + 16.0))
    )
    assert ddg.rounded_l1_bound(rounded_l2=5.0, dim=1024) == 25.0
    assert ddg.rounded_l1_bound(rounded_l2=50.0, dim=16) == 200.0
