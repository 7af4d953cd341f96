"""Budget guard: an allowed sequence never ends above budget (property), errors name values."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from securefvpa.errors import AccountingError
from securefvpa.privacy.accountant import epsilon
from securefvpa.privacy.events import DpSgdEvent
from securefvpa.privacy.guard import BudgetGuard

planned_round = st.tuples(
    st.sampled_from([0.7, 1.0, 1.3, 2.0, 4.0]),  # sigma
    st.sampled_from([0.01, 0.1, 0.3, 1.0]),  # q
    st.integers(min_value=1, max_value=40),  # steps
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    budget=st.floats(min_value=0.2, max_value=20.0),
    delta=st.sampled_from([1e-3, 1e-5, 1e-7]),
    relation=st.sampled_from(["replace_one", "add_remove_one"]),
    accountant=st.sampled_from(["rdp", "pld"]),
    plan=st.lists(planned_round, min_size=1, max_size=8),
)
def test_allowed_sequences_never_exceed_budget(budget, delta, relation, accountant, plan):
    d = 1e-2  # coarse (still pessimistic) PLD keeps the property test fast
    guard = BudgetGuard(
        budget_epsilon=budget, delta=delta, accountant=accountant, value_discretization_interval=d
    )
    history: list[DpSgdEvent] = []
    for r, (sigma, q, steps) in enumerate(plan):
        ev = DpSgdEvent(
            client_id="c",
            round=r,
            noise_multiplier=sigma,
            sample_rate=q,
            steps=steps,
            clip=1.0,
            relation=relation,
        )
        dec = guard.check(client_id="c", history=history, planned_event=ev)
        assert dec.allowed == (dec.epsilon_if_trained <= budget)
        assert dec.epsilon_now == epsilon(
            history, delta, accountant=accountant, value_discretization_interval=d
        )
        if dec.allowed:
            history.append(ev)
        else:
            assert "budget" in dec.reason
        # replayed in any order, from the ledger, the spent epsilon is the same number
        assert (
            epsilon(history[::-1], delta, accountant=accountant, value_discretization_interval=d)
            <= budget
        )


def test_declines_exactly_when_over_budget():
    guard = BudgetGuard(budget_epsilon=8.0, delta=1e-5, value_discretization_interval=1e-3)
    history: list[DpSgdEvent] = []
    decisions = []
    for r in range(50):
        ev = DpSgdEvent(
            client_id="c", round=r, noise_multiplier=1.0, sample_rate=0.1, steps=10, clip=1.0
        )
        dec = guard.check(client_id="c", history=history, planned_event=ev)
        decisions.append(dec.allowed)
        if dec.allowed:
            history.append(ev)
    assert decisions[0] and not decisions[-1]
    assert epsilon(history, 1e-5, value_discretization_interval=1e-3) <= 8.0
    nxt = DpSgdEvent(
        client_id="c", round=99, noise_multiplier=1.0, sample_rate=0.1, steps=10, clip=1.0
    )
    assert epsilon([*history, nxt], 1e-5, value_discretization_interval=1e-3) > 8.0


def test_guard_rejects_foreign_and_repeated_events():
    guard = BudgetGuard(budget_epsilon=5.0, delta=1e-5, accountant="rdp")
    a0 = DpSgdEvent(
        client_id="a", round=0, noise_multiplier=1.0, sample_rate=0.1, steps=1, clip=1.0
    )
    with pytest.raises(AccountingError, match="'b'"):
        guard.check(client_id="b", history=[], planned_event=a0)
    with pytest.raises(AccountingError, match="round 0"):
        guard.check(client_id="a", history=[a0], planned_event=a0)
    with pytest.raises(AccountingError, match="DpSgdEvent"):
        guard.check(client_id="a", history=[], planned_event="event")  # type: ignore[arg-type]


@pytest.mark.parametrize("budget", [0, -1.0, math.inf, math.nan, "8", True])
def test_bad_budget(budget):
    with pytest.raises(AccountingError, match="budget_epsilon") as info:
        BudgetGuard(budget_epsilon=budget, delta=1e-5)
    assert repr(budget) in str(info.value)


def test_bad_delta_and_accountant():
    with pytest.raises(AccountingError, match="delta"):
        BudgetGuard(budget_epsilon=1.0, delta=1.5)
    with pytest.raises(AccountingError, match="accountant"):
        BudgetGuard(budget_epsilon=1.0, delta=1e-5, accountant="gdp")
