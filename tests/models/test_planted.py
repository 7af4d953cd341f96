"""The planted problem labels pairs by u_t(y) = w_0 . y + w_t . y, for any number of types."""

from __future__ import annotations

import numpy as np
import pytest

from securefvpa.models.planted import planted_pairs, utility_directions


@pytest.mark.parametrize("types", [1, 2, 3, 5])
def test_labels_follow_the_documented_utilities(types: int) -> None:
    dim, seed = 12, 4
    pairs, split = planted_pairs(
        users=3 * types, pairs_per_user=8, dim=dim, types=types, heldout_pairs=2, seed=seed
    )
    w0, wt = utility_directions(np.random.default_rng(seed), dim=dim, types=types)
    assert wt.shape == (types, dim)
    # utility margin of chosen over rejected, for every type: [pairs, types]
    margin = (pairs.chosen - pairs.rejected).astype(np.float64) @ (w0[None, :] + wt).T
    own = margin[np.arange(pairs.n_pairs), pairs.type_index]
    assert np.all(own > 0), "a chosen response is not the one the user's type prefers"
    signs = np.sign(margin)
    disagree = (signs != signs[:, :1]).any(axis=1)
    np.testing.assert_array_equal(disagree.astype(np.int8), pairs.controversial)
    assert sorted(set(pairs.type_index.tolist())) == list(range(types))
    assert len(split.seen) + len(split.unseen) == 3 * types


def test_controversial_share_is_exact_per_user() -> None:
    pairs, _ = planted_pairs(users=6, pairs_per_user=8, dim=10, types=3, seed=1,
                             controversial_share=0.25)
    per_user = pairs.controversial.reshape(6, 8).sum(axis=1)
    assert np.all(per_user == 2)


def test_shared_direction_is_part_of_every_type_utility() -> None:
    """Non-controversial pairs are ranked the same by all types, so their margins along the
    shared direction w_0 agree with the label more often than chance (w_0 enters u_t)."""
    dim, seed = 8, 0
    pairs, _ = planted_pairs(users=20, pairs_per_user=16, dim=dim, types=3, seed=seed,
                             controversial_share=0.0)
    w0, _ = utility_directions(np.random.default_rng(seed), dim=dim, types=3)
    shared = (pairs.chosen - pairs.rejected).astype(np.float64) @ w0
    assert np.mean(shared > 0) > 0.6
