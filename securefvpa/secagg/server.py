"""Server state machine of secure aggregation (Bonawitz et al. 2017, Fig. 4; SecAgg+ graph).

The server only relays and sums; it learns the sum of the inputs of the nodes in ``U3`` (the
masked-input senders) and nothing else about them (see threat_models/secagg.md). Drive it with::

    out = server.start()                    # {node_id: request bytes}
    while out:
        replies = transport(out)            # {node_id: reply bytes}; missing = dropped
        for node, data in replies.items():
            server.receive(node, data)      # never raises on client bytes
        out = server.advance()              # next requests; ProtocolAbort if too few survive
    result = server.result                  # AggregationResult

One exchange per phase: advertise keys, reveal seed (SecAgg+ graph only), share keys, masked
input, consistency check, unmask — five exchanges with the complete graph, six with SecAgg+.

State changes only when a reply is accepted in full (check, then commit, as
``dp_accounting``'s ``supports()``/``compose()``): :meth:`SecAggServer.receive` runs every check
of the phase first, and only a reply that passes all of them is recorded (and, in the
masked-input phase, added to the running sum). The first accepted reply of a node in a phase is
final; any later message from it in that phase (an identical duplicate from a retrying
transport, a stale reply of an earlier phase or round, garbage) is refused and changes nothing
but ``server.rejected[node]`` (the reason). A node whose reply was never accepted when the phase
closes is a dropout. So the sum is exactly that of the accepted masked inputs, or the round
aborts with :class:`~securefvpa.errors.ProtocolAbort` — never a wrong sum
(``tests/secagg/test_delivery.py``).

The SecAgg+ graph seed is not the server's: it is derived from the clients' committed and then
revealed contributions (:mod:`securefvpa.secagg.client`), and the server only learns it, like
everyone else, once every node of U1 has revealed.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from securefvpa.errors import ConfigError, ProtocolAbort
from securefvpa.secagg import shamir
from securefvpa.secagg.client import load_roster
from securefvpa.secagg.graph import (
    MIN_PARTICIPANTS,
    effective_degree,
    neighbour_graph,
    threshold_for,
)
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
    RevealSeedReply,
    RevealSeedRequest,
    SealedShare,
    ShareKeysReply,
    ShareKeysRequest,
    UnmaskReply,
    UnmaskRequest,
    parse,
)
from securefvpa.secagg.primitives import (
    PURPOSE_PAIRWISE_MASK,
    advertise_payload,
    apply_masks,
    consistency_payload,
    derive_graph_seed,
    pair_key,
    public_bytes,
    ring_dtype,
    round_context,
    seed_commitment,
    verify,
    x25519_from_seed,
)


class ServerPhase(Enum):
    """Which replies the server is collecting (REVEAL_SEED only with a SecAgg+ graph)."""

    NOT_STARTED = "not-started"
    ADVERTISE_KEYS = "advertise-keys"
    REVEAL_SEED = "reveal-seed"
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


_REPLY: dict[ServerPhase, type] = {
    ServerPhase.ADVERTISE_KEYS: AdvertiseKeysReply,
    ServerPhase.REVEAL_SEED: RevealSeedReply,
    ServerPhase.SHARE_KEYS: ShareKeysReply,
    ServerPhase.MASKED_INPUT: MaskedInputReply,
    ServerPhase.CONSISTENCY_CHECK: ConsistencyReply,
    ServerPhase.UNMASK: UnmaskReply,
}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class SecAggServer:
    """Server side of one protocol instance.

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

    Attributes:
        graph_seed: the SecAgg+ graph seed once every node of U1 has revealed (``b""`` before
            that, and always for the complete graph, which has no seed).
        neighbours, holders: the graph (``{}`` until the seed is known).
        rejected: ``{node_id: "phase: reason"}`` of the last refused message of each node.

    Raises:
        ConfigError: a bad argument.
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
    ) -> None:
        if not isinstance(session_id, bytes) or len(session_id) != SESSION_ID_BYTES:
            raise ConfigError(f"session_id must be {SESSION_ID_BYTES} bytes. Found {session_id!r}.")
        if not _is_int(round_id) or not 0 <= round_id < 1 << 64:
            raise ConfigError(f"round_id must be an int in [0, 2**64). Found {round_id!r}.")
        ids = list(participants)
        if any(not _is_int(v) or not 0 <= v < 1 << 64 for v in ids):
            raise ConfigError(f"participants must be int node ids in [0, 2**64). Found {ids[:5]}.")
        nodes = tuple(sorted(set(ids)))
        if not MIN_PARTICIPANTS <= len(nodes) <= MAX_NODES:
            raise ConfigError(
                f"secure aggregation needs {MIN_PARTICIPANTS}..{MAX_NODES} distinct participants. "
                f"Found {len(nodes)}."
            )
        if not _is_int(vector_length) or not 1 <= vector_length <= MAX_VECTOR_LENGTH:
            raise ConfigError(
                f"vector_length must be an int in [1, {MAX_VECTOR_LENGTH}]. Found {vector_length!r}."
            )
        if not _is_int(degree):
            raise ConfigError(f"secagg.degree must be an int. Found {degree!r}.")
        self.dtype = ring_dtype(bits)
        self.sparse = effective_degree(len(nodes), degree) < len(nodes) - 1
        self.threshold = threshold_for(len(nodes), degree, threshold_fraction)
        self.session_id, self.round_id = session_id, round_id
        self.participants, self.vector_length, self.bits = nodes, vector_length, bits
        self.degree = degree
        self.roster = load_roster(roster) if roster is not None else None
        # what key advertisements sign (no seed exists yet); see primitives.round_context
        self.parameter_context = self._round_context(b"")
        self.graph_seed = b""
        self.context = self.parameter_context
        self.neighbours: dict[int, frozenset[int]] = {}
        self.holders: dict[int, frozenset[int]] = {}
        if not self.sparse:
            self._set_graph(b"")
        self.phase = ServerPhase.NOT_STARTED
        self.rejected: dict[int, str] = {}
        self.result: AggregationResult | None = None
        self.bytes_sent = 0
        self.bytes_received = 0
        self._expected: frozenset[int] = frozenset()
        self._replies: dict[int, Any] = {}  # accepted replies of the current phase
        self._survivors: dict[str, tuple[int, ...]] = {}
        self._adverts: dict[int, KeyAdvert] = {}
        self._sealed: dict[int, dict[int, bytes]] = {}  # receiver -> {sender: ciphertext}
        self._sum = np.zeros(0, dtype=self.dtype)
        self._u2: frozenset[int] = frozenset()
        self._u3: tuple[int, ...] = ()
        self._unmask_lists: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {}
        # unmask phase: accepted shares per (owner, is self mask), the masks rebuilt from them
        self._points: dict[tuple[int, bool], dict[int, int]] = {}
        self._masks: dict[int, list[tuple[bytes, int]]] = {}
        self._unmask_errors: dict[tuple[int, bool], str] = {}

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
                participants=self.participants,
            ).to_bytes()
            for u in self.participants
        }
        return self._send(ServerPhase.ADVERTISE_KEYS, out)

    def receive(self, node_id: int, data: bytes) -> bool:
        """Offer one client reply for the current phase; True iff it was accepted.

        Every check of the phase runs before anything is recorded. A refused message (bad
        bytes, a failed check, a second message from a node whose reply was already accepted,
        a reply to no request, anything after the round ended) changes nothing but
        ``rejected[node_id]``; it never raises on client bytes.

        Raises:
            ConfigError: ``node_id`` is not an int (a transport bug, not client input).
        """
        if not _is_int(node_id):
            raise ConfigError(f"node_id must be an int. Found {node_id!r}.")
        if isinstance(data, bytes | bytearray | memoryview):
            self.bytes_received += memoryview(data).nbytes
        phase = self.phase
        try:
            msg = self._validate(node_id, data)
        except ProtocolAbort as exc:
            self.rejected[node_id] = f"{phase.value}: {exc}"
            return False
        except Exception as exc:  # fail closed: refuse, record; the tests assert unreachable
            self.rejected[node_id] = f"{phase.value}: internal error ({type(exc).__name__})"
            return False
        self._accept(node_id, msg)
        return True

    def advance(self) -> dict[int, bytes]:
        """Close the current phase and return the next requests ({} once the result is ready).

        Raises:
            ProtocolAbort: too few survivors to continue (or a missing seed reveal); the round
                is over with no output and every later :meth:`receive` is refused.
        """
        closers = {
            ServerPhase.ADVERTISE_KEYS: self._close_advertise_keys,
            ServerPhase.REVEAL_SEED: self._close_reveal_seed,
            ServerPhase.SHARE_KEYS: self._close_share_keys,
            ServerPhase.MASKED_INPUT: self._close_masked_input,
            ServerPhase.CONSISTENCY_CHECK: self._close_consistency_check,
            ServerPhase.UNMASK: self._close_unmask,
        }
        phase = self.phase
        if phase not in closers:
            raise ProtocolAbort(f"nothing to advance in phase {phase.value}")
        responders = frozenset(self._replies)
        self._survivors[phase.value] = tuple(sorted(responders))
        try:
            return closers[phase](responders)
        except ProtocolAbort:
            self._abort()
            raise
        except Exception as exc:  # fail closed: no partial result, no half-open phase
            self._abort()
            raise ProtocolAbort(
                f"internal error while closing the {phase.value} phase ({type(exc).__name__}); "
                "round aborted"
            ) from exc

    # -- receiving: check everything, then commit ---------------------------------------------

    def _validate(self, u: int, data: object) -> Any:
        """Every check of the current phase on one reply; raises ProtocolAbort, mutates nothing."""
        expected = _REPLY.get(self.phase)
        if expected is None:
            raise ProtocolAbort(f"no phase is collecting replies (round is {self.phase.value})")
        if u in self._replies:
            raise ProtocolAbort("a reply of this node was already accepted in this phase")
        if u not in self._expected:
            raise ProtocolAbort("unexpected reply: this node was sent no request in this phase")
        msg = parse(data, expected=expected)
        if (msg.session_id, msg.round_id, msg.node_id) != (self.session_id, self.round_id, u):
            raise ProtocolAbort("reply header names another session, round or node")
        self._CHECKS[self.phase](self, u, msg)
        return msg

    def _accept(self, u: int, msg: Any) -> None:
        """Record a reply that passed every check (cannot fail)."""
        if self.phase is ServerPhase.MASKED_INPUT:
            np.add(self._sum, msg.as_array(), out=self._sum)
            self._replies[u] = None  # the vector lives on only in the sum
            return
        self._replies[u] = msg
        if self.phase is ServerPhase.UNMASK:
            x = shamir.point_of(u)
            for share in msg.self_mask_shares:
                self._collect(share.owner_id, x, share.share, self_mask=True)
            for share in msg.key_shares:
                self._collect(share.owner_id, x, share.share, self_mask=False)

    def _collect(self, owner: int, x: int, share: bytes, *, self_mask: bool) -> None:
        """Add one accepted unmask share; rebuild ``owner``'s secret as soon as ``t`` are in.

        Reconstruction runs while the other replies are still arriving, so closing the phase
        only streams the masks. A secret is rebuilt from the first ``t`` accepted shares (any
        ``t`` determine it); a failure (inconsistent shares, a key that does not match the
        advert) is recorded and aborts the round when the phase closes.
        """
        points = self._points.setdefault((owner, self_mask), {})
        if len(points) >= self.threshold or (owner, self_mask) in self._unmask_errors:
            return
        points[x] = shamir.decode_share(share)  # validated in _check_unmask
        if len(points) < self.threshold:
            return
        try:
            secret = shamir.int_to_secret(shamir.combine(points, self.threshold))
            if self_mask:
                self._masks[owner] = [(secret, -1)]
            else:
                self._masks[owner] = self._pairwise_masks_of_dropped(owner, secret)
        except ProtocolAbort as exc:
            self._unmask_errors[(owner, self_mask)] = str(exc)
        except Exception as exc:  # fail closed: receive() never raises; the round aborts
            self._unmask_errors[(owner, self_mask)] = f"internal error ({type(exc).__name__})"

    def _pairwise_masks_of_dropped(self, u: int, secret: bytes) -> list[tuple[bytes, int]]:
        """The masks a dropped node ``u`` shared with its surviving neighbours, to remove."""
        s_key = x25519_from_seed(secret)
        if public_bytes(s_key) != self._adverts[u].s_public:
            raise ProtocolAbort(f"reconstructed mask key of node {u} does not match its advert")
        u3 = frozenset(self._u3)
        masks = []
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
        return masks

    def _check_advertise_keys(self, u: int, msg: AdvertiseKeysReply) -> None:
        if self.roster is not None:
            payload = advertise_payload(
                self.parameter_context, u, msg.c_public, msg.s_public, msg.seed_commitment
            )
            if u not in self.roster or not verify(self.roster[u], msg.signature, payload):
                raise ProtocolAbort("bad key-advertisement signature")

    def _check_reveal_seed(self, u: int, msg: RevealSeedReply) -> None:
        opened = seed_commitment(self.parameter_context, u, msg.contribution)
        if not hmac.compare_digest(opened, self._adverts[u].seed_commitment):
            raise ProtocolAbort("graph-seed reveal does not open this node's commitment")

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

    _CHECKS: dict[ServerPhase, Callable[[SecAggServer, int, Any], None]] = {
        ServerPhase.ADVERTISE_KEYS: _check_advertise_keys,
        ServerPhase.REVEAL_SEED: _check_reveal_seed,
        ServerPhase.SHARE_KEYS: _check_share_keys,
        ServerPhase.MASKED_INPUT: _check_masked_input,
        ServerPhase.CONSISTENCY_CHECK: _check_consistency_check,
        ServerPhase.UNMASK: _check_unmask,
    }

    # -- phase transitions --------------------------------------------------------------------

    def _close_advertise_keys(self, responders: frozenset[int]) -> dict[int, bytes]:
        replies: dict[int, AdvertiseKeysReply] = self._replies
        self._adverts = {
            u: KeyAdvert(u, r.c_public, r.s_public, r.seed_commitment, r.signature)
            for u, r in sorted(replies.items())
        }
        if not self.sparse:
            return self._send_share_keys(self._prune(responders, "advertise keys"), (), b"")
        # SecAgg+: every responder is in U1 and must reveal; the graph is unknown until then
        if len(responders) < self.threshold:
            raise ProtocolAbort(
                f"too few survivors after advertise keys: {len(responders)} < threshold "
                f"{self.threshold}"
            )
        committed = tuple(self._adverts)  # sorted
        commitments = b"".join(a.seed_commitment for a in self._adverts.values())
        out = {
            u: RevealSeedRequest(
                session_id=self.session_id,
                round_id=self.round_id,
                node_id=u,
                committed=committed,
                commitments=commitments,
            ).to_bytes()
            for u in committed
        }
        return self._send(ServerPhase.REVEAL_SEED, out)

    def _close_reveal_seed(self, responders: frozenset[int]) -> dict[int, bytes]:
        missing = sorted(set(self._adverts) - responders)
        if missing:
            raise ProtocolAbort(
                f"graph-seed reveals missing from {len(missing)} committed node(s) "
                f"{missing[:5]}: the seed needs every reveal of U1 (a seed from a subset "
                "would let the server choose the graph); start a new instance"
            )
        replies: dict[int, RevealSeedReply] = self._replies
        revealed = tuple(sorted(self._adverts))
        reveals = b"".join(replies[u].contribution for u in revealed)
        self._set_graph(derive_graph_seed(self.parameter_context, revealed, reveals))
        u1 = self._prune(responders, "reveal seed")
        return self._send_share_keys(u1, revealed, reveals)

    def _send_share_keys(
        self, u1: frozenset[int], revealed: tuple[int, ...], reveals: bytes
    ) -> dict[int, bytes]:
        self._adverts = {u: a for u, a in self._adverts.items() if u in u1}
        out = {
            u: ShareKeysRequest(
                session_id=self.session_id,
                round_id=self.round_id,
                node_id=u,
                revealed=revealed,
                reveals=reveals,
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
            reply: ShareKeysReply = self._replies[sender]
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
        replies: dict[int, ConsistencyReply] = self._replies
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
        if self._unmask_errors:
            (owner, _), reason = min(self._unmask_errors.items())
            raise ProtocolAbort(f"unmasking node {owner} failed: {reason}")
        masks: list[tuple[bytes, int]] = []
        for u in sorted(self._u2):  # self masks of U3, pairwise masks of U2 \ U3
            if u not in self._masks:  # cannot happen after _require_unmaskable; fail closed
                raise ProtocolAbort(f"cannot reconstruct the secret of node {u}")
            masks += self._masks[u]
        total = self._sum
        apply_masks(total, masks, self.bits)
        self.result = AggregationResult(
            vector=total, contributors=self._u3, survivors_by_phase=dict(self._survivors)
        )
        self._sum = np.zeros(0, dtype=self.dtype)
        self._masks, self._points = {}, {}
        self.phase = ServerPhase.DONE
        self._expected = frozenset()
        self._replies = {}
        return {}

    # -- helpers ------------------------------------------------------------------------------

    def _round_context(self, graph_seed: bytes) -> bytes:
        return round_context(
            session_id=self.session_id,
            round_id=self.round_id,
            threshold=self.threshold,
            degree=self.degree,
            bits=self.bits,
            vector_length=self.vector_length,
            graph_seed=graph_seed,
            participants=self.participants,
        )

    def _set_graph(self, graph_seed: bytes) -> None:
        """The graph and the round context from the seed (``b""``: the complete graph)."""
        if graph_seed:
            self.neighbours = neighbour_graph(self.participants, self.degree, graph_seed)
        else:
            everyone = frozenset(self.participants)
            self.neighbours = {u: everyone - {u} for u in self.participants}
        self.holders = {u: nb | {u} for u, nb in self.neighbours.items()}
        self.graph_seed = graph_seed
        self.context = self._round_context(graph_seed)

    def _send(self, phase: ServerPhase, out: dict[int, bytes]) -> dict[int, bytes]:
        self.phase = phase
        self._expected = frozenset(out)
        self._replies = {}
        self.bytes_sent += sum(len(b) for b in out.values())
        return out

    def _abort(self) -> None:
        """End the round with no output; every later reply is refused."""
        self.phase = ServerPhase.ABORTED
        self._expected = frozenset()
        self._replies = {}
        self._sealed = {}
        self._sum = np.zeros(0, dtype=self.dtype)

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
