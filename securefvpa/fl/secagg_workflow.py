"""Secure FedAvg on the server: the secure-aggregation protocol with training inside it.

``securefvpa.secagg.SecAggServer`` is driven over request/reply exchanges of protocol bytes,
each a Flower ``train`` message: advertise keys, (SecAgg+) reveal the graph seed, share keys;
then the one exchange that carries the parameters (``secagg-stage = "train"``), with each
node's masked-input request — sampled clients train and answer with their update masked;
then the consistency check and unmasking. So 4 protocol exchanges besides the training
exchange with the complete graph, 5 with SecAgg+, and only the training exchange carries
megabyte vectors (before, the masked input was an exchange of its own after training).
Nothing trains — no privacy budget is spent — until the keys and shares are in place, so a
server that aborts there costs clients nothing. A client that fails, declines (budget) or times
out in any phase is a dropout; the protocol recovers the sum of the survivors when at least the
threshold remain and aborts otherwise. The server only ever holds masked vectors and the final
ring sum, decoded into the weighted mean ``sum_i w_i u_i / sum_i w_i`` over the clients whose
masked input was summed.
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
    STATUS_DECLINED,
    Instruction,
    ProtocolReply,
    TrainReply,
    error_reason,
    get_config,
    make_content,
)
from securefvpa.rounds.encoding import RoundCodec, session_id, vector_length
from securefvpa.rounds.engine import NodeInfo, RoundOutcome
from securefvpa.rundir import Manifest
from securefvpa.secagg import AggregationResult, SecAggServer
from securefvpa.secagg.graph import MIN_PARTICIPANTS
from securefvpa.secagg.server import ServerPhase


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


def round_session(
    cfg_hash: str, rnd: int, attempt: int, *, without_declined: bool = False
) -> bytes:
    """The protocol session of one round attempt (32 bytes): fresh per server process, round,
    attempt and restart, so signed advertisements and seed reveals of one are refused in any
    other (the clients bind every signature to the session)."""
    tail = ":without-declined" if without_declined else ""
    return session_id(cfg_hash, f"{_SESSION_NONCE}:{rnd}:{attempt}{tail}")


def _declined(reply: Message) -> bool:
    """True for a node's budget refusal at the advertisement (a ``TrainReply``, not protocol
    bytes; FederationError when it is malformed)."""
    rec = reply.content.config_records.get(REPLY)
    if rec is None or "status" not in rec:
        return False
    return TrainReply.from_record(rec).status == STATUS_DECLINED


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
    sid = round_session(t.cfg_hash, rnd, attempt)
    if len(sampled) < minimum:
        log.warning(
            "round %d: %d clients sampled; secure aggregation needs at least %d",
            rnd,
            len(sampled),
            minimum,
        )
        return RoundOutcome(mean_update=None, failed=[n.partition_id for n in sampled])
    node_of = {n.partition_id: n for n in sampled}
    pid_of = {n.node_id: n.partition_id for n in sampled}
    phase_names: list[str] = []
    phase_seconds: list[float] = []  # wall time of each protocol exchange, send to advance
    declined: list[int] = []  # budget refusals, at the advertisement (nothing trained)

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

    server = new_server(sid, sorted(node_of))

    def instruction(**secagg: Any) -> Instruction:
        return Instruction(**{**base.__dict__, "secagg_session": sid.hex(), **secagg})

    def exchange(requests: dict[int, bytes], *, stop_on_decline: bool = False) -> dict[int, bytes]:
        """One protocol exchange (no training): send the requests, offer the replies, advance.
        A node that declines for budget at the advertisement is listed in ``declined`` (a
        dropout); with ``stop_on_decline`` the phase is then left open and {} returned."""
        t_phase = time.perf_counter()
        before = len(declined)
        advertising = server.phase is ServerPhase.ADVERTISE_KEYS
        phase_names.append(server.phase.value)
        msgs = [
            t.message(
                node_of[pid],
                MSG_TRAIN,
                make_content(config=instruction(secagg_stage=STAGE_PROTOCOL, secagg_payload=data)),
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
                if advertising and _declined(r):
                    declined.append(pid)
                    continue
                payload = get_config(r.content, REPLY, ProtocolReply).secagg_payload
            except FederationError as exc:
                log.warning("round %d: client %d sent a malformed reply: %s", rnd, pid, exc)
                continue
            server.receive(pid, payload)
        nxt = {} if stop_on_decline and len(declined) > before else server.advance()
        phase_seconds.append(time.perf_counter() - t_phase)
        return nxt

    try:
        # Keys (and, with SecAgg+, the graph seed's reveal) and shares before anyone trains:
        # small messages, and a server that aborts here has spent no client's privacy budget.
        requests = exchange(server.start(), stop_on_decline=True)
        if declined:
            # Clients out of budget declined at the advertisement: a fresh instance (new
            # session, new keys) over the others, so the threshold is theirs; nobody trained.
            others = sorted(p for p in node_of if p not in declined)
            log.info("round %d: %d clients declined (budget)", rnd, len(declined))
            if len(others) < minimum:
                return RoundOutcome(mean_update=None, declined=sorted(declined))
            sid = round_session(t.cfg_hash, rnd, attempt, without_declined=True)
            server = new_server(sid, others)
            requests = exchange(server.start())
        while requests and server.phase is not ServerPhase.MASKED_INPUT:
            requests = exchange(requests)
    except ProtocolAbort as exc:
        raise FederationError(f"round {rnd}: secure aggregation aborted: {exc}") from exc

    # The training exchange carries the masked-input request: each node trains and answers
    # with its update masked (one exchange of megabyte vectors per round, not two; the plain
    # vector never waits on the node between messages).
    t_train = time.perf_counter()
    arrays = make_content(arrays=params).array_records[ARRAYS]  # one copy for every message

    def train_content(node: NodeInfo) -> RecordDict:
        ins = instruction(secagg_stage=STAGE_TRAIN, secagg_payload=requests[node.partition_id])
        content = make_content(config=ins)
        content.array_records[ARRAYS] = arrays
        return content

    asked = [node_of[pid] for pid in requests]
    ok, out = t.train_and_collect(rnd, asked, train_content)
    out.declined += declined
    # dropped before training (not declined)
    out.failed += [p for p in node_of if p not in requests and p not in declined]
    masked = []
    for node, r, _ in ok:
        try:
            data = get_config(r.content, SECAGG_REPLY, ProtocolReply).secagg_payload
        except FederationError as exc:
            log.warning("round %d: client %d sent no masked input: %s", rnd, node.partition_id, exc)
            continue
        if server.receive(node.partition_id, data):
            masked.append(node.partition_id)
    out.failed += [n.partition_id for n, _, _ in ok if n.partition_id not in masked]
    train_seconds = time.perf_counter() - t_train
    if len(masked) < server.threshold:
        # Too few masked inputs to unmask (clients failed, or declined at training): nothing
        # is aggregated, and the masked inputs count as failed updates, so the engine fails
        # the round (--resume re-runs it) rather than skipping it as a budget end.
        out.failed += masked
        log.warning(
            "round %d: %d masked inputs; secure aggregation needs at least %d",
            rnd,
            len(masked),
            server.threshold,
        )
        return out
    try:
        requests = server.advance()
        while requests:
            requests = exchange(requests)
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
    out.failed += [p for p in masked if p not in contributors]
    out.extra = {
        "secagg": {
            "contributors": len(contributors),
            "threshold": server.threshold,
            "participants": len(node_of),
            "phases": len(phase_seconds),  # protocol exchanges besides the training exchange
            "phase_names": phase_names,  # the phase each exchange collected replies for
            "phase_seconds": phase_seconds,
            "train_seconds": train_seconds,  # the training exchange (with the masked input)
            "protocol_seconds": time.perf_counter() - t0 - train_seconds,
            "bytes_sent": server.bytes_sent,
            "bytes_received": server.bytes_received,
        }
        | stats
    }
    return out
