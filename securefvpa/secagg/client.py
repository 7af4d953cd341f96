"""Client state machine of secure aggregation (Bonawitz et al. 2017, Fig. 4; SecAgg+ graph).

One :class:`SecAggClient` object runs one round: ``reply = client.handle(request)`` for each of
the five server requests, passing the encoded input vector with the masked-input request. Every
check that fails raises :class:`~securefvpa.errors.ProtocolAbort` (the client then refuses all
further messages and has sent nothing secret); local misuse (wrong input dtype or length) raises
:class:`~securefvpa.errors.ConfigError` and leaves the state unchanged.

Notation (paper): ``H(u)`` = u's neighbours in the round graph plus u itself (the holders of
u's shares); ``U1 ⊇ U2 ⊇ U3 ⊇ U4`` = nodes that advertised keys, shared keys, sent a masked
input, signed the survivor list. The client only ever sees the intersections with ``H(u)``.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from securefvpa.errors import ConfigError, ProtocolAbort
from securefvpa.secagg import shamir
from securefvpa.secagg.graph import MIN_PARTICIPANTS, neighbour_graph, threshold_for
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
    SealedShare,
    ShareKeysReply,
    ShareKeysRequest,
    UnmaskReply,
    UnmaskRequest,
    parse,
)
from securefvpa.secagg.primitives import (
    NONCE_BYTES,
    PURPOSE_PAIRWISE_MASK,
    PURPOSE_SHARE_ENCRYPTION,
    SEED_BYTES,
    advertise_payload,
    apply_masks,
    consistency_payload,
    open_sealed,
    pair_key,
    public_bytes,
    ring_dtype,
    round_context,
    seal,
    share_associated_data,
    sign,
    u64,
    verify,
    x25519_from_seed,
)


class ClientPhase(Enum):
    """What the client expects next."""

    ADVERTISE_KEYS = "advertise-keys"
    SHARE_KEYS = "share-keys"
    MASKED_INPUT = "masked-input"
    CONSISTENCY_CHECK = "consistency-check"
    UNMASK = "unmask"
    DONE = "done"
    ABORTED = "aborted"


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

    def __post_init__(self) -> None:
        if (
            isinstance(self.vector_length, bool)
            or not isinstance(self.vector_length, int)
            or (self.vector_length < 1)
        ):
            raise ConfigError(f"vector_length must be an int >= 1. Found {self.vector_length!r}.")
        ring_dtype(self.bits)
        if not 0.5 < self.threshold_fraction <= 1.0:
            raise ConfigError(
                f"secagg.threshold must be in (0.5, 1]. Found {self.threshold_fraction!r}."
            )
        if self.degree < 0 or self.degree % 2:
            raise ConfigError(
                f"secagg.degree must be 0 or an even number >= 2. Found {self.degree}."
            )
        if not MIN_PARTICIPANTS <= self.max_participants <= MAX_NODES:
            raise ConfigError(
                f"max_participants must be in [{MIN_PARTICIPANTS}, {MAX_NODES}]. "
                f"Found {self.max_participants}."
            )


def _as_public(key: Ed25519PublicKey | bytes) -> Ed25519PublicKey:
    if isinstance(key, Ed25519PublicKey):
        return key
    if isinstance(key, bytes) and len(key) == 32:
        return Ed25519PublicKey.from_public_bytes(key)
    raise ConfigError(f"roster entries must be Ed25519 public keys or 32 raw bytes. Found {key!r}.")


def load_roster(roster: Mapping[int, Ed25519PublicKey | bytes]) -> dict[int, Ed25519PublicKey]:
    """``{node_id: Ed25519 public key}`` from keys or raw 32-byte encodings."""
    return {int(node): _as_public(key) for node, key in roster.items()}


class SecAggClient:
    """One client, one round. Drive it with :meth:`handle`.

    Args:
        node_id: this client's id (the transport's authenticated node id).
        identity_key: the client's long-term Ed25519 signing key.
        roster: ``{node_id: Ed25519 public key}`` of every client that may take part,
            distributed out of band (Sybil protection rests on it).
        policy: the round parameters this client accepts.
        session_id: 32-byte id of the federation session (e.g. SHA-256 of the run id).
        round_id: the round number; messages from another session or round are refused.
        random_bytes: CSPRNG, ``os.urandom`` in production; injectable for tests.
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
        if not 0 <= round_id < 1 << 64:
            raise ConfigError(f"round_id must be in [0, 2**64). Found {round_id}.")
        self._roster = load_roster(roster)
        if node_id not in self._roster:
            raise ConfigError(f"node_id {node_id} is not in the roster.")
        if self._roster[node_id].public_bytes_raw() != identity_key.public_key().public_bytes_raw():
            raise ConfigError(f"identity_key does not match the roster entry of node {node_id}.")
        self.node_id = node_id
        self.session_id = session_id
        self.round_id = round_id
        self._identity = identity_key
        self._policy = policy
        self._random_bytes = random_bytes
        self._phase = ClientPhase.ADVERTISE_KEYS
        self._b_shares: dict[int, int] = {}
        self._sk_shares: dict[int, int] = {}
        self._reset_secrets()

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
            ProtocolAbort: the request failed a check; the client has aborted for good.
            ConfigError: ``input_vector`` is missing or has the wrong dtype/length.
        """
        if self._phase in (ClientPhase.DONE, ClientPhase.ABORTED):
            raise ProtocolAbort(f"client {self.node_id} is {self._phase.value}; message refused")
        try:
            msg = parse(request, expected=self._EXPECTED[self._phase])
            if msg.session_id != self.session_id or msg.round_id != self.round_id:
                raise ProtocolAbort("message belongs to another session or round (replay?)")
            if msg.node_id != self.node_id:
                raise ProtocolAbort("message is addressed to another node")
            handler = getattr(self, f"_on_{self._phase.name.lower()}")
            if self._phase is ClientPhase.MASKED_INPUT:
                vector = self._check_input(input_vector)
                reply = handler(msg, vector)
            else:
                reply = handler(msg)
        except ProtocolAbort:
            self._phase = ClientPhase.ABORTED
            self._reset_secrets()
            raise
        return reply

    _EXPECTED = {
        ClientPhase.ADVERTISE_KEYS: AdvertiseKeysRequest,
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
        n = len(msg.participants)
        if not MIN_PARTICIPANTS <= n <= p.max_participants:
            raise ProtocolAbort(
                f"participant count {n} outside [{MIN_PARTICIPANTS}, {p.max_participants}]"
            )
        if self.node_id not in msg.participants:
            raise ProtocolAbort("this node is not in the participant list")
        unknown = [v for v in msg.participants if v not in self._roster]
        if unknown:
            raise ProtocolAbort(f"participants not in the roster: {unknown[:5]}")
        graph = neighbour_graph(msg.participants, msg.degree, msg.graph_seed)
        holders = graph[self.node_id] | {self.node_id}
        minimum = threshold_for(n, msg.degree, p.threshold_fraction)
        if not minimum <= msg.threshold <= len(holders):
            raise ProtocolAbort(
                f"threshold {msg.threshold} outside [{minimum}, {len(holders)}] for this round"
            )
        self._t = msg.threshold
        self._holders = frozenset(holders)
        self._participants = frozenset(msg.participants)
        self._context = round_context(
            session_id=self.session_id,
            round_id=self.round_id,
            threshold=msg.threshold,
            degree=msg.degree,
            bits=msg.bits,
            vector_length=msg.vector_length,
            graph_seed=msg.graph_seed,
            participants=msg.participants,
        )
        self._c_key = x25519_from_seed(self._random_bytes(32))
        self._s_key = x25519_from_seed(self._random_bytes(32))
        c_pub, s_pub = public_bytes(self._c_key), public_bytes(self._s_key)
        signature = sign(
            self._identity, advertise_payload(self._context, self.node_id, c_pub, s_pub)
        )
        self._phase = ClientPhase.SHARE_KEYS
        return self._reply(AdvertiseKeysReply, c_public=c_pub, s_public=s_pub, signature=signature)

    def _on_share_keys(self, msg: ShareKeysRequest) -> bytes:
        ids = [a.node_id for a in msg.adverts]
        if not set(ids) <= self._holders:
            raise ProtocolAbort("neighbour set does not match the round graph")
        if self.node_id not in ids:
            raise ProtocolAbort("own key advertisement missing from the neighbour list")
        self._require_quorum(len(ids), "advertise keys")
        c_pub, s_pub = public_bytes(self._c_key), public_bytes(self._s_key)
        seen: set[bytes] = set()
        for advert in msg.adverts:
            if advert.node_id == self.node_id and (advert.c_public, advert.s_public) != (
                c_pub,
                s_pub,
            ):
                raise ProtocolAbort("server substituted this node's own public keys")
            payload = advertise_payload(
                self._context, advert.node_id, advert.c_public, advert.s_public
            )
            if not verify(self._roster[advert.node_id], advert.signature, payload):
                raise ProtocolAbort(f"bad key-advertisement signature of node {advert.node_id}")
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
        own = shamir.point_of(self.node_id)
        self._b_shares = {self.node_id: b_shares[own]}
        self._sk_shares = {self.node_id: sk_shares[own]}
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

    def _on_masked_input(self, msg: MaskedInputRequest, vector: np.ndarray) -> bytes:
        senders = [s.peer_id for s in msg.shares]
        if not set(senders) <= set(self._adverts) - {self.node_id}:
            raise ProtocolAbort("share senders are not neighbours that advertised keys")
        self._require_quorum(len(senders) + 1, "share keys")
        for item in msg.shares:
            v = item.peer_id
            ad = share_associated_data(self._context, v, self.node_id)
            plaintext = open_sealed(self._share_key(v), item.ciphertext, ad)
            src, dst = struct.unpack(">QQ", plaintext[:16])
            if (src, dst) != (v, self.node_id):
                raise ProtocolAbort("relayed share names the wrong sender or receiver")
            w = shamir.SHARE_BYTES
            self._b_shares[v] = shamir.decode_share(plaintext[16 : 16 + w])
            self._sk_shares[v] = shamir.decode_share(plaintext[16 + w :])
        self._u2 = frozenset(senders) | {self.node_id}

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
        wire = y.astype(y.dtype.newbyteorder("<"), copy=False).tobytes()
        return self._reply(MaskedInputReply, bits=bits, vector=wire)

    def _on_consistency_check(self, msg: ConsistencyRequest) -> bytes:
        u3 = frozenset(msg.survivors)
        if self.node_id not in u3:
            raise ProtocolAbort("survivor list omits this node")
        if not u3 <= self._participants:
            raise ProtocolAbort("survivor list names non-participants")
        local = u3 & self._holders
        if not local <= self._u2:
            raise ProtocolAbort("inconsistent lists: a survivor never shared keys with this node")
        self._require_quorum(len(local), "masked input")
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

    # -- persistence between transport calls -------------------------------------------------
    # A transport may run each phase in a fresh process (Flower's Deployment Engine starts one
    # ClientApp process per message), so the round state must survive as bytes. It holds the
    # round's secrets (X25519 keys, self-mask seed, Shamir shares): keep it where the client's
    # other secrets are (the node's own state), never send it anywhere.

    def export_state(self) -> bytes:
        """This client's round state as bytes (secret; see the note above)."""
        adverts = getattr(self, "_adverts", {})
        state = {
            "v": 1,
            "node_id": self.node_id,
            "session_id": self.session_id.hex(),
            "round_id": self.round_id,
            "phase": self._phase.value,
            "t": getattr(self, "_t", 0),
            "holders": sorted(getattr(self, "_holders", ())),
            "participants": sorted(getattr(self, "_participants", ())),
            "context": getattr(self, "_context", b"").hex(),
            "c_key": self._c_key.private_bytes_raw().hex() if self._c_key is not None else "",
            "s_key": self._s_key.private_bytes_raw().hex() if self._s_key is not None else "",
            "adverts": [
                [a.node_id, a.c_public.hex(), a.s_public.hex(), a.signature.hex()]
                for a in adverts.values()
            ],
            "self_seed": self._self_seed.hex(),
            "b_shares": {str(k): hex(v) for k, v in self._b_shares.items()},
            "sk_shares": {str(k): hex(v) for k, v in self._sk_shares.items()},
            "u2": sorted(getattr(self, "_u2", ())),
            "survivors": list(getattr(self, "_survivors", ())),
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
        the caller (never from stored state), so a tampered state cannot change them."""
        try:
            d = json.loads(state.decode("ascii"))
            if d.get("v") != 1:
                raise ValueError(f"state version {d.get('v')!r}")
            client = cls(
                node_id=int(d["node_id"]),
                identity_key=identity_key,
                roster=roster,
                policy=policy,
                session_id=bytes.fromhex(d["session_id"]),
                round_id=int(d["round_id"]),
                random_bytes=random_bytes,
            )
            client._phase = ClientPhase(d["phase"])
            if client._phase is not ClientPhase.ADVERTISE_KEYS:
                client._t = int(d["t"])
                client._holders = frozenset(int(x) for x in d["holders"])
                client._participants = frozenset(int(x) for x in d["participants"])
                client._context = bytes.fromhex(d["context"])
            if d["c_key"]:
                client._c_key = x25519_from_seed(bytes.fromhex(d["c_key"]))
                client._s_key = x25519_from_seed(bytes.fromhex(d["s_key"]))
            client._adverts = {
                int(a[0]): KeyAdvert(
                    int(a[0]), bytes.fromhex(a[1]), bytes.fromhex(a[2]), bytes.fromhex(a[3])
                )
                for a in d["adverts"]
            }
            client._self_seed = bytes.fromhex(d["self_seed"])
            client._b_shares = {int(k): int(v, 16) for k, v in d["b_shares"].items()}
            client._sk_shares = {int(k): int(v, 16) for k, v in d["sk_shares"].items()}
            client._u2 = frozenset(int(x) for x in d["u2"])
            client._survivors = tuple(int(x) for x in d["survivors"])
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise ProtocolAbort(f"stored secure-aggregation state is unreadable: {exc}") from None
        return client

    # -- helpers ------------------------------------------------------------------------------

    def _reply(self, cls: type, **body: object) -> bytes:
        msg = cls(session_id=self.session_id, round_id=self.round_id, node_id=self.node_id, **body)
        return msg.to_bytes()

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

    def _reset_secrets(self) -> None:
        self._c_key = None  # type: ignore[assignment]
        self._s_key = None  # type: ignore[assignment]
        self._self_seed = b""
        self._b_shares = {}
        self._sk_shares = {}
