"""Wire messages of the secure-aggregation protocol: frozen dataclasses with explicit bytes.

Every message is ``header || body``. Header (54 bytes, integers big-endian)::

    magic "SFSA" | version u8 (=2) | type tag u8 | session_id 32 bytes | round u64 | node_id u64

Version 2 added the graph-seed exchange (a seed commitment in the key advertisement, the
reveal-seed request/reply, the reveals in the share-keys request) and dropped the server-chosen
``graph_seed`` field; version-1 bytes are refused.

``node_id`` is the recipient of a server request and the sender of a client reply. Bodies are
fixed-width fields and lists ``count u32 || items``; id lists and per-node entries are strictly
increasing by node id (so no duplicates); a masked vector is ``bits u8 || length u64 || data``
(little-endian ring elements).

:func:`parse` is strict: wrong magic, version or tag, a truncated field, a count larger than the
bytes that follow or than :data:`MAX_NODES`, a value out of range, unsorted or duplicate ids and
trailing bytes all raise :class:`MalformedMessage` (a :class:`~securefvpa.errors.ProtocolAbort`)
before anything is allocated from a length field. Constructors run the same checks (an ``int``
field refuses ``32.0``, ``True`` and numpy integers; a bytes field refuses ``str``), so a message
object that exists is well formed and serialises.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, ClassVar, TypeVar

import numpy as np

from securefvpa.errors import ProtocolAbort
from securefvpa.secagg.primitives import (
    COMMITMENT_BYTES,
    KEY_BYTES,
    NONCE_BYTES,
    SEED_BYTES,
    SIGNATURE_BYTES,
    TAG_BYTES,
)
from securefvpa.secagg.shamir import SHARE_BYTES

MAGIC = b"SFSA"
VERSION = 2
SESSION_ID_BYTES = 32
MAX_NODES = 1 << 16
MAX_VECTOR_LENGTH = 1 << 31
HEADER_BYTES = 4 + 1 + 1 + SESSION_ID_BYTES + 8 + 8
SHARE_PLAINTEXT_BYTES = 8 + 8 + 2 * SHARE_BYTES
CIPHERTEXT_BYTES = NONCE_BYTES + SHARE_PLAINTEXT_BYTES + TAG_BYTES
_U64_MAX = (1 << 64) - 1
_U32_MAX = (1 << 32) - 1


class MalformedMessage(ProtocolAbort):
    """Bytes that are not a well-formed protocol message (or a field of the wrong type/size)."""


class MessageType(IntEnum):
    """Type tags; odd = server request, even = client reply, in protocol order."""

    ADVERTISE_KEYS_REQUEST = 1
    ADVERTISE_KEYS_REPLY = 2
    REVEAL_SEED_REQUEST = 3
    REVEAL_SEED_REPLY = 4
    SHARE_KEYS_REQUEST = 5
    SHARE_KEYS_REPLY = 6
    MASKED_INPUT_REQUEST = 7
    MASKED_INPUT_REPLY = 8
    CONSISTENCY_REQUEST = 9
    CONSISTENCY_REPLY = 10
    UNMASK_REQUEST = 11
    UNMASK_REPLY = 12


# ---------------------------------------------------------------------------------------------
# field checks (shared by constructors and the parser)


def _int(name: str, value: Any, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise MalformedMessage(f"field {name} must be an int in [{lo}, {hi}]")


def _bytes(name: str, value: Any, size: int) -> None:
    if not isinstance(value, bytes) or len(value) != size:
        raise MalformedMessage(f"field {name} must be {size} bytes")


def _values(name: str, value: Any, size: int, count: int) -> None:
    """A run of ``count`` fixed-size values (the per-node column of an id list)."""
    if not isinstance(value, bytes) or len(value) != size * count:
        raise MalformedMessage(f"field {name} must be {size} bytes per listed node")


def _bits(value: Any) -> None:
    _int("bits", value, 32, 64)
    if value not in (32, 64):
        raise MalformedMessage("field bits must be 32 or 64")


def _ids(name: str, value: Any) -> None:
    if not isinstance(value, tuple) or len(value) > MAX_NODES:
        raise MalformedMessage(f"field {name} must be a tuple of at most {MAX_NODES} node ids")
    prev = -1
    for v in value:
        _int(name, v, 0, _U64_MAX)
        if v <= prev:
            raise MalformedMessage(f"field {name} must be strictly increasing")
        prev = v


def _entries(name: str, value: Any, kind: type, key: Callable[[Any], int]) -> None:
    if not isinstance(value, tuple) or len(value) > MAX_NODES:
        raise MalformedMessage(f"field {name} must be a tuple of at most {MAX_NODES} entries")
    prev = -1
    for v in value:
        if not isinstance(v, kind):
            raise MalformedMessage(f"field {name} must hold {kind.__name__} entries")
        if key(v) <= prev:
            raise MalformedMessage(f"field {name} must be strictly increasing by node id")
        prev = key(v)


# ---------------------------------------------------------------------------------------------
# reader / writer


class _Reader:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def take_view(self, n: int) -> memoryview:
        """Like :meth:`take` but zero-copy: a read-only view into the (immutable) message bytes,
        for the megabyte-sized masked vector."""
        if n < 0 or n > self.remaining:
            raise MalformedMessage("message is truncated")
        out = memoryview(self._data)[self._pos : self._pos + n]
        self._pos += n
        return out

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    def take(self, n: int) -> bytes:
        if n < 0 or n > self.remaining:
            raise MalformedMessage("message is truncated")
        out = self._data[self._pos : self._pos + n]
        self._pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u32(self) -> int:
        return int(struct.unpack(">I", self.take(4))[0])

    def u64(self) -> int:
        return int(struct.unpack(">Q", self.take(8))[0])

    def count(self, item_bytes: int) -> int:
        n = self.u32()
        if n > MAX_NODES or n * item_bytes > self.remaining:
            raise MalformedMessage("list length field exceeds the message")
        return n

    def ids(self) -> tuple[int, ...]:
        n = self.count(8)
        return tuple(int(v) for v in struct.unpack(f">{n}Q", self.take(8 * n)))

    def end(self) -> None:
        if self.remaining:
            raise MalformedMessage("message has trailing bytes")


def _w_ids(ids: tuple[int, ...]) -> bytes:
    return struct.pack(f">I{len(ids)}Q", len(ids), *ids)


# ---------------------------------------------------------------------------------------------
# list entries


@dataclass(frozen=True)
class KeyAdvert:
    """A client's signed public keys and graph-seed commitment, relayed to its neighbours."""

    node_id: int
    c_public: bytes
    s_public: bytes
    seed_commitment: bytes
    signature: bytes

    SIZE: ClassVar[int] = 8 + 2 * KEY_BYTES + COMMITMENT_BYTES + SIGNATURE_BYTES

    def __post_init__(self) -> None:
        _int("node_id", self.node_id, 0, _U64_MAX)
        _bytes("c_public", self.c_public, KEY_BYTES)
        _bytes("s_public", self.s_public, KEY_BYTES)
        _bytes("seed_commitment", self.seed_commitment, COMMITMENT_BYTES)
        _bytes("signature", self.signature, SIGNATURE_BYTES)

    def to_bytes(self) -> bytes:
        return (
            struct.pack(">Q", self.node_id)
            + self.c_public
            + self.s_public
            + self.seed_commitment
            + self.signature
        )

    @classmethod
    def read(cls, r: _Reader) -> KeyAdvert:
        return cls(
            r.u64(),
            r.take(KEY_BYTES),
            r.take(KEY_BYTES),
            r.take(COMMITMENT_BYTES),
            r.take(SIGNATURE_BYTES),
        )


