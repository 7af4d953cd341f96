"""Cryptographic building blocks of the secure-aggregation protocol (all from ``cryptography``).

- Key agreement: X25519. Every client holds two fresh pairs per round, ``c`` (encrypts the
  Shamir shares relayed by the server) and ``s`` (derives the pairwise masks), as in
  Bonawitz et al. 2017, "Practical Secure Aggregation for Privacy-Preserving Machine Learning"
  (CCS), Fig. 4.
- Key derivation: HKDF-SHA256 with ``salt = round context`` (a hash binding session id, round
  number and every public round parameter, see :func:`round_context`) and
  ``info = "securefvpa/secagg/v1/" + purpose + "|" + u64(min id) + u64(max id)``.
- Mask expansion (PRG): AES-256-CTR keystream under the 32-byte seed, counter block starting at
  zero, read as little-endian unsigned integers of Z_{2^bits}. Every seed is used for exactly one
  expansion, so a fixed initial counter is safe.
- Relay encryption: AES-256-GCM, random 96-bit nonce prepended, associated data binding the
  round context, sender and receiver.
- Signatures: Ed25519 from each client's long-term identity key (the roster).
- Graph seed (SecAgg+ only): commit-then-reveal coin flipping (Blum 1983, "Coin flipping by
  telephone"). Every client commits to a fresh 32-byte contribution ``r_u`` with
  ``SHA-256(label | context | u64(u) | r_u)`` inside its signed key advertisement (hiding: ``r_u``
  is uniform; binding: collision resistance), and the seed is SHA-256 over the round context and
  the sorted reveals of every committed node (:func:`derive_graph_seed`). See
  threat_models/secagg.md for why this leaves the server no choice of graph.

Functions here are deterministic given their inputs; randomness is always passed in.
"""

from __future__ import annotations

import hashlib
import os
import struct
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from securefvpa.errors import ConfigError, ProtocolAbort

PROTOCOL_LABEL = b"securefvpa/secagg/v1"
KEY_BYTES = 32
SIGNATURE_BYTES = 64
NONCE_BYTES = 12
TAG_BYTES = 16
SEED_BYTES = 32
COMMITMENT_BYTES = 32

PURPOSE_SHARE_ENCRYPTION = b"share-encryption"
PURPOSE_PAIRWISE_MASK = b"pairwise-mask"

_ZERO_CHUNK = bytes(1 << 20)  # keystream = AES-CTR(zeros); one cached MiB, reused per chunk
_U64 = struct.Struct(">Q")


def u64(value: int) -> bytes:
    """Big-endian unsigned 64-bit encoding (node ids, round numbers, lengths)."""
    return _U64.pack(value)


def ring_dtype(bits: int) -> type[np.unsignedinteger]:
    """The numpy dtype of Z_{2^bits}; numpy's unsigned arithmetic wraps modulo 2^bits."""
    if bits == 32:
        return np.uint32
    if bits == 64:
        return np.uint64
    raise ConfigError(f"secagg bits must be 32 or 64. Found {bits!r}.")


def round_context(
    *,
    session_id: bytes,
    round_id: int,
    threshold: int,
    degree: int,
    bits: int,
    vector_length: int,
    graph_seed: bytes,
    participants: Sequence[int],
) -> bytes:
    """SHA-256 over every public parameter of one round.

    Signatures, HKDF salts and AEAD associated data all include it, so a key, share or signature
    from another session, round, parameter set or participant list does not verify here.
    ``graph_seed`` is ``b""`` (length-prefixed, so distinct from any seed) for the *parameter
    context* that key advertisements sign before the seed exists, and for every use in a
    complete-graph round (no seed); a SecAgg+ round derives pairwise keys, AEAD data and
    consistency signatures from the context with the derived seed.
    """
    h = hashlib.sha256()
    h.update(PROTOCOL_LABEL + b"/context")
    h.update(struct.pack(">B", len(session_id)) + session_id)
    h.update(u64(round_id) + struct.pack(">IIBQ", threshold, degree, bits, vector_length))
    h.update(struct.pack(">B", len(graph_seed)) + graph_seed)
    h.update(struct.pack(">I", len(participants)))
    for node in participants:
        h.update(u64(node))
    return h.digest()


