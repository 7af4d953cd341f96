"""A malicious server: every deviation a client can detect makes it abort before revealing.

Each test lets an honest run reach a phase, then rewrites the request to a victim client the
way a cheating server would, and checks that the victim raises ProtocolAbort, ends ABORTED,
and returns no reply (so it revealed nothing).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from securefvpa.errors import ProtocolAbort
from securefvpa.secagg import ClientPhase, ServerPhase
from securefvpa.secagg.messages import (
    ConsistencyRequest,
    MaskedInputRequest,
    NodeSignature,
    SealedShare,
    ShareKeysRequest,
    UnmaskReply,
    UnmaskRequest,
    parse,
)

from .conftest import PHASES, Harness, assert_aborts, drive, run_until


@pytest.fixture
def h() -> Harness:
    return Harness(n=6, d=9, seed="malicious")  # complete graph, t = 4


# -- the dropped-and-alive attack (Flower 1.42 does not check it) ------------------------------


def test_node_both_dropped_and_alive_refused(h):
    server, clients, _, out = run_until(
        h, ServerPhase.UNMASK, drop={ServerPhase.MASKED_INPUT: {h.ids[0]}}
    )
    victim = h.ids[1]
    req = parse(out[victim])
    assert isinstance(req, UnmaskRequest) and req.dropped == (h.ids[0],)
    target = h.ids[2]  # alive; the server also wants its mask key s_u^SK
    evil = replace(req, dropped=tuple(sorted({*req.dropped, target})))
    assert_aborts(clients[victim], evil.to_bytes(), "both dropped and alive")


def test_alive_node_moved_to_dropped_refused(h):
    server, clients, _, out = run_until(h, ServerPhase.UNMASK)
    victim, target = h.ids[1], h.ids[2]
    req = parse(out[victim])
    evil = replace(req, alive=tuple(v for v in req.alive if v != target), dropped=(target,))
    assert_aborts(clients[victim], evil.to_bytes(), "inconsistent lists")


def test_split_view_of_survivors_caught_by_consistency_signatures(h):
    """Server tells one client that X dropped (to get X's s-share) and the others that X is
    alive (to get X's b-share); the signed survivor lists differ, so everyone aborts."""
    server, clients, _, out = run_until(h, ServerPhase.CONSISTENCY_CHECK)
    a, x = h.ids[1], h.ids[2]
    req = parse(out[a])
    out[a] = replace(req, survivors=tuple(v for v in req.survivors if v != x)).to_bytes()
    for node, r in out.items():
        server.receive(node, clients[node].handle(r))  # server without roster relays all
    unmask = server.advance()
    aborted = 0
    for node, r in unmask.items():
        with pytest.raises(ProtocolAbort):
            clients[node].handle(r)
        aborted += 1
    assert aborted == len(h.ids)


def test_survivor_that_never_shared_keys_refused(h):
    server, clients, _, out = run_until(
        h, ServerPhase.CONSISTENCY_CHECK, drop={ServerPhase.SHARE_KEYS: {h.ids[0]}}
    )
    victim = h.ids[1]
    req = parse(out[victim])
    evil = replace(req, survivors=tuple(sorted({*req.survivors, h.ids[0]})))
    assert_aborts(clients[victim], evil.to_bytes(), "never shared keys")


def test_survivor_list_without_the_recipient_refused(h):
    server, clients, _, out = run_until(h, ServerPhase.CONSISTENCY_CHECK)
    victim = h.ids[1]
    req = parse(out[victim])
    evil = replace(req, survivors=tuple(v for v in req.survivors if v != victim))
    assert_aborts(clients[victim], evil.to_bytes(), "omits this node")


def test_share_sender_outside_advertised_neighbours_refused(h):
    server, clients, _, out = run_until(
        h, ServerPhase.MASKED_INPUT, drop={ServerPhase.ADVERTISE_KEYS: {h.ids[0]}}
    )
    victim = h.ids[1]
    req = parse(out[victim])
    fake = SealedShare(h.ids[0], req.shares[0].ciphertext)
    evil = replace(req, shares=tuple(sorted((*req.shares, fake), key=lambda s: s.peer_id)))
    inputs = h.inputs()
    assert_aborts(clients[victim], evil.to_bytes(), "not neighbours", input_vector=inputs[victim])


# -- signatures ---------------------------------------------------------------------------------


def test_forged_key_advertisement_refused(h):
    server, clients, _, out = run_until(h, ServerPhase.SHARE_KEYS)
    victim = h.ids[1]
    req = parse(out[victim])
    i = next(k for k, a in enumerate(req.adverts) if a.node_id != victim)
    forged = replace(req.adverts[i], c_public=bytes(32 - 1) + b"\x09")  # server's own key
    adverts = list(req.adverts)
    adverts[i] = forged
    assert_aborts(
        clients[victim],
        replace(req, adverts=tuple(adverts)).to_bytes(),
        "bad key-advertisement signature",
    )


def test_missing_key_signature_refused(h):
    server, clients, _, out = run_until(h, ServerPhase.SHARE_KEYS)
    victim = h.ids[1]
    req = parse(out[victim])
    adverts = tuple(
        a if a.node_id == victim else replace(a, signature=bytes(64)) for a in req.adverts
    )
    assert_aborts(clients[victim], replace(req, adverts=adverts).to_bytes(), "signature")


def test_own_keys_substituted_refused(h):
    server, clients, _, out = run_until(h, ServerPhase.SHARE_KEYS)
    victim = h.ids[1]
    req = parse(out[victim])
    other = next(a for a in req.adverts if a.node_id != victim)
    adverts = tuple(
        replace(a, c_public=other.c_public) if a.node_id == victim else a for a in req.adverts
    )
    assert_aborts(clients[victim], replace(req, adverts=adverts).to_bytes(), "own public keys")


def test_own_advert_missing_refused(h):
    server, clients, _, out = run_until(h, ServerPhase.SHARE_KEYS)
    victim = h.ids[1]
    req = parse(out[victim])
    adverts = tuple(a for a in req.adverts if a.node_id != victim)
    assert_aborts(
        clients[victim], replace(req, adverts=adverts).to_bytes(), "own key advertisement"
    )


def test_forged_consistency_signature_refused(h):
    server, clients, _, out = run_until(h, ServerPhase.UNMASK)
    victim = h.ids[1]
    req = parse(out[victim])
    sigs = tuple(
        replace(s, signature=bytes(64)) if s.node_id == h.ids[3] else s for s in req.signatures
    )
    assert_aborts(
        clients[victim], replace(req, signatures=sigs).to_bytes(), "bad consistency signature"
    )


def test_too_few_consistency_signatures_refused(h):
    server, clients, _, out = run_until(h, ServerPhase.UNMASK)
    victim = h.ids[1]
    req = parse(out[victim])
    sigs = req.signatures[: server.threshold - 1]
    assert_aborts(clients[victim], replace(req, signatures=sigs).to_bytes(), "too few survivors")


def test_signature_from_a_non_survivor_refused(h):
    server, clients, _, out = run_until(
        h, ServerPhase.UNMASK, drop={ServerPhase.MASKED_INPUT: {h.ids[0]}}
    )
    victim = h.ids[1]
    req = parse(out[victim])
    extra = NodeSignature(h.ids[0], req.signatures[0].signature)
    sigs = tuple(sorted((*req.signatures, extra), key=lambda s: s.node_id))
    assert_aborts(clients[victim], replace(req, signatures=sigs).to_bytes(), "outside the survivor")


# -- replay across rounds and sessions ----------------------------------------------------------


@pytest.mark.parametrize("field", ["round_id", "session_id"])
def test_request_from_another_round_or_session_refused(h, field):
    other = Harness(n=6, d=9, seed="malicious")
    if field == "round_id":
        other.round_id = h.round_id + 1
    else:
        other.session_id = b"\x22" * 32
    _, _, _, old = run_until(h, ServerPhase.SHARE_KEYS)
    _, clients, _, _ = run_until(other, ServerPhase.SHARE_KEYS)
    victim = h.ids[1]
    assert_aborts(clients[victim], old[victim], "another session or round")


@pytest.mark.parametrize("field", ["round_id", "session_id"])
def test_signed_keys_replayed_under_a_new_header_refused(h, field):
    """Stale signed adverts re-wrapped in a correct header: the signature binds the context."""
    other = Harness(n=6, d=9, seed="malicious")
    if field == "round_id":
        other.round_id = h.round_id + 1
    else:
        other.session_id = b"\x22" * 32
    _, _, _, old = run_until(h, ServerPhase.SHARE_KEYS)
    _, clients, _, new = run_until(other, ServerPhase.SHARE_KEYS)
    victim = h.ids[1]
    old_req, new_req = parse(old[victim]), parse(new[victim])
    adverts = tuple(
        n if n.node_id == victim else o for o, n in zip(old_req.adverts, new_req.adverts)
    )
    evil = replace(new_req, adverts=adverts)
    assert_aborts(clients[victim], evil.to_bytes(), "bad key-advertisement signature")


def test_message_for_another_node_refused(h):
    server, clients, _, out = run_until(h, ServerPhase.SHARE_KEYS)
    assert_aborts(clients[h.ids[1]], out[h.ids[2]], "addressed to another node")


def test_out_of_order_request_refused(h):
    server, clients, _, out = run_until(h, ServerPhase.CONSISTENCY_CHECK)
    fresh = h.clients()[h.ids[1]]  # still expects advertise-keys
    assert_aborts(fresh, out[h.ids[1]], "expected a AdvertiseKeysRequest")


# -- parameters, sizes, graph -------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(vector_length=10), "policy"),
        (dict(bits=64), "policy"),
        (dict(degree=2), "policy"),
        (dict(threshold=1), "threshold 1 outside"),
        (dict(threshold=7), "threshold 7 outside"),
        (dict(participants=(1, 2, 3)), "not in the participant list"),
    ],
)
def test_bad_round_parameters_refused(h, change, match):
    server, clients, _, out = run_until(h, ServerPhase.ADVERTISE_KEYS)
    victim = h.ids[1]
    assert_aborts(clients[victim], replace(parse(out[victim]), **change).to_bytes(), match)