@dataclass(frozen=True)
class SealedShare:
    """AEAD ciphertext of one pair's shares; ``peer_id`` is the receiver (in a reply) or the
    sender (in a request)."""

    peer_id: int
    ciphertext: bytes

    SIZE: ClassVar[int] = 8 + CIPHERTEXT_BYTES

    def __post_init__(self) -> None:
        _int("peer_id", self.peer_id, 0, _U64_MAX)
        _bytes("ciphertext", self.ciphertext, CIPHERTEXT_BYTES)

    def to_bytes(self) -> bytes:
        return struct.pack(">Q", self.peer_id) + self.ciphertext

    @classmethod
    def read(cls, r: _Reader) -> SealedShare:
        return cls(r.u64(), r.take(CIPHERTEXT_BYTES))


@dataclass(frozen=True)
class NodeSignature:
    """A client's consistency-check signature, relayed to its neighbours."""

    node_id: int
    signature: bytes

    SIZE: ClassVar[int] = 8 + SIGNATURE_BYTES

    def __post_init__(self) -> None:
        _int("node_id", self.node_id, 0, _U64_MAX)
        _bytes("signature", self.signature, SIGNATURE_BYTES)

    def to_bytes(self) -> bytes:
        return struct.pack(">Q", self.node_id) + self.signature

    @classmethod
    def read(cls, r: _Reader) -> NodeSignature:
        return cls(r.u64(), r.take(SIGNATURE_BYTES))


