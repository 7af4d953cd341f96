"""Long-term client identities for secure aggregation, and the roster the clients trust.

Each training client gets an Ed25519 identity key; the roster (node id → public key) is what
clients use to verify every key advertisement and consistency signature, so it must reach them
out of band — never through the server. For simulation and loopback deployments,
``prepare_identities`` writes the keys into the run directory (``secagg/identities/`` with mode
0600) and the roster into ``secagg/roster.json``; every node config names its own key file and
the roster (``securefvpa.rundir.NodeConfig``), so a node reads them from paths its operator
chose. Pure: imports neither torch nor flwr.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from securefvpa.errors import ConfigError
from securefvpa.fsutil import atomic_write_text
from securefvpa.rundir import RunDir


def prepare_identities(run_dir: RunDir, node_ids: list[int]) -> dict[int, bytes]:
    """Create (or keep) one identity key per node; write the public roster. Returns the roster."""
    roster: dict[int, bytes] = {}
    for nid in node_ids:
        path = run_dir.identity(nid)
        if path.exists():
            key = load_identity(path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            key = Ed25519PrivateKey.generate()  # OS CSPRNG
            raw = key.private_bytes(
                serialization.Encoding.Raw,
                serialization.PrivateFormat.Raw,
                serialization.NoEncryption(),
            )
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(raw)
        roster[nid] = key.public_key().public_bytes_raw()
    atomic_write_text(
        run_dir.roster,
        json.dumps({str(k): v.hex() for k, v in sorted(roster.items())}, indent=1),
    )
    return roster


def load_identity(path: Path) -> Ed25519PrivateKey:
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"cannot read the secure-aggregation identity key {str(path)!r}: {exc}"
        ) from None
    if len(raw) != 32:
        raise ConfigError(f"identity key {str(path)!r} must hold 32 raw bytes. Found {len(raw)}.")
    return Ed25519PrivateKey.from_private_bytes(raw)


def load_roster(path: Path) -> dict[int, bytes]:
    try:
        return parse_roster(Path(path).read_bytes(), source=str(path))
    except OSError as exc:
        raise ConfigError(
            f"cannot read the secure-aggregation roster {str(path)!r}: {exc}"
        ) from None


def parse_roster(data: bytes, *, source: str) -> dict[int, bytes]:
    """``{node id: raw Ed25519 public key}`` from a roster file's bytes (``source`` names the
    file in the error, with what is wrong in it); ConfigError for anything but a JSON object of
    hex keys. Python caps the quoted value in these messages (e.g. int() at ~200 characters)."""
    try:
        return {int(k): bytes.fromhex(v) for k, v in json.loads(data).items()}
    except (ValueError, AttributeError, TypeError, RecursionError) as exc:
        raise ConfigError(
            f"cannot read the secure-aggregation roster {source!r}: {type(exc).__name__}: {exc}"
        ) from None
