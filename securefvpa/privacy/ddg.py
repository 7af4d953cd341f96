"""Accounting of the distributed discrete Gaussian (DDG) mechanism under secure aggregation.

Mechanism accounted (one *round*; :mod:`securefvpa.secagg.ddg` implements it). A client runs one
DP-SGD step without local Gaussian noise: it Poisson-samples its units (rate ``q``), clips each
unit's gradient to L2 norm ``C``, rotates it (an orthogonal map fixed by a public per-round
seed), scales it by ``1 / gamma`` and rounds it to an integer vector ``r`` with the conditional
randomized rounding of Kairouz, Liu & Steinke 2021 (DDG, ICML, arXiv 2102.06387, Sec. 4), then
sends ``sum_units r + Z_client (mod 2^bits)`` through secure aggregation, ``Z_client`` ~
``N_Z(0, sigma^2)^dim`` (discrete Gaussian, Canonne, Kamath & Steinke 2020, "CKS20"). The server
learns only the ring sum over the survivors, which contains the noise shares of at least
``h = t - T`` honest clients (``t`` the threshold below which honest clients refuse to unmask,
``T`` the most clients colluding with the server, who may subtract their own shares). Adding more
independent noise is post-processing, so accounting with exactly ``h`` shares is conservative.

Contract (units never change meaning):

* ``clip`` ``C`` and ``gamma`` are in gradient (float) units; ``gamma`` is the float value of one
  ring level. ``local_sigma`` is the scale ``sigma`` of each share ``N_Z(0, sigma^2)`` (pmf
  proportional to ``exp(-x^2 / (2 sigma^2))`` on the integers) in ring *levels*; the float noise
  std of one share is ``gamma * local_sigma``. ``dim`` is the number of noised ring coordinates
  (the padded dimension). ``sample_rate`` is the Poisson rate of units; record ``1.0`` when the
  server can see which clients contributed (amplification by sampling is then not claimed).
* Sensitivity after rounding (levels): one rounded unit has ``||r||_2 <= D2 :=
  rounded_l2_bound(C / gamma, dim, beta)`` (enforced exactly by the encoder) and, being an integer
  vector, ``||r||_1 <= D1 := min(sqrt(dim) D2, D2^2)``. Adding/removing a unit shifts the sum by
  ``r`` (``add_remove_one``: ``(D2, D1)``); replacing one unit shifts it by ``r' - r``
  (``replace_one``: ``(2 D2, 2 D1)``). The rounding randomness is a mixture over shifts inside
  those balls; Rényi divergence is jointly quasi-convex (van Erven & Harremoës 2014, Thm. 13), so
  the worst shift bounds it.
* Unsampled RDP of the shift under the sum of ``h`` shares: DDG Prop. 14 / Eq. 17 (the bound the
  authors' code google-research/federated distributed_dp/accounting_utils.py evaluates), with
  ``s = sqrt(h) sigma`` and ``tau = 10 sum_{k=1}^{h-1} exp(-2 pi^2 sigma^2 k / (k + 1))``::

      eps(a) = min( a D2^2 / (2 s^2) + tau dim,
                    a/2 (D2^2 / s^2 + 2 D1 tau / s + tau^2 dim),
                    a/2 (D2 / s + tau sqrt(dim))^2 ).

  For ``h = 1`` (``tau = 0``) this is CKS20's bound for one multivariate discrete Gaussian. We
  require ``sigma >= 1`` level (covers the sum theorem's hypothesis on sigma; calibration never
  goes below it).
* Poisson subsampling (add/remove): Zhu & Wang 2019, "Poisson Subsampled Rényi Differential
  Privacy" (ICML), Thm. 6, the general upper bound for integer orders ``a >= 2``::

      (a-1) eps_q(a) <= log[ (1-q)^(a-1) (a q - q + 1) + C(a,2) q^2 (1-q)^(a-2) e^{eps(2)}
                             + 3 sum_{l=3}^{a} C(a,l) (1-q)^(a-l) q^l e^{(l-1) eps(l)} ],

  taken order by order as the minimum with the unsampled ``eps(a)`` (sampling cannot hurt: joint
  quasi-convexity again). Orders are the integers 2..256.
* ``replace_one`` with ``q < 1``: the weak triangle inequality over a removal and an addition
  (Mironov 2017, Prop. 11), as :mod:`securefvpa.privacy.rdp_replace` does for the Gaussian:
  ``D_a(P||Q) <= (a - 1/2)/(a - 1) D_2a(P||R) + D_{2a-1}(R||Q)`` with ``R`` the output without
  the unit. ``P||R`` is the *forward* direction ``D((1-q) A + q B || A)``, for which the binomial
  expansion of ``E_A[(1 - q + q B/A)^a]`` is exact for any ``B`` (Mironov, Talwar & Zhang 2019,
  Sec. 3): ``(a-1) D = log sum_l C(a,l) (1-q)^(a-l) q^l e^{(l-1) D_l(B||A)}``, monotone in each
  ``D_l <= eps(l)`` (:func:`poisson_forward_rdp`); ``R||Q`` is the reverse direction, bounded by
  Zhu & Wang above. Minimum with the unsampled curve at sensitivity ``(2 D2, 2 D1)``. (Using Zhu &
  Wang for both terms costs ~50 % more noise at epsilon 8, q 0.1, 150 rounds.)
* Composition over rounds adds RDP curves order by order; (epsilon, delta) by dp-accounting's
  ``compute_epsilon`` (Canonne, Kamath & Steinke 2020, Prop. 12 conversion).

Why not dp-accounting's discrete-Gaussian PLD. ``pld.from_discrete_gaussian_mechanism`` is one
*scalar* discrete Gaussian with an *integer* sensitivity. Here (i) the noise is a sum of ``h``
discrete Gaussians, which is not a discrete Gaussian (its privacy loss has no closed form; the
``tau`` term is DDG's bound on the difference), and (ii) the query is a ``dim``-dimensional integer
vector whose worst case is a *ball* of integer shifts of L2 radius ``D2``: unlike the continuous
Gaussian the lattice is not rotation invariant, so the multivariate loss does not reduce to one 1-D
mechanism with sensitivity ``D2`` (the loss of a shift ``v`` is the sum of ``dim`` coordinate
losses and the worst ``v`` is not a single coordinate in general). The library remains the oracle
where it applies: for ``h = 1, dim = 1`` and an integer shift our epsilon is checked to upper
bound its PLD epsilon (``tests/privacy/test_ddg_accounting.py``).

Group privacy (per user from per pair): an (eps, delta)-DP guarantee for groups of ``k`` units
gives ``(k eps, k e^{(k-1) eps} delta)`` (the standard conversion, e.g. Vadhan 2017, "The
Complexity of Differential Privacy", Sec. 2.2). It is a *bound*, loose for large ``k eps``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np
from dp_accounting.rdp import rdp_privacy_accountant as rdp_lib
from scipy import special

from securefvpa.errors import AccountingError
from securefvpa.privacy.events import DpSgdEvent, canonical_json, check_client_id, check_relation

DEFAULT_ORDERS: tuple[int, ...] = tuple(range(2, 257))
MIN_LOCAL_SIGMA = 1.0
MAX_LOCAL_SIGMA = 1e12
_LOG3 = math.log(3.0)


def _real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AccountingError(f"{name} must be a real number. Found {value!r}.")
    out = float(value)
    if not math.isfinite(out):
        raise AccountingError(f"{name} must be finite. Found {value!r}.")
    return out


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or int(value) < 1:
        raise AccountingError(f"{name} must be an integer >= 1. Found {value!r}.")
    return int(value)


def _check_orders(orders: Sequence[int]) -> tuple[int, ...]:
    out = tuple(int(a) for a in orders)
    if not out or any(a < 2 or a != o for a, o in zip(out, orders)):
        raise AccountingError(f"RDP orders must be integers >= 2. Found {tuple(orders)!r}.")
    return out


def rounded_l2_bound(*, l2_norm: float, dim: int, beta: float) -> float:
    """L2 norm bound of a conditionally randomized-rounded vector, in levels.

    ``l2_norm`` is the norm bound of the scaled input (``C / gamma``, levels), ``dim`` the number of
    rounded coordinates, ``beta`` in [0, 1) the conditional-rounding parameter (0: unconditional
    rounding). DDG (Kairouz, Liu & Steinke 2021), Thm. 1 / Sec. 4: any randomized rounding moves
    each coordinate by < 1, so ``||r|| < c + sqrt(d)``; and ``||r||^2 <= c^2 + d/4 +
    sqrt(2 ln(1/beta)) (c + sqrt(d)/2)`` with probability >= 1 - beta (Hoeffding on
    ``sum_j r_j^2``), which conditional rounding enforces by resampling. Returns the minimum.
    Raises :class:`AccountingError` for a bad argument.
    """
    c = _real("l2_norm", l2_norm)
    b = _real("beta", beta)
    d = _positive_int("dim", dim)
    if c < 0.0:
        raise AccountingError(f"l2_norm must be >= 0. Found {l2_norm!r}.")
    if not 0.0 <= b < 1.0:
        raise AccountingError(f"beta must be in [0, 1). Found {beta!r}.")
    sqrt_d = math.sqrt(d)
    bound = c + sqrt_d
    if b > 0.0:
        squared = c * c + 0.25 * d + math.sqrt(2.0 * math.log(1.0 / b)) * (c + 0.5 * sqrt_d)
        bound = min(bound, math.sqrt(squared))
    return bound


def rounded_l1_bound(*, rounded_l2: float, dim: int) -> float:
    """L1 bound of an integer vector of L2 norm <= ``rounded_l2`` in ``dim`` coordinates.

    ``||r||_1 <= sqrt(d) ||r||_2`` (Cauchy-Schwarz) and, for integers, ``|r_j| <= r_j^2`` so
    ``||r||_1 <= ||r||_2^2``.
    """
    l2 = _real("rounded_l2", rounded_l2)
    d = _positive_int("dim", dim)
    return l2 * min(math.sqrt(d), l2)


def sum_tau(*, local_sigma: float, shares: int) -> float:
    """DDG's ``tau = 10 sum_{k=1}^{h-1} exp(-2 pi^2 sigma^2 k / (k + 1))`` (0 for one share)."""
    s = _real("local_sigma", local_sigma)
    h = _positive_int("shares", shares)
    if h == 1:
        return 0.0
    k = np.arange(1, h, dtype=np.float64)
    return float(10.0 * np.sum(np.exp(-2.0 * math.pi**2 * s * s * k / (k + 1.0))))


