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
from securefvpa.train.client import EvalCounts


def combine_eval(rows: list[tuple[int, str, EvalCounts]], cfg: RunConfig) -> dict[str, Any]:
    """Run metrics from ``(partition id, role, counts)`` of every client that answered.

    Per-client counts are published (``per_client``: what paired benchmarks bootstrap over) only
    when DP is off: under DP they are released by nothing that noise covers, so they stay out of
    ``metrics.json`` (threat_models/dp.md).
    """

    def acc(role: str | None, num: str, den: str) -> float | None:
        n = sum(getattr(c, den) for _, ro, c in rows if role in (None, ro))
        k = sum(getattr(c, num) for _, ro, c in rows if role in (None, ro))
        return k / n if n else None

    cells = max((c.cells for _, _, c in rows), default=0)
    types = max((c.types for _, _, c in rows), default=0)
    table = np.zeros((max(cells, 1), max(types, 1)), dtype=np.int64)
    for _, _, c in rows:
        if c.contingency:
            table[: c.cells, : c.types] += np.asarray(c.contingency, dtype=np.int64).reshape(
                c.cells, c.types
            )
    kl_sum = sum(c.kl_sum for _, _, c in rows)
    users = sum(c.users for _, _, c in rows)
    latent = latent_summary(
        table,
        mean_kl=kl_sum / users if users else 0.0,
        latent_dim=cfg.model.latent_dim,
        kind=cfg.model.kind,
    )
    out: dict[str, Any] = {
        "accuracy": {
            "seen_users": acc("train", "correct", "pairs"),
            "unseen_users": acc("unseen", "correct", "pairs"),
            "controversial": acc(None, "contro_correct", "contro_pairs"),
        },
        "latent": latent,
        "pairs": {
            "seen_users": sum(c.pairs for _, ro, c in rows if ro == "train"),
            "unseen_users": sum(c.pairs for _, ro, c in rows if ro == "unseen"),
        },
    }
    if not cfg.privacy.enabled:
        out["per_client"] = sorted([pid, ro, c.pairs, c.correct] for pid, ro, c in rows)
    return out


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
