"""A planted hidden-context problem directly in embedding space (no text, no encoder).

Used by tests and as a sanity row of benchmarks/personalization.py: it isolates the model from
the text encoder. Each type t has a utility u_t(y) = w_0 . y + w_t . y over response embeddings y
with a shared direction w_0 and orthogonal type directions w_t. A pair is controversial when the
types' preferences disagree on it; each user draws ``controversial_share`` of its pairs from the
controversial pool. Labels follow the user's type (no label noise), prompts and lengths are
uninformative noise. A model without a per-user latent can do no better than chance on
controversial pairs (types are balanced and the directions symmetric).
"""

from __future__ import annotations

import numpy as np

from securefvpa.data.dataset import EmbeddedPairs, UserData, UserSplit
from securefvpa.errors import ConfigError


def utility_directions(
    rng: np.random.Generator, *, dim: int, types: int
) -> tuple[np.ndarray, np.ndarray]:
    """(w_0 [dim], w_t [types, dim]): the shared direction (norm 0.5) and the orthonormal type
    directions of u_t(y) = w_0 . y + w_t . y, from one QR of a Gaussian matrix drawn from ``rng``.

    :func:`planted_pairs` draws them first from ``default_rng(seed)``, so the same call on a
    fresh ``default_rng(seed)`` returns the directions its pairs were labelled with.
    """
    basis, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    return 0.5 * basis[:, 0], basis[:, 1 : types + 1].T


def planted_pairs(
    *,
    users: int = 60,
    pairs_per_user: int = 16,
    dim: int = 32,
    types: int = 2,
    controversial_share: float = 0.5,
    heldout_pairs: int = 4,
    unseen_share: float = 0.2,
    seed: int = 0,
) -> tuple[EmbeddedPairs, UserSplit]:
    """Generate users of ``types`` balanced types and split them (seeded, deterministic)."""
    if not 1 <= heldout_pairs < pairs_per_user:
        raise ConfigError(
            f"heldout_pairs must be in [1, pairs_per_user={pairs_per_user}). "
            f"Found {heldout_pairs!r}."
        )
    if types < 1 or dim < types + 1:
        raise ConfigError(f"need 1 <= types <= dim - 1. Found types={types!r}, dim={dim!r}.")
    if not 0.0 <= controversial_share <= 1.0:
        raise ConfigError(f"controversial_share must be in [0, 1]. Found {controversial_share!r}.")
    rng = np.random.default_rng(seed)
    w0, wt = utility_directions(rng, dim=dim, types=types)

    def draw(controversial: bool, t: int) -> tuple[np.ndarray, np.ndarray]:
        while True:
            y = rng.normal(size=(2, dim)) / np.sqrt(dim) * 4.0
            # u[i, t] = w_0 . y_i + w_t . y_i: the shared term belongs to the RESPONSE axis
            # ([2, 1]), broadcast over types ([2, types]); indexing it by type would drop it
            # from every preference and fail to broadcast for types != 2.
            u = (y @ w0)[:, None] + y @ wt.T  # [2, 1] + [2, types] -> [2, types]
            prefs = np.sign(u[0] - u[1])
            is_contro = types > 1 and len(set(prefs.tolist())) > 1
            if is_contro == controversial and prefs[t] != 0:
                return (y[0], y[1]) if prefs[t] > 0 else (y[1], y[0])

    n = users * pairs_per_user
    prompt = rng.normal(size=(n, dim)).astype(np.float32) / np.sqrt(dim)
    chosen = np.zeros((n, dim), np.float32)
    rejected = np.zeros((n, dim), np.float32)
    contro = np.zeros(n, np.int8)
    user_index = np.repeat(np.arange(users), pairs_per_user)
    user_type = np.arange(users) % types
    n_contro = round(controversial_share * pairs_per_user) if types > 1 else 0
    for u in range(users):
        flags = np.zeros(pairs_per_user, bool)
        flags[rng.choice(pairs_per_user, size=n_contro, replace=False)] = True
        for j, flag in enumerate(flags):
            i = u * pairs_per_user + j
            chosen[i], rejected[i] = draw(bool(flag), int(user_type[u]))
            contro[i] = int(flag)
    lengths = rng.uniform(1.0, 5.0, size=(2, n)).astype(np.float32)
    pairs = EmbeddedPairs(
        prompt=prompt,
        chosen=chosen,
        rejected=rejected,
        chosen_len=lengths[0],
        rejected_len=lengths[1],
        user_index=user_index.astype(np.int64),
        type_index=user_type[user_index].astype(np.int64),
        controversial=contro,
        user_ids=tuple(f"u{u}" for u in range(users)),
        type_names=tuple(f"type{t}" for t in range(types)),
        pair_ids=tuple(f"p{i}" for i in range(n)),
        model_id="planted",
    )
    order = rng.permutation(users)
    n_unseen = int(round(unseen_share * users))
    split_users = []
    for u in order:
        rows = np.arange(u * pairs_per_user, (u + 1) * pairs_per_user, dtype=np.int64)
        rows = rows[rng.permutation(pairs_per_user)]
        split_users.append(
            UserData(
                user=int(u),
                type_index=int(user_type[u]),
                train_rows=np.sort(rows[heldout_pairs:]),
                heldout_rows=np.sort(rows[:heldout_pairs]),
            )
        )
    split = UserSplit(
        seen=tuple(split_users[n_unseen:]), unseen=tuple(split_users[:n_unseen]), seed=seed
    )
    return pairs, split
