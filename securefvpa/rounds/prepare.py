"""Preparing a federated run directory: partitions, manifest, keys, privacy plan, node configs.

Done once by the launcher (``securefvpa run``) before any client runs, so that each client finds
everything in files its node config names (``securefvpa.rundir`` trust boundary) and the server
reads the manifest once. Imports neither flwr nor torch.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from securefvpa.config import RunConfig, config_hash
from securefvpa.data.dataset import EmbeddedPairs, UserSplit
from securefvpa.data.partition import make_partitions, save_partition
from securefvpa.errors import ConfigError
from securefvpa.privacy.plan import PrivacyPlan, load_plan, start_ledger
from securefvpa.rundir import (
    Manifest,
    NodeConfig,
    RunDir,
    read_manifest,
    read_node_config,
    write_manifest,
    write_node_config,
)
from securefvpa.secagg.graph import MIN_PARTICIPANTS


def check_secagg_population(cfg: RunConfig, train_clients: int) -> None:
    """Secure aggregation needs >= MIN_PARTICIPANTS clients in every round: refuse a config
    whose rounds would sample fewer, before any client trains (and spends epsilon)."""
    if not cfg.secagg.enabled:
        return
    fed = cfg.federation
    per_round = min(
        train_clients, max(fed.min_fit_clients, math.ceil(fed.fraction_fit * train_clients))
    )
    minimum = max(MIN_PARTICIPANTS, fed.min_fit_clients)
    if per_round < minimum:
        raise ConfigError(
            f"secure aggregation needs at least {minimum} training clients per round, but this "
            f"run has {train_clients} training clients and samples {per_round} per round "
            f"(federation.fraction_fit={fed.fraction_fit}, min_fit_clients={fed.min_fit_clients})"
            "; add users, lower federation.users_per_client, or raise fraction_fit"
        )


def prepare_federated(
    cfg: RunConfig, pairs: EmbeddedPairs, split: UserSplit, run_dir: RunDir, *, data: dict[str, Any]
) -> Manifest:
    """Write partitions, the manifest, identities (secure aggregation) and node configs."""
    parts = make_partitions(pairs, split, cfg.federation, cfg.seed)
    train = [p for p in parts if p.role == "train"]
    check_secagg_population(cfg, len(train))
    for p in parts:
        save_partition(p, run_dir.partition(p.partition_id))
    manifest = Manifest(
        clients=len(parts),
        train_clients=len(train),
        unseen_clients=len(parts) - len(train),
        embed_dim=pairs.dim,
        type_names=tuple(pairs.type_names),
        max_train_pairs=max(p.n_train_pairs for p in parts),
        train_pairs=tuple(p.n_train_pairs for p in train),
        users=tuple(p.n_train_users for p in train),
        data=data,
    )
    write_manifest(run_dir, manifest)
    if cfg.secagg.enabled:
        from securefvpa.secagg.keys import prepare_identities

        prepare_identities(run_dir, [p.partition_id for p in train])
    return manifest


def start_privacy(cfg: RunConfig, run_dir: RunDir, manifest: Manifest) -> PrivacyPlan | None:
    """Resolve (or reload) the privacy plan and open the ledger's run (DP runs)."""
    if not cfg.privacy.enabled:
        return None
    return start_ledger(cfg, run_dir, max_train_pairs=manifest.max_train_pairs)


def write_node_configs(cfg: RunConfig, run_dir: RunDir, manifest: Manifest) -> list[Path]:
    """One node config per client under ``RUN_DIR/nodes/`` (what simulation nodes read)."""
    plan = load_plan(cfg, run_dir) if cfg.privacy.enabled else None
    paths = []
    for pid in range(manifest.clients):
        train = pid < manifest.train_clients
        node = NodeConfig(
            partition_id=pid,
            partition=str(run_dir.partition(pid).resolve()),
            config=str(run_dir.config.resolve()),
            config_hash=config_hash(cfg),
            ledger=str(plan.ledger) if plan is not None else "",
            identity=str(run_dir.identity(pid).resolve()) if cfg.secagg.enabled and train else "",
            roster=str(run_dir.roster.resolve()) if cfg.secagg.enabled else "",
            noise_multiplier=plan.noise_multiplier if plan is not None else 0.0,
            delta=plan.delta if plan is not None else 0.0,
            max_train_pairs=manifest.max_train_pairs,
            train_clients=manifest.train_clients,
        )
        paths.append(write_node_config(run_dir.node_config(pid), node))
    return paths


def prepare_or_resume(
    cfg: RunConfig,
    run_dir: RunDir,
    *,
    resume: bool,
    load: Any,
) -> Manifest:
    """Prepare the run directory (``load()`` gives (pairs, split, data info)), or reuse it on
    ``--resume``; then the privacy plan and the node configs. Returns the manifest."""
    if resume and run_dir.manifest.is_file():
        manifest = read_manifest(run_dir)
    else:
        pairs, split, info = load()
        manifest = prepare_federated(cfg, pairs, split, run_dir, data=info)
    start_privacy(cfg, run_dir, manifest)
    write_node_configs(cfg, run_dir, manifest)
    return manifest


def read_node_configs(run_dir: RunDir, manifest: Manifest) -> list[NodeConfig]:
    return [read_node_config(run_dir.node_config(pid)) for pid in range(manifest.clients)]


def prepare_local(
    cfg: RunConfig, pairs: EmbeddedPairs, split: UserSplit, run_dir: RunDir, *, data: dict[str, Any]
) -> tuple[Manifest, list[Any]]:
    """Prepare ``run_dir`` as ``securefvpa run`` would and load every client node in this
    process (for :class:`securefvpa.rounds.local.LocalTransport`: the audit, the benchmarks)."""
    from securefvpa.config import dump_config
    from securefvpa.fsutil import atomic_write_text
    from securefvpa.train.client import load_node

    run_dir.root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir.config, dump_config(cfg))
    manifest = prepare_federated(cfg, pairs, split, run_dir, data=data)
    start_privacy(cfg, run_dir, manifest)
    write_node_configs(cfg, run_dir, manifest)
    return manifest, [load_node(n) for n in read_node_configs(run_dir, manifest)]
