"""Flower Deployment Engine on loopback: examples/deployment/launch.py end to end.

Real processes only: flower-superlink with TLS and SuperNode authentication, flower-supernode
per client, `securefvpa run` submitting the app with `flwr run`. Each ClientApp message starts a
fresh process that imports torch, so a round costs tens of seconds on 2 cores.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from securefvpa.rundir import read_node_config

pytestmark = [pytest.mark.deployment, pytest.mark.slow, pytest.mark.xdist_group("flower")]

REPO = Path(__file__).resolve().parents[2]
LAUNCHER = REPO / "examples" / "deployment" / "launch.py"
CONFIG = REPO / "examples" / "deployment" / "deployment.toml"
BIN = Path(sys.executable).parent

if not (BIN / "flower-superlink").exists() and shutil.which("flower-superlink") is None:
    pytest.skip("the flower-superlink binary is not installed", allow_module_level=True)


def _launch_module():
    spec = importlib.util.spec_from_file_location("securefvpa_deploy_launch", LAUNCHER)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _processes_with_launch_id(launch_id: str) -> list[int]:
    """Live processes of this user whose environment carries the launcher's id."""
    needle = f"SECUREFVPA_LAUNCH_ID={launch_id}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def _alive_as_recorded(pid: int, name: str) -> bool:
    """True if ``pid`` still runs the process the launcher recorded (PIDs can be reused)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    if stat.rsplit(")", 1)[1].split()[0] == "Z":
        return False
    own = name in ("superlink", "run") or name.startswith("supernode-")
    return own or cmd.strip()[:200] == name


def _env() -> dict[str, str]:
    return os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _launch_argv(run_dir: Path, timeout: int, *extra: str) -> list[str]:
    """The launcher's command line for ``CONFIG`` into ``run_dir``, plus ``extra`` options."""
    return [
        sys.executable,
        str(LAUNCHER),
        "--config",
        str(CONFIG),
        "--out",
        str(run_dir),
        "--timeout",
        str(timeout),
        *extra,
    ]