def discrete_gaussian_sum_rdp(
    *,
    orders: Sequence[int],
    l2_sensitivity: float,
    l1_sensitivity: float,
    local_sigma: float,
    shares: int,
    dim: int,
) -> np.ndarray:
    """Unsampled RDP curve of ``x -> x + sum of h shares N_Z(0, sigma^2)^dim`` (DDG Prop. 14).

    Sensitivities and ``local_sigma`` in levels; returns one value per order (nats).
    """
    a = np.asarray(_check_orders(orders), dtype=np.float64)
    d2 = _real("l2_sensitivity", l2_sensitivity)
    d1 = _real("l1_sensitivity", l1_sensitivity)
    sigma = _real("local_sigma", local_sigma)
    if sigma < MIN_LOCAL_SIGMA:
        raise AccountingError(
            f"local_sigma must be >= {MIN_LOCAL_SIGMA} level (DDG's sum bound). Found {sigma!r}."
        )
    h = _positive_int("shares", shares)
    d = _positive_int("dim", dim)
    tau = sum_tau(local_sigma=sigma, shares=h)
    s = math.sqrt(h) * sigma
    term1 = a * d2 * d2 / (2.0 * s * s) + tau * d
    term2 = a / 2.0 * (d2 * d2 / (s * s) + 2.0 * d1 * tau / s + tau * tau * d)
    term3 = a / 2.0 * (d2 / s + tau * math.sqrt(d)) ** 2
    return np.minimum(np.minimum(term1, term2), term3)


