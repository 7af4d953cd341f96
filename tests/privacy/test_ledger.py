"""Ledger: tamper detection, honest limits (tail truncation), SIGKILL safety, concurrency."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from securefvpa.errors import LedgerError
from securefvpa.privacy.events import DpSgdEvent
from securefvpa.privacy.ledger import Ledger, entry_hash, verify

REPO = Path(__file__).resolve().parents[2]


def fixed_clock():
    t = [1_700_000_000.0]

    def clock():
        t[0] += 1.0
        return t[0]

    return clock


def make_ledger(path: Path, n: int = 6) -> list[str]:
    hashes = []
    with Ledger(path, clock=fixed_clock()) as led:
        hashes.append(led.append_run_start("run-1", "cfg-abc"))
        for i in range(n):
            hashes.append(
                led.append(
                    DpSgdEvent(
                        client_id=f"c{i % 2}",
                        round=i,
                        noise_multiplier=1.0,
                        sample_rate=0.1,
                        steps=5,
                        clip=1.0,
                    )
                )
            )
        planned = DpSgdEvent(
            client_id="c0", round=n, noise_multiplier=1.0, sample_rate=0.1, steps=5, clip=1.0
        )
        hashes.append(
            led.append_declined(
                planned, reason="over", epsilon_now=1.0, epsilon_if_trained=2.0, budget_epsilon=1.5
            )
        )
        hashes.append(led.append_run_end("run-1", "cfg-abc"))
    return hashes


def sql(path: Path, *statements: str, params=()) -> None:
    conn = sqlite3.connect(path)
    with conn:
        for s in statements:
            conn.execute(s, params)
    conn.close()


def test_append_returns_chain_and_verifies(tmp_path):
    p = tmp_path / "l.sqlite"
    hashes = make_ledger(p)
    res = verify(p)
    assert res.ok and res.entry_count == len(hashes) and res.head_hash == hashes[-1]
    with Ledger(p) as led:
        entries = led.entries()
        assert [e.entry_hash for e in entries] == hashes
        assert [e.seq for e in entries] == list(range(1, len(hashes) + 1))
        assert all(b.prev_hash == a.entry_hash for a, b in zip(entries, entries[1:]))
        by_client = led.events_by_client()
        assert sorted(by_client) == ["c0", "c1"]
        assert [e.round for e in by_client["c0"]] == [0, 2, 4]
        assert led.head() == (len(hashes), hashes[-1])
        assert [e.kind for e in entries][-2:] == ["declined", "run_end"]


def test_deterministic_under_fixed_clock_but_ledger_ids_differ(tmp_path):
    a = make_ledger(tmp_path / "a.sqlite")
    b = make_ledger(tmp_path / "b.sqlite")
    assert a != b  # the genesis hash binds each chain to its ledger's random id


@pytest.mark.parametrize(
    ("tamper", "bad_seq"),
    [
        (
            "UPDATE entries SET payload = replace(payload, '\"steps\":5', '\"steps\":4') "
            "WHERE seq = 3",
            3,
        ),
        ("UPDATE entries SET client_id = 'c9' WHERE seq = 4", 4),
        ("UPDATE entries SET timestamp = '2020-01-01T00:00:00.000000+00:00' WHERE seq = 2", 2),
        ("DELETE FROM entries WHERE seq = 4", 5),
        ("UPDATE entries SET prev_hash = entry_hash WHERE seq = 5", 5),
        ("UPDATE entries SET entry_hash = prev_hash WHERE seq = 6", 6),
        ("UPDATE meta SET value = '00000000000000000000000000000000' WHERE key = 'ledger_id'", 1),
        ("UPDATE entries SET kind = 'dp_sgd' WHERE seq = 8", 8),
    ],
)
def test_tampering_is_detected(tmp_path, tamper, bad_seq):
    p = tmp_path / "l.sqlite"
    make_ledger(p)
    sql(p, tamper)
    res = verify(p)
    assert not res.ok and res.first_bad_seq == bad_seq, res


def test_swapped_rows_detected(tmp_path):
    p = tmp_path / "l.sqlite"
    make_ledger(p)
    conn = sqlite3.connect(p)
    rows = {r[0]: r for r in conn.execute("SELECT * FROM entries WHERE seq IN (3, 4)")}
    with conn:
        for seq, other in ((3, 4), (4, 3)):
            conn.execute(
                "UPDATE entries SET timestamp=?, kind=?, client_id=?, round=?, payload=?, "
                "prev_hash=?, entry_hash=? WHERE seq=?",
                (*rows[other][1:], seq),
            )
    conn.close()
    res = verify(p)
    assert not res.ok and res.first_bad_seq == 3


def test_inserted_row_detected(tmp_path):
    # Insert a forged entry in the middle: renumber the tail, give the forged entry a correct
    # self-hash linked to its predecessor. The next entry's prev_hash no longer matches.
    p = tmp_path / "l.sqlite"
    make_ledger(p)
    conn = sqlite3.connect(p)
    with conn:
        conn.execute("UPDATE entries SET seq = seq + 1000 WHERE seq >= 4")
        conn.execute("UPDATE entries SET seq = seq - 999 WHERE seq >= 1004")
        prev = conn.execute("SELECT entry_hash FROM entries WHERE seq = 3").fetchone()[0]
        ev = DpSgdEvent(
            client_id="c0", round=77, noise_multiplier=9.0, sample_rate=0.1, steps=1, clip=1.0
        )
        ts = "2030-01-01T00:00:00.000000+00:00"
        h = entry_hash(4, ts, "dp_sgd", "c0", 77, ev.to_json(), prev)
        conn.execute(
            "INSERT INTO entries VALUES (?,?,?,?,?,?,?,?)",
            (4, ts, "dp_sgd", "c0", 77, ev.to_json(), prev, h),
        )
    conn.close()
    res = verify(p)
    assert not res.ok and res.first_bad_seq == 5


def test_edit_with_recomputed_hash_breaks_the_next_link(tmp_path):
    p = tmp_path / "l.sqlite"
    make_ledger(p)
    conn = sqlite3.connect(p)
    row = conn.execute("SELECT * FROM entries WHERE seq = 3").fetchone()
    payload = row[5].replace('"noise_multiplier":1.0', '"noise_multiplier":8.0')
    h = entry_hash(row[0], row[1], row[2], row[3], row[4], payload, row[6])
    with conn:
        conn.execute("UPDATE entries SET payload=?, entry_hash=? WHERE seq=3", (payload, h))
    conn.close()
    res = verify(p)
    assert not res.ok and res.first_bad_seq == 4


def test_non_canonical_payload_detected(tmp_path):
    p = tmp_path / "l.sqlite"
    make_ledger(p)
    conn = sqlite3.connect(p)
    row = conn.execute("SELECT * FROM entries WHERE seq = 2").fetchone()
    payload = row[5].replace(",", ", ")
    h = entry_hash(row[0], row[1], row[2], row[3], row[4], payload, row[6])
    with conn:
        conn.execute("UPDATE entries SET payload=?, entry_hash=? WHERE seq=2", (payload, h))
    conn.close()
    res = verify(p)
    assert not res.ok and res.first_bad_seq == 2 and "canonical" in res.reason


def test_tail_truncation_needs_the_external_head(tmp_path):
    # Honest limit: a keyless chain cannot tell that its newest entries were removed. Only the
    # head hash / count kept elsewhere (the privacy report records both) reveals it.
    p = tmp_path / "l.sqlite"
    hashes = make_ledger(p)
    sql(p, f"DELETE FROM entries WHERE seq = {len(hashes)}")
    assert verify(p).ok
    res = verify(p, expected_head=hashes[-1], expected_count=len(hashes))
    assert not res.ok and "expected" in res.reason
    assert not verify(p, expected_count=len(hashes)).ok
    assert not verify(p, expected_head=hashes[-1]).ok


def test_append_refuses_to_extend_a_tampered_head(tmp_path):
    p = tmp_path / "l.sqlite"
    make_ledger(p)
    sql(p, "UPDATE entries SET round = 99 WHERE seq = (SELECT MAX(seq) FROM entries)")
    with Ledger(p) as led, pytest.raises(LedgerError, match="refusing to append"):
        led.append(
            DpSgdEvent(
                client_id="c0", round=1, noise_multiplier=1.0, sample_rate=0.1, steps=1, clip=1.0
            )
        )


def test_verify_missing_or_foreign_file(tmp_path):
    with pytest.raises(LedgerError, match="no privacy ledger"):
        verify(tmp_path / "absent.sqlite")
    assert not (tmp_path / "absent.sqlite").exists()
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"not a database at all" * 100)
    res = verify(junk)  # readable but not a ledger: tampering, reported, not raised
    assert not res.ok and "not an intact privacy ledger" in res.reason
    with pytest.raises(LedgerError):
        verify(tmp_path)  # a folder is bad input


def test_bad_appends_rejected(tmp_path):
    with Ledger(tmp_path / "l.sqlite") as led:
        with pytest.raises(LedgerError):
            led.append({"client_id": "c"})  # type: ignore[arg-type]
        with pytest.raises(LedgerError, match="config_hash"):
            led.append_run_start("run", "")
    assert verify(tmp_path / "l.sqlite").entry_count == 0


CHILD = r"""
import sys
from securefvpa.privacy.events import DpSgdEvent
from securefvpa.privacy.ledger import Ledger
path, start, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with Ledger(path) as led:
    for i in range(start, start + count):
        h = led.append(DpSgdEvent(client_id=f"c{i % 7}", round=i, noise_multiplier=1.0,
                                  sample_rate=0.1, steps=3, clip=1.0))
        sys.stdout.write(f"{i} {h}\n")
        sys.stdout.flush()
