"""What a PLD epsilon will cost before it is computed, and the discretization that bounds it.

dp-accounting's PLD of a Poisson-subsampled Gaussian is a dense array over the privacy-loss range
at spacing ``value_discretization_interval`` (connect-the-dots; Doroshenko et al. 2022), and
``steps``-fold self-composition is an FFT over the range the library's Chernoff bound keeps
(``dp_accounting.pld.common.compute_self_convolve_bounds``). Both grow like range / interval:
sigma = 1e-3 at the default 1e-4 asks for 5e9 points (38 GiB), 1e8 steps for an FFT of ~1e10
points, sigma = 0.01 over 10 steps for minutes and gigabytes.

:func:`estimate_pld_cost` predicts the number of points without allocating them: the loss range
of one step from the library's own ``connect_dots_bounds`` (no discretization), the composed
range from the library's Chernoff bound applied to the same PLD built at a coarse interval (a
few thousand points). :func:`choose_discretization` then keeps the requested interval when the
cost is within ``max_points`` and otherwise widens it (a coarser pessimistic PLD is still an
upper bound on epsilon, only a looser one) up to 0.1; beyond that the PLD is not computed and
the caller reports RDP alone. ``tests/privacy/test_pld_cost.py`` checks the estimate against
the arrays the library really builds.

Pure: dp-accounting and numpy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dp_accounting.pld import common
from dp_accounting.pld import privacy_loss_distribution as pld_lib
from dp_accounting.pld import privacy_loss_mechanism as plm

from securefvpa.errors import AccountingError
from securefvpa.privacy.accountant import DEFAULT_PLD_DISCRETIZATION, check_discretization
from securefvpa.privacy.events import RELATIONS

# Measured on one core (benchmarks/pld_cost.py, results in benchmarks/results/pld_cost.json):
# building the one-step PMF costs ~10-20 us per point (connect-the-dots evaluates the privacy
# loss at every point); composing and reading epsilon ~1 us and 64 bytes per composed point and
# PMF. 2.5e5 one-step and 2e6 composed points keep an answer within a few seconds and ~0.3 GB.
DEFAULT_MAX_POINTS = 2_000_000
DEFAULT_MAX_SINGLE_STEP_POINTS = 250_000
MAX_DISCRETIZATION = 0.1  # the coarsest interval check_discretization accepts
BYTES_PER_POINT = 64  # complex128 FFT in, power and out, float64 real part and roll
_COARSE_POINTS = 4_000
_TAIL_MASS = 1e-15  # dp-accounting's default tail_mass_truncation of self_compose
_LOG_MASS_TRUNCATION = -50  # dp-accounting's default for from_gaussian_mechanism


@dataclass(frozen=True)
class PldCost:
    """Predicted size of one epsilon computation at ``value_discretization_interval``.

    ``single_step_points``: points of the one-step PMF (per PMF; add/remove builds two);
    ``composed_points``: length of the FFT of the ``steps``-fold composition; ``bytes``: the
    peak estimate, ``BYTES_PER_POINT`` times the larger of the two.
    """

    value_discretization_interval: float
    single_step_points: int
    composed_points: int

    @property
    def points(self) -> int:
        return max(self.single_step_points, self.composed_points)

    @property
    def bytes(self) -> int:
        return self.points * BYTES_PER_POINT


def _adjacencies(relation: str) -> tuple[plm.AdjacencyType, ...]:
    if relation not in RELATIONS:
        raise AccountingError(f"relation must be one of {list(RELATIONS)}. Found {relation!r}.")
    if relation == "replace_one":
        return (plm.AdjacencyType.REPLACE,)
    return (plm.AdjacencyType.REMOVE, plm.AdjacencyType.ADD)


def _check(noise_multiplier: float, sample_rate: float, steps: int) -> None:
    if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
        raise AccountingError(f"noise_multiplier must be > 0. Found {noise_multiplier!r}.")
    if not 0.0 < sample_rate <= 1.0:
        raise AccountingError(f"sample_rate must be in (0, 1]. Found {sample_rate!r}.")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise AccountingError(f"steps must be an integer >= 1. Found {steps!r}.")


def estimate_pld_cost(
    *,
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    relation: str = "replace_one",
    value_discretization_interval: float = DEFAULT_PLD_DISCRETIZATION,
) -> PldCost:
    """Predict the PLD array sizes of ``steps`` Poisson-subsampled Gaussian steps (sensitivity
    1: ``noise_multiplier`` is noise std / clip) without building them. Takes milliseconds."""
    _check(noise_multiplier, sample_rate, steps)
    d = check_discretization(value_discretization_interval)
    single = 0
    loss_lo, loss_hi = math.inf, -math.inf
    for adj in _adjacencies(relation):
        loss = plm.GaussianPrivacyLoss(
            noise_multiplier,
            sensitivity=1,
            pessimistic_estimate=True,
            log_mass_truncation_bound=_LOG_MASS_TRUNCATION,
            sampling_prob=sample_rate,
            adjacency_type=adj,
        )
        b = loss.connect_dots_bounds()
        if b.epsilon_lower is None or b.epsilon_upper is None:  # pragma: no cover - library
            raise AccountingError("dp-accounting gave no loss bounds for the Gaussian mechanism")
        single = max(single, math.ceil(b.epsilon_upper / d) - math.floor(b.epsilon_lower / d) + 1)
        loss_lo, loss_hi = min(loss_lo, b.epsilon_lower), max(loss_hi, b.epsilon_upper)
    if steps == 1:
        return PldCost(d, single, single)
    # The composed range: the library's own Chernoff bound on a coarse copy of the same PLD.
    coarse = max(d, (loss_hi - loss_lo) / _COARSE_POINTS, 1e-12)
    pld = pld_lib.from_gaussian_mechanism(
        standard_deviation=noise_multiplier,
        value_discretization_interval=coarse,
        sampling_prob=sample_rate,
        neighboring_relation=(
            pld_lib.NeighborRel.REPLACE_ONE
            if relation == "replace_one"
            else pld_lib.NeighborRel.ADD_OR_REMOVE_ONE
        ),
    )
    width = 0.0
    for pmf in {id(p): p for p in (pld._pmf_remove, pld._pmf_add)}.values():  # noqa: SLF001
        probs = pmf.to_dense_pmf()._probs  # noqa: SLF001 - the array self_compose convolves
        lo, hi = common.compute_self_convolve_bounds(probs, steps, _TAIL_MASS)
        width = max(width, (hi - lo + 1) * coarse)
    return PldCost(d, single, max(single, math.ceil(width / d) + 1))


@dataclass(frozen=True)
class DiscretizationChoice:
    """The interval to use (None: the PLD is not computed), the cost there and at the request,
    and a note for the user when the request was not kept."""

    value_discretization_interval: float | None
    requested: PldCost
    chosen: PldCost | None
    note: str | None


def _gib(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:.3g} GiB"


def choose_discretization(
    *,
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    relation: str = "replace_one",
    value_discretization_interval: float = DEFAULT_PLD_DISCRETIZATION,
    max_points: int = DEFAULT_MAX_POINTS,
    max_single_step_points: int = DEFAULT_MAX_SINGLE_STEP_POINTS,
) -> DiscretizationChoice:
    """Keep the requested interval if its estimated cost fits (at most ``max_points`` composed
    and ``max_single_step_points`` one-step points); else the finest interval (x2 steps, at
    most 0.1) that fits; else None. Each case is named in ``note`` with the numbers."""

    def fits(c: PldCost) -> bool:
        return c.points <= max_points and c.single_step_points <= max_single_step_points

    want = estimate_pld_cost(
        noise_multiplier=noise_multiplier,
        sample_rate=sample_rate,
        steps=steps,
        relation=relation,
        value_discretization_interval=value_discretization_interval,
    )
    if fits(want):
        return DiscretizationChoice(want.value_discretization_interval, want, want, None)
    head = (
        f"PLD at discretization {want.value_discretization_interval:g} would need an estimated "
        f"{want.points:.3g} points (~{_gib(want.bytes)}, one step alone "
        f"{want.single_step_points:.3g} points, ~{want.single_step_points * 1e-5:.3g} s)"
    )
    d = want.value_discretization_interval
    # Points scale like 1/d: jump near the answer, then double until it fits.
    over = max(want.points / max_points, want.single_step_points / max_single_step_points)
    d = min(MAX_DISCRETIZATION, d * 2 ** max(0, math.floor(math.log2(over))))
    while True:
        cost = estimate_pld_cost(
            noise_multiplier=noise_multiplier,
            sample_rate=sample_rate,
            steps=steps,
            relation=relation,
            value_discretization_interval=d,
        )
        if fits(cost):
            note = (
                f"{head}; computed at the coarser discretization {d:g} instead "
                f"(~{cost.points:.3g} points): still a pessimistic upper bound, only looser"
            )
            return DiscretizationChoice(d, want, cost, note)
        if d >= MAX_DISCRETIZATION:
            note = (
                f"{head}, and still {cost.points:.3g} points at the coarsest discretization "
                f"{MAX_DISCRETIZATION:g}; PLD not computed, RDP alone is reported"
            )
            return DiscretizationChoice(None, want, None, note)
        d = min(MAX_DISCRETIZATION, d * 2)
