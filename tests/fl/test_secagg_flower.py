"""Secure aggregation through Flower: same result as plaintext FedAvg, dropouts recovered."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message
from flwr.clientapp import ClientApp

from securefvpa.config import load_config
from securefvpa.data.load import load_dataset
from securefvpa.fl import launch
from securefvpa.fl.client_app import client_handlers
from securefvpa.fl.node import NodeResolver
from securefvpa.fl.secagg_mod import make_secagg_mod
from securefvpa.fl.wire import (
    CONFIG,
    REPLY,
    SECAGG_REPLY,
    STAGE_PROTOCOL,
    STAGE_TRAIN,
    Instruction,
    ProtocolReply,
    get_config,
)
from securefvpa.rounds.engine import sample_nodes
from securefvpa.rounds.finish import initial_parameters
from securefvpa.rounds.local import LocalTransport
from securefvpa.rounds.prepare import prepare_or_resume, read_node_configs
from securefvpa.run import prepare_run_dir, run
from securefvpa.secagg.messages import MessageType, peek_type
from securefvpa.train.client import load_node

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("flower")]


def test_secure_run_matches_plaintext_run(tmp_path, fed_config, write_config):
    plain = fed_config(federation={"rounds": 2, "local_steps": 4})
    secure = fed_config(
        federation={"rounds": 2, "local_steps": 4}, secagg={"enabled": True, "bits": 64}
    )
    m_plain = run(write_config(plain, "plain.toml"), tmp_path / "plain").metrics
    m_secure = run(write_config(secure, "secure.toml"), tmp_path / "secure").metrics
    assert all(r["clients"] >= 4 for r in m_secure["rounds"][1:])
    # complete graph: 4 protocol exchanges besides the training exchange, which carries the
    # masked input (no exchange of its own)
    sec = m_secure["rounds"][1]["secagg"]
    assert sec["phase_names"] == ["advertise-keys", "share-keys", "consistency-check", "unmask"]
    with (
        np.load(tmp_path / "plain" / "final_params.npz") as a,
        np.load(tmp_path / "secure" / "final_params.npz") as b,
    ):
        worst = max(float(np.abs(a[k] - b[k]).max()) for k in a.files)
        moved = max(float(np.abs(a[k]).max()) for k in a.files)
    # 64-bit ring: the fixed-point step is ~1e-12 of the clip range; float32 rounding dominates.
    assert worst < 1e-4, worst
    assert moved > 0
    assert m_plain["accuracy"]["seen_users"] == pytest.approx(
        m_secure["accuracy"]["seen_users"], abs=0.02
    )


def _state_bytes(context: Context) -> int:
    """Bytes the node's Flower state holds (what simulation ships with every message)."""
    records = [*context.state.array_records.values(), *context.state.config_records.values()]
    return sum(r.count_bytes() for r in records)


def _dropping_client_app(nodes_dir, victim: int, log_path) -> ClientApp:
    """The real ClientApp, but partition ``victim`` gets a forged masked-input request in its
    training message (header only), which its secure-aggregation mod must refuse; every node
    logs each secure-aggregation message (stage, request, error or not), the bytes its Flower
    state holds after it, and whether the round's secrets are still there."""
    from securefvpa.fl.secagg_mod import STATE_KEY
    from securefvpa.secagg.messages import HEADER_BYTES, MAGIC, VERSION

    h = client_handlers(NodeResolver(nodes_dir))
    app = ClientApp()
    app.query()(h.query)
    app.evaluate()(h.evaluate)
    forged = MAGIC + bytes([VERSION, MessageType.MASKED_INPUT_REQUEST])
    forged += bytes(HEADER_BYTES - len(forged))

    def forge_and_log(msg: Message, context: Context, call_next):
        ins = get_config(msg.content, CONFIG, Instruction)
        pid = int(context.node_config["partition-id"])
        if ins.secagg_stage == STAGE_TRAIN and pid == victim:
            values = dict(msg.content.config_records[CONFIG])
            values["secagg-payload"] = forged
            msg.content.config_records[CONFIG] = ConfigRecord(values)
        reply = call_next(msg, context)  # returns: Flower keeps the state it leaves
        if ins.secagg:
            secrets = STATE_KEY in context.state.config_records
            with open(log_path, "a") as f:
                kind = peek_type(ins.secagg_payload).name
                f.write(
                    f"{pid} {ins.secagg_stage} {kind} {_state_bytes(context)} "
                    f"{int(reply.has_error())} {int(secrets)}\n"
                )
        return reply

    app.train(mods=[forge_and_log, make_secagg_mod(h.resolver)])(h.train)
    return app


