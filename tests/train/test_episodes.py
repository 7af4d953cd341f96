"""Episode partition: disjoint cover of every user's train rows, content-blind, masks exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from securefvpa.data.dataset import UserData
from securefvpa.errors import ConfigError, DataError
from securefvpa.models.planted import planted_pairs
from securefvpa.train.episodes import collate, eval_batch, partition_episodes


def _users_with_sizes(sizes: list[int]) -> tuple[object, list[UserData]]:
    total = max(sum(sizes), 1)
    pairs, _ = planted_pairs(users=1, pairs_per_user=max(total, 2), dim=4, heldout_pairs=1, seed=0)
    users, start = [], 0
    for u, n in enumerate(sizes):
        users.append(
            UserData(
                user=u,
                type_index=u % 2,
                train_rows=np.arange(start, start + n),
                heldout_rows=np.zeros(0, dtype=np.int64),
            )
        )
        start += n
    return pairs, users


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 40), min_size=1, max_size=6),
    ctx=st.integers(1, 9),
    tgt=st.integers(1, 5),
    seed=st.integers(0, 2**32 - 1),
)
def test_partition_is_a_disjoint_cover_with_bounded_episodes(sizes, ctx, tgt, seed) -> None:
    pairs, users = _users_with_sizes(sizes)
    eps = partition_episodes(
        pairs, users, context_pairs=ctx, target_pairs=tgt, rng=np.random.default_rng(seed)
    )
    for user in users:
        mine = [e for e in eps if e.user == user.user]
        rows = (
            np.concatenate([np.concatenate([e.context, e.targets]) for e in mine])
            if mine
            else np.zeros(0)
        )
        assert sorted(rows.tolist()) == sorted(user.train_rows.tolist())  # each row exactly once
        for e in mine:
            assert len(e.context) + len(e.targets) <= ctx + tgt
            assert len(e.targets) >= 1
            if len(e.context) + len(e.targets) >= 2:
                assert len(e.context) >= 1
            assert not set(e.context.tolist()) & set(e.targets.tolist())
            assert e.type_index == user.type_index
        if len(user.train_rows) % (ctx + tgt) == 0:
            assert all(len(e.context) == ctx and len(e.targets) == tgt for e in mine)
        sizes_u = [len(e.context) + len(e.targets) for e in mine]
        assert not sizes_u or max(sizes_u) - min(sizes_u) <= 1


def test_four_pairs_per_user_and_single_row_user() -> None:
    pairs, users = _users_with_sizes([4, 3, 2, 1])
    eps = partition_episodes(
        pairs, users, context_pairs=8, target_pairs=4, rng=np.random.default_rng(0)
    )
    by_user = {e.user: e for e in eps}
    assert len(eps) == 4
    assert (len(by_user[0].context), len(by_user[0].targets)) == (3, 1)
    assert (len(by_user[2].context), len(by_user[2].targets)) == (1, 1)
    assert (len(by_user[3].context), len(by_user[3].targets)) == (0, 1)
    batch = collate(pairs, eps)
    assert batch.ctx_mask.sum(1).tolist() == [3, 2, 1, 0]
    assert batch.tgt_mask.sum(1).tolist() == [1, 1, 1, 1]


def test_slot_assignment_is_blind_to_content() -> None:
    """Same rng state, different embeddings -> identical partition (depends on permutation only)."""
    pairs, users = _users_with_sizes([30, 17])
    other = pairs.subset(np.arange(pairs.n_pairs)[::-1].copy())
    a = partition_episodes(
        pairs, users, context_pairs=8, target_pairs=4, rng=np.random.default_rng(7)
    )
    b = partition_episodes(
        other, users, context_pairs=8, target_pairs=4, rng=np.random.default_rng(7)
    )
    assert [(e.context.tolist(), e.targets.tolist()) for e in a] == [
        (e.context.tolist(), e.targets.tolist()) for e in b
    ]


def test_collate_pads_with_zeros_and_masks() -> None:
    pairs, users = _users_with_sizes([12, 5])
    eps = partition_episodes(
        pairs, users, context_pairs=8, target_pairs=4, rng=np.random.default_rng(1)
    )
    batch = collate(pairs, eps)
    assert batch.ctx_prompt.shape == (2, 8, pairs.dim) and batch.tgt_chosen.shape == (
        2,
        4,
        pairs.dim,
    )
    assert batch.ctx_len.shape == (2, 8, 2) and batch.ctx_mask.dtype == torch.bool
    assert torch.all(batch.ctx_prompt[~batch.ctx_mask] == 0)
    for i, e in enumerate(eps):
        np.testing.assert_array_equal(batch.ctx_rows[i][: len(e.context)], e.context)
        np.testing.assert_array_equal(
            batch.ctx_chosen[i, : len(e.context)].numpy(), pairs.chosen[e.context]
        )
        np.testing.assert_array_equal(
            batch.tgt_len[i, : len(e.targets), 1].numpy(), pairs.rejected_len[e.targets]
        )


def test_eval_batch_uses_train_as_context_and_heldout_as_targets() -> None:
    pairs, split = planted_pairs(users=6, pairs_per_user=10, dim=4, heldout_pairs=3, seed=2)
    batch = eval_batch(pairs, split.seen)
    for i, u in enumerate(split.seen):
        assert sorted(batch.ctx_rows[i][batch.ctx_rows[i] >= 0].tolist()) == sorted(
            u.train_rows.tolist()
        )
        assert sorted(batch.tgt_rows[i][batch.tgt_rows[i] >= 0].tolist()) == sorted(
            u.heldout_rows.tolist()
        )
    bad = UserData(user=0, type_index=0, train_rows=np.array([0, 1]), heldout_rows=np.array([1]))
    with pytest.raises(DataError, match="overlap"):
        eval_batch(pairs, [bad])
    oob = UserData(user=0, type_index=0, train_rows=np.array([0, 999]), heldout_rows=np.array([1]))
    with pytest.raises(DataError, match="999"):
        eval_batch(pairs, [oob])


def test_bad_sizes_are_rejected_with_the_value() -> None:
    pairs, users = _users_with_sizes([5])
    with pytest.raises(ConfigError, match="Found 0"):
        partition_episodes(
            pairs, users, context_pairs=0, target_pairs=4, rng=np.random.default_rng(0)
        )
