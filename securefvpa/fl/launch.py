"""Launching federated runs: partitions on disk, Flower's simulation engine or a SuperLink.

``securefvpa run`` calls :func:`run_federated` after the data is loaded. The run directory is
the only thing the apps share: ``config.resolved.toml``, ``manifest.json``, one partition file
per client under ``partitions/``, the server checkpoint, the privacy ledger, and at the end
``metrics.json`` and ``final_params.npz`` (written by the ServerApp, in every mode).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from securefvpa.config import RunConfig
from securefvpa.data.dataset import EmbeddedPairs, UserSplit
from securefvpa.errors import FederationError
from securefvpa.fl.partition import make_partitions, save_partition
from securefvpa.fsutil import atomic_write_text

log = logging.getLogger("securefvpa.fl")

MANIFEST = "manifest.json"


def prepare_federated_run(
    cfg: RunConfig, pairs: EmbeddedPairs, split: UserSplit, run_dir: Path
) -> dict[str, Any]:
    parts = make_partitions(pairs, split, cfg.federation, cfg.seed)
    part_dir = run_dir / "partitions"
    for p in parts:
        save_partition(p, part_dir)
    manifest = {
        "clients": len(parts),
        "train_clients": sum(p.role == "train" for p in parts),
        "unseen_clients": sum(p.role == "unseen" for p in parts),
        "embed_dim": pairs.dim,
        "type_names": list(pairs.type_names),
        "max_train_pairs": max(p.n_train_pairs for p in parts),
    }
    (run_dir / MANIFEST).write_text(json.dumps(manifest, indent=2))
    if cfg.secagg.enabled:
        from securefvpa.fl.secagg_keys import prepare_identities

        prepare_identities(run_dir, [p.partition_id for p in parts if p.role == "train"])
    return manifest


def read_manifest(run_dir: Path) -> dict[str, Any]:
    path = run_dir / MANIFEST
    if not path.is_file():
        raise FederationError(
            f"{str(path)!r} not found: the run directory was not prepared by `securefvpa run`"
        )
    return dict(json.loads(path.read_text()))


def initial_parameters(cfg: RunConfig, manifest: dict[str, Any]) -> dict[str, np.ndarray]:
    from securefvpa.models.factory import build_model
    from securefvpa.train.params import model_to_arrays

    model = build_model(
        cfg.model,
        embed_dim=manifest["embed_dim"],
        n_types=max(1, len(manifest["type_names"])),
        seed=cfg.seed,
    )
    return model_to_arrays(model)


def finish_federated_run(cfg: RunConfig, run_dir: Path, result: dict[str, Any]) -> dict[str, Any]:
    """Write ``metrics.json`` and ``final_params.npz`` (and the privacy report when DP is on)."""
    final = result["final"]
    metrics: dict[str, Any] = {
        "model": cfg.model.kind,
        "mode": cfg.federation.mode,
        "accuracy": final.get("accuracy", {}),
        "latent": final.get("latent", {}),
        "rounds": result["rounds"],
        "stopped_early": result["stopped_early"],
        "exhausted_clients": result["exhausted"],
        "secagg": cfg.secagg.enabled,
        "privacy": cfg.privacy.enabled,
    }
    np.savez(run_dir / "final_params.npz", **result["params"])
    if cfg.privacy.enabled:
        from securefvpa.dp_plan import close_ledger, write_privacy_report

        close_ledger(cfg, run_dir, utility=metrics["accuracy"])
        metrics["privacy_report"] = write_privacy_report(cfg, run_dir, utility=metrics["accuracy"])
    atomic_write_text(
        run_dir / "metrics.json", json.dumps(metrics, indent=2, default=_json_default)
    )
    return metrics


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def flower_env(run_dir: Path) -> dict[str, str]:
    """Environment for Flower/Ray: no telemetry, no update checks, state kept under the run dir."""
    home = run_dir / ".flwr"
    home.mkdir(parents=True, exist_ok=True)
    return {
        "FLWR_HOME": str(home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "RAY_DEDUP_LOGS": "0",
        "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        "TOKENIZERS_PARALLELISM": "false",
    }


def run_simulation_mode(
    cfg: RunConfig, run_dir: Path, *, resume: bool, client_app: Any = None
) -> dict[str, Any]:
    """Run every round in Flower's simulation engine (Ray backend), in this process."""
    os.environ.update(flower_env(run_dir))
    from flwr.simulation import run_simulation

    from securefvpa.fl.client_app import app as default_client_app
    from securefvpa.fl.server_app import make_server_app

    manifest = read_manifest(run_dir)
    results: list[dict[str, Any]] = []
    server = make_server_app(run_dir, resume=resume, result_sink=results.append)
    ray_tmp = Path(tempfile.mkdtemp(prefix="sfvpa-ray-"))
    try:
        run_simulation(
            server_app=server,
            client_app=client_app or default_client_app,
            num_supernodes=manifest["clients"],
            backend_config={
                "client_resources": {
                    "num_cpus": cfg.federation.num_cpus_per_client,
                    "num_gpus": 0.0,
                },
                "init_args": {
                    "num_cpus": os.cpu_count() or 1,
                    "include_dashboard": False,
                    "_temp_dir": str(ray_tmp),
                    "logging_level": "ERROR",
                    "log_to_driver": False,
                },
            },
            verbose_logging=False,
        )
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    if not results:
        raise FederationError(
            "the simulation ended without a result; see the log above for the ServerApp error"
        )
    return results[0]


def run_deployment_mode(cfg: RunConfig, run_dir: Path, *, resume: bool, app_dir: Path) -> None:
    """Submit the app to an existing SuperLink with ``flwr run`` and stream its logs.

    ``federation.superlink`` names a connection in ``$FLWR_HOME/config.toml``. The ServerApp
    writes ``metrics.json`` into ``run_dir`` (shared with the SuperLink's machine when it runs
    on loopback; on a remote SuperLink, mount or copy the run directory).
    """
    flwr = shutil.which("flwr", path=str(Path(sys.executable).parent)) or shutil.which("flwr")
    if flwr is None:
        raise FederationError("the `flwr` command is not installed next to this Python")
    run_config = f"run-dir='{run_dir.resolve()}' resume={'true' if resume else 'false'}"
    cmd = [
        flwr,
        "run",
        str(app_dir),
        cfg.federation.superlink,
        "--stream",
        "--run-config",
        run_config,
    ]
    log.info("submitting: %s", " ".join(cmd))
    proc = subprocess.run(cmd, env=os.environ | {"FLWR_TELEMETRY_ENABLED": "0"}, check=False)
    if proc.returncode != 0:
        raise FederationError(f"`flwr run` exited with status {proc.returncode}")
    if not (run_dir / "metrics.json").exists():
        raise FederationError(
            f"the deployment run finished but wrote no {run_dir / 'metrics.json'}"
        )
