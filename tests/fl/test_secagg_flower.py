"""Secure aggregation through Flower: same result as plaintext FedAvg, dropouts recovered."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from securefvpa.config import load_config
from securefvpa.data.load import load_dataset
from securefvpa.fl import launch
from securefvpa.fl.client_app import client_handlers
from securefvpa.fl.node import NodeResolver
from securefvpa.fl.secagg_mod import RING_KEY, make_secagg_mod
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
    # keys advertised in the training exchange: 4 protocol exchanges after it, not 5
    assert m_secure["rounds"][1]["secagg"]["phases"] == 4
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


def _dropping_client_app(nodes_dir, victim: int) -> ClientApp:
    """The real ClientApp, but partition ``victim`` crashes when asked for its masked input."""
    h = client_handlers(NodeResolver(nodes_dir))
    app = ClientApp()
    app.query()(h.query)
    app.evaluate()(h.evaluate)

    def crash_before_masking(msg: Message, context: Context, call_next):
        ins = get_config(msg.content, CONFIG, Instruction)
        if (
            ins.secagg_stage == STAGE_PROTOCOL
            and int(context.node_config["partition-id"]) == victim
            and peek_type(ins.secagg_payload) == MessageType.MASKED_INPUT_REQUEST
        ):
            raise RuntimeError("injected dropout before the masked input")
        return call_next(msg, context)

    app.train(mods=[crash_before_masking, make_secagg_mod(h.resolver)])(h.train)
    return app


def test_dropout_during_secure_aggregation_is_recovered(tmp_path, fed_config, write_config):
    """A client that trained and shared keys, then vanished before its masked input: its masks
    are removed from the survivors' shares and the aggregate is EXACTLY the plaintext weighted
    mean of the survivors' updates (recomputed here in-process from the same client code)."""
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
    metrics = launch.run_simulation_mode(
        cfg, rd, resume=False, client_app=_dropping_client_app(rd.nodes, 0)
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
    with np.load(rd.final_params) as z:
        for k in initial:
            got = z[k].astype(np.float64) - initial[k].astype(np.float64)
            # FedAvg with server_lr 1: theta_1 - theta_0 is the aggregate itself. The 64-bit
            # fixed-point step is ~1e-12; the float32 parameters bound the comparison.
            np.testing.assert_allclose(got, expected[k], rtol=0, atol=2e-6, err_msg=k)


def _advert_losing_client_app(nodes_dir, victims: set[int], log_path) -> ClientApp:
    """The real ClientApp, but the key adverts that partitions ``victims`` send with their
    training replies are lost; every node logs, per protocol request, whether its ring vector
    is still held (its key in the node's state or its sealed file on disk)."""
    h = client_handlers(NodeResolver(nodes_dir))
    app = ClientApp()
    app.query()(h.query)
    app.evaluate()(h.evaluate)

    def lose_advert_and_log(msg: Message, context: Context, call_next):
        ins = get_config(msg.content, CONFIG, Instruction)
        pid = int(context.node_config["partition-id"])
        if ins.secagg_stage == STAGE_PROTOCOL:
            kind = peek_type(ins.secagg_payload).name
            with open(log_path, "a") as f:
                held = RING_KEY in context.state.config_records
                held |= any(nodes_dir.glob(f".secagg-ring-{context.run_id}-{pid}-*"))  # sealed file
                f.write(f"{pid} {kind} {held}\n")
        reply = call_next(msg, context)
        if ins.secagg_stage == STAGE_TRAIN and pid in victims and not reply.has_error():
            assert SECAGG_REPLY in reply.content.config_records  # the advert was there
            del reply.content.config_records[SECAGG_REPLY]
        return reply

    app.train(mods=[lose_advert_and_log, make_secagg_mod(h.resolver)])(h.train)
    return app


def test_too_few_adverts_with_training_rekeys_and_sums_exactly(tmp_path, fed_config, write_config):
    """Adverts that ride on the training replies are lost for half the clients (below the
    threshold): the server starts a fresh instance over every node that trained, keys advertised
    in an exchange of their own, and the aggregate is EXACTLY the plaintext weighted mean of all
    of them. The plain vector leaves every node's state once it has been sent masked."""
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
    log_path = tmp_path / "requests.log"
    nodes = LocalTransport([load_node(n) for n in read_node_configs(rd, manifest)])
    infos = [n for n in nodes.discover() if n.role == "train"]
    sampled = sample_nodes(infos, cfg, 1, set())
    victims = {n.partition_id for n in sampled[: len(sampled) // 2 + 1]}
    metrics = launch.run_simulation_mode(
        cfg, rd, resume=False, client_app=_advert_losing_client_app(rd.nodes, victims, log_path)
    )
    r1 = metrics["rounds"][1]
    assert r1["secagg"]["phases"] == 5  # re-keyed: advertise, share keys, mask, check, unmask
    assert r1["secagg"]["contributors"] == r1["clients"] == len(sampled)
    initial = initial_parameters(cfg, manifest)
    expected = nodes.train_round(1, 1, sampled, initial).mean_update
    with np.load(rd.final_params) as z:
        for k in initial:
            got = z[k].astype(np.float64) - initial[k].astype(np.float64)
            np.testing.assert_allclose(got, expected[k], rtol=0, atol=2e-6, err_msg=k)
    seen = [line.split() for line in log_path.read_text().splitlines()]
    kinds = {kind for _, kind, _ in seen}
    assert {"ADVERTISE_KEYS_REQUEST", "MASKED_INPUT_REQUEST", "UNMASK_REQUEST"} <= kinds
    for pid, kind, ring in seen:
        if kind in ("CONSISTENCY_REQUEST", "UNMASK_REQUEST"):
            assert ring == "False", (pid, kind)
        if kind == "MASKED_INPUT_REQUEST":
            assert ring == "True", (pid, kind)


def _one_node(tmp_path, fed_config, write_config):
    """Node 0 of a small secure run, driven directly through the mod as a malicious server
    would: ``(advert_request, send)``, where ``send(payload, context=None, *, stage, attempt)``
    delivers one message and returns ``(reply, context)``."""
    from flwr.app import Metadata, RecordDict

    from securefvpa.fl.wire import make_content
    from securefvpa.rounds.encoding import session_id, vector_length
    from securefvpa.rounds.prepare import run_codec
    from securefvpa.rundir import read_node_config
    from securefvpa.secagg import SecAggServer
    from securefvpa.secagg.keys import load_roster

    cfg = load_config(
        write_config(fed_config(data={"users": 8, "unseen_share": 0.0}, secagg={"enabled": True}))
    )
    rd = prepare_run_dir(cfg, tmp_path / "run", resume=False)
    manifest = prepare_or_resume(cfg, rd, resume=False, load=lambda: load_dataset(cfg))
    params = initial_parameters(cfg, manifest)
    node = read_node_config(rd.node_config(0))
    sid = session_id(node.config_hash, "test")
    server = SecAggServer(
        session_id=sid,
        round_id=1,
        participants=list(range(manifest.train_clients)),
        vector_length=run_codec(cfg, rd, manifest).vector_length(vector_length(params)),
        bits=cfg.secagg.bits,
        degree=cfg.secagg.degree,
        threshold_fraction=cfg.secagg.threshold,
        roster=load_roster(rd.roster),
    )
    advert_request = server.start()[0]
    h = client_handlers(NodeResolver(rd.nodes))
    mod = make_secagg_mod(h.resolver)

    def send(
        payload: bytes,
        context: Context | None = None,
        *,
        stage: str = STAGE_TRAIN,
        attempt: int = 1,
    ):
        ins = Instruction(
            round=1,
            attempt=attempt,
            config_hash=node.config_hash,
            secagg=True,
            secagg_stage=stage,
            secagg_payload=payload,
            secagg_session=sid.hex(),
        )
        meta = Metadata(
            run_id=1,
            message_id="m1",
            src_node_id=0,
            dst_node_id=7,
            reply_to_message_id="",
            group_id="1",
            created_at=0.0,
            ttl=60.0,
            message_type="train",
        )
        msg = Message(content=make_content(arrays=params, config=ins), metadata=meta)
        if context is None:
            context = Context(
                run_id=1,
                node_id=7,
                node_config={"partition-id": 0},
                state=RecordDict(),
                run_config={},
            )
        return mod(msg, context, h.train), context

    return advert_request, send


def test_a_training_message_carries_only_the_advertise_keys_request(
    tmp_path, fed_config, write_config
):
    """Driven directly, as a malicious server would: the advertise-keys request in a training
    message is answered with the node's signed advert (and its round state kept); any other
    request there is refused with ProtocolAbort and the node's state (its update) deleted."""
    from securefvpa.errors import ProtocolAbort
    from securefvpa.fl.secagg_mod import STATE_KEY
    from securefvpa.secagg.messages import HEADER_BYTES, MAGIC, VERSION

    advert_request, train = _one_node(tmp_path, fed_config, write_config)
    not_an_advert = MAGIC + bytes([VERSION, MessageType.MASKED_INPUT_REQUEST])
    not_an_advert += bytes(HEADER_BYTES - len(not_an_advert))
    reply, context = train(advert_request)
    assert SECAGG_REPLY in reply.content.config_records
    assert STATE_KEY in context.state.config_records
    assert RING_KEY in context.state.config_records
    with pytest.raises(ProtocolAbort, match="only the advertise-keys request"):
        train(not_an_advert, context)
    assert RING_KEY not in context.state.config_records  # the trained update is gone


def test_one_update_joins_at_most_three_protocol_instances(tmp_path, fed_config, write_config):
    """A server that aborts instances to re-draw the SecAgg+ graph (new attempts, each with a
    fresh advertise-keys request against the same stored update) gets MAX_INSTANCES_PER_INPUT
    instances; the next is refused with ProtocolAbort and the update is deleted."""
    from securefvpa.errors import ProtocolAbort
    from securefvpa.secagg.client import MAX_INSTANCES_PER_INPUT

    advert_request, send = _one_node(tmp_path, fed_config, write_config)
    reply, context = send(advert_request)  # instance 1 rides on the training message
    assert SECAGG_REPLY in reply.content.config_records
    for attempt in range(2, MAX_INSTANCES_PER_INPUT + 1):
        reply, _ = send(advert_request, context, stage=STAGE_PROTOCOL, attempt=attempt)
        advert = get_config(reply.content, REPLY, ProtocolReply).secagg_payload
        assert peek_type(advert) == MessageType.ADVERTISE_KEYS_REPLY
        assert RING_KEY in context.state.config_records
    with pytest.raises(ProtocolAbort, match="already offered to 3 protocol instances"):
        send(advert_request, context, stage=STAGE_PROTOCOL, attempt=MAX_INSTANCES_PER_INPUT + 1)
    assert RING_KEY not in context.state.config_records  # the update is gone


def test_the_waiting_update_is_sealed_on_the_node_not_in_its_flower_state(
    tmp_path, fed_config, write_config
):
    """Between training and the masked-input request the ring vector is not in the node's
    Flower state (which simulation ships with every message) but in an owner-only file of the
    node's directory, AES-GCM sealed under a key kept in that state. Altered bytes, another
    node's or another run's file in its place, a missing file or a malformed record abort with
    ProtocolAbort (naming no path); the node's next training message deletes its old stash in
    that run and nobody else's; an abort deletes it."""
    import dataclasses
    import os
    import stat

    from flwr.app import ConfigRecord, RecordDict

    from securefvpa.errors import ProtocolAbort
    from securefvpa.fl.secagg_mod import _stash_ring, _take_ring
    from securefvpa.rundir import read_node_config
    from securefvpa.secagg.messages import HEADER_BYTES, MAGIC, VERSION

    advert_request, train = _one_node(tmp_path, fed_config, write_config)
    node = read_node_config(tmp_path / "run" / "nodes" / "node_00000.toml")
    home = Path(node.eval_log).parent

    def stashes(run: int = 1, pid: int = 0) -> list[Path]:
        return sorted(home.glob(f".secagg-ring-{run}-{pid}-*"))

    def other(run: int, pid: int) -> Context:  # another run's or another node's stash
        ctx = Context(run_id=run, node_id=8, node_config={}, state=RecordDict(), run_config={})
        _stash_ring(ctx, dataclasses.replace(node, partition_id=pid), np.arange(5, dtype=np.uint32))
        return ctx

    reply, context = train(advert_request)
    assert SECAGG_REPLY in reply.content.config_records
    assert len(context.state.array_records) == 0  # nothing megabyte-sized rides along
    rec = context.state.config_records[RING_KEY]
    assert set(rec) == {"key", "token", "dtype", "size"}  # no path: rebuilt from the node config
    [path] = stashes()
    assert path.name.endswith(str(rec["token"]))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    ring = _take_ring(context, node)
    assert ring.size == int(rec["size"]) and ring.dtype.name == str(rec["dtype"])
    sealed = path.read_bytes()
    assert ring.tobytes() not in sealed  # ciphertext, not the vector
    # altered bytes
    path.write_bytes(sealed[:-1] + bytes([sealed[-1] ^ 1]))
    with pytest.raises(ProtocolAbort, match="failed authentication"):
        _take_ring(context, node)
    # another node's (partition 10) and another run's (run 2) stash in its place
    other_node, other_run = other(1, 10), other(2, 0)
    for ctx, pid in ((other_node, 10), (other_run, 0)):
        [theirs] = stashes(ctx.run_id, pid)
        path.write_bytes(theirs.read_bytes())
        with pytest.raises(ProtocolAbort, match="failed authentication"):
            _take_ring(context, node)
    path.write_bytes(sealed)
    assert np.array_equal(_take_ring(context, node), ring)
    # malformed records are typed aborts, and no message names the node's directory
    good = dict(rec)
    no_key = {k: v for k, v in good.items() if k != "key"}
    for bad in (
        no_key,
        {**good, "key": 7},
        {**good, "token": "../../x"},
        {**good, "token": "../" * 10 + "ab"},  # 32 characters, not hex
        {**good, "size": "x"},
        {**good, "dtype": "float64"},
    ):
        context.state.config_records[RING_KEY] = ConfigRecord(bad)
        with pytest.raises(ProtocolAbort, match="malformed") as err:
            _take_ring(context, node)
        assert str(home) not in str(err.value)
    context.state.config_records[RING_KEY] = rec
    # a node config without an absolute directory of its own is refused
    for rel in (
        dataclasses.replace(node, eval_log="", identity=""),
        dataclasses.replace(node, eval_log="nodes/eval.jsonl"),
    ):
        with pytest.raises(ProtocolAbort, match="absolute"):
            _stash_ring(context, rel, ring)
    # the next training message replaces this node's stash in this run, and only that
    partition_1 = other(1, 1)
    _, context2 = train(advert_request)
    assert not path.exists() and len(stashes()) == 1
    assert stashes(1, 10) and stashes(2, 0) and stashes(1, 1)  # nobody else's
    stashes()[0].unlink()
    with pytest.raises(ProtocolAbort, match="cannot be read") as err:
        _take_ring(context2, node)
    assert str(home) not in str(err.value)
    del partition_1, other_node, other_run
    # an abort deletes the stash
    _, context3 = train(advert_request)
    assert stashes()
    not_an_advert = MAGIC + bytes([VERSION, MessageType.MASKED_INPUT_REQUEST])
    not_an_advert += bytes(HEADER_BYTES - len(not_an_advert))
    with pytest.raises(ProtocolAbort):
        train(not_an_advert, context3)
    assert RING_KEY not in context3.state.config_records
    assert not stashes()  # neither the first stash nor the refused round's
