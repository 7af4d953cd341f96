"""A client's own history without reading the whole ledger (issue 12: the budget guard at scale).

``Ledger.events_for_client(client_id)`` answers from an index on ``client_id``; ledgers written
before the index existed still open, verify and answer.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from securefvpa.errors import LedgerError
from securefvpa.privacy.events import DpSgdEvent
from securefvpa.privacy.ledger import CLIENT_EVENTS_SQL, Ledger, entry_hash, verify

V1 = Path(__file__).resolve().parent / "data" / "report_v1"


def _ev(c: str, r: int, attempt: int = 1) -> DpSgdEvent:
    return DpSgdEvent(
        client_id=c, round=r, noise_multiplier=1.0, sample_rate=0.1, steps=2, clip=1.0,
        attempt=attempt,
    )


def _fill(path: Path) -> None:
    with Ledger(path) as led:
        led.append_run_start("r", "h")
        for r in range(6):
            for c in ("a", "b", "c"):
                led.append(_ev(c, r))
        led.append(_ev("a", 5, attempt=2))
        led.append_declined(
            _ev("b", 6), reason="over", epsilon_now=1.0, epsilon_if_trained=2.0, budget_epsilon=1.5
        )


def test_events_for_client_equals_the_full_scan(tmp_path):
    """Mutant caught: a query without ORDER BY seq, or one that also returns declined entries."""
    p = tmp_path / "l.sqlite"
    _fill(p)
    with Ledger(p) as led:
        full = led.events_by_client()
        for c in ("a", "b", "c"):
            assert led.events_for_client(c) == full[c]
        assert [(e.round, e.attempt) for e in led.events_for_client("a")][-2:] == [(5, 1), (5, 2)]
        assert led.events_for_client("nobody") == []
        with pytest.raises(LedgerError):
            led.events_for_client("")


def test_events_for_client_uses_the_client_index(tmp_path):
    """Mutant caught: no index on client_id (SQLite would SCAN every entry)."""
    p = tmp_path / "l.sqlite"
    _fill(p)
    with Ledger(p) as led:
        plan = " ".join(
            str(row[-1])
            for row in led._conn.execute(
                "EXPLAIN QUERY PLAN " + CLIENT_EVENTS_SQL, ("a",)
            )
        )
    assert "USING INDEX" in plan and "SCAN entries" not in plan.replace("USING INDEX", "")


def test_events_for_client_refuses_a_row_whose_payload_names_another_client(tmp_path):
    """An edited client_id column must not move a spend out of a client's history silently."""
    p = tmp_path / "l.sqlite"
    _fill(p)
    conn = sqlite3.connect(p)
    with conn:
        conn.execute("UPDATE entries SET client_id = 'c' WHERE seq = 2")
    conn.close()
    with Ledger(p) as led, pytest.raises(LedgerError, match="fails its hash check"):
        led.events_for_client("c")
    conn = sqlite3.connect(p)  # the same edit with the row's own hash recomputed
    with conn:
        row = conn.execute(
            "SELECT seq, timestamp, kind, client_id, round, payload, prev_hash FROM entries "
            "WHERE seq = 2"
        ).fetchone()
        conn.execute("UPDATE entries SET entry_hash = ? WHERE seq = 2", (entry_hash(*row),))
    conn.close()
    with Ledger(p) as led, pytest.raises(LedgerError, match="payload names client"):
        led.events_for_client("c")


def test_ledger_written_before_the_index_opens_verifies_and_answers(tmp_path):
    """The committed fixture is a ledger written by the code before this change (event schema 1,
    no index); mutant caught: a schema change that refuses or breaks old ledgers."""
    p = tmp_path / "old.sqlite"
    shutil.copy(V1 / "privacy_ledger.sqlite", p)
    conn = sqlite3.connect(p)
    assert conn.execute("SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND "
                        "name = 'entries_client'").fetchone()[0] == 0
    conn.close()
    before = verify(p)
    assert before.ok, before
    with Ledger(p) as led:
        full = led.events_by_client()
        assert full and all(led.events_for_client(c) == evs for c, evs in full.items())
    after = verify(p)
    assert after.ok and after.head_hash == before.head_hash


def test_an_index_that_hides_a_spend_is_caught_by_verify(tmp_path):
    """The index is not hashed: an edited index entry moves a spend out of a client's indexed
    history. Mutant caught: verify with PRAGMA quick_check (it does not compare index and
    table, so this ledger verified OK)."""
    p = tmp_path / "l.sqlite"
    _fill(p)
    conn = sqlite3.connect(p)
    conn.execute("PRAGMA journal_mode=DELETE")
    root = conn.execute(
        "SELECT rootpage FROM sqlite_master WHERE name = 'entries_client'"
    ).fetchone()[0]
    size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    data = bytearray(p.read_bytes())
    page = (root - 1) * size
    hit = data.find(b"bdp_sgd", page, page + size)  # an index record (client_id 'b', kind)
    assert hit > 0
    data[hit] = ord("c")
    p.write_bytes(bytes(data))
    res = verify(p)
    assert not res.ok and "missing from index" in res.reason
