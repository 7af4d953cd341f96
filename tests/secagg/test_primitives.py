"""Known-answer and misuse tests of the KDF, PRG, AEAD and signature helpers."""

from __future__ import annotations

import hashlib
import hmac
import struct

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from securefvpa.errors import ConfigError, ProtocolAbort
from securefvpa.secagg.primitives import (
    MASK_BLOCK_BYTES,
    PURPOSE_PAIRWISE_MASK,
    PURPOSE_SHARE_ENCRYPTION,
    advertise_payload,
    apply_masks,
    commitment_digest,
    derive_graph_seed,
    expand_mask,
    keystream_uniform,
    open_sealed,
    pair_key,
    public_bytes,
    round_context,
    seal,
    seed_commitment,
    share_associated_data,
    sign,
    verify,
)

A = X25519PrivateKey.from_private_bytes(bytes(range(32)))
B = X25519PrivateKey.from_private_bytes(bytes(range(32, 64)))
CTX_ARGS = dict(
    session_id=b"\x01" * 32,
    round_id=3,
    threshold=2,
    degree=0,
    bits=32,
    vector_length=4,
    graph_seed=b"\x02" * 32,
    participants=[5, 9, 12],
)

# Computed once from this implementation; a change of any derivation breaks these.
KAT_CONTEXT = "385b1532333d67bb9e5633271b6a7fdb74d4f7253a40483afd09230ca1e3e3e6"
KAT_MASK_KEY = "401243b60958b8756cd62d550082684c7735cd660442cbbd24ffaa6a3246aa97"
KAT_SHARE_KEY = "eabbfd80169b407fac2247e13f489fa9bec98d542860116cba613db443c3d4b7"
KAT_PRG32 = [3053490418, 3500099882, 1788539817, 2155294429]
KAT_PRG64 = [
    15032814528976949490,
    9256919087594533801,
    16546147286388202992,
    4410926500381718182,
]
KAT_MASK_FROM_KEY = [732084166, 1122515419, 2207317149, 371488654]


def _ctx() -> bytes:
    return round_context(**CTX_ARGS)  # type: ignore[arg-type]


def test_round_context_known_answer_and_independent_layout():
    assert _ctx().hex() == KAT_CONTEXT
    h = hashlib.sha256(b"securefvpa/secagg/v1/context")
    h.update(b"\x20" + b"\x01" * 32 + struct.pack(">QIIBQ", 3, 2, 0, 32, 4))
    h.update(b"\x20" + b"\x02" * 32 + struct.pack(">I3Q", 3, 5, 9, 12))
    assert h.hexdigest() == KAT_CONTEXT


def test_pair_keys_known_answer_and_symmetric():
    mask_ab = pair_key(A, public_bytes(B), context=_ctx(), purpose=PURPOSE_PAIRWISE_MASK, a=9, b=5)
    mask_ba = pair_key(B, public_bytes(A), context=_ctx(), purpose=PURPOSE_PAIRWISE_MASK, a=5, b=9)
    share = pair_key(A, public_bytes(B), context=_ctx(), purpose=PURPOSE_SHARE_ENCRYPTION, a=5, b=9)
    assert mask_ab == mask_ba
    assert mask_ab.hex() == KAT_MASK_KEY
    assert share.hex() == KAT_SHARE_KEY
    assert mask_ab[:16] != share[:16]


def test_pair_key_matches_rfc5869_hkdf_computed_with_hmac():
    """Independent HKDF-SHA256 (RFC 5869 extract-then-expand with the stdlib hmac)."""
    shared = A.exchange(B.public_key())
    prk = hmac.new(_ctx(), shared, hashlib.sha256).digest()
    info = b"securefvpa/secagg/v1/pairwise-mask|" + struct.pack(">QQ", 5, 9)
    okm = hmac.new(prk, info + b"\x01", hashlib.sha256).digest()
    assert okm.hex() == KAT_MASK_KEY


def test_mask_expansion_known_answer():
    seed = bytes(range(32))
    assert expand_mask(seed, 4, 32).tolist() == KAT_PRG32
    assert expand_mask(seed, 4, 64).tolist() == KAT_PRG64
    assert expand_mask(bytes.fromhex(KAT_MASK_KEY), 4, 32).tolist() == KAT_MASK_FROM_KEY


