"""Atomic server checkpoints: written after every complete round, checked on resume.

One file, ``RUN_DIR/server_state.npz`` (:attr:`securefvpa.rundir.RunDir.checkpoint`), replaced atomically (temp file, fsync, ``os.replace``,
directory fsync), so a kill at any moment leaves either the previous complete round or the new
one. It carries a schema version and the hash of the resolved config: resuming a run with a
different config is refused.

Imports neither torch nor flwr.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from securefvpa.errors import FederationError
from securefvpa.fsutil import atomic_write
from securefvpa.rounds.server_opt import ServerOptState

CHECKPOINT_SCHEMA = 2  # 2: server optimiser state (step, m, v)


@dataclass
class ServerState:
    round: int  # last complete round (0 = initial parameters)
    params: dict[str, np.ndarray]
    config_hash: str
    exhausted: set[int] = field(default_factory=set)  # partition ids that declined (budget)
    history: list[dict[str, Any]] = field(default_factory=list)  # per-round metrics
    opt: ServerOptState = field(default_factory=ServerOptState)  # FedAdam moments


def save_checkpoint(path: Path, state: ServerState) -> Path:
    """Write ``state`` to ``path`` atomically and fsync the directory."""
    run_dir = path.parent
    run_dir.mkdir(parents=True, exist_ok=True)
    meta = {
        "schema": CHECKPOINT_SCHEMA,
        "round": state.round,
        "config_hash": state.config_hash,
        "exhausted": sorted(state.exhausted),
        "history": state.history,
        "param_names": list(state.params),
        "opt_step": state.opt.step,
        "opt_names": list(state.opt.m),
    }
    arrays: dict[str, Any] = {f"p{i}": np.asarray(v) for i, v in enumerate(state.params.values())}
    for i, name in enumerate(state.opt.m):
        arrays[f"m{i}"] = state.opt.m[name]
        arrays[f"v{i}"] = state.opt.v[name]
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    atomic_write(path, lambda fh: np.savez(fh, **arrays))
    dir_fd = os.open(run_dir, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def load_checkpoint(path: Path, *, config_hash: str) -> ServerState | None:
    """The last complete round's state, or None when the run has no checkpoint yet."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(bytes(z["meta"]).decode("utf-8"))
            params = {name: z[f"p{i}"].copy() for i, name in enumerate(meta["param_names"])}
            names = meta.get("opt_names", [])
            opt = ServerOptState(
                step=int(meta.get("opt_step", 0)),
                m={name: z[f"m{i}"].copy() for i, name in enumerate(names)},
                v={name: z[f"v{i}"].copy() for i, name in enumerate(names)},
            )
    except (OSError, ValueError, KeyError) as exc:
        raise FederationError(f"checkpoint {str(path)!r} is unreadable: {exc}") from exc
    if meta.get("schema") != CHECKPOINT_SCHEMA:
        raise FederationError(
            f"checkpoint {str(path)!r} has schema {meta.get('schema')!r}, expected {CHECKPOINT_SCHEMA}"
        )
    if meta["config_hash"] != config_hash:
        raise FederationError(
            f"checkpoint {str(path)!r} was written by config {meta['config_hash'][:12]}…, "
            f"not by this config {config_hash[:12]}…; resume with the same config or a new --out"
        )
    return ServerState(
        round=int(meta["round"]),
        params=params,
        config_hash=meta["config_hash"],
        exhausted=set(meta["exhausted"]),
        history=list(meta["history"]),
        opt=opt,
    )