def _zhu_wang(base: np.ndarray, q: float, orders: np.ndarray, coeff: float = 3.0) -> np.ndarray:
    """Zhu & Wang 2019 Thm. 6 for integer ``orders``; ``base[l - 2]`` is the curve at order ``l``.

    ``coeff`` (3 in the theorem) multiplies the terms l >= 3; 1 gives the expression that is exact
    for the Gaussian (used by a test against dp-accounting to check the algebra).
    """
    alphas = orders.astype(np.float64)[:, None]
    ls = np.arange(2, 2 + base.size, dtype=np.float64)[None, :]
    log_q, log_1mq = math.log(q), math.log1p(-q)
    log_comb = (
        special.gammaln(alphas + 1)
        - special.gammaln(ls + 1)
        - special.gammaln(np.maximum(alphas - ls, 0.0) + 1)
    )
    terms = log_comb + ls * log_q + (alphas - ls) * log_1mq + (ls - 1.0) * base[None, :]
    terms = terms + np.where(ls >= 3, math.log(coeff), 0.0)
    terms = np.where(ls <= alphas, terms, -np.inf)
    head = (alphas[:, 0] - 1.0) * log_1mq + np.log(alphas[:, 0] * q - q + 1.0)
    log_moment = special.logsumexp(np.concatenate([head[:, None], terms], axis=1), axis=1)
    return log_moment / (alphas[:, 0] - 1.0)


