"""Secure aggregation through Flower: same result as plaintext FedAvg, dropouts recovered."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from securefvpa.config import load_config
from securefvpa.data.load import load_dataset
from securefvpa.fl import client_app as real
from securefvpa.fl import driver
from securefvpa.fl.messages import make_content
from securefvpa.fl.secagg_mod import secagg_mod
from securefvpa.run import prepare_run_dir, run
from securefvpa.secagg.messages import MessageType, peek_type

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("flower")]


def test_secure_run_matches_plaintext_run(tmp_path, fed_config, write_config):
    plain = fed_config(federation={"rounds": 2, "local_steps": 4})
    secure = fed_config(
        federation={"rounds": 2, "local_steps": 4}, secagg={"enabled": True, "bits": 64}
    )
    m_plain = run(write_config(plain, "plain.toml"), tmp_path / "plain")
    m_secure = run(write_config(secure, "secure.toml"), tmp_path / "secure")
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


def _dropping_client_app(victim: int) -> ClientApp:
    """The real ClientApp, but partition ``victim`` crashes when asked for its masked input."""
    app = ClientApp()
    app.query()(real.query)
    app.evaluate()(real.evaluate)

    def crash_before_masking(msg: Message, context: Context, call_next):
        cfg = msg.content.config_records.get("config")
        if (
            cfg is not None
            and cfg.get("secagg-stage") == "protocol"
            and int(context.node_config["partition-id"]) == victim
            and peek_type(bytes(cfg["secagg-payload"])) == MessageType.MASKED_INPUT_REQUEST
        ):
            raise RuntimeError("injected dropout before the masked input")
        return call_next(msg, context)

    @app.train(mods=[crash_before_masking, secagg_mod])
    def train(msg: Message, context: Context) -> Message:
        reply, update = real.train_reply_content(msg, context)
        return Message(make_content(arrays=update, reply=reply), reply_to=msg)

    return app


def test_dropout_during_secure_aggregation_is_recovered(tmp_path, fed_config, write_config):
    cfg = load_config(
        write_config(
            fed_config(federation={"rounds": 1, "local_steps": 2}, secagg={"enabled": True})
        )
    )
    out = tmp_path / "run"
    prepare_run_dir(cfg, out, resume=False)
    pairs, split, _ = load_dataset(cfg)
    driver.prepare_federated_run(cfg, pairs, split, out)
    result = driver.run_simulation_mode(cfg, out, resume=False, client_app=_dropping_client_app(0))
    r1 = result["rounds"][1]
    assert 0 in r1["failed"]
    # the victim trained, shared keys, then vanished: its pairwise masks were unmasked from
    # the survivors' shares and the sum of the others is exact (the run goes on)
    assert r1["secagg"]["contributors"] == r1["clients"] >= 4
