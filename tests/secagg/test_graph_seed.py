"""The SecAgg+ graph seed is derived by commit-then-reveal; the server cannot choose it.

Each client commits to a fresh contribution in its signed key advertisement, reveals it only
after the server has shown it the commitments of all of U1, and then accepts only reveals that
open exactly that set. A server (with or without colluding clients) that names neighbours from
a seed of its own, forges or withholds a reveal, or changes U1 after the reveals is refused.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import replace

import numpy as np
import pytest

from securefvpa.errors import ConfigError, ProtocolAbort
from securefvpa.secagg import ClientPhase, ServerPhase
from securefvpa.secagg.client import MAX_INSTANCES_PER_INPUT, admit_instance
from securefvpa.secagg.graph import neighbour_graph
from securefvpa.secagg.messages import RevealSeedReply, RevealSeedRequest, parse
from securefvpa.secagg.primitives import derive_graph_seed

from .conftest import Harness, assert_aborts, drive, ring_sum, run_until


@pytest.fixture
def g() -> Harness:
    return Harness(n=10, d=4, degree=4, seed="seed-attack")  # m = 5, t = 3


def _split(ids: tuple[int, ...], column: bytes) -> dict[int, bytes]:
    return {v: column[32 * i : 32 * i + 32] for i, v in enumerate(ids)}


def _join(entries: dict[int, bytes]) -> tuple[tuple[int, ...], bytes]:
    ids = tuple(sorted(entries))
    return ids, b"".join(entries[v] for v in ids)


def _with_reveals(req, entries: dict[int, bytes]):
    ids, column = _join(entries)
    return replace(req, revealed=ids, reveals=column)


def _with_commitments(req, entries: dict[int, bytes]):
    ids, column = _join(entries)
    return replace(req, committed=ids, commitments=column)


def _independent_seed(context: bytes, reveals: dict[int, bytes]) -> bytes:
    """The seed computed from its definition, not with the code under test."""
    ids = sorted(reveals)
    h = hashlib.sha256(b"securefvpa/secagg/v1/graph-seed|" + context)
    h.update(struct.pack(f">Q{len(ids)}Q", len(ids), *ids))
    for node in ids:
        h.update(reveals[node])
    return h.digest()


def test_everyone_derives_the_same_graph_from_all_reveals(g):
    server, clients, inputs = g.server(), g.clients(), g.inputs()
    reveals: dict[int, bytes] = {}
    original = server.receive

    def receive(node, data):
        msg = parse(data)
        if isinstance(msg, RevealSeedReply):
            reveals[node] = msg.contribution
        return original(node, data)

    server.receive = receive  # type: ignore[method-assign]
    total = drive(server, clients, inputs)
    assert np.array_equal(total, ring_sum(inputs, g.ids))
    assert set(reveals) == set(g.ids)
    assert server.result.survivors_by_phase["reveal-seed"] == tuple(g.ids)
    assert server.graph_seed == _independent_seed(server.parameter_context, reveals)
    assert server.neighbours == neighbour_graph(g.ids, g.degree, server.graph_seed)
    for node, client in clients.items():
        assert client._graph_seed == server.graph_seed
        assert client._holders == server.holders[node]


def test_complete_graph_round_has_no_seed_exchange():
    h = Harness(n=6, d=3, seed="complete")
    server = h.server()
    drive(server, h.clients(), h.inputs())
    assert "reveal-seed" not in server.result.survivors_by_phase
    assert server.graph_seed == b""


def test_server_chosen_seed_refused(g):
    """The server names neighbours from a seed of its own choosing: the victim computes the
    graph itself from the reveals and refuses the neighbour set."""
    server, clients, _, out = run_until(g, ServerPhase.SHARE_KEYS)
    victim = g.ids[0]
    chosen = next(
        s
        for s in (bytes([i]) * 32 for i in range(256))
        if neighbour_graph(g.ids, g.degree, s)[victim] != server.neighbours[victim]
    )
    wanted = neighbour_graph(g.ids, g.degree, chosen)[victim] | {victim}
    req = parse(out[victim])
    adverts = tuple(server._adverts[v] for v in sorted(wanted))
    evil = replace(req, adverts=adverts)
    assert_aborts(clients[victim], evil.to_bytes(), "neighbour set does not match")


def test_forged_reveal_refused(g):
    """A reveal replaced after the fact (to steer the seed) does not open its commitment."""
    server, clients, _, out = run_until(g, ServerPhase.SHARE_KEYS)
    victim, other = g.ids[0], g.ids[5]
    req = parse(out[victim])
    reveals = _split(req.revealed, req.reveals)
    reveals[other] = b"\x42" * 32
    assert_aborts(clients[victim], _with_reveals(req, reveals).to_bytes(), "do not open")


@pytest.mark.parametrize("change", ["shrink", "grow"])
def test_u1_changed_after_the_reveal_refused(g, change):
    """After revealing for U1 a client refuses any other set: a server that saw the reveals
    cannot drop committed nodes (claim them absent) or add nodes to re-roll the seed."""
    late = g.ids[-1]
    drop = {ServerPhase.ADVERTISE_KEYS: {late}} if change == "grow" else None
    server, clients, _, out = run_until(g, ServerPhase.SHARE_KEYS, drop=drop)
    victim = g.ids[0]
    req = parse(out[victim])
    reveals = _split(req.revealed, req.reveals)
    if change == "shrink":
        del reveals[next(v for v in reveals if v not in server.holders[victim])]
    else:  # the server's own contribution for a node that never advertised
        assert late not in reveals
        reveals[late] = b"\x07" * 32
    assert_aborts(clients[victim], _with_reveals(req, reveals).to_bytes(), "do not open")


def test_second_reveal_request_refused_after_revealing(g):
    server, clients, _, out = run_until(g, ServerPhase.REVEAL_SEED)
    victim = g.ids[0]
    req = parse(out[victim])
    clients[victim].handle(out[victim])
    commitments = _split(req.committed, req.commitments)
    del commitments[g.ids[1]]
    smaller = _with_commitments(req, commitments)
    assert_aborts(clients[victim], smaller.to_bytes(), "expected a ShareKeysRequest")


@pytest.mark.parametrize("change", ["altered", "omitted"])
def test_own_commitment_altered_or_omitted_refused(g, change):
    server, clients, _, out = run_until(g, ServerPhase.REVEAL_SEED)
    victim = g.ids[1]
    req = parse(out[victim])
    commitments = _split(req.committed, req.commitments)
    if change == "altered":
        commitments[victim] = b"\x00" * 32
    else:
        del commitments[victim]
    assert_aborts(
        clients[victim], _with_commitments(req, commitments).to_bytes(), "omitted or altered"
    )


def test_commitments_of_non_participants_or_too_few_refused(g):
    server, clients, _, out = run_until(g, ServerPhase.REVEAL_SEED)
    victim = g.ids[1]
    req = parse(out[victim])
    commitments = _split(req.committed, req.commitments)
    sybil = _with_commitments(req, {**commitments, 424242: b"\x01" * 32})
    assert_aborts(clients[victim], sybil.to_bytes(), "outside the participant")
    server, clients, _, out = run_until(g, ServerPhase.REVEAL_SEED)
    req = parse(out[victim])
    commitments = _split(req.committed, req.commitments)
    few = _with_commitments(req, {v: commitments[v] for v in (victim, g.ids[0])})
    assert_aborts(clients[victim], few.to_bytes(), "too few survivors")


def test_advert_with_another_commitment_refused(g):
    server, clients, _, out = run_until(g, ServerPhase.SHARE_KEYS)
    victim = g.ids[0]
    req = parse(out[victim])
    i = next(k for k, a in enumerate(req.adverts) if a.node_id != victim)
    adverts = list(req.adverts)
    adverts[i] = replace(adverts[i], seed_commitment=b"\x05" * 32)
    assert_aborts(
        clients[victim], replace(req, adverts=tuple(adverts)).to_bytes(), "not the one it committed"
    )


def test_reveals_in_a_complete_graph_round_refused():
    h = Harness(n=6, d=3, seed="complete-reveal")
    server, clients, _, out = run_until(h, ServerPhase.SHARE_KEYS)
    victim = h.ids[0]
    req = parse(out[victim])
    evil = _with_reveals(req, {h.ids[1]: b"\x01" * 32})
    assert_aborts(clients[victim], evil.to_bytes(), "complete-graph round")


def test_missing_reveal_aborts_the_instance(g):
    """A seed over the reveals that arrived would let the server pick the subset: one missing
    reveal aborts the instance instead."""
    server, clients, _, out = run_until(g, ServerPhase.REVEAL_SEED)
    for node, req in out.items():
        if node != g.ids[3]:
            assert server.receive(node, clients[node].handle(req))
    with pytest.raises(ProtocolAbort, match="reveals missing from 1 committed node"):
        server.advance()
    assert server.phase is ServerPhase.ABORTED and server.graph_seed == b""


def test_reveal_not_opening_its_commitment_refused_by_the_server(g):
    server, clients, _, out = run_until(g, ServerPhase.REVEAL_SEED, roster=True)
    liar = g.ids[2]
    for node, req in out.items():
        reply = clients[node].handle(req)
        if node == liar:
            reply = replace(parse(reply), contribution=b"\x00" * 32).to_bytes()
            assert server.receive(node, reply) is False
            assert "does not open" in server.rejected[liar]
        else:
            assert server.receive(node, reply) is True
    with pytest.raises(ProtocolAbort, match="reveals missing"):
        server.advance()


def test_reveal_request_for_another_node_or_round_refused(g):
    server, clients, _, out = run_until(g, ServerPhase.REVEAL_SEED)
    a, b = g.ids[0], g.ids[1]
    assert_aborts(clients[a], out[b], "addressed to another node")
    req = parse(out[b])
    assert_aborts(clients[b], replace(req, round_id=req.round_id + 1).to_bytes(), "another session")


def test_instances_per_input_are_bounded():
    """A server that aborts instances to re-roll the graph gets at most
    MAX_INSTANCES_PER_INPUT draws per input."""
    count = 0
    for _ in range(MAX_INSTANCES_PER_INPUT):
        count = admit_instance(count)
    assert count == MAX_INSTANCES_PER_INPUT
    with pytest.raises(ProtocolAbort, match="already 3 protocol instances joined"):
        admit_instance(count)
    with pytest.raises(ConfigError):
        admit_instance(-1)
    with pytest.raises(ConfigError):
        admit_instance(True)


def test_client_in_reveal_phase_needs_no_input(g):
    server, clients, _, out = run_until(g, ServerPhase.REVEAL_SEED)
    c = clients[g.ids[0]]
    assert c.phase is ClientPhase.REVEAL_SEED and not c.needs_input
    assert isinstance(parse(out[g.ids[0]]), RevealSeedRequest)
    assert isinstance(parse(c.handle(out[g.ids[0]])), RevealSeedReply)
    assert c.phase is ClientPhase.SHARE_KEYS


def test_split_u1_views_cannot_complete_a_round_together(g):
    """A server that shows the victim a different U1 than everyone else gets the victim onto a
    different seed, hence a different round context: the victim's sealed shares do not open at
    a neighbour that followed the real U1."""
    server, clients, inputs, out = run_until(g, ServerPhase.REVEAL_SEED)
    victim = g.ids[0]
    req = parse(out[victim])
    commitments = _split(req.committed, req.commitments)
    dropped_for_victim = next(v for v in g.ids if v != victim)
    del commitments[dropped_for_victim]
    mine = parse(clients[victim].handle(_with_commitments(req, commitments).to_bytes()))
    for node, r in out.items():
        if node != victim:
            server.receive(node, clients[node].handle(r))
    server.receive(victim, mine.to_bytes())
    shares = server.advance()  # the server's real view: every reveal, the real seed
    # the victim's view: U1 without one node, reveals opening exactly that
    reveals = _split(parse(shares[g.ids[1]]).revealed, parse(shares[g.ids[1]]).reveals)
    del reveals[dropped_for_victim]
    ids, column = _join(reveals)
    own_seed = derive_graph_seed(server.parameter_context, ids, column)
    assert own_seed != server.graph_seed
    own_neighbours = neighbour_graph(g.ids, g.degree, own_seed)[victim]
    common = sorted(own_neighbours & server.neighbours[victim] - {dropped_for_victim})
    assert common, "the test needs a neighbour in both views"
    adverts = tuple(
        server._adverts[v] for v in sorted(own_neighbours | {victim}) if v in server._adverts
    )
    victim_req = replace(parse(shares[victim]), revealed=ids, reveals=column, adverts=adverts)
    victim_reply = parse(clients[victim].handle(victim_req.to_bytes()))  # accepted: consistent view
    for node in g.ids[1:]:
        if node in shares:
            server.receive(node, clients[node].handle(shares[node]))
    masked = server.advance()
    v = common[0]
    relayed = next(s for s in victim_reply.shares if s.peer_id == v)
    v_req = parse(masked[v])
    forged = replace(
        v_req,
        shares=tuple(
            sorted((*v_req.shares, replace(relayed, peer_id=victim)), key=lambda s: s.peer_id)
        ),
    )
    assert_aborts(clients[v], forged.to_bytes(), "authentication", input_vector=inputs[v])
