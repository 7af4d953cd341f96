"""Append-only, hash-chained privacy ledger on SQLite.

Every privacy-relevant fact of a run is one entry: ``dp_sgd`` (a round of local DP-SGD a client
ran; payload = :class:`DpSgdEvent`), ``declined`` (the budget guard refused a round; nothing was
trained), ``run_start`` / ``run_end`` (run id and config hash). An entry is

    (seq, timestamp, kind, client_id, round, payload, prev_hash, entry_hash)

with ``payload`` canonical JSON, ``prev_hash`` the previous entry's hash (for seq 1 a genesis
hash bound to this ledger's random id) and ``entry_hash`` = SHA-256 over a domain-separated,
length-prefixed, typed encoding of all other fields (so no two field tuples encode alike).

What :func:`verify` detects, and what it cannot:

* detected: an edited field, a deleted entry, an inserted entry, reordered entries, an edited
  ``prev_hash`` or ``entry_hash``, a payload that is not canonical or not a valid event, a
  ``client_id``/``round`` column that disagrees with the payload, a foreign or edited ledger id.
* NOT detected by the chain alone: removal of the newest entries (tail truncation), putting
  back an older copy (rollback) and a wholesale rewrite of the chain by someone who recomputes
  every hash (the chain is keyless). These are detected only against an :class:`Anchor` (entry
  count + head hash) kept elsewhere: every privacy report records one, ``securefvpa ledger
  verify RUN_DIR`` checks the run's reports, and ``--head``/``--count`` check one published
  outside the run directory (``threat_models/dp.md``, "External anchor").
* A file that is not an intact SQLite privacy ledger (truncated, byte-flipped, empty, another
  database) is tampering too: :func:`verify` returns ``ok=False`` with the reason;
  :func:`read_entries` raises :class:`LedgerCorruptError`. A missing or unreadable path is a
  plain :class:`LedgerError` (bad input).

Crash safety: WAL journal with ``synchronous=FULL``, one ``BEGIN IMMEDIATE`` transaction per
append, committed before :meth:`Ledger.append` returns its hash; SQLite's atomic commit means a
SIGKILL never leaves a half-written entry and never loses an acknowledged one. ``BEGIN
IMMEDIATE`` plus a busy timeout serialises writers from several processes, so the chain stays
linear. (SQLite WAL needs a local file system, not NFS.)

Scale: an index on ``(client_id, kind)`` lets :meth:`Ledger.events_for_client` (the budget
guard's read) touch only that client's rows. The index is not part of the chain; ledgers
written before it existed get it when a :class:`Ledger` opens them and verify unchanged.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from securefvpa.errors import AccountingError, LedgerError
from securefvpa.privacy.ddg import DDG_EVENT_KIND, DDG_EVENT_SCHEMA_VERSION, DdgEvent, PrivacyEvent
from securefvpa.privacy.events import (
    EVENT_SCHEMA_VERSION,
    DpSgdEvent,
    canonical_json,
    check_client_id,
)

LEDGER_SCHEMA_VERSION = "1"
KINDS = ("dp_sgd", "ddg", "declined", "run_start", "run_end")
EVENT_KINDS = (
    "dp_sgd",
    "ddg",
)  # entries that spend privacy (a local DP-SGD or a distributed round)
_ENTRY_DOMAIN = b"securefvpa/privacy-ledger/entry/v1"
_GENESIS_DOMAIN = b"securefvpa/privacy-ledger/genesis/v1"
_COLUMNS = (
    "seq",
    "timestamp",
    "kind",
    "client_id",
    "round",
    "payload",
    "prev_hash",
    "entry_hash",
)
_SELECT = (
    "SELECT seq, timestamp, kind, client_id, round, payload, prev_hash, entry_hash FROM entries"
)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    seq INTEGER PRIMARY KEY,
    timestamp TEXT NOT NULL,
    kind TEXT NOT NULL,
    client_id TEXT,
    round INTEGER,
    payload TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    entry_hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_client ON entries (client_id, kind);
"""
# A client's DP-SGD events in ledger order, answered from the ``entries_client`` index.
CLIENT_EVENTS_SQL = _SELECT + " WHERE client_id = ? AND kind IN ('dp_sgd', 'ddg') ORDER BY seq"
# SQLite primary result codes that say nothing about the file's content (locks, permissions,
# memory, I/O); any other error while reading a ledger means the file is not an intact ledger.
_ENVIRONMENT_ERRORS = {
    3,
    5,
    6,
    7,
    10,
    13,
    14,
    23,
}  # PERM BUSY LOCKED NOMEM IOERR FULL CANTOPEN AUTH


