"""Combine clients' evaluation counts into run metrics (server side; numpy only).

Clients send counts, never a latent z: held-out pairs scored and correct (in total and per user
type), the same for controversial pairs, the sum of their users' KL terms, and a contingency
table of (inferred latent cell, true user type) over their users, from which the server computes
the mutual information in bits between inferred component and user type.

Groups of user types. A type name ``"<group>/<rest>"`` belongs to the group before its last
``/`` — Polis types are ``"<conversation>/g<id>"``, so a group is one conversation. For such
data :func:`group_metrics` gives each group its accuracy per role and the MI and active
components of the contingency table restricted to the group's types (the latent's separation of
opinion groups *within* a conversation, not the easy separation of conversations). Type names
without a ``/`` (generated users: ``helpful``, ``harmless`` ...) form no groups and no
``by_group`` section is written.

None of these counts is covered by DP noise (neither is the overall accuracy): under DP they are
published only as aggregates over all clients of a type or group, never per client.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np

from securefvpa.config import RunConfig
from securefvpa.errors import DataError
from securefvpa.models import metrics
from securefvpa.train.client import EvalCounts

ROLE_KEYS = {"train": "seen_users", "unseen": "unseen_users"}


def combine_eval(
    rows: list[tuple[int, str, EvalCounts]],
    cfg: RunConfig,
    *,
    type_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Run metrics from ``(partition id, role, counts)`` of every client that answered.

    Keys: ``accuracy`` (seen/unseen users, controversial pairs), ``latent`` (MI in bits, active
    components, mean KL, collapse flag), ``pairs`` (scored per role), ``by_type`` (counts per
    user type index: ``pairs`` and ``correct`` per role, each a list over types, and the
    ``contingency`` table, users per (latent cell, type), a list of ``cells`` rows), and, when
    ``type_names`` is given and names hold a ``/``, ``by_group`` (:func:`group_metrics`).

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
    type_pairs = {key: np.zeros(max(types, 1), dtype=np.int64) for key in ROLE_KEYS.values()}
    type_correct = {key: np.zeros(max(types, 1), dtype=np.float64) for key in ROLE_KEYS.values()}
    for _, role, c in rows:
        if c.contingency:
            table[: c.cells, : c.types] += np.asarray(c.contingency, dtype=np.int64).reshape(
                c.cells, c.types
            )
        if c.type_pairs and role in ROLE_KEYS:
            type_pairs[ROLE_KEYS[role]][: len(c.type_pairs)] += np.asarray(c.type_pairs)
            type_correct[ROLE_KEYS[role]][: len(c.type_correct)] += np.asarray(c.type_correct)
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
    if rows:
        out["by_type"] = {
            "pairs": {k: [int(x) for x in v] for k, v in type_pairs.items()},
            "correct": {k: [float(x) for x in v] for k, v in type_correct.items()},
            "contingency": table.tolist(),
        }
        if type_names is not None:
            groups = group_metrics(out["by_type"], type_names, kind=cfg.model.kind)
            if groups:
                out["by_group"] = groups
    if not cfg.privacy.enabled:
        out["per_client"] = sorted([pid, ro, c.pairs, c.correct] for pid, ro, c in rows)
    return out


def group_of(type_name: str) -> str:
    """The group of a user type: the text before the last ``/`` (the whole name without one).

    ``"american-assembly.bowling-green/g1"`` -> ``"american-assembly.bowling-green"``."""
    return type_name.rsplit("/", 1)[0]


def group_metrics(
    by_type: dict[str, Any], type_names: Sequence[str], *, kind: str
) -> dict[str, dict[str, Any]]:
    """Per group of user types (:func:`group_of`), from a ``by_type`` section of
    :func:`combine_eval` and the run's type names (``metrics.json`` ``data.type_names``).

    Returns ``{group: {"types", "users", "pairs": {role: n}, "accuracy": {role: share or
    None}, "mutual_information_bits", "active_components"}}``, groups sorted by name; ``{}``
    when no name holds a ``/``. ``users`` counts every evaluated user of the group (both
    roles); MI (bits, plug-in) and active components are those of the (cell x type) table
    restricted to the group's types (:func:`latent_summary`), so the number of groups
    (conversations) never inflates them.

    Raises DataError when ``by_type`` does not have one column per type name.
    """
    names = list(type_names)
    if not any("/" in n for n in names):
        return {}
    table = np.asarray(by_type["contingency"], dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != len(names):
        raise DataError(
            f"by_type.contingency has shape {table.shape}, expected (cells, {len(names)}) for "
            f"the run's {len(names)} type names"
        )
    for section in ("pairs", "correct"):
        for role, values in by_type[section].items():
            if len(values) != len(names):
                raise DataError(
                    f"by_type.{section}.{role} has {len(values)} entries, expected one per type "
                    f"name ({len(names)})"
                )
    members: dict[str, list[int]] = {}
    for t, name in enumerate(names):
        members.setdefault(group_of(name), []).append(t)
    out: dict[str, dict[str, Any]] = {}
    for group in sorted(members):
        idx = members[group]
        pairs = {
            role: int(sum(by_type["pairs"][role][t] for t in idx)) for role in by_type["pairs"]
        }
        correct = {role: float(sum(by_type["correct"][role][t] for t in idx)) for role in pairs}
        sub = table[:, idx]
        summary = latent_summary(sub, mean_kl=0.0, latent_dim=1, kind=kind)
        out[group] = {
            "types": len(idx),
            "users": int(sub.sum()),
            "pairs": pairs,
            "accuracy": {role: correct[role] / n if n else None for role, n in pairs.items()},
            "mutual_information_bits": summary["mutual_information_bits"],
            "active_components": summary["active_components"],
        }
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


def collect_node_evaluations(
    logs: Sequence[Path], cfg: RunConfig, *, type_names: Sequence[str] | None = None
) -> dict[int, dict[str, Any]]:
    """Round -> metrics from the nodes' own evaluation logs (DP runs keep counts on the nodes).

    Only the operator of every node may do this (a simulation's launcher, or each node for
    itself): the server never sees these counts. Lines are ``{"round", "partition_id", "role",
    "counts"}`` (``train.client.evaluate_round``); a damaged line is a RunDirError naming the file.
    """
    from securefvpa.errors import RunDirError

    by_round: dict[int, list[tuple[int, str, EvalCounts]]] = {}
    for path in logs:
        if not path.is_file():
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            try:
                row = json.loads(line)
                counts = row["counts"]
                counts = EvalCounts(
                    **cast(
                        "dict[str, Any]",
                        {k: tuple(v) if isinstance(v, list) else v for k, v in counts.items()},
                    )
                )
                by_round.setdefault(int(row["round"]), []).append(
                    (int(row["partition_id"]), str(row["role"]), counts)
                )
            except (ValueError, KeyError, TypeError) as exc:
                raise RunDirError(
                    f"evaluation log {str(path)!r} line {n} is damaged: {exc}"
                ) from None
    return {
        r: combine_eval(rows, cfg, type_names=type_names) for r, rows in sorted(by_round.items())
    }