@dataclass(frozen=True)
class RevealedShare:
    """A Shamir share of ``owner_id``'s secret, revealed to the server in the unmask phase."""

    owner_id: int
    share: bytes

    SIZE: ClassVar[int] = 8 + SHARE_BYTES

    def __post_init__(self) -> None:
        _int("owner_id", self.owner_id, 0, _U64_MAX)
        _bytes("share", self.share, SHARE_BYTES)

    def to_bytes(self) -> bytes:
        return struct.pack(">Q", self.owner_id) + self.share

    @classmethod
    def read(cls, r: _Reader) -> RevealedShare:
        return cls(r.u64(), r.take(SHARE_BYTES))


E = TypeVar("E", KeyAdvert, SealedShare, NodeSignature, RevealedShare)


def _w_entries(entries: tuple[Any, ...]) -> bytes:
    return struct.pack(">I", len(entries)) + b"".join(e.to_bytes() for e in entries)


def _r_entries(r: _Reader, kind: type[E]) -> tuple[E, ...]:
    n = r.count(kind.SIZE)
    return tuple(kind.read(r) for _ in range(n))


# ---------------------------------------------------------------------------------------------
# messages


@dataclass(frozen=True)
class _Message:
    session_id: bytes
    round_id: int
    node_id: int

    TAG: ClassVar[MessageType]

    def __post_init__(self) -> None:
        _bytes("session_id", self.session_id, SESSION_ID_BYTES)
        _int("round_id", self.round_id, 0, _U64_MAX)
        _int("node_id", self.node_id, 0, _U64_MAX)

    def to_bytes(self) -> bytes:
        head = MAGIC + struct.pack(">BB", VERSION, int(self.TAG)) + self.session_id
        head += struct.pack(">QQ", self.round_id, self.node_id)
        return b"".join([head, *self._body_parts()])  # one copy of a megabyte-sized body

    def _body(self) -> bytes:  # pragma: no cover - overridden
        raise NotImplementedError

    def _body_parts(self) -> list[bytes | memoryview]:
        return [self._body()]

    @classmethod
    def _read_body(cls, r: _Reader) -> dict[str, Any]:  # pragma: no cover - overridden
        raise NotImplementedError


@dataclass(frozen=True)
class AdvertiseKeysRequest(_Message):
    """Server -> client: the round's public parameters (no graph seed: the clients derive it,
    see :class:`RevealSeedRequest`); asks for fresh public keys."""

    threshold: int
    degree: int
    bits: int
    vector_length: int
    participants: tuple[int, ...]

    TAG: ClassVar[MessageType] = MessageType.ADVERTISE_KEYS_REQUEST

    def __post_init__(self) -> None:
        super().__post_init__()
        _int("threshold", self.threshold, 1, MAX_NODES)
        _int("degree", self.degree, 0, MAX_NODES)
        _bits(self.bits)
        _int("vector_length", self.vector_length, 1, MAX_VECTOR_LENGTH)
        _ids("participants", self.participants)

    def _body(self) -> bytes:
        fixed = struct.pack(">IIBQ", self.threshold, self.degree, self.bits, self.vector_length)
        return fixed + _w_ids(self.participants)

    @classmethod
    def _read_body(cls, r: _Reader) -> dict[str, Any]:
        return {
            "threshold": r.u32(),
            "degree": r.u32(),
            "bits": r.u8(),
            "vector_length": r.u64(),
            "participants": r.ids(),
        }


