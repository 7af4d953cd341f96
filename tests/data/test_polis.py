"""Polis loader: votes -> preference records, checked files, per-conversation user splits.

Most tests write a tiny Polis folder (three conversations, the real file layout) into tmp_path
with its own SHA-256 table; two read the real folder ($SECUREFVPA_POLIS_DIR) when it is set.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from securefvpa.config import config_from_dict
from securefvpa.data import polis
from securefvpa.data.dataset import EmbeddedPairs
from securefvpa.data.load import build_records, load_dataset
from securefvpa.data.polis import load_polis, load_polis_with_stats, read_conversation
from securefvpa.data.records import PreferenceRecord
from securefvpa.data.split import split_users, user_folds
from securefvpa.errors import ConfigError, DataError

REAL = os.environ.get("SECUREFVPA_POLIS_DIR", "")
needs_real = pytest.mark.skipif(
    not REAL, reason="SECUREFVPA_POLIS_DIR is not set (the Makefile and .ci/run set it to "
    "../shared/data/polis)")

# The README table of the real folder: participants, with a group, groups, statements.
README_TABLE = {
    "15-per-hour-seattle": (339, 138, 2, 54),
    "american-assembly.bowling-green": (2031, 1581, 2, 896),
    "brexit-consensus": (204, 197, 2, 50),
    "canadian-electoral-reform": (448, 281, 2, 174),
    "football-concussions": (1487, 1434, 2, 298),
    "london.youth.policing": (26, 24, 3, 39),
    "scoop-hivemind.affordable-housing": (381, 381, 2, 165),
    "scoop-hivemind.biodiversity": (536, 443, 2, 316),
    "scoop-hivemind.freshwater": (117, 117, 2, 80),
    "scoop-hivemind.taxes": (334, 295, 2, 148),
    "scoop-hivemind.ubi": (234, 234, 4, 71),
}

# ---------------------------------------------------------------------------------------------
# A tiny Polis folder. Each conversation: statement id -> (text, moderated); participants as
# (participant, group or None, {statement id: vote cell}). Votes are generated from a fixed rule.

MODERATED_TEXT = "REMOVED BY THE MODERATOR, never a response"


def _statements(name: str, n: int) -> dict[int, tuple[str, int]]:
    out = {i: (f"{name} statement {i}: a view, with a comma", 1 if i % 2 else 0)
           for i in range(n)}
    out[3] = (MODERATED_TEXT, -1)
    return out


def _participants(name: str, n: int, n_statements: int, seed: int
                  ) -> list[tuple[int, int | None, dict[int, str]]]:
    rng = np.random.default_rng(seed)
    people: list[tuple[int, int | None, dict[int, str]]] = []
    for k in range(n):
        group = k % 2
        votes = {}
        for s in range(n_statements):
            # group 0 leans agree on even statements, group 1 on odd ones; passes and unseen too
            lean = 1 if (s % 2 == group) else -1
            r = rng.random()
            votes[s] = "" if r < 0.15 else "0" if r < 0.3 else str(lean if r < 0.85 else -lean)
        votes[3] = "1" if k % 3 else "-1"  # many votes on the moderated statement
        people.append((10 + 7 * k, group, votes))
    # an ungrouped participant with enough votes, and one with too few pairs
    people.append((900, None, {0: "1", 1: "1", 2: "-1", 4: "-1", 5: "0", 3: "1"}))
    people.append((901, 0, {0: "1", 2: "-1", 3: "-1"}))
    return people


CONVERSATIONS = {
    "alpha": dict(n_statements=8, n_people=12, seed=1, description="Alpha's description."),
    "beta": dict(n_statements=6, n_people=9, seed=2, description=""),
    "gamma.sub": dict(n_statements=7, n_people=10, seed=3, description="Multi-line\ntext."),
}


def _csv(rows: list[list[str]]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def _fixture_tables(name: str) -> dict[str, list[list[str]]]:
    spec = CONVERSATIONS[name]
    stmts = _statements(name, int(spec["n_statements"]))
    people = _participants(name, int(spec["n_people"]), int(spec["n_statements"]),
                           int(spec["seed"]))
    ids = sorted(stmts)
    summary = [["topic", f"Topic of {name}"], ["url", "https://pol.is/x"],
               ["conversation-description", str(spec["description"])]]
    comments = [["timestamp", "datetime", "comment-id", "author-id", "agrees", "disagrees",
                 "moderated", "comment-body"]]
    for i in ids:
        comments.append(["1", "d", str(i), "0", "1", "1", str(stmts[i][1]), stmts[i][0]])
    meta = ["participant", "xid", "group-id", "n-comments", "n-votes", "n-agree", "n-disagree"]
    votes = [meta + [str(i) for i in ids]]
    for pid, group, v in people:
        votes.append([str(pid), "", "" if group is None else str(group), "0", "0", "0", "0"]
                     + [v.get(i, "") for i in ids])
    return {"summary.csv": summary, "comments.csv": comments, "participants-votes.csv": votes}


def write_fixture(root: Path, edit: dict[tuple[str, str], str] | None = None
                  ) -> tuple[Path, dict[str, str]]:
    """Write the folder; ``edit[(conversation, file)]`` replaces that file's text. Returns the
    folder and its own digest table (of the files as written)."""
    digests = {}
    for name in CONVERSATIONS:
        (root / name).mkdir(parents=True, exist_ok=True)
        for fname, rows in _fixture_tables(name).items():
            text = (edit or {}).get((name, fname), _csv(rows))
            (root / name / fname).write_text(text, encoding="utf-8")
            digests[f"{name}/{fname}"] = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return root, digests


def expected_votes(name: str) -> dict[str, tuple[set[str], set[str], str | None]]:
    """user_id -> (agreed texts, disagreed texts, user_type), from the fixture's own tables
    (moderated statements left out), independently of the loader."""
    spec = CONVERSATIONS[name]
    stmts = _statements(name, int(spec["n_statements"]))
    out = {}
    for pid, group, votes in _participants(name, int(spec["n_people"]),
                                           int(spec["n_statements"]), int(spec["seed"])):
        agree = {stmts[s][0] for s, v in votes.items() if v == "1" and stmts[s][1] != -1}
        dis = {stmts[s][0] for s, v in votes.items() if v == "-1" and stmts[s][1] != -1}
        out[f"{name}/p{pid}"] = (agree, dis, None if group is None else f"{name}/g{group}")
    return out


def by_user(records: list[PreferenceRecord]) -> dict[str, list[PreferenceRecord]]:
    out: dict[str, list[PreferenceRecord]] = {}
    for r in records:
        out.setdefault(r.user_id, []).append(r)
    return out


@pytest.fixture
def folder(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    return write_fixture(tmp_path / "polis")


# ---------------------------------------------------------------------------------------------


def test_records_follow_the_votes(folder: tuple[Path, dict[str, str]]) -> None:
    root, digests = folder
    recs = load_polis(root, pairs_per_user=1000, min_pairs=1, seed=0, digests=digests)
    expected = {u: v for name in CONVERSATIONS for u, v in expected_votes(name).items()}
    users = by_user(recs)
    assert set(users) == {u for u, (a, d, _) in expected.items() if a and d}
    for uid, rs in users.items():
        agree, dis, utype = expected[uid]
        conv = uid.split("/")[0]
        desc = CONVERSATIONS[conv]["description"]
        for r in rs:
            assert r.chosen in agree and r.rejected in dis  # never a pass, never swapped
            assert r.user_type == utype and r.controversial is None
            assert r.prompt == (f"Topic of {conv}\n\n{desc}" if desc else f"Topic of {conv}")
        # with the cap above A * D every (agreed, disagreed) text pair appears exactly once
        assert sorted((r.chosen, r.rejected) for r in rs) == sorted(
            (a, d) for a in agree for d in dis)
    assert users["alpha/p900"][0].user_type is None  # the ungrouped participant keeps no type
    assert len({r.pair_id for r in recs}) == len(recs)


def test_moderated_statements_are_never_used(folder: tuple[Path, dict[str, str]]) -> None:
    root, digests = folder
    conv = read_conversation(root, "alpha", digests=digests)
    assert conv.moderated_out == frozenset({3}) and 3 not in conv.statements
    for seed in range(3):
        for cap in (4, 1000):
            recs = load_polis(root, pairs_per_user=cap, min_pairs=1, seed=seed, digests=digests)
            texts = {r.chosen for r in recs} | {r.rejected for r in recs}
            assert MODERATED_TEXT not in texts and all("/3>" not in r.pair_id
                                                       and not r.pair_id.endswith(">3")
                                                       for r in recs)


def test_statements_with_the_same_text_count_once(tmp_path: Path) -> None:
    """Statements 1 and 5 share a text: a participant who agreed with one and disagreed with
    the other has no preference on it (the text is dropped for them), and no pair repeats."""
    rows = _fixture_tables("alpha")["comments.csv"]
    rows[6][7] = rows[2][7]  # statement 5 gets statement 1's text
    root, digests = write_fixture(tmp_path, {("alpha", "comments.csv"): _csv(rows)})
    recs = load_polis(root, pairs_per_user=1000, min_pairs=1, seed=0, conversations=["alpha"],
                      digests=digests)
    twin = rows[2][7]
    votes = {f"alpha/p{pid}": v for pid, _, v in _participants("alpha", 12, 8, 1)}
    conflicted = {u for u, v in votes.items() if {v.get(1), v.get(5)} == {"1", "-1"}}
    assert conflicted  # the fixture has such participants
    for uid, rs in by_user(recs).items():
        assert all(r.chosen != r.rejected for r in rs)
        assert len({(r.chosen, r.rejected) for r in rs}) == len(rs)
        if uid in conflicted:
            assert twin not in {r.chosen for r in rs} | {r.rejected for r in rs}


def test_cap_min_pairs_and_dropped_count(folder: tuple[Path, dict[str, str]],
                                         caplog: pytest.LogCaptureFixture) -> None:
    root, digests = folder
    with caplog.at_level(logging.INFO, logger="securefvpa.data"):
        recs, st = load_polis_with_stats(root, pairs_per_user=6, seed=0, digests=digests)
    counts = Counter(r.user_id for r in recs)
    assert set(counts.values()) == {6}  # default min_pairs = the cap: exactly 6 each
    expected = {u: len(a) * len(d) for name in CONVERSATIONS
                for u, (a, d, _) in expected_votes(name).items()}
    assert set(counts) == {u for u, n in expected.items() if n >= 6}
    dropped = sum(1 for n in expected.values() if n < 6)
    assert dropped >= 3 and st.total("dropped") == dropped  # p901 (1 pair) in each conversation
    assert st.as_info()["polis_users_dropped_few_pairs"] == dropped
    assert f"dropped {dropped} of {len(expected)} participants with fewer than 6" in caplog.text
    recs1 = load_polis(root, pairs_per_user=6, min_pairs=1, seed=0, digests=digests)
    counts1 = Counter(r.user_id for r in recs1)
    assert all(counts1[u] == min(6, n) for u, n in expected.items() if n >= 1)
    assert max(counts1.values()) == 6 and min(counts1.values()) == 1
    with pytest.raises(ConfigError, match=r"min_pairs must be in \[1, pairs_per_user=6\]. "
                                          r"Found 7"):
        load_polis(root, pairs_per_user=6, min_pairs=7, seed=0, digests=digests)


def test_deterministic_by_seed_and_independent_of_the_filter(
        folder: tuple[Path, dict[str, str]]) -> None:
    root, digests = folder
    a = load_polis(root, pairs_per_user=5, seed=7, digests=digests)
    assert a == load_polis(root, pairs_per_user=5, seed=7, digests=digests)
    b = load_polis(root, pairs_per_user=5, seed=8, digests=digests)
    assert {r.pair_id for r in a} != {r.pair_id for r in b}
    only = load_polis(root, pairs_per_user=5, seed=7, conversations=["beta"], digests=digests)
    assert only and {r.user_id.split("/")[0] for r in only} == {"beta"}
    assert only == [r for r in a if r.user_id.startswith("beta/")]  # same users, same pairs
    # the order of a user's pairs is a seeded shuffle, not the statement-id order
    full = by_user(load_polis(root, pairs_per_user=1000, min_pairs=1, seed=7, digests=digests))
    orders = [[r.pair_id for r in rs] for rs in full.values() if len(rs) >= 6]
    assert orders and any(o != sorted(o) for o in orders)


def test_statement_ids_and_columns_do_not_matter(tmp_path: Path) -> None:
    """Renumber the statements and reorder the vote columns: every user keeps the same
    (prompt, chosen text, rejected text) pairs, so nothing but the text can carry a signal."""
    root_a, dig_a = write_fixture(tmp_path / "a")
    edit = {}
    for name in CONVERSATIONS:
        t = _fixture_tables(name)
        ids = [int(row[2]) for row in t["comments.csv"][1:]]
        new_id = {i: 100 + (5 * i + 3) % 97 for i in ids}  # a bijection that breaks the order
        comments = [t["comments.csv"][0]] + [row[:2] + [str(new_id[int(row[2])])] + row[3:]
                                             for row in reversed(t["comments.csv"][1:])]
        votes = t["participants-votes.csv"]
        perm = [7 + k for k in np.random.default_rng(0).permutation(len(ids))]
        head = votes[0][:7] + [str(new_id[int(votes[0][j])]) for j in perm]
        body = [row[:7] + [row[j] for j in perm] for row in votes[1:]]
        edit[(name, "comments.csv")] = _csv(comments)
        edit[(name, "participants-votes.csv")] = _csv([head, *body])
    root_b, dig_b = write_fixture(tmp_path / "b", edit)

    def content(root: Path, dig: dict[str, str]) -> dict[str, list[tuple[str, str, str]]]:
        recs = load_polis(root, pairs_per_user=1000, min_pairs=1, seed=0, digests=dig)
        return {u: sorted((r.prompt, r.chosen, r.rejected) for r in rs)
                for u, rs in by_user(recs).items()}

    assert content(root_a, dig_a) == content(root_b, dig_b)


@pytest.mark.parametrize(
    ("conv", "fname", "line", "col", "new", "needle"),
    [
        # line 3 is participant 17's row: a vote that is not 1/-1/0/empty, in statement 4's column
        ("alpha", "participants-votes.csv", 3, "4", "2",
         r"alpha/participants-votes\.csv:3: column '4' \(field 12\) must be 1, -1, 0 or empty. "
         r"Found '2'\."),
        ("beta", "participants-votes.csv", 4, "group-id", "g1",
         r"beta/participants-votes\.csv:4: column 'group-id' \(field 3\) must be an integer "
         r">= 0 or empty. Found 'g1'\."),
        ("beta", "participants-votes.csv", 2, "participant", "-1",
         r"beta/participants-votes\.csv:2: column 'participant' \(field 1\) must be an integer"),
        ("gamma.sub", "comments.csv", 6, "moderated", "maybe",
         r"gamma\.sub/comments\.csv:6: column 'moderated' \(field 7\) must be -1, 0 or 1. "
         r"Found 'maybe'\."),
        ("alpha", "comments.csv", 2, "comment-id", "x1",
         r"alpha/comments\.csv:2: column 'comment-id' \(field 3\) must be an integer >= 0"),
        ("alpha", "comments.csv", 3, "comment-body", "   ",
         r"alpha/comments\.csv:3: column 'comment-body' \(field 8\) must not be empty"),
    ],
)
def test_bad_cells_name_file_line_and_column(tmp_path: Path, conv: str, fname: str, line: int,
                                             col: str, new: str, needle: str) -> None:
    rows = _fixture_tables(conv)[fname]
    rows[line - 1][rows[0].index(col)] = new  # no multi-line field before these lines
    root, digests = write_fixture(tmp_path, {(conv, fname): _csv(rows)})
    with pytest.raises(DataError, match=needle):
        load_polis(root, pairs_per_user=4, seed=0, digests=digests)


@pytest.mark.parametrize(("bad_row", "line"), [(3, 6), (1, 2)])
def test_line_numbers_count_physical_lines(tmp_path: Path, bad_row: int, line: int) -> None:
    """A quoted statement spanning three lines (lines 2-4) moves the next rows by two lines; an
    error in that record itself names the line where it starts."""
    rows = _fixture_tables("alpha")["comments.csv"]
    rows[1][7] = "first line\nsecond line\nthird line"
    rows[bad_row][6] = "7"
    root, digests = write_fixture(tmp_path, {("alpha", "comments.csv"): _csv(rows)})
    with pytest.raises(DataError, match=rf"alpha/comments\.csv:{line}: column 'moderated' "
                                        r"\(field 7\)"):
        load_polis(root, pairs_per_user=4, seed=0, digests=digests)


@pytest.mark.parametrize(
    ("fname", "mutate", "needle"),
    [
        ("participants-votes.csv", lambda r: r[2].append("1"),
         r"participants-votes\.csv:3: row has 16 fields, the header has 15"),
        ("participants-votes.csv", lambda r: r[3].__setitem__(0, r[1][0]),
         r"participants-votes\.csv:4: column 'participant' \(field 1\): participant 10 repeats "
         r"line 2"),
        ("participants-votes.csv", lambda r: r[0].__setitem__(14, "99"),
         r"participants-votes\.csv:1: column '99' \(field 15\) is a statement that comments\.csv "
         r"does not have"),
        ("participants-votes.csv", lambda r: r[0].__setitem__(1, "weight"),
         r"participants-votes\.csv:1: column 'weight' \(field 2\) is neither a statement id"),
        ("comments.csv", lambda r: r[4].__setitem__(2, "1"),
         r"comments\.csv:5: column 'comment-id' \(field 3\): statement 1 repeats line 3"),
        ("comments.csv", lambda r: r[0].__setitem__(6, "status"),
         r"comments\.csv:1: header has no column 'moderated'"),
        ("summary.csv", lambda r: r.pop(0), r"summary\.csv: no 'topic' row"),
        ("summary.csv", lambda r: r[1].append("extra"),
         r"summary\.csv:2: expected 2 fields \(key,value\), found 3"),
    ],
)
def test_bad_rows_and_headers(tmp_path: Path, fname: str, mutate, needle: str) -> None:
    rows = _fixture_tables("alpha")[fname]
    mutate(rows)
    root, digests = write_fixture(tmp_path, {("alpha", fname): _csv(rows)})
    with pytest.raises(DataError, match=needle):
        load_polis(root, pairs_per_user=4, seed=0, digests=digests)


def test_unclosed_quote_is_a_data_error(tmp_path: Path) -> None:
    text = _csv(_fixture_tables("beta")["comments.csv"]) + '1,d,99,0,1,1,1,"never closed\n'
    root, digests = write_fixture(tmp_path, {("beta", "comments.csv"): text})
    with pytest.raises(DataError, match=r"beta/comments\.csv:\d+: malformed CSV"):
        load_polis(root, pairs_per_user=4, seed=0, digests=digests)


def test_sha256_mismatch_and_missing_file(folder: tuple[Path, dict[str, str]]) -> None:
    root, digests = folder
    load_polis(root, pairs_per_user=4, seed=0, digests=digests)  # as written: accepted
    path = root / "beta" / "participants-votes.csv"
    path.write_bytes(path.read_bytes().replace(b",-1,", b",1,", 1))  # one vote flipped
    with pytest.raises(DataError, match=r"beta/participants-votes\.csv: sha256 [0-9a-f]{64} "
                                        r"differs from the published"):
        load_polis(root, pairs_per_user=4, seed=0, digests=digests)
    # the default table is the published one: the fixture's files are not the real ones
    with pytest.raises(DataError, match="sha256"):
        read_conversation(root, "alpha")
    (root / "alpha" / "summary.csv").unlink()
    with pytest.raises(DataError, match=r"Polis file missing: .*alpha/summary\.csv"):
        load_polis(root, pairs_per_user=4, seed=0, conversations=["alpha"], digests=digests)


@needs_real
def test_sha256_mismatch_on_the_real_files(tmp_path: Path) -> None:
    name = "london.youth.policing"  # the smallest conversation
    (tmp_path / name).mkdir()
    for f in polis.FILES:  # plain copies: the shared originals are read-only
        (tmp_path / name / f).write_bytes((Path(REAL) / name / f).read_bytes())
    recs = load_polis(tmp_path, pairs_per_user=4, seed=0, conversations=[name])
    assert recs and all(r.user_id.startswith(name + "/") for r in recs)
    path = tmp_path / name / "comments.csv"
    data = bytearray(path.read_bytes())
    data[-2] ^= 0x01  # one bit of the last statement's text
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=rf"{name}/comments\.csv: sha256 .* differs from the "
                                        r"published 61bdfdc1"):
        load_polis(tmp_path, pairs_per_user=4, seed=0, conversations=[name])


def test_conversation_filter_and_unknown_names(folder: tuple[Path, dict[str, str]],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    root, digests = folder
    recs, st = load_polis_with_stats(root, pairs_per_user=4, seed=0,
                                     conversations=["gamma.sub", "alpha"], digests=digests)
    assert list(st.conversations) == ["alpha", "gamma.sub"]
    assert {polis.conversation_of(r.user_id) for r in recs} == {"alpha", "gamma.sub"}
    with pytest.raises(ConfigError, match=r"unknown Polis conversation 'delta'; known: "
                                          r"\['alpha', 'beta', 'gamma\.sub'\]"):
        load_polis(root, pairs_per_user=4, seed=0, conversations=["delta"], digests=digests)
    with pytest.raises(ConfigError, match="names 'beta' twice"):
        load_polis(root, pairs_per_user=4, seed=0, conversations=["beta", "beta"],
                   digests=digests)
    # through the config: the published names, checked by the loader when the run reads its
    # data (before anything trains); config.py stays on the ground floor and checks repeats
    cfg = config_from_dict({"data": {"source": "polis", "conversations": ["brexit-consensus"]}})
    assert cfg.data.conversations == ("brexit-consensus",)
    bad = config_from_dict(
        {"data": {"source": "polis", "path": str(root), "conversations": ["brexit"]}}
    )
    with pytest.raises(ConfigError, match=r"unknown Polis conversation 'brexit'; known: "
                                          r"\['15-per-hour-seattle', .*'scoop-hivemind\.ubi'\]"):
        build_records(bad)
    with pytest.raises(ConfigError, match="names 'ubi' twice"):
        config_from_dict({"data": {"source": "polis", "conversations": ["ubi", "ubi"]}})
    with pytest.raises(ConfigError, match=r"data\.conversations must be an array. Found 'ubi'"):
        config_from_dict({"data": {"source": "polis", "conversations": "ubi"}})
    with pytest.raises(ConfigError, match=r"data\.conversations\[1\] must be a string. Found 3"):
        config_from_dict({"data": {"source": "polis", "conversations": ["a", 3]}})
    # data.path, then $SECUREFVPA_POLIS_DIR, else an error naming both
    monkeypatch.delenv("SECUREFVPA_POLIS_DIR", raising=False)
    with pytest.raises(ConfigError, match=r"data\.path is empty and \$SECUREFVPA_POLIS_DIR is "
                                          "not set"):
        config_from_dict({"data": {"source": "polis"}}).data.resolved_polis_dir()
    monkeypatch.setenv("SECUREFVPA_POLIS_DIR", str(root))
    assert config_from_dict({"data": {"source": "polis"}}).data.resolved_polis_dir() == root
    with pytest.raises(ConfigError, match="data.path must be the Polis data folder"):
        load_polis(root / "nowhere", pairs_per_user=4, seed=0, digests=digests)


def _fake_pairs(records: list[PreferenceRecord]) -> EmbeddedPairs:
    """Row-aligned indices of the records (the split reads only users and types)."""
    users = tuple(dict.fromkeys(r.user_id for r in records))
    types = tuple(sorted({r.user_type for r in records if r.user_type is not None}))
    n = len(records)
    z = np.zeros((n, 2), dtype=np.float32)
    return EmbeddedPairs(
        prompt=z, chosen=z, rejected=z, chosen_len=np.zeros(n, np.float32),
        rejected_len=np.zeros(n, np.float32),
        user_index=np.array([users.index(r.user_id) for r in records], np.int64),
        type_index=np.array([types.index(r.user_type) if r.user_type else -1 for r in records],
                            np.int64),
        controversial=np.full(n, -1, np.int8), user_ids=users, type_names=types,
        pair_ids=tuple(r.pair_id for r in records))


def test_split_within_conversations_never_splits_a_user(
        folder: tuple[Path, dict[str, str]]) -> None:
    root, digests = folder
    recs = load_polis(root, pairs_per_user=4, seed=0, digests=digests)
    # Without the types (all unknown) only the strata keep each conversation at its share.
    untyped = [PreferenceRecord(r.user_id, r.pair_id, r.prompt, r.chosen, r.rejected)
               for r in recs]
    for pairs, cells in ((_fake_pairs(recs), 3), (_fake_pairs(untyped), 1)):
        strata = [polis.conversation_of(u) for u in pairs.user_ids]
        sizes = polis.users_by_conversation(pairs.user_ids, range(len(pairs.user_ids)))
        for seed in range(5):
            split = split_users(pairs, heldout_pairs=1, unseen_share=0.3, seed=seed,
                                strata=strata)
            unseen = {d.user for d in split.unseen}
            for d in split.seen + split.unseen:  # all of a user's rows on one side
                own = set(np.flatnonzero(pairs.user_index == d.user).tolist())
                assert set(d.train_rows.tolist()) | set(d.heldout_rows.tolist()) == own
            trained = {int(r) for d in split.seen for r in d.train_rows}
            assert not trained & set(
                np.flatnonzero(np.isin(pairs.user_index, list(unseen))).tolist())
            per_conv = polis.users_by_conversation(pairs.user_ids, sorted(unseen))
            for conv, n in sizes.items():  # ~30 % unseen users in each conversation
                assert abs(per_conv.get(conv, 0) - 0.3 * n) < cells, (conv, per_conv, sizes)


def test_one_stratum_label_changes_nothing(folder: tuple[Path, dict[str, str]]) -> None:
    root, digests = folder
    pairs = _fake_pairs(load_polis(root, pairs_per_user=4, seed=0, digests=digests))
    same = ["x"] * len(pairs.user_ids)
    for seed in range(4):
        a = split_users(pairs, heldout_pairs=1, unseen_share=0.25, seed=seed)
        b = split_users(pairs, heldout_pairs=1, unseen_share=0.25, seed=seed, strata=same)
        assert [d.user for d in a.unseen] == [d.user for d in b.unseen]
        assert user_folds(pairs, 3, seed=seed) == user_folds(pairs, 3, seed=seed, strata=same)
    with pytest.raises(DataError, match="strata has 1 labels; it needs one per user"):
        split_users(pairs, heldout_pairs=1, unseen_share=0.25, seed=0, strata=["x"])


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("emb")


def test_load_dataset_polis_source(tmp_path: Path, cache: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """`data.source = "polis"` end to end on the fixture (its own table patched in as the
    published one): records -> MiniLM embeddings -> a split within each conversation."""
    root, digests = write_fixture(tmp_path / "polis")
    monkeypatch.setattr(polis, "PUBLISHED_SHA256", digests)
    cfg = config_from_dict({
        "seed": 3, "embedding": {"cache_dir": str(cache)},
        "data": {"source": "polis", "path": str(root), "users": 0, "pairs_per_user": 4,
                 "heldout_pairs": 1, "unseen_share": 0.25}})
    pairs, split, info = load_dataset(cfg)
    assert info["polis_conversations"] == 3 and info["polis_users"] == len(pairs.user_ids)
    assert info["polis_pairs"] == pairs.n_pairs == 4 * len(pairs.user_ids)
    assert "alpha/g0" in pairs.type_names and pairs.dim == 384
    ungrouped = pairs.user_ids.index("alpha/p900")
    assert (pairs.type_index[pairs.user_index == ungrouped] == -1).all()
    unseen = info["polis_unseen_by_conversation"]
    assert set(unseen) == set(CONVERSATIONS) and sum(unseen.values()) == len(split.unseen)
    assert info["polis_users_by_conversation"] == polis.users_by_conversation(
        pairs.user_ids, range(len(pairs.user_ids)))
    within = split_users(pairs, heldout_pairs=1, unseen_share=0.25, seed=3,
                         strata=[polis.conversation_of(u) for u in pairs.user_ids])
    assert [d.user for d in split.unseen] == [d.user for d in within.unseen]


@needs_real
def test_real_folder_counts_match_the_readme() -> None:
    recs, st = load_polis_with_stats(Path(REAL), pairs_per_user=16, seed=0)
    got = {n: (c.participants, c.grouped, c.groups, c.statements)
           for n, c in st.conversations.items()}
    assert got == README_TABLE
    assert st.total("grouped") == 5125
    # users with >= 16 agree x disagree pairs (moderated statements left out), 16 pairs each
    assert st.conversations["american-assembly.bowling-green"].users == 1373
    assert st.total("users") == 3431 and len(recs) == 16 * 3431
    assert all(r.user_type is not None for r in recs)  # no ungrouped participant reaches 16
    assert len({r.user_type for r in recs}) == 25


@needs_real
def test_real_small_conversation_end_to_end(cache: Path) -> None:
    cfg = config_from_dict({
        "embedding": {"cache_dir": str(cache)},
        "data": {"source": "polis", "path": REAL, "users": 0, "pairs_per_user": 4,
                 "heldout_pairs": 1, "conversations": ["london.youth.policing"]}})
    pairs, split, info = load_dataset(cfg)
    assert info["polis_participants_read"] == 26 and info["polis_grouped"] == 24
    assert pairs.type_names == tuple(f"london.youth.policing/g{g}" for g in range(3))
    assert len(split.seen) + len(split.unseen) == info["polis_users"] == 23
    assert info["polis_unseen_by_conversation"] == {"london.youth.policing": 5}
