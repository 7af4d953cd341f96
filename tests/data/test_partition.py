"""Client partitions: every user in exactly one client, pure/mixed grouping, exact file round trip."""

from __future__ import annotations

import numpy as np
import pytest

from securefvpa.config import FederationConfig
from securefvpa.data.partition import load_partition, make_partitions, save_partition
from securefvpa.errors import DataError, FederationError
from securefvpa.models.planted import planted_pairs


def _parts(users_per_client: int = 3, type_mix: str = "pure", seed: int = 0):
    pairs, split = planted_pairs(users=30, pairs_per_user=8, dim=4, seed=1)
    fed = FederationConfig(mode="simulation", users_per_client=users_per_client, type_mix=type_mix)
    return pairs, split, make_partitions(pairs, split, fed, seed)


@pytest.mark.parametrize("type_mix", ["pure", "mixed"])
@pytest.mark.parametrize("per_client", [1, 3, 7])
def test_every_user_in_exactly_one_client_with_its_own_rows(type_mix, per_client):
    pairs, split, parts = _parts(per_client, type_mix)
    seen = sorted(u.user for u in split.seen)
    unseen = sorted(u.user for u in split.unseen)
    got_train = sorted(
        pairs.user_ids.index(p.pairs.user_ids[u.user])
        for p in parts
        if p.role == "train"
        for u in p.users
    )
    got_unseen = sorted(
        pairs.user_ids.index(p.pairs.user_ids[u.user])
        for p in parts
        if p.role == "unseen"
        for u in p.users
    )
    assert got_train == seen and got_unseen == unseen
    # training clients first, ids 0..n-1, then unseen-user clients
    roles = [p.role for p in parts]
    assert roles == sorted(roles, key=lambda r: r != "train")
    assert [p.partition_id for p in parts] == list(range(len(parts)))
    assert all(len(p.users) <= per_client for p in parts)
    for p in parts:  # a client holds only its users' rows: train + held-out, nothing else
        assert p.pairs.n_pairs == sum(len(u.train_rows) + len(u.heldout_rows) for u in p.users)
        assert p.n_train_pairs == sum(len(u.train_rows) for u in p.users)


def test_pure_clients_hold_one_type():
    _, _, parts = _parts(3, "pure")
    for p in parts:
        assert len({u.type_index for u in p.users}) == 1


def test_partitions_are_deterministic_by_seed():
    _, _, a = _parts(3, "mixed", seed=5)
    _, _, b = _parts(3, "mixed", seed=5)
    _, _, c = _parts(3, "mixed", seed=6)
    key = lambda parts: [tuple(u.user for u in p.users) for p in parts]  # noqa: E731
    assert key(a) == key(b) and key(a) != key(c)


def test_file_round_trip_is_exact(tmp_path):
    _, _, parts = _parts(3)
    for p in parts[:3]:
        back = load_partition(save_partition(p, tmp_path / f"c{p.partition_id}.npz"))
        assert (back.partition_id, back.role) == (p.partition_id, p.role)
        for name in ("prompt", "chosen", "rejected", "chosen_len", "user_index", "type_index"):
            np.testing.assert_array_equal(getattr(back.pairs, name), getattr(p.pairs, name))
        assert [
            (u.user, u.type_index, u.train_rows.tolist(), u.heldout_rows.tolist())
            for u in back.users
        ] == [
            (u.user, u.type_index, u.train_rows.tolist(), u.heldout_rows.tolist()) for u in p.users
        ]


def test_missing_or_damaged_partition_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_partition(tmp_path / "nope.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="unreadable"):
        load_partition(bad)


def test_too_few_training_clients_is_refused():
    pairs, split = planted_pairs(users=6, pairs_per_user=8, dim=4, seed=1)
    fed = FederationConfig(mode="simulation", users_per_client=4, min_fit_clients=3)
    with pytest.raises(FederationError, match="min_fit_clients"):
        make_partitions(pairs, split, fed, 0)
