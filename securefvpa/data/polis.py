"""Polis open data: real people's agree/disagree votes on statements -> preference records.

Source: github.com/compdemocracy/openData at commit 0bc2ce0f32c673f68da20b57bce15c457aa787b5
(CC BY 4.0, The Computational Democracy Project), one folder per conversation with
``summary.csv``, ``comments.csv`` and ``participants-votes.csv`` (see the README of the folder).
Every file is read once as bytes, its SHA-256 checked against :data:`PUBLISHED_SHA256` (a
mismatch is a :class:`DataError` naming the file) and only then parsed, so the bytes parsed are
the bytes checked.

Contract (what a record means; it does not change):

- ``prompt`` = the conversation's ``topic``, then a blank line and its
  ``conversation-description`` when that is not empty (``summary.csv``).
- ``chosen`` = the text of a statement the participant voted 1 (agree) on, ``rejected`` = the
  text of one they voted -1 (disagree) on. Passes (0) and unseen statements (empty cell) give no
  pair. Statements with ``moderated = -1`` (removed by the moderator) are never used. Statements
  with the same text (after stripping) count as one; a text a participant both agreed and
  disagreed with is dropped for that participant.
- ``user_id`` = ``"<conversation>/p<participant>"``; ``user_type`` = ``"<conversation>/g<group-id>"``
  (Polis's own opinion group, a data-driven type), ``None`` for participants without a group.
- ``pair_id`` = ``"<user_id>/<chosen id>><rejected id>"``: bookkeeping only. Features are built
  from the texts alone (:mod:`securefvpa.data.embed`), so a statement's id or its column position
  never enters a feature; the order of a user's pairs is a seeded shuffle, not the id order.
- ``controversial`` = ``None`` (unknown).

Pairs: a participant with A agreed and D disagreed usable statements has A * D candidate pairs;
``min(pairs_per_user, A * D)`` of them are drawn uniformly without replacement with a
``Generator(PCG64(SeedSequence([seed, 1, sha256(conversation)[:8], participant])))``, so a user's
pairs depend only on the seed, the conversation, the participant and their votes (not on which
other conversations are loaded). Participants with fewer than ``min_pairs`` candidate pairs are
dropped and counted in the log (logger ``securefvpa.data``) and in :class:`PolisStats`. Users come
out conversation by conversation (sorted names), in a seeded shuffled order within each.

Bad input is a :class:`DataError` naming the file, the 1-based line where the CSV record starts
and the column (name and 1-based field number). Non-security randomness: numpy ``PCG64``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from securefvpa.data.records import PreferenceRecord
from securefvpa.errors import ConfigError, DataError

log = logging.getLogger("securefvpa.data")

FILES: tuple[str, ...] = ("summary.csv", "comments.csv", "participants-votes.csv")

# "conversation/file" -> SHA-256, from the "sha256" section of the README of the Polis folder.
PUBLISHED_SHA256: dict[str, str] = {
    "15-per-hour-seattle/comments.csv":
        "23306ea084fbecf5e924e78da03b13cd3ad289e5f9b533b658b8caa59f5c1981",
    "15-per-hour-seattle/participants-votes.csv":
        "324e6b36a08dd1020afd9483731a5fa6311cfe8229cc0b434201489d447f720d",
    "15-per-hour-seattle/summary.csv":
        "7d7c5cb5baf3a4e2f81e041fd53eb12eac5837abf2a9c7b98c1cb0e03a4b2921",
    "american-assembly.bowling-green/comments.csv":
        "b5d72fbb1b15d66c624da51849aef3d5691358b6ec646035b9ca41c6b9f936f0",
    "american-assembly.bowling-green/participants-votes.csv":
        "63c6e30c36d9f5338516f3a0c77b08e3518c20b707b321e26c54cd6218a2ab4d",
    "american-assembly.bowling-green/summary.csv":
        "35cd93ea32bdc0926351ca093de981ef1af9043fc563d837ef082d509cb89141",
    "brexit-consensus/comments.csv":
        "f9a341a6acadd8277458ed1ec1280508450dcc53f23cfdad9baf92a538bbd74c",
    "brexit-consensus/participants-votes.csv":
        "6b0c991962566a450735362208be1e1459485b57f5e13ba36501f3c8eabea349",
    "brexit-consensus/summary.csv":
        "1ace30cbb65cca8f090e95e06dae15c4c24bd1328f6bc803108b4facc03c7ebf",
    "canadian-electoral-reform/comments.csv":
        "f3fca647a6b13e218a454f06a9f8c985a0a7b63d64daf277b6f0916cf6d54a5d",
    "canadian-electoral-reform/participants-votes.csv":
        "ea5fc95293685f1c28b9f649ca95a24010fc0893f436d8d4885e8f0e11e80bcb",
    "canadian-electoral-reform/summary.csv":
        "75d5bf666fec281eb57a256d3179180b39e4da93d3d87b21b67afcf984d00333",
    "football-concussions/comments.csv":
        "80e4e937e6a308263bdf57eb608b3f6c9c3d1a936819dd554d9d647f63ced291",
    "football-concussions/participants-votes.csv":
        "45da638eabff37cd8b45c32fbb81eb02c69b273f4f0bfada7ce0c43e884df38f",
    "football-concussions/summary.csv":
        "d61aaf54a79d4572e18a1e40c258366752167b1a83a8df4b762ce20dbb65b71d",
    "london.youth.policing/comments.csv":
        "61bdfdc160b0ff59f28d2823d9ccdd3472823df151ba9963f0035f723f7dcba7",
    "london.youth.policing/participants-votes.csv":
        "b990257294b52d3cc8e93e5ab1468e5a54824e72aada9545377d5bb30dbaa396",
    "london.youth.policing/summary.csv":
        "1b635595cd0ba41f147064f9f09bc6c136aab497cb01425d76e36b96c98ae8e4",
    "scoop-hivemind.affordable-housing/comments.csv":
        "f559586c28eb933d1954df35b7b449af011754393d0d835f82d4c29a40c712eb",
    "scoop-hivemind.affordable-housing/participants-votes.csv":
        "6093abe7445a57ee7ada598951c14e922ca8415ca9f5c9b48e4ff68bcdce6870",
    "scoop-hivemind.affordable-housing/summary.csv":
        "9ce32b1fa68ec6e42254fab46e609c07e8dd55274e31e91f03c48d6aa689b6bf",
    "scoop-hivemind.biodiversity/comments.csv":
        "de84b8c9d9b4b70d4929ee0603aa242ba60f53cc456dbf03a62719f1abc16165",
    "scoop-hivemind.biodiversity/participants-votes.csv":
        "58aaff458ef8dc5679e683e990c8aab3c56bcca82a7929b06b1559d4a04f29e0",
    "scoop-hivemind.biodiversity/summary.csv":
        "d4200eed905ad960a254a894923fd1753e1ca61145084356697957795585f2a5",
    "scoop-hivemind.freshwater/comments.csv":
        "508001134c37e424c074a53391ab02f807b0045ae233d63324cba8aa173bc843",
    "scoop-hivemind.freshwater/participants-votes.csv":
        "00f7a9565ffc21b729495d97bce573a585b05cffb552130ea416f348d9284b00",
    "scoop-hivemind.freshwater/summary.csv":
        "c1f21e14c6d37451adc064df5bef54822477cb87e85f58f133c50271b9c25aca",
    "scoop-hivemind.taxes/comments.csv":
        "cf53851ef9475bae8e8f493da7ef167feac69c893e6b730a14c1b8e3465dd4c5",
    "scoop-hivemind.taxes/participants-votes.csv":
        "2922308b181957bf63f8bf619973e93709d72c2dd41ac14370cca5632f2d5ea8",
    "scoop-hivemind.taxes/summary.csv":
        "d093104dc6080fa43ebbc9e1156ec6367d70f54b2e4041fced795ced651d2da3",
    "scoop-hivemind.ubi/comments.csv":
        "f47dcf4fde68bd9da3fdff0981e62b6ec5d2673e8e82144fefd4c82ce8953a8e",
    "scoop-hivemind.ubi/participants-votes.csv":
        "040ede14de517774974f37738b7043cb339cab498b8b11a0be6f2e81ff1be51b",
    "scoop-hivemind.ubi/summary.csv":
        "8a17c635bc6685625ba8e59fc14eb5abf15e51dc33b040eef42bae05a17fe313",
}

_PAIR_STREAM = 1
_ORDER_STREAM = 2
_VOTE = {"1": 1, "-1": -1, "0": 0}
# Columns of participants-votes.csv that are not votes (xid appears in some exports).
_VOTE_META = frozenset({"participant", "xid", "group-id", "n-comments", "n-votes", "n-agree",
                        "n-disagree"})


def conversations_in(digests: Mapping[str, str]) -> tuple[str, ...]:
    """Sorted conversation names of a digest table (``"conversation/file" -> sha256``)."""
    return tuple(sorted({key.split("/", 1)[0] for key in digests}))


CONVERSATIONS: tuple[str, ...] = conversations_in(PUBLISHED_SHA256)


def select_conversations(
    names: Sequence[str], known: Sequence[str] | None = None
) -> tuple[str, ...]:
    """The conversations ``names`` asks for, sorted; empty ``names`` means all of ``known``
    (default: those of :data:`PUBLISHED_SHA256`).

    Raises :class:`ConfigError` (naming ``data.conversations``) for an unknown or repeated name.
    """
    if known is None:
        known = conversations_in(PUBLISHED_SHA256)
    for name in names:
        if name not in known:
            raise ConfigError(
                f"data.conversations names an unknown Polis conversation {name!r}; "
                f"known: {list(known)}"
            )
    if len(set(names)) != len(names):
        dup = next(n for n in names if list(names).count(n) > 1)
        raise ConfigError(f"data.conversations names {dup!r} twice")
    return tuple(sorted(names)) if names else tuple(sorted(known))


def user_id_of(conversation: str, participant: int) -> str:
    return f"{conversation}/p{participant}"


def conversation_of(user_id: str) -> str:
    """The conversation of a Polis ``user_id`` (inverse of the ``"<conversation>/p<n>"`` format)."""
    conv, sep, tail = user_id.rpartition("/")
    if not sep or not conv or not tail.startswith("p") or not tail[1:].isdigit():
        raise DataError(f"not a Polis user id (<conversation>/p<participant>): {user_id!r}")
    return conv


@dataclass(frozen=True)
class Participant:
    """One row of ``participants-votes.csv`` with its usable votes (statement ids, sorted)."""

    participant: int
    group: int | None  # Polis opinion group; None when not grouped
    agree: tuple[int, ...]  # voted 1, usable statements only
    disagree: tuple[int, ...]  # voted -1, usable statements only
    line: int  # line of the row in participants-votes.csv


@dataclass(frozen=True)
class Conversation:
    """One conversation folder, parsed and checked."""

    name: str
    topic: str
    description: str
    statements: dict[int, str]  # usable statements (not moderated out): id -> text
    moderated_out: frozenset[int]
    n_statements: int  # rows of comments.csv
    participants: tuple[Participant, ...]

    @property
    def prompt(self) -> str:
        return f"{self.topic}\n\n{self.description}" if self.description else self.topic


@dataclass
class ConversationStats:
    participants: int = 0  # rows of participants-votes.csv
    grouped: int = 0  # of which with a group-id
    groups: int = 0  # distinct group ids
    statements: int = 0  # rows of comments.csv
    moderated_out: int = 0  # statements with moderated = -1 (never used)
    users: int = 0  # participants kept as users
    dropped: int = 0  # participants with fewer than min_pairs candidate pairs
    pairs: int = 0  # records made


@dataclass
class PolisStats:
    """Counts of one :func:`load_polis_with_stats` call, per conversation and in total."""

    min_pairs: int = 0
    conversations: dict[str, ConversationStats] = field(default_factory=dict)

    def total(self, name: str) -> int:
        return int(sum(getattr(c, name) for c in self.conversations.values()))

    def as_info(self) -> dict[str, Any]:
        convs = self.conversations
        return {
            "polis_conversations": len(convs),
            "polis_participants_read": self.total("participants"),
            "polis_grouped": self.total("grouped"),
            "polis_pairs": self.total("pairs"),
            "polis_users": self.total("users"),
            "polis_users_dropped_few_pairs": self.total("dropped"),
            "polis_min_pairs": self.min_pairs,
            "polis_users_by_conversation": {n: c.users for n, c in convs.items()},
            "polis_dropped_by_conversation": {n: c.dropped for n, c in convs.items()},
        }


def _read_checked(root: Path, conversation: str, name: str, digests: Mapping[str, str]) -> str:
    """The text of ``root/conversation/name`` after checking its SHA-256 against ``digests``."""
    path = root / conversation / name
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"Polis file missing: {str(path)!r}") from None
    except OSError as exc:
        raise DataError(f"cannot read Polis file {str(path)!r}: {exc.strerror}") from None
    expected = digests.get(f"{conversation}/{name}")
    if expected is None:
        raise DataError(f"no published sha256 for {conversation}/{name}")
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected:
        raise DataError(
            f"{path}: sha256 {digest} differs from the published {expected}; "
            "this is not the file of the Polis data README"
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _records(path: Path, text: str) -> Iterator[tuple[int, list[str]]]:
    """``(line where the record starts, fields)`` of every non-blank CSV record."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    start = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise DataError(f"{path}:{start}: malformed CSV ({exc})") from None
        if row:
            yield start, row
        start = reader.line_num + 1


