"""Combine clients' evaluation counts into run metrics (server side; numpy only).

Clients send counts, never a latent z: held-out pairs scored and correct, the same for
controversial pairs, the sum of their users' KL terms, and a contingency table of
(inferred latent cell, true user type) over their users, from which the server computes the
mutual information in bits between inferred component and user type.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from securefvpa.config import RunConfig
from securefvpa.models import metrics


def combine_eval_replies(rows: list[tuple[str, dict[str, Any]]], cfg: RunConfig) -> dict[str, Any]:
    def acc(role: str | None, num: str, den: str) -> float | None:
        n = sum(int(r[den]) for ro, r in rows if role in (None, ro))
        c = sum(float(r[num]) for ro, r in rows if role in (None, ro))
        return c / n if n else None

    cells = max((int(r["cells"]) for _, r in rows), default=0)
    types = max((int(r["types"]) for _, r in rows), default=0)
    table = np.zeros((max(cells, 1), max(types, 1)), dtype=np.int64)
    kl_sum, users = 0.0, 0
    for _, r in rows:
        t = np.asarray(r["contingency"], dtype=np.int64)
        if t.size:
            table[: int(r["cells"]), : int(r["types"])] += t.reshape(
                int(r["cells"]), int(r["types"])
            )
        kl_sum += float(r["kl-sum"])
        users += int(r["users"])
    latent = latent_summary(
        table,
        mean_kl=kl_sum / users if users else 0.0,
        latent_dim=cfg.model.latent_dim,
        kind=cfg.model.kind,
    )
    return {
        "accuracy": {
            "seen_users": acc("train", "correct", "pairs"),
            "unseen_users": acc("unseen", "correct", "pairs"),
            "controversial": acc(None, "contro-correct", "contro-pairs"),
        },
        "latent": latent,
        "pairs": {
            "seen_users": sum(int(r["pairs"]) for ro, r in rows if ro == "train"),
            "unseen_users": sum(int(r["pairs"]) for ro, r in rows if ro == "unseen"),
        },
        # Per-client counts (no z, no pair-level data): what paired benchmarks bootstrap over.
        "per_client": sorted(
            (
                [int(r["partition-id"]), ro, int(r["pairs"]), float(r["correct"])]
                for ro, r in rows
                if "partition-id" in r
            ),
            key=lambda x: x[0],
        ),
    }


def latent_summary(
    table: np.ndarray, *, mean_kl: float, latent_dim: int, kind: str
) -> dict[str, Any]:
    """MI in bits, active cells, mean KL and the collapse flag from a (cell x type) table."""
    cells, types = np.nonzero(table)
    counts = table[cells, types]
    a = np.repeat(cells, counts)
    b = np.repeat(types, counts)
    mi = metrics.mutual_information_bits(a, b) if a.size and kind != "btl" else 0.0
    latent = kind in ("vpl", "fedvpa-gp")
    return {
        "mutual_information_bits": mi,
        "active_components": metrics.active_components(a) if a.size else 0,
        "mean_kl": mean_kl,
        "posterior_collapse": metrics.posterior_collapse(mean_kl, latent_dim, mi)
        if latent
        else False,
    }
