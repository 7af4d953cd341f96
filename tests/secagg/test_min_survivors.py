"""Distributed DP relies on the sum holding at least t masked inputs (the t its noise was sized
for). Honest clients enforce it themselves (ClientPolicy.min_survivors): a server that starts a
round with fewer participants, or drops clients so that fewer masked inputs survive, gets no
consistency signature and no unmasking share — so the noise in any unmasked sum is never smaller
than the accounting assumed."""

from __future__ import annotations

import numpy as np
import pytest

from securefvpa.errors import ConfigError
from securefvpa.secagg import ServerPhase

from .conftest import Harness, assert_aborts, drive, ring_sum  # noqa: F401


def test_a_round_with_enough_survivors_completes():
    h = Harness(n=8, d=5)
    clients = h.clients(policy=h.policy(min_survivors=6))
    inputs = h.inputs()
    out = drive(h.server(), clients, inputs, drop={ServerPhase.MASKED_INPUT: {h.ids[0], h.ids[1]}})
    np.testing.assert_array_equal(out, ring_sum(inputs, h.ids[2:]))


def test_clients_refuse_to_unmask_when_fewer_masked_inputs_survived():
    """The protocol's own threshold (ceil(0.6 * 8) = 5) would let this round through with 5
    survivors; the distributed-DP minimum of 6 stops every honest client at the consistency
    check, before any unmasking share leaves it."""
    h = Harness(n=8, d=5)
    server, clients, inputs = h.server(), h.clients(policy=h.policy(min_survivors=6)), h.inputs()
    dropped = set(h.ids[:3])
    out = server.start()
    while server.phase is not ServerPhase.CONSISTENCY_CHECK:
        for node, req in out.items():
            if server.phase is ServerPhase.MASKED_INPUT and node in dropped:
                continue
            c = clients[node]
            server.receive(
                node, c.handle(req, input_vector=inputs[node] if c.needs_input else None)
            )
        out = server.advance()
    assert sorted(out) == sorted(set(h.ids) - dropped)  # 5 survivors asked to sign
    for node, request in out.items():
        assert_aborts(clients[node], request, "only 5 masked inputs survived")


def test_clients_refuse_a_round_with_too_few_participants():
    h = Harness(n=8, d=5)
    small = Harness(n=8, d=5)
    server = small.server(participants=small.ids[:4])
    clients = small.clients(policy=small.policy(min_survivors=6))
    request = server.start()[small.ids[0]]
    assert_aborts(clients[small.ids[0]], request, "participant count 4")
    assert h.policy(min_survivors=0).min_survivors == 0


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_bad_minimum_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="min_survivors"):
        Harness(n=4, d=3).policy(min_survivors=bad)
