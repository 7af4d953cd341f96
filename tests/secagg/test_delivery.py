"""Duplicate, stale, reordered and garbage deliveries: an exact sum or a typed abort, never a
wrong sum (issue 14, F1 and F2).

The server's state changes only when a reply is accepted in full: the first reply of a node that
passes every check of the phase is final, and any other message changes nothing but
``server.rejected``. Clients refuse anything but the next request of their own round (a
duplicate request aborts them, which is a dropout, never a wrong sum).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from securefvpa.errors import ConfigError, ProtocolAbort
from securefvpa.secagg import ClientPhase, ServerPhase
from securefvpa.secagg.messages import HEADER_BYTES

from .conftest import Harness, drive, ring_sum

# -- the reproduction ---------------------------------------------------------------------


def test_f1_duplicate_masked_input_bytes_give_the_exact_sum():
    """5 clients; node 0's masked-input reply is delivered twice. Expected sum [14 14 14 14]
    (before the fix: the duplicate got node 0 "dropped" while its vector stayed in the running
    sum, and the round returned garbage without an error)."""
    h = Harness(n=5, d=4, seed="f1")
    values = dict(zip(h.ids, [1, 2, 3, 4, 4], strict=True))
    inputs = {i: np.full(h.d, values[i], dtype=np.uint32) for i in h.ids}
    server, clients = h.server(), h.clients()
    node0 = h.ids[0]
    out = server.start()
    while out:
        phase = server.phase
        for node, request in out.items():
            c = clients[node]
            reply = c.handle(request, input_vector=inputs[node] if c.needs_input else None)
            server.receive(node, reply)
            if node == node0 and phase is ServerPhase.MASKED_INPUT:
                assert server.receive(node, reply) is False  # the duplicate
        out = server.advance()
    assert server.result.vector.tolist() == [14, 14, 14, 14]
    assert server.result.contributors == tuple(h.ids)
    assert "already accepted" in server.rejected[node0]


# -- F2 and the receive() contract ----------------------------------------------------------------


def test_f2_late_replies_after_an_abort_are_refused_not_raised():
    h = Harness(n=6, d=3, seed="f2")  # t = 4
    server, clients = h.server(), h.clients()
    out = server.start()
    replies = {node: clients[node].handle(req) for node, req in out.items()}
    for node in h.ids[:3]:  # 3 < t advertise: the round must abort
        server.receive(node, replies[node])
    with pytest.raises(ProtocolAbort, match="too few survivors"):
        server.advance()
    assert server.phase is ServerPhase.ABORTED
    for node in h.ids:  # late replies, duplicates, garbage: refused with a reason
        for data in (replies[node], b"garbage", None):
            assert server.receive(node, data) is False  # type: ignore[arg-type]
            assert "no phase is collecting replies (round is aborted)" in server.rejected[node]
    with pytest.raises(ProtocolAbort, match="nothing to advance"):
        server.advance()


def test_replies_after_the_round_is_done_are_refused():
    h = Harness(n=4, d=2, seed="done")
    server = h.server()
    drive(server, h.clients(), h.inputs())
    assert server.receive(h.ids[0], b"late") is False
    assert "round is done" in server.rejected[h.ids[0]]


@pytest.mark.parametrize("node_id", [[1], "1", 1.0, True, None, (1,)])
def test_receive_with_a_non_int_node_id_is_a_config_error(node_id):
    h = Harness(n=4, d=2, seed="node-id")
    server = h.server()
    server.start()
    with pytest.raises(ConfigError, match="node_id must be an int"):
        server.receive(node_id, b"x")  # type: ignore[arg-type]


def test_a_refused_message_before_the_genuine_reply_does_not_drop_the_node():
    """Garbage, a stale reply or a reply of another node arriving first changes nothing: the
    node's genuine reply is still accepted and it contributes."""
    h = Harness(n=5, d=3, seed="first-garbage")
    server, clients, inputs = h.server(), h.clients(), h.inputs()
    out = server.start()
    previous: dict[int, bytes] = {}
    while out:
        current = {}
        for node, req in out.items():
            c = clients[node]
            current[node] = c.handle(req, input_vector=inputs[node] if c.needs_input else None)
        for node, reply in current.items():
            other = current[next(v for v in current if v != node)]
            for junk in (b"junk", reply[:-1], other, previous.get(node, b"")):
                assert server.receive(node, junk) is False
            assert server.receive(node, reply) is True
        previous = current
        out = server.advance()
    assert server.result.contributors == tuple(h.ids)
    assert np.array_equal(server.result.vector, ring_sum(inputs, h.ids))


# -- property: every phase, every kind of bad delivery ------------------------------------------