def derive_pair_key(
    shared_secret: bytes, *, context: bytes, purpose: bytes, a: int, b: int
) -> bytes:
    """HKDF-SHA256 of an X25519 shared secret into a 32-byte key for the ordered pair {a, b}."""
    lo, hi = (a, b) if a < b else (b, a)
    info = PROTOCOL_LABEL + b"/" + purpose + b"|" + u64(lo) + u64(hi)
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=context, info=info).derive(
        shared_secret
    )


def agree(private: X25519PrivateKey, peer_public: bytes) -> bytes:
    """X25519 shared secret; a low-order (all-zero result) peer key aborts the protocol."""
    try:
        secret = private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as exc:  # cryptography rejects an all-zero shared secret
        raise ProtocolAbort("key agreement failed: peer public key is invalid") from exc
    return secret


def pair_key(
    private: X25519PrivateKey,
    peer_public: bytes,
    *,
    context: bytes,
    purpose: bytes,
    a: int,
    b: int,
) -> bytes:
    """Agree with ``peer_public`` and derive the pair's key for ``purpose``."""
    return derive_pair_key(agree(private, peer_public), context=context, purpose=purpose, a=a, b=b)


def _mask_keystream(seed: bytes, offset_blocks: int = 0) -> CipherContext:
    """The PRG behind every mask: AES-256-CTR under ``seed`` (a checked seed), positioned at
    16-byte block ``offset_blocks`` of the keystream. OpenSSL's CTR mode increments the whole
    128-bit counter block big-endian, so starting the counter at ``offset_blocks`` yields exactly
    the bytes from ``16 * offset_blocks`` on of the stream that starts at counter block 0."""
    if len(seed) != SEED_BYTES:
        raise ConfigError(f"mask seed must be {SEED_BYTES} bytes. Found {len(seed)} bytes.")
    return Cipher(algorithms.AES(seed), modes.CTR(offset_blocks.to_bytes(16, "big"))).encryptor()


def expand_mask(seed: bytes, length: int, bits: int, out: np.ndarray | None = None) -> np.ndarray:
    """PRG: ``length`` elements of Z_{2^bits} from the AES-256-CTR keystream under ``seed``.

    The keystream is written straight into the output buffer (``update_into``), so the cost is
    one AES pass; pass ``out`` (a C-contiguous array of the ring dtype) to reuse memory.
    """
    encryptor = _mask_keystream(seed)
    dtype = ring_dtype(bits)
    if out is None:
        out = np.empty(length, dtype=dtype)
    elif out.dtype != dtype or out.shape != (length,) or not out.flags.c_contiguous:
        raise ConfigError(
            f"mask buffer must be a contiguous {np.dtype(dtype).name} array of shape ({length},)."
            f" Found {out.dtype} {out.shape}."
        )
    view = out.data.cast("B")
    total = view.nbytes
    chunk = len(_ZERO_CHUNK)
    for start in range(0, total, chunk):
        stop = min(total, start + chunk)
        zeros = _ZERO_CHUNK if stop - start == chunk else _ZERO_CHUNK[: stop - start]
        encryptor.update_into(zeros, view[start:stop])
    if sys.byteorder == "big":  # pragma: no cover - the wire and KAT order is little-endian
        out.byteswap(inplace=True)
    return out


MASK_BLOCK_BYTES = 1 << 18  # 256 KiB: a keystream block and a block of the total stay in L2
_MIN_BYTES_PER_WORKER = 4 * MASK_BLOCK_BYTES  # below this, a thread costs more than it saves


