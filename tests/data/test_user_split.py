"""User splits: disjoint, exact held-out counts, unseen users never trained on, stratified."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securefvpa.data.dataset import EmbeddedPairs, UserSplit
from securefvpa.data.split import kfold_users, split_users, user_folds
from securefvpa.errors import ConfigError, DataError


def make_pairs(
    users_per_type: list[int], ppu: int, *, shuffle_seed: int | None = 0
) -> EmbeddedPairs:
    """Fake embedded pairs (the split reads only user and type indices)."""
    user_index, type_index = [], []
    u = 0
    for t, n in enumerate(users_per_type):
        for _ in range(n):
            user_index += [u] * ppu
            type_index += [t] * ppu
            u += 1
    order = np.arange(len(user_index))
    if shuffle_seed is not None:  # interleave users' rows like real data may
        order = np.random.default_rng(shuffle_seed).permutation(len(user_index))
    n = len(user_index)
    z = np.zeros((n, 2), dtype=np.float32)
    return EmbeddedPairs(
        prompt=z, chosen=z, rejected=z, chosen_len=np.zeros(n, np.float32),
        rejected_len=np.zeros(n, np.float32),
        user_index=np.array(user_index, np.int64)[order],
        type_index=np.array(type_index, np.int64)[order],
        controversial=np.full(n, -1, np.int8), user_ids=tuple(f"u{i}" for i in range(u)),
        type_names=tuple(f"t{i}" for i in range(len(users_per_type))),
        pair_ids=tuple(f"p{i}" for i in range(n)),
    )


def check_split(pairs: EmbeddedPairs, split: UserSplit, heldout: int) -> None:
    users = [d.user for d in split.seen + split.unseen]
    assert sorted(users) == sorted(set(pairs.user_index.tolist()))  # every user exactly once
    all_rows: list[int] = []
    for d in split.seen + split.unseen:
        own = set(np.flatnonzero(pairs.user_index == d.user).tolist())
        tr, ho = set(d.train_rows.tolist()), set(d.heldout_rows.tolist())
        assert not tr & ho and tr | ho == own and len(ho) == heldout and tr
        assert d.type_index == int(pairs.type_index[next(iter(own))])
        all_rows += d.train_rows.tolist() + d.heldout_rows.tolist()
    assert sorted(all_rows) == list(range(pairs.n_pairs))
    trained = {r for d in split.seen for r in d.train_rows.tolist()}
    unseen_rows = set(np.flatnonzero(np.isin(pairs.user_index, [d.user for d in split.unseen])))
    assert not trained & unseen_rows


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 12), min_size=1, max_size=4),
    ppu=st.integers(4, 9),
    heldout=st.integers(1, 3),
    share=st.floats(0.0, 0.95),
    seed=st.integers(0, 2**40),
)
def test_split_properties(
    sizes: list[int], ppu: int, heldout: int, share: float, seed: int
) -> None:
    pairs = make_pairs(sizes, ppu, shuffle_seed=seed % 7)
    split = split_users(pairs, heldout_pairs=heldout, unseen_share=share, seed=seed)
    check_split(pairs, split, heldout)
    n = sum(sizes)
    assert len(split.unseen) == min(round(share * n), n - 1)
    assert split.meta["seen_users"] == len(split.seen)


def test_stratified_by_type() -> None:
    pairs = make_pairs([20, 10, 30], 4)
    split = split_users(pairs, heldout_pairs=2, unseen_share=0.2, seed=5)
    per_type = np.bincount([d.type_index for d in split.unseen], minlength=3)
    assert per_type.tolist() == [4, 2, 6]


def test_four_pair_users() -> None:
    pairs = make_pairs([5, 5], 4)
    for h in (1, 2, 3):
        check_split(pairs, split_users(pairs, heldout_pairs=h, unseen_share=0.2, seed=0), h)
    with pytest.raises(DataError, match="user 'u0' has 4 pairs"):
        split_users(pairs, heldout_pairs=4, unseen_share=0.2, seed=0)


def test_deterministic_and_seed_changes_split() -> None:
    pairs = make_pairs([10, 10], 8)

    def key(s: UserSplit) -> tuple:
        return tuple((d.user, d.heldout_rows.tolist()) for d in s.seen + s.unseen)

    a = split_users(pairs, heldout_pairs=2, unseen_share=0.3, seed=1)
    assert key(a) == key(split_users(pairs, heldout_pairs=2, unseen_share=0.3, seed=1))
    assert key(a) != key(split_users(pairs, heldout_pairs=2, unseen_share=0.3, seed=2))


def test_bad_arguments() -> None:
    pairs = make_pairs([3], 4)
    with pytest.raises(ConfigError, match="unseen_share must be in"):
        split_users(pairs, heldout_pairs=1, unseen_share=1.0, seed=0)
    with pytest.raises(ConfigError, match="heldout_pairs must be >= 1. Found 0"):
        split_users(pairs, heldout_pairs=0, unseen_share=0.2, seed=0)
    with pytest.raises(ConfigError, match=r"k must be in \[2, users=3\]. Found 4"):
        kfold_users(pairs, 4, 0, heldout_pairs=1, seed=0)
    with pytest.raises(ConfigError, match=r"fold must be in \[0, 3\). Found 3"):
        kfold_users(pairs, 3, 3, heldout_pairs=1, seed=0)


def test_kfold_rotates_every_user_through_unseen_once() -> None:
    pairs = make_pairs([7, 6], 5)
    k = 4
    splits = [kfold_users(pairs, k, f, heldout_pairs=2, seed=9) for f in range(k)]
    unseen_count = np.zeros(13, dtype=int)
    heldout_by_user: dict[int, list[int]] = {}
    for s in splits:
        check_split(pairs, s, 2)
        for d in s.unseen:
            unseen_count[d.user] += 1
        for d in s.seen + s.unseen:
            assert heldout_by_user.setdefault(d.user, d.heldout_rows.tolist()) == \
                d.heldout_rows.tolist()  # rotating the fold never moves held-out pairs
    assert unseen_count.tolist() == [1] * 13
    sizes = sorted(len(s.unseen) for s in splits)
    assert sizes[-1] - sizes[0] <= 1
    folds = user_folds(pairs, k, seed=9)
    for f in range(k):  # each fold holds 1-2 users of each type
        per_type = [sum(1 for u, ff in folds.items() if ff == f and u < 7),
                    sum(1 for u, ff in folds.items() if ff == f and u >= 7)]
        assert all(1 <= c <= 2 for c in per_type)