def poisson_subsampled_rdp(
    *, base_rdp: np.ndarray, sample_rate: float, orders: Sequence[int]
) -> np.ndarray:
    """RDP over ``orders`` of the Poisson-subsampled mechanism (add/remove one unit).

    ``base_rdp[l - 2]`` is the unsampled mechanism's RDP at order ``l`` for every integer
    ``2 <= l <= max(orders)``. Zhu & Wang 2019, Thm. 6, minimum with the unsampled curve.
    """
    ords = np.asarray(_check_orders(orders), dtype=np.int64)
    q = _real("sample_rate", sample_rate)
    if not 0.0 < q <= 1.0:
        raise AccountingError(f"sample_rate must be in (0, 1]. Found {sample_rate!r}.")
    base = np.asarray(base_rdp, dtype=np.float64)
    if base.ndim != 1 or base.size < int(ords.max()) - 1:
        raise AccountingError(
            f"base_rdp must cover every order 2..{int(ords.max())}. Found shape {base.shape}."
        )
    unsampled = base[ords - 2]
    if q == 1.0:
        return unsampled.copy()
    return np.minimum(_zhu_wang(base[: int(ords.max()) - 1], q, ords), unsampled)


def poisson_forward_rdp(
    *, base_rdp: np.ndarray, sample_rate: float, orders: Sequence[int]
) -> np.ndarray:
    """``D_a((1-q) A + q B || A)`` bound over ``orders`` (the removal direction only).

    Exact binomial expansion (module docstring) with ``D_l(B||A) <= base_rdp[l - 2]``; minimum
    with the unsampled curve. NOT a bound on the other direction (use
    :func:`poisson_subsampled_rdp` for add/remove).
    """
    ords = np.asarray(_check_orders(orders), dtype=np.int64)
    q = _real("sample_rate", sample_rate)
    if not 0.0 < q <= 1.0:
        raise AccountingError(f"sample_rate must be in (0, 1]. Found {sample_rate!r}.")
    base = np.asarray(base_rdp, dtype=np.float64)
    if base.ndim != 1 or base.size < int(ords.max()) - 1:
        raise AccountingError(
            f"base_rdp must cover every order 2..{int(ords.max())}. Found shape {base.shape}."
        )
    unsampled = base[ords - 2]
    if q == 1.0:
        return unsampled.copy()
    return np.minimum(_zhu_wang(base[: int(ords.max()) - 1], q, ords, coeff=1.0), unsampled)