FAULTS = (
    "duplicate",
    "garbage",
    "truncated",
    "bad-header",
    "stale-phase",
    "stale-round",
    "other-node",
)


@dataclass
class _World:
    """Two honest transcripts of the same clients (rounds 7 and 8) for stale replies."""

    h: Harness
    stale: dict[tuple[ServerPhase, int], bytes] = field(default_factory=dict)


def _world(degree: int) -> _World:
    h = Harness(n=7 if degree else 5, d=3, degree=degree, seed=f"delivery-{degree}")
    other = Harness(n=h.n, d=h.d, degree=degree, seed=h.seed)
    other.round_id = h.round_id + 1
    w = _World(h)
    server, clients, inputs = other.server(), other.clients(), other.inputs()
    out = server.start()
    while out:
        for node, req in out.items():
            c = clients[node]
            reply = c.handle(req, input_vector=inputs[node] if c.needs_input else None)
            w.stale[(server.phase, node)] = reply
            server.receive(node, reply)
        out = server.advance()
    return w


WORLDS = {0: _world(0), 2: _world(2)}


def _fault(kind: str, w: _World, phase, node, genuine, current, previous, data) -> bytes:
    if kind == "duplicate":
        return genuine
    if kind == "garbage":
        return data.draw(st.binary(max_size=80))
    if kind == "truncated":
        return genuine[: data.draw(st.integers(0, len(genuine) - 1))]
    if kind == "bad-header":  # magic, version, type tag, session or round byte changed
        raw = bytearray(genuine)
        i = data.draw(st.integers(0, HEADER_BYTES - 9))  # not the node id: that is other-node
        raw[i] ^= data.draw(st.integers(1, 255))
        return bytes(raw)
    if kind == "stale-phase":
        return previous.get(node, genuine[:10])
    if kind == "stale-round":
        return w.stale.get((phase, node), b"")
    others = [v for v in current if v != node]
    return current[data.draw(st.sampled_from(others))] if others else b""


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data(), degree=st.sampled_from([0, 2]))
def test_duplicate_stale_reordered_deliveries_give_exact_sum_or_typed_abort(data, degree):
    """At every phase each node's genuine reply may be dropped, preceded or followed by any
    number of faulty messages (duplicates, garbage, truncations, corrupted headers, stale replies
    of the previous phase or of another round, another node's reply), all delivered in a random
    order across nodes; some clients are also sent their request twice. The round ends with the
    exact sum of the inputs whose masked reply was accepted, or with a ProtocolAbort."""
    w = WORLDS[degree]
    h = w.h
    server, clients, inputs = h.server(), h.clients(), h.inputs()
    accepted_masked: set[int] = set()
    every_genuine_delivered = True
    previous: dict[int, bytes] = {}
    out = server.start()
    try:
        while out:
            phase = server.phase
            current: dict[int, bytes] = {}
            for node, req in out.items():
                c = clients[node]
                if c.phase is ClientPhase.ABORTED:  # a repeated request aborted it earlier
                    every_genuine_delivered = False
                    continue
                x = inputs[node] if c.needs_input else None
                current[node] = c.handle(req, input_vector=x)
                if data.draw(st.integers(0, 9)) == 0:  # the transport repeats the request
                    again = inputs[node] if c.needs_input else None  # as a transport would
                    with pytest.raises(ProtocolAbort):
                        c.handle(req, input_vector=again)
                    assert c.phase in (ClientPhase.ABORTED, ClientPhase.DONE)
            events: list[tuple[int, bytes]] = []
            for node, genuine in current.items():
                if data.draw(st.integers(0, 11)) == 0:
                    every_genuine_delivered = False  # this reply is lost
                else:
                    events.append((node, genuine))
                for kind in data.draw(st.lists(st.sampled_from(FAULTS), max_size=3)):
                    fault = _fault(kind, w, phase, node, genuine, current, previous, data)
                    events.append((node, fault))
            for node, payload in data.draw(st.permutations(events)):
                if server.receive(node, payload) and phase is ServerPhase.MASKED_INPUT:
                    accepted_masked.add(node)
                    assert payload == current[node]  # only the genuine reply is ever accepted
            previous = current
            out = server.advance()
    except ProtocolAbort:
        assert server.phase is ServerPhase.ABORTED and server.result is None
        assert not every_genuine_delivered  # duplicates and garbage alone never abort a round
        return
    contributors = server.result.contributors
    assert contributors == tuple(sorted(accepted_masked))
    assert np.array_equal(server.result.vector, ring_sum(inputs, contributors))
    if every_genuine_delivered:
        assert contributors == tuple(h.ids)
    assert not any("internal error" in r for r in server.rejected.values())
