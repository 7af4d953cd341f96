"""Shared helpers for the secure-aggregation tests: a deterministic round harness."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from securefvpa.errors import ProtocolAbort
from securefvpa.secagg import ClientPhase, ClientPolicy, SecAggClient, SecAggServer, ServerPhase
from securefvpa.secagg.primitives import ring_dtype


class DeterministicBytes:
    """Test-only stand-in for os.urandom: SHA-256 in counter mode over a label (reproducible)."""

    def __init__(self, label: str) -> None:
        self._label = label.encode()
        self._counter = 0

    def __call__(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            out += hashlib.sha256(self._label + self._counter.to_bytes(8, "big")).digest()
            self._counter += 1
        return out[:n]


PHASES = [  # the five exchanges of a complete-graph round
    ServerPhase.ADVERTISE_KEYS,
    ServerPhase.SHARE_KEYS,
    ServerPhase.MASKED_INPUT,
    ServerPhase.CONSISTENCY_CHECK,
    ServerPhase.UNMASK,
]
SPARSE_PHASES = [PHASES[0], ServerPhase.REVEAL_SEED, *PHASES[1:]]  # SecAgg+: six exchanges


@dataclass
class Harness:
    """n clients with identity keys and a roster; builds servers/clients for a round."""

    n: int
    d: int
    degree: int = 0
    bits: int = 32
    fraction: float = 0.6
    seed: str = "harness"
    session_id: bytes = b"\x11" * 32
    round_id: int = 7
    ids: list[int] = field(init=False)
    keys: dict[int, Ed25519PrivateKey] = field(init=False)

    def __post_init__(self) -> None:
        rng = DeterministicBytes(self.seed + "/ids")
        self.ids = sorted({int.from_bytes(rng(8), "big") for _ in range(self.n)})
        self.keys = {i: Ed25519PrivateKey.from_private_bytes(rng(32)) for i in self.ids}

    @property
    def roster(self) -> dict[int, bytes]:
        return {i: k.public_key().public_bytes_raw() for i, k in self.keys.items()}

    def policy(self, **over: object) -> ClientPolicy:
        kw: dict[str, object] = dict(
            vector_length=self.d,
            bits=self.bits,
            degree=self.degree,
            threshold_fraction=self.fraction,
        )
        kw.update(over)
        return ClientPolicy(**kw)  # type: ignore[arg-type]

    def server(self, *, roster: bool = True, **over: object) -> SecAggServer:
        kw: dict[str, object] = dict(
            session_id=self.session_id,
            round_id=self.round_id,
            participants=self.ids,
            vector_length=self.d,
            bits=self.bits,
            degree=self.degree,
            threshold_fraction=self.fraction,
            roster=self.roster if roster else None,
        )
        kw.update(over)
        return SecAggServer(**kw)  # type: ignore[arg-type]

    def clients(self, **over: object) -> dict[int, SecAggClient]:
        out = {}
        for i in self.ids:
            kw: dict[str, object] = dict(
                node_id=i,
                identity_key=self.keys[i],
                roster=self.roster,
                policy=self.policy(),
                session_id=self.session_id,
                round_id=self.round_id,
                random_bytes=DeterministicBytes(
                    f"{self.seed}/client/{self.session_id.hex()}/{self.round_id}/{i}"
                ),
            )
            kw.update(over)
            out[i] = SecAggClient(**kw)  # type: ignore[arg-type]
        return out

    def inputs(self, label: str = "x") -> dict[int, np.ndarray]:
        dtype = ring_dtype(self.bits)
        width = self.bits // 8
        return {
            i: np.frombuffer(DeterministicBytes(f"{label}/{i}")(width * self.d), dtype=dtype).copy()
            for i in self.ids
        }


Tamper = Callable[[ServerPhase, int, bytes], bytes]


def drive(
    server: SecAggServer,
    clients: dict[int, SecAggClient],
    inputs: dict[int, np.ndarray],
    *,
    drop: dict[ServerPhase, set[int]] | None = None,
    tamper: Tamper | None = None,
) -> np.ndarray:
    """Run a round; nodes in ``drop[phase]`` do not reply in that phase (nor later)."""
    drop = drop or {}
    gone: set[int] = set()
    out = server.start()
    while out:
        phase = server.phase
        gone |= drop.get(phase, set())
        for node, request in out.items():
            if node in gone:
                continue
            if tamper is not None:
                request = tamper(phase, node, request)
            client = clients[node]
            vector = inputs[node] if client.needs_input else None
            server.receive(node, client.handle(request, input_vector=vector))
        out = server.advance()
    assert server.result is not None
    return server.result.vector


def run_until(
    h: Harness,
    phase: ServerPhase,
    *,
    roster: bool = False,
    drop: dict[ServerPhase, set[int]] | None = None,
    **server_kw: object,
) -> tuple[SecAggServer, dict[int, SecAggClient], dict[int, np.ndarray], dict[int, bytes]]:
    """Honest run up to (not into) ``phase``; returns server, clients, inputs, pending requests."""
    drop = drop or {}
    server, clients, inputs = h.server(roster=roster, **server_kw), h.clients(), h.inputs()
    gone: set[int] = set()
    out = server.start()
    while server.phase is not phase:
        gone |= drop.get(server.phase, set())
        for node, req in out.items():
            if node in gone:
                continue
            c = clients[node]
            server.receive(
                node, c.handle(req, input_vector=inputs[node] if c.needs_input else None)
            )
        out = server.advance()
    return server, clients, inputs, out


def assert_aborts(client, request: bytes, match: str, **kw) -> None:
    with pytest.raises(ProtocolAbort, match=match):
        client.handle(request, **kw)
    assert client.phase is ClientPhase.ABORTED
    with pytest.raises(ProtocolAbort):  # and stays aborted
        client.handle(request, **kw)


def ring_sum(inputs: dict[int, np.ndarray], members: tuple[int, ...] | list[int]) -> np.ndarray:
    first = next(iter(inputs.values()))
    total = np.zeros_like(first)
    for m in members:
        total += inputs[m]
    return total


@pytest.fixture
def small() -> Harness:
    return Harness(n=6, d=17)
