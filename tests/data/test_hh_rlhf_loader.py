"""Relabeled HH-RLHF loader: on the real files (if available) and on small crafted files."""

from __future__ import annotations

import gzip
import json
import logging
import os
from pathlib import Path

import pytest

from securefvpa.data import hh_rlhf
from securefvpa.data.hh_rlhf import load_hh_rlhf, load_hh_rlhf_with_stats
from securefvpa.errors import DataError

REAL = os.environ.get("SECUREFVPA_HH_RLHF_DIR", "")
needs_real = pytest.mark.skipif(not REAL, reason="SECUREFVPA_HH_RLHF_DIR is not set")


def _raw_rows(directory: Path) -> dict[str, dict]:
    rows = {}
    for rel in hh_rlhf.FILES:
        with gzip.open(directory / rel, "rt", encoding="utf-8") as fh:
            for line in fh:
                obj = json.loads(line)
                rows[f"hh-{obj['objective']}-{obj['Index']}"] = obj
    return rows


@needs_real
def test_real_files_mapping_and_counts() -> None:
    root = Path(REAL)
    recs, st = load_hh_rlhf_with_stats(root, pairs_per_user=4, seed=3, max_pairs=42)
    assert st.rows_read == 42 and not st.sha256_mismatch
    # 21 usable rows per file (no unusable rows among the first ones) -> 5 users each, 1 left
    assert len(recs) == 40 and st.leftover_pairs == 2 and st.users == 10
    raw = _raw_rows(root)
    users: dict[str, set[str | None]] = {}
    for r in recs:
        obj = raw[r.pair_id]
        assert r.user_type == obj["objective"] and r.user_id.startswith(obj["objective"] + "-")
        assert r.chosen == obj["responses"][obj["label"]]
        assert r.rejected == obj["responses"][1 - obj["label"]]
        assert r.prompt == obj["prompt"] and r.controversial is None
        users.setdefault(r.user_id, set()).add(r.user_type)
    assert len(users) == 10 and all(len(t) == 1 for t in users.values())
    assert sorted(u.split("-")[0] for u in users) == ["harmless"] * 5 + ["helpful"] * 5
    again = load_hh_rlhf(root, pairs_per_user=4, seed=3, max_pairs=42)
    assert again == recs
    other = load_hh_rlhf(root, pairs_per_user=4, seed=4, max_pairs=42)
    assert {r.pair_id for r in other} != {r.pair_id for r in recs} or other != recs


@needs_real
def test_real_files_full_read_counts() -> None:
    recs, st = load_hh_rlhf_with_stats(Path(REAL), pairs_per_user=16, seed=0)
    assert st.rows_read == 2157 + 1886
    assert st.rows_read == st.pairs_used + sum(st.skipped.values()) + st.leftover_pairs
    assert st.skipped["identical responses"] >= 2  # two such rows are known in helpful/test


def _row(i: int, label: int, objective: str = "helpful", **kw: object) -> dict:
    return {"prompt": f"Human: question {i}", "responses": [f"first {i}", f"second {i}"],
            "label": label, "objective": objective, "Index": i, **kw}


def _make_dir(tmp_path: Path, helpful: list, harmless: list) -> Path:
    for name, rows in (("helpful", helpful), ("harmless", harmless)):
        (tmp_path / name).mkdir(parents=True, exist_ok=True)
        with gzip.open(tmp_path / name / "test.jsonl.gz", "wt", encoding="utf-8") as fh:
            for row in rows:
                fh.write(row if isinstance(row, str) else json.dumps(row))
                fh.write("\n")
    return tmp_path


def test_unusable_rows_counted_and_sha_warned(tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    good = [_row(i, i % 2) for i in range(5)]
    bad = [
        {k: v for k, v in _row(10, 0).items() if k != "label"},
        _row(11, 0, responses=["same", "same"]),
        _row(12, 0, responses=["only one"]),
        _row(13, 2),
        _row(14, 0, responses=["", "x"]),
    ]
    d = _make_dir(tmp_path, good + bad, [_row(20 + i, 0, "harmless") for i in range(4)])
    with caplog.at_level(logging.INFO, logger="securefvpa.data"):
        recs, st = load_hh_rlhf_with_stats(d, pairs_per_user=2, seed=0)
    assert sum(st.skipped.values()) == 5 and st.skipped["identical responses"] == 1
    assert st.leftover_pairs == 1 and len(recs) == 8
    assert st.sha256_mismatch == list(hh_rlhf.FILES)
    assert "differs from the published" in caplog.text
    assert "skipped 5 unusable rows" in caplog.text
    assert "dropped 1 leftover pairs" in caplog.text


def test_response_position_never_matters(tmp_path: Path) -> None:
    rows = [_row(i, i % 2) for i in range(8)]
    swapped = [dict(r, responses=r["responses"][::-1], label=1 - r["label"]) for r in rows]
    a = load_hh_rlhf(_make_dir(tmp_path / "a", rows, rows[:0]), pairs_per_user=4, seed=1)
    b = load_hh_rlhf(_make_dir(tmp_path / "b", swapped, rows[:0]), pairs_per_user=4, seed=1)
    assert a == b and len(a) == 8


def test_malformed_json_names_file_and_line(tmp_path: Path) -> None:
    d = _make_dir(tmp_path, [_row(0, 0), "{not json"], [])
    with pytest.raises(DataError, match=r"helpful/test\.jsonl\.gz:2: invalid JSON"):
        load_hh_rlhf(d, pairs_per_user=2, seed=0)


def test_missing_file(tmp_path: Path) -> None:
    (tmp_path / "helpful").mkdir()
    with pytest.raises(DataError, match="file missing"):
        load_hh_rlhf(tmp_path, pairs_per_user=2, seed=0)
