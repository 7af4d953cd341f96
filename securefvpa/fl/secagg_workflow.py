"""Secure FedAvg on the server: one round of training, then the secure-aggregation protocol.

Stage 1 sends the global parameters with ``secagg-stage = "train"``: sampled clients train and
keep their update (see ``secagg_mod``). Stage 2 drives ``securefvpa.secagg.SecAggServer`` over
the clients that trained: request/reply exchanges of protocol bytes, each a Flower ``train``
message. A client that fails or times out in any phase is a dropout; the protocol recovers the
sum of the survivors when at least the threshold remain and aborts otherwise. The server only
ever holds masked vectors and the final ring sum, decoded into the weighted mean
``sum_i w_i u_i / sum_i w_i`` over the clients whose masked input was summed.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Protocol

import numpy as np
from flwr.app import Message

from securefvpa.config import RunConfig
from securefvpa.errors import FederationError, ProtocolAbort
from securefvpa.fl.wire import (
    MSG_TRAIN,
    REPLY,
    STAGE_PROTOCOL,
    STAGE_TRAIN,
    Instruction,
    ProtocolReply,
    get_config,
    make_content,
)
from securefvpa.rounds.encoding import RoundCodec, session_id, vector_length
from securefvpa.rounds.engine import NodeInfo, RoundOutcome
from securefvpa.rundir import Manifest
from securefvpa.secagg import SecAggServer
from securefvpa.secagg.graph import MIN_PARTICIPANTS


class SecureTransport(Protocol):
    """What the secure round needs from the server's transport (``server_app.FlowerTransport``,
    which imports this module; this module never imports it)."""

    cfg: RunConfig
    cfg_hash: str
    manifest: Manifest
    roster: Any
    codec: RoundCodec

    def units_of(self, partition_id: int) -> int: ...

    def send(self, messages: list[Message]) -> list[Message]: ...

    def message(self, node: NodeInfo, message_type: str, content: Any) -> Message: ...

    def train_and_collect(
        self, rnd: int, sampled: list[NodeInfo], content: Any
    ) -> tuple[list[tuple[NodeInfo, Message, Any]], RoundOutcome]: ...


log = logging.getLogger("securefvpa.fl.secagg")

_SESSION_NONCE = os.urandom(16).hex()  # a fresh protocol session per server process


def secure_train_round(
    t: SecureTransport,
    rnd: int,
    attempt: int,
    sampled: list[NodeInfo],
    params: dict[str, np.ndarray],
) -> RoundOutcome:
    cfg = t.cfg
    t0 = time.perf_counter()
    base = Instruction(round=rnd, attempt=attempt, config_hash=t.cfg_hash, secagg=True)
    train_ins = Instruction(**{**base.__dict__, "secagg_stage": STAGE_TRAIN})
    ok, out = t.train_and_collect(rnd, sampled, make_content(arrays=params, config=train_ins))
    ready = [node for node, _, _ in ok]
    train_seconds = time.perf_counter() - t0
    minimum = max(MIN_PARTICIPANTS, cfg.federation.min_fit_clients)
    if len(ready) < minimum:
        log.warning(
            "round %d: %d clients trained; secure aggregation needs at least %d",
            rnd,
            len(ready),
            minimum,
        )
        return out

    codec = t.codec
    d = vector_length(params)
    node_of = {n.partition_id: n for n in ready}
    pid_of = {n.node_id: n.partition_id for n in ready}
    sid = session_id(t.cfg_hash, _SESSION_NONCE)
    server = SecAggServer(
        session_id=sid,
        round_id=rnd,
        participants=sorted(node_of),
        vector_length=codec.vector_length(d),
        bits=cfg.secagg.bits,
        degree=cfg.secagg.degree,
        threshold_fraction=cfg.secagg.threshold,
        roster=t.roster,
    )
    requests = server.start()
    phases = 0
    try:
        while requests:
            phases += 1
            msgs = [
                t.message(
                    node_of[pid],
                    MSG_TRAIN,
                    make_content(
                        config=Instruction(
                            **{
                                **base.__dict__,
                                "secagg_stage": STAGE_PROTOCOL,
                                "secagg_payload": data,
                                "secagg_session": sid.hex(),
                            }
                        )
                    ),
                )
                for pid, data in requests.items()
            ]
            for r in t.send(msgs):
                pid = pid_of.get(r.metadata.src_node_id)
                if pid is None:
                    continue
                if r.has_error():
                    log.warning(
                        "round %d: client %d dropped in secure aggregation: %s",
                        rnd,
                        pid,
                        r.error.reason[:200],
                    )
                    continue
                try:
                    payload = get_config(r.content, REPLY, ProtocolReply).secagg_payload
                except FederationError as exc:
                    log.warning("round %d: client %d sent a malformed reply: %s", rnd, pid, exc)
                    continue
                server.receive(pid, payload)
            requests = server.advance()
    except ProtocolAbort as exc:
        raise FederationError(f"round {rnd}: secure aggregation aborted: {exc}") from exc
    result = server.result
    contributors = sorted(result.contributors)
    out.mean_update, stats = codec.decode(
        result.vector,
        like=params,
        units=[t.units_of(pid) for pid in contributors],
        rnd=rnd,
        attempt=attempt,
    )
    out.trained = contributors
    out.failed += [p for p in node_of if p not in contributors]
    out.extra = {
        "secagg": {
            "contributors": len(contributors),
            "threshold": server.threshold,
            "participants": len(node_of),
            "phases": phases,
            "train_seconds": train_seconds,
            "protocol_seconds": time.perf_counter() - t0 - train_seconds,
            "bytes_sent": server.bytes_sent,
            "bytes_received": server.bytes_received,
        }
        | stats
    }
    return out
