"""Preparing a federated run directory: partitions, manifest, keys, privacy plan, node configs.

Done once by the launcher (``securefvpa run``) before any client runs, so that each client finds
everything in files its node config names (``securefvpa.rundir`` trust boundary) and the server
reads the manifest once. Imports neither flwr nor torch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from securefvpa.config import RunConfig, config_hash
from securefvpa.data.dataset import EmbeddedPairs, UserSplit
from securefvpa.data.partition import make_partitions, save_partition
from securefvpa.errors import ConfigError
from securefvpa.privacy.plan import (
    DistributedParams,
    PrivacyPlan,
    given_noise_multiplier,
    load_plan,
    planned_rounds,
    start_ledger,
)
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


def clients_per_round(cfg: RunConfig, train_clients: int) -> int:
    """How many training clients a round samples (``rounds.engine.sample_indices``)."""
    fed = cfg.federation
    return min(train_clients, max(fed.min_fit_clients, math.ceil(fed.fraction_fit * train_clients)))


def units_per_client(cfg: RunConfig, part: Any) -> int:
    """Privacy units a client holds per step (episodes, or users): counts only, no content."""
    import numpy as np

    from securefvpa.train.episodes import unit_episodes

    return len(
        unit_episodes(
            part.pairs,
            part.users,
            unit=cfg.privacy.unit,
            train_cfg=cfg.train,
            rng=np.random.default_rng(0),
        )
    )


def check_secagg_population(cfg: RunConfig, train_clients: int) -> None:
    """Secure aggregation needs >= MIN_PARTICIPANTS clients in every round: refuse a config
    whose rounds would sample fewer, before any client trains (and spends epsilon)."""
    if not cfg.secagg.enabled:
        return
    fed = cfg.federation
    per_round = clients_per_round(cfg, train_clients)
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
        units=tuple(units_per_client(cfg, p) for p in train),
        max_user_pairs=max((len(u.train_rows) for p in train for u in p.users), default=0),
        data=data,
    )
    write_manifest(run_dir, manifest)
    if cfg.secagg.enabled:
        from securefvpa.secagg.keys import prepare_identities

        prepare_identities(run_dir, [p.partition_id for p in train])
    return manifest


def resolve_distributed(cfg: RunConfig, manifest: Manifest, delta: float) -> DistributedParams:
    """Choose the distributed discrete-Gaussian mechanism of a run (``secagg.ddg.plan``).

    Each round samples ``n`` clients; honest clients refuse to unmask a sum of fewer than
    ``t = ceil(secagg.threshold * n)`` masked inputs, of which at most ``T =
    privacy.max_colluding_clients`` may subtract their own share, so ``t - T`` honest shares are
    accounted. The ring must not wrap with probability above ``secagg.max_wrap_probability``
    when every unit of every sampled client is sampled (``manifest.units``). With
    ``privacy.noise_multiplier`` given (the central sigma), only the grid is chosen.
    """
    n = clients_per_round(cfg, manifest.train_clients)
    return plan_distributed(
        cfg,
        delta=delta,
        sampled_clients=n,
        dim=int(sum(manifest_param_sizes(cfg, manifest))),
        max_units=max(1, sum(sorted(manifest.units, reverse=True)[:n])),
    )


def plan_distributed(
    cfg: RunConfig, *, delta: float, sampled_clients: int, dim: int, max_units: int
) -> DistributedParams:
    """:func:`resolve_distributed` for given counts: ``sampled_clients`` per round,
    ``dim`` trained coordinates, at most ``max_units`` units in one round's sum (benchmarks
    project populations no manifest describes with it). Raises :class:`ConfigError` when
    ``privacy.max_colluding_clients`` is not below the threshold."""
    from securefvpa.secagg import ddg

    p, s = cfg.privacy, cfg.secagg
    n = sampled_clients
    t = math.ceil(s.threshold * n)
    if p.max_colluding_clients >= t:
        raise ConfigError(
            f"privacy.max_colluding_clients must be below the threshold t = ceil({s.threshold} x "
            f"{n} clients per round) = {t}: with T >= t no honest noise share is guaranteed. "
            f"Found {p.max_colluding_clients}."
        )
    if p.calibrate_sigma:
        out = ddg.plan(
            target_epsilon=p.target_epsilon,
            delta=delta,
            rounds=planned_rounds(cfg),
            sample_rate=p.sample_rate,
            clip=p.clip,
            dim=dim,
            threshold=t,
            max_colluding=p.max_colluding_clients,
            max_shares=n,
            max_units=max_units,
            wrap_bound=s.max_wrap_probability,
            bits=s.bits,
            block_size=s.rotation_block,
            beta=s.rounding_beta,
            relation=p.neighbouring_relation,
        )
        spec = out.spec
    else:
        local_std = given_noise_multiplier(p) * p.clip / math.sqrt(t - p.max_colluding_clients)
        gamma = ddg.choose_gamma(
            clip=p.clip, local_std=local_std, dim=dim, max_units=max_units, max_shares=n,
            wrap_bound=s.max_wrap_probability, bits=s.bits, block_size=s.rotation_block,
            beta=s.rounding_beta,
        )  # fmt: skip
        spec = ddg.DdgSpec(
            dim=dim, clip=p.clip, gamma=gamma, local_sigma=local_std / gamma,
            beta=s.rounding_beta, bits=s.bits, block_size=s.rotation_block,
        )  # fmt: skip
    h = t - p.max_colluding_clients
    return DistributedParams(
        gamma=spec.gamma,
        local_sigma=spec.local_sigma,
        threshold=t,
        max_colluding=p.max_colluding_clients,
        dim=dim,
        padded_dim=spec.padded_dim,
        beta=spec.beta,
        bits=spec.bits,
        block_size=spec.block_size,
        central_noise_multiplier=math.sqrt(h) * spec.local_sigma * spec.gamma / p.clip,
    )


def manifest_param_sizes(cfg: RunConfig, manifest: Manifest) -> list[int]:
    """Sizes of the model's parameter arrays (the vector a round aggregates)."""
    from securefvpa.rounds.finish import initial_parameters

    return [int(v.size) for v in initial_parameters(cfg, manifest).values()]