@dataclass(frozen=True)
class DdgRound:
    """The privacy parameters of one distributed round of one client (see module contract).

    Validated at construction; every error names the bad value.
    """

    sample_rate: float  # q: Poisson rate of units (1.0 when the server sees who contributed)
    clip: float  # C: L2 clip norm of one unit's gradient (float units)
    gamma: float  # float value of one ring level
    beta: float  # conditional-rounding parameter in [0, 1)
    dim: int  # noised ring coordinates (padded dimension)
    local_sigma: float  # sigma of each client's share N_Z(0, sigma^2), in levels
    honest_shares: int  # h = t - T: honest shares any completed round contains
    relation: str = "replace_one"

    def __post_init__(self) -> None:
        q = _real("sample_rate", self.sample_rate)
        if not 0.0 < q <= 1.0:
            raise AccountingError(f"sample_rate must be in (0, 1]. Found {self.sample_rate!r}.")
        clip = _real("clip", self.clip)
        if clip <= 0.0:
            raise AccountingError(f"clip must be > 0. Found {self.clip!r}.")
        gamma = _real("gamma", self.gamma)
        if gamma <= 0.0:
            raise AccountingError(f"gamma must be > 0. Found {self.gamma!r}.")
        beta = _real("beta", self.beta)
        if not 0.0 <= beta < 1.0:
            raise AccountingError(f"beta must be in [0, 1). Found {self.beta!r}.")
        _positive_int("dim", self.dim)
        sigma = _real("local_sigma", self.local_sigma)
        if not MIN_LOCAL_SIGMA <= sigma <= MAX_LOCAL_SIGMA:
            raise AccountingError(
                f"local_sigma must be in [{MIN_LOCAL_SIGMA}, {MAX_LOCAL_SIGMA:g}] levels. "
                f"Found {self.local_sigma!r}."
            )
        _positive_int("honest_shares", self.honest_shares)
        check_relation(self.relation)
        if not math.isfinite(clip / gamma):
            raise AccountingError(f"clip / gamma must be finite. Found {clip} / {gamma}.")
        for name, value in (
            ("sample_rate", q),
            ("clip", clip),
            ("gamma", gamma),
            ("beta", beta),
            ("local_sigma", sigma),
        ):
            object.__setattr__(self, name, value)
        object.__setattr__(self, "dim", int(self.dim))
        object.__setattr__(self, "honest_shares", int(self.honest_shares))

    @property
    def unit_l2_bound(self) -> float:
        """``D2``: L2 bound of one rounded unit, in levels."""
        return rounded_l2_bound(l2_norm=self.clip / self.gamma, dim=self.dim, beta=self.beta)

    @property
    def sensitivities(self) -> tuple[float, float]:
        """(L2, L1) sensitivity of the integer sum in levels under ``relation``."""
        d2 = self.unit_l2_bound
        d1 = rounded_l1_bound(rounded_l2=d2, dim=self.dim)
        factor = 2.0 if self.relation == "replace_one" else 1.0
        return factor * d2, factor * d1

    @property
    def central_noise_multiplier(self) -> float:
        """``sqrt(h) sigma gamma / C``: the honest noise std over the clip norm (for reports)."""
        return math.sqrt(self.honest_shares) * self.local_sigma * self.gamma / self.clip


def _unsampled(r: DdgRound, orders: Sequence[int], factor: float) -> np.ndarray:
    d2 = r.unit_l2_bound
    d1 = rounded_l1_bound(rounded_l2=d2, dim=r.dim)
    return discrete_gaussian_sum_rdp(
        orders=orders,
        l2_sensitivity=factor * d2,
        l1_sensitivity=factor * d1,
        local_sigma=r.local_sigma,
        shares=r.honest_shares,
        dim=r.dim,
    )


