"""The run directory: every path a run writes, its versioned manifest, and the node configs.

Ground floor (imports only ``config``, ``errors`` and ``fsutil``): every other layer asks this
module where a file is instead of joining paths itself, and nothing here reads a file twice.

Layout of ``RUN_DIR``::

    config.resolved.toml        the resolved run config, written first (``--resume`` must match)
    manifest.json               what the data gave: clients, roles, dimensions (versioned, atomic)
    partitions/client_NNNNN.npz one file per client: only that client's embedded pairs
    nodes/node_NNNNN.toml       one node config per client (the client trust boundary, below)
    privacy_plan.json           sigma, delta and relation resolved once (DP runs)
    privacy_ledger.sqlite       the hash-chained privacy ledger (DP runs)
    secagg/roster.json          public identity keys the clients trust (secure aggregation)
    secagg/identities/          one Ed25519 identity key per training client (mode 0600)
    server_state.npz            the server checkpoint after the last complete round
    rounds.journal              one line per round attempt started (crash recovery under DP)
    metrics.json                final metrics; final_params.npz the final global parameters
    nodes/eval_NNNNN.jsonl      DP runs: each simulated node's own evaluation counts (kept there)
    node_evaluation.json        DP simulations: those logs aggregated by the simulation operator
    privacy_report.json         the epsilon report derived from the ledger, and report.html

Client trust boundary. In a deployment the server is not trusted to tell a client which files
it reads and writes or which privacy policy it follows. Every such path and the policy come from
the node's own *node config* (:class:`NodeConfig`, a TOML file the node operator controls; a
SuperNode is started with ``--node-config "node-config='/path/node.toml'"``). The server sends
only what the protocol needs: parameters, the round, and the hash of the run config, which the
node compares with the hash of its own copy and refuses on mismatch. Simulation keeps its
convenience by *writing* node configs into ``RUN_DIR/nodes/`` (the launcher is the operator),
never by trusting messages. ``tests/fl/test_trust_boundary.py`` checks it.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, cast

import tomli_w

from securefvpa.errors import RunDirError
from securefvpa.fsutil import atomic_write_text

MANIFEST_SCHEMA = 2  # 2: versioned and written atomically (1: unversioned)
NODE_CONFIG_SCHEMA = 1


@dataclass(frozen=True)
class RunDir:
    """Paths inside one run directory. Pure path arithmetic: nothing is read or created."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    config = property(lambda self: self.root / "config.resolved.toml")
    manifest = property(lambda self: self.root / "manifest.json")
    partitions = property(lambda self: self.root / "partitions")
    nodes = property(lambda self: self.root / "nodes")
    plan = property(lambda self: self.root / "privacy_plan.json")
    default_ledger = property(lambda self: self.root / "privacy_ledger.sqlite")
    secagg = property(lambda self: self.root / "secagg")
    roster = property(lambda self: self.root / "secagg" / "roster.json")
    checkpoint = property(lambda self: self.root / "server_state.npz")
    journal = property(lambda self: self.root / "rounds.journal")
    metrics = property(lambda self: self.root / "metrics.json")
    final_params = property(lambda self: self.root / "final_params.npz")
    node_evaluation = property(lambda self: self.root / "node_evaluation.json")
    report_json = property(lambda self: self.root / "privacy_report.json")
    report_html = property(lambda self: self.root / "report.html")
    flower_home = property(lambda self: self.root / ".flwr")

    def partition(self, partition_id: int) -> Path:
        return self.partitions / f"client_{partition_id:05d}.npz"

    def node_config(self, partition_id: int) -> Path:
        return self.nodes / f"node_{partition_id:05d}.toml"

    def eval_log(self, partition_id: int) -> Path:
        """A simulated node's own evaluation log (DP runs keep evaluation counts on the node)."""
        return self.nodes / f"eval_{partition_id:05d}.jsonl"

    def identity(self, partition_id: int) -> Path:
        return self.secagg / "identities" / f"client_{partition_id:05d}.key"


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """What the prepared data gave the run (``manifest.json``, schema :data:`MANIFEST_SCHEMA`).

    ``units`` holds, per training client in partition order, its number of privacy units per
    step (episodes under ``privacy.unit = "pair"``, users under ``"user"``): public counts the
    server divides a distributed-DP gradient sum by (its expected batch).
    """

    clients: int
    train_clients: int
    unseen_clients: int
    embed_dim: int
    type_names: tuple[str, ...]
    max_train_pairs: int
    train_pairs: tuple[int, ...] = ()
    units: tuple[int, ...] = ()
    max_user_pairs: int = 0  # the most train pairs one seen user holds (per-user DP bound)
    data: dict[str, Any] = field(default_factory=dict)  # how the data was built (counts, source)
    schema: int = MANIFEST_SCHEMA

    def __post_init__(self) -> None:
        counts = (self.clients, self.train_clients, self.unseen_clients, self.embed_dim)
        if any(not isinstance(c, int) or c < 0 for c in counts):
            raise RunDirError(f"manifest counts must be integers >= 0. Found {counts}.")
        if self.train_clients + self.unseen_clients != self.clients:
            raise RunDirError(
                f"manifest: {self.train_clients} train + {self.unseen_clients} unseen clients "
                f"!= {self.clients} clients"
            )
        for name in ("train_pairs", "units"):
            value = getattr(self, name)
            if value and len(value) != self.train_clients:
                raise RunDirError(
                    f"manifest {name} lists {len(value)} clients, expected {self.train_clients}"
                )

    @property
    def n_types(self) -> int:
        return max(1, len(self.type_names))

    def to_json(self) -> str:
        obj = asdict(self)
        obj["type_names"] = list(self.type_names)
        obj["train_pairs"] = list(self.train_pairs)
        obj["units"] = list(self.units)
        return json.dumps(obj, indent=2)


