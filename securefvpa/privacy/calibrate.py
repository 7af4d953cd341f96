"""Noise calibration: the smallest sigma whose planned participation meets a target epsilon.

Uses dp-accounting's :func:`calibrate_dp_mechanism` (Brent's method, then a bisection fallback
that guarantees the returned parameter does not exceed the target) on the exact accountant that
:func:`securefvpa.privacy.accountant.epsilon` uses, so ``epsilon`` of the planned events at the
returned sigma is <= ``target_epsilon`` (re-checked before returning).
"""

from __future__ import annotations

import math

import dp_accounting
from dp_accounting import mechanism_calibration

from securefvpa.errors import AccountingError
from securefvpa.privacy.accountant import (
    DEFAULT_PLD_DISCRETIZATION,
    check_accountant,
    check_delta,
    check_discretization,
    epsilon,
    make_accountant,
)
from securefvpa.privacy.events import DpSgdEvent, check_relation

MIN_NOISE_MULTIPLIER = 0.1
MAX_NOISE_MULTIPLIER = 1e4


def _planned(sigma: float, sample_rate: float, steps: int, rounds: int, relation: str) -> list:
    return [
        DpSgdEvent(client_id="calibration", round=r, noise_multiplier=sigma, sample_rate=sample_rate, steps=steps, clip=1.0, relation=relation)  # type: ignore[arg-type]
        for r in range(rounds)
    ]


def calibrate_noise_multiplier(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps_per_round: int,
    rounds: int,
    relation: str = "replace_one",
    accountant: str = "pld",
    value_discretization_interval: float = DEFAULT_PLD_DISCRETIZATION,
    tol: float = 1e-4,
) -> float:
    """Smallest sigma (within ``tol``) such that ``rounds`` rounds of ``steps_per_round``
    Poisson-sampled steps at ``sample_rate`` satisfy (target_epsilon, delta)-DP.

    Searches sigma in [0.1, 1e4]; a target already met at sigma = 0.1 returns 0.1. Raises
    :class:`AccountingError` for bad arguments or a target not reachable with sigma <= 1e4.
    """
    if isinstance(target_epsilon, bool) or not isinstance(target_epsilon, int | float):
        raise AccountingError(f"target_epsilon must be a number > 0. Found {target_epsilon!r}.")
    if not (math.isfinite(target_epsilon) and target_epsilon > 0.0):
        raise AccountingError(f"target_epsilon must be finite and > 0. Found {target_epsilon!r}.")
    delta = check_delta(delta)
    check_relation(relation)
    check_accountant(accountant)
    d = check_discretization(value_discretization_interval)
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise AccountingError(f"rounds must be an integer >= 1. Found {rounds!r}.")
    if isinstance(tol, bool) or not isinstance(tol, int | float) or not 0.0 < tol < 1.0:
        raise AccountingError(f"tol must be in (0, 1). Found {tol!r}.")
    # Validates sample_rate and steps_per_round with messages that name them.
    _planned(1.0, sample_rate, steps_per_round, 1, relation)
    total_steps = steps_per_round * rounds

    def eps_at(sigma: float) -> float:
        return epsilon(
            _planned(sigma, sample_rate, steps_per_round, rounds, relation),
            delta,
            accountant=accountant,
            value_discretization_interval=d,
        )

    hi = 1.0
    while eps_at(hi) > target_epsilon:
        if hi >= MAX_NOISE_MULTIPLIER:
            raise AccountingError(
                f"target_epsilon={target_epsilon} at delta={delta} is unreachable with "
                f"noise_multiplier <= {MAX_NOISE_MULTIPLIER} (sample_rate={sample_rate}, "
                f"steps={total_steps}, relation={relation!r})."
            )
        hi = min(2.0 * hi, MAX_NOISE_MULTIPLIER)
    lo = hi / 2.0
    while eps_at(lo) <= target_epsilon:
        if lo <= MIN_NOISE_MULTIPLIER:
            return MIN_NOISE_MULTIPLIER
        hi, lo = lo, max(lo / 2.0, MIN_NOISE_MULTIPLIER)

    sigma = float(
        mechanism_calibration.calibrate_dp_mechanism(
            lambda: make_accountant(accountant, relation, value_discretization_interval=d),
            lambda s: dp_accounting.SelfComposedDpEvent(
                dp_accounting.PoissonSampledDpEvent(sample_rate, dp_accounting.GaussianDpEvent(s)),
                total_steps,
            ),
            target_epsilon,
            delta,
            bracket_interval=mechanism_calibration.ExplicitBracketInterval(lo, hi),
            tol=tol,
        )
    )
    if eps_at(sigma) > target_epsilon:  # the library promises this never happens; we check
        sigma = hi
    return sigma