@functools.lru_cache(maxsize=4096)
def _round_rdp_cached(r: DdgRound, orders: tuple[int, ...]) -> np.ndarray:
    max_order = max(orders)
    if r.relation == "add_remove_one":
        base = _unsampled(r, range(2, max_order + 1), 1.0)
        out = poisson_subsampled_rdp(base_rdp=base, sample_rate=r.sample_rate, orders=orders)
    else:
        a = np.asarray(orders, dtype=np.float64)
        unsampled = _unsampled(r, orders, 2.0)
        if r.sample_rate == 1.0:
            out = unsampled
        else:
            base = _unsampled(r, range(2, 2 * max_order + 1), 1.0)
            wide = range(2, 2 * max_order + 1)
            forward = poisson_forward_rdp(base_rdp=base, sample_rate=r.sample_rate, orders=wide)
            both = poisson_subsampled_rdp(base_rdp=base, sample_rate=r.sample_rate, orders=wide)
            ords = np.asarray(orders, dtype=np.int64)
            triangle = (a - 0.5) / (a - 1.0) * forward[2 * ords - 2] + both[2 * ords - 3]
            out = np.minimum(triangle, unsampled)
    out = np.asarray(out, dtype=np.float64)
    out.setflags(write=False)
    return out


def round_rdp(r: DdgRound, *, orders: Sequence[int] = DEFAULT_ORDERS) -> np.ndarray:
    """RDP curve (nats, one value per order) of one distributed round; read-only, cached."""
    if not isinstance(r, DdgRound):
        raise AccountingError(f"round must be a DdgRound. Found {r!r}.")
    return _round_rdp_cached(r, _check_orders(orders))


def rdp(rounds: Iterable[DdgRound], *, orders: Sequence[int] = DEFAULT_ORDERS) -> np.ndarray:
    """Sum of the rounds' RDP curves (adaptive composition, order by order)."""
    ords = _check_orders(orders)
    total = np.zeros(len(ords), dtype=np.float64)
    for r in rounds:
        total = total + round_rdp(r, orders=ords)
    return total


def _check_delta(delta: object) -> float:
    d = _real("delta", delta)
    if not 0.0 < d < 1.0:
        raise AccountingError(f"delta must be in (0, 1). Found {delta!r}.")
    return d


def epsilon(
    rounds: Iterable[DdgRound], *, delta: float, orders: Sequence[int] = DEFAULT_ORDERS
) -> float:
    """Epsilon at ``delta`` after composing ``rounds`` (0.0 for none), via dp-accounting."""
    dlt = _check_delta(delta)
    ords = _check_orders(orders)
    curve = rdp(list(rounds), orders=ords)
    if not np.any(curve):
        return 0.0
    eps, _ = rdp_lib.compute_epsilon(list(ords), list(curve), dlt)
    eps = float(eps)
    if math.isnan(eps) or eps < 0.0:
        raise AccountingError(f"DDG accountant returned an invalid epsilon {eps!r}.")
    return eps


