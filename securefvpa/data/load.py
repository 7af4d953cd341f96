"""The one data entry point of a run: records -> embeddings -> user split."""

from __future__ import annotations

import logging
import time
from typing import Any

from securefvpa.config import RunConfig
from securefvpa.data.dataset import EmbeddedPairs, UserSplit
from securefvpa.data.embed import embed_records_with_stats
from securefvpa.data.hh_rlhf import load_hh_rlhf_with_stats
from securefvpa.data.jsonl import read_records
from securefvpa.data.polis import conversation_of, load_polis_with_stats, users_by_conversation
from securefvpa.data.records import PreferenceRecord
from securefvpa.data.split import split_users
from securefvpa.data.synth import generate
from securefvpa.errors import ConfigError, DataError

log = logging.getLogger("securefvpa.data")


def cap_users_balanced(records: list[PreferenceRecord], users: int) -> list[PreferenceRecord]:
    """Keep ``users`` users, as evenly spread over user types as the data allows.

    Users are taken in their order of first appearance within each type (the HH loader has already
    shuffled them with the run seed); types are filled round-robin in sorted order.
    """
    order: dict[str | None, list[str]] = {}
    seen: set[str] = set()
    for r in records:
        if r.user_id not in seen:
            seen.add(r.user_id)
            order.setdefault(r.user_type, []).append(r.user_id)
    if users >= len(seen):
        return records
    keep: set[str] = set()
    queues = [list(v) for _, v in sorted(order.items(), key=lambda kv: str(kv[0]))]
    while len(keep) < users:
        for q in queues:
            if q and len(keep) < users:
                keep.add(q.pop(0))
    return [r for r in records if r.user_id in keep]


def build_records(cfg: RunConfig) -> tuple[list[PreferenceRecord], dict[str, Any]]:
    """The preference records ``cfg.data`` asks for, and counts about how they were built."""
    d = cfg.data
    info: dict[str, Any] = {"source": d.source}
    if d.source == "synth":
        if d.users < 1:
            raise ConfigError(f"data.users must be >= 1 when data.source='synth'. Found {d.users}.")
        records = generate(users=d.users, pairs_per_user=d.pairs_per_user, types=d.types,
                           controversial_share=d.controversial_share, seed=cfg.seed)
    elif d.source == "hh_rlhf":
        records, st = load_hh_rlhf_with_stats(d.resolved_hh_rlhf_dir(),
                                              pairs_per_user=d.pairs_per_user, seed=cfg.seed,
                                              max_pairs=d.max_pairs)
        info.update(st.as_info())
        if d.users > 0:
            before = len({r.user_id for r in records})
            records = cap_users_balanced(records, d.users)
            info["hh_users_available"] = before
    elif d.source == "jsonl":
        records = read_records(d.path)
    elif d.source == "polis":
        # Every kept user has exactly pairs_per_user pairs (min_pairs = the cap): equal context
        # per user, and no ungrouped participant has 16 pairs, so the oracle sees only typed users.
        records, pst = load_polis_with_stats(d.resolved_polis_dir(),
                                             pairs_per_user=d.pairs_per_user, seed=cfg.seed,
                                             min_pairs=d.pairs_per_user,
                                             conversations=d.conversations)
        info.update(pst.as_info())
        if d.users > 0:
            before = len({r.user_id for r in records})
            records = cap_users_balanced(records, d.users)
            info["polis_users_available"] = before
    else:  # pragma: no cover - config validation rejects other values
        raise ConfigError(
            f"data.source must be one of ['synth', 'hh_rlhf', 'jsonl', 'polis']. "
            f"Found {d.source!r}."
        )
    return drop_short_users(records, d.effective_min_pairs_per_user(), info), info


def drop_short_users(
    records: list[PreferenceRecord], min_pairs: int, info: dict[str, Any]
) -> list[PreferenceRecord]:
    """Drop users with fewer than ``min_pairs`` pairs (``data.min_pairs_per_user``), logging how
    many; a data set where no user is left is a :class:`DataError` naming the setting."""
    counts: dict[str, int] = {}
    for r in records:
        counts[r.user_id] = counts.get(r.user_id, 0) + 1
    short = {u for u, n in counts.items() if n < min_pairs}
    info["min_pairs_per_user"] = min_pairs
    info["users_dropped_short"] = len(short)
    if not short:
        return records
    if len(short) == len(counts):
        raise DataError(
            f"every one of the {len(counts)} users has fewer than data.min_pairs_per_user="
            f"{min_pairs} pairs (0 means heldout_pairs + 1); nothing is left to train on"
        )
    log.info("data: dropped %d users with fewer than %d pairs (%d pairs; data.min_pairs_per_user)",
             len(short), min_pairs, sum(counts[u] for u in short))
    return [r for r in records if r.user_id not in short]


def load_dataset(cfg: RunConfig) -> tuple[EmbeddedPairs, UserSplit, dict[str, Any]]:
    """Records from ``cfg.data.source``, embedded with ``cfg.embedding``, split with ``cfg.data``.

    ``info`` holds: source, records, users, types, type_names, distinct_texts, cache_hits,
    cache_misses, model_loaded, embed_seconds, texts_per_s, model_id, the split's counts
    (split_*), for hh_rlhf the rows read/skipped/left over (hh_*), and for polis the
    participants read/grouped, users kept/dropped and unseen per conversation (polis_*).
    """
    t0 = time.perf_counter()
    records, info = build_records(cfg)
    e = cfg.embedding
    pairs, st = embed_records_with_stats(records, model_path=e.model_path, cache_dir=e.cache_dir,
                                         max_tokens=e.max_tokens, batch_size=e.batch_size)
    # Polis: unseen users are drawn within each conversation (its prompt gives it away).
    strata = ([conversation_of(u) for u in pairs.user_ids] if cfg.data.source == "polis"
              else None)
    split = split_users(pairs, heldout_pairs=cfg.data.heldout_pairs,
                        unseen_share=cfg.data.unseen_share, seed=cfg.seed, strata=strata)
    if strata is not None:
        info["polis_unseen_by_conversation"] = users_by_conversation(
            pairs.user_ids, [d.user for d in split.unseen])
    info.update(
        records=pairs.n_pairs,
        users=len(pairs.user_ids),
        types=len(pairs.type_names),
        type_names=list(pairs.type_names),
        distinct_texts=st.texts,
        cache_hits=st.hits,
        cache_misses=st.misses,
        model_loaded=st.model_loaded,
        embed_seconds=round(st.encode_seconds, 3),
        texts_per_s=None if st.misses == 0 else round(st.texts_per_s, 1),
        model_id=st.model_id,
        **{f"split_{k}": v for k, v in split.meta.items()},
        seconds=round(time.perf_counter() - t0, 3),
    )
    log.info("data: %d pairs of %d users (%d types), %d distinct texts (%d cached), split %s",
             pairs.n_pairs, len(pairs.user_ids), len(pairs.type_names), st.texts, st.hits,
             split.meta)
    return pairs, split, info
