"""Distributed rounds in the ledger: DdgEvent round-trips, is hash-chained like DP-SGD events,
epsilon is recomputed from the ledger alone, the guard declines at the budget, and a history
never mixes the two modes."""

from __future__ import annotations

import dataclasses
import sqlite3

import pytest

from securefvpa.errors import AccountingError
from securefvpa.privacy import ddg
from securefvpa.privacy.accountant import epsilon, epsilon_trajectory
from securefvpa.privacy.events import DpSgdEvent
from securefvpa.privacy.guard import BudgetGuard
from securefvpa.privacy.ledger import Ledger, verify

GOOD = dict(
    client_id="client-00003",
    round=2,
    attempt=1,
    unit="user",
    relation="replace_one",
    sample_rate=0.1,
    clip=1.0,
    gamma=2.0**-20,
    beta=0.6065306597126334,
    dim=69632,
    local_sigma=3.0e6,
    honest_shares=30,
    threshold=30,
    max_colluding=0,
    bits=32,
    block_size=4096,
)


def test_event_round_trips_and_its_round_is_what_the_accountant_uses():
    ev = ddg.DdgEvent(**GOOD)
    assert ddg.DdgEvent.from_payload(ev.to_payload()) == ev
    assert ev.to_round() == ddg.DdgRound(
        sample_rate=0.1, clip=1.0, gamma=2.0**-20, beta=GOOD["beta"], dim=69632,
        local_sigma=3.0e6, honest_shares=30, relation="replace_one",
    )  # fmt: skip
    assert epsilon([ev, dataclasses.replace(ev, round=3)], 1e-5) == ddg.epsilon(
        [ev.to_round()] * 2, delta=1e-5
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("honest_shares", 29),
        ("unit", "household"),
        ("local_sigma", 0.5),
        ("attempt", 0),
        ("sample_rate", 0.0),
    ],
)
def test_bad_fields_name_the_value(field, value):
    with pytest.raises(AccountingError, match=field):
        ddg.DdgEvent(**{**GOOD, field: value})


def test_ledger_stores_distributed_rounds_and_detects_an_edit(tmp_path):
    path = tmp_path / "l.sqlite"
    events = [ddg.DdgEvent(**{**GOOD, "round": r}) for r in (1, 2, 3)]
    with Ledger(path) as led:
        for ev in events:
            led.append(ev)
        assert led.events_for_client("client-00003") == events
        assert led.events_by_client() == {"client-00003": events}
    assert verify(path).ok
    conn = sqlite3.connect(path)
    conn.execute(
        "UPDATE entries SET payload = replace(payload, '3000000.0', '3000001.0') WHERE seq = 2"
    )
    conn.commit()
    conn.close()
    assert not verify(path).ok


def test_guard_declines_a_distributed_round_over_budget_and_records_it(tmp_path):
    guard = BudgetGuard(budget_epsilon=1.0, delta=1e-5)
    history: list[ddg.DdgEvent] = []
    with Ledger(tmp_path / "l.sqlite") as led:
        for r in range(1, 200):
            planned = ddg.DdgEvent(**{**GOOD, "round": r})
            decision = guard.check(
                client_id=GOOD["client_id"], history=history, planned_event=planned
            )
            if not decision.allowed:
                led.append_declined(
                    planned,
                    reason=decision.reason,
                    epsilon_now=decision.epsilon_now,
                    epsilon_if_trained=decision.epsilon_if_trained,
                    budget_epsilon=1.0,
                )
                break
            led.append(planned)
            history.append(planned)
        entries = led.entries()
    assert 1 <= len(history) < 199
    assert entries[-1].kind == "declined" and isinstance(entries[-1].event(), ddg.DdgEvent)
    assert epsilon(history, 1e-5) <= 1.0
    traj = epsilon_trajectory(history, 1e-5)
    assert [r for r, _ in traj] == list(range(1, len(history) + 1))
    assert traj[-1][1] == epsilon(history, 1e-5)


def test_a_history_never_mixes_local_and_distributed_rounds():
    local = DpSgdEvent(
        client_id=GOOD["client_id"],
        round=1,
        noise_multiplier=1.0,
        sample_rate=0.1,
        steps=1,
        clip=1.0,
    )
    with pytest.raises(AccountingError, match="mixes local DP-SGD and distributed"):
        epsilon([local, ddg.DdgEvent(**GOOD)], 1e-5)


def test_group_bound_is_k_eps_for_pure_dp_limit_and_vacuous_when_it_must_be():
    """Per-user from per-pair: k eps' at a per-unit delta' with k e^((k-1) eps') delta' <= delta
    (Vadhan 2017, Lemma 2.2). At k = 1 it is the accounted epsilon; it grows with k; at a
    large per-pair epsilon and k it has no finite value (reported as vacuous)."""
    from securefvpa.privacy.accountant import group_epsilon_bound

    small = [
        DpSgdEvent(client_id="c", round=r, noise_multiplier=5.0, sample_rate=0.1, steps=1, clip=1.0)
        for r in range(100)
    ]
    eps1 = epsilon(small, 1e-5)
    assert group_epsilon_bound(small, delta=1e-5, group_size=1) == eps1
    g4 = group_epsilon_bound(small, delta=1e-5, group_size=4)
    assert 4 * eps1 < g4 < float("inf")  # k eps' at a smaller delta' > k eps(delta)
    assert group_epsilon_bound(small, delta=1e-5, group_size=12) == float("inf")
    big = [ddg.DdgEvent(**{**GOOD, "round": r}) for r in (1, 2)]
    assert group_epsilon_bound(big, delta=1e-5, group_size=1) == pytest.approx(epsilon(big, 1e-5))