def _enc(value: str | int | None) -> bytes:
    """Typed, length-prefixed encoding: None, int and str never collide."""
    if value is None:
        return b"N"
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise LedgerError(f"cannot encode ledger field {value!r}")
    if isinstance(value, int):
        tag, raw = b"I", str(value).encode("ascii")
    else:
        tag, raw = b"S", value.encode("utf-8")
    return tag + len(raw).to_bytes(8, "big") + raw


def genesis_hash(ledger_id: str) -> str:
    return hashlib.sha256(_enc(_GENESIS_DOMAIN.decode()) + _enc(ledger_id)).hexdigest()


def entry_hash(
    seq: int,
    timestamp: str,
    kind: str,
    client_id: str | None,
    round_: int | None,
    payload: str,
    prev_hash: str,
) -> str:
    """SHA-256 (hex) over the domain tag and every field of an entry, prev_hash included."""
    h = hashlib.sha256(_enc(_ENTRY_DOMAIN.decode()))
    for field in (seq, timestamp, kind, client_id, round_, payload, prev_hash):
        h.update(_enc(field))
    return h.hexdigest()


@dataclass(frozen=True)
class LedgerEntry:
    seq: int
    timestamp: str
    kind: str
    client_id: str | None
    round: int | None
    payload: str
    prev_hash: str
    entry_hash: str

    def payload_obj(self) -> dict[str, Any]:
        out = json.loads(self.payload)
        if not isinstance(out, dict):
            raise LedgerError(f"ledger entry {self.seq}: payload is not a JSON object")
        return out

    def event(self) -> PrivacyEvent:
        """The event of a ``dp_sgd`` or ``ddg`` entry (or the planned one of a ``declined``
        entry: a distributed round's payload is recognised by its ``gamma``)."""
        obj = self.payload_obj()
        try:
            if self.kind == "dp_sgd":
                return DpSgdEvent.from_payload(obj)
            if self.kind == "ddg":
                return DdgEvent.from_payload(obj)
            if self.kind == "declined":
                planned = obj.get("planned")
                if isinstance(planned, dict) and "gamma" in planned:
                    return DdgEvent.from_payload(planned)
                return DpSgdEvent.from_payload(planned)
        except AccountingError as err:
            raise LedgerError(f"ledger entry {self.seq}: {err}") from err
        raise LedgerError(f"ledger entry {self.seq} of kind {self.kind!r} carries no event")


class LedgerCorruptError(LedgerError):
    """The file exists and is readable but is not an intact privacy ledger (truncated,
    byte-flipped, empty, another database): evidence of tampering, not bad input."""


@dataclass(frozen=True)
class Anchor:
    """A (entry count, head hash) pair recorded when the ledger had that many entries.

    ``entry_count`` None means "somewhere in the chain" (a head hash published without its
    count). ``ledger_id``, when known, must match too. ``source`` names where the anchor came
    from in messages (``"privacy_report.json"``, ``"--head"``).
    """

    head_hash: str
    entry_count: int | None = None
    ledger_id: str | None = None
    source: str = "anchor"

    def __post_init__(self) -> None:
        h = self.head_hash
        if not (isinstance(h, str) and len(h) == 64 and all(c in "0123456789abcdef" for c in h)):
            raise LedgerError(
                f"{self.source}: a head hash is 64 lowercase hex digits. Found {h!r}."
            )
        n = self.entry_count
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
            raise LedgerError(f"{self.source}: entry count must be an integer >= 0. Found {n!r}.")


@dataclass(frozen=True)
class LedgerVerification:
    """Result of :func:`verify`. ``first_bad_seq`` is None when ``ok`` (or when the failure is
    not one entry: a truncated tail, a missed anchor, a corrupt file). ``notes`` are
    informational (entries appended after an anchor)."""

    ok: bool
    entry_count: int
    head_hash: str
    first_bad_seq: int | None
    reason: str
    notes: tuple[str, ...] = ()


def _utc(t: float) -> str:
    return datetime.fromtimestamp(t, tz=UTC).isoformat(timespec="microseconds")