def test_deployment_run_with_tls_and_supernode_auth(tmp_path):
    run_dir = tmp_path / "deploy"
    pyproject = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()
    t0 = time.perf_counter()
    proc = subprocess.run(
        _launch_argv(run_dir, 150, "--supernodes", "2", "--node-data"),
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["mode"] == "deployment"
    assert [r["round"] for r in metrics["rounds"]] == [0, 1]
    assert metrics["rounds"][1]["clients"] == 2
    acc = metrics["accuracy"]["seen_users"]
    assert isinstance(acc, float) and 0.0 <= acc <= 1.0
    assert (run_dir / "final_params.npz").is_file()

    logs = run_dir / "logs"
    link_log = (logs / "superlink.log").read_text()
    assert "Uvicorn running on https://127.0.0.1" in link_log  # TLS on Fleet/Control/Runtime
    assert link_log.count("RegisterNode] Created node_id") == 2  # both keys registered
    assert link_log.count("[Fleet.ActivateNode] Activated node_id") == 2
    # Each SuperNode read its partition from its own folder, named by its own node config
    # file (the trust boundary): the shared partitions/ folder no longer holds any.
    assert list((run_dir / "partitions").glob("client_*.npz")) == []
    for i in range(2):
        node_log = (logs / f"supernode-{i}.log").read_text()
        data_dir = run_dir / "node-data" / f"supernode-{i}"
        own = data_dir / "node.toml"
        assert f'partition-id={i} num-partitions=2 node-config="{own}"' in node_log
        assert sorted(p.name for p in data_dir.iterdir()) == [f"client_{i:05d}.npz", "node.toml"]
        assert read_node_config(own).partition == str(data_dir / f"client_{i:05d}.npz")
        assert "--auth-supernode-private-key" in node_log

    # Every process the launcher started or saw is gone, and so is every process that inherited
    # its environment (Flower's SuperExec/ServerApp/ClientApp processes included).
    record = json.loads((logs / "processes.json").read_text())
    names = record["processes"].values()
    assert {"superlink", "run", "supernode-0", "supernode-1"} <= set(names)
    assert any("flwr-serverapp" in n for n in names)
    assert any("flwr-clientapp" in n for n in names)
    assert record["alive_after_stop"] == []
    alive = [p for p, n in record["processes"].items() if _alive_as_recorded(int(p), n)]
    assert alive == []
    assert _processes_with_launch_id(record["launch_id"]) == []

    # The temporary folder with the CA key and the SuperNode keys was deleted.
    tmp_dir = re.search(r"--ssl-ca-certfile (\S+)/tls/ca\.pem", link_log).group(1)
    assert not Path(tmp_dir).exists()
    # `flwr run` must not rewrite the project (Flower 1.42 migrates [tool.flwr.federations]).
    assert hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest() == pyproject
    print(f"deployment run: {wall:.1f} s wall")


def test_unregistered_supernode_is_refused(tmp_path):
    """--enable-supernode-auth: a registered key connects, an unregistered one is refused."""
    launch = _launch_module()
    logs = tmp_path / "logs"
    logs.mkdir()
    ca, cert, key = launch.make_tls(tmp_path / "tls")
    link_port, port_a, port_b = launch.free_ports(3)
    launch.write_flower_config(tmp_path / "home", link_port, ca)
    env = launch.launch_env(tmp_path / "home")
    procs = launch.Processes(logs, env, subreaper=False)  # leave the pytest process as it is
    try:
        link = procs.start(
            "superlink",
            [
                str(BIN / "flower-superlink"),
                "--ssl-ca-certfile",
                str(ca),
                "--ssl-certfile",
                str(cert),
                "--ssl-keyfile",
                str(key),
                "--disable-runtime-dependency-installation",
                "--host",
                "127.0.0.1",
                "--port",
                str(link_port),
                "--enable-supernode-auth",
            ],
        )
        launch.wait_port(link_port, link, 60, logs / "superlink.log")
        priv_a, pub_a = launch.make_node_key(tmp_path / "keys", 0)
        priv_b, _ = launch.make_node_key(tmp_path / "keys", 1)
        launch.register_supernode(pub_a, "registered", env, logs / "register.log")

        def node(name: str, priv: Path, port: int):
            return procs.start(
                name,
                [
                    str(BIN / "flower-supernode"),
                    "--root-certificates",
                    str(ca),
                    "--superlink",
                    f"127.0.0.1:{link_port}",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--auth-supernode-private-key",
                    str(priv),
                    "--node-config",
                    "partition-id=0 num-partitions=1",
                    "--max-retries",
                    "1",
                ],
            )

        good = node("supernode-registered", priv_a, port_a)
        deadline = time.monotonic() + 60
        while "Activated node_id" not in (logs / "superlink.log").read_text():
            assert good.poll() is None, (logs / "supernode-registered.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the registered SuperNode was not activated"
            time.sleep(0.2)
        bad = node("supernode-unregistered", priv_b, port_b)
        assert bad.wait(timeout=60) != 0
        assert "Failed to activate SuperNode" in (logs / "supernode-unregistered.log").read_text()
        assert good.poll() is None  # the registered node is still connected
        assert (logs / "superlink.log").read_text().count("Activated node_id") == 1
    finally:
        procs.stop_all()
    assert json.loads((logs / "processes.json").read_text())["alive_after_stop"] == []
    # Without the subreaper, the refused node's SuperExec (own session) is orphaned when the node
    # exits; Flower's parent monitor ends it within a second or two.
    deadline = time.monotonic() + 15
    while _processes_with_launch_id(env["SECUREFVPA_LAUNCH_ID"]):
        assert time.monotonic() < deadline, _processes_with_launch_id(env["SECUREFVPA_LAUNCH_ID"])
        time.sleep(0.2)


def test_sigterm_mid_run_leaves_no_process(tmp_path):
    """The launcher killed while SuperNodes run stops everything it started, Flower's included."""
    run_dir = tmp_path / "deploy"
    proc = subprocess.Popen(
        _launch_argv(run_dir, 150),
        cwd=REPO,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 150
        while not (run_dir / "logs" / "supernode-1.log").exists():
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "the SuperNodes never started"
            time.sleep(0.2)
        time.sleep(3.0)  # let the SuperNodes connect and the ServerApp start
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]
    record = json.loads((run_dir / "logs" / "processes.json").read_text())
    assert {"superlink", "run", "supernode-0", "supernode-1"} <= set(record["processes"].values())
    assert record["alive_after_stop"] == []
    assert _processes_with_launch_id(record["launch_id"]) == []
    assert not (run_dir / "metrics.json").exists()


def test_deployment_with_secure_aggregation(tmp_path):
    """Secure aggregation on the Deployment Engine, where every message starts a fresh ClientApp
    process: the protocol state must survive in the node's state between its five phases."""
    run_dir = tmp_path / "deploy-secagg"
    proc = subprocess.run(
        _launch_argv(
            run_dir,
            240,
            "--set",
            "data.users=12",
            "--set",
            "secagg.enabled=true",
            "--set",
            "federation.min_fit_clients=3",
        ),
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=360,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["mode"] == "deployment" and metrics["secagg"]["rounds"]
    r1 = metrics["rounds"][1]
    # complete graph: advertise, share keys, check, unmask (the masked input rides on training)
    assert r1["secagg"]["phases"] == 4
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert r1["secagg"]["contributors"] == r1["clients"] == manifest["train_clients"] >= 3
    assert r1["failed"] == []