def test_dropout_during_secure_aggregation_is_recovered(tmp_path, fed_config, write_config):
    """A client that shared keys, then refused a forged masked-input request (before
    training, with an error reply that leaves no secrets in the state Flower keeps): its masks
    are removed from the survivors' shares and the aggregate is EXACTLY the plaintext weighted
    mean of the survivors' updates (recomputed here in-process from the same client code).

    Every node trains only in the training message, after its keys and shares, which carries
    its masked-input request and is answered with the masked vector; its plain update never
    waits in its Flower state (which simulation ships with every message)."""
    cfg = load_config(
        write_config(
            fed_config(
                federation={"rounds": 1, "local_steps": 2},
                secagg={"enabled": True, "bits": 64},
            )
        )
    )
    rd = prepare_run_dir(cfg, tmp_path / "run", resume=False)
    manifest = prepare_or_resume(cfg, rd, resume=False, load=lambda: load_dataset(cfg))
    log_path = tmp_path / "messages.log"
    metrics = launch.run_simulation_mode(
        cfg, rd, resume=False, client_app=_dropping_client_app(rd.nodes, 0, log_path)
    )
    r1 = metrics["rounds"][1]
    assert 0 in r1["failed"]
    assert r1["secagg"]["contributors"] == r1["clients"] >= 4
    # Which clients were summed: the sampled ones minus the victim (sampling is seeded).
    nodes = LocalTransport([load_node(n) for n in read_node_configs(rd, manifest)])
    infos = [n for n in nodes.discover() if n.role == "train"]
    survivors = [n for n in sample_nodes(infos, cfg, 1, set()) if n.partition_id != 0]
    assert len(survivors) == r1["clients"]
    initial = initial_parameters(cfg, manifest)
    expected = nodes.train_round(1, 1, survivors, initial).mean_update
    expected_flat = np.concatenate([v.ravel() for v in expected.values()])
    with np.load(rd.final_params) as z:
        for k in initial:
            got = z[k].astype(np.float64) - initial[k].astype(np.float64)
            # FedAvg with server_lr 1: theta_1 - theta_0 is the aggregate itself. The 64-bit
            # fixed-point step is ~1e-12; the float32 parameters bound the comparison.
            np.testing.assert_allclose(got, expected[k], rtol=0, atol=2e-6, err_msg=k)
    # per node: keys and shares, then training with the masked input, then check and unmask
    seen: dict[str, list[tuple[str, str]]] = {}
    for line in log_path.read_text().splitlines():
        pid, stage, kind, state, error, secrets = line.split()
        seen.setdefault(pid, []).append((stage, kind))
        # the ring vector is 8 bytes a coordinate (64-bit ring): it is never in the state
        assert int(state) < 8 * len(expected_flat), (pid, stage, kind, state)
        if pid == "0" and stage == STAGE_TRAIN:  # refused: an error reply, no secrets kept
            assert (error, secrets) == ("1", "0"), line
        elif kind == "UNMASK_REQUEST":  # done: the round's secrets are gone
            assert (error, secrets) == ("0", "0"), line
        else:
            assert (error, secrets) == ("0", "1"), line
    order = [
        (STAGE_PROTOCOL, "ADVERTISE_KEYS_REQUEST"),
        (STAGE_PROTOCOL, "SHARE_KEYS_REQUEST"),
        (STAGE_TRAIN, "MASKED_INPUT_REQUEST"),
        (STAGE_PROTOCOL, "CONSISTENCY_REQUEST"),
        (STAGE_PROTOCOL, "UNMASK_REQUEST"),
    ]
    assert {pid: kinds for pid, kinds in seen.items() if pid != "0"} == {
        str(n.partition_id): order for n in survivors
    }
    assert seen["0"] == order[:3]  # the victim shared its keys, then refused