"""


def _child(path: Path, start: int, count: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), str(start), str(count)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_sigkill_never_loses_an_acknowledged_append(tmp_path):
    p = tmp_path / "l.sqlite"
    rng = random.Random(1234)  # test-only timing randomness
    acked: list[str] = []
    for k in range(4):
        proc = _child(p, 100_000 * k, 10**6)
        first = proc.stdout.readline()  # the child is appending now
        assert first.endswith("\n")
        acked.append(first.split()[1])
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        rest = proc.stdout.read()
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        acked += [ln.split()[1] for ln in rest.split("\n")[:-1]]  # complete lines only
    res = verify(p)
    assert res.ok, res
    with Ledger(p) as led:
        stored = {e.entry_hash for e in led.entries()}
    assert set(acked) <= stored
    assert res.entry_count >= len(acked) > 4


def test_concurrent_writers_keep_one_linear_chain(tmp_path):
    p = tmp_path / "l.sqlite"
    Ledger(p).close()
    procs = [_child(p, 1000 * k, 15) for k in range(3)]
    outs = [proc.communicate(timeout=120)[0] for proc in procs]
    assert all(proc.returncode == 0 for proc in procs)
    res = verify(p)
    assert res.ok and res.entry_count == 45
    acked = {ln.split()[1] for out in outs for ln in out.splitlines()}
    with Ledger(p) as led:
        assert {e.entry_hash for e in led.entries()} == acked
