"""Episodes: the per-sample unit of (DP-)SGD, built from each user's training pairs.

An episode is a group of pairs of ONE user, split into context pairs (encoded into z) and target
pairs (scored by the reward head); context and targets are disjoint.

:func:`partition_episodes` draws, for every user, a uniformly random permutation of the user's
train rows and cuts it into ``ceil(n / E)`` consecutive chunks of near-equal size (sizes differ by
at most one, E = context_pairs + target_pairs). Inside a chunk of m >= 2 rows the first
``clip(round(m * context_pairs / E), 1, m - 1)`` rows are context and the rest targets; a user
with a single train row gets one target-only episode (empty context, z from the empty set). So:

- every train pair belongs to exactly one episode per step (disjoint cover);
- which slot a pair lands in depends only on the permutation and on n, never on content, so
  replacing one pair by another changes at most one episode;
- sizes never exceed E, so each episode holds at most E pairs of one user.

Chunks of near-equal size replace "full chunks plus one smaller leftover": a leftover of one pair
could not hold both a context and a target pair.
Tested in tests/train/test_episodes.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

import numpy as np
import numpy.typing as npt
import torch

from securefvpa.data.dataset import EmbeddedPairs, UserData
from securefvpa.errors import ConfigError, DataError
from securefvpa.models.batch import MODEL_INPUTS, EpisodeBatch

__all__ = [
    "MODEL_INPUTS",
    "Episode",
    "EpisodeBatch",
    "collate",
    "eval_batch",
    "partition_episodes",
    "unit_episodes",
    "user_episodes",
]

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Episode:
    """Row indices (into EmbeddedPairs) of one episode of one user."""

    user: int
    context: IntArray
    targets: IntArray
    type_index: int = -1


def _chunk_sizes(n: int, size: int) -> list[int]:
    count = -(-n // size)
    base, extra = divmod(n, count)
    return [base + 1] * extra + [base] * (count - extra)


def partition_episodes(
    pairs: EmbeddedPairs,
    users: Sequence[UserData],
    *,
    context_pairs: int,
    target_pairs: int,
    rng: np.random.Generator,
) -> list[Episode]:
    """One step's disjoint partition of every user's ``train_rows`` into episodes.

    Users are visited in the given order; episodes of one user are contiguous in the result.
    """
    if context_pairs < 1:
        raise ConfigError(f"train.context_pairs must be >= 1. Found {context_pairs!r}.")
    if target_pairs < 1:
        raise ConfigError(f"train.target_pairs must be >= 1. Found {target_pairs!r}.")
    size = context_pairs + target_pairs
    episodes: list[Episode] = []
    for user in users:
        rows = np.asarray(user.train_rows, dtype=np.int64)
        _check_rows(pairs, user, rows)
        n = rows.shape[0]
        if n == 0:
            continue
        perm = rows[rng.permutation(n)]
        start = 0
        for m in _chunk_sizes(n, size):
            chunk = perm[start : start + m]
            start += m
            n_ctx = 0 if m == 1 else min(max(round(m * context_pairs / size), 1), m - 1)
            episodes.append(
                Episode(
                    user=user.user,
                    context=chunk[:n_ctx],
                    targets=chunk[n_ctx:],
                    type_index=int(user.type_index),
                )
            )
    return episodes


def user_episodes(
    pairs: EmbeddedPairs,
    users: Sequence[UserData],
    *,
    context_pairs: int,
    target_pairs: int,
    rng: np.random.Generator,
) -> list[Episode]:
    """One episode per user with train pairs: the privacy unit of ``privacy.unit = "user"``.

    Each user's episode is a uniformly random subset of at most ``E = context_pairs +
    target_pairs`` of its train rows (the cap), split into context and targets as in
    :func:`partition_episodes`. A user's whole profile therefore enters a step through exactly
    one episode, so one clipped per-episode gradient is one user's contribution.
    """
    if context_pairs < 1 or target_pairs < 1:
        raise ConfigError(
            f"train.context_pairs and target_pairs must be >= 1. Found {context_pairs!r}, "
            f"{target_pairs!r}."
        )
    size = context_pairs + target_pairs
    episodes: list[Episode] = []
    for user in users:
        rows = np.asarray(user.train_rows, dtype=np.int64)
        _check_rows(pairs, user, rows)
        n = rows.shape[0]
        if n == 0:
            continue
        m = min(n, size)
        chunk = rows[rng.permutation(n)[:m]]
        n_ctx = 0 if m == 1 else min(max(round(m * context_pairs / size), 1), m - 1)
        episodes.append(
            Episode(
                user=user.user,
                context=chunk[:n_ctx],
                targets=chunk[n_ctx:],
                type_index=int(user.type_index),
            )
        )
    return episodes


def _check_rows(pairs: EmbeddedPairs, user: UserData, rows: IntArray) -> None:
    if rows.size and (rows.min() < 0 or rows.max() >= pairs.n_pairs):
        bad = rows[(rows < 0) | (rows >= pairs.n_pairs)][0]
        raise DataError(
            f"user {user.user}: row index {int(bad)} is outside EmbeddedPairs "
            f"(n_pairs={pairs.n_pairs})"
        )


class _Gathered(TypedDict):
    prompt: torch.Tensor
    chosen: torch.Tensor
    rejected: torch.Tensor
    len: torch.Tensor
    mask: torch.Tensor
    rows: IntArray


def _gather(pairs: EmbeddedPairs, groups: Sequence[IntArray]) -> _Gathered:
    b = len(groups)
    k = max((len(g) for g in groups), default=0)
    k = max(k, 1)  # keep a real (all-masked) slot so shapes never have a zero axis
    rows = np.full((b, k), -1, dtype=np.int64)
    for i, g in enumerate(groups):
        rows[i, : len(g)] = g
    mask = rows >= 0
    safe = np.where(mask, rows, 0)
    zero = np.float32(0.0)

    def take(arr: npt.NDArray[np.float32]) -> torch.Tensor:
        vals = arr[safe]
        m = mask.reshape(*mask.shape, *([1] * (vals.ndim - 2)))
        return torch.from_numpy(np.where(m, vals, zero).astype(np.float32, copy=False))

    lens = np.stack([pairs.chosen_len, pairs.rejected_len], axis=-1)
    return {
        "prompt": take(pairs.prompt),
        "chosen": take(pairs.chosen),
        "rejected": take(pairs.rejected),
        "len": take(lens),
        "mask": torch.from_numpy(mask),
        "rows": rows,
    }


def collate(pairs: EmbeddedPairs, episodes: Sequence[Episode]) -> EpisodeBatch:
    """Pad episodes to a common [B, Kc] context and [B, Kt] target shape; padding is zeros."""
    ctx = _gather(pairs, [e.context for e in episodes])
    tgt = _gather(pairs, [e.targets for e in episodes])
    return EpisodeBatch(
        ctx_prompt=ctx["prompt"],
        ctx_chosen=ctx["chosen"],
        ctx_rejected=ctx["rejected"],
        ctx_len=ctx["len"],
        ctx_mask=ctx["mask"],
        tgt_prompt=tgt["prompt"],
        tgt_chosen=tgt["chosen"],
        tgt_rejected=tgt["rejected"],
        tgt_len=tgt["len"],
        tgt_mask=tgt["mask"],
        type_index=torch.tensor([e.type_index for e in episodes], dtype=torch.long),
        tgt_rows=tgt["rows"],
        ctx_rows=ctx["rows"],
    )


def eval_batch(pairs: EmbeddedPairs, users: Sequence[UserData]) -> EpisodeBatch:
    """One episode per user: context = all ``train_rows``, targets = ``heldout_rows``."""
    episodes = []
    for user in users:
        train = np.asarray(user.train_rows, dtype=np.int64)
        held = np.asarray(user.heldout_rows, dtype=np.int64)
        _check_rows(pairs, user, train)
        _check_rows(pairs, user, held)
        if np.intersect1d(train, held).size:
            raise DataError(f"user {user.user}: train_rows and heldout_rows overlap")
        episodes.append(
            Episode(user=user.user, context=train, targets=held, type_index=int(user.type_index))
        )
    return collate(pairs, episodes)


UNITS = ("pair", "user")


def unit_episodes(
    pairs: EmbeddedPairs,
    users: tuple[UserData, ...] | list[UserData],
    *,
    unit: str,
    train_cfg: Any,
    rng: np.random.Generator,
) -> list[Any]:
    """This step's privacy units as episodes: a disjoint partition of the pairs (``"pair"``) or
    one capped episode per user (``"user"``). Either way one unit is one episode, so one clipped
    per-episode gradient is one unit's whole contribution to the step."""
    if unit == "pair":
        return partition_episodes(pairs, users, context_pairs=train_cfg.context_pairs,
                                  target_pairs=train_cfg.target_pairs, rng=rng)
    if unit == "user":
        return user_episodes(pairs, users, context_pairs=train_cfg.context_pairs,
                             target_pairs=train_cfg.target_pairs, rng=rng)
    raise ConfigError(f"privacy.unit must be one of {list(UNITS)}. Found {unit!r}.")