def test_mask_expansion_matches_raw_aes_blocks():
    """Keystream = AES-256_k(counter block i), cross-checked with ECB on the counter blocks."""
    seed = bytes(range(32))
    ecb = Cipher(algorithms.AES(seed), modes.ECB()).encryptor()
    blocks = ecb.update(b"".join(i.to_bytes(16, "big") for i in range(3))) + ecb.finalize()
    assert list(struct.unpack("<4I", blocks[:16])) == KAT_PRG32
    long = expand_mask(seed, 12, 32)
    assert long.tobytes() == blocks


def test_mask_expansion_long_vectors_are_prefix_consistent_across_chunks():
    seed = b"\x07" * 32
    n = (1 << 20) // 4 * 3 + 5  # crosses the 1 MiB chunk boundary, ragged tail
    full = expand_mask(seed, n, 32)
    assert np.array_equal(full[:1000], expand_mask(seed, 1000, 32))
    out = np.empty(n, dtype=np.uint32)
    assert np.array_equal(expand_mask(seed, n, 32, out=out), full)


@pytest.mark.parametrize(
    "seed, length, bits, out",
    [
        (b"\x00" * 31, 4, 32, None),
        (b"\x00" * 32, 4, 16, None),
        (b"\x00" * 32, 4, 32, np.empty(4, dtype=np.uint64)),
        (b"\x00" * 32, 4, 32, np.empty(5, dtype=np.uint32)),
    ],
)
def test_mask_expansion_rejects_bad_arguments(seed, length, bits, out):
    with pytest.raises(ConfigError):
        expand_mask(seed, length, bits, out=out)