def write_manifest(run_dir: RunDir, manifest: Manifest) -> None:
    """Write ``manifest.json`` atomically (temp file, fsync, rename)."""
    run_dir.root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir.manifest, manifest.to_json())


def read_manifest(run_dir: RunDir) -> Manifest:
    """The run's manifest; a missing, damaged or older-schema file is a :class:`RunDirError`."""
    path = run_dir.manifest
    if not path.is_file():
        raise RunDirError(
            f"{str(path)!r} not found: the run directory was not prepared by `securefvpa run`"
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunDirError(f"manifest {str(path)!r} is unreadable: {exc}") from None
    if not isinstance(raw, dict) or raw.get("schema") != MANIFEST_SCHEMA:
        found = raw.get("schema") if isinstance(raw, dict) else raw
        raise RunDirError(
            f"manifest {str(path)!r} has schema {found!r}, expected {MANIFEST_SCHEMA}; "
            "prepare the run again with a new --out"
        )
    known = {f.name for f in fields(Manifest)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise RunDirError(f"manifest {str(path)!r} has unknown keys {unknown}")
    try:
        return Manifest(
            **cast(
                "dict[str, Any]",
                {
                    k: tuple(v) if k in ("type_names", "train_pairs", "units") else v
                    for k, v in raw.items()
                },
            )
        )
    except TypeError as exc:
        raise RunDirError(f"manifest {str(path)!r} is incomplete: {exc}") from None


@dataclass(frozen=True, kw_only=True)
class NodeConfig:
    """Everything one client node reads, writes and follows, from its operator (never a server).

    Paths are absolute. ``config`` is the run config this node agreed to and ``config_hash`` its
    SHA-256 (a server message naming another hash is refused). The privacy policy is that
    config's ``[privacy]`` section plus ``noise_multiplier`` and ``delta`` resolved once by the
    privacy plan (0.0 when DP is off). ``ledger`` is where the node commits its DP events;
    ``identity`` and ``roster`` are its secure-aggregation keys (empty when off);
    ``max_train_pairs`` and ``train_clients`` are the public bounds its secure-aggregation
    encoding is sized for (the largest weight and the most summed clients); ``distributed`` the
    distributed-DP mechanism it follows (``privacy.plan.DistributedParams``; empty otherwise).
    """

    partition_id: int
    partition: str
    config: str
    config_hash: str
    ledger: str = ""
    identity: str = ""
    roster: str = ""
    noise_multiplier: float = 0.0
    delta: float = 0.0
    max_train_pairs: int = 0
    train_clients: int = 0
    clip_range: float = 0.0  # fixed-point clip range (secure aggregation without DDG)
    eval_log: str = ""  # where the node keeps its evaluation counts and per-user ones (never sent)
    schema: int = NODE_CONFIG_SCHEMA
    distributed: dict[str, Any] = field(default_factory=dict)  # distributed-DP mechanism (plan)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_toml(self) -> str:
        return tomli_w.dumps(asdict(self))


def write_node_config(path: Path, node: NodeConfig) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, node.to_toml())


def read_node_config(path: str | Path) -> NodeConfig:
    """Parse and check a node config file; every problem is a :class:`RunDirError` naming it."""
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunDirError(f"node config {str(p)!r} not found") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise RunDirError(f"node config {str(p)!r} is unreadable: {exc}") from None
    if raw.get("schema") != NODE_CONFIG_SCHEMA:
        raise RunDirError(
            f"node config {str(p)!r} has schema {raw.get('schema')!r}, expected "
            f"{NODE_CONFIG_SCHEMA}"
        )
    known = {f.name: f for f in fields(NodeConfig)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise RunDirError(f"node config {str(p)!r} has unknown keys {unknown}")
    base = {"int": int, "float": float, "str": str}
    types = {f.name: base.get(str(f.type), dict) for f in fields(NodeConfig)}
    for key, value in raw.items():
        want = types.get(key, str)
        ok = isinstance(value, want) or (want is float and isinstance(value, int))
        if not ok or isinstance(value, bool):
            raise RunDirError(
                f"node config {str(p)!r}: {key} must be {want.__name__}. Found {value!r}."
            )
    for key in (k for k, t in types.items() if t is float):
        if key in raw:
            raw[key] = float(raw[key])
    try:
        return NodeConfig(**raw)
    except TypeError as exc:
        raise RunDirError(f"node config {str(p)!r} is incomplete: {exc}") from None
