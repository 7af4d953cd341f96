"""Finishing a federated run: initial parameters, then ``metrics.json``, parameters and report.

Used by the Flower ServerApp (every mode) and by in-process runs, so both leave the same run
directory. Imports neither flwr nor torch at module level.
"""

from __future__ import annotations

import json
from typing import Any, cast

import numpy as np

from securefvpa.config import RunConfig
from securefvpa.errors import RunDirError
from securefvpa.fsutil import atomic_write, atomic_write_text
from securefvpa.rounds.engine import RoundsResult
from securefvpa.rundir import Manifest, RunDir


def initial_parameters(cfg: RunConfig, manifest: Manifest) -> dict[str, np.ndarray]:
    """The model's initial parameters, built deterministically from ``cfg.seed``."""
    from securefvpa.models.factory import build_model
    from securefvpa.train.params import model_to_arrays

    model = build_model(
        cfg.model, embed_dim=manifest.embed_dim, n_types=manifest.n_types, seed=cfg.seed
    )
    return model_to_arrays(model)


def secagg_summary(cfg: RunConfig, rounds: list[dict[str, Any]]) -> dict[str, Any] | None:
    """What secure aggregation did, per round (the report's secure-aggregation section)."""
    if not cfg.secagg.enabled:
        return None
    per_round = []
    for r in rounds:
        sa = r.get("secagg")
        if not isinstance(sa, dict):
            continue
        participants = int(cast(Any, sa.get("participants", sa.get("contributors", 0))))
        survivors = int(sa.get("contributors", 0))
        per_round.append(
            {
                "round": int(r["round"]),
                "participants": participants,
                "threshold": int(sa.get("threshold", 1)),
                "survivors": survivors,
                "dropouts": max(0, participants - survivors),
                "clipped_coordinates": int(sa.get("clipped_coordinates", 0)),
                "aborted": False,
            }
        )
    distributed = cfg.privacy.enabled and cfg.privacy.noise == "distributed"
    return {
        "rounds": per_round,
        "threshold_fraction": cfg.secagg.threshold,
        "ring_bits": cfg.secagg.bits,
        "graph_degree": cfg.secagg.degree,
        "server_saw": (
            "only the ring sum of >= t masked inputs per round (each the rounded clipped "
            "gradients of a client's sampled units plus its discrete-Gaussian noise share)"
            if distributed
            else "only the ring sum of >= t masked fixed-point updates per round"
        ),
    }


def run_metrics(cfg: RunConfig, result: RoundsResult, manifest: Manifest) -> dict[str, Any]:
    """The content of ``metrics.json`` for ``result``."""
    return {
        "model": cfg.model.kind,
        "mode": cfg.federation.mode,
        "accuracy": result.final.get("accuracy", {}),
        "pairs": result.final.get("pairs", {}),
        "latent": result.final.get("latent", {}),
        "by_group": result.final.get("by_group"),
        "rounds": result.rounds,
        "stopped_early": result.stopped_early,
        "exhausted_clients": result.exhausted,
        "secagg": secagg_summary(cfg, result.rounds),
        "privacy": cfg.privacy.enabled,
        # per-user bound of a pair-level DP run (report.per_user_bound), public under replace-one
        "privacy_group_size": (
            manifest.max_user_pairs
            if cfg.privacy.enabled and cfg.privacy.unit == "pair" and manifest.max_user_pairs
            else None
        ),
        "data": manifest.data,
    }


def finish_run(
    cfg: RunConfig, run_dir: RunDir, result: RoundsResult, manifest: Manifest
) -> dict[str, Any]:
    """Write ``final_params.npz``, close the ledger and write the privacy report (DP), then
    ``metrics.json`` (last, atomically: its presence means the run finished)."""
    metrics = run_metrics(cfg, result, manifest)
    atomic_write(
        run_dir.final_params, lambda fh: np.savez(fh, **cast("dict[str, Any]", result.params))
    )
    if cfg.privacy.enabled:
        from securefvpa.privacy.plan import close_ledger, load_plan, write_privacy_report

        plan = load_plan(cfg, run_dir)
        if plan is None:
            raise RunDirError(
                f"{str(run_dir.plan)!r} is missing or from another config: cannot write the "
                "privacy report of a DP run"
            )
        close_ledger(cfg, plan, utility=metrics["accuracy"])
        metrics["privacy_report"] = write_privacy_report(cfg, run_dir, plan, metrics=metrics)
    atomic_write_text(run_dir.metrics, json.dumps(metrics, indent=2, default=_json_default))
    return metrics


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)  # paths and the like; metrics hold nothing else