def test_participant_outside_the_roster_refused(h):
    server, clients, _, out = run_until(h, ServerPhase.ADVERTISE_KEYS)
    victim = h.ids[1]
    req = parse(out[victim])
    sybil = tuple(sorted({*req.participants, 424242}))
    assert_aborts(clients[victim], replace(req, participants=sybil).to_bytes(), "not in the roster")


def test_wrong_local_input_is_a_config_error_not_an_abort(h):
    from securefvpa.errors import ConfigError

    server, clients, inputs, out = run_until(h, ServerPhase.MASKED_INPUT)
    victim = h.ids[1]
    for bad in (None, inputs[victim][:-1], inputs[victim].astype(np.uint64), [1] * h.d):
        with pytest.raises(ConfigError, match="input_vector"):
            clients[victim].handle(out[victim], input_vector=bad)
    assert clients[victim].phase is ClientPhase.MASKED_INPUT
    clients[victim].handle(out[victim], input_vector=inputs[victim])


def test_neighbour_set_not_matching_the_graph_refused():
    g = Harness(n=12, d=4, degree=4, seed="graph-attack")
    server, clients, _, out = run_until(g, ServerPhase.SHARE_KEYS)
    victim = g.ids[0]
    outsider = next(v for v in g.ids if v not in server.holders[victim])
    req = parse(out[victim])
    # a genuine, correctly signed advert, but from a node that is not a neighbour
    advert = server._adverts[outsider]
    adverts = tuple(sorted((*req.adverts, advert), key=lambda a: a.node_id))
    assert_aborts(
        clients[victim], replace(req, adverts=adverts).to_bytes(), "does not match the round graph"
    )