def _nonneg_int(text: str) -> int | None:
    return int(text) if text.isascii() and text.isdigit() else None


def _bad(path: Path, line: int, header: Sequence[str], col: int, must: str, value: str) -> DataError:
    return DataError(
        f"{path}:{line}: column {header[col]!r} (field {col + 1}) must {must}. Found {value!r}."
    )


def _header(path: Path, rows: Iterator[tuple[int, list[str]]], required: Sequence[str]
            ) -> tuple[int, list[str], dict[str, int]]:
    """``(line, header, column index by name)`` of the first record."""
    first = next(rows, None)
    if first is None:
        raise DataError(f"{path}: empty file (no header row)")
    header = first[1]
    index: dict[str, int] = {}
    for i, name in enumerate(header):
        if name in index:
            raise DataError(f"{path}:{first[0]}: column {name!r} appears twice in the header "
                            f"(fields {index[name] + 1} and {i + 1})")
        index[name] = i
    for name in required:
        if name not in index:
            raise DataError(f"{path}:{first[0]}: header has no column {name!r}")
    return first[0], header, index


def _check_width(path: Path, line: int, row: list[str], header: list[str]) -> None:
    if len(row) != len(header):
        raise DataError(
            f"{path}:{line}: row has {len(row)} fields, the header has {len(header)}"
        )


