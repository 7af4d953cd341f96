"""Server state machine of secure aggregation (Bonawitz et al. 2017, Fig. 4; SecAgg+ graph).

The server only relays and sums; it learns the sum of the inputs of the nodes in ``U3`` (the
masked-input senders) and nothing else about them (see threat_models/secagg.md). Drive it with::

    out = server.start()                    # {node_id: request bytes}
    while out:
        replies = transport(out)            # {node_id: reply bytes}; missing = dropped
        for node, data in replies.items():
            server.receive(node, data)      # never raises on bad client bytes
        out = server.advance()              # next requests; ProtocolAbort if too few survive
    result = server.result                  # AggregationResult

A reply that fails a check is rejected (``server.rejected[node] = reason``) and the node is
treated as dropped from that phase on; honest clients are never blamed for it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from securefvpa.errors import ConfigError, ProtocolAbort
from securefvpa.secagg import shamir
from securefvpa.secagg.client import load_roster
from securefvpa.secagg.graph import neighbour_graph, threshold_for
from securefvpa.secagg.messages import (
    MAX_NODES,
    MAX_VECTOR_LENGTH,
    SESSION_ID_BYTES,
    AdvertiseKeysReply,
    AdvertiseKeysRequest,
    ConsistencyReply,
    ConsistencyRequest,
    KeyAdvert,
    MaskedInputReply,
    MaskedInputRequest,
    NodeSignature,
    SealedShare,
    ShareKeysReply,
    ShareKeysRequest,
    UnmaskReply,
    UnmaskRequest,
    parse,
)
from securefvpa.secagg.primitives import (
    PURPOSE_PAIRWISE_MASK,
    SEED_BYTES,
    advertise_payload,
    apply_masks,
    consistency_payload,
    pair_key,
    public_bytes,
    ring_dtype,
    round_context,
    verify,
    x25519_from_seed,
)


class ServerPhase(Enum):
    """Which replies the server is collecting."""

    NOT_STARTED = "not-started"
    ADVERTISE_KEYS = "advertise-keys"
    SHARE_KEYS = "share-keys"
    MASKED_INPUT = "masked-input"
    CONSISTENCY_CHECK = "consistency-check"
    UNMASK = "unmask"
    DONE = "done"
    ABORTED = "aborted"


@dataclass(frozen=True)
class AggregationResult:
    """Outcome of a completed round.

    ``vector`` is the exact sum in Z_{2^bits} of the inputs of ``contributors`` (= U3); decode it
    with :func:`securefvpa.secagg.quantization.decode_sum` using ``len(contributors)``.
    """

    vector: np.ndarray
    contributors: tuple[int, ...]
    survivors_by_phase: dict[str, tuple[int, ...]] = field(default_factory=dict)


_REPLY = {
    ServerPhase.ADVERTISE_KEYS: AdvertiseKeysReply,
    ServerPhase.SHARE_KEYS: ShareKeysReply,
    ServerPhase.MASKED_INPUT: MaskedInputReply,
    ServerPhase.CONSISTENCY_CHECK: ConsistencyReply,
    ServerPhase.UNMASK: UnmaskReply,
}


class SecAggServer:
    """Server side of one round.

    Args:
        session_id: 32-byte session id (same as the clients').
        round_id: round number.
        participants: node ids sampled for the round (>= 3, distinct).
        vector_length: length d of every input vector (ring elements).
        bits: ring Z_{2^bits}, 32 or 64.
        degree: SecAgg+ neighbour-graph degree (even); 0 = complete graph (Bonawitz et al.).
        threshold_fraction: t = max(ceil(f * m), m // 2 + 1) with m = degree + 1 share holders.
        roster: optional ``{node_id: Ed25519 public key}``; when given, the server verifies
            signatures itself and drops a forging client early, instead of letting its
            neighbours abort.
        graph_seed: public 32-byte seed of the graph; drawn from ``random_bytes`` if None.
        random_bytes: CSPRNG (``os.urandom``); injectable for tests.
    """

    def __init__(
        self,
        *,
        session_id: bytes,
        round_id: int,
        participants: Iterable[int],
        vector_length: int,
        bits: int = 32,
        degree: int = 0,
        threshold_fraction: float = 0.6,
        roster: Mapping[int, Ed25519PublicKey | bytes] | None = None,
        graph_seed: bytes | None = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if not isinstance(session_id, bytes) or len(session_id) != SESSION_ID_BYTES:
            raise ConfigError(f"session_id must be {SESSION_ID_BYTES} bytes. Found {session_id!r}.")
        if not 0 <= round_id < 1 << 64:
            raise ConfigError(f"round_id must be in [0, 2**64). Found {round_id}.")
        nodes = tuple(sorted(set(participants)))
        if len(nodes) > MAX_NODES or any(not 0 <= v < 1 << 64 for v in nodes):
            raise ConfigError(f"participants must be <= {MAX_NODES} ids in [0, 2**64).")
        if not 1 <= vector_length <= MAX_VECTOR_LENGTH:
            raise ConfigError(
                f"vector_length must be in [1, {MAX_VECTOR_LENGTH}]. Found {vector_length}."
            )
        self.dtype = ring_dtype(bits)
        seed = random_bytes(SEED_BYTES) if graph_seed is None else graph_seed
        self.neighbours = neighbour_graph(nodes, degree, seed)  # validates n, degree, seed
        self.threshold = threshold_for(len(nodes), degree, threshold_fraction)
        self.holders = {u: nb | {u} for u, nb in self.neighbours.items()}
        self.session_id, self.round_id = session_id, round_id
        self.participants, self.vector_length, self.bits = nodes, vector_length, bits
        self.degree, self.graph_seed = degree, seed
        self.roster = load_roster(roster) if roster is not None else None
        self.context = round_context(
            session_id=session_id,
            round_id=round_id,
            threshold=self.threshold,
            degree=degree,
            bits=bits,
            vector_length=vector_length,
            graph_seed=seed,
            participants=nodes,
        )
        self.phase = ServerPhase.NOT_STARTED
        self.rejected: dict[int, str] = {}
        self.result: AggregationResult | None = None
        self.bytes_sent = 0
        self.bytes_received = 0
        self._expected: set[int] = set()
        self._replies: dict[int, object] = {}
        self._survivors: dict[str, tuple[int, ...]] = {}
        self._adverts: dict[int, KeyAdvert] = {}
        self._sealed: dict[int, dict[int, bytes]] = {}  # receiver -> {sender: ciphertext}
        self._sum = np.zeros(0, dtype=self.dtype)
        self._u2: frozenset[int] = frozenset()
        self._u3: tuple[int, ...] = ()
        self._unmask_lists: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {}

    # -- public API ---------------------------------------------------------------------------

    def start(self) -> dict[int, bytes]:
        """Advertise-keys requests for every participant."""
        if self.phase is not ServerPhase.NOT_STARTED:
            raise ProtocolAbort(f"server round already started (phase {self.phase.value})")
        out = {
            u: AdvertiseKeysRequest(
                session_id=self.session_id,
                round_id=self.round_id,
                node_id=u,
                threshold=self.threshold,
                degree=self.degree,
                bits=self.bits,
                vector_length=self.vector_length,
                graph_seed=self.graph_seed,
                participants=self.participants,
            ).to_bytes()
            for u in self.participants
        }
        return self._send(ServerPhase.ADVERTISE_KEYS, out)

    def receive(self, node_id: int, data: bytes) -> bool:
        """Record one client reply for the current phase; False (and ``rejected``) if refused."""
        if isinstance(data, bytes | bytearray | memoryview):
            self.bytes_received += len(data)
        if node_id not in self._expected:
            self.rejected[node_id] = f"unexpected reply in phase {self.phase.value}"
            return False
        if node_id in self._replies:
            self._reject(node_id, "duplicate reply")
            return False
        try:
            msg = parse(data, expected=_REPLY[self.phase])
            if (msg.session_id, msg.round_id, msg.node_id) != (
                self.session_id,
                self.round_id,
                node_id,
            ):
                raise ProtocolAbort("reply header names another session, round or node")
            getattr(self, f"_check_{self.phase.name.lower()}")(node_id, msg)
        except ProtocolAbort as exc:
            self._reject(node_id, str(exc))
            return False
        self._replies[node_id] = msg
        return True

    def advance(self) -> dict[int, bytes]:
        """Close the current phase and return the next requests ({} once the result is ready).

        Raises:
            ProtocolAbort: too few survivors to continue; the round is over with no output.
        """
        closers = {
            ServerPhase.ADVERTISE_KEYS: self._close_advertise_keys,
            ServerPhase.SHARE_KEYS: self._close_share_keys,
            ServerPhase.MASKED_INPUT: self._close_masked_input,
            ServerPhase.CONSISTENCY_CHECK: self._close_consistency_check,
            ServerPhase.UNMASK: self._close_unmask,
        }
        if self.phase not in closers:
            raise ProtocolAbort(f"nothing to advance in phase {self.phase.value}")
        responders = frozenset(self._replies)
        self._survivors[self.phase.value] = tuple(sorted(responders))
        try:
            return closers[self.phase](responders)
        except ProtocolAbort:
            self.phase = ServerPhase.ABORTED
            self._sum = np.zeros(0, dtype=self.dtype)
            raise

    # -- per-phase reply checks ---------------------------------------------------------------

    def _check_advertise_keys(self, u: int, msg: AdvertiseKeysReply) -> None:
        if self.roster is not None:
            payload = advertise_payload(self.context, u, msg.c_public, msg.s_public)
            if u not in self.roster or not verify(self.roster[u], msg.signature, payload):
                raise ProtocolAbort("bad key-advertisement signature")

    def _check_share_keys(self, u: int, msg: ShareKeysReply) -> None:
        want = sorted((self.holders[u] & set(self._adverts)) - {u})
        if [s.peer_id for s in msg.shares] != want:
            raise ProtocolAbort("sealed shares not addressed to exactly the advertised neighbours")

    def _check_masked_input(self, u: int, msg: MaskedInputReply) -> None:
        if msg.bits != self.bits or msg.length != self.vector_length:
            raise ProtocolAbort(
                f"masked vector has bits={msg.bits}, length={msg.length}; "
                f"expected {self.bits}, {self.vector_length}"
            )
        np.add(self._sum, msg.as_array(), out=self._sum)

    def _check_consistency_check(self, u: int, msg: ConsistencyReply) -> None:
        if self.roster is not None:
            payload = consistency_payload(self.context, self._u3)
            if not verify(self.roster[u], msg.signature, payload):
                raise ProtocolAbort("bad consistency signature")

    def _check_unmask(self, u: int, msg: UnmaskReply) -> None:
        alive, dropped = self._unmask_lists[u]
        if tuple(s.owner_id for s in msg.self_mask_shares) != alive:
            raise ProtocolAbort("self-mask shares do not match the alive list")
        if tuple(s.owner_id for s in msg.key_shares) != dropped:
            raise ProtocolAbort("mask-key shares do not match the dropped list")
        for s in msg.self_mask_shares + msg.key_shares:
            shamir.decode_share(s.share)

    # -- phase transitions --------------------------------------------------------------------

    def _close_advertise_keys(self, responders: frozenset[int]) -> dict[int, bytes]:
        replies: dict[int, AdvertiseKeysReply] = self._replies  # type: ignore[assignment]
        self._adverts = {
            u: KeyAdvert(u, r.c_public, r.s_public, r.signature) for u, r in replies.items()
        }
        u1 = self._prune(responders, "advertise keys")
        self._adverts = {u: a for u, a in self._adverts.items() if u in u1}
        out = {
            u: ShareKeysRequest(
                session_id=self.session_id,
                round_id=self.round_id,
                node_id=u,
                adverts=tuple(self._adverts[v] for v in sorted(self.holders[u] & u1)),
            ).to_bytes()
            for u in sorted(u1)
        }
        return self._send(ServerPhase.SHARE_KEYS, out)

    def _close_share_keys(self, responders: frozenset[int]) -> dict[int, bytes]:
        u2 = self._prune(responders, "share keys")
        self._u2 = u2
        self._sealed = {u: {} for u in u2}
        for sender in u2:
            reply: ShareKeysReply = self._replies[sender]  # type: ignore[assignment]
            for item in reply.shares:
                if item.peer_id in u2:
                    self._sealed[item.peer_id][sender] = item.ciphertext
        out = {
            u: MaskedInputRequest(
                session_id=self.session_id,
                round_id=self.round_id,
                node_id=u,
                shares=tuple(SealedShare(v, ct) for v, ct in sorted(self._sealed[u].items())),
            ).to_bytes()
            for u in sorted(u2)
        }
        self._sum = np.zeros(self.vector_length, dtype=self.dtype)
        return self._send(ServerPhase.MASKED_INPUT, out)

    def _close_masked_input(self, responders: frozenset[int]) -> dict[int, bytes]:
        self._sealed = {}
        self._u3 = tuple(sorted(responders))
        self._require_unmaskable(responders, "masked input")
        out = {
            u: ConsistencyRequest(
                session_id=self.session_id, round_id=self.round_id, node_id=u, survivors=self._u3
            ).to_bytes()
            for u in self._u3
        }
        return self._send(ServerPhase.CONSISTENCY_CHECK, out)

    def _close_consistency_check(self, responders: frozenset[int]) -> dict[int, bytes]:
        self._require_unmaskable(responders, "consistency check")
        u3 = frozenset(self._u3)
        replies: dict[int, ConsistencyReply] = self._replies  # type: ignore[assignment]
        out = {}
        for u in sorted(responders):
            alive = tuple(sorted(self.holders[u] & u3))
            dropped = tuple(sorted((self.holders[u] & self._u2) - u3))
            self._unmask_lists[u] = (alive, dropped)
            signatures = tuple(
                NodeSignature(v, replies[v].signature) for v in sorted(self.holders[u] & responders)
            )
            out[u] = UnmaskRequest(
                session_id=self.session_id,
                round_id=self.round_id,
                node_id=u,
                signatures=signatures,
                alive=alive,
                dropped=dropped,
            ).to_bytes()
        return self._send(ServerPhase.UNMASK, out)

    def _close_unmask(self, responders: frozenset[int]) -> dict[int, bytes]:
        self._require_unmaskable(responders, "unmask")
        replies: dict[int, UnmaskReply] = self._replies  # type: ignore[assignment]
        b_shares: dict[int, dict[int, int]] = {}
        sk_shares: dict[int, dict[int, int]] = {}
        for holder, reply in replies.items():
            x = shamir.point_of(holder)
            for s in reply.self_mask_shares:
                b_shares.setdefault(s.owner_id, {})[x] = shamir.decode_share(s.share)
            for s in reply.key_shares:
                sk_shares.setdefault(s.owner_id, {})[x] = shamir.decode_share(s.share)
        u3 = frozenset(self._u3)
        total = self._sum
        masks: list[tuple[bytes, int]] = []
        for u in self._u3:
            seed = shamir.int_to_secret(shamir.combine(b_shares.get(u, {}), self.threshold))
            masks.append((seed, -1))
        for u in sorted(self._u2 - u3):
            secret = shamir.int_to_secret(shamir.combine(sk_shares.get(u, {}), self.threshold))
            s_key = x25519_from_seed(secret)
            if public_bytes(s_key) != self._adverts[u].s_public:
                raise ProtocolAbort(f"reconstructed mask key of node {u} does not match its advert")
            for v in sorted(self.holders[u] & u3 - {u}):
                seed = pair_key(
                    s_key,
                    self._adverts[v].s_public,
                    context=self.context,
                    purpose=PURPOSE_PAIRWISE_MASK,
                    a=u,
                    b=v,
                )
                masks.append((seed, -1 if v < u else 1))  # v added +mask for the pair (v, u)
        apply_masks(total, masks, self.bits)
        self.result = AggregationResult(
            vector=total, contributors=self._u3, survivors_by_phase=dict(self._survivors)
        )
        self._sum = np.zeros(0, dtype=self.dtype)
        self.phase = ServerPhase.DONE
        self._expected = set()
        return {}

    # -- helpers ------------------------------------------------------------------------------

    def _send(self, phase: ServerPhase, out: dict[int, bytes]) -> dict[int, bytes]:
        self.phase = phase
        self._expected = set(out)
        self._replies = {}
        self.bytes_sent += sum(len(b) for b in out.values())
        return out

    def _reject(self, node_id: int, reason: str) -> None:
        self.rejected[node_id] = f"{self.phase.value}: {reason}"
        self._replies.pop(node_id, None)
        self._expected.discard(node_id)

    def _prune(self, alive: frozenset[int], phase: str) -> frozenset[int]:
        """Drop nodes with fewer than t live share holders (they would abort) until stable."""
        current = set(alive)
        changed = True
        while changed:
            changed = False
            for u in sorted(current):
                if len(self.holders[u] & current) < self.threshold:
                    current.discard(u)
                    changed = True
        if not current:
            raise ProtocolAbort(
                f"too few survivors after {phase}: {len(alive)} replied, threshold "
                f"{self.threshold} per neighbourhood cannot be met"
            )
        return frozenset(current)

    def _require_unmaskable(self, alive: frozenset[int], phase: str) -> None:
        """Abort unless every node in U2 keeps >= t live share holders."""
        for u in sorted(self._u2):
            live = len(self.holders[u] & alive)
            if live < self.threshold:
                raise ProtocolAbort(
                    f"too few survivors after {phase}: node {u} has {live} live share holders, "
                    f"threshold {self.threshold}"
                )
