"""Canary preference pairs for an empirical privacy audit, and their insertion into a dataset.

A canary is an out-of-distribution preference pair: a prompt and two responses made of unique
pseudo-words (random consonant-vowel syllables), so no real pair resembles it and memorising it
is the only way a model can learn its preference. Canary ``i`` carries

* a drawn orientation ``label[i]`` in {0, 1}: which of its two responses is "chosen" in the
  *audited* orientation (random per canary, so response length or wording cannot correlate
  with membership);
* a membership bit ``membership[i]`` (Bernoulli 1/2): True -> the pair is trained on in the
  audited orientation; False -> it is trained on with the preference FLIPPED;
* a user ``user_of[i]``: the seen user (hence the training client) whose train rows hold it.

Why flip instead of "leave out": the mechanism's guarantee is replace-one DP per preference
pair with the number of a client's pairs public (see ``securefvpa.train.private``). Including
versus excluding a pair changes that number and is not a neighbouring pair of datasets under
this relation; the pair and its flipped copy are (one record substituted). Steinke, Nasr &
Jagielski 2023 (arXiv:2305.08846) only need the mechanism to be (eps, delta)-DP in each
canary's binary choice, so the one-run bound applies with "member" = "audited orientation".

All randomness here is audit design, not a security path: a seeded numpy Generator, recorded
in the audit report so that an auditor can recompute texts, labels, membership and users.
Imports neither torch nor flwr.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import cast

import numpy as np
import numpy.typing as npt

from securefvpa.data.dataset import EmbeddedPairs, UserData, UserSplit
from securefvpa.data.embed import embed_records
from securefvpa.data.records import PreferenceRecord
from securefvpa.errors import ConfigError, DataError

CANARY_USER_TYPE = "canary"
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "kr",
           "st", "tr", "gl", "pl", "sn", "zv", "dr", "fl")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou", "ei")
_CODAS = ("", "", "n", "r", "s", "k", "m", "x")
PROMPT_WORDS = 4
RESPONSE_WORDS = (6, 14)  # inclusive range of words per response


@dataclass(frozen=True)
class CanaryDesign:
    """Everything the audit randomises about its canaries; recomputable from ``seed``."""

    seed: int
    records: tuple[PreferenceRecord, ...]  # the AUDITED orientation (chosen = drawn label)
    membership: npt.NDArray[np.bool_]  # [m] True: trained in the audited orientation
    user_of: npt.NDArray[np.int64]  # [m] index into the seen users of the split

    @property
    def m(self) -> int:
        return len(self.records)


def _check_seed(seed: object) -> int:
    if (
        isinstance(seed, bool)
        or not isinstance(seed, numbers.Integral)
        or not 0 <= cast(int, seed) < 2**63
    ):
        raise ConfigError(f"audit.seed must be an integer in [0, 2**63). Found {seed!r}.")
    return int(seed)


def _word(rng: np.random.Generator) -> str:
    syllables = int(rng.integers(2, 5))
    return "".join(
        _ONSETS[rng.integers(len(_ONSETS))] + _VOWELS[rng.integers(len(_VOWELS))]
        + _CODAS[rng.integers(len(_CODAS))]
        for _ in range(syllables)
    )


def _sentence(rng: np.random.Generator, words: int, used: set[str]) -> str:
    out: list[str] = []
    while len(out) < words:
        w = _word(rng)
        if w not in used:  # every pseudo-word appears in one canary text only
            used.add(w)
            out.append(w)
    return " ".join(out)


def canary_records(m: int, seed: int) -> tuple[tuple[PreferenceRecord, ...], npt.NDArray[np.int8]]:
    """``m`` canary records in their audited orientation, and the drawn labels.

    ``label[i] = 1`` means response "b" (the second one generated) was drawn as chosen. Texts are
    unique pseudo-word strings: a deterministic function of ``(m, seed)``.
    """
    if isinstance(m, bool) or not isinstance(m, numbers.Integral) or m < 2:
        raise ConfigError(f"audit.canaries must be an integer >= 2. Found {m!r}.")
    rng = np.random.default_rng([_check_seed(seed), 0xCA7])
    used: set[str] = set()
    records = []
    labels = rng.integers(0, 2, size=int(m)).astype(np.int8)
    for i in range(int(m)):
        prompt = _sentence(rng, PROMPT_WORDS, used) + "?"
        # Equal word counts: the length feature of the reward head cannot tell a from b.
        words = int(rng.integers(RESPONSE_WORDS[0], RESPONSE_WORDS[1] + 1))
        a = _sentence(rng, words, used) + "."
        b = _sentence(rng, words, used) + "."
        chosen, rejected = (b, a) if labels[i] else (a, b)
        records.append(PreferenceRecord(user_id=f"canary-{i:05d}", pair_id=f"canary-{i:05d}",
                                        prompt=prompt, chosen=chosen, rejected=rejected,
                                        user_type=CANARY_USER_TYPE))
    return tuple(records), labels


def draw_design(m: int, seed: int, n_users: int) -> CanaryDesign:
    """Canary texts, membership (Bernoulli 1/2 each) and users (uniform), all from ``seed``."""
    if isinstance(n_users, bool) or not isinstance(n_users, numbers.Integral) or n_users < 1:
        raise DataError(f"canaries need at least one seen (training) user. Found {n_users!r}.")
    records, _ = canary_records(m, seed)
    rng = np.random.default_rng([_check_seed(seed), 0x3E3B])
    membership = rng.random(len(records)) < 0.5
    user_of = rng.integers(0, int(n_users), size=len(records)).astype(np.int64)
    return CanaryDesign(seed=int(seed), records=records, membership=membership, user_of=user_of)


def embed_canaries(design: CanaryDesign, *, model_path: str = "", cache_dir: str,
                   max_tokens: int = 256, batch_size: int = 32) -> EmbeddedPairs:
    """Embed the canaries (audited orientation) with the frozen encoder and cache of the run."""
    return embed_records(list(design.records), model_path=model_path, cache_dir=cache_dir,
                         max_tokens=max_tokens, batch_size=batch_size, progress=False)


def _flip(pairs: EmbeddedPairs, rows: npt.NDArray[np.bool_]) -> EmbeddedPairs:
    """Swap chosen and rejected where ``rows`` is True: the replace-one neighbour of each."""
    def pick(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        m = rows.reshape(-1, *([1] * (a.ndim - 1)))
        return np.where(m, b, a)

    return EmbeddedPairs(
        prompt=pairs.prompt, chosen=pick(pairs.chosen, pairs.rejected),
        rejected=pick(pairs.rejected, pairs.chosen),
        chosen_len=pick(pairs.chosen_len, pairs.rejected_len),
        rejected_len=pick(pairs.rejected_len, pairs.chosen_len),
        user_index=pairs.user_index, type_index=pairs.type_index,
        controversial=pairs.controversial, user_ids=pairs.user_ids,
        type_names=pairs.type_names, pair_ids=pairs.pair_ids, model_id=pairs.model_id,
    )


def _concat(real: EmbeddedPairs, canary: EmbeddedPairs, users: npt.NDArray[np.int64],
            types: npt.NDArray[np.int64]) -> EmbeddedPairs:
    return EmbeddedPairs(
        prompt=np.concatenate([real.prompt, canary.prompt]),
        chosen=np.concatenate([real.chosen, canary.chosen]),
        rejected=np.concatenate([real.rejected, canary.rejected]),
        chosen_len=np.concatenate([real.chosen_len, canary.chosen_len]),
        rejected_len=np.concatenate([real.rejected_len, canary.rejected_len]),
        user_index=np.concatenate([real.user_index, users]),
        type_index=np.concatenate([real.type_index, types]),
        controversial=np.concatenate([real.controversial,
                                      np.full(canary.n_pairs, -1, dtype=np.int8)]),
        user_ids=real.user_ids, type_names=real.type_names,
        pair_ids=real.pair_ids + canary.pair_ids, model_id=real.model_id,
    )


@dataclass(frozen=True)
class CanaryData:
    """The training data with canaries, and the same rows in the audited orientation."""

    train_pairs: EmbeddedPairs  # real pairs + canaries as trained (flipped where not members)
    audit_pairs: EmbeddedPairs  # real pairs + canaries in the audited orientation
    split: UserSplit  # seen users' train_rows extended by their canary rows
    canary_rows: npt.NDArray[np.int64]  # [m] row of canary i in both pair tables
    canary_user: tuple[UserData, ...]  # [m] the seen user holding canary i (WITHOUT canaries)


def insert_canaries(pairs: EmbeddedPairs, split: UserSplit, design: CanaryDesign,
                    canaries: EmbeddedPairs) -> CanaryData:
    """Append the canaries to ``pairs`` and to their users' train rows.

    Canary rows follow the real rows (``canary_rows = n_real + i``); nothing else moves, so
    held-out rows and unseen users are untouched.
    """
    if canaries.n_pairs != design.m:
        raise DataError(f"expected {design.m} embedded canaries. Found {canaries.n_pairs}.")
    if canaries.dim != pairs.dim:
        raise DataError(
            f"canary embeddings have dimension {canaries.dim}, the data has {pairs.dim}: "
            "they must come from the same encoder"
        )
    seen = split.seen
    if design.user_of.size and int(design.user_of.max()) >= len(seen):
        raise DataError(f"canary user index {int(design.user_of.max())} >= {len(seen)} seen users")
    n = pairs.n_pairs
    rows = np.arange(n, n + design.m, dtype=np.int64)
    holders = tuple(seen[int(u)] for u in design.user_of)
    users = np.array([u.user for u in holders], dtype=np.int64)
    types = np.array([u.type_index for u in holders], dtype=np.int64)
    audit = _concat(pairs, canaries, users, types)
    trained = _concat(pairs, _flip(canaries, ~design.membership), users, types)
    new_seen = []
    for j, u in enumerate(seen):
        extra = rows[design.user_of == j]
        new_seen.append(UserData(user=u.user, type_index=u.type_index,
                                 train_rows=np.concatenate([np.asarray(u.train_rows, np.int64),
                                                            extra]),
                                 heldout_rows=u.heldout_rows))
    new_split = UserSplit(seen=tuple(new_seen), unseen=split.unseen, seed=split.seed,
                          meta=dict(split.meta) | {"canaries": design.m})
    return CanaryData(train_pairs=trained, audit_pairs=audit, split=new_split,
                      canary_rows=rows, canary_user=holders)
