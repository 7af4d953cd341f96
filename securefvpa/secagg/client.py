"""Client state machine of secure aggregation (Bonawitz et al. 2017, Fig. 4; SecAgg+ graph).

One :class:`SecAggClient` object runs one protocol instance: ``reply = client.handle(request)``
for each server request, passing the encoded input vector with the masked-input request. Every
check that fails raises :class:`~securefvpa.errors.ProtocolAbort` (the client then refuses all
further messages, wipes its secrets and has sent nothing secret); local misuse (wrong input dtype
or length) raises :class:`~securefvpa.errors.ConfigError` and leaves the state unchanged. Any
other failure while processing server bytes also aborts the client (fail closed) and surfaces as
a ``ProtocolAbort`` whose message starts with ``internal error`` (the tests assert that no input
reaches that path).

Notation (paper): ``H(u)`` = u's neighbours in the round graph plus u itself (the holders of
u's shares); ``U1 ⊇ U2 ⊇ U3 ⊇ U4`` = nodes that advertised keys, shared keys, sent a masked
input, signed the survivor list. The client only ever sees the intersections with ``H(u)``,
except for U1's seed commitments and reveals in a SecAgg+ round, which every client sees in full.

Graph seed (SecAgg+ only; threat_models/secagg.md §2): the client commits to a fresh 32-byte
contribution in its signed key advertisement, reveals it only after the server has shown it the
commitments of all of U1, keeps a digest of that set, and accepts only reveals that open exactly
that set. It computes the seed and its neighbours itself; the server never names a seed.
"""

from __future__ import annotations

import hmac
import json
import os
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from securefvpa.errors import ConfigError, ProtocolAbort
from securefvpa.secagg import shamir
from securefvpa.secagg.graph import (
    MIN_PARTICIPANTS,
    effective_degree,
    neighbours_of,
    threshold_for,
)
from securefvpa.secagg.messages import (
    MAX_NODES,
    SESSION_ID_BYTES,
    AdvertiseKeysReply,
    AdvertiseKeysRequest,
    ConsistencyReply,
    ConsistencyRequest,
    KeyAdvert,
    MaskedInputReply,
    MaskedInputRequest,
    RevealedShare,
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
    COMMITMENT_BYTES,
    KEY_BYTES,
    NONCE_BYTES,
    PURPOSE_PAIRWISE_MASK,
    PURPOSE_SHARE_ENCRYPTION,
    SEED_BYTES,
    SIGNATURE_BYTES,
    advertise_payload,
    apply_masks,
    commitment_digest,
    consistency_payload,
    derive_graph_seed,
    open_sealed,
    pair_key,
    public_bytes,
    ring_dtype,
    round_context,
    seal,
    seed_commitment,
    share_associated_data,
    sign,
    u64,
    verify,
    x25519_from_seed,
)

MAX_INSTANCES_PER_INPUT = 3
"""Protocol instances a client joins per input (a first try and two retries after aborts).

Each instance draws a fresh, uniformly random SecAgg+ graph; a malicious server that aborts
instances until a victim is surrounded by colluders gets at most this many draws per input, so
its success probability is at most ``MAX_INSTANCES_PER_INPUT * graph.colluder_risk(...)``. The
transport enforces it with :func:`admit_instance`: the Flower mod (``fl.secagg_mod._admit``)
counts the SecAgg+ instances a node joins per round of its run (one round, one update)."""


