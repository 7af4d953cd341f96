"""Canonical preference records as JSON Lines: one :class:`PreferenceRecord` object per line.

Reading validates every line through :meth:`PreferenceRecord.from_json`, so every error names the
file, the 1-based line and the field. Lines are separated by ``"\n"`` only (JSON Lines; a ``"\r"``
before it is JSON whitespace): ``str.splitlines`` would also split at U+2028, U+2029, U+0085 and
other separators that ``json.dumps(..., ensure_ascii=False)`` writes raw inside strings, breaking
the write -> read round trip. Blank lines are skipped. Writing is atomic (temporary file in the
same folder, then ``os.replace``), so a reader never sees half a file.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from securefvpa.data.records import PreferenceRecord
from securefvpa.errors import DataError
from securefvpa.fsutil import atomic_write_text


def read_records(path: str | Path) -> list[PreferenceRecord]:
    """Read and validate every record of a JSONL file.

    Raises :class:`DataError` naming file and line for invalid JSON, a record that fails
    validation (the message also names the field), or a ``pair_id`` seen on an earlier line.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"JSONL file not found: {str(p)!r}") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{p}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise DataError(f"cannot read JSONL file {str(p)!r}: {exc.strerror}") from None
    records: list[PreferenceRecord] = []
    first_line: dict[str, int] = {}
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{p}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            # Some messages end in "at" ("Unterminated string starting at"): add the column
            # without a second "at".
            at = "" if exc.msg.endswith(" at") else " at"
            raise DataError(f"{where}: invalid JSON ({exc.msg}{at} column {exc.colno})") from None
        rec = PreferenceRecord.from_json(obj, where=where)
        if rec.pair_id in first_line:
            raise DataError(
                f"{where}: field 'pair_id' {rec.pair_id!r} duplicates line "
                f"{first_line[rec.pair_id]}"
            )
        first_line[rec.pair_id] = lineno
        records.append(rec)
    return records


def write_records(path: str | Path, records: Iterable[PreferenceRecord]) -> int:
    """Write ``records`` as JSONL atomically; returns the number of records written.

    Duplicate ``pair_id`` values are refused (:class:`DataError`) so that what is written can
    always be read back; so is a path that cannot be written (a folder, a parent that is a file,
    no permission), naming the path.
    """
    p = Path(path)
    seen: set[str] = set()
    lines: list[str] = []
    for rec in records:
        if rec.pair_id in seen:
            raise DataError(f"cannot write {str(p)!r}: duplicate pair_id {rec.pair_id!r}")
        seen.add(rec.pair_id)
        lines.append(json.dumps(rec.to_json(), ensure_ascii=False))
    if p.is_dir():
        raise DataError(f"cannot write {str(p)!r}: it is a directory")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(p, "".join(line + "\n" for line in lines))
    except OSError as exc:
        raise DataError(f"cannot write {str(p)!r}: {exc.strerror or exc}") from None
    return len(lines)