def run_clip_range(cfg: RunConfig, manifest: Manifest, plan: PrivacyPlan | None) -> float:
    """The fixed-point clip range both sides use (``rounds.encoding.resolve_clip_range``)."""
    from securefvpa.rounds.encoding import resolve_clip_range

    if not cfg.secagg.enabled:
        return 0.0
    return resolve_clip_range(
        cfg,
        dim=int(sum(manifest_param_sizes(cfg, manifest))),
        min_units=min(manifest.units, default=1),
        sigma=plan.noise_multiplier if plan is not None else 0.0,
    )


def run_codec(cfg: RunConfig, run_dir: RunDir, manifest: Manifest) -> Any:
    """The round's ring codec (``rounds.encoding.RoundCodec``) of a prepared run directory,
    or None without secure aggregation: both the server and in-process runs build it here."""
    if not cfg.secagg.enabled:
        return None
    from securefvpa.rounds.encoding import RoundCodec

    plan = load_plan(cfg, run_dir) if cfg.privacy.enabled else None
    return RoundCodec.for_run(
        cfg,
        clip_range=run_clip_range(cfg, manifest, plan),
        max_weight=manifest.max_train_pairs,
        max_clients=manifest.train_clients,
        distributed=None if plan is None else plan.distributed,
    )


def start_privacy(cfg: RunConfig, run_dir: RunDir, manifest: Manifest) -> PrivacyPlan | None:
    """Resolve (or reload) the privacy plan and open the ledger's run (DP runs)."""
    if not cfg.privacy.enabled:
        return None
    return start_ledger(
        cfg,
        run_dir,
        max_train_pairs=manifest.max_train_pairs,
        distributed=lambda delta: resolve_distributed(cfg, manifest, delta),
    )


def write_node_configs(cfg: RunConfig, run_dir: RunDir, manifest: Manifest) -> list[Path]:
    """One node config per client under ``RUN_DIR/nodes/`` (what simulation nodes read)."""
    plan = load_plan(cfg, run_dir) if cfg.privacy.enabled else None
    clip_range = run_clip_range(cfg, manifest, plan)
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
            clip_range=clip_range,
            eval_log=str(run_dir.eval_log(pid).resolve()),
            distributed={}
            if plan is None or plan.distributed is None
            else asdict(plan.distributed),
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


@dataclass(frozen=True)
class LocalRun:
    """A prepared run directory with every client node loaded in this process."""

    manifest: Manifest
    nodes: list[Any]  # train.client.ClientNode
    codec: Any  # rounds.encoding.RoundCodec, or None without secure aggregation

    def transport(self, **kw: Any) -> Any:
        """A :class:`securefvpa.rounds.local.LocalTransport` over these nodes."""
        from securefvpa.rounds.local import LocalTransport

        units = dict(enumerate(self.manifest.units))
        return LocalTransport(self.nodes, codec=self.codec, units=units, **kw)


def prepare_local(
    cfg: RunConfig, pairs: EmbeddedPairs, split: UserSplit, run_dir: RunDir, *, data: dict[str, Any]
) -> LocalRun:
    """Prepare ``run_dir`` as ``securefvpa run`` would and load every client node in this
    process (for :class:`securefvpa.rounds.local.LocalTransport`: the audit, the benchmarks)."""
    from securefvpa.config import dump_config
    from securefvpa.fsutil import atomic_write_text

    run_dir.root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir.config, dump_config(cfg))
    manifest = prepare_federated(cfg, pairs, split, run_dir, data=data)
    start_privacy(cfg, run_dir, manifest)
    write_node_configs(cfg, run_dir, manifest)
    return load_local(cfg, run_dir, manifest)


def load_local(cfg: RunConfig, run_dir: RunDir, manifest: Manifest) -> LocalRun:
    """Every client node of a prepared run directory, loaded in this process, and its codec."""
    from securefvpa.train.client import load_node

    nodes = [load_node(n) for n in read_node_configs(run_dir, manifest)]
    return LocalRun(manifest, nodes, run_codec(cfg, run_dir, manifest))
