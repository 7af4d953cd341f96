"""Relabeled HH-RLHF (Siththaranjan, Laidlaw and Hadfield-Menell, "Distributional Preference
Learning", 2023): real pairs labelled once for helpfulness and once for harmlessness.

Each row's ``objective`` is the hidden context and becomes the ``user_type``; ``chosen`` is
``responses[label]``, ``rejected`` the other response, ``prompt`` the dialogue before the final
assistant turn. The position of a response in ``responses`` enters nothing: it only picks which
text is chosen (the raw data prefers position 0 in 2:1 of harmless rows, so a leak would be a cue).

Users are simulated: per objective, pairs are shuffled with a seeded ``Generator(PCG64(seed))``
and dealt into users of ``pairs_per_user`` pairs, all of one objective (``"helpful-0007"``).
Rows that cannot be used and leftovers that do not fill a user are dropped and counted in the log
(logger ``securefvpa.data``); malformed JSON is a :class:`DataError` naming file and line.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from securefvpa.data.records import PreferenceRecord
from securefvpa.errors import ConfigError, DataError

log = logging.getLogger("securefvpa.data")

# From the README of the folder (test split of cassidylaidlaw/hidden-context).
FILES: dict[str, str] = {
    "helpful/test.jsonl.gz": "502d6c1685eb4d67d101db3b110a37104f9f58c72e31d08c36618444918c282d",
    "harmless/test.jsonl.gz": "d7441016843ae9a668d261e08e40a3ffafd4b67de2656aa92d6b6ba14640db78",
}


@dataclass
class HHStats:
    rows_read: int = 0
    pairs_used: int = 0
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> rows
    leftover_pairs: int = 0  # usable pairs that did not fill a whole user
    users: int = 0
    sha256_mismatch: list[str] = field(default_factory=list)

    def as_info(self) -> dict[str, Any]:
        return {
            "hh_rows_read": self.rows_read,
            "hh_pairs_used": self.pairs_used,
            "hh_rows_skipped": int(sum(self.skipped.values())),
            "hh_skipped_by_reason": dict(sorted(self.skipped.items())),
            "hh_leftover_pairs": self.leftover_pairs,
            "hh_sha256_mismatch": list(self.sha256_mismatch),
        }


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _parse_row(obj: Any) -> tuple[str, str, str, str] | str:
    """``(objective, prompt, chosen, rejected)``, or the reason the row cannot be used."""
    if not isinstance(obj, dict):
        return "not an object"
    for name in ("prompt", "responses", "label", "objective"):
        if name not in obj:
            return f"missing field {name!r}"
    prompt, responses, label, objective = (obj["prompt"], obj["responses"], obj["label"],
                                           obj["objective"])
    if not isinstance(prompt, str):
        return "field 'prompt' not a string"
    if not isinstance(objective, str) or not objective:
        return "field 'objective' not a non-empty string"
    if (not isinstance(responses, list) or len(responses) != 2
            or not all(isinstance(r, str) for r in responses)):
        return "field 'responses' not two strings"
    if isinstance(label, bool) or label not in (0, 1):
        return "field 'label' not 0 or 1"
    if not responses[0].strip() or not responses[1].strip():
        return "empty response"
    if responses[0].strip() == responses[1].strip():
        return "identical responses"
    return objective, prompt, responses[label], responses[1 - label]


def read_hh_rows(
    directory: str | Path, *, max_pairs: int = 0, stats: HHStats | None = None
) -> list[tuple[str, int, str, str, str]]:
    """Usable rows ``(objective, Index, prompt, chosen, rejected)`` of both files, in file order.

    ``max_pairs > 0`` caps the usable rows read, split evenly between the two files.
    """
    root = Path(directory)
    if not root.is_dir():
        raise ConfigError(f"data.hh_rlhf_dir must be a folder. Found {str(root)!r}.")
    st = stats if stats is not None else HHStats()
    if max_pairs < 0:
        raise ConfigError(f"data.max_pairs must be >= 0. Found {max_pairs!r}.")
    caps = [max_pairs // len(FILES) + (1 if i < max_pairs % len(FILES) else 0)
            for i in range(len(FILES))]
    out: list[tuple[str, int, str, str, str]] = []
    for (rel, expected), cap in zip(FILES.items(), caps):
        path = root / rel
        if not path.is_file():
            raise DataError(f"relabeled HH-RLHF file missing: {str(path)!r}")
        digest = _sha256(path)
        if digest != expected:
            st.sha256_mismatch.append(rel)
            log.warning("%s: sha256 %s differs from the published %s; using it anyway",
                        path, digest, expected)
        taken = 0
        try:
            with gzip.open(path, "rt", encoding="utf-8") as fh:
                for lineno, line in enumerate(fh, start=1):
                    if max_pairs and taken >= cap:
                        break
                    if not line.strip():
                        continue
                    st.rows_read += 1
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise DataError(
                            f"{path}:{lineno}: invalid JSON ({exc.msg} at column {exc.colno})"
                        ) from None
                    parsed = _parse_row(obj)
                    if isinstance(parsed, str):
                        st.skipped[parsed] += 1
                        continue
                    index = obj.get("Index", lineno)
                    if isinstance(index, bool) or not isinstance(index, int):
                        index = lineno
                    out.append((parsed[0], index, parsed[1], parsed[2], parsed[3]))
                    taken += 1
        except (OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: cannot read gzip JSONL ({exc})") from None
    if st.skipped:
        log.warning("relabeled HH-RLHF: skipped %d unusable rows: %s",
                    sum(st.skipped.values()), dict(sorted(st.skipped.items())))
    return out


def load_hh_rlhf_with_stats(
    directory: str | Path, *, pairs_per_user: int, seed: int, max_pairs: int = 0
) -> tuple[list[PreferenceRecord], HHStats]:
    """:func:`load_hh_rlhf` plus the counts of what was read, skipped and left over."""
    if pairs_per_user < 1:
        raise ConfigError(f"data.pairs_per_user must be >= 1. Found {pairs_per_user!r}.")
    st = HHStats()
    rows = read_hh_rows(directory, max_pairs=max_pairs, stats=st)
    by_objective: dict[str, list[tuple[str, int, str, str, str]]] = {}
    for row in rows:
        by_objective.setdefault(row[0], []).append(row)
    rng = np.random.Generator(np.random.PCG64(seed))
    records: list[PreferenceRecord] = []
    seen_pairs: set[str] = set()
    for objective in sorted(by_objective):
        group = by_objective[objective]
        order = rng.permutation(len(group))
        n_users = len(group) // pairs_per_user
        st.leftover_pairs += len(group) - n_users * pairs_per_user
        for u in range(n_users):
            for k in range(pairs_per_user):
                _obj, index, prompt, chosen, rejected = group[int(order[u * pairs_per_user + k])]
                pair_id = f"hh-{objective}-{index}"
                if pair_id in seen_pairs:
                    raise DataError(f"relabeled HH-RLHF: Index {index} appears twice for "
                                    f"objective {objective!r}")
                seen_pairs.add(pair_id)
                records.append(PreferenceRecord(
                    user_id=f"{objective}-{u:04d}", pair_id=pair_id, prompt=prompt,
                    chosen=chosen, rejected=rejected, user_type=objective, controversial=None,
                ))
        st.users += n_users
    st.pairs_used = len(records)
    if st.leftover_pairs:
        log.info("relabeled HH-RLHF: dropped %d leftover pairs that do not fill a user of %d",
                 st.leftover_pairs, pairs_per_user)
    log.info("relabeled HH-RLHF: %d users, %d pairs (%s)", st.users, st.pairs_used,
             ", ".join(f"{o}: {len(g) // pairs_per_user} users"
                       for o, g in sorted(by_objective.items())))
    return records, st


def load_hh_rlhf(
    directory: str | Path, *, pairs_per_user: int, seed: int, max_pairs: int = 0
) -> list[PreferenceRecord]:
    """Records of simulated single-objective users of ``pairs_per_user`` pairs (see module)."""
    records, _ = load_hh_rlhf_with_stats(
        directory, pairs_per_user=pairs_per_user, seed=seed, max_pairs=max_pairs
    )
    return records
