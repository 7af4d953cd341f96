"""JSONL records: every bad line names file, line and field; writes are atomic round trips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from securefvpa.data.jsonl import read_records, write_records
from securefvpa.data.records import PreferenceRecord
from securefvpa.errors import DataError

GOOD = {"user_id": "u1", "pair_id": "p1", "prompt": "Human: hi", "chosen": "Hello!",
        "rejected": "Go away.", "user_type": "helpful", "controversial": False}


def _write(tmp_path: Path, lines: list[str]) -> Path:
    p = tmp_path / "records.jsonl"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


def _line(**changes: object) -> str:
    obj = {**GOOD, "pair_id": "p2", **changes}
    return json.dumps({k: v for k, v in obj.items() if v is not ...})


@pytest.mark.parametrize(
    ("bad_line", "field"),
    [
        ('{"user_id": "u1", "pair_id": ', "invalid JSON"),
        (_line(chosen=...), "'chosen'"),
        (_line(prompt=3), "'prompt'"),
        (_line(user_id=None), "'user_id'"),
        (_line(chosen="   "), "'chosen'"),
        (_line(chosen="same", rejected="same"), "'chosen'"),
        (_line(extra="x"), "'extra'"),
        (_line(controversial="yes"), "'controversial'"),
        (_line(user_type=""), "'user_type'"),
        (_line(pair_id="p1"), "'pair_id'"),
        ("[1, 2]", "JSON object"),
    ],
)
def test_bad_line_names_file_line_and_field(tmp_path: Path, bad_line: str, field: str) -> None:
    p = _write(tmp_path, [json.dumps(GOOD), "", bad_line])
    with pytest.raises(DataError) as err:
        read_records(p)
    msg = str(err.value)
    assert f"{p}:3" in msg  # the blank line 2 still counts
    assert field in msg


def test_duplicate_pair_id_names_both_lines(tmp_path: Path) -> None:
    p = _write(tmp_path, [json.dumps(GOOD), _line(pair_id="p9"), _line(pair_id="p1")])
    msg = r"records\.jsonl:3: field 'pair_id' 'p1' duplicates line 1"
    with pytest.raises(DataError, match=msg):
        read_records(p)


def test_missing_file_is_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        read_records(tmp_path / "nope.jsonl")


def test_round_trip_and_blank_lines(tmp_path: Path) -> None:
    recs = [
        PreferenceRecord("u1", "p1", "Human: hi", "Hello!", "Go away.", "helpful", False),
        PreferenceRecord("u1", "p2", "", "Yes — ünïcødé ✓", "No", None, None),
        PreferenceRecord("u2", "p3", "Human: a\n\nAssistant: b\n\nHuman: c", "d", "e", "x", True),
    ]
    out = tmp_path / "sub" / "r.jsonl"
    assert write_records(out, recs) == 3
    assert read_records(out) == recs
    out.write_text("\n\n" + out.read_text(encoding="utf-8") + "\n   \n", encoding="utf-8")
    assert read_records(out) == recs
    assert [p.name for p in out.parent.iterdir()] == ["r.jsonl"]  # no temp file left behind


def test_write_refuses_duplicates_and_keeps_old_file(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    good = [PreferenceRecord("u", "p1", "", "a", "b")]
    write_records(out, good)
    with pytest.raises(DataError, match="duplicate pair_id 'p1'"):
        write_records(out, good + good)
    assert read_records(out) == good
