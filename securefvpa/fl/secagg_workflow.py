"""Secure FedAvg on the server: one round of training, then the secure-aggregation protocol.

Stage 1 sends the global parameters with ``secagg-stage = "train"`` and, in the same message,
the protocol's advertise-keys request: sampled clients train, keep their update (see
``secagg_mod``) and answer the request with their training reply. Stage 2 drives
``securefvpa.secagg.SecAggServer`` on: request/reply exchanges of protocol bytes, each a Flower
``train`` message — 4 after training with the complete graph (share keys, masked input,
consistency check, unmask), 5 with SecAgg+ (reveal seed first). If fewer adverts than the
threshold come back (clients declined or failed training), a fresh instance over the clients
that trained advertises its keys in an exchange of its own. A client that fails or times out in any phase is a dropout; the protocol recovers the
sum of the survivors when at least the threshold remain and aborts otherwise. The server only
ever holds masked vectors and the final ring sum, decoded into the weighted mean
``sum_i w_i u_i / sum_i w_i`` over the clients whose masked input was summed.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Protocol, cast

import numpy as np
from flwr.app import Message, RecordDict

from securefvpa.config import RunConfig
from securefvpa.errors import FederationError, ProtocolAbort
from securefvpa.fl.wire import (
    ARRAYS,
    MSG_TRAIN,
    REPLY,
    SECAGG_REPLY,
    STAGE_PROTOCOL,
    STAGE_TRAIN,
    Instruction,
    ProtocolReply,
    error_reason,
    get_config,
    make_content,
)
from securefvpa.rounds.encoding import RoundCodec, session_id, vector_length
from securefvpa.rounds.engine import NodeInfo, RoundOutcome
from securefvpa.rundir import Manifest
from securefvpa.secagg import AggregationResult, SecAggServer
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
    codec = t.codec
    d = vector_length(params)
    base = Instruction(round=rnd, attempt=attempt, config_hash=t.cfg_hash, secagg=True)
    minimum = max(MIN_PARTICIPANTS, cfg.federation.min_fit_clients)
    sid = session_id(t.cfg_hash, _SESSION_NONCE)

    def new_server(session: bytes, participants: list[int]) -> SecAggServer:
        return SecAggServer(
            session_id=session,
            round_id=rnd,
            participants=participants,
            vector_length=codec.vector_length(d),
            bits=cfg.secagg.bits,
            degree=cfg.secagg.degree,
            threshold_fraction=cfg.secagg.threshold,
            roster=t.roster,
        )

    # The key advertisement rides on the training exchange (one exchange fewer): every sampled
    # node gets its advertise-keys request with the parameters; a node that trained answers it
    # with its training reply. A node that declines or fails sends no advert (a dropout there).
    enough = len(sampled) >= minimum
    server = new_server(sid, sorted(n.partition_id for n in sampled)) if enough else None
    adverts = server.start() if server is not None else {}
    arrays = make_content(arrays=params).array_records[ARRAYS]  # one copy for every message

    def train_content(node: NodeInfo) -> RecordDict:
        ins = {**base.__dict__, "secagg_stage": STAGE_TRAIN}
        if node.partition_id in adverts:
            ins |= {"secagg_payload": adverts[node.partition_id], "secagg_session": sid.hex()}
        content = make_content(config=Instruction(**ins))
        content.array_records[ARRAYS] = arrays
        return content

    ok, out = t.train_and_collect(rnd, sampled, train_content)
    ready = [node for node, _, _ in ok]
    train_seconds = time.perf_counter() - t0
    if server is None or len(ready) < minimum:
        log.warning(
            "round %d: %d clients trained; secure aggregation needs at least %d",
            rnd,
            len(ready),
            minimum,
        )
        return out

    node_of = {n.partition_id: n for n in ready}
    pid_of = {n.node_id: n.partition_id for n in ready}
    for node, r, _ in ok:
        try:
            advert = get_config(r.content, SECAGG_REPLY, ProtocolReply).secagg_payload
        except FederationError as exc:
            log.warning("round %d: client %d sent no key advert: %s", rnd, node.partition_id, exc)
            continue
        server.receive(node.partition_id, advert)
    try:
        requests = server.advance()
    except ProtocolAbort as exc:
        # Fewer adverts than the sampled set's threshold (clients declined or failed training):
        # a fresh instance (new session, new keys) over the nodes that trained, whose keys are
        # then advertised in an exchange of their own, as before.
        log.info("round %d: %s; secure aggregation re-keyed over %d nodes", rnd, exc, len(ready))
        sid = session_id(t.cfg_hash, f"{_SESSION_NONCE}:re-keyed")
        server = new_server(sid, sorted(node_of))
        requests = server.start()
    phases = 0
    phase_seconds: list[float] = []  # wall time of each protocol exchange, send to advance
    try:
        while requests:
            phases += 1
            t_phase = time.perf_counter()
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
                        error_reason(r),
                    )
                    continue
                try:
                    payload = get_config(r.content, REPLY, ProtocolReply).secagg_payload
                except FederationError as exc:
                    log.warning("round %d: client %d sent a malformed reply: %s", rnd, pid, exc)
                    continue
                server.receive(pid, payload)
            requests = server.advance()
            phase_seconds.append(time.perf_counter() - t_phase)
    except ProtocolAbort as exc:
        raise FederationError(f"round {rnd}: secure aggregation aborted: {exc}") from exc
    result = cast(AggregationResult, server.result)  # advance() returned {}: result is set
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
            "phases": phases,  # protocol exchanges after the training exchange
            "phase_seconds": phase_seconds,
            "train_seconds": train_seconds,
            "protocol_seconds": time.perf_counter() - t0 - train_seconds,
            "bytes_sent": server.bytes_sent,
            "bytes_received": server.bytes_received,
        }
        | stats
    }
    return out