def _read_summary(path: Path, text: str) -> tuple[str, str]:
    values: dict[str, tuple[int, str]] = {}
    for line, row in _records(path, text):
        if len(row) != 2:
            raise DataError(f"{path}:{line}: expected 2 fields (key,value), found {len(row)}")
        key = row[0]
        if key in values:
            raise DataError(f"{path}:{line}: key {key!r} repeats line {values[key][0]}")
        values[key] = (line, row[1])
    if "topic" not in values:
        raise DataError(f"{path}: no 'topic' row")
    line, topic = values["topic"]
    if not topic.strip():
        raise DataError(f"{path}:{line}: column 'value' (field 2) of key 'topic' must not be "
                        f"empty. Found {topic!r}.")
    return topic.strip(), values.get("conversation-description", (0, ""))[1].strip()


def _read_comments(path: Path, text: str) -> tuple[dict[int, str], frozenset[int], int]:
    rows = _records(path, text)
    _, header, col = _header(path, rows, ("comment-id", "moderated", "comment-body"))
    ci, mi, bi = col["comment-id"], col["moderated"], col["comment-body"]
    usable: dict[int, str] = {}
    removed: set[int] = set()
    first_line: dict[int, int] = {}
    for line, row in rows:
        _check_width(path, line, row, header)
        sid = _nonneg_int(row[ci])
        if sid is None:
            raise _bad(path, line, header, ci, "be an integer >= 0", row[ci])
        if sid in first_line:
            raise DataError(f"{path}:{line}: column 'comment-id' (field {ci + 1}): statement "
                            f"{sid} repeats line {first_line[sid]}")
        first_line[sid] = line
        if row[mi] not in ("-1", "0", "1"):
            raise _bad(path, line, header, mi, "be -1, 0 or 1", row[mi])
        if row[mi] == "-1":
            removed.add(sid)
            continue
        body = row[bi].strip()
        if not body:
            raise _bad(path, line, header, bi, "not be empty", row[bi])
        usable[sid] = body
    return usable, frozenset(removed), len(first_line)


