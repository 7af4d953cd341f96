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

Functions here are deterministic given their inputs; randomness is always passed in.
"""

from __future__ import annotations

import hashlib
import struct
import sys
from collections.abc import Sequence

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


def _mask_keystream(seed: bytes) -> CipherContext:
    """The PRG behind every mask: AES-256-CTR under ``seed``, counter block 0 (a checked seed)."""
    if len(seed) != SEED_BYTES:
        raise ConfigError(f"mask seed must be {SEED_BYTES} bytes. Found {len(seed)} bytes.")
    return Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()


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


MASK_BLOCK_BYTES = 1 << 19  # 512 KiB: a keystream block and a block of the total stay in L2


def apply_masks(total: np.ndarray, masks: Sequence[tuple[bytes, int]], bits: int) -> np.ndarray:
    """``total += sum(sign * expand_mask(seed))`` in Z_{2^bits}, in place, for ``(seed, sign)``
    pairs with sign +1 or -1; returns ``total``.

    Same keystreams as :func:`expand_mask` (``tests/secagg/test_primitives.py::
    test_streamed_mask_sum_equals_expanded_masks``), but streamed: every mask's
    AES-256-CTR encryptor stays open and the vector is walked in cache-sized blocks, so each
    block of keystream is added while it is still in cache instead of being written to a full
    d-length scratch vector and read back (numpy and cryptography have no fused "add keystream"
    call). With hundreds of masks of 10^6 elements this roughly halves the memory traffic.
    """
    dtype = ring_dtype(bits)
    if total.dtype != dtype or total.ndim != 1 or not total.flags.c_contiguous:
        raise ConfigError(
            f"mask total must be a contiguous 1-D {np.dtype(dtype).name} array. "
            f"Found {total.dtype} {total.shape}."
        )
    ops = []
    for seed, sign in masks:
        encryptor = _mask_keystream(seed)
        if sign not in (1, -1):
            raise ConfigError(f"mask sign must be +1 or -1. Found {sign!r}.")
        ops.append((encryptor, np.add if sign == 1 else np.subtract))
    if not ops:
        return total
    item = total.itemsize
    block = max(1, MASK_BLOCK_BYTES // item)
    scratch = np.empty(block, dtype=dtype)
    sview = scratch.data.cast("B")
    zview = memoryview(_ZERO_CHUNK)  # slicing a memoryview copies nothing
    for start in range(0, total.size, block):
        m = min(block, total.size - start)
        nbytes = m * item
        zeros, dst = zview[:nbytes], sview[:nbytes]
        part, keys = total[start : start + m], scratch[:m]
        for encryptor, op in ops:
            encryptor.update_into(zeros, dst)
            if sys.byteorder == "big":  # pragma: no cover - keystream words are little-endian
                keys.byteswap(inplace=True)
            op(part, keys, out=part)
    return total


def keystream_uniform(key: bytes, count: int) -> np.ndarray:
    """``count`` floats uniform on [0, 1) with 53-bit resolution from the AES-CTR keystream."""
    words = expand_mask(key, count, 64)
    return (words >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


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


def advertise_payload(context: bytes, node_id: int, c_public: bytes, s_public: bytes) -> bytes:
    """Bytes a client signs when it advertises its two public keys."""
    return PROTOCOL_LABEL + b"/advertise|" + context + u64(node_id) + c_public + s_public


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
