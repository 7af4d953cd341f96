"""End-to-end federated runs on Flower's simulation engine (real Flower, real Ray, real MiniLM)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from securefvpa.config import load_config
from securefvpa.data.load import load_dataset
from securefvpa.errors import ConfigError, FederationError
from securefvpa.fl import launch
from securefvpa.fl.client_app import client_handlers
from securefvpa.fl.node import NodeResolver
from securefvpa.fl.secagg_mod import make_secagg_mod
from securefvpa.rounds.prepare import prepare_local, prepare_or_resume
from securefvpa.run import RunResult, prepare_run_dir, run
from securefvpa.rundir import RunDir

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("flower")]


def test_simulation_improves_over_round_zero(tmp_path, fed_config, write_config):
    cfg = write_config(fed_config(federation={"rounds": 4, "local_steps": 10}))
    metrics = run(cfg, tmp_path / "run").metrics
    rounds = metrics["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2, 3, 4]
    assert all(r["clients"] >= 4 for r in rounds[1:])
    acc0 = rounds[0]["eval"]["accuracy"]["seen_users"]
    acc_final = metrics["accuracy"]["seen_users"]
    assert acc_final > acc0 + 0.05, (acc0, acc_final)
    assert metrics["accuracy"]["unseen_users"] is not None
    resolved = (tmp_path / "run" / "config.resolved.toml").read_text()
    assert 'mode = "simulation"' in resolved
    # The Flower evaluation of the final parameters equals the in-process evaluation of the
    # same parameters (same clients, same counts): accuracy and latent metrics, MI included.
    result = RunResult(tmp_path / "run", metrics)
    local_cfg = load_config(cfg)
    pairs, split, _ = load_dataset(local_cfg)
    local = prepare_local(local_cfg, pairs, split, RunDir(tmp_path / "local"), data={})
    again = local.transport().evaluate(4, result.parameters())
    assert again["accuracy"] == metrics["accuracy"]
    assert again["latent"] == metrics["latent"]


def _failing_client_app(nodes_dir, bad_partition: int) -> ClientApp:
    """The real ClientApp, except that one partition crashes while training."""
    h = client_handlers(NodeResolver(nodes_dir))
    app = ClientApp()
    app.query()(h.query)
    app.evaluate()(h.evaluate)

    @app.train(mods=[make_secagg_mod(h.resolver)])
    def train(msg: Message, context: Context) -> Message:
        if int(context.node_config["partition-id"]) == bad_partition:
            raise RuntimeError("injected client crash")
        return h.train(msg, context)

    return app


def _prepared(cfg, out):
    rd = prepare_run_dir(cfg, out, resume=False)
    manifest = prepare_or_resume(cfg, rd, resume=False, load=lambda: load_dataset(cfg))
    return rd, manifest


def test_failed_client_is_tolerated(tmp_path, fed_config, write_config):
    cfg = load_config(write_config(fed_config(federation={"rounds": 2, "local_steps": 3})))
    rd, _ = _prepared(cfg, tmp_path / "run")
    metrics = launch.run_simulation_mode(
        cfg, rd, resume=False, client_app=_failing_client_app(rd.nodes, 0)
    )
    trained_rounds = [r for r in metrics["rounds"] if r["round"] > 0]
    assert len(trained_rounds) == 2
    for r in trained_rounds:
        if r["sampled"] and 0 in r["failed"]:
            assert r["clients"] == r["sampled"] - 1
    assert any(0 in r["failed"] for r in trained_rounds)
    assert json.loads(rd.metrics.read_text())["rounds"][-1]["round"] == 2


def test_too_many_failures_is_a_clear_error(tmp_path, fed_config, write_config):
    # every training client but partition 0 is needed: min_fit_clients = all train clients
    cfg0 = fed_config(federation={"rounds": 1, "local_steps": 2})
    cfg = load_config(write_config(cfg0))
    _, manifest = _prepared(cfg, tmp_path / "probe")
    cfg0["federation"]["min_fit_clients"] = manifest.train_clients
    cfg = load_config(write_config(cfg0, "strict.toml"))
    rd, _ = _prepared(cfg, tmp_path / "run")
    with pytest.raises(FederationError, match="min_fit_clients"):
        launch.run_simulation_mode(
            cfg, rd, resume=False, client_app=_failing_client_app(rd.nodes, 0)
        )


def _checkpoint_round(path) -> int:
    try:
        with np.load(path) as z:
            return int(json.loads(bytes(z["meta"]).decode())["round"])
    except Exception:
        return -1


def test_resume_after_kill_reaches_same_parameters(tmp_path, fed_config, write_config):
    # FedAdam, the harder case: its moments must come back from the checkpoint too (FedAvg
    # is stateless), or the resumed run's parameters differ.
    cfg = write_config(
        fed_config(
            federation={
                "rounds": 4,
                "local_steps": 4,
                "server_optimizer": "fedadam",
                "server_lr": 0.01,
            },
            train={"optimizer": "sgd", "lr": 0.5},
        )
    )
    full = tmp_path / "full"
    run(cfg, full)
    killed = tmp_path / "killed"
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "securefvpa.cli", "run", str(cfg), "--out", str(killed)],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and _checkpoint_round(killed / "server_state.npz") < 2:
            if proc.poll() is not None:
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the run finished before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert 2 <= _checkpoint_round(killed / "server_state.npz") < 4
    assert not (killed / "metrics.json").exists()
    run(cfg, killed, resume=True)
    with np.load(full / "final_params.npz") as a, np.load(killed / "final_params.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        for k in a.files:
            np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_resume_with_other_config_is_refused(tmp_path, fed_config, write_config):
    cfg = write_config(fed_config(federation={"rounds": 1, "local_steps": 1}))
    run(cfg, tmp_path / "run")
    other = write_config(fed_config(federation={"rounds": 2, "local_steps": 1}), "other.toml")
    with pytest.raises(ConfigError, match="differs"):
        run(other, tmp_path / "run", resume=True)
    with pytest.raises(ConfigError, match="already holds a run"):
        run(cfg, tmp_path / "run")