def _read_votes(path: Path, text: str, statements: dict[int, str], removed: frozenset[int]
                ) -> tuple[Participant, ...]:
    rows = _records(path, text)
    hline, header, col = _header(path, rows, ("participant", "group-id"))
    pi, gi = col["participant"], col["group-id"]
    # Statements with the same text are one statement: votes map to the smallest id.
    canonical: dict[str, int] = {}
    for known_id in sorted(statements):
        canonical.setdefault(statements[known_id], known_id)
    vote_cols: list[tuple[int, int | None]] = []  # (field, canonical id or None if removed)
    for i, name in enumerate(header):
        if name in _VOTE_META:
            continue
        col_id = _nonneg_int(name)
        if col_id is None:
            raise DataError(f"{path}:{hline}: column {name!r} (field {i + 1}) is neither a "
                            f"statement id nor one of {sorted(_VOTE_META)}")
        if col_id in removed:
            vote_cols.append((i, None))
        elif col_id in statements:
            vote_cols.append((i, canonical[statements[col_id]]))
        else:
            raise DataError(f"{path}:{hline}: column {name!r} (field {i + 1}) is a statement "
                            "that comments.csv does not have")
    out: list[Participant] = []
    first_line: dict[int, int] = {}
    for line, row in rows:
        _check_width(path, line, row, header)
        pid = _nonneg_int(row[pi])
        if pid is None:
            raise _bad(path, line, header, pi, "be an integer >= 0", row[pi])
        if pid in first_line:
            raise DataError(f"{path}:{line}: column 'participant' (field {pi + 1}): participant "
                            f"{pid} repeats line {first_line[pid]}")
        first_line[pid] = line
        group: int | None = None
        if row[gi] != "":
            group = _nonneg_int(row[gi])
            if group is None:
                raise _bad(path, line, header, gi, "be an integer >= 0 or empty", row[gi])
        agree: set[int] = set()
        disagree: set[int] = set()
        for i, sid in vote_cols:
            cell = row[i]
            if cell == "":
                continue
            vote = _VOTE.get(cell)
            if vote is None:
                raise _bad(path, line, header, i, "be 1, -1, 0 or empty", cell)
            if sid is None or vote == 0:
                continue
            (agree if vote == 1 else disagree).add(sid)
        both = agree & disagree  # the same text agreed and disagreed: no preference
        out.append(Participant(participant=pid, group=group,
                               agree=tuple(sorted(agree - both)),
                               disagree=tuple(sorted(disagree - both)), line=line))
    return tuple(out)