def admit_instance(started: int, *, limit: int = MAX_INSTANCES_PER_INPUT) -> int:
    """Count one more protocol instance for the same input; returns ``started + 1``.

    The caller keeps ``started`` where the server cannot reset it (e.g. the Flower node's
    state, per round) and stores the returned count *before* building the new
    :class:`SecAggClient`, so a crash cannot reset it.

    Raises:
        ProtocolAbort: ``started >= limit``: ``limit`` instances were already joined for this
            input (a server re-rolling the graph); the caller refuses the new one.
        ConfigError: ``started`` or ``limit`` is not a non-negative int.
    """
    for name, value in (("started", started), ("limit", limit)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{name} must be an int >= 0. Found {value!r}.")
    if started >= limit:
        raise ProtocolAbort(
            f"already {started} protocol instances joined for this input (limit {limit}); "
            "refusing another (a server re-rolling the neighbour graph?)"
        )
    return started + 1


class ClientPhase(Enum):
    """What the client expects next (protocol order; REVEAL_SEED only with a SecAgg+ graph)."""

    ADVERTISE_KEYS = "advertise-keys"
    REVEAL_SEED = "reveal-seed"
    SHARE_KEYS = "share-keys"
    MASKED_INPUT = "masked-input"
    CONSISTENCY_CHECK = "consistency-check"
    UNMASK = "unmask"
    DONE = "done"
    ABORTED = "aborted"


_ORDER = list(ClientPhase)
_TERMINAL = (ClientPhase.DONE, ClientPhase.ABORTED)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class ClientPolicy:
    """Round parameters the client accepts, fixed out of band (the run config), never by the
    server: the server's request must match them exactly, and its threshold must be at least
    :func:`~securefvpa.secagg.graph.threshold_for` of ``threshold_fraction``."""

    vector_length: int
    bits: int = 32
    degree: int = 0
    threshold_fraction: float = 0.6
    max_participants: int = MAX_NODES
    # Distributed DP: the fewest masked inputs an unmasked sum may hold (the ``t`` its noise was
    # sized for). The client refuses a round with fewer participants, and refuses to help unmask
    # (no consistency signature, no shares) when fewer survived, so a server cannot shrink the
    # noise in the sum by dropping clients. 0: no requirement beyond the protocol's own.
    min_survivors: int = 0

    def __post_init__(self) -> None:
        if not _is_int(self.vector_length) or self.vector_length < 1:
            raise ConfigError(f"vector_length must be an int >= 1. Found {self.vector_length!r}.")
        ring_dtype(self.bits)
        if (
            not isinstance(self.threshold_fraction, int | float)
            or isinstance(self.threshold_fraction, bool)
            or not 0.5 < self.threshold_fraction <= 1.0
        ):
            raise ConfigError(
                f"secagg.threshold must be in (0.5, 1]. Found {self.threshold_fraction!r}."
            )
        if not _is_int(self.degree) or self.degree < 0 or self.degree % 2:
            raise ConfigError(
                f"secagg.degree must be 0 or an even number >= 2. Found {self.degree!r}."
            )
        if not _is_int(self.min_survivors) or not 0 <= self.min_survivors <= MAX_NODES:
            raise ConfigError(
                f"min_survivors must be an int in [0, {MAX_NODES}]. Found {self.min_survivors!r}."
            )
        if not _is_int(self.max_participants) or not (
            MIN_PARTICIPANTS <= self.max_participants <= MAX_NODES
        ):
            raise ConfigError(
                f"max_participants must be in [{MIN_PARTICIPANTS}, {MAX_NODES}]. "
                f"Found {self.max_participants!r}."
            )


def _as_public(key: Ed25519PublicKey | bytes) -> Ed25519PublicKey:
    if isinstance(key, Ed25519PublicKey):
        return key
    if isinstance(key, bytes) and len(key) == 32:
        return Ed25519PublicKey.from_public_bytes(key)
    raise ConfigError(f"roster entries must be Ed25519 public keys or 32 raw bytes. Found {key!r}.")


def load_roster(roster: Mapping[int, Ed25519PublicKey | bytes]) -> dict[int, Ed25519PublicKey]:
    """``{node_id: Ed25519 public key}`` from keys or raw 32-byte encodings."""
    if not isinstance(roster, Mapping):
        raise ConfigError(
            f"roster must be a mapping node_id -> key. Found {type(roster).__name__}."
        )
    out = {}
    for node, key in roster.items():
        if not _is_int(node) or not 0 <= node < 1 << 64:
            raise ConfigError(f"roster node ids must be ints in [0, 2**64). Found {node!r}.")
        out[node] = _as_public(key)
    return out


class SecAggClient:
    """One client, one protocol instance. Drive it with :meth:`handle`.

    Args:
        node_id: this client's id (the transport's authenticated node id).
        identity_key: the client's long-term Ed25519 signing key.
        roster: ``{node_id: Ed25519 public key}`` of every client that may take part,
            distributed out of band (Sybil protection rests on it).
        policy: the round parameters this client accepts.
        session_id: 32-byte id of the federation session (e.g. SHA-256 of the run id).
        round_id: the round number; messages from another session or round are refused.
        random_bytes: CSPRNG, ``os.urandom`` in production; injectable for tests.

    Raises:
        ConfigError: a bad local argument (ids, keys, roster, policy).
    """

    def __init__(
        self,
        *,
        node_id: int,
        identity_key: Ed25519PrivateKey,
        roster: Mapping[int, Ed25519PublicKey | bytes],
        policy: ClientPolicy,
        session_id: bytes,
        round_id: int,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if not isinstance(session_id, bytes) or len(session_id) != SESSION_ID_BYTES:
            raise ConfigError(f"session_id must be {SESSION_ID_BYTES} bytes. Found {session_id!r}.")
        if not _is_int(round_id) or not 0 <= round_id < 1 << 64:
            raise ConfigError(f"round_id must be an int in [0, 2**64). Found {round_id!r}.")
        if not isinstance(identity_key, Ed25519PrivateKey):
            raise ConfigError(f"identity_key must be an Ed25519PrivateKey. Found {identity_key!r}.")
        if not isinstance(policy, ClientPolicy):
            raise ConfigError(f"policy must be a ClientPolicy. Found {policy!r}.")
        self._roster = load_roster(roster)
        if not _is_int(node_id) or node_id not in self._roster:
            raise ConfigError(f"node_id {node_id!r} is not in the roster.")
        if self._roster[node_id].public_bytes_raw() != identity_key.public_key().public_bytes_raw():
            raise ConfigError(f"identity_key does not match the roster entry of node {node_id}.")
        self.node_id = node_id
        self.session_id = session_id
        self.round_id = round_id
        self._identity = identity_key
        self._policy = policy
        self._random_bytes = random_bytes
        self._phase = ClientPhase.ADVERTISE_KEYS
        # public round state, filled phase by phase (see _check_state for when each is set)
        self._t = 0
        self._participants: tuple[int, ...] = ()
        self._param_context = b""  # round context without a seed: what key adverts sign
        self._context = b""  # round context with the graph seed: keys, AEAD, consistency
        self._graph_seed = b""  # SecAgg+ only, derived from the reveals
        self._holders: frozenset[int] = frozenset()
        self._u1_digest = b""  # SecAgg+ only: digest of the U1 commitments this node was shown
        self._adverts: dict[int, KeyAdvert] = {}
        self._u2: frozenset[int] = frozenset()
        self._survivors: tuple[int, ...] = ()
        # secrets: wiped by _reset_secrets when the round ends or aborts
        self._c_key: X25519PrivateKey = None  # type: ignore[assignment]
        self._s_key: X25519PrivateKey = None  # type: ignore[assignment]
        self._contribution = b""  # r_u, secret until revealed
        self._self_seed = b""
        self._b_shares: dict[int, int] = {}
        self._sk_shares: dict[int, int] = {}

    # -- public API ---------------------------------------------------------------------------

    @property
    def phase(self) -> ClientPhase:
        return self._phase

    @property
    def needs_input(self) -> bool:
        """True when the next request is the masked-input request (pass ``input_vector``)."""
        return self._phase is ClientPhase.MASKED_INPUT

    def handle(self, request: bytes, *, input_vector: np.ndarray | None = None) -> bytes:
        """Process one server request and return the reply bytes.

        Raises:
            ProtocolAbort: the request failed a check (or could not be processed); the client
                has aborted for good and wiped its secrets.
            ConfigError: ``input_vector`` is missing or has the wrong dtype/length (checked
                before the request is read; the state is unchanged).
        """
        phase = self._phase
        if phase in _TERMINAL:
            raise ProtocolAbort(f"client {self.node_id} is {phase.value}; message refused")
        vector = self._check_input(input_vector) if phase is ClientPhase.MASKED_INPUT else None
        try:
            msg = self._parse_addressed(request, phase)
            if phase is ClientPhase.MASKED_INPUT:
                reply = self._on_masked_input(msg, vector)  # type: ignore[arg-type]
            else:
                reply = self._HANDLERS[phase](self, msg)
        except ProtocolAbort:
            self._abort()
            raise
        except Exception as exc:  # fail closed: never leave secrets behind an unexpected error
            self._abort()
            raise ProtocolAbort(
                f"internal error while handling the {phase.value} request "
                f"({type(exc).__name__}); client aborted"
            ) from exc
        return reply

    def check_masked_input_request(self, request: bytes) -> None:
        """Every check :meth:`handle` makes on the masked-input request — framing, session,
        round, addressee, share senders, quorum, each relayed share opened and its names
        checked — without changing anything, so a transport can refuse a bad request before it
        computes the input (the Flower mod: before training, so no privacy budget is spent).

        Raises:
            ProtocolAbort: the client is not waiting for its input, or :meth:`handle` would
                refuse this request (the client itself is unchanged).
        """
        if self._phase is not ClientPhase.MASKED_INPUT:
            raise ProtocolAbort(f"masked input requested in phase {self._phase.value}")
        try:
            self._open_shares(self._parse_addressed(request, ClientPhase.MASKED_INPUT))
        except ProtocolAbort:
            raise
        except Exception as exc:  # fail closed, as handle() does
            raise ProtocolAbort(
                f"internal error while checking the masked-input request ({type(exc).__name__})"
            ) from exc

    def _parse_addressed(self, request: bytes, phase: ClientPhase) -> Any:
        msg = parse(request, expected=self._EXPECTED[phase])
        if msg.session_id != self.session_id or msg.round_id != self.round_id:
            raise ProtocolAbort("message belongs to another session or round (replay?)")
        if msg.node_id != self.node_id:
            raise ProtocolAbort("message is addressed to another node")
        return msg

    _EXPECTED: dict[ClientPhase, type] = {
        ClientPhase.ADVERTISE_KEYS: AdvertiseKeysRequest,
        ClientPhase.REVEAL_SEED: RevealSeedRequest,
        ClientPhase.SHARE_KEYS: ShareKeysRequest,
        ClientPhase.MASKED_INPUT: MaskedInputRequest,
        ClientPhase.CONSISTENCY_CHECK: ConsistencyRequest,
        ClientPhase.UNMASK: UnmaskRequest,
    }

    # -- phases -------------------------------------------------------------------------------

    def _on_advertise_keys(self, msg: AdvertiseKeysRequest) -> bytes:
        p = self._policy
        if (msg.bits, msg.vector_length, msg.degree) != (p.bits, p.vector_length, p.degree):
            raise ProtocolAbort(
                "round parameters differ from the client's policy "
                f"(bits, vector_length, degree) = {(msg.bits, msg.vector_length, msg.degree)}"
            )
        self._check_round(msg.participants, msg.threshold)
        self._t = msg.threshold
        self._participants = msg.participants
        self._param_context = self._round_context(b"")
        if not self._sparse:  # complete graph: no seed, every participant is a holder
            self._set_graph(b"")
        self._c_key = x25519_from_seed(self._random_bytes(32))
        self._s_key = x25519_from_seed(self._random_bytes(32))
        self._contribution = self._random_bytes(SEED_BYTES)
        c_pub, s_pub = public_bytes(self._c_key), public_bytes(self._s_key)
        commitment = self._own_commitment()
        signature = sign(
            self._identity,
            advertise_payload(self._param_context, self.node_id, c_pub, s_pub, commitment),
        )
        self._phase = ClientPhase.REVEAL_SEED if self._sparse else ClientPhase.SHARE_KEYS
        return self._reply(
            AdvertiseKeysReply,
            c_public=c_pub,
            s_public=s_pub,
            seed_commitment=commitment,
            signature=signature,
        )

    def _on_reveal_seed(self, msg: RevealSeedRequest) -> bytes:
        ids = msg.committed
        if not set(ids) <= set(self._participants):
            raise ProtocolAbort("seed commitments from nodes outside the participant list")
        own = _column(ids, msg.commitments, COMMITMENT_BYTES).get(self.node_id)
        if own is None or not hmac.compare_digest(own, self._own_commitment()):
            raise ProtocolAbort("server omitted or altered this node's seed commitment")
        self._require_quorum(len(ids), "advertise keys")
        self._u1_digest = commitment_digest(self._param_context, ids, msg.commitments)
        self._phase = ClientPhase.SHARE_KEYS
        return self._reply(RevealSeedReply, contribution=self._contribution)

    def _on_share_keys(self, msg: ShareKeysRequest) -> bytes:
        committed: dict[int, bytes] = {}
        if self._sparse:
            committed = self._derive_graph(msg.revealed, msg.reveals)
        elif msg.revealed:
            raise ProtocolAbort("graph-seed reveals in a complete-graph round")
        ids = [a.node_id for a in msg.adverts]
        if not set(ids) <= self._holders:
            raise ProtocolAbort("neighbour set does not match the round graph")
        if self.node_id not in ids:
            raise ProtocolAbort("own key advertisement missing from the neighbour list")
        self._require_quorum(len(ids), "advertise keys")
        c_pub, s_pub = public_bytes(self._c_key), public_bytes(self._s_key)
        own = (c_pub, s_pub, self._own_commitment())
        seen: set[bytes] = set()
        for advert in msg.adverts:
            v = advert.node_id
            if self._sparse and (v not in committed or advert.seed_commitment != committed[v]):
                raise ProtocolAbort(
                    f"key advertisement of node {v} is not the one it committed in U1"
                )
            if (
                v == self.node_id
                and (advert.c_public, advert.s_public, advert.seed_commitment) != own
            ):
                raise ProtocolAbort("server substituted this node's own public keys")
            payload = advertise_payload(
                self._param_context, v, advert.c_public, advert.s_public, advert.seed_commitment
            )
            if not verify(self._roster[v], advert.signature, payload):
                raise ProtocolAbort(f"bad key-advertisement signature of node {v}")
            if advert.c_public in seen or advert.s_public in seen:
                raise ProtocolAbort("duplicate public keys among neighbours")
            seen.update((advert.c_public, advert.s_public))
        self._adverts = {a.node_id: a for a in msg.adverts}

        self._self_seed = self._random_bytes(SEED_BYTES)
        points = [shamir.point_of(v) for v in ids]
        b_shares = shamir.split(
            shamir.secret_to_int(self._self_seed), points, self._t, self._random_bytes
        )
        sk_secret = shamir.secret_to_int(self._s_key.private_bytes_raw())
        sk_shares = shamir.split(sk_secret, points, self._t, self._random_bytes)
        own_point = shamir.point_of(self.node_id)
        self._b_shares = {self.node_id: b_shares[own_point]}
        self._sk_shares = {self.node_id: sk_shares[own_point]}
        sealed = []
        for v in ids:
            if v == self.node_id:
                continue
            x = shamir.point_of(v)
            plaintext = (
                u64(self.node_id)
                + u64(v)
                + shamir.encode_share(b_shares[x])
                + shamir.encode_share(sk_shares[x])
            )
            key = self._share_key(v)
            ad = share_associated_data(self._context, self.node_id, v)
            sealed.append(SealedShare(v, seal(key, self._random_bytes(NONCE_BYTES), plaintext, ad)))
        self._phase = ClientPhase.MASKED_INPUT
        return self._reply(ShareKeysReply, shares=tuple(sealed))

    def _open_shares(
        self, msg: MaskedInputRequest
    ) -> tuple[dict[int, Any], dict[int, Any], frozenset[int]]:
        """The relayed shares of ``msg`` opened and checked: (b shares, sk shares, U2)."""
        senders = [s.peer_id for s in msg.shares]
        if not set(senders) <= set(self._adverts) - {self.node_id}:
            raise ProtocolAbort("share senders are not neighbours that advertised keys")
        self._require_quorum(len(senders) + 1, "share keys")
        b_shares, sk_shares = {}, {}
        for item in msg.shares:
            v = item.peer_id
            ad = share_associated_data(self._context, v, self.node_id)
            plaintext = open_sealed(self._share_key(v), item.ciphertext, ad)
            if len(plaintext) != 16 + 2 * shamir.SHARE_BYTES:
                raise ProtocolAbort("relayed share has the wrong length")
            src, dst = struct.unpack(">QQ", plaintext[:16])
            if (src, dst) != (v, self.node_id):
                raise ProtocolAbort("relayed share names the wrong sender or receiver")
            w = shamir.SHARE_BYTES
            b_shares[v] = shamir.decode_share(plaintext[16 : 16 + w])
            sk_shares[v] = shamir.decode_share(plaintext[16 + w :])
        return b_shares, sk_shares, frozenset(senders) | {self.node_id}

    def _on_masked_input(self, msg: MaskedInputRequest, vector: np.ndarray) -> bytes:
        b_shares, sk_shares, self._u2 = self._open_shares(msg)
        self._b_shares.update(b_shares)
        self._sk_shares.update(sk_shares)

        bits = self._policy.bits
        y = vector.astype(ring_dtype(bits), copy=True)
        masks = [(self._self_seed, 1)]
        for v in sorted(self._u2 - {self.node_id}):
            seed = pair_key(
                self._s_key,
                self._adverts[v].s_public,
                context=self._context,
                purpose=PURPOSE_PAIRWISE_MASK,
                a=self.node_id,
                b=v,
            )
            masks.append((seed, 1 if self.node_id < v else -1))
        apply_masks(y, masks, bits)
        self._phase = ClientPhase.CONSISTENCY_CHECK
        # little-endian words, viewed (not copied) until the reply is written out once
        y.flags.writeable = False
        wire = y.astype(y.dtype.newbyteorder("<"), copy=False).data.cast("B")
        return self._reply(MaskedInputReply, bits=bits, vector=wire)

    def _on_consistency_check(self, msg: ConsistencyRequest) -> bytes:
        u3 = frozenset(msg.survivors)
        if self.node_id not in u3:
            raise ProtocolAbort("survivor list omits this node")
        if not u3 <= set(self._participants):
            raise ProtocolAbort("survivor list names non-participants")
        local = u3 & self._holders
        if not local <= self._u2:
            raise ProtocolAbort("inconsistent lists: a survivor never shared keys with this node")
        self._require_quorum(len(local), "masked input")
        if len(u3) < self._policy.min_survivors:
            raise ProtocolAbort(
                f"only {len(u3)} masked inputs survived; the distributed noise was sized for at "
                f"least {self._policy.min_survivors}: refusing to help unmask"
            )
        self._survivors = msg.survivors
        signature = sign(self._identity, consistency_payload(self._context, msg.survivors))
        self._phase = ClientPhase.UNMASK
        return self._reply(ConsistencyReply, signature=signature)

    def _on_unmask(self, msg: UnmaskRequest) -> bytes:
        u3 = frozenset(self._survivors)
        alive, dropped = frozenset(msg.alive), frozenset(msg.dropped)
        if alive & dropped:
            raise ProtocolAbort("a node is listed as both dropped and alive")
        signers = [s.node_id for s in msg.signatures]
        if not set(signers) <= u3 & self._holders:
            raise ProtocolAbort(
                "consistency signatures from nodes outside the survivor neighbourhood"
            )
        self._require_quorum(len(signers), "consistency check")
        payload = consistency_payload(self._context, self._survivors)
        for item in msg.signatures:
            if not verify(self._roster[item.node_id], item.signature, payload):
                raise ProtocolAbort(f"bad consistency signature of node {item.node_id}")
        if alive != self._u2 & u3 or dropped != self._u2 - u3:
            raise ProtocolAbort(
                "inconsistent lists: alive/dropped differ from the signed survivors"
            )
        b = tuple(RevealedShare(v, shamir.encode_share(self._b_shares[v])) for v in sorted(alive))
        sk = tuple(
            RevealedShare(v, shamir.encode_share(self._sk_shares[v])) for v in sorted(dropped)
        )
        self._phase = ClientPhase.DONE
        self._reset_secrets()
        return self._reply(UnmaskReply, self_mask_shares=b, key_shares=sk)

    _HANDLERS: dict[ClientPhase, Callable[[SecAggClient, Any], bytes]] = {
        ClientPhase.ADVERTISE_KEYS: _on_advertise_keys,
        ClientPhase.REVEAL_SEED: _on_reveal_seed,
        ClientPhase.SHARE_KEYS: _on_share_keys,
        ClientPhase.CONSISTENCY_CHECK: _on_consistency_check,
        ClientPhase.UNMASK: _on_unmask,
    }

    # -- round parameters and graph -----------------------------------------------------------

    @property
    def _sparse(self) -> bool:
        """True for a SecAgg+ round (fewer neighbours than other participants)."""
        n = len(self._participants)
        return n > 0 and effective_degree(n, self._policy.degree) < n - 1

    def _check_round(self, participants: tuple[int, ...], threshold: int) -> None:
        """The server's participant list and threshold are acceptable under the policy."""
        p = self._policy
        n = len(participants)
        if not max(MIN_PARTICIPANTS, p.min_survivors) <= n <= p.max_participants:
            raise ProtocolAbort(
                f"participant count {n} outside "
                f"[{max(MIN_PARTICIPANTS, p.min_survivors)}, {p.max_participants}]"
            )
        if self.node_id not in participants:
            raise ProtocolAbort("this node is not in the participant list")
        unknown = [v for v in participants if v not in self._roster]
        if unknown:
            raise ProtocolAbort(f"participants not in the roster: {unknown[:5]}")
        m = effective_degree(n, p.degree) + 1
        minimum = threshold_for(n, p.degree, p.threshold_fraction)
        if not minimum <= threshold <= m:
            raise ProtocolAbort(f"threshold {threshold} outside [{minimum}, {m}] for this round")

    def _round_context(self, graph_seed: bytes) -> bytes:
        return round_context(
            session_id=self.session_id,
            round_id=self.round_id,
            threshold=self._t,
            degree=self._policy.degree,
            bits=self._policy.bits,
            vector_length=self._policy.vector_length,
            graph_seed=graph_seed,
            participants=self._participants,
        )

    def _set_graph(self, graph_seed: bytes) -> None:
        """This node's holders and the round context, from the seed (``b""``: complete graph)."""
        if graph_seed:
            neighbours = neighbours_of(
                self._participants, self._policy.degree, graph_seed, self.node_id
            )
            self._holders = neighbours | {self.node_id}
        else:
            self._holders = frozenset(self._participants)
        self._graph_seed = graph_seed
        self._context = self._round_context(graph_seed)

    def _derive_graph(self, ids: tuple[int, ...], reveals: bytes) -> dict[int, bytes]:
        """Check that the reveals open exactly the commitments of the U1 this node revealed
        for, then derive the seed and graph; returns ``{node: commitment}`` of U1."""
        ctx = self._param_context
        commitments = b"".join(
            seed_commitment(ctx, v, r) for v, r in _column(ids, reveals, SEED_BYTES).items()
        )
        digest = commitment_digest(ctx, ids, commitments)
        if not hmac.compare_digest(digest, self._u1_digest):
            raise ProtocolAbort(
                "graph-seed reveals do not open exactly the commitments this node was shown "
                "(U1 changed after the reveal, or a reveal does not match its commitment)"
            )
        self._set_graph(derive_graph_seed(ctx, ids, reveals))
        return _column(ids, commitments, COMMITMENT_BYTES)

    def _own_commitment(self) -> bytes:
        return seed_commitment(self._param_context, self.node_id, self._contribution)

    # -- persistence between transport calls -------------------------------------------------
    # A transport may run each phase in a fresh process (Flower's Deployment Engine starts one
    # ClientApp process per message), so the round state must survive as bytes. It holds the
    # round's secrets (X25519 keys, self-mask seed, Shamir shares): keep it where the client's
    # other secrets are (the node's own state), never send it anywhere.

    STATE_VERSION = 2

    def export_state(self) -> bytes:
        """This client's round state as bytes (secret; see the note above). Only primary
        values are stored; contexts and the graph are recomputed by :meth:`restore`."""
        terminal = self._phase in _TERMINAL
        keys = self._c_key is not None and not terminal
        state = {
            "v": self.STATE_VERSION,
            "node_id": self.node_id,
            "session_id": self.session_id.hex(),
            "round_id": self.round_id,
            "phase": self._phase.value,
            "threshold": 0 if terminal else self._t,
            "participants": [] if terminal else list(self._participants),
            "graph_seed": "" if terminal else self._graph_seed.hex(),
            "u1_digest": "" if terminal else self._u1_digest.hex(),
            "contribution": self._contribution.hex(),
            "c_key": self._c_key.private_bytes_raw().hex() if keys else "",
            "s_key": self._s_key.private_bytes_raw().hex() if keys else "",
            "adverts": []
            if terminal
            else [
                [
                    a.node_id,
                    a.c_public.hex(),
                    a.s_public.hex(),
                    a.seed_commitment.hex(),
                    a.signature.hex(),
                ]
                for _, a in sorted(self._adverts.items())
            ],
            "self_seed": self._self_seed.hex(),
            "b_shares": [
                [v, shamir.encode_share(s).hex()] for v, s in sorted(self._b_shares.items())
            ],
            "sk_shares": [
                [v, shamir.encode_share(s).hex()] for v, s in sorted(self._sk_shares.items())
            ],
            "u2": [] if terminal else sorted(self._u2),
            "survivors": [] if terminal else list(self._survivors),
        }
        return json.dumps(state, sort_keys=True).encode("ascii")

    @classmethod
    def restore(
        cls,
        state: bytes,
        *,
        identity_key: Ed25519PrivateKey,
        roster: Mapping[int, Ed25519PublicKey | bytes],
        policy: ClientPolicy,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> SecAggClient:
        """Rebuild a client from :meth:`export_state`; identity, roster and policy come from
        the caller (never from stored state), so a tampered state cannot change them.

        The whole state is validated here, against the same rules the phase handlers
        enforce: a state that no honest run of this client could have exported in its phase
        (a share or advert missing, a list unsorted, a key of the wrong size...) is refused, so
        :meth:`handle` never meets an inconsistent state.

        Raises:
            ProtocolAbort: the state is unreadable, belongs to another node, or is
                inconsistent (the caller should discard it; nothing secret was sent).
            ConfigError: a bad local argument (identity key, roster, policy).
        """
        keys = load_roster(roster)  # local arguments first: their errors are ConfigError
        if not isinstance(identity_key, Ed25519PrivateKey):
            raise ConfigError(f"identity_key must be an Ed25519PrivateKey. Found {identity_key!r}.")
        if not isinstance(policy, ClientPolicy):
            raise ConfigError(f"policy must be a ClientPolicy. Found {policy!r}.")
        if not isinstance(state, bytes | bytearray | memoryview):
            raise ProtocolAbort(
                f"stored secure-aggregation state must be bytes. Found {type(state).__name__}."
            )
        try:
            data = json.loads(bytes(state).decode("ascii"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise ProtocolAbort(
                f"stored secure-aggregation state is not valid JSON ({type(exc).__name__})"
            ) from None
        fields = _StateFields(data)
        node_id = fields.integer("node_id", 0, (1 << 64) - 1)
        own_key = identity_key.public_key().public_bytes_raw()
        if node_id not in keys or keys[node_id].public_bytes_raw() != own_key:
            raise ProtocolAbort(
                f"stored secure-aggregation state is for node {node_id}, not this identity"
            )
        client = cls(
            node_id=node_id,
            identity_key=identity_key,
            roster=keys,
            policy=policy,
            session_id=fields.hexbytes("session_id", (SESSION_ID_BYTES,)),
            round_id=fields.integer("round_id", 0, (1 << 64) - 1),
            random_bytes=random_bytes,
        )
        try:
            client._load(fields)
            client._check_state()
        except ProtocolAbort:
            raise
        except Exception as exc:  # fail closed; the tests assert this is unreachable
            raise ProtocolAbort(
                f"internal error while restoring secure-aggregation state ({type(exc).__name__})"
            ) from exc
        return client

    def _load(self, f: _StateFields) -> None:
        """Set every field from a parsed state (types and sizes checked; consistency next)."""
        try:
            self._phase = ClientPhase(f.get("phase", str))
        except ValueError:
            raise f.bad("phase", "is not a client phase") from None
        self._t = f.integer("threshold", 0, MAX_NODES)
        self._participants = f.ids("participants")
        self._graph_seed = f.hexbytes("graph_seed", (0, SEED_BYTES))
        self._u1_digest = f.hexbytes("u1_digest", (0, 32))  # SHA-256
        self._contribution = f.hexbytes("contribution", (0, SEED_BYTES))
        c_key = f.hexbytes("c_key", (0, KEY_BYTES))
        s_key = f.hexbytes("s_key", (0, KEY_BYTES))
        if bool(c_key) != bool(s_key):
            raise f.bad("c_key", "and s_key must both be present or both empty")
        self._c_key = x25519_from_seed(c_key) if c_key else None  # type: ignore[assignment]
        self._s_key = x25519_from_seed(s_key) if s_key else None  # type: ignore[assignment]
        self._adverts = f.adverts("adverts")
        self._self_seed = f.hexbytes("self_seed", (0, SEED_BYTES))
        self._b_shares = f.shares("b_shares")
        self._sk_shares = f.shares("sk_shares")
        self._u2 = frozenset(f.ids("u2"))
        self._survivors = f.ids("survivors")
        f.check_no_extra_keys()

    def _check_state(self) -> None:
        """Recompute the derived fields (contexts, holders) of a restored state, and refuse it
        unless an honest run could have exported it in its phase."""
        phase = self._phase
        # How far the round got: the index of the phase whose request comes next (0 before
        # the first request); terminal phases keep no round state at all.
        level = 0 if phase in _TERMINAL else _ORDER.index(phase)
        started = level >= 1

        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ProtocolAbort(
                    f"stored secure-aggregation state is inconsistent ({phase.value}): {what}"
                )

        if started:
            try:
                self._check_round(self._participants, self._t)
            except ProtocolAbort as exc:
                need(False, str(exc))
            self._param_context = self._round_context(b"")
        else:
            need(self._t == 0 and not self._participants, "round parameters before the round")
        sparse = self._sparse
        need(phase is not ClientPhase.REVEAL_SEED or sparse, "reveal-seed phase without a graph")
        need((self._c_key is not None) == started, "mask/encryption keys present iff started")
        need(bool(self._contribution) == started, "seed contribution present iff started")
        need(bool(self._u1_digest) == (sparse and level >= 2), "U1 digest iff revealed")
        need(bool(self._graph_seed) == (sparse and level >= 3), "graph seed iff derived")
        if started and (not sparse or level >= 3):
            self._set_graph(self._graph_seed)

        has_adverts = level >= 3
        need(bool(self._adverts) == has_adverts, "neighbour adverts iff keys were shared")
        need(bool(self._self_seed) == has_adverts, "self-mask seed iff keys were shared")
        if has_adverts:
            need(set(self._adverts) <= self._holders, "an advert from outside the neighbourhood")
            need(len(self._adverts) >= self._t, "fewer adverts than the threshold")
            mine = self._adverts.get(self.node_id)
            need(
                mine is not None
                and (mine.c_public, mine.s_public, mine.seed_commitment)
                == (public_bytes(self._c_key), public_bytes(self._s_key), self._own_commitment()),
                "own advert missing or not this node's keys",
            )
        if level >= 4:
            holders_of_shares: frozenset[int] = self._u2
            need(self.node_id in self._u2, "U2 without this node")
            need(self._u2 <= set(self._adverts), "U2 member without an advert")
            need(len(self._u2) >= self._t, "U2 smaller than the threshold")
        else:
            need(not self._u2, "U2 before masking")
            holders_of_shares = frozenset({self.node_id}) if has_adverts else frozenset()
        need(set(self._b_shares) == holders_of_shares, "self-mask shares do not match U2")
        need(set(self._sk_shares) == holders_of_shares, "mask-key shares do not match U2")
        if level >= 5:
            u3 = frozenset(self._survivors)
            need(self.node_id in u3, "survivor list without this node")
            need(u3 <= set(self._participants), "survivor outside the participants")
            local = u3 & self._holders
            need(local <= self._u2 and len(local) >= self._t, "survivor list not acceptable")
        else:
            need(not self._survivors, "survivor list before the consistency check")

    # -- helpers ------------------------------------------------------------------------------

    def _reply(self, cls: type, **body: object) -> bytes:
        msg = cls(session_id=self.session_id, round_id=self.round_id, node_id=self.node_id, **body)
        return msg.to_bytes()  # type: ignore[no-any-return]

    def _require_quorum(self, count: int, phase: str) -> None:
        if count < self._t:
            raise ProtocolAbort(f"too few survivors after {phase}: {count} < threshold {self._t}")

    def _share_key(self, peer: int) -> bytes:
        return pair_key(
            self._c_key,
            self._adverts[peer].c_public,
            context=self._context,
            purpose=PURPOSE_SHARE_ENCRYPTION,
            a=self.node_id,
            b=peer,
        )

    def _check_input(self, vector: np.ndarray | None) -> np.ndarray:
        dtype = ring_dtype(self._policy.bits)
        d = self._policy.vector_length
        if not isinstance(vector, np.ndarray) or vector.dtype != dtype or vector.shape != (d,):
            found = (
                f"{vector.dtype} {vector.shape}" if isinstance(vector, np.ndarray) else repr(vector)
            )
            raise ConfigError(
                f"input_vector must be a {np.dtype(dtype).name} array of shape ({d},) "
                f"(see securefvpa.secagg.quantization.encode). Found {found}."
            )
        return vector

    def _abort(self) -> None:
        self._phase = ClientPhase.ABORTED
        self._reset_secrets()

    def _reset_secrets(self) -> None:
        self._c_key = None  # type: ignore[assignment]
        self._s_key = None  # type: ignore[assignment]
        self._contribution = b""
        self._self_seed = b""
        self._b_shares = {}
        self._sk_shares = {}


def _column(ids: tuple[int, ...], values: bytes, size: int) -> dict[int, bytes]:
    """``{id: value}`` of an id list and its column of fixed-size values (shape pre-checked)."""
    return {v: values[size * i : size * (i + 1)] for i, v in enumerate(ids)}


class _StateFields:
    """Typed access to a parsed state object; every failure is a ProtocolAbort naming the key."""

    _KEYS = frozenset(
        {
            "v",
            "node_id",
            "session_id",
            "round_id",
            "phase",
            "threshold",
            "participants",
            "graph_seed",
            "u1_digest",
            "contribution",
            "c_key",
            "s_key",
            "adverts",
            "self_seed",
            "b_shares",
            "sk_shares",
            "u2",
            "survivors",
        }
    )

    def __init__(self, data: object) -> None:
        if not isinstance(data, dict):
            raise ProtocolAbort(
                f"stored secure-aggregation state must be a JSON object. Found {type(data).__name__}."
            )
        self._d = data
        version = data.get("v")
        if not _is_int(version) or version != SecAggClient.STATE_VERSION:
            raise self.bad("v", f"must be {SecAggClient.STATE_VERSION}")

    def bad(self, key: str, what: str) -> ProtocolAbort:
        return ProtocolAbort(f"stored secure-aggregation state is unreadable: field {key} {what}")

    def check_no_extra_keys(self) -> None:
        extra = set(self._d) - self._KEYS
        if extra:
            raise self.bad(sorted(map(str, extra))[0], "is not a state field")

    def get(self, key: str, kind: type) -> Any:
        if key not in self._d:
            raise self.bad(key, "is missing")
        value = self._d[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise self.bad(key, f"must be a {kind.__name__}")
        return value

    def integer(self, key: str, lo: int, hi: int) -> int:
        return self.check_int(key, self.get(key, int), lo, hi)

    def check_int(self, key: str, value: object, lo: int, hi: int) -> int:
        if not _is_int(value) or not lo <= value <= hi:  # type: ignore[operator]
            raise self.bad(key, f"must be an int in [{lo}, {hi}]")
        return value  # type: ignore[return-value]

    def hexbytes(self, key: str, sizes: tuple[int, ...]) -> bytes:
        return self.check_hex(key, self.get(key, str), sizes)

    def check_hex(self, key: str, value: object, sizes: tuple[int, ...]) -> bytes:
        if not isinstance(value, str) or len(value) not in tuple(2 * s for s in sizes):
            raise self.bad(key, f"must be hex of {' or '.join(map(str, sizes))} bytes")
        try:
            return bytes.fromhex(value)
        except ValueError:
            raise self.bad(key, "is not hex") from None

    def ids(self, key: str) -> tuple[int, ...]:
        values = self.get(key, list)
        if len(values) > MAX_NODES:
            raise self.bad(key, f"has more than {MAX_NODES} ids")
        prev = -1
        for v in values:
            self.check_int(key, v, 0, (1 << 64) - 1)
            if v <= prev:
                raise self.bad(key, "must be strictly increasing node ids")
            prev = v
        return tuple(values)

    def _rows(self, key: str, width: int) -> list[list[Any]]:
        rows = self.get(key, list)
        prev = -1
        for row in rows:
            if not isinstance(row, list) or len(row) != width:
                raise self.bad(key, f"must hold [node, ...] rows of {width} items")
            self.check_int(key, row[0], 0, (1 << 64) - 1)
            if row[0] <= prev:
                raise self.bad(key, "must be strictly increasing by node id")
            prev = row[0]
        return rows

    def shares(self, key: str) -> dict[int, int]:
        out = {}
        for node, value in self._rows(key, 2):
            out[node] = shamir.decode_share(self.check_hex(key, value, (shamir.SHARE_BYTES,)))
        return out

    def adverts(self, key: str) -> dict[int, KeyAdvert]:
        out = {}
        for node, c_pub, s_pub, commitment, signature in self._rows(key, 5):
            out[node] = KeyAdvert(
                node,
                self.check_hex(key, c_pub, (KEY_BYTES,)),
                self.check_hex(key, s_pub, (KEY_BYTES,)),
                self.check_hex(key, commitment, (COMMITMENT_BYTES,)),
                self.check_hex(key, signature, (SIGNATURE_BYTES,)),
            )
        return out