# -- too few survivors, at every phase ----------------------------------------------------------


def _shrink(req, keep: int, victim: int):
    if isinstance(req, ShareKeysRequest):
        own = [a for a in req.adverts if a.node_id == victim]
        others = [a for a in req.adverts if a.node_id != victim][: keep - 1]
        return replace(req, adverts=tuple(sorted(own + others, key=lambda a: a.node_id)))
    if isinstance(req, MaskedInputRequest):
        return replace(req, shares=req.shares[: keep - 1])
    if isinstance(req, ConsistencyRequest):
        others = [v for v in req.survivors if v != victim][: keep - 1]
        return replace(req, survivors=tuple(sorted([victim, *others])))
    assert isinstance(req, UnmaskRequest)
    return replace(req, signatures=req.signatures[:keep])


@pytest.mark.parametrize(
    "phase",
    [
        ServerPhase.SHARE_KEYS,
        ServerPhase.MASKED_INPUT,
        ServerPhase.CONSISTENCY_CHECK,
        ServerPhase.UNMASK,
    ],
    ids=lambda p: p.value,
)
def test_fewer_than_t_survivors_refused_at_every_phase(h, phase):
    server, clients, inputs, out = run_until(h, phase)
    victim = h.ids[1]
    evil = _shrink(parse(out[victim]), server.threshold - 1, victim)
    kw = {"input_vector": inputs[victim]} if phase is ServerPhase.MASKED_INPUT else {}
    assert_aborts(clients[victim], evil.to_bytes(), "too few survivors", **kw)


