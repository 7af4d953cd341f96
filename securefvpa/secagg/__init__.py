"""Transport-independent secure aggregation: Bonawitz et al. 2017 with the SecAgg+ graph.

Protocol: Bonawitz et al. 2017, "Practical Secure Aggregation for Privacy-Preserving Machine
Learning" (CCS), Fig. 4 (the version secure against a malicious server: signed keys and a
consistency check), with the sparse neighbour graph of Bell et al. 2020, "Secure Single-Server
Aggregation with (Poly)Logarithmic Overhead" (CCS) when ``degree > 0``. The package imports
neither torch nor flwr; a transport only moves bytes.

Roles and the message flow of one round (``u`` a client, ``H(u)`` its neighbours + itself)::

    server                                              client u
    start()            -- AdvertiseKeysRequest -->      handle(): fresh X25519 keys c_u, s_u and
                          (params, participants)        a commitment to a fresh 32-byte r_u,
                                                        signed (Ed25519) with the round context
    receive()/advance() <-- AdvertiseKeysReply --
      SecAgg+ only:    -- RevealSeedRequest  -->        check own commitment is in U1; keep a
                          (commitments of all U1)       digest of U1; reveal r_u
                       <-- RevealSeedReply   --
                       -- ShareKeysRequest  -->         reveals must open exactly U1 (else abort);
                          (reveals of U1, signed keys   seed = H(all reveals) -> own neighbours;
                           of H(u)∩U1)                  verify signatures; Shamir-share b_u and
                                                        s_u^SK; AES-GCM seal per neighbour
                       <-- ShareKeysReply   --
                       -- MaskedInputRequest -->        handle(req, input_vector=x_u):
                          (sealed shares for u, U2)     y_u = x_u + PRG(b_u) +- sum PRG(s_uv)
                       <-- MaskedInputReply --
                       -- ConsistencyRequest -->        check and sign the survivor list U3
                       <-- ConsistencyReply --
                       -- UnmaskRequest     -->         verify >= t signatures; reveal b-shares of
                          (signatures, alive, dropped)  alive and s-shares of dropped neighbours
                       <-- UnmaskReply      --
    advance() -> {}; server.result.vector = sum_{u in U3} x_u  (exact, in Z_{2^bits})

Five request/reply exchanges with the complete graph (``degree = 0``), six with the SecAgg+
graph: the graph seed is derived by commit-then-reveal among the clients, so the server cannot
choose who is whose neighbour (threat_models/secagg.md explains why a seed that is a hash of the
advertisements alone would still be grindable).

Transport contract::

    server = SecAggServer(session_id=sid, round_id=r, participants=ids, vector_length=d + 1,
                          bits=32, degree=0, threshold_fraction=0.6, roster=roster)
    out = server.start()
    while out:                                   # one exchange per phase
        replies = send_and_receive(out)          # {node_id: bytes}; a missing node = dropped
        for node_id, data in replies.items():
            server.receive(node_id, data)        # never raises on client bytes
        out = server.advance()                   # raises ProtocolAbort if too few survive

    client = SecAggClient(node_id=i, identity_key=sk_i, roster=roster,
                          policy=ClientPolicy(vector_length=d + 1, bits=32, degree=0,
                                              threshold_fraction=0.6),
                          session_id=sid, round_id=r)
    reply = client.handle(request_bytes)                       # every other phase
    reply = client.handle(request_bytes, input_vector=encode(x, spec, weight=w))   # masked input
    # client.needs_input / peek_type(request_bytes) tell which request is the masked-input one.

A transport that keeps a client's input across protocol instances counts them with
:func:`admit_instance` (at most :data:`MAX_INSTANCES_PER_INPUT` per input), so a server cannot
re-roll the graph by aborting. Every entry point that takes bytes or stored state
(``SecAggServer.receive``, ``SecAggClient.handle``, ``SecAggClient.restore``, ``parse``) raises
nothing but :class:`~securefvpa.errors.ProtocolAbort` (or returns False), and
:class:`~securefvpa.errors.ConfigError` for bad local arguments.

Inputs are vectors of Z_{2^bits} produced by :mod:`securefvpa.secagg.quantization` (which
appends the weight, hence ``d + 1``); decode ``server.result.vector`` with
``decode_weighted_mean(vector, spec, len(result.contributors))``.

``session_id`` (32 bytes) and ``round_id`` are supplied to both sides by the caller (e.g.
SHA-256 of the run id and the server round); the ``roster`` (node id -> Ed25519 public key)
is distributed out of band. Everything random comes from ``os.urandom`` unless a
``random_bytes`` callable is injected (tests only).
"""

from __future__ import annotations

from securefvpa.secagg.client import (
    MAX_INSTANCES_PER_INPUT,
    ClientPhase,
    ClientPolicy,
    SecAggClient,
    admit_instance,
    load_roster,
)
from securefvpa.secagg.graph import colluder_risk, default_degree, neighbour_graph, threshold_for
from securefvpa.secagg.messages import MalformedMessage, MessageType, parse, peek_type
from securefvpa.secagg.quantization import (
    FixedPointSpec,
    decode_sum,
    decode_weighted_mean,
    encode,
)
from securefvpa.secagg.server import AggregationResult, SecAggServer, ServerPhase

__all__ = [
    "MAX_INSTANCES_PER_INPUT",
    "AggregationResult",
    "ClientPhase",
    "ClientPolicy",
    "FixedPointSpec",
    "MalformedMessage",
    "MessageType",
    "SecAggClient",
    "SecAggServer",
    "ServerPhase",
    "admit_instance",
    "colluder_risk",
    "decode_sum",
    "decode_weighted_mean",
    "default_degree",
    "encode",
    "load_roster",
    "neighbour_graph",
    "parse",
    "peek_type",
    "threshold_for",
]