def calibrate_local_sigma(
    *,
    target_epsilon: float,
    delta: float,
    rounds: int,
    sample_rate: float,
    clip: float,
    gamma: float,
    beta: float,
    dim: int,
    honest_shares: int,
    relation: str = "replace_one",
    orders: Sequence[int] = DEFAULT_ORDERS,
    rel_tol: float = 1e-4,
) -> float:
    """Smallest ``local_sigma`` (levels, within ``rel_tol``) whose ``rounds`` identical rounds
    satisfy (target_epsilon, delta)-DP; at least :data:`MIN_LOCAL_SIGMA`.

    Epsilon is non-increasing in sigma (every term of the bound is), so bisection on log sigma
    returns a sigma with epsilon <= target (re-checked). Raises :class:`AccountingError` for bad
    arguments or a target unreachable with sigma <= 1e12 levels.
    """
    target = _real("target_epsilon", target_epsilon)
    if target <= 0.0:
        raise AccountingError(f"target_epsilon must be > 0. Found {target_epsilon!r}.")
    dlt = _check_delta(delta)
    k = _positive_int("rounds", rounds)
    tol = _real("rel_tol", rel_tol)
    if not 0.0 < tol < 0.5:
        raise AccountingError(f"rel_tol must be in (0, 0.5). Found {rel_tol!r}.")
    ords = _check_orders(orders)

    def make(sigma: float) -> DdgRound:
        return DdgRound(
            sample_rate=sample_rate,
            clip=clip,
            gamma=gamma,
            beta=beta,
            dim=dim,
            local_sigma=sigma,
            honest_shares=honest_shares,
            relation=relation,
        )

    def eps_at(sigma: float) -> float:
        curve = k * round_rdp(make(sigma), orders=ords)
        return float(rdp_lib.compute_epsilon(list(ords), list(curve), dlt)[0])

    lo = MIN_LOCAL_SIGMA
    if eps_at(lo) <= target:
        return lo
    hi = 2.0 * lo
    while eps_at(hi) > target:
        if hi >= MAX_LOCAL_SIGMA:
            raise AccountingError(
                f"target_epsilon={target} at delta={dlt} is unreachable with local_sigma <= "
                f"{MAX_LOCAL_SIGMA:g} levels (rounds={k}, sample_rate={sample_rate}, "
                f"clip={clip}, gamma={gamma}, dim={dim}, honest_shares={honest_shares})."
            )
        lo, hi = hi, min(2.0 * hi, MAX_LOCAL_SIGMA)
    while hi / lo > 1.0 + tol:
        mid = math.sqrt(lo * hi)
        if eps_at(mid) > target:
            lo = mid
        else:
            hi = mid
    return hi


@dataclass(frozen=True)
class GroupBound:
    """A group-privacy bound: ``(epsilon, delta)`` for a group of ``group_size`` units."""

    epsilon: float
    delta: float
    group_size: int
    unit_delta: float  # the per-unit delta the bound was derived from


def group_privacy(*, epsilon: float, delta: float, group_size: int) -> tuple[float, float]:
    """``(k eps, k e^{(k-1) eps} delta)``: group privacy of an (eps, delta)-DP mechanism for
    groups of ``k`` units (Vadhan 2017, Sec. 2.2). A bound; ``delta`` may exceed 1 (vacuous)."""
    eps = _real("epsilon", epsilon)
    if eps < 0.0:
        raise AccountingError(f"epsilon must be >= 0. Found {epsilon!r}.")
    dlt = _real("delta", delta)
    if not 0.0 <= dlt < 1.0:
        raise AccountingError(f"delta must be in [0, 1). Found {delta!r}.")
    k = _positive_int("group_size", group_size)
    log_delta = math.log(k) + (k - 1) * eps + math.log(dlt) if dlt > 0.0 else -math.inf
    return k * eps, (math.exp(log_delta) if log_delta < 700.0 else math.inf)


def group_epsilon(
    rounds: Sequence[DdgRound],
    *,
    delta: float,
    group_size: int,
    orders: Sequence[int] = DEFAULT_ORDERS,
) -> GroupBound:
    """Per-group (e.g. per-user) epsilon bound at ``delta`` from the per-unit RDP of ``rounds``.

    Finds a per-unit ``delta'`` with ``k e^{(k-1) eps(delta')} delta' <= delta`` (fixed-point
    iteration, at most 50 steps) and returns ``k eps(delta')``; ``epsilon = inf`` when no such
    ``delta'`` exists in (1e-300, delta]. Labelled a bound in every report.
    """
    dlt = _check_delta(delta)
    k = _positive_int("group_size", group_size)
    rounds = list(rounds)
    if k == 1:
        return GroupBound(epsilon(rounds, delta=dlt, orders=orders), dlt, 1, dlt)
    ords = _check_orders(orders)
    curve = rdp(rounds, orders=ords)
    unit_delta = dlt / k
    for _ in range(50):
        eps = float(rdp_lib.compute_epsilon(list(ords), list(curve), unit_delta)[0])
        log_needed = math.log(dlt) - math.log(k) - (k - 1) * eps
        if log_needed < math.log(1e-300):
            return GroupBound(math.inf, dlt, k, 0.0)
        if math.log(unit_delta) <= log_needed + 1e-12:
            g_eps, g_delta = group_privacy(epsilon=eps, delta=unit_delta, group_size=k)
            if g_delta <= dlt * (1.0 + 1e-9):
                return GroupBound(g_eps, g_delta, k, unit_delta)
        unit_delta = math.exp(log_needed)
    return GroupBound(math.inf, dlt, k, 0.0)


