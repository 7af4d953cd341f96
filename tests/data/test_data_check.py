"""Own data (issue 12, item 6): `data check` refuses an empty file and reports degenerate pairs
by pair id; short users are dropped by ``data.min_pairs_per_user`` instead of refusing everything;
JSONL is split on "\\n" only."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from securefvpa.cli import main
from securefvpa.config import config_from_dict
from securefvpa.data.check import check_records
from securefvpa.data.jsonl import read_records, write_records
from securefvpa.data.load import build_records
from securefvpa.data.records import PreferenceRecord
from securefvpa.errors import ConfigError, DataError


def _rec(pair: str, chosen: str, rejected: str, *, user: str = "u1", prompt: str = "Human: hi"):
    return PreferenceRecord(user, pair, prompt, chosen, rejected)


@pytest.mark.parametrize("text", ["", "\n", "  \n\n\t\n"])
def test_data_check_refuses_an_empty_file(tmp_path, capsys, text):
    """Mutant caught: `data check` printing "0 valid records" with exit 0."""
    p = tmp_path / "empty.jsonl"
    p.write_text(text)
    assert main(["data", "check", str(p)]) == 2
    err = capsys.readouterr().err
    assert "empty.jsonl" in err and "no records" in err


LONG = " ".join(f"word{i}" for i in range(400))  # far more than 256 tokens
MID = " ".join(f"w{i}" for i in range(30))  # more than 16 tokens, far fewer than 256


def test_data_check_reports_degenerate_pairs_by_pair_id(tmp_path, capsys):
    """Mutants caught: no whitespace normalisation (p-ws passes), right instead of left
    truncation or no tokenisation (p-trunc passes), the config's max_tokens ignored (p-mid
    passes), a check that flags honest pairs (p-ok, p-head)."""
    recs = [
        _rec("p-ok", "Sure, here you go.", "No."),
        _rec("p-ws", "Hello   there,\n friend", " Hello there, friend\t"),
        _rec("p-trunc", "Yes! " + LONG, "Absolutely not. " + LONG),
        _rec("p-head", LONG + " yes", LONG + " no"),  # differs at the end: kept by truncation
        _rec("p-mid", "Yes! " + MID, "No. " + MID),  # a tie at 16 tokens, not at 256
    ]
    p = tmp_path / "pairs.jsonl"
    write_records(p, recs)
    cfg = tmp_path / "c.toml"
    cfg.write_text('[data]\nsource = "jsonl"\npath = "x.jsonl"\n[embedding]\nmax_tokens = 16\n')
    assert main(["data", "check", str(p), "--config", str(cfg)]) == 2
    cap = capsys.readouterr()
    assert "p-ws" in cap.err and "whitespace" in cap.err
    assert "p-trunc" in cap.err and "p-mid" in cap.err and "max_tokens=16" in cap.err
    assert "p-ok" not in cap.err and "p-head" not in cap.err
    # with the default max_tokens (256) p-trunc's 400 shared words still tie, p-mid does not
    result = check_records(recs, max_tokens=256)
    assert result.whitespace_identical == ["p-ws"]
    assert result.truncation_identical == ["p-trunc"]
    assert check_records([recs[0], recs[3]], max_tokens=16).ok


def test_data_check_passes_a_clean_file_and_summarises_it(tmp_path, capsys):
    p = tmp_path / "ok.jsonl"
    write_records(p, [_rec(f"p{i}", f"answer {i}", f"other {i}", user=f"u{i % 2}")
                      for i in range(6)])
    assert main(["data", "check", str(p)]) == 0
    out = capsys.readouterr().out
    assert "6 valid records, 2 users" in out and "pairs per user" in out


# -- JSONL: "\n" only -----------------------------------------------------------------------------

SEPARATORS = {
    "U+2028": "\u2028",
    "U+2029": "\u2029",
    "U+0085": "\u0085",
    "CR": "\r",
    "CRLF": "\r\n",
    "VT": "\x0b",
    "FF": "\x0c",
    "FS": "\x1c",
    "GS": "\x1d",
    "RS": "\x1e",
}


@pytest.mark.parametrize("name", sorted(SEPARATORS))
def test_every_line_separator_inside_text_round_trips(tmp_path, name):
    """Mutant caught: str.splitlines() (splits U+2028, U+2029, U+0085 inside JSON strings)."""
    sep = SEPARATORS[name]
    recs = [
        PreferenceRecord("u1", "p1", f"Human: a{sep}b", f"yes{sep}indeed", f"no{sep}", "t", True),
        PreferenceRecord("u1", "p2", "", f"{sep}lead", "plain", None, None),
    ]
    out = tmp_path / "r.jsonl"
    write_records(out, recs)
    assert read_records(out) == recs


def test_crlf_files_are_read(tmp_path):
    line = json.dumps({"user_id": "u", "pair_id": "p", "prompt": "", "chosen": "a",
                       "rejected": "b"})
    p = tmp_path / "w.jsonl"
    p.write_bytes((line + "\r\n" + "\r\n").encode())
    assert [r.pair_id for r in read_records(p)] == ["p"]


def test_json_error_messages_are_well_formed(tmp_path):
    """Mutant caught: "(Unterminated string starting at at column 13)"."""
    p = tmp_path / "bad.jsonl"
    p.write_text('{"user_id": "u1", "pair_id": "p1\n')
    with pytest.raises(DataError) as err:
        read_records(p)
    msg = str(err.value)
    assert "at at" not in msg and "column 30" in msg and "bad.jsonl:1" in msg


# -- data.min_pairs_per_user ----------------------------------------------------------------------


def _jsonl_config(path: Path, **data) -> object:
    return config_from_dict({"data": {"source": "jsonl", "path": str(path), **data}})


def _users_file(tmp_path: Path, counts: dict[str, int]) -> Path:
    recs = [
        _rec(f"{u}-{i}", f"good {u} {i}", f"bad {u} {i}", user=u)
        for u, n in counts.items()
        for i in range(n)
    ]
    p = tmp_path / "users.jsonl"
    write_records(p, recs)
    return p


def test_short_users_are_dropped_with_a_logged_count(tmp_path, caplog):
    """Mutant caught: no min_pairs_per_user (one 1-pair user refused the whole data set)."""
    p = _users_file(tmp_path, {"a": 8, "b": 1, "c": 5, "d": 4})
    cfg = _jsonl_config(p)  # default: heldout_pairs + 1 = 5, the least the split needs
    assert cfg.data.min_pairs_per_user == 0
    with caplog.at_level(logging.INFO, logger="securefvpa.data"):
        records, info = build_records(cfg)
    assert {r.user_id for r in records} == {"a", "c"}
    assert info["users_dropped_short"] == 2 and info["min_pairs_per_user"] == 5
    assert "dropped 2 users with fewer than 5 pairs" in caplog.text
    records, info = build_records(_jsonl_config(p, min_pairs_per_user=6))
    assert {r.user_id for r in records} == {"a"} and info["users_dropped_short"] == 3


def test_min_pairs_per_user_below_what_the_split_needs_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"data.min_pairs_per_user .* Found 3"):
        _jsonl_config(tmp_path / "x.jsonl", min_pairs_per_user=3)


def test_all_users_too_short_names_the_setting(tmp_path):
    p = _users_file(tmp_path, {"a": 2, "b": 3})
    with pytest.raises(DataError, match="min_pairs_per_user"):
        build_records(_jsonl_config(p))
