"""Per-client epsilon from DP-SGD events, via dp-accounting (PLD primary, RDP cross-check).

Contract:

* A client's epsilon is a function of the *multiset* of its events' (relation, sigma, q, steps),
  never of their order, client id, round or clip. Events with the same (sigma, q) are merged by
  summing steps and composed in sorted order (:func:`canonical_dp_event`), so a replay from the
  ledger in any order gives bit-identical numbers, and identical histories are computed once
  (an LRU cache keyed by that multiset).
* ``"pld"`` is dp-accounting's :class:`PLDAccountant` (connect-the-dots, pessimistic estimate:
  an upper bound; Doroshenko et al. 2022) with ``value_discretization_interval`` (default
  1e-4, the library's). We reproduce its composition exactly but keep the single-step PLD of
  each (sigma, q, relation) in a cache; ``tests/privacy/test_accountant.py`` pins the equality.
* ``"rdp"`` is dp-accounting's :class:`RdpAccountant` under ADD_OR_REMOVE_ONE and
  :class:`~securefvpa.privacy.rdp_replace.ReplaceOneRdpAccountant` (a sound, looser bound)
  under REPLACE_ONE. Conversion to (epsilon, delta): Balle et al. 2020, Theorem 21.
* Under REPLACE_ONE, dp-accounting's PLD treats ``noise_multiplier`` as noise / per-record norm
  bound and models the substitution pair N(-C, s^2) vs N(+C, s^2) (Poisson-mixed with N(0, s^2)),
  i.e. sensitivity 2C: at q = 1 a REPLACE_ONE Gaussian with sigma equals an ADD_OR_REMOVE_ONE
  Gaussian with sigma / 2 (pinned by a test).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, cast, get_args

import dp_accounting
import numpy as np
from dp_accounting import privacy_accountant
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.pld import privacy_loss_distribution as pld_lib
from dp_accounting.rdp import rdp_privacy_accountant as rdp_lib

from securefvpa.errors import AccountingError
from securefvpa.privacy.ddg import DdgEvent, DdgRound, PrivacyEvent
from securefvpa.privacy.ddg import epsilon as ddg_epsilon
from securefvpa.privacy.ddg import group_epsilon as ddg_group_epsilon
from securefvpa.privacy.events import DpSgdEvent, check_client_id, neighboring_relation
from securefvpa.privacy.rdp_replace import DEFAULT_ORDERS as RDP_ORDERS_REPLACE
from securefvpa.privacy.rdp_replace import ReplaceOneRdpAccountant, replace_one_rdp

AccountantName = Literal["pld", "rdp"]
ACCOUNTANTS: tuple[str, ...] = get_args(AccountantName)
DEFAULT_PLD_DISCRETIZATION = 1e-4
RDP_ORDERS_ADD_REMOVE: tuple[float, ...] = tuple(float(a) for a in rdp_lib.DEFAULT_RDP_ORDERS)


def check_delta(delta: object) -> float:
    if isinstance(delta, bool) or not isinstance(delta, int | float):
        raise AccountingError(f"delta must be a number in (0, 1). Found {delta!r}.")
    if not (math.isfinite(delta) and 0.0 < delta < 1.0):
        raise AccountingError(f"delta must be in (0, 1). Found {delta!r}.")
    return float(delta)


def check_accountant(name: object) -> str:
    if name not in ACCOUNTANTS:
        raise AccountingError(f"accountant must be one of {list(ACCOUNTANTS)}. Found {name!r}.")
    return str(name)


def check_discretization(d: object) -> float:
    if isinstance(d, bool) or not isinstance(d, int | float) or not (0.0 < d <= 0.1):
        raise AccountingError(f"value_discretization_interval must be in (0, 0.1]. Found {d!r}.")
    return float(d)


@dataclass(frozen=True)
class HistoryKey:
    """The accounting identity of a list of events: relation and sorted (sigma, q, steps)."""

    relation: str | None
    counts: tuple[tuple[float, float, int], ...]


def history_key(events: Iterable[DpSgdEvent]) -> HistoryKey:
    """Merge events by (sigma, q); all events must share one neighbouring relation."""
    merged: dict[tuple[float, float], int] = {}
    relation: str | None = None
    for ev in events:
        if not isinstance(ev, DpSgdEvent):
            raise AccountingError(f"events must be DpSgdEvent instances. Found {ev!r}.")
        if relation is None:
            relation = ev.relation
        elif ev.relation != relation:
            raise AccountingError(
                f"all events of one history must share a neighbouring relation; found "
                f"{relation!r} and {ev.relation!r} (client {ev.client_id!r}, round {ev.round})."
            )
        k = (ev.noise_multiplier, ev.sample_rate)
        merged[k] = merged.get(k, 0) + ev.steps
    return HistoryKey(relation, tuple(sorted((s, q, n) for (s, q), n in merged.items())))


def canonical_dp_event(key: HistoryKey) -> dp_accounting.DpEvent:
    """``Composed([SelfComposed(PoissonSampled(q, Gaussian(sigma)), steps), ...])``, sorted."""
    if not key.counts:
        return dp_accounting.NoOpDpEvent()
    return dp_accounting.ComposedDpEvent(
        [
            dp_accounting.SelfComposedDpEvent(
                dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(s)), n
            )
            for s, q, n in key.counts
        ]
    )


def make_accountant(
    accountant: str,
    relation: str,
    *,
    value_discretization_interval: float = DEFAULT_PLD_DISCRETIZATION,
) -> privacy_accountant.PrivacyAccountant:
    """A fresh dp-accounting accountant (or our REPLACE_ONE RDP bound) for ``relation``."""
    check_accountant(accountant)
    rel = neighboring_relation(relation)
    if accountant == "pld":
        return pld_privacy_accountant.PLDAccountant(
            rel, value_discretization_interval=check_discretization(value_discretization_interval)
        )
    if relation == "replace_one":
        return ReplaceOneRdpAccountant()
    return rdp_lib.RdpAccountant(list(RDP_ORDERS_ADD_REMOVE), rel)


@functools.lru_cache(maxsize=8)
def _single_step_pld(
    sigma: float, q: float, relation: str, d: float
) -> pld_lib.PrivacyLossDistribution:
    # Exactly what PLDAccountant builds for PoissonSampled(Gaussian) before self-composition.
    return pld_lib.from_gaussian_mechanism(
        standard_deviation=sigma,
        value_discretization_interval=d,
        sampling_prob=q,
        neighboring_relation=neighboring_relation(relation),
    )


@functools.lru_cache(maxsize=1024)
def _single_step_rdp(sigma: float, q: float, relation: str) -> np.ndarray:
    if relation == "replace_one":
        return replace_one_rdp(q, sigma)
    acc = rdp_lib.RdpAccountant(list(RDP_ORDERS_ADD_REMOVE))
    acc.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)))
    out = acc.rdp
    out.setflags(write=False)
    return out


@functools.lru_cache(maxsize=1 << 16)
def _epsilon_cached(accountant: str, key: HistoryKey, delta: float, d: float) -> float:
    if not key.counts or key.relation is None:
        return 0.0
    if not make_accountant(accountant, key.relation, value_discretization_interval=d).supports(
        canonical_dp_event(key)
    ):
        raise AccountingError(f"{accountant} accountant does not support history {key}.")
    if accountant == "pld":
        pld = pld_lib.identity(value_discretization_interval=d)
        for s, q, n in key.counts:
            pld = pld.compose(_single_step_pld(s, q, key.relation, d).self_compose(n))
        eps = float(pld.get_epsilon_for_delta(delta))
    else:
        rdp = np.zeros(len(_single_step_rdp(*key.counts[0][:2], key.relation)))
        for s, q, n in key.counts:
            rdp += n * _single_step_rdp(s, q, key.relation)
        orders = RDP_ORDERS_REPLACE if key.relation == "replace_one" else RDP_ORDERS_ADD_REMOVE
        eps = float(rdp_lib.compute_epsilon(orders, rdp, delta)[0])
    if math.isnan(eps) or eps < 0.0:
        raise AccountingError(f"accountant {accountant} returned an invalid epsilon {eps!r}.")
    return eps


def distributed_rounds(events: Sequence[PrivacyEvent]) -> list[DdgRound] | None:
    """The DDG rounds of a history of distributed events, None for a local DP-SGD history.

    One history is one mode: mixing local DP-SGD and distributed rounds is refused (their
    accountants differ; ``securefvpa.privacy.ddg`` composes only distributed rounds).
    """
    ddg = [isinstance(e, DdgEvent) for e in events]
    if not any(ddg):
        return None
    if not all(ddg):
        bad = next(e for e in events if not isinstance(e, DdgEvent))
        raise AccountingError(
            "a history mixes local DP-SGD and distributed rounds (one mode per ledger); "
            f"found {bad!r}."
        )
    return [e.to_round() for e in events]  # type: ignore[union-attr]


def epsilon(
    events: Iterable[PrivacyEvent],
    delta: float,
    *,
    accountant: str = "pld",
    value_discretization_interval: float = DEFAULT_PLD_DISCRETIZATION,
) -> float:
    """Epsilon at ``delta`` of the composition of ``events`` (0.0 for no events).

    Distributed rounds (:class:`~securefvpa.privacy.ddg.DdgEvent`) are accounted by the DDG RDP
    bound (:func:`securefvpa.privacy.ddg.epsilon`) whatever ``accountant`` says: there is no PLD
    for a sum of discrete Gaussians (see that module).
    """
    evs = list(events)
    rounds = distributed_rounds(evs)
    if rounds is not None:
        return ddg_epsilon(rounds, delta=check_delta(delta))
    return _epsilon_cached(
        check_accountant(accountant),
        history_key(cast("list[DpSgdEvent]", evs)),
        check_delta(delta),
        check_discretization(value_discretization_interval),
    )


@dataclass(frozen=True)
class EpsilonPair:
    """Epsilon from both accountants at one delta."""

    pld: float
    rdp: float


def epsilon_both(
    events: Iterable[DpSgdEvent],
    delta: float,
    *,
    value_discretization_interval: float = DEFAULT_PLD_DISCRETIZATION,
) -> EpsilonPair:
    """PLD (primary) and RDP (cross-check) epsilon of ``events`` at ``delta``."""
    evs = list(events)
    d = value_discretization_interval
    return EpsilonPair(
        pld=epsilon(evs, delta, accountant="pld", value_discretization_interval=d),
        rdp=epsilon(evs, delta, accountant="rdp"),
    )


def epsilon_after(
    existing_events: Sequence[DpSgdEvent],
    new_event: DpSgdEvent,
    delta: float,
    *,
    accountant: str = "pld",
    value_discretization_interval: float = DEFAULT_PLD_DISCRETIZATION,
) -> float:
    """Epsilon if ``new_event`` were composed after ``existing_events`` (nothing is recorded)."""
    return epsilon(
        [*existing_events, new_event],
        delta,
        accountant=accountant,
        value_discretization_interval=value_discretization_interval,
    )


def epsilon_trajectory(
    events: Iterable[PrivacyEvent],
    delta: float,
    *,
    accountant: str = "pld",
    value_discretization_interval: float = DEFAULT_PLD_DISCRETIZATION,
) -> list[tuple[int, float]]:
    """``[(round, epsilon after that round), ...]`` in round order (ties keep input order).

    Equal to calling :func:`epsilon` on each prefix; keys are built incrementally so a client
    with k rounds costs O(k) key updates plus one cached epsilon per distinct prefix multiset.
    """
    acc = check_accountant(accountant)
    dlt = check_delta(delta)
    d = check_discretization(value_discretization_interval)
    ordered = sorted(events, key=lambda e: e.round)
    if distributed_rounds(ordered) is not None:
        return [(ev.round, epsilon(ordered[: i + 1], dlt)) for i, ev in enumerate(ordered)]
    local = cast("list[DpSgdEvent]", ordered)  # not distributed: local DP-SGD events only
    history_key(local)  # validates types and a single relation
    merged: dict[tuple[float, float], int] = {}
    out: list[tuple[int, float]] = []
    for ev in local:
        k = (ev.noise_multiplier, ev.sample_rate)
        merged[k] = merged.get(k, 0) + ev.steps
        key = HistoryKey(ev.relation, tuple(sorted((s, q, n) for (s, q), n in merged.items())))
        out.append((ev.round, _epsilon_cached(acc, key, dlt, d)))
    return out


def group_epsilon_bound(
    events: Sequence[PrivacyEvent],
    *,
    delta: float,
    group_size: int,
    accountant: str = "pld",
) -> float:
    """Per-group epsilon bound at ``delta`` (e.g. per user from per-pair events).

    Group privacy of an (eps', delta')-DP guarantee for groups of ``k`` units is
    ``(k eps', k e^{(k-1) eps'} delta')`` (Vadhan 2017, "The Complexity of Differential
    Privacy", Lemma 2.2); a per-unit ``delta'`` with ``k e^{(k-1) eps(delta')} delta' <= delta``
    is found by fixed-point iteration and ``k eps(delta')`` returned, ``math.inf`` when none
    exists above 1e-300 (the bound is then vacuous). Distributed histories use the DDG RDP
    curve directly (``privacy.ddg.group_epsilon``). A bound, labelled as such in reports.
    """
    evs = list(events)
    dlt = check_delta(delta)
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise AccountingError(f"group_size must be an integer >= 1. Found {group_size!r}.")
    rounds = distributed_rounds(evs)
    if rounds is not None:
        return float(ddg_group_epsilon(rounds, delta=dlt, group_size=group_size).epsilon)
    k = group_size
    if k == 1:
        return epsilon(evs, dlt, accountant=accountant)
    unit_delta = dlt / k
    for _ in range(50):
        eps = epsilon(evs, unit_delta, accountant=accountant)
        log_needed = math.log(dlt) - math.log(k) - (k - 1) * eps
        if log_needed < math.log(1e-300):
            return math.inf
        if math.log(unit_delta) <= log_needed + 1e-12:
            return k * eps
        unit_delta = math.exp(log_needed)
    return math.inf


def clear_caches() -> None:
    """Drop cached PLDs, RDP curves and epsilons (for benchmarks measuring cold cost)."""
    _epsilon_cached.cache_clear()
    _single_step_pld.cache_clear()
    _single_step_rdp.cache_clear()
    replace_one_rdp.cache_clear()


class ClientAccountant:
    """Tracks each client's events and answers per-client epsilon (check, then commit)."""

    def __init__(
        self,
        delta: float,
        *,
        accountant: str = "pld",
        value_discretization_interval: float = DEFAULT_PLD_DISCRETIZATION,
    ) -> None:
        self.delta = check_delta(delta)
        self.accountant = check_accountant(accountant)
        self.value_discretization_interval = check_discretization(value_discretization_interval)
        self._events: dict[str, list[DpSgdEvent]] = {}

    def _problem(self, event: DpSgdEvent) -> str | None:
        if not isinstance(event, DpSgdEvent):
            return f"event must be a DpSgdEvent. Found {event!r}."
        history = self._events.get(event.client_id, [])
        if history and history[0].relation != event.relation:
            return (
                f"client {event.client_id!r} has relation {history[0].relation!r}; "
                f"event for round {event.round} has {event.relation!r}."
            )
        acc = make_accountant(
            self.accountant,
            event.relation,
            value_discretization_interval=self.value_discretization_interval,
        )
        if not acc.supports(event.to_dp_event()):
            return f"{self.accountant} accountant does not support {event!r}."
        return None

    def supports(self, event: DpSgdEvent) -> bool:
        return self._problem(event) is None

    def record(self, event: DpSgdEvent) -> None:
        problem = self._problem(event)
        if problem is not None:
            raise AccountingError(problem)
        self._events.setdefault(event.client_id, []).append(event)

    def clients(self) -> tuple[str, ...]:
        return tuple(sorted(self._events))

    def events(self, client_id: str) -> tuple[DpSgdEvent, ...]:
        return tuple(self._events.get(check_client_id(client_id), ()))

    def epsilon(self, client_id: str) -> float:
        return epsilon(
            self.events(client_id),
            self.delta,
            accountant=self.accountant,
            value_discretization_interval=self.value_discretization_interval,
        )

    def epsilon_if(self, event: DpSgdEvent) -> float:
        """Epsilon of ``event.client_id`` if ``event`` were recorded (nothing is recorded)."""
        problem = self._problem(event)
        if problem is not None:
            raise AccountingError(problem)
        return epsilon_after(
            self.events(event.client_id),
            event,
            self.delta,
            accountant=self.accountant,
            value_discretization_interval=self.value_discretization_interval,
        )

    def epsilons(self) -> dict[str, float]:
        return {c: self.epsilon(c) for c in self.clients()}

    def trajectory(self, client_id: str) -> list[tuple[int, float]]:
        return epsilon_trajectory(
            self.events(client_id),
            self.delta,
            accountant=self.accountant,
            value_discretization_interval=self.value_discretization_interval,
        )