def clear_caches() -> None:
    """Drop cached round curves (benchmarks measuring cold cost)."""
    _round_rdp_cached.cache_clear()


DDG_EVENT_KIND = "ddg"
DDG_EVENT_SCHEMA_VERSION = 1
UNITS = ("pair", "user")


@dataclass(frozen=True, kw_only=True)
class DdgEvent:
    """One distributed round of one client, as committed to its ledger (kind ``"ddg"``).

    The accounting fields are those of :class:`DdgRound` (``to_round``): epsilon is recomputed
    from the ledger alone. ``unit`` names the privacy unit (a pair, or a user's whole profile);
    ``threshold`` (t), ``max_colluding`` (T), ``bits`` and ``block_size`` are recorded for the
    report (``honest_shares = t - T`` is what the accounting uses). Keyword-only; canonical JSON
    with :data:`DDG_EVENT_SCHEMA_VERSION` is what the ledger hashes.
    """

    client_id: str
    round: int
    attempt: int = 1
    unit: str = "pair"
    relation: str = "replace_one"
    sample_rate: float
    clip: float
    gamma: float
    beta: float
    dim: int
    local_sigma: float
    honest_shares: int
    threshold: int
    max_colluding: int
    bits: int
    block_size: int

    def __post_init__(self) -> None:
        check_client_id(self.client_id)
        for name in ("round", "max_colluding"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise AccountingError(f"{name} must be an integer >= 0. Found {value!r}.")
        for name in ("attempt", "threshold", "bits", "block_size"):
            _positive_int(name, getattr(self, name))
        if self.unit not in UNITS:
            raise AccountingError(f"unit must be one of {list(UNITS)}. Found {self.unit!r}.")
        if self.threshold - self.max_colluding != self.honest_shares:
            raise AccountingError(
                f"honest_shares must be threshold - max_colluding = "
                f"{self.threshold} - {self.max_colluding}. Found {self.honest_shares!r}."
            )
        r = self.to_round()  # validates the accounting fields, naming the bad value
        for name in ("sample_rate", "clip", "gamma", "beta", "local_sigma"):
            object.__setattr__(self, name, getattr(r, name))

    def to_round(self) -> DdgRound:
        return DdgRound(
            sample_rate=self.sample_rate,
            clip=self.clip,
            gamma=self.gamma,
            beta=self.beta,
            dim=self.dim,
            local_sigma=self.local_sigma,
            honest_shares=self.honest_shares,
            relation=self.relation,
        )

    def to_payload(self) -> dict[str, object]:
        return asdict(self) | {"schema_version": DDG_EVENT_SCHEMA_VERSION}

    def to_json(self) -> str:
        return canonical_json(self.to_payload())

    @classmethod
    def from_payload(cls, payload: object) -> DdgEvent:
        if not isinstance(payload, dict):
            raise AccountingError(f"ddg event payload must be a JSON object. Found {payload!r}.")
        if payload.get("schema_version") != DDG_EVENT_SCHEMA_VERSION:
            raise AccountingError(
                f"ddg event schema_version must be {DDG_EVENT_SCHEMA_VERSION}. "
                f"Found {payload.get('schema_version')!r}."
            )
        names = {f.name for f in fields(cls)}
        if set(payload) != names | {"schema_version"}:
            raise AccountingError(
                f"ddg event payload keys must be {sorted(names | {'schema_version'})}. "
                f"Found {sorted(payload)}."
            )
        return cls(**{k: payload[k] for k in names})


# A privacy-spending event of the ledger: a round of local DP-SGD or a distributed round.
PrivacyEvent = DpSgdEvent | DdgEvent