def _driven_nodes(tmp_path, fed_config, write_config, *, degree: int = 0):
    """Every training node of a small secure run, driven directly through the mod as a
    malicious server would. Returns ``(new_server, send, trained, contexts)``: ``new_server(rnd)``
    is a fresh protocol server over all nodes; ``send(pid, payload, *, stage, attempt)`` delivers one
    message to node ``pid`` (one Flower context per node, kept across calls) and returns the
    reply; ``trained`` lists the partitions whose train handler trained, in order; ``contexts``
    the nodes' Flower contexts."""
    from flwr.app import Metadata, RecordDict

    from securefvpa.fl.wire import make_content
    from securefvpa.rounds.encoding import session_id, vector_length
    from securefvpa.rounds.prepare import run_codec
    from securefvpa.rundir import read_node_config
    from securefvpa.secagg import SecAggServer
    from securefvpa.secagg.keys import load_roster

    cfg = load_config(
        write_config(
            fed_config(
                data={"users": 10, "unseen_share": 0.0},
                secagg={"enabled": True, "degree": degree},
            )
        )
    )
    rd = prepare_run_dir(cfg, tmp_path / "run", resume=False)
    manifest = prepare_or_resume(cfg, rd, resume=False, load=lambda: load_dataset(cfg))
    params = initial_parameters(cfg, manifest)
    node = read_node_config(rd.node_config(0))
    pids = list(range(manifest.train_clients))
    sid = session_id(node.config_hash, "test")

    def new_server(rnd: int = 1) -> SecAggServer:
        return SecAggServer(
            session_id=sid,
            round_id=rnd,
            participants=pids,
            vector_length=run_codec(cfg, rd, manifest).vector_length(vector_length(params)),
            bits=cfg.secagg.bits,
            degree=cfg.secagg.degree,
            threshold_fraction=cfg.secagg.threshold,
            roster=load_roster(rd.roster),
        )

    h = client_handlers(NodeResolver(rd.nodes))
    mod = make_secagg_mod(h.resolver)
    contexts = {
        pid: Context(
            run_id=1,
            node_id=100 + pid,
            node_config={"partition-id": pid},
            state=RecordDict(),
            run_config={},
        )
        for pid in pids
    }
    trained: list[int] = []

    def train_handler(msg: Message, context: Context) -> Message:
        reply = h.train(msg, context)  # raises before training when it refuses
        trained.append(int(context.node_config["partition-id"]))
        return reply

    def send(
        pid: int,
        payload: bytes,
        *,
        stage: str = STAGE_PROTOCOL,
        attempt: int = 1,
        rnd: int = 1,
        secagg: bool = True,
    ):
        ins = Instruction(
            round=rnd,
            attempt=attempt,
            config_hash=node.config_hash,
            secagg=secagg,
            secagg_stage=stage,
            secagg_payload=payload,
            secagg_session=sid.hex(),
        )
        meta = Metadata(
            run_id=1,
            message_id="m1",
            src_node_id=0,
            dst_node_id=100 + pid,
            reply_to_message_id="",
            group_id="1",
            created_at=0.0,
            ttl=60.0,
            message_type="train",
        )
        msg = Message(content=make_content(arrays=params, config=ins), metadata=meta)
        return mod(msg, contexts[pid], train_handler)

    return new_server, send, trained, contexts


def _protocol_reply(reply: Message) -> bytes:
    assert not reply.has_error(), reply.error.reason
    return get_config(reply.content, REPLY, ProtocolReply).secagg_payload


def _refused(reply: Message, match: str) -> None:
    """The mod answered with an error reply (a dropout) whose reason matches ``match``."""
    import re

    assert reply.has_error(), "expected a refusal"
    assert re.search(match, reply.error.reason), reply.error.reason


