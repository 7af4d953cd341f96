"""Launching a prepared federated run: Flower's simulation engine, or a SuperLink (deployment).

The run directory was prepared by ``securefvpa.rounds.prepare`` (partitions, manifest, node
configs). Simulation builds the ClientApp with ``RUN_DIR/nodes`` so every simulated node reads
its own node config; deployment submits the app with ``flwr run`` and the SuperNodes are started
with ``--node-config "node-config='…/nodes/node_N.toml'"`` by their operators
(``examples/deployment/launch.py`` does it on loopback).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from securefvpa.config import RunConfig
from securefvpa.errors import FederationError
from securefvpa.rundir import RunDir, read_manifest

log = logging.getLogger("securefvpa.fl")


def flower_env(run_dir: RunDir) -> dict[str, str]:
    """Environment for Flower/Ray: no telemetry, no update checks, state kept under the run dir."""
    home = run_dir.flower_home
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


RUN_MARK = "SECUREFVPA_RUN_MARK"  # inherited by every Ray/Flower process a simulation starts


def run_mark(run_dir: RunDir) -> str:
    """A marker for the processes of ``run_dir``'s simulation (stable across attempts)."""
    return hashlib.sha256(str(run_dir.root.resolve()).encode()).hexdigest()[:32]


def _processes_marked(mark: str) -> list[int]:
    needle = f"{RUN_MARK}={mark}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            env = (proc / "environ").read_bytes()
        except OSError:  # gone, or another user's process
            continue
        if needle in env.split(b"\0"):
            found.append(int(proc.name))
    return found


def stop_leftover_processes(run_dir: RunDir, *, grace_s: float = 5.0) -> list[int]:
    """Stop processes an earlier, killed attempt of this run left behind (Ray's agents outlive a
    SIGKILLed driver): every process carrying this run's marker, SIGTERM then SIGKILL."""
    pids = _processes_marked(run_mark(run_dir))
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and _processes_marked(run_mark(run_dir)):
        time.sleep(0.1)
    for pid in _processes_marked(run_mark(run_dir)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    if pids:
        log.warning(
            "stopped %d process(es) left by an earlier, interrupted attempt of this run: %s",
            len(pids),
            pids,
        )
    return pids


def simulate(cfg: RunConfig, *, server_app: Any, client_app: Any, num_supernodes: int) -> None:
    """Flower's ``run_simulation`` with this project's Ray settings (``num_cpus_per_client`` per
    actor, every core, no dashboard, quiet logs) in a private Ray temp dir removed afterwards.
    The caller sets the environment (``flower_env``) first."""
    from flwr.simulation import run_simulation

    ray_tmp = Path(tempfile.mkdtemp(prefix="sfvpa-ray-"))
    try:
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=num_supernodes,
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


def run_simulation_mode(
    cfg: RunConfig, run_dir: RunDir, *, resume: bool, client_app: Any = None
) -> dict[str, Any]:
    """Run every round in Flower's simulation engine (Ray backend), in this process; returns
    the metrics the ServerApp wrote to ``metrics.json``. Processes a killed earlier attempt of
    the same run left behind are stopped first; every process this one starts carries the
    run's marker so that a later attempt can do the same."""
    stop_leftover_processes(run_dir)
    os.environ.update(flower_env(run_dir) | {RUN_MARK: run_mark(run_dir)})
    from securefvpa.fl.client_app import make_client_app
    from securefvpa.fl.server_app import make_server_app

    manifest = read_manifest(run_dir)
    results: list[dict[str, Any]] = []
    server = make_server_app(run_dir.root, resume=resume, result_sink=results.append)
    simulate(
        cfg,
        server_app=server,
        client_app=client_app or make_client_app(run_dir.nodes),
        num_supernodes=manifest.clients,
    )
    if not results:
        raise FederationError(
            "the simulation ended without a result; see the log above for the ServerApp error"
        )
    return results[0]


def run_deployment_mode(cfg: RunConfig, run_dir: RunDir, *, resume: bool, app_dir: Path) -> None:
    """Submit the app to an existing SuperLink with ``flwr run`` and stream its logs.

    ``federation.superlink`` names a connection in ``$FLWR_HOME/config.toml``. The ServerApp
    writes ``metrics.json`` into ``run_dir`` (shared with the SuperLink's machine when it runs
    on loopback; on a remote SuperLink, mount or copy the run directory).
    """
    flwr = shutil.which("flwr", path=str(Path(sys.executable).parent)) or shutil.which("flwr")
    if flwr is None:
        raise FederationError("the `flwr` command is not installed next to this Python")
    run_config = f"run-dir='{run_dir.root.resolve()}' resume={'true' if resume else 'false'}"
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
    if not run_dir.metrics.exists():
        raise FederationError(f"the deployment run finished but wrote no {run_dir.metrics}")