@dataclass(frozen=True)
class AdvertiseKeysReply(_Message):
    """Client -> server: two X25519 public keys and a commitment to a fresh graph-seed
    contribution, signed with the client's identity key."""

    c_public: bytes
    s_public: bytes
    seed_commitment: bytes
    signature: bytes

    TAG: ClassVar[MessageType] = MessageType.ADVERTISE_KEYS_REPLY

    def __post_init__(self) -> None:
        super().__post_init__()
        _bytes("c_public", self.c_public, KEY_BYTES)
        _bytes("s_public", self.s_public, KEY_BYTES)
        _bytes("seed_commitment", self.seed_commitment, COMMITMENT_BYTES)
        _bytes("signature", self.signature, SIGNATURE_BYTES)

    def _body(self) -> bytes:
        return self.c_public + self.s_public + self.seed_commitment + self.signature

    @classmethod
    def _read_body(cls, r: _Reader) -> dict[str, Any]:
        return {
            "c_public": r.take(KEY_BYTES),
            "s_public": r.take(KEY_BYTES),
            "seed_commitment": r.take(COMMITMENT_BYTES),
            "signature": r.take(SIGNATURE_BYTES),
        }


@dataclass(frozen=True)
class RevealSeedRequest(_Message):
    """Server -> client (SecAgg+ graph only): the seed commitments of every node that
    advertised keys (U1): ``committed`` (strictly increasing ids) and ``commitments`` (32 bytes
    per id, same order; a column, not per-node entries, because every client receives all of
    U1). The recipient reveals its contribution only after seeing this set, and later accepts
    only the reveals of exactly this set."""

    committed: tuple[int, ...]
    commitments: bytes

    TAG: ClassVar[MessageType] = MessageType.REVEAL_SEED_REQUEST

    def __post_init__(self) -> None:
        super().__post_init__()
        _ids("committed", self.committed)
        _values("commitments", self.commitments, COMMITMENT_BYTES, len(self.committed))

    def _body(self) -> bytes:
        return _w_ids(self.committed) + self.commitments

    @classmethod
    def _read_body(cls, r: _Reader) -> dict[str, Any]:
        committed = r.ids()
        return {"committed": committed, "commitments": r.take(COMMITMENT_BYTES * len(committed))}


@dataclass(frozen=True)
class RevealSeedReply(_Message):
    """Client -> server: the opened graph-seed contribution."""

    contribution: bytes

    TAG: ClassVar[MessageType] = MessageType.REVEAL_SEED_REPLY

    def __post_init__(self) -> None:
        super().__post_init__()
        _bytes("contribution", self.contribution, SEED_BYTES)

    def _body(self) -> bytes:
        return self.contribution

    @classmethod
    def _read_body(cls, r: _Reader) -> dict[str, Any]:
        return {"contribution": r.take(SEED_BYTES)}


@dataclass(frozen=True)
class ShareKeysRequest(_Message):
    """Server -> client: the graph-seed reveals of all of U1 (SecAgg+ graph: ``revealed`` ids,
    ``reveals`` 32 bytes per id; both empty for the complete graph) and the signed keys of the
    recipient's neighbours in U1."""

    revealed: tuple[int, ...]
    reveals: bytes
    adverts: tuple[KeyAdvert, ...]

    TAG: ClassVar[MessageType] = MessageType.SHARE_KEYS_REQUEST

    def __post_init__(self) -> None:
        super().__post_init__()
        _ids("revealed", self.revealed)
        _values("reveals", self.reveals, SEED_BYTES, len(self.revealed))
        _entries("adverts", self.adverts, KeyAdvert, lambda e: e.node_id)

    def _body(self) -> bytes:
        return _w_ids(self.revealed) + self.reveals + _w_entries(self.adverts)

    @classmethod
    def _read_body(cls, r: _Reader) -> dict[str, Any]:
        revealed = r.ids()
        return {
            "revealed": revealed,
            "reveals": r.take(SEED_BYTES * len(revealed)),
            "adverts": _r_entries(r, KeyAdvert),
        }


