"""Wire format: exact round trips; every malformed input is a MalformedMessage, never a crash."""

from __future__ import annotations

import struct
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from securefvpa.errors import ProtocolAbort
from securefvpa.secagg.messages import (
    CIPHERTEXT_BYTES,
    HEADER_BYTES,
    MAX_NODES,
    AdvertiseKeysRequest,
    ConsistencyRequest,
    KeyAdvert,
    MalformedMessage,
    MaskedInputReply,
    MessageType,
    RevealSeedRequest,
    SealedShare,
    ShareKeysRequest,
    UnmaskRequest,
    parse,
    peek_type,
)

from .conftest import Harness


def _transcript() -> list[bytes]:
    """Every request and reply of one honest SecAgg+ round (n = 6, k = 2, d = 5), in order."""
    h = Harness(n=6, d=5, degree=2, seed="wire")
    server, clients, inputs = h.server(), h.clients(), h.inputs()
    seen: list[bytes] = []
    out = server.start()
    while out:
        for node, request in out.items():
            seen.append(request)
            c = clients[node]
            reply = c.handle(request, input_vector=inputs[node] if c.needs_input else None)
            seen.append(reply)
            server.receive(node, reply)
        out = server.advance()
    return seen


TRANSCRIPT = _transcript()


def test_transcript_covers_every_message_type():
    assert {peek_type(m) for m in TRANSCRIPT} == set(MessageType)