def mask_workers() -> int:
    """Threads :func:`apply_masks` uses by default: the CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - platforms without sched_getaffinity
        return max(1, os.cpu_count() or 1)


def apply_masks(
    total: np.ndarray,
    masks: Sequence[tuple[bytes, int]],
    bits: int,
    *,
    workers: int | None = None,
) -> np.ndarray:
    """``total += sum(sign * expand_mask(seed))`` in Z_{2^bits}, in place, for ``(seed, sign)``
    pairs with sign +1 or -1; returns ``total``.

    Same keystreams as :func:`expand_mask` (``tests/secagg/test_primitives.py::
    test_streamed_mask_sum_equals_expanded_masks``), but streamed: every mask's
    AES-256-CTR encryptor stays open and the vector is walked in cache-sized blocks, so each
    block of keystream is added while it is still in cache instead of being written to a full
    d-length scratch vector and read back (numpy and cryptography have no fused "add keystream"
    call). With hundreds of masks of 10^6 elements this roughly halves the memory traffic.

    ``workers`` threads (default :func:`mask_workers`, fewer for short vectors) each stream every
    mask over their own contiguous, block-aligned slice of ``total``, with the mask's encryptor
    started at that slice's counter block. ``cryptography`` releases the GIL inside
    ``update_into`` and numpy inside the block additions, so the slices run on separate cores
    (measured in ``benchmarks/secagg.py``: unmasking vs the machine's AES floor).
    """
    dtype = ring_dtype(bits)
    if total.dtype != dtype or total.ndim != 1 or not total.flags.c_contiguous:
        raise ConfigError(
            f"mask total must be a contiguous 1-D {np.dtype(dtype).name} array. "
            f"Found {total.dtype} {total.shape}."
        )
    checked: list[tuple[bytes, int]] = []
    for seed, sign in masks:
        _mask_keystream(seed)  # checks the seed once, before any thread starts
        if sign not in (1, -1):
            raise ConfigError(f"mask sign must be +1 or -1. Found {sign!r}.")
        checked.append((seed, sign))
    if workers is None:
        workers = mask_workers()
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"apply_masks workers must be an int >= 1. Found {workers!r}.")
    if not checked or total.size == 0:
        return total
    block = MASK_BLOCK_BYTES // total.itemsize  # elements; a multiple of the 16-byte AES block
    slices = mask_slices(total.size, total.itemsize, workers)
    if len(slices) == 1:
        _stream_masks(total, checked, 0, total.size, block)
        return total
    with ThreadPoolExecutor(max_workers=len(slices), thread_name_prefix="secagg-mask") as pool:
        futures = [pool.submit(_stream_masks, total, checked, lo, hi, block) for lo, hi in slices]
        for f in futures:
            f.result()  # re-raises a worker's exception here
    return total


def mask_slices(size: int, itemsize: int, workers: int) -> list[tuple[int, int]]:
    """The ``[lo, hi)`` element ranges :func:`apply_masks` gives its threads for a vector of
    ``size`` elements of ``itemsize`` bytes: contiguous, aligned to :data:`MASK_BLOCK_BYTES`
    blocks, as equal as whole blocks allow; at most ``workers`` of them, fewer when a thread
    would get under ``_MIN_BYTES_PER_WORKER`` or less than one block."""
    block = MASK_BLOCK_BYTES // itemsize
    blocks = -(-size // block)
    workers = max(1, min(workers, size * itemsize // _MIN_BYTES_PER_WORKER, blocks))
    cuts = [block * (blocks * w // workers) for w in range(workers)] + [size]
    return [(cuts[w], min(cuts[w + 1], size)) for w in range(workers)]


def _stream_masks(
    total: np.ndarray, masks: Sequence[tuple[bytes, int]], lo: int, hi: int, block: int
) -> None:
    """``total[lo:hi] += sum(sign * keystream[lo:hi])``, one cache block at a time."""
    item = total.itemsize
    if (lo * item) % 16:
        raise ConfigError(f"mask slice must start on a 16-byte boundary. Found element {lo}.")
    ops = [
        (_mask_keystream(seed, lo * item // 16), np.add if sign == 1 else np.subtract)
        for seed, sign in masks
    ]
    scratch = np.empty(block, dtype=total.dtype)
    sview = scratch.data.cast("B")
    zview = memoryview(_ZERO_CHUNK)  # slicing a memoryview copies nothing
    for start in range(lo, hi, block):
        m = min(block, hi - start)
        nbytes = m * item
        zeros, dst = zview[:nbytes], sview[:nbytes]
        part, keys = total[start : start + m], scratch[:m]
        for encryptor, op in ops:
            encryptor.update_into(zeros, dst)
            if sys.byteorder == "big":  # pragma: no cover - keystream words are little-endian
                keys.byteswap(inplace=True)
            op(part, keys, out=part)


def keystream_uniform(key: bytes, count: int) -> np.ndarray:
    """``count`` floats uniform on [0, 1) with 53-bit resolution from the AES-CTR keystream."""
    words = expand_mask(key, count, 64)
    words >>= np.uint64(11)
    return np.multiply(words, 1.0 / (1 << 53), dtype=np.float64)  # exact: 53-bit ints, 2^-53


def seal(key: bytes, nonce: bytes, plaintext: bytes, associated_data: bytes) -> bytes:
    """AES-256-GCM: ``nonce || ciphertext || tag``."""
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated_data)


def open_sealed(key: bytes, sealed: bytes, associated_data: bytes) -> bytes:
    """Inverse of :func:`seal`; any tampering aborts without saying more."""
    if len(sealed) < NONCE_BYTES + TAG_BYTES:
        raise ProtocolAbort("relayed share ciphertext is too short")
    try:
        return AESGCM(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], associated_data)
    except InvalidTag as exc:
        raise ProtocolAbort("relayed share ciphertext failed authentication") from exc


def share_associated_data(context: bytes, sender: int, receiver: int) -> bytes:
    """AEAD associated data of a relayed share: purpose, round context, sender, receiver."""
    return PROTOCOL_LABEL + b"/share|" + context + u64(sender) + u64(receiver)


def advertise_payload(
    context: bytes, node_id: int, c_public: bytes, s_public: bytes, seed_commitment: bytes
) -> bytes:
    """Bytes a client signs when it advertises its two public keys and its seed commitment
    (``context`` = the parameter context, before any graph seed exists)."""
    return (
        PROTOCOL_LABEL
        + b"/advertise|"
        + context
        + u64(node_id)
        + c_public
        + s_public
        + seed_commitment
    )


def seed_commitment(context: bytes, node_id: int, contribution: bytes) -> bytes:
    """Hash commitment to a graph-seed contribution: ``SHA-256(label | context | u64(node) |
    r)``. Hiding because ``r`` is 32 uniform bytes, binding by collision resistance; node id and
    context stop a commitment being replayed for another node, round or parameter set."""
    if len(contribution) != SEED_BYTES:
        raise ConfigError(
            f"seed contribution must be {SEED_BYTES} bytes. Found {len(contribution)} bytes."
        )
    return hashlib.sha256(
        PROTOCOL_LABEL + b"/seed-commit|" + context + u64(node_id) + contribution
    ).digest()


def _id_column(what: str, ids: Sequence[int], values: bytes, size: int) -> bytes:
    """``u64(count) | u64(id_1) ... u64(id_c) | values`` after checking the column's shape."""
    if len(values) != size * len(ids) or any(b <= a for a, b in zip(ids, ids[1:])):
        raise ConfigError(f"{what} must be strictly increasing ids with {size} bytes per id.")
    return u64(len(ids)) + struct.pack(f">{len(ids)}Q", *ids) + values


def commitment_digest(context: bytes, ids: Sequence[int], commitments: bytes) -> bytes:
    """SHA-256 over the committed set U1: ``u64(count)``, the ids (strictly increasing), then
    their 32-byte commitments in the same order. A client keeps this digest after it reveals,
    and accepts only reveals that open exactly this set."""
    body = _id_column("commitments", ids, commitments, COMMITMENT_BYTES)
    return hashlib.sha256(PROTOCOL_LABEL + b"/commitments|" + context + body).digest()


def derive_graph_seed(context: bytes, ids: Sequence[int], reveals: bytes) -> bytes:
    """The SecAgg+ graph seed: SHA-256 over ``context`` (the parameter context) and the reveals
    of every node of U1: ``u64(count)``, the ids (strictly increasing), then their 32-byte
    contributions in the same order."""
    body = _id_column("reveals", ids, reveals, SEED_BYTES)
    return hashlib.sha256(PROTOCOL_LABEL + b"/graph-seed|" + context + body).digest()


def consistency_payload(context: bytes, survivors: Sequence[int]) -> bytes:
    """Bytes a client signs in the consistency check: the server's list of masked-input senders."""
    body = b"".join(u64(n) for n in survivors)
    return PROTOCOL_LABEL + b"/consistency|" + context + u64(len(survivors)) + body


def sign(identity: Ed25519PrivateKey, payload: bytes) -> bytes:
    """Ed25519 signature (deterministic, RFC 8032)."""
    return identity.sign(payload)


def verify(public: Ed25519PublicKey, signature: bytes, payload: bytes) -> bool:
    """True iff ``signature`` is a valid Ed25519 signature of ``payload`` under ``public``."""
    try:
        public.verify(signature, payload)
    except InvalidSignature:
        return False
    return True


def x25519_from_seed(seed: bytes) -> X25519PrivateKey:
    """An X25519 private key from 32 random bytes (clamping is applied by the library)."""
    return X25519PrivateKey.from_private_bytes(seed)


def public_bytes(private: X25519PrivateKey) -> bytes:
    """Raw 32-byte public key."""
    return private.public_key().public_bytes_raw()