def _connect(path: Path, *, read_only: bool, busy_timeout_s: float) -> sqlite3.Connection:
    if read_only:
        conn = sqlite3.connect(
            f"file:{path}?mode=ro", uri=True, timeout=busy_timeout_s, isolation_level=None
        )
        conn.execute("PRAGMA query_only=ON")
    else:
        conn = sqlite3.connect(str(path), timeout=busy_timeout_s, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
    conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
    return conn


class Ledger:
    """Append-only, hash-chained ledger; see the module docstring for guarantees.

    ``clock`` returns seconds since the epoch (injected so tests can fix time).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.time,
        busy_timeout_s: float = 60.0,
    ) -> None:
        self.path = Path(path)
        self._clock = clock
        try:
            self._conn = _connect(self.path, read_only=False, busy_timeout_s=busy_timeout_s)
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                for stmt in _SCHEMA.strip().split(";"):
                    if stmt.strip():
                        self._conn.execute(stmt)
                meta = dict(self._conn.execute("SELECT key, value FROM meta").fetchall())
                if not meta:
                    meta = {
                        "schema_version": LEDGER_SCHEMA_VERSION,
                        "ledger_id": os.urandom(16).hex(),
                    }
                    self._conn.executemany("INSERT INTO meta VALUES (?, ?)", sorted(meta.items()))
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as err:
            raise LedgerError(f"cannot open privacy ledger {str(self.path)!r}: {err}") from err
        if meta.get("schema_version") != LEDGER_SCHEMA_VERSION or "ledger_id" not in meta:
            raise LedgerError(
                f"ledger {str(self.path)!r} has schema_version "
                f"{meta.get('schema_version')!r}; expected {LEDGER_SCHEMA_VERSION!r}."
            )
        self.ledger_id = meta["ledger_id"]

    # -- context manager -------------------------------------------------------------------
    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._conn.close()

    # -- appends -----------------------------------------------------------------------------
    def _append(self, kind: str, client_id: str | None, round_: int | None, payload: str) -> str:
        timestamp = _utc(self._clock())
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                row = self._conn.execute(_SELECT + " ORDER BY seq DESC LIMIT 1").fetchone()
                if row is None:
                    seq, prev = 1, genesis_hash(self.ledger_id)
                else:
                    last = LedgerEntry(*row)
                    recomputed = entry_hash(*row[:7])
                    if not hmac.compare_digest(recomputed, last.entry_hash):
                        raise LedgerError(
                            f"refusing to append: newest ledger entry {last.seq} fails its hash "
                            f"check; run `securefvpa ledger verify {self.path}`."
                        )
                    seq, prev = last.seq + 1, last.entry_hash
                h = entry_hash(seq, timestamp, kind, client_id, round_, payload, prev)
                self._conn.execute(
                    "INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (seq, timestamp, kind, client_id, round_, payload, prev, h),
                )
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as err:
            raise LedgerError(f"cannot append to ledger {str(self.path)!r}: {err}") from err
        return h

    def append(self, event: PrivacyEvent) -> str:
        """Record a round of local DP-SGD (``dp_sgd``) or a distributed round (``ddg``);
        returns the entry hash once the entry is durable."""
        if isinstance(event, DpSgdEvent):
            return self._append("dp_sgd", event.client_id, event.round, event.to_json())
        if isinstance(event, DdgEvent):
            return self._append(DDG_EVENT_KIND, event.client_id, event.round, event.to_json())
        raise LedgerError(f"append takes a DpSgdEvent or a DdgEvent. Found {event!r}.")

    def append_declined(
        self,
        planned_event: PrivacyEvent,
        *,
        reason: str,
        epsilon_now: float,
        epsilon_if_trained: float,
        budget_epsilon: float,
    ) -> str:
        """Record that the budget guard refused ``planned_event`` (nothing was trained)."""
        if not isinstance(planned_event, DpSgdEvent | DdgEvent):
            raise LedgerError(
                f"append_declined takes a DpSgdEvent or a DdgEvent. Found {planned_event!r}."
            )
        payload = canonical_json(
            {
                "schema_version": 1,
                "planned": planned_event.to_payload(),
                "reason": str(reason),
                "epsilon_now": float(epsilon_now),
                "epsilon_if_trained": float(epsilon_if_trained),
                "budget_epsilon": float(budget_epsilon),
            }
        )
        return self._append("declined", planned_event.client_id, planned_event.round, payload)

    def _append_run(self, kind: str, run_id: str, config_hash: str, extra: dict | None) -> str:
        check_client_id(run_id)  # same rules: non-empty, printable, bounded
        if not isinstance(config_hash, str) or not config_hash:
            raise LedgerError(f"config_hash must be a non-empty string. Found {config_hash!r}.")
        payload = canonical_json(
            {
                "schema_version": 1,
                "run_id": run_id,
                "config_hash": config_hash,
                "extra": dict(extra or {}),
            }
        )
        return self._append(kind, None, None, payload)

    def append_run_start(self, run_id: str, config_hash: str, extra: dict | None = None) -> str:
        return self._append_run("run_start", run_id, config_hash, extra)

    def append_run_end(self, run_id: str, config_hash: str, extra: dict | None = None) -> str:
        return self._append_run("run_end", run_id, config_hash, extra)

    # -- reads -------------------------------------------------------------------------------
    def entries(self) -> list[LedgerEntry]:
        return list(_iter_entries(self._conn))

    def head(self) -> tuple[int, str]:
        """(entry count, head hash); the genesis hash for an empty ledger."""
        return _head(self._conn, self.ledger_id)

    def events_by_client(self) -> dict[str, list[PrivacyEvent]]:
        """Every privacy-spending event (``dp_sgd``, ``ddg``), grouped by client, in ledger order
        (replay into the accountant)."""
        return events_by_client(self.entries())

    def events_for_client(self, client_id: str) -> list[PrivacyEvent]:
        """``client_id``'s privacy-spending events in ledger order — what the guard composes.

        Reads only this client's rows through the ``entries_client`` index: O(this client's
        history), not O(ledger). Each row's own hash is recomputed and its payload must name
        ``client_id`` (an edited row or ``client_id`` column raises :class:`LedgerError`); the
        chain links are :func:`verify`'s job. Equal to ``events_by_client().get(client_id, [])``
        on an intact ledger (``tests/privacy/test_ledger_index.py``).
        """
        try:
            check_client_id(client_id)
        except AccountingError as err:
            raise LedgerError(f"events_for_client: {err}") from None
        try:
            rows = self._conn.execute(CLIENT_EVENTS_SQL, (client_id,)).fetchall()
        except sqlite3.Error as err:
            raise LedgerError(f"cannot read ledger {str(self.path)!r}: {err}") from err
        out: list[PrivacyEvent] = []
        for row in rows:
            e = LedgerEntry(*row)
            if not hmac.compare_digest(entry_hash(*row[:7]), str(e.entry_hash)):
                raise LedgerError(
                    f"ledger entry {e.seq} fails its hash check; run `securefvpa ledger verify "
                    f"{self.path}`."
                )
            ev = e.event()
            if ev.client_id != client_id:
                raise LedgerError(
                    f"ledger entry {e.seq}: payload names client {ev.client_id!r}, its client_id "
                    f"column {client_id!r}; run `securefvpa ledger verify {self.path}`."
                )
            out.append(ev)
        return out


def _iter_entries(conn: sqlite3.Connection) -> Iterator[LedgerEntry]:
    for row in conn.execute(_SELECT + " ORDER BY seq"):
        yield LedgerEntry(*row)


def _head(conn: sqlite3.Connection, ledger_id: str) -> tuple[int, str]:
    count = conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
    row = conn.execute("SELECT entry_hash FROM entries ORDER BY seq DESC LIMIT 1").fetchone()
    return int(count), (row[0] if row else genesis_hash(ledger_id))


def events_by_client(entries: list[LedgerEntry]) -> dict[str, list[PrivacyEvent]]:
    out: dict[str, list[PrivacyEvent]] = {}
    for e in entries:
        if e.kind in EVENT_KINDS:
            ev = e.event()
            out.setdefault(ev.client_id, []).append(ev)
    return out


def _check_payload(e: LedgerEntry) -> str | None:
    """Why the payload of ``e`` is invalid, or None."""
    try:
        obj = json.loads(e.payload)
    except ValueError:
        return "payload is not JSON"
    try:
        if canonical_json(obj) != e.payload:
            return "payload is not canonical JSON"
    except AccountingError:
        return "payload is not canonical JSON"
    # dp_sgd payloads are events (schema 1, or 2 with ``attempt``); other kinds are schema 1.
    versions = {
        "dp_sgd": (1, EVENT_SCHEMA_VERSION),
        DDG_EVENT_KIND: (DDG_EVENT_SCHEMA_VERSION,),
    }.get(e.kind, (1,))
    if not isinstance(obj, dict) or obj.get("schema_version") not in versions:
        return "payload has no supported schema_version"
    if e.kind in (*EVENT_KINDS, "declined"):
        try:
            ev = e.event()
        except LedgerError as err:
            return str(err)
        if (ev.client_id, ev.round) != (e.client_id, e.round):
            return "client_id/round columns disagree with the payload"
        if e.kind == "declined":
            keys = {
                "schema_version",
                "planned",
                "reason",
                "epsilon_now",
                "epsilon_if_trained",
                "budget_epsilon",
            }
            if set(obj) != keys:
                return f"declined payload keys must be {sorted(keys)}"
    else:
        if set(obj) != {"schema_version", "run_id", "config_hash", "extra"}:
            return "run payload must have keys config_hash, extra, run_id, schema_version"
        if e.client_id is not None or e.round is not None:
            return "run entries must have NULL client_id and round"
    return None


def _is_environment_error(err: sqlite3.Error) -> bool:
    code = getattr(err, "sqlite_errorcode", None)
    return code is not None and (code & 0xFF) in _ENVIRONMENT_ERRORS


def read_entries(path: str | os.PathLike[str]) -> tuple[str, list[LedgerEntry]]:
    """(ledger id, entries) read without writing.

    Raises :class:`LedgerError` when ``path`` is missing, a folder or unreadable (bad input, or
    a lock that outlived the busy timeout), and :class:`LedgerCorruptError` when the file is
    readable but not an intact privacy ledger: SQLite's integrity check fails (a truncated or
    byte-flipped file, an index that disagrees with the table), the tables or meta keys are not a ledger's (an empty file,
    another database), or a text field is not UTF-8.
    """
    p = Path(path)
    if not p.exists():
        raise LedgerError(f"no privacy ledger at {str(p)!r}")
    if not p.is_file():
        raise LedgerError(f"{str(p)!r} is not a file; a privacy ledger is one SQLite file")
    try:
        with p.open("rb") as fh:
            fh.read(1)
    except OSError as err:
        raise LedgerError(f"cannot read privacy ledger {str(p)!r}: {err.strerror}") from None

    def corrupt(why: str) -> LedgerCorruptError:
        return LedgerCorruptError(f"{str(p)!r} is not an intact privacy ledger: {why}")

    try:
        conn = _connect(p, read_only=True, busy_timeout_s=60.0)
        try:
            # integrity_check, not quick_check: it also proves the entries_client index
            # matches the table, and the budget guard reads a client's history through it.
            check = [r[0] for r in conn.execute("PRAGMA integrity_check")]
            if check != ["ok"]:
                raise corrupt(f"SQLite integrity check failed ({'; '.join(check[:3])})")
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
            if not {"entries", "meta"} <= tables:
                missing = sorted({"entries", "meta"} - tables)
                raise corrupt(f"not a privacy ledger (no {' or '.join(missing)} table)")
            cols = tuple(r[1] for r in conn.execute("PRAGMA table_info(entries)"))
            if cols != _COLUMNS:
                raise corrupt(f"not a privacy ledger (entries table has columns {list(cols)})")
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            if set(meta) != {"schema_version", "ledger_id"}:
                raise corrupt(f"not a privacy ledger (meta table has keys {sorted(meta)})")
            version = meta["schema_version"]
            if version != LEDGER_SCHEMA_VERSION:
                if isinstance(version, str) and version.isdigit():
                    raise LedgerError(
                        f"ledger {str(p)!r}: schema_version {version!r}, expected "
                        f"{LEDGER_SCHEMA_VERSION!r} (written by another securefvpa version)"
                    )
                raise corrupt(f"schema_version {version!r} is not a version")
            conn.execute("BEGIN")  # one consistent snapshot
            entries = list(_iter_entries(conn))
            conn.execute("COMMIT")
        finally:
            conn.close()
    except sqlite3.Error as err:
        if _is_environment_error(err):
            raise LedgerError(f"cannot read privacy ledger {str(p)!r}: {err}") from err
        raise corrupt(str(err)) from err
    return str(meta["ledger_id"]), entries


def _check_link(i: int, e: LedgerEntry, prev: str) -> str | None:
    """Why entry ``e`` (expected at position ``i`` after hash ``prev``) is bad, or None."""
    if e.seq != i:
        return f"expected seq {i} (an entry was deleted, inserted or renumbered)"
    if e.kind not in KINDS:
        return f"unknown kind {e.kind!r}"
    if not hmac.compare_digest(str(e.prev_hash), prev):
        return "prev_hash does not match the previous entry's hash"
    try:
        recomputed = entry_hash(
            e.seq, e.timestamp, e.kind, e.client_id, e.round, e.payload, e.prev_hash
        )
    except LedgerError as err:
        return str(err)
    if not hmac.compare_digest(recomputed, str(e.entry_hash)):
        return "entry_hash does not match its contents (the entry was edited)"
    return _check_payload(e)


def verify_entries(
    ledger_id: str,
    entries: list[LedgerEntry],
    *,
    expected_head: str | None = None,
    expected_count: int | None = None,
) -> LedgerVerification:
    """Check the chain of ``entries``; see :func:`verify`."""
    prev = genesis_hash(ledger_id)
    for i, e in enumerate(entries, start=1):
        why = _check_link(i, e, prev)
        if why is not None:
            return LedgerVerification(False, len(entries), prev, e.seq, f"entry {e.seq}: {why}")
        prev = e.entry_hash
    n = len(entries)
    if expected_count is not None and n != expected_count:
        return LedgerVerification(
            False,
            n,
            prev,
            None,
            f"ledger has {n} entries; expected {expected_count} "
            "(entries were removed from, or added to, the end)",
        )
    if expected_head is not None and not hmac.compare_digest(prev, str(expected_head)):
        return LedgerVerification(
            False, n, prev, None, f"head hash {prev} differs from the expected {expected_head}"
        )
    return LedgerVerification(True, n, prev, None, f"ok: {n} entries, chain intact")


def check_anchor(ledger_id: str, entries: list[LedgerEntry], anchor: Anchor) -> str | None:
    """Why ``entries`` do not extend the history ``anchor`` recorded, or None.

    Entries appended after the anchor are allowed (a resumed run); fewer entries (tail
    truncation, rollback to an older copy), another hash at the anchored position (a rebuilt or
    edited chain) or another ledger id are not.
    """
    src = anchor.source
    if anchor.ledger_id is not None and anchor.ledger_id != ledger_id:
        return (
            f"ledger id {ledger_id} differs from {anchor.ledger_id} recorded in {src} "
            "(another or a rebuilt ledger)"
        )
    hashes = [genesis_hash(ledger_id)] + [str(e.entry_hash) for e in entries]
    if anchor.entry_count is None:
        if any(hmac.compare_digest(h, anchor.head_hash) for h in hashes):
            return None
        return (
            f"head hash {anchor.head_hash} from {src} is not in the chain (the ledger was "
            "truncated, rolled back or rewritten)"
        )
    n = anchor.entry_count
    if len(entries) < n:
        return (
            f"ledger has {len(entries)} entries; {src} recorded {n} (entries were removed from "
            "the end, or an older copy was put back)"
        )
    if not hmac.compare_digest(hashes[n], anchor.head_hash):
        return (
            f"head hash after {n} entries is {hashes[n]}, {src} recorded {anchor.head_hash} "
            "(the history up to the anchor was rewritten)"
        )
    return None


def _grown_note(entries: list[LedgerEntry], anchor: Anchor) -> str | None:
    n = anchor.entry_count
    if n is None:
        at = next((i for i, e in enumerate(entries, 1) if e.entry_hash == anchor.head_hash), 0)
        n = at
    if len(entries) > n:
        return f"{len(entries) - n} entries appended after the anchor in {anchor.source}"
    return None


def verify(
    path: str | os.PathLike[str],
    *,
    expected_head: str | None = None,
    expected_count: int | None = None,
    anchors: Sequence[Anchor] = (),
) -> LedgerVerification:
    """Verify the ledger at ``path`` without writing to it.

    Returns ``ok=False`` with the first bad seq and why on any broken link, and ``ok=False``
    with the reason when the file is not an intact ledger (:class:`LedgerCorruptError`). Tail
    truncation, rollback and a recomputed chain are caught only against an anchor:
    ``expected_head`` / ``expected_count`` must equal the ledger's head and count now;
    each of ``anchors`` must be a prefix of the chain (:func:`check_anchor`; later entries are
    noted, not failed). A missing or unreadable path raises :class:`LedgerError`.
    """
    try:
        ledger_id, entries = read_entries(path)
    except LedgerCorruptError as err:
        return LedgerVerification(False, 0, "", None, str(err))
    res = verify_entries(
        ledger_id, entries, expected_head=expected_head, expected_count=expected_count
    )
    if not res.ok:
        return res
    notes: list[str] = []
    for anchor in anchors:
        why = check_anchor(ledger_id, entries, anchor)
        if why is not None:
            return LedgerVerification(False, res.entry_count, res.head_hash, None, why)
        note = _grown_note(entries, anchor)
        if note:
            notes.append(note)
    return LedgerVerification(True, res.entry_count, res.head_hash, None, res.reason, tuple(notes))
