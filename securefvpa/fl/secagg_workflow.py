"""Secure FedAvg on the server: one round of training, then the secure-aggregation protocol.

Stage 1 sends the global parameters with ``secagg-stage = "train"``: sampled clients train and
keep their update (see ``secagg_mod``). Stage 2 drives ``securefvpa.secagg.SecAggServer`` over
the clients that trained: five request/reply exchanges of protocol bytes, each a Flower
``train`` message. A client that fails or times out in any phase is a dropout; the protocol
recovers the sum of the survivors when at least the threshold remain and aborts otherwise.
The server only ever holds masked vectors and the final ring sum, decoded into the weighted
mean ``sum_i w_i delta_i / sum_i w_i`` over the clients whose masked input was summed.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING

import numpy as np

from securefvpa.errors import FederationError, ProtocolAbort
from securefvpa.fl.messages import (
    config_value,
    get_record,
    make_content,
)
from securefvpa.fl.secagg_mod import fixed_point_spec, session_id, unflatten
from securefvpa.secagg import SecAggServer
from securefvpa.secagg.graph import MIN_PARTICIPANTS
from securefvpa.secagg.quantization import decode_weighted_mean

if TYPE_CHECKING:
    from securefvpa.fl.server_app import NodeInfo, RoundOutcome, ServerLoop

log = logging.getLogger("securefvpa.fl.secagg")

_SESSION_NONCE = os.urandom(16).hex()  # a fresh protocol session per server process


def secure_fedavg(
    loop: ServerLoop, rnd: int, sampled: list[NodeInfo], params: dict[str, np.ndarray]
) -> RoundOutcome:
    from securefvpa.fl.driver import read_manifest
    from securefvpa.fl.secagg_keys import load_roster, roster_path
    from securefvpa.fl.server_app import train_and_collect

    cfg = loop.cfg
    t0 = time.perf_counter()
    base = loop.base_config(rnd) | {"secagg": True}
    content = make_content(arrays=params, config=base | {"secagg-stage": "train"})
    ok, out = train_and_collect(loop, rnd, sampled, content)
    ready = [node for node, _ in ok]
    train_seconds = time.perf_counter() - t0
    if len(ready) < max(MIN_PARTICIPANTS, cfg.federation.min_fit_clients):
        log.warning(
            "round %d: %d clients trained; secure aggregation needs at least %d",
            rnd,
            len(ready),
            max(MIN_PARTICIPANTS, cfg.federation.min_fit_clients),
        )
        return out

    manifest = read_manifest(loop.run_dir)
    spec = fixed_point_spec(cfg, manifest)
    d = int(sum(v.size for v in params.values()))
    node_of = {n.partition_id: n for n in ready}
    pid_of = {n.node_id: n.partition_id for n in ready}
    sid = session_id(loop.cfg_hash, _SESSION_NONCE)
    server = SecAggServer(
        session_id=sid,
        round_id=rnd,
        participants=sorted(node_of),
        vector_length=d + 1,
        bits=cfg.secagg.bits,
        degree=cfg.secagg.degree,
        threshold_fraction=cfg.secagg.threshold,
        roster=load_roster(roster_path(loop.run_dir)),
    )
    requests = server.start()
    phases = 0
    try:
        while requests:
            phases += 1
            msgs = []
            for pid, data in requests.items():
                cfg_values = base | {
                    "secagg-stage": "protocol",
                    "secagg-payload": data,
                    "secagg-session": sid.hex(),
                }
                msgs.append(loop.message(node_of[pid], "train", make_content(config=cfg_values)))
            for r in loop.send(msgs):
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
                server.receive(
                    pid,
                    config_value(get_record(r.content, "reply", "config"), "secagg-payload", bytes),
                )
            requests = server.advance()
    except ProtocolAbort as exc:
        raise FederationError(f"round {rnd}: secure aggregation aborted: {exc}") from exc
    result = server.result
    contributors = sorted(result.contributors)
    mean = decode_weighted_mean(result.vector, spec, len(contributors))
    out.mean_update = {
        k: np.asarray(v, dtype=np.float64) for k, v in unflatten(mean, params).items()
    }
    out.trained = contributors
    out.failed += [p for p in node_of if p not in contributors]
    out.extra = {
        "secagg": {
            "contributors": len(contributors),
            "phases": phases,
            "train_seconds": train_seconds,
            "protocol_seconds": time.perf_counter() - t0 - train_seconds,
            "bytes_sent": server.bytes_sent,
            "bytes_received": server.bytes_received,
            "scale": spec.scale,
        }
    }
    return out