@dataclass(frozen=True)
class _SealedSharesMessage(_Message):
    """A list of sealed shares, one per peer (the two relays of phase 2)."""

    shares: tuple[SealedShare, ...]

    def __post_init__(self) -> None:
        super().__post_init__()
        _entries("shares", self.shares, SealedShare, lambda e: e.peer_id)

    def _body(self) -> bytes:
        return _w_entries(self.shares)

    @classmethod
    def _read_body(cls, r: _Reader) -> dict[str, Any]:
        return {"shares": _r_entries(r, SealedShare)}


@dataclass(frozen=True)
class ShareKeysReply(_SealedSharesMessage):
    """Client -> server: one sealed share pair per neighbour in U1 (``peer_id`` = receiver)."""

    TAG: ClassVar[MessageType] = MessageType.SHARE_KEYS_REPLY


@dataclass(frozen=True)
class MaskedInputRequest(_SealedSharesMessage):
    """Server -> client: sealed shares addressed to the recipient (``peer_id`` = sender, U2)."""

    TAG: ClassVar[MessageType] = MessageType.MASKED_INPUT_REQUEST


@dataclass(frozen=True)
class MaskedInputReply(_Message):
    """Client -> server: the masked input vector in Z_{2^bits} (little-endian bytes; a parsed
    message holds a read-only view into the received bytes instead of a copy)."""

    bits: int
    vector: bytes | memoryview

    TAG: ClassVar[MessageType] = MessageType.MASKED_INPUT_REPLY

    def __post_init__(self) -> None:
        super().__post_init__()
        _bits(self.bits)
        width = self.bits // 8
        if not _is_byte_buffer(self.vector) or len(self.vector) % width:
            raise MalformedMessage("field vector must be bytes of whole ring elements")
        if not 1 <= len(self.vector) // width <= MAX_VECTOR_LENGTH:
            raise MalformedMessage(f"field vector must hold 1..{MAX_VECTOR_LENGTH} elements")

    @property
    def length(self) -> int:
        return len(self.vector) // (self.bits // 8)

    def as_array(self) -> np.ndarray:
        """Read-only view of the vector as ring elements."""
        return np.frombuffer(self.vector, dtype="<u4" if self.bits == 32 else "<u8")

    def _body_parts(self) -> list[bytes | memoryview]:  # the vector is not copied here
        return [struct.pack(">BQ", self.bits, self.length), self.vector]

    @classmethod
    def _read_body(cls, r: _Reader) -> dict[str, Any]:
        bits = r.u8()
        if bits not in (32, 64):
            raise MalformedMessage("field bits must be 32 or 64")
        length = r.u64()
        if length > MAX_VECTOR_LENGTH or length * (bits // 8) != r.remaining:
            raise MalformedMessage("vector length field does not match the message")
        return {"bits": bits, "vector": r.take_view(length * (bits // 8))}


@dataclass(frozen=True)
class ConsistencyRequest(_Message):
    """Server -> client: every node whose masked input the server holds (U3), to be signed."""

    survivors: tuple[int, ...]

    TAG: ClassVar[MessageType] = MessageType.CONSISTENCY_REQUEST

    def __post_init__(self) -> None:
        super().__post_init__()
        _ids("survivors", self.survivors)

    def _body(self) -> bytes:
        return _w_ids(self.survivors)

    @classmethod
    def _read_body(cls, r: _Reader) -> dict[str, Any]:
        return {"survivors": r.ids()}


@dataclass(frozen=True)
class ConsistencyReply(_Message):
    """Client -> server: the client's signature of the survivor list."""

    signature: bytes

    TAG: ClassVar[MessageType] = MessageType.CONSISTENCY_REPLY

    def __post_init__(self) -> None:
        super().__post_init__()
        _bytes("signature", self.signature, SIGNATURE_BYTES)

    def _body(self) -> bytes:
        return self.signature

    @classmethod
    def _read_body(cls, r: _Reader) -> dict[str, Any]:
        return {"signature": r.take(SIGNATURE_BYTES)}


@dataclass(frozen=True)
class UnmaskRequest(_Message):
    """Server -> client: neighbours' consistency signatures, and whose self-mask seed (alive)
    or mask key (dropped) shares to reveal."""

    signatures: tuple[NodeSignature, ...]
    alive: tuple[int, ...]
    dropped: tuple[int, ...]

    TAG: ClassVar[MessageType] = MessageType.UNMASK_REQUEST

    def __post_init__(self) -> None:
        super().__post_init__()
        _entries("signatures", self.signatures, NodeSignature, lambda e: e.node_id)
        _ids("alive", self.alive)
        _ids("dropped", self.dropped)

    def _body(self) -> bytes:
        return _w_entries(self.signatures) + _w_ids(self.alive) + _w_ids(self.dropped)

    @classmethod
    def _read_body(cls, r: _Reader) -> dict[str, Any]:
        return {
            "signatures": _r_entries(r, NodeSignature),
            "alive": r.ids(),
            "dropped": r.ids(),
        }


@dataclass(frozen=True)
class UnmaskReply(_Message):
    """Client -> server: shares of alive neighbours' self-mask seeds and of dropped
    neighbours' mask keys."""

    self_mask_shares: tuple[RevealedShare, ...]
    key_shares: tuple[RevealedShare, ...]

    TAG: ClassVar[MessageType] = MessageType.UNMASK_REPLY

    def __post_init__(self) -> None:
        super().__post_init__()
        _entries("self_mask_shares", self.self_mask_shares, RevealedShare, lambda e: e.owner_id)
        _entries("key_shares", self.key_shares, RevealedShare, lambda e: e.owner_id)

    def _body(self) -> bytes:
        return _w_entries(self.self_mask_shares) + _w_entries(self.key_shares)

    @classmethod
    def _read_body(cls, r: _Reader) -> dict[str, Any]:
        return {
            "self_mask_shares": _r_entries(r, RevealedShare),
            "key_shares": _r_entries(r, RevealedShare),
        }


Message = (
    AdvertiseKeysRequest
    | AdvertiseKeysReply
    | RevealSeedRequest
    | RevealSeedReply
    | ShareKeysRequest
    | ShareKeysReply
    | MaskedInputRequest
    | MaskedInputReply
    | ConsistencyRequest
    | ConsistencyReply
    | UnmaskRequest
    | UnmaskReply
)

_BY_TAG: dict[int, type[_Message]] = {
    cls.TAG: cls
    for cls in (
        AdvertiseKeysRequest,
        AdvertiseKeysReply,
        RevealSeedRequest,
        RevealSeedReply,
        ShareKeysRequest,
        ShareKeysReply,
        MaskedInputRequest,
        MaskedInputReply,
        ConsistencyRequest,
        ConsistencyReply,
        UnmaskRequest,
        UnmaskReply,
    )
}


def _is_byte_buffer(v: object) -> bool:
    if isinstance(v, bytes):
        return True
    return (
        isinstance(v, memoryview)
        and v.readonly
        and v.format == "B"
        and v.ndim == 1
        and v.c_contiguous
    )


def _as_bytes(data: object) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, bytearray | memoryview):
        return bytes(data)
    raise MalformedMessage(f"a message must be bytes, got {type(data).__name__}")


def peek_type(data: object) -> MessageType:
    """The message type of ``data`` after checking magic and version (body not parsed)."""
    raw = _as_bytes(data)
    if len(raw) < HEADER_BYTES:
        raise MalformedMessage("message is shorter than its header")
    if raw[:4] != MAGIC:
        raise MalformedMessage("bad magic: not a securefvpa secagg message")
    if raw[4] != VERSION:
        raise MalformedMessage(f"unsupported protocol version {raw[4]}")
    if raw[5] not in _BY_TAG:
        raise MalformedMessage(f"unknown message type tag {raw[5]}")
    return MessageType(raw[5])


def parse(data: object, expected: type[_Message] | None = None) -> Message:
    """Strictly parse one message; ``expected`` additionally pins its type."""
    raw = _as_bytes(data)
    cls = _BY_TAG[peek_type(raw)]
    if expected is not None and cls is not expected:
        raise MalformedMessage(f"expected a {expected.__name__}, got a {cls.__name__}")
    r = _Reader(raw)
    r.take(6)
    head: dict[str, Any] = {
        "session_id": r.take(SESSION_ID_BYTES),
        "round_id": r.u64(),
        "node_id": r.u64(),
    }
    body = cls._read_body(r)
    r.end()
    msg = cls(**head, **body)
    return msg  # type: ignore[return-value]
