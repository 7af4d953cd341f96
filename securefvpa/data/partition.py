"""Client partitions: which simulated users each federated client holds, written one file each.

A training client holds ``federation.users_per_client`` seen users (all of one type when
``federation.type_mix = "pure"``, any types when ``"mixed"``); an evaluation-only client holds
unseen users, who never train and are scored from their context pairs alone. Each partition is
written to its own ``.npz`` file (path from :class:`securefvpa.rundir.RunDir`) so a client
process reads only its own pairs; the file a node reads is named by its own node config.

Imports neither torch nor flwr.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from securefvpa.config import FederationConfig
from securefvpa.data.dataset import EmbeddedPairs, UserData, UserSplit
from securefvpa.errors import DataError, FederationError
from securefvpa.fsutil import atomic_write

PARTITION_SCHEMA = 1


@dataclass(frozen=True)
class ClientPartition:
    partition_id: int
    role: str  # "train" or "unseen"
    pairs: EmbeddedPairs  # only this client's rows
    users: tuple[UserData, ...]  # rows re-indexed into ``pairs``

    @property
    def n_train_pairs(self) -> int:
        return int(sum(len(u.train_rows) for u in self.users))

    @property
    def n_train_users(self) -> int:
        """Users with at least one train pair (the privacy units under ``unit = "user"``)."""
        return int(sum(len(u.train_rows) > 0 for u in self.users))


def group_users(
    users: tuple[UserData, ...], per_client: int, type_mix: str, rng: np.random.Generator
) -> list[list[UserData]]:
    """Group users into clients of ``per_client`` users (the last group may be smaller)."""
    order = [users[i] for i in rng.permutation(len(users))]
    if type_mix == "pure":
        order.sort(key=lambda u: u.type_index)  # stable: random within a type
        groups: list[list[UserData]] = []
        by_type: dict[int, list[UserData]] = {}
        for u in order:
            by_type.setdefault(u.type_index, []).append(u)
        for members in by_type.values():
            groups.extend(members[i : i + per_client] for i in range(0, len(members), per_client))
        return [groups[i] for i in rng.permutation(len(groups))]
    return [order[i : i + per_client] for i in range(0, len(order), per_client)]


def _localise(pairs: EmbeddedPairs, group: list[UserData], pid: int, role: str) -> ClientPartition:
    rows = np.concatenate([np.concatenate([u.train_rows, u.heldout_rows]) for u in group])
    local = pairs.subset(rows.astype(np.int64))
    users: list[UserData] = []
    offset = 0
    for u in group:
        n_tr, n_ho = len(u.train_rows), len(u.heldout_rows)
        users.append(
            UserData(
                user=u.user,
                type_index=u.type_index,
                train_rows=np.arange(offset, offset + n_tr, dtype=np.int64),
                heldout_rows=np.arange(offset + n_tr, offset + n_tr + n_ho, dtype=np.int64),
            )
        )
        offset += n_tr + n_ho
    return ClientPartition(partition_id=pid, role=role, pairs=local, users=tuple(users))


def make_partitions(
    pairs: EmbeddedPairs, split: UserSplit, fed: FederationConfig, seed: int
) -> list[ClientPartition]:
    """Training clients first (ids 0..n_train-1), then unseen-user evaluation clients."""
    rng = np.random.default_rng([seed, 0xF1])
    train_groups = group_users(split.seen, fed.users_per_client, fed.type_mix, rng)
    unseen_groups = group_users(split.unseen, fed.users_per_client, fed.type_mix, rng)
    if len(train_groups) < fed.min_fit_clients:
        raise FederationError(
            f"the data gives {len(train_groups)} training clients but federation.min_fit_clients "
            f"is {fed.min_fit_clients}; add users or lower min_fit_clients"
        )
    parts = [_localise(pairs, g, i, "train") for i, g in enumerate(train_groups)]
    parts += [
        _localise(pairs, g, len(train_groups) + i, "unseen") for i, g in enumerate(unseen_groups)
    ]
    return parts


def save_partition(part: ClientPartition, path: Path) -> Path:
    """Write ``part`` to ``path`` atomically (``.npz``, no pickles)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    p = part.pairs
    meta = {
        "schema": PARTITION_SCHEMA,
        "partition_id": part.partition_id,
        "role": part.role,
        "user_ids": list(p.user_ids),
        "type_names": list(p.type_names),
        "pair_ids": list(p.pair_ids),
        "model_id": p.model_id,
        "users": [
            {
                "user": u.user,
                "type_index": u.type_index,
                "n_train": len(u.train_rows),
                "n_heldout": len(u.heldout_rows),
                "start": int(u.train_rows[0]) if len(u.train_rows) else int(u.heldout_rows[0]),
            }
            for u in part.users
        ],
    }
    arrays: dict[str, Any] = {
        "prompt": p.prompt,
        "chosen": p.chosen,
        "rejected": p.rejected,
        "chosen_len": p.chosen_len,
        "rejected_len": p.rejected_len,
        "user_index": p.user_index,
        "type_index": p.type_index,
        "controversial": p.controversial,
        "meta": np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8),
    }
    atomic_write(path, lambda fh: np.savez(fh, **arrays))
    return path


def load_partition(path: Path) -> ClientPartition:
    """Read a partition file; a missing, damaged or other-schema file is a :class:`DataError`."""
    if not path.is_file():
        raise DataError(f"partition file not found: {str(path)!r}")
    try:
        return _load_partition(path)
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise DataError(f"partition file {str(path)!r} is unreadable: {exc}") from None


def _load_partition(path: Path) -> ClientPartition:
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(bytes(z["meta"]).decode("utf-8"))
        if meta.get("schema") != PARTITION_SCHEMA:
            raise DataError(
                f"{path}: partition schema {meta.get('schema')!r}, expected {PARTITION_SCHEMA}"
            )
        pairs = EmbeddedPairs(
            prompt=z["prompt"],
            chosen=z["chosen"],
            rejected=z["rejected"],
            chosen_len=z["chosen_len"],
            rejected_len=z["rejected_len"],
            user_index=z["user_index"],
            type_index=z["type_index"],
            controversial=z["controversial"],
            user_ids=tuple(meta["user_ids"]),
            type_names=tuple(meta["type_names"]),
            pair_ids=tuple(meta["pair_ids"]),
            model_id=meta["model_id"],
        )
    users = []
    for u in meta["users"]:
        s, n_tr, n_ho = u["start"], u["n_train"], u["n_heldout"]
        users.append(
            UserData(
                user=u["user"],
                type_index=u["type_index"],
                train_rows=np.arange(s, s + n_tr, dtype=np.int64),
                heldout_rows=np.arange(s + n_tr, s + n_tr + n_ho, dtype=np.int64),
            )
        )
    return ClientPartition(meta["partition_id"], meta["role"], pairs, tuple(users))