def test_a_node_trains_only_for_its_masked_input_request_in_its_own_instance(
    tmp_path, fed_config, write_config
):
    """Driven directly, as a malicious server would: a node trains (spends privacy budget)
    only when a training message carries its own masked-input request for the instance it
    joined, after keys and shares, with secure aggregation on. Any other request there, a
    masked-input request without training, one for another (session, round, attempt), another
    node's request, or a training message with secure aggregation switched off is refused before
    training; the mod's refusals are error replies (a dropout) and leave no round in the node's
    state; the others' sum is still unmasked."""
    from securefvpa.errors import FederationError
    from securefvpa.fl.secagg_mod import INSTANCE_KEY, STATE_KEY
    from securefvpa.secagg.messages import HEADER_BYTES, MAGIC, VERSION
    from securefvpa.secagg.server import ServerPhase

    new_server, send, trained, contexts = _driven_nodes(tmp_path, fed_config, write_config)
    server = new_server()
    requests = server.start()
    _refused(send(0, requests[0], stage=STAGE_TRAIN), "must carry this node's masked-input")
    first = True
    while server.phase is not ServerPhase.MASKED_INPUT:
        for pid, data in requests.items():
            server.receive(pid, _protocol_reply(send(pid, data)))
        requests = server.advance()
        if first:  # a masked-input request (header only) while node 2 is sharing keys
            early = MAGIC + bytes([VERSION, MessageType.MASKED_INPUT_REQUEST])
            early += bytes(HEADER_BYTES - len(early))
            _refused(send(2, early, stage=STAGE_TRAIN), "masked input requested in phase")
            del requests[2]
            first = False
    _refused(send(0, requests[0]), "comes only with the training message")  # nothing to mask
    _refused(send(1, requests[1], stage=STAGE_TRAIN, attempt=2), "another .session, round")
    _refused(send(3, requests[4], stage=STAGE_TRAIN), "addressed to another node")
    _refused(send(0, requests[0], stage=STAGE_TRAIN), "no round in progress")  # 0 left above
    with pytest.raises(FederationError, match="secagg = False"):
        send(4, requests[4], stage=STAGE_TRAIN, secagg=False)  # its update in the clear
    assert trained == []
    for pid in (0, 1, 2, 3):
        assert STATE_KEY not in contexts[pid].state.config_records
        assert INSTANCE_KEY not in contexts[pid].state.config_records
    for pid, data in requests.items():
        if pid > 3:
            reply = send(pid, data, stage=STAGE_TRAIN)
            masked = get_config(reply.content, SECAGG_REPLY, ProtocolReply).secagg_payload
            assert peek_type(masked) == MessageType.MASKED_INPUT_REPLY
            assert server.receive(pid, masked)
    assert trained == [pid for pid in sorted(requests) if pid > 3]
    requests = server.advance()
    while requests:
        for pid, data in requests.items():
            server.receive(pid, _protocol_reply(send(pid, data)))
        requests = server.advance()
    assert server.result is not None
    assert sorted(server.result.contributors) == trained


def test_a_node_joins_at_most_three_secagg_plus_instances_per_round(
    tmp_path, fed_config, write_config
):
    """A server that aborts SecAgg+ instances to re-draw the neighbour graph (fresh
    advertise-keys requests, new attempts) gets MAX_INSTANCES_PER_INPUT instances per round
    from a node, whether or not it trained in them; the next is refused (an error reply). A new
    round starts a new count; round numbers outside the node's run are refused."""
    from securefvpa.secagg.client import MAX_INSTANCES_PER_INPUT
    from securefvpa.secagg.server import ServerPhase

    new_server, send, trained, _ = _driven_nodes(tmp_path, fed_config, write_config, degree=4)
    # node 1 joins an instance, then trains and masks its input in a second one
    server = new_server()
    requests = server.start()
    _protocol_reply(send(1, requests[1], attempt=9))
    while server.phase is not ServerPhase.MASKED_INPUT:
        for pid, data in requests.items():
            server.receive(pid, _protocol_reply(send(pid, data)))
        requests = server.advance()
    assert not send(1, requests[1], stage=STAGE_TRAIN).has_error()
    assert trained == [1]
    advert = new_server().start()[1]
    _protocol_reply(send(1, advert, attempt=3))  # the third instance of round 1
    _refused(send(1, advert, attempt=4), "already 3 protocol instances joined")
    for attempt in range(1, MAX_INSTANCES_PER_INPUT + 1):  # round 2: a new count
        _protocol_reply(send(1, new_server(2).start()[1], rnd=2, attempt=attempt))
    _refused(send(1, new_server(2).start()[1], rnd=2, attempt=9), "already 3 protocol")
    _refused(send(1, new_server(99).start()[1], rnd=99), "outside this run's rounds")


def test_the_complete_graph_has_no_instance_limit(tmp_path, fed_config, write_config):
    """With the complete graph (degree 0) there is no neighbour graph to re-draw."""
    from securefvpa.secagg.client import MAX_INSTANCES_PER_INPUT

    new_server, send, _, _ = _driven_nodes(tmp_path, fed_config, write_config)
    advert = new_server().start()[0]
    for attempt in range(1, MAX_INSTANCES_PER_INPUT + 3):
        _protocol_reply(send(0, advert, attempt=attempt))
