"""The client trust boundary (securefvpa/rundir.py, threat_models/deployment.md).

Every path a client reads or writes and its privacy policy come from its own node config; the
server sends parameters, the round and a config hash, which the node checks. These tests drive
the real ClientApp handlers with hand-built Flower messages, as a malicious server would.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Context, Message, Metadata, RecordDict

from securefvpa.config import load_config
from securefvpa.data.load import load_dataset
from securefvpa.errors import FederationError
from securefvpa.fl.client_app import client_handlers
from securefvpa.fl.node import NodeResolver
from securefvpa.fl.wire import CONFIG, Instruction, make_content
from securefvpa.privacy.ledger import Ledger
from securefvpa.rounds.finish import initial_parameters
from securefvpa.rounds.prepare import prepare_or_resume
from securefvpa.run import prepare_run_dir
from securefvpa.rundir import read_node_config, write_node_config


@pytest.fixture
def prepared(tmp_path, fed_config, write_config):
    cfg = load_config(
        write_config(
            fed_config(
                data={"users": 12},
                federation={"rounds": 2, "local_steps": 1},
                privacy={"enabled": True, "noise_multiplier": 1.0, "delta": 1e-5},
            )
        )
    )
    rd = prepare_run_dir(cfg, tmp_path / "run", resume=False)
    manifest = prepare_or_resume(cfg, rd, resume=False, load=lambda: load_dataset(cfg))
    return cfg, rd, manifest


def _context(node_config: dict) -> Context:
    return Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config={})


def _message(content: RecordDict) -> Message:
    """A train message as the SuperLink would deliver it (metadata set explicitly: outside a
    Flower process there is no task identity to fill it in)."""
    meta = Metadata(
        run_id=1,
        message_id="m1",
        src_node_id=0,
        dst_node_id=7,
        reply_to_message_id="",
        group_id="1",
        created_at=time.time(),
        ttl=60.0,
        message_type="train",
    )
    return Message(content=content, metadata=meta)


def _train_message(params, ins: Instruction) -> Message:
    return _message(make_content(arrays=params, config=ins))


def _ledger_rows(path) -> int:
    with Ledger(path) as led:
        return len(led.entries())


def test_a_server_naming_another_config_is_refused_before_anything_runs(prepared):
    cfg, rd, manifest = prepared
    h = client_handlers(NodeResolver(rd.nodes))
    params = initial_parameters(cfg, manifest)
    node = read_node_config(rd.node_config(0))
    before = _ledger_rows(node.ledger)
    forged = Instruction(round=1, config_hash="0" * 64)  # e.g. a config with DP switched off
    with pytest.raises(FederationError, match="config has hash"):
        h.train(_train_message(params, forged), _context({"partition-id": 0}))
    assert _ledger_rows(node.ledger) == before  # nothing trained, nothing spent
    # The honest instruction trains and commits exactly one event to the node's ledger.
    ok = Instruction(round=1, config_hash=node.config_hash)
    reply = h.train(_train_message(params, ok), _context({"partition-id": 0}))
    assert reply.content.config_records["reply"]["status"] == "ok"
    assert _ledger_rows(node.ledger) == before + 1


def test_a_server_cannot_send_paths_or_config_text(prepared):
    """The old wire format let the server name the run directory (so the ledger, manifest and
    roster paths) and ship the whole config: any such key is now refused as unknown."""
    cfg, rd, manifest = prepared
    h = client_handlers(NodeResolver(rd.nodes))
    node = read_node_config(rd.node_config(0))
    params = initial_parameters(cfg, manifest)
    for extra in ({"run-dir": "/tmp/elsewhere"}, {"config-toml": "[privacy]\nenabled = false\n"}):
        content = make_content(arrays=params)
        content.config_records[CONFIG] = ConfigRecord(
            {"round": 1, "config-hash": node.config_hash, **extra}
        )
        msg = _message(content)
        with pytest.raises(FederationError, match="unknown keys"):
            h.train(msg, _context({"partition-id": 0}))


def test_the_node_writes_only_where_its_node_config_says(prepared, tmp_path):
    """A node config naming another ledger: the node's DP event lands there, and the run
    directory's ledger (what a server might expect) is untouched."""
    cfg, rd, manifest = prepared
    node = read_node_config(rd.node_config(1))
    own_ledger = tmp_path / "node-1-ledger.sqlite"
    moved = write_node_config(
        tmp_path / "node1.toml", dataclasses.replace(node, ledger=str(own_ledger))
    )
    h = client_handlers(NodeResolver(None))  # deployment: no nodes folder, only the node config
    shared_before = _ledger_rows(node.ledger)
    reply = h.train(
        _train_message(
            initial_parameters(cfg, manifest), Instruction(round=1, config_hash=node.config_hash)
        ),
        _context({"partition-id": 1, "node-config": str(moved)}),
    )
    assert reply.content.config_records["reply"]["status"] == "ok"
    with Ledger(own_ledger) as led:
        assert [e.client_id for e in led.entries() if e.kind == "dp_sgd"] == ["client-00001"]
    assert _ledger_rows(node.ledger) == shared_before


def test_a_deployed_node_without_node_config_is_a_clear_error(prepared):
    cfg, rd, manifest = prepared
    h = client_handlers(NodeResolver(None))
    node = read_node_config(rd.node_config(0))
    msg = _train_message(
        initial_parameters(cfg, manifest), Instruction(round=1, config_hash=node.config_hash)
    )
    with pytest.raises(FederationError, match="no node config"):
        h.train(msg, _context({"partition-id": 0}))


def test_with_dp_on_evaluation_counts_stay_on_the_node(prepared):
    """Held-out counts are a function of private pairs that no DP noise covers: with DP on the
    node keeps them in its own evaluation log and its reply carries none of them."""
    cfg, rd, manifest = prepared
    h = client_handlers(NodeResolver(rd.nodes))
    node = read_node_config(rd.node_config(0))
    msg = _message(
        make_content(
            arrays=initial_parameters(cfg, manifest),
            config=Instruction(round=3, config_hash=node.config_hash),
        )
    )
    reply = h.evaluate(msg, _context({"partition-id": 0}))
    rec = dict(reply.content.config_records["reply"])
    assert rec == {"role": "train", "kept-on-client": True}
    lines = [json.loads(x) for x in Path(node.eval_log).read_text().splitlines()]
    assert [(x["round"], x["partition_id"]) for x in lines] == [(3, 0)]
    assert lines[0]["counts"]["pairs"] > 0