@pytest.mark.parametrize("bits", [32, 64])
@pytest.mark.parametrize("workers", [1, 2, 3, 5])
def test_streamed_mask_sum_equals_expanded_masks(bits, workers, monkeypatch):
    """apply_masks walks the vector in cache blocks with open encryptors, split over threads
    that each start every keystream at their slice's counter block; it must produce exactly
    the same ring sum as expanding every mask in full (uneven slices, ragged last block)."""
    from securefvpa.secagg import primitives

    monkeypatch.setattr(primitives, "_MIN_BYTES_PER_WORKER", 1)  # a thread per block if asked
    n = 7 * (MASK_BLOCK_BYTES // (bits // 8)) + 7
    dtype = np.uint32 if bits == 32 else np.uint64
    masks = [(bytes([i]) * 32, 1 if i % 3 else -1) for i in range(1, 6)]
    start = np.arange(n, dtype=dtype)
    want = start.copy()
    for seed, sgn in masks:
        m = expand_mask(seed, n, bits)
        want = want + m if sgn == 1 else want - m
    got = apply_masks(start.copy(), masks, bits, workers=workers)
    assert np.array_equal(got, want)
    assert np.array_equal(apply_masks(start.copy(), [], bits, workers=workers), start)
    short = np.arange(5, dtype=dtype)  # fewer bytes than one block: one thread whatever asked
    expect = short + expand_mask(masks[0][0], 5, bits)
    assert np.array_equal(apply_masks(short, masks[:1], bits, workers=workers), expect)


def test_keystream_at_a_counter_offset_is_the_tail_of_the_stream():
    from securefvpa.secagg.primitives import _mask_keystream

    seed = b"\x0b" * 32
    whole = expand_mask(seed, 4 * 1000, 32).tobytes()
    tail = _mask_keystream(seed, 37).update(bytes(16 * 100))
    assert tail == whole[16 * 37 : 16 * 137]
    carry = _mask_keystream(seed, 2**64 - 1).update(bytes(32))  # counter carries past 64 bits
    ecb = Cipher(algorithms.AES(seed), modes.ECB()).encryptor()
    blocks = [(2**64 - 1).to_bytes(16, "big"), (2**64).to_bytes(16, "big")]
    assert carry == ecb.update(b"".join(blocks)) + ecb.finalize()


@pytest.mark.parametrize(
    "total, masks",
    [
        (np.zeros(4, dtype=np.uint64), [(b"\x00" * 32, 1)]),  # wrong ring dtype for 32 bits
        (np.zeros((2, 2), dtype=np.uint32), [(b"\x00" * 32, 1)]),
        (np.zeros(4, dtype=np.uint32), [(b"\x00" * 31, 1)]),
        (np.zeros(4, dtype=np.uint32), [(b"\x00" * 32, 2)]),
    ],
)
def test_streamed_mask_sum_rejects_bad_arguments(total, masks):
    with pytest.raises(ConfigError):
        apply_masks(total, masks, 32)


@pytest.mark.parametrize("workers", [0, -1, 1.5, True, "2"])
def test_streamed_mask_sum_rejects_bad_worker_counts(workers):
    with pytest.raises(ConfigError, match="workers"):
        apply_masks(np.zeros(4, dtype=np.uint32), [(b"\x00" * 32, 1)], 32, workers=workers)


def test_seed_commitment_and_graph_seed_layouts_are_independent_hashes():
    """Commitment, committed-set digest and graph seed, recomputed from their definitions
    with hashlib (domain-separated labels, big-endian ids, sorted by id)."""
    ctx = round_context(**{**CTX_ARGS, "graph_seed": b""})  # type: ignore[arg-type]
    r5, r9 = b"\x05" * 32, b"\x09" * 32
    label = b"securefvpa/secagg/v1/"
    c5 = seed_commitment(ctx, 5, r5)
    assert c5 == hashlib.sha256(label + b"seed-commit|" + ctx + struct.pack(">Q", 5) + r5).digest()
    c9 = seed_commitment(ctx, 9, r9)
    body = struct.pack(">QQQ", 2, 5, 9) + c5 + c9
    assert (
        commitment_digest(ctx, (5, 9), c5 + c9)
        == hashlib.sha256(label + b"commitments|" + ctx + body).digest()
    )
    body = struct.pack(">QQQ", 2, 5, 9) + r5 + r9
    assert (
        derive_graph_seed(ctx, (5, 9), r5 + r9)
        == hashlib.sha256(label + b"graph-seed|" + ctx + body).digest()
    )
    # the parameter context (no seed yet) is the round context with an empty, length-0 seed
    h = hashlib.sha256(b"securefvpa/secagg/v1/context")
    h.update(b"\x20" + b"\x01" * 32 + struct.pack(">QIIBQ", 3, 2, 0, 32, 4))
    h.update(b"\x00" + struct.pack(">I3Q", 3, 5, 9, 12))
    assert ctx == h.digest()
    assert seed_commitment(ctx, 6, r5) != c5 and seed_commitment(_ctx(), 5, r5) != c5


@pytest.mark.parametrize(
    "call",
    [
        lambda: seed_commitment(b"c", 1, b"\x00" * 31),
        lambda: derive_graph_seed(b"c", (2, 1), b"\x00" * 64),
        lambda: derive_graph_seed(b"c", (1, 1), b"\x00" * 64),
        lambda: commitment_digest(b"c", (1,), b"\x00" * 31),
    ],
)
def test_seed_helpers_refuse_malformed_input(call):
    with pytest.raises(ConfigError):
        call()


def test_keystream_uniform_in_unit_interval():
    u = keystream_uniform(b"\x03" * 32, 10_000)
    assert u.min() >= 0.0 and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 0.02


def test_aead_binds_sender_receiver_and_context():
    key = b"\x05" * 32
    ad = share_associated_data(_ctx(), 5, 9)
    sealed = seal(key, b"\x00" * 12, b"secret shares", ad)
    assert open_sealed(key, sealed, ad) == b"secret shares"
    for wrong_ad in (
        share_associated_data(_ctx(), 9, 5),
        share_associated_data(b"\x00" * 32, 5, 9),
    ):
        with pytest.raises(ProtocolAbort):
            open_sealed(key, sealed, wrong_ad)
    flipped = bytearray(sealed)
    flipped[20] ^= 1
    with pytest.raises(ProtocolAbort):
        open_sealed(key, bytes(flipped), ad)
    with pytest.raises(ProtocolAbort):
        open_sealed(key, sealed[:10], ad)


def test_low_order_x25519_point_aborts():
    with pytest.raises(ProtocolAbort):
        pair_key(A, b"\x00" * 32, context=_ctx(), purpose=PURPOSE_PAIRWISE_MASK, a=1, b=2)


def test_signature_bound_to_context_node_and_commitment():
    identity = Ed25519PrivateKey.from_private_bytes(b"\x09" * 32)
    keys = (b"c" * 32, b"s" * 32, b"r" * 32)
    payload = advertise_payload(_ctx(), 5, *keys)
    sig = sign(identity, payload)
    assert verify(identity.public_key(), sig, payload)
    assert not verify(identity.public_key(), sig, advertise_payload(_ctx(), 6, *keys))
    other = round_context(**{**CTX_ARGS, "round_id": 4})  # type: ignore[arg-type]
    assert not verify(identity.public_key(), sig, advertise_payload(other, 5, *keys))
    moved = advertise_payload(_ctx(), 5, keys[0], keys[1], b"R" * 32)  # another commitment
    assert not verify(identity.public_key(), sig, moved)