@pytest.mark.parametrize("raw", TRANSCRIPT[:: max(1, len(TRANSCRIPT) // 20)])
def test_round_trip_is_exact(raw):
    msg = parse(raw)
    assert msg.to_bytes() == raw
    assert parse(msg.to_bytes()) == msg


def _only_protocol_abort(raw: object) -> None:
    try:
        parse(raw)
    except ProtocolAbort:
        pass  # MalformedMessage or a strict check


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzzed_messages_never_crash(data):
    base = data.draw(st.sampled_from(TRANSCRIPT))
    mutation = data.draw(st.sampled_from(["truncate", "extend", "flip", "splice", "random"]))
    raw = bytearray(base)
    if mutation == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    elif mutation == "extend":
        raw += data.draw(st.binary(min_size=1, max_size=64))
    elif mutation == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] = data.draw(st.integers(0, 255))
    elif mutation == "splice":
        i = data.draw(st.integers(HEADER_BYTES, len(raw)))
        raw[i:i] = data.draw(st.binary(min_size=1, max_size=16))
    else:
        raw = bytearray(data.draw(st.binary(max_size=400)))
    _only_protocol_abort(bytes(raw))


@pytest.mark.parametrize("tag", [0, 13, 200])
def test_unknown_type_tags_refused(tag):
    raw = bytearray(TRANSCRIPT[0])
    raw[5] = tag
    with pytest.raises(MalformedMessage, match="type tag"):
        parse(bytes(raw))


def test_wrong_magic_version_and_type_refused():
    raw = TRANSCRIPT[0]
    with pytest.raises(MalformedMessage, match="magic"):
        parse(b"XXXX" + raw[4:])
    for version in (b"\x01", b"\x03"):  # version 1 had a server-chosen graph seed
        with pytest.raises(MalformedMessage, match="version"):
            parse(raw[:4] + version + raw[5:])
    with pytest.raises(MalformedMessage, match="expected"):
        parse(raw, expected=ShareKeysRequest)
    for bad in (None, "text", 12, [1, 2]):
        with pytest.raises(MalformedMessage):
            parse(bad)


def test_huge_length_fields_refused_before_allocation():
    req = parse(next(m for m in TRANSCRIPT if peek_type(m) == MessageType.CONSISTENCY_REQUEST))
    raw = bytearray(req.to_bytes())
    raw[HEADER_BYTES : HEADER_BYTES + 4] = struct.pack(">I", 0xFFFFFFFF)
    with pytest.raises(MalformedMessage, match="length"):
        parse(bytes(raw))
    masked = next(m for m in TRANSCRIPT if peek_type(m) == MessageType.MASKED_INPUT_REPLY)
    raw = bytearray(masked)
    raw[HEADER_BYTES + 1 : HEADER_BYTES + 9] = struct.pack(">Q", 2**63)
    with pytest.raises(MalformedMessage, match="length"):
        parse(bytes(raw))


def test_trailing_bytes_refused():
    with pytest.raises(MalformedMessage, match="trailing"):
        parse(TRANSCRIPT[1] + b"\x00")


def test_unsorted_or_duplicate_ids_refused():
    req = parse(next(m for m in TRANSCRIPT if peek_type(m) == MessageType.CONSISTENCY_REQUEST))
    assert isinstance(req, ConsistencyRequest)
    ids = req.survivors
    raw = bytearray(req.to_bytes())
    body = HEADER_BYTES + 4
    raw[body : body + 16] = struct.pack(">QQ", ids[1], ids[0])
    with pytest.raises(MalformedMessage, match="increasing"):
        parse(bytes(raw))
    with pytest.raises(MalformedMessage):
        replace(req, survivors=(ids[0], ids[0]))


@pytest.mark.parametrize(
    "build",
    [
        lambda: KeyAdvert(1, b"\x00" * 31, b"\x00" * 32, b"\x00" * 32, b"\x00" * 64),
        lambda: KeyAdvert(-1, b"\x00" * 32, b"\x00" * 32, b"\x00" * 32, b"\x00" * 64),
        lambda: KeyAdvert(True, b"\x00" * 32, b"\x00" * 32, b"\x00" * 32, b"\x00" * 64),
        lambda: KeyAdvert(1, b"\x00" * 32, b"\x00" * 32, "00" * 32, b"\x00" * 64),
        lambda: SealedShare(1, b"\x00" * (CIPHERTEXT_BYTES + 1)),
        lambda: SealedShare(2**64, b"\x00" * CIPHERTEXT_BYTES),
        lambda: MaskedInputReply(
            session_id=b"\x00" * 32, round_id=0, node_id=1, bits=16, vector=b"\x00" * 4
        ),
        # F3: 32.0 == 32, so a plain membership test let it through to struct.pack in to_bytes
        lambda: MaskedInputReply(
            session_id=b"\x00" * 32, round_id=0, node_id=1, bits=32.0, vector=b"\x00" * 4
        ),
        lambda: MaskedInputReply(
            session_id=b"\x00" * 32,
            round_id=0,
            node_id=1,
            bits=32,
            vector=memoryview(b"\x00" * 8)[::2],
        ),
        lambda: MaskedInputReply(
            session_id=b"\x00" * 32, round_id=0, node_id=1, bits=32, vector=bytearray(4)
        ),
        lambda: MaskedInputReply(
            session_id=b"\x00" * 32, round_id=0, node_id=1, bits=32, vector=b"\x00" * 5
        ),
        lambda: MaskedInputReply(
            session_id=b"\x00" * 32, round_id=0, node_id=1, bits=32, vector=b""
        ),
        lambda: MaskedInputReply(
            session_id=b"\x00" * 31, round_id=0, node_id=1, bits=32, vector=b"1234"
        ),
        lambda: ConsistencyRequest(
            session_id=b"\x00" * 32, round_id=0, node_id=1, survivors=[1, 2]
        ),
        lambda: ConsistencyRequest(
            session_id=b"\x00" * 32, round_id=0, node_id=1, survivors=("a",)
        ),
        lambda: ConsistencyRequest(
            session_id=b"\x00" * 32, round_id=0, node_id=1, survivors=tuple(range(MAX_NODES + 1))
        ),
        lambda: UnmaskRequest(
            session_id=b"\x00" * 32, round_id=0, node_id=1, signatures=(1,), alive=(), dropped=()
        ),
        lambda: AdvertiseKeysRequest(
            session_id=b"\x00" * 32,
            round_id=0,
            node_id=1,
            threshold=0,
            degree=0,
            bits=32,
            vector_length=1,
            participants=(1, 2, 3),
        ),
        lambda: AdvertiseKeysRequest(
            session_id=b"\x00" * 32,
            round_id=0,
            node_id=1,
            threshold=2,
            degree=0,
            bits=64.0,
            vector_length=1,
            participants=(1, 2, 3),
        ),
        lambda: ShareKeysRequest(
            session_id=b"\x00" * 32,
            round_id=0,
            node_id=1,
            revealed=(2, 1),
            reveals=b"\x00" * 64,
            adverts=(),
        ),
        lambda: ShareKeysRequest(
            session_id=b"\x00" * 32,
            round_id=0,
            node_id=1,
            revealed=(1, 2),
            reveals=b"\x00" * 63,  # not 32 bytes per listed node
            adverts=(),
        ),
        lambda: RevealSeedRequest(
            session_id=b"\x00" * 32, round_id=0, node_id=1, committed=(1,), commitments="00" * 32
        ),
    ],
)
def test_constructors_refuse_wrong_types_and_sizes(build):
    with pytest.raises(MalformedMessage):
        build()


def test_every_constructed_message_serialises():
    """A message object that exists is well formed: to_bytes never fails and parses back."""
    for raw in TRANSCRIPT:
        msg = parse(raw)
        assert parse(replace(msg).to_bytes()) == msg