def read_conversation(
    directory: str | Path, name: str, *, digests: Mapping[str, str] | None = None
) -> Conversation:
    """Parse one conversation folder after checking the SHA-256 of its three files.

    ``digests`` (``"conversation/file" -> sha256``) defaults to :data:`PUBLISHED_SHA256`.
    Raises :class:`DataError` for a missing or changed file and for a bad row (file, line,
    column).
    """
    table = PUBLISHED_SHA256 if digests is None else digests
    root = Path(directory)
    texts = {f: _read_checked(root, name, f, table) for f in FILES}
    topic, description = _read_summary(root / name / "summary.csv", texts["summary.csv"])
    statements, removed, n_statements = _read_comments(root / name / "comments.csv",
                                                       texts["comments.csv"])
    participants = _read_votes(root / name / "participants-votes.csv",
                               texts["participants-votes.csv"], statements, removed)
    return Conversation(name=name, topic=topic, description=description, statements=statements,
                        moderated_out=removed, n_statements=n_statements,
                        participants=participants)


def _conversation_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big")


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, *stream])))


def sample_pairs(
    agree: Sequence[int], disagree: Sequence[int], *, k: int, rng: np.random.Generator
) -> list[tuple[int, int]]:
    """``k`` distinct (agreed, disagreed) statement pairs, uniformly without replacement, in
    random order (``Generator.choice(..., shuffle=True)``); ``k <= len(agree) * len(disagree)``."""
    n_dis = len(disagree)
    picks = rng.choice(len(agree) * n_dis, size=k, replace=False, shuffle=True)
    return [(agree[int(f) // n_dis], disagree[int(f) % n_dis]) for f in picks]


def load_polis_with_stats(
    directory: str | Path,
    *,
    pairs_per_user: int,
    seed: int,
    min_pairs: int | None = None,
    conversations: Sequence[str] = (),
    digests: Mapping[str, str] | None = None,
) -> tuple[list[PreferenceRecord], PolisStats]:
    """:func:`load_polis` plus the counts of what was read, kept and dropped."""
    table = PUBLISHED_SHA256 if digests is None else digests
    names = select_conversations(conversations, conversations_in(table))
    if pairs_per_user < 1:
        raise ConfigError(f"data.pairs_per_user must be >= 1. Found {pairs_per_user!r}.")
    floor = pairs_per_user if min_pairs is None else min_pairs
    if not 1 <= floor <= pairs_per_user:
        raise ConfigError(
            f"min_pairs must be in [1, pairs_per_user={pairs_per_user}]. Found {min_pairs!r}."
        )
    root = Path(directory)
    if not root.is_dir():
        raise ConfigError(f"data.path must be the Polis data folder. Found {str(root)!r}.")
    st = PolisStats(min_pairs=floor)
    records: list[PreferenceRecord] = []
    for name in names:
        conv = read_conversation(root, name, digests=table)
        cs = st.conversations[name] = ConversationStats(
            participants=len(conv.participants),
            grouped=sum(p.group is not None for p in conv.participants),
            groups=len({p.group for p in conv.participants if p.group is not None}),
            statements=conv.n_statements,
            moderated_out=len(conv.moderated_out),
        )
        key = _conversation_key(name)
        prompt = conv.prompt
        order = _rng(seed, _ORDER_STREAM, key).permutation(len(conv.participants))
        for idx in order:
            p = conv.participants[int(idx)]
            available = len(p.agree) * len(p.disagree)
            if available < floor:
                cs.dropped += 1
                continue
            uid = user_id_of(name, p.participant)
            utype = None if p.group is None else f"{name}/g{p.group}"
            rng = _rng(seed, _PAIR_STREAM, key, p.participant)
            for a, d in sample_pairs(p.agree, p.disagree, k=min(pairs_per_user, available),
                                     rng=rng):
                records.append(PreferenceRecord(
                    user_id=uid, pair_id=f"{uid}/{a}>{d}", prompt=prompt,
                    chosen=conv.statements[a], rejected=conv.statements[d], user_type=utype,
                    controversial=None,
                ))
                cs.pairs += 1
            cs.users += 1
    dropped = st.total("dropped")
    if dropped:
        log.info("Polis: dropped %d of %d participants with fewer than %d agree x disagree "
                 "pairs (%s)", dropped, st.total("participants"), floor,
                 ", ".join(f"{n}: {c.dropped}" for n, c in st.conversations.items()))
    log.info("Polis: %d users, %d pairs from %d conversations (%s)", st.total("users"),
             st.total("pairs"), len(names),
             ", ".join(f"{n}: {c.users}" for n, c in st.conversations.items()))
    return records, st


def load_polis(
    directory: str | Path,
    *,
    pairs_per_user: int,
    seed: int,
    min_pairs: int | None = None,
    conversations: Sequence[str] = (),
    digests: Mapping[str, str] | None = None,
) -> list[PreferenceRecord]:
    """Preference records of Polis participants (module docstring).

    Args:
        directory: the Polis folder (one sub-folder per conversation).
        pairs_per_user: cap on the pairs of one user (the privacy unit is one pair).
        seed: run seed; pair sampling and user order depend on it and nothing else random.
        min_pairs: participants with fewer candidate pairs are dropped (counted);
            ``None`` = ``pairs_per_user``, so every user has exactly ``pairs_per_user`` pairs.
        conversations: names to load; empty = all of the digest table.
        digests: ``"conversation/file" -> sha256``; ``None`` = :data:`PUBLISHED_SHA256`.

    Raises:
        ConfigError: unknown conversation, bad ``pairs_per_user``/``min_pairs``, not a folder.
        DataError: a missing or changed file (SHA-256), a bad CSV row (file, line, column).
    """
    records, _ = load_polis_with_stats(
        directory, pairs_per_user=pairs_per_user, seed=seed, min_pairs=min_pairs,
        conversations=conversations, digests=digests,
    )
    return records


def users_by_conversation(user_ids: Sequence[str], users: Sequence[int]) -> dict[str, int]:
    """How many of ``users`` (indices into ``user_ids``) each conversation has, sorted by name."""
    counts: dict[str, int] = {}
    for u in users:
        conv = conversation_of(user_ids[u])
        counts[conv] = counts.get(conv, 0) + 1
    return dict(sorted(counts.items()))