# -- relayed ciphertexts --------------------------------------------------------------------------


def test_tampered_or_misrouted_share_ciphertext_refused(h):
    server, clients, inputs, out = run_until(h, ServerPhase.MASKED_INPUT)
    victim = h.ids[1]
    req = parse(out[victim])
    flipped = bytearray(req.shares[0].ciphertext)
    flipped[-1] ^= 1
    evil = replace(req, shares=(replace(req.shares[0], ciphertext=bytes(flipped)), *req.shares[1:]))
    assert_aborts(clients[victim], evil.to_bytes(), "authentication", input_vector=inputs[victim])
    # a ciphertext relabelled as coming from another sender does not authenticate either
    server, clients, inputs, out = run_until(h, ServerPhase.MASKED_INPUT)
    req = parse(out[victim])
    swapped = (
        replace(req.shares[0], ciphertext=req.shares[1].ciphertext),
        replace(req.shares[1], ciphertext=req.shares[0].ciphertext),
        *req.shares[2:],
    )
    assert_aborts(
        clients[victim],
        replace(req, shares=swapped).to_bytes(),
        "authentication",
        input_vector=inputs[victim],
    )


# -- what an honest client reveals ----------------------------------------------------------------


@settings(max_examples=10, deadline=None)
@given(data=st.data())
def test_no_reply_ever_reveals_both_secrets_of_one_node(data):
    g = Harness(n=7, d=3, seed="reveal")
    drop = {p: set(data.draw(st.lists(st.sampled_from(g.ids), max_size=1))) for p in PHASES[:3]}
    server, clients, inputs = g.server(), g.clients(), g.inputs()
    revealed: list[UnmaskReply] = []

    original_receive = server.receive

    def receive(node, data_bytes):
        msg = parse(data_bytes)
        if isinstance(msg, UnmaskReply):
            revealed.append(msg)
        return original_receive(node, data_bytes)

    server.receive = receive  # type: ignore[method-assign]
    try:
        drive(server, clients, inputs, drop=drop)
    except ProtocolAbort:
        pass
    for reply in revealed:
        b_owners = {s.owner_id for s in reply.self_mask_shares}
        sk_owners = {s.owner_id for s in reply.key_shares}
        assert not b_owners & sk_owners


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_fuzzed_requests_only_ever_abort(data):
    g = Harness(n=4, d=3, seed="fuzz")
    phase = data.draw(st.sampled_from(PHASES))
    server, clients, inputs, out = run_until(g, phase)
    victim = g.ids[0]
    raw = bytearray(out[victim])
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    kw = {"input_vector": inputs[victim]} if phase is ServerPhase.MASKED_INPUT else {}
    try:
        clients[victim].handle(bytes(raw), **kw)
    except ProtocolAbort:
        assert clients[victim].phase is ClientPhase.ABORTED
