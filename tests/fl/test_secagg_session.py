"""Every secure round attempt is a protocol session of its own."""

from __future__ import annotations

from securefvpa.fl.secagg_workflow import round_session


def test_each_round_attempt_and_restart_has_its_own_session() -> None:
    ids = {
        round_session("h", rnd, attempt, without_declined=restart)
        for rnd in (1, 2)
        for attempt in (1, 2)
        for restart in (False, True)
    }
    assert len(ids) == 8 and all(len(i) == 32 for i in ids)
    assert round_session("h", 1, 1) == round_session("h", 1, 1)  # the same attempt: the same
