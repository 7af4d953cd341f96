"""Seeded, time-bounded fuzzing of every entry point that takes bytes or stored state.

``parse``/``peek_type``, ``SecAggServer.receive`` (every phase), ``SecAggClient.handle`` (every
phase) and ``SecAggClient.restore`` get mutated valid messages and states, random bytes, wrong
types and deep nesting. The only error any of them may raise is a ``ProtocolAbort`` (its
``MalformedMessage`` subclass included) — never ``KeyError``, ``AttributeError``, ``IndexError``,
``RecursionError``, ``TypeError`` or ``struct.error`` — and never the fail-closed "internal error"
path (which would mean an unexpected exception was caught). The random generator is seeded
(``random.Random``, test data only), each entry point gets a fixed time budget, and the number
of cases that ran is printed.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest

from securefvpa.errors import ConfigError, ProtocolAbort
from securefvpa.secagg import ClientPhase, SecAggClient, ServerPhase
from securefvpa.secagg.messages import HEADER_BYTES, MessageType, parse, peek_type

from .conftest import Harness, ring_sum

SEED = 14
BUDGET_S = 2.0  # per entry point and graph; ~8 s for the module
MAX_CASES = 4000


@dataclass
class Recorded:
    """One honest round with everything an entry point can be fed."""

    h: Harness
    messages: list[bytes] = field(default_factory=list)
    # (phase, node) -> the client's state just before it handled that phase's request
    states: dict[tuple[ServerPhase, int], bytes] = field(default_factory=dict)
    requests: dict[tuple[ServerPhase, int], bytes] = field(default_factory=dict)
    replies: dict[tuple[ServerPhase, int], bytes] = field(default_factory=dict)
    phases: list[ServerPhase] = field(default_factory=list)


def _record(h: Harness) -> Recorded:
    rec = Recorded(h)
    server, clients, inputs = h.server(), h.clients(), h.inputs()
    out = server.start()
    while out:
        phase = server.phase
        rec.phases.append(phase)
        for node, req in out.items():
            c = clients[node]
            rec.states[(phase, node)] = c.export_state()
            reply = c.handle(req, input_vector=inputs[node] if c.needs_input else None)
            rec.requests[(phase, node)], rec.replies[(phase, node)] = req, reply
            rec.messages += [req, reply]
            server.receive(node, reply)
        out = server.advance()
    return rec


ROUNDS = {
    "complete": _record(Harness(n=4, d=3, seed="fuzz-complete")),
    "secagg+": _record(Harness(n=6, d=3, degree=2, seed="fuzz-plus")),
}


def _typed(call: Callable[[], object]) -> object:
    """Run ``call``; any exception must be a ProtocolAbort that is not the internal-error path."""
    try:
        return call()
    except ProtocolAbort as exc:
        assert not str(exc).startswith("internal error"), exc
        return exc


# -- byte mutations -------------------------------------------------------------------------------


def _mutate_bytes(rng: random.Random, raw: bytes, pool: list[bytes]) -> object:
    b = bytearray(raw)
    kind = rng.randrange(11)
    if kind == 0:
        for _ in range(rng.randint(1, 8)):
            if b:
                b[rng.randrange(len(b))] = rng.randrange(256)
    elif kind == 1:
        b = b[: rng.randrange(len(b) + 1)]
    elif kind == 2:
        b += rng.randbytes(rng.randint(1, 64))
    elif kind == 3:
        i = rng.randrange(len(b) + 1)
        b[i:i] = rng.randbytes(rng.randint(1, 16))
    elif kind == 4:
        i = rng.randrange(len(b) + 1)
        del b[i : i + rng.randint(1, 64)]
    elif kind == 5 and len(b) > HEADER_BYTES + 4:  # a length/count field made huge
        i = rng.randrange(HEADER_BYTES, len(b) - 3)
        b[i : i + 4] = rng.choice([b"\xff\xff\xff\xff", b"\x00\x01\x00\x00", rng.randbytes(4)])
    elif kind == 6:
        b = bytearray(rng.randbytes(rng.randint(0, 300)))
    elif kind == 7:  # another valid type tag over this body
        b[5] = rng.choice(list(MessageType))
    elif kind == 8:
        b += rng.choice(pool)
    elif kind == 9:
        return rng.choice([None, "text", 12, 1.5, [1, 2], {"a": 1}, bytearray(b), memoryview(b)])
    else:
        return rng.choice(pool)  # a valid message of another type / node / phase
    return bytes(b)


def _run(name: str, budget: float, body: Callable[[random.Random], None]) -> int:
    """Up to MAX_CASES cases of ``body`` within ``budget`` seconds; returns how many ran."""
    rng = random.Random(f"{SEED}/{name}")
    deadline = time.monotonic() + budget
    done = 0
    while done < MAX_CASES and time.monotonic() < deadline:
        body(rng)
        done += 1
    print(f"{name}: {done} cases")
    return done


@pytest.mark.parametrize("graph", ROUNDS)
def test_fuzzed_parse_only_ever_raises_malformed_or_abort(graph):
    rec = ROUNDS[graph]

    def body(rng: random.Random) -> None:
        data = _mutate_bytes(rng, rng.choice(rec.messages), rec.messages)
        _typed(lambda: parse(data))
        _typed(lambda: peek_type(data))

    assert _run(f"parse/{graph}", BUDGET_S / 2, body) > 100


@pytest.mark.parametrize("graph", ROUNDS)
def test_fuzzed_server_receive_never_raises_at_any_phase(graph):
    rec = ROUNDS[graph]
    h = rec.h
    servers = {}
    for phase in rec.phases:  # a server waiting in each phase (honest replies up to it)
        server, clients, inputs = h.server(), h.clients(), h.inputs()
        out = server.start()
        while server.phase is not phase:
            for node, req in out.items():
                c = clients[node]
                server.receive(
                    node, c.handle(req, input_vector=inputs[node] if c.needs_input else None)
                )
            out = server.advance()
        servers[phase] = server
    replies = list(rec.replies.values())

    def body(rng: random.Random) -> None:
        phase = rng.choice(rec.phases)
        node = rng.choice(h.ids)
        data = _mutate_bytes(rng, rec.replies[(phase, node)], replies)
        server = servers[phase]
        assert isinstance(server.receive(node, data), bool)  # type: ignore[arg-type]

    assert _run(f"receive/{graph}", BUDGET_S, body) > 100
    for server in servers.values():
        assert not any("internal error" in r for r in server.rejected.values())


@pytest.mark.parametrize("graph", ROUNDS)
def test_fuzzed_client_requests_only_ever_abort_at_any_phase(graph):
    rec = ROUNDS[graph]
    h = rec.h
    inputs = h.inputs()
    requests = list(rec.requests.values())

    def body(rng: random.Random) -> None:
        phase = rng.choice(rec.phases)
        node = rng.choice(h.ids)
        client = SecAggClient.restore(
            rec.states[(phase, node)],
            identity_key=h.keys[node],
            roster=h.roster,
            policy=h.policy(),
        )
        data = _mutate_bytes(rng, rec.requests[(phase, node)], requests)
        x = inputs[node] if client.needs_input else None
        result = _typed(lambda: client.handle(data, input_vector=x))  # type: ignore[arg-type]
        if isinstance(result, ProtocolAbort):
            assert client.phase is ClientPhase.ABORTED
            assert client._c_key is None and not client._b_shares  # secrets wiped

    assert _run(f"handle/{graph}", BUDGET_S, body) > 50


# -- state mutations ------------------------------------------------------------------------------


def _random_json(rng: random.Random, depth: int = 0) -> object:
    kind = rng.randrange(10 if depth < 3 else 7)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 1, 2**64, 2**70, 7, 65536, 10**400])
    if kind == 3:
        return rng.choice([0.5, 1.0, 32.0, -0.0, 1e308])
    if kind == 4:
        return rng.choice(["", "zz", "00" * 32, "ff" * 66, "x" * 5000, "é", "12"])
    if kind == 5:
        return rng.randbytes(rng.choice([16, 32, 33, 66])).hex()
    if kind == 6:
        return []
    if kind == 7:
        return [_random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    if kind == 8:
        return {str(rng.randint(0, 9)): _random_json(rng, depth + 1) for _ in range(3)}
    return [[rng.randint(0, 2**64), _random_json(rng, depth + 1)]]


def _mutate_state(rng: random.Random, raw: bytes, pool: list[bytes]) -> object:
    kind = rng.randrange(8)
    if kind == 0:
        return _mutate_bytes(rng, raw, pool)
    if kind == 1:  # deep nesting
        depth = rng.choice([100, 5000, 200000])
        return rng.choice([b"[" * depth + b"]" * depth, b'{"a":' * depth + b"1" + b"}" * depth])
    state = json.loads(raw)
    key = rng.choice(sorted(state))
    value = state[key]
    if kind == 2:
        state[key] = _random_json(rng)
    elif kind == 3:
        del state[key]
    elif kind == 4:
        state[rng.choice(["extra", key + "_", "V"])] = _random_json(rng)
    elif kind == 5 and isinstance(value, list) and value:  # drop / duplicate / reorder entries
        i = rng.randrange(len(value))
        op = rng.randrange(3)
        if op == 0:
            del value[i]
        elif op == 1:
            value.insert(i, value[i])
        else:
            rng.shuffle(value)
    elif kind == 6 and isinstance(value, list) and value:  # corrupt inside an entry
        i = rng.randrange(len(value))
        entry = value[i]
        if isinstance(entry, list) and entry:
            entry[rng.randrange(len(entry))] = _random_json(rng)
        else:
            value[i] = _random_json(rng)
    else:  # swap in a value of another phase's state
        other = json.loads(rng.choice(pool))
        state[key] = other.get(key)
    return json.dumps(state).encode()


@pytest.mark.parametrize("graph", ROUNDS)
def test_fuzzed_restore_only_ever_aborts_and_a_restored_client_never_crashes(graph):
    rec = ROUNDS[graph]
    h = rec.h
    inputs = h.inputs()
    states = list(rec.states.values())

    def body(rng: random.Random) -> None:
        (phase, node), raw = rng.choice(list(rec.states.items()))
        data = _mutate_state(rng, raw, states)
        client = _typed(
            lambda: SecAggClient.restore(
                data,  # type: ignore[arg-type]
                identity_key=h.keys[node],
                roster=h.roster,
                policy=h.policy(),
            )
        )
        if isinstance(client, SecAggClient) and client.phase not in (
            ClientPhase.DONE,
            ClientPhase.ABORTED,
        ):
            # whatever restore accepted, handle() meets no inconsistent state
            x = inputs[node] if client.needs_input else None
            req = rec.requests.get((phase, node), b"")
            _typed(lambda: client.handle(req, input_vector=x))

    assert _run(f"restore/{graph}", BUDGET_S, body) > 100


# -- issue 14, F3: the named cases ---------------------------------------------------------------


def _restore(h: Harness, state: object, node: int | None = None) -> SecAggClient:
    node = h.ids[0] if node is None else node
    return SecAggClient.restore(
        state,  # type: ignore[arg-type]
        identity_key=h.keys[node],
        roster=h.roster,
        policy=h.policy(),
    )


def _state_at(rec: Recorded, phase: ServerPhase, node: int) -> dict:
    return json.loads(rec.states[(phase, node)])


@pytest.mark.parametrize(
    "state",
    [
        b"[]",
        b"1",
        "a str",
        b"",
        b"null",
        b"\xff\xfe",
        b"{}",
        b"[" * 100_000 + b"]" * 100_000,
        b'{"v": 2.0}',
        None,
        12,
    ],
    ids=repr,
)
def test_f3_malformed_restored_states_are_typed_aborts(state):
    h = ROUNDS["complete"].h
    with pytest.raises(ProtocolAbort, match="state"):
        _restore(h, state)


def test_f3_advert_row_of_wrong_shape_is_a_typed_abort():
    rec = ROUNDS["complete"]
    node = rec.h.ids[0]
    state = _state_at(rec, ServerPhase.MASKED_INPUT, node)
    state["adverts"] = [[]]
    with pytest.raises(ProtocolAbort, match="field adverts"):
        _restore(rec.h, json.dumps(state).encode(), node)


@pytest.mark.parametrize("graph", ROUNDS)
@pytest.mark.parametrize("which", ["b_shares", "sk_shares"])
def test_f3_restored_state_with_a_share_missing_is_refused_at_restore(graph, which):
    """Before the fix this state restored, and handle() then raised KeyError (so the Flower
    mod, which clears state only on ProtocolAbort, kept the secrets in the node's context)."""
    rec = ROUNDS[graph]
    node = rec.h.ids[0]
    state = _state_at(rec, ServerPhase.UNMASK, node)
    assert len(state[which]) >= 2
    state[which] = state[which][1:] if state[which][0][0] != node else state[which][:1]
    with pytest.raises(ProtocolAbort, match="inconsistent .*shares do not match U2"):
        _restore(rec.h, json.dumps(state).encode(), node)


@pytest.mark.parametrize("graph", ROUNDS)
def test_restore_round_trips_and_finishes_the_round_at_every_phase(graph):
    """Restoring before every request (as the Flower mod does) gives the exact sum; every
    intermediate state re-exports to the same bytes."""
    rec = ROUNDS[graph]
    h = rec.h
    server, inputs = h.server(), h.inputs()
    states = {node: SecAggClient(**_client_kw(h, node)).export_state() for node in h.ids}
    out = server.start()
    while out:
        for node, req in out.items():
            c = _restore(h, states[node], node)
            assert c.export_state() == states[node]
            reply = c.handle(req, input_vector=inputs[node] if c.needs_input else None)
            states[node] = c.export_state()
            server.receive(node, reply)
        out = server.advance()
    assert np.array_equal(server.result.vector, ring_sum(inputs, h.ids))


def _client_kw(h: Harness, node: int) -> dict:
    from .conftest import DeterministicBytes

    return dict(
        node_id=node,
        identity_key=h.keys[node],
        roster=h.roster,
        policy=h.policy(),
        session_id=h.session_id,
        round_id=h.round_id,
        random_bytes=DeterministicBytes(f"restore/{node}"),
    )


def test_restore_refuses_another_nodes_state_and_bad_local_arguments():
    rec = ROUNDS["complete"]
    h = rec.h
    a, b = h.ids[0], h.ids[1]
    with pytest.raises(ProtocolAbort, match="not this identity"):
        _restore(h, rec.states[(ServerPhase.SHARE_KEYS, a)], b)
    good = rec.states[(ServerPhase.SHARE_KEYS, a)]
    with pytest.raises(ConfigError):
        SecAggClient.restore(good, identity_key=h.keys[a], roster=[1, 2], policy=h.policy())
    with pytest.raises(ConfigError):
        SecAggClient.restore(good, identity_key=b"k", roster=h.roster, policy=h.policy())
    with pytest.raises(ConfigError):
        SecAggClient.restore(good, identity_key=h.keys[a], roster=h.roster, policy=None)


def test_restored_state_with_keys_of_another_phase_is_refused():
    """Values that are each well formed but belong to different phases do not combine."""
    rec = ROUNDS["secagg+"]
    node = rec.h.ids[0]
    early = _state_at(rec, ServerPhase.REVEAL_SEED, node)
    late = _state_at(rec, ServerPhase.CONSISTENCY_CHECK, node)
    for key in ("u2", "adverts", "graph_seed", "self_seed", "survivors", "u1_digest"):
        mixed = dict(early, **{key: late[key]})
        if mixed == early:
            continue
        with pytest.raises(ProtocolAbort, match="inconsistent"):
            _restore(rec.h, json.dumps(mixed).encode(), node)
