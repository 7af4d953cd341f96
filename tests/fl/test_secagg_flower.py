"""Secure aggregation through Flower: same result as plaintext FedAvg, dropouts recovered."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from securefvpa.config import load_config
from securefvpa.data.load import load_dataset
from securefvpa.fl import launch
from securefvpa.fl.client_app import client_handlers
from securefvpa.fl.node import NodeResolver
from securefvpa.fl.secagg_mod import make_secagg_mod
from securefvpa.fl.wire import CONFIG, STAGE_PROTOCOL, Instruction, get_config
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
    assert m_secure["rounds"][1]["secagg"]["phases"] == 5
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
