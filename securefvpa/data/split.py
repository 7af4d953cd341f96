"""Split embedded pairs into seen users (train + held-out rows) and unseen users (context + scored).

Every user keeps ``heldout_pairs`` of its pairs held out: never trained on, only scored. Unseen
users are never trained on at all: their ``train_rows`` are the CONTEXT pairs from which a model
infers the user's latent, their ``heldout_rows`` the pairs scored. Unseen users are drawn per user
type (stratified, largest-remainder rounding so the total is ``round(unseen_share * users)``);
with ``strata`` (one label per user, e.g. the Polis conversation) per (label, type) cell, so that
every label keeps about ``unseen_share`` unseen users. Without ``strata`` the results are exactly
those of stratifying by type alone (the cells sort and draw as the types did).

Determinism: the held-out rows of a user depend only on ``(seed, user)``, and the fold of a user in
:func:`kfold_users` only on ``(seed, k)``, so rotating ``fold`` moves users between seen and unseen
without changing anyone's held-out pairs. Non-security randomness: numpy ``PCG64``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from securefvpa.data.dataset import EmbeddedPairs, IntArray, UserData, UserSplit
from securefvpa.errors import ConfigError, DataError

_HELDOUT_STREAM = 1
_UNSEEN_STREAM = 2
_FOLD_STREAM = 3


def _rng(seed: int, stream: int, *extra: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, stream, *extra])))


def _users(pairs: EmbeddedPairs) -> tuple[list[int], dict[int, IntArray], dict[int, int]]:
    present = sorted({int(u) for u in np.unique(pairs.user_index)})
    rows = {u: np.flatnonzero(pairs.user_index == u).astype(np.int64) for u in present}
    types: dict[int, int] = {}
    for u in present:
        ts = np.unique(pairs.type_index[rows[u]])
        types[u] = int(ts[0]) if len(ts) == 1 else -1  # mixed or unknown
    return present, rows, types


Cell = tuple[str, int]  # (stratum label, type index); label "" without strata


def _cells(pairs: EmbeddedPairs, present: list[int], types: dict[int, int],
           strata: Sequence[str] | None) -> dict[int, Cell]:
    if strata is None:
        return {u: ("", types[u]) for u in present}
    if len(strata) != len(pairs.user_ids):
        raise DataError(
            f"strata has {len(strata)} labels; it needs one per user ({len(pairs.user_ids)})"
        )
    return {u: (strata[u], types[u]) for u in present}


def _heldout_split(
    pairs: EmbeddedPairs, user: int, rows: IntArray, type_index: int, heldout_pairs: int, seed: int
) -> UserData:
    if len(rows) <= heldout_pairs:
        raise DataError(
            f"user {pairs.user_ids[user]!r} has {len(rows)} pairs; it needs more than "
            f"heldout_pairs={heldout_pairs} to keep at least one train/context pair"
        )
    perm = _rng(seed, _HELDOUT_STREAM, user).permutation(len(rows))
    held = np.sort(rows[perm[:heldout_pairs]])
    train = np.sort(rows[perm[heldout_pairs:]])
    return UserData(user=user, type_index=type_index, train_rows=train, heldout_rows=held)


def _check_heldout(heldout_pairs: int) -> None:
    if heldout_pairs < 1:
        raise ConfigError(f"data.heldout_pairs must be >= 1. Found {heldout_pairs!r}.")


def _build(
    pairs: EmbeddedPairs, unseen: set[int], *, heldout_pairs: int, seed: int, extra: dict[str, int]
) -> UserSplit:
    present, rows, types = _users(pairs)
    seen_d: list[UserData] = []
    unseen_d: list[UserData] = []
    for u in present:
        ud = _heldout_split(pairs, u, rows[u], types[u], heldout_pairs, seed)
        (unseen_d if u in unseen else seen_d).append(ud)
    if not seen_d:
        raise DataError("the split leaves no seen (training) user")
    meta = {
        "seen_users": len(seen_d),
        "unseen_users": len(unseen_d),
        "train_rows": int(sum(len(d.train_rows) for d in seen_d)),
        "heldout_rows": int(sum(len(d.heldout_rows) for d in seen_d)),
        "context_rows": int(sum(len(d.train_rows) for d in unseen_d)),
        "unseen_heldout_rows": int(sum(len(d.heldout_rows) for d in unseen_d)),
        "heldout_pairs": heldout_pairs,
        **extra,
    }
    return UserSplit(seen=tuple(seen_d), unseen=tuple(unseen_d), seed=seed, meta=meta)


def _largest_remainder(sizes: dict[Cell, int], share: float, total: int,
                       rng: np.random.Generator) -> dict[Cell, int]:
    quotas = {t: share * n for t, n in sizes.items()}
    alloc = {t: int(np.floor(q)) for t, q in quotas.items()}
    left = total - sum(alloc.values())
    keys = sorted(sizes)
    tiebreak = rng.random(len(keys))
    order = sorted(range(len(keys)),
                   key=lambda i: (-(quotas[keys[i]] - alloc[keys[i]]), tiebreak[i]))
    for i in order[:max(left, 0)]:
        alloc[keys[i]] += 1
    return alloc


def split_users(
    pairs: EmbeddedPairs, *, heldout_pairs: int, unseen_share: float, seed: int,
    strata: Sequence[str] | None = None,
) -> UserSplit:
    """Seen/unseen users and each user's held-out pairs (module docstring).

    ``round(unseen_share * users)`` users are unseen (at most ``users - 1``: at least one user
    always trains), stratified by user type when types are known, and by ``strata[user]`` (a
    label per entry of ``pairs.user_ids``) too when given.
    """
    _check_heldout(heldout_pairs)
    if not 0.0 <= unseen_share < 1.0:
        raise ConfigError(f"data.unseen_share must be in [0, 1). Found {unseen_share!r}.")
    present, _rows, types = _users(pairs)
    cells = _cells(pairs, present, types, strata)
    n_unseen = min(round(unseen_share * len(present)), len(present) - 1)
    rng = _rng(seed, _UNSEEN_STREAM)
    by_type: dict[Cell, list[int]] = {}
    for u in present:
        by_type.setdefault(cells[u], []).append(u)
    alloc = _largest_remainder({t: len(us) for t, us in by_type.items()}, unseen_share,
                               n_unseen, rng)
    unseen: set[int] = set()
    for t in sorted(by_type):
        us = np.array(by_type[t], dtype=np.int64)
        unseen.update(int(u) for u in rng.permutation(us)[: alloc[t]])
    return _build(pairs, unseen, heldout_pairs=heldout_pairs, seed=seed, extra={})


def user_folds(
    pairs: EmbeddedPairs, k: int, *, seed: int, strata: Sequence[str] | None = None
) -> dict[int, int]:
    """Fold (0..k-1) of every user: per type (per (stratum, type) with ``strata``), users are
    shuffled and dealt round-robin, the dealer continuing across cells, so folds are balanced in
    size and in type."""
    present, _rows, types = _users(pairs)
    cells = _cells(pairs, present, types, strata)
    if not 2 <= k <= len(present):
        raise ConfigError(f"k must be in [2, users={len(present)}]. Found {k!r}.")
    rng = _rng(seed, _FOLD_STREAM, k)
    folds: dict[int, int] = {}
    pos = 0
    for t in sorted({cells[u] for u in present}):
        us = np.array([u for u in present if cells[u] == t], dtype=np.int64)
        for u in rng.permutation(us):
            folds[int(u)] = pos % k
            pos += 1
    return folds


def kfold_users(
    pairs: EmbeddedPairs, k: int, fold: int, *, heldout_pairs: int, seed: int,
    strata: Sequence[str] | None = None,
) -> UserSplit:
    """User-level k-fold: the users of fold ``fold`` are the unseen users, the rest are seen."""
    _check_heldout(heldout_pairs)
    folds = user_folds(pairs, k, seed=seed, strata=strata)
    if not 0 <= fold < k:
        raise ConfigError(f"fold must be in [0, {k}). Found {fold!r}.")
    unseen = {u for u, f in folds.items() if f == fold}
    return _build(pairs, unseen, heldout_pairs=heldout_pairs, seed=seed,
                  extra={"k": k, "fold": fold})
