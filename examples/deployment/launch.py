"""Run securefvpa on Flower's Deployment Engine on this machine: TLS, SuperNode auth, N SuperNodes.

    python examples/deployment/launch.py --config examples/deployment/deployment.toml \
        --out runs/deploy --supernodes 2

What it does, in order (every process on 127.0.0.1, every port picked free):

1. make a throwaway CA and a server certificate for 127.0.0.1/localhost (``cryptography``; keys
   from the library's CSPRNG) and a temporary ``FLWR_HOME`` whose ``config.toml`` defines the
   connection ``securefvpa-local`` (address + the CA as ``root-certificates``);
2. start ``flower-superlink`` with TLS, ``--enable-supernode-auth`` and
   ``--disable-runtime-dependency-installation`` (otherwise it would ``uv sync`` the app's
   dependencies, i.e. a CUDA torch);
3. start ``securefvpa run CONFIG --out RUN_DIR`` with ``federation.mode = "deployment"`` and
   ``federation.superlink = "securefvpa-local"``: it prepares the data, writes one partition file
   per client, ``manifest.json`` and one node config per client (``RUN_DIR/nodes/``), then
   submits the app with ``flwr run`` (see ``securefvpa.fl.launch.run_deployment_mode``); the
   ServerApp waits for ``manifest["clients"]`` nodes (training + unseen-user clients);
4. read that count from ``RUN_DIR/manifest.json``, make one P-384 key pair per SuperNode, register
   each public key with ``flwr supernode register`` and start that many ``flower-supernode``
   processes with ``--node-config "partition-id=i num-partitions=N node-config='…'"``: every
   path the node reads or writes comes from that file, never from the server (with
   ``--node-data``, each node also gets only its own partition file and its own node config in a
   folder of its own); TLS root certificate and their private key;
5. wait for the run, then stop every process it started (SIGTERM, wait, SIGKILL), including the
   SuperExec / ServerApp / ClientApp processes Flower spawns in new sessions: the launcher makes
   itself a child subreaper (Linux ``prctl``), so those are re-parented to it and found by walking
   ``/proc``. Also on errors, Ctrl-C and SIGTERM. The temporary folder (CA key, node keys) is
   deleted at the end.

Logs: ``RUN_DIR/logs/{superlink,supernode-<i>,run,register}.log``; the PIDs of every process seen
are written to ``RUN_DIR/logs/processes.json`` (the test checks that none is left alive).
Exit status: 0 when ``RUN_DIR/metrics.json`` was written, 1 on a failed step, 128 + N on signal N.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import dataclasses
import datetime as dt
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CONNECTION = "securefvpa-local"
BIN = Path(sys.executable).parent  # flower-superlink, flower-supernode, flwr, securefvpa
REPO = Path(__file__).resolve().parents[2]
PR_SET_CHILD_SUBREAPER = 36
LAUNCH_ID_ENV = "SECUREFVPA_LAUNCH_ID"


class LaunchError(RuntimeError):
    """A step of the launch failed; the message names the step and where its log is."""


# -- certificates and keys -------------------------------------------------------------------

def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def make_tls(directory: Path, *, days: int = 1) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 / ::1 / localhost; returns (ca, cert, key)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "securefvpa throwaway CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca_path, cert_path, key_path = (directory / n for n in ("ca.pem", "server.pem", "server.key"))
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_private(key_path, key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return ca_path, cert_path, key_path


def make_node_key(directory: Path, index: int) -> tuple[Path, Path]:
    """A P-384 key pair in OpenSSH format, as Flower 1.42 loads it; returns (private, public)."""
    key = ec.generate_private_key(ec.SECP384R1())
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    priv, pub = directory / f"supernode-{index}", directory / f"supernode-{index}.pub"
    _write_private(priv, key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.OpenSSH,
                                           serialization.NoEncryption()))
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                  serialization.PublicFormat.OpenSSH))
    return priv, pub


def write_flower_config(home: Path, port: int, ca: Path) -> Path:
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = home / "config.toml"
    path.write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n'
        f'[superlink.{CONNECTION}]\naddress = "127.0.0.1:{port}"\n'
        f'root-certificates = "{ca.resolve()}"\n'
    )
    return path


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (every socket stays bound until all are known)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


# -- processes -----------------------------------------------------------------------------

def _ppid_and_state(pid: int) -> tuple[int, str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[1]), fields[0]


def descendants(root: int, *, zombies: bool = False) -> list[int]:
    """PIDs of every live descendant of ``root`` (or only the zombies), from ``/proc`` (Linux)."""
    children: dict[int, list[int]] = {}
    states: dict[int, str] = {}
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    for entry in proc.iterdir():
        if entry.name.isdigit():
            info = _ppid_and_state(int(entry.name))
            if info is not None:
                children.setdefault(info[0], []).append(int(entry.name))
                states[int(entry.name)] = info[1]
    out: list[int] = []
    stack = list(children.get(root, []))
    while stack:
        pid = stack.pop()
        out.append(pid)
        stack.extend(children.get(pid, []))
    return [p for p in out if (states.get(p) == "Z") == zombies]


def pid_alive(pid: int) -> bool:
    info = _ppid_and_state(pid)
    return info is not None and info[1] != "Z"


class Processes:
    """Every process this launcher starts, and how to stop all of them and their descendants.

    With ``subreaper`` (Linux), this process becomes a child subreaper: Flower starts its
    SuperExec / ServerApp / ClientApp processes in new sessions, and when their parent exits
    they are re-parented here instead of to init, so a walk of ``/proc`` still finds them.
    Every descendant seen is also remembered (PID + command line) and stopped by PID.
    """

    def __init__(self, log_dir: Path, env: dict[str, str], *, subreaper: bool = True) -> None:
        self.log_dir = log_dir
        self.env = env
        self.procs: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]] = []
        self.seen: dict[int, str] = {}  # pid -> name given here, or its command line
        self._stopped = False
        if subreaper and sys.platform.startswith("linux"):
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
                print("launch: WARNING: prctl(PR_SET_CHILD_SUBREAPER) failed", file=sys.stderr)

    def start(self, name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        log = (self.log_dir / f"{name}.log").open("ab")
        log.write(f"$ {' '.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=self.env, cwd=REPO, start_new_session=True)
        self.procs.append((name, proc, log))
        self.seen[proc.pid] = name
        return proc

    def track(self) -> None:
        """Remember every current descendant."""
        for pid in descendants(os.getpid()):
            self.seen.setdefault(pid, _cmdline(pid))

    def check_alive(self, names: tuple[str, ...]) -> None:
        for name, proc, _ in self.procs:
            if name.startswith(names) and proc.poll() is not None:
                raise LaunchError(f"{name} exited early with status {proc.returncode}; "
                                  f"see {self.log_dir / (name + '.log')}")

    def remaining(self) -> list[int]:
        """Live descendants, plus any process seen earlier that still runs the same command."""
        own = {proc.pid: proc for _, proc, _ in self.procs}
        left = set(descendants(os.getpid()))
        for pid, name in self.seen.items():
            if pid in own:
                if own[pid].poll() is None:
                    left.add(pid)
            elif pid_alive(pid) and _cmdline(pid) == name:
                left.add(pid)
        return sorted(left)

    def stop_all(self, grace: float = 10.0) -> None:
        """Stop everything started here and every descendant; idempotent (finally + atexit)."""
        if self._stopped:
            return
        with contextlib.suppress(ValueError):  # not in the main thread: keep the handler
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut cleanup
        self.track()
        # Newest first: SuperNodes and the run before the SuperLink they talk to; each stops
        # its own SuperExec and app processes on SIGTERM.
        for _, proc, _ in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
        self._wait(grace)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            left = self.remaining()
            if not left:
                break
            for pid in left:
                self.seen.setdefault(pid, _cmdline(pid))
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
            self._wait(grace if sig == signal.SIGTERM else 5.0)
        for _, proc, log in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
        self._reap()
        still = self.remaining()
        (self.log_dir / "processes.json").write_text(json.dumps(
            {"launcher": os.getpid(), "launch_id": self.env.get(LAUNCH_ID_ENV),
             "processes": {str(k): v for k, v in self.seen.items()},
             "alive_after_stop": still}, indent=2))
        if still:
            print(f"launch: WARNING: processes still alive after stop: {still}", file=sys.stderr)
        self._stopped = True

    def _wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._reap()
            if not self.remaining():
                return
            time.sleep(0.1)

    def _reap(self) -> None:
        """Collect exited children; re-parented grandchildren are not known to any Popen."""
        own = {p.pid for _, p, _ in self.procs}
        for _, proc, _ in self.procs:
            proc.poll()
        for pid in descendants(os.getpid(), zombies=True):
            if pid not in own:
                with contextlib.suppress(ChildProcessError, OSError):
                    os.waitpid(pid, os.WNOHANG)


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()[:200]


def _tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LaunchError(f"{proc.args[0]} exited with status {proc.returncode} while "
                              f"starting; see {log}:\n{_tail(log)}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise LaunchError(f"nothing listened on 127.0.0.1:{port} within {timeout:.0f} s; see {log}")


def wait_manifest(run_dir: Path, since_ns: int, proc: subprocess.Popen[bytes], timeout: float,
                  log: Path) -> dict[str, int]:
    """The manifest ``securefvpa run`` writes before it submits the app (not older than
    ``since_ns``, so a manifest left by an earlier run is never read)."""
    path = run_dir / "manifest.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            if path.stat().st_mtime_ns >= since_ns:
                manifest = json.loads(path.read_text())
                if isinstance(manifest.get("clients"), int):
                    return manifest
        if proc.poll() is not None:
            raise LaunchError(f"`securefvpa run` exited with status {proc.returncode} before "
                              f"writing {path}; see {log}:\n{_tail(log)}")
        time.sleep(0.2)
    raise LaunchError(f"{path} was not written within {timeout:.0f} s; see {log}")


# -- main ------------------------------------------------------------------------------------

def launch_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        # Inherited by every process started from here, Flower's own included: a test can
        # look for it in /proc/*/environ to prove that nothing outlives the launcher.
        LAUNCH_ID_ENV: secrets.token_hex(8),
        "FLWR_HOME": str(home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS", "1"),
        # Flower finds flower-superexec / flwr-serverapp / flwr-clientapp on PATH.
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    })
    return env


def register_supernode(pub: Path, name: str, env: dict[str, str], log: Path) -> None:
    """``flwr supernode register`` over the Control API (TLS, verified against the CA)."""
    reg = subprocess.run([str(BIN / "flwr"), "supernode", "register", str(pub), CONNECTION,
                          "--name", name],
                         env=env, cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True,
                         timeout=60, check=False)
    with log.open("ab") as fh:
        fh.write(reg.stdout + reg.stderr)
    if reg.returncode != 0:
        raise LaunchError(f"`flwr supernode register` failed for {name} (status "
                          f"{reg.returncode}); see {log}")


def node_config_path(run_dir: Path, index: int) -> Path:
    return run_dir / "nodes" / f"node_{index:05d}.toml"


def wait_node_configs(run_dir: Path, n: int, since_ns: int, proc: subprocess.Popen[bytes],
                      timeout: float, log: Path) -> None:
    """Wait until ``securefvpa run`` has written the node configs of all ``n`` clients."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if all(node_config_path(run_dir, i).stat().st_mtime_ns >= since_ns for i in range(n)):
                return
        if proc.poll() is not None:
            raise LaunchError(f"`securefvpa run` exited with status {proc.returncode} before "
                              f"writing the node configs; see {log}:\n{_tail(log)}")
        time.sleep(0.2)
    raise LaunchError(f"node configs under {run_dir / 'nodes'} were not written within "
                      f"{timeout:.0f} s; see {log}")


def isolate_partition(run_dir: Path, index: int) -> Path:
    """Move partition ``index`` into a folder of its own, as on a separate machine, and give the
    node a node config of its own there that names the moved file. Returns that node config."""
    from securefvpa.rundir import read_node_config, write_node_config

    folder = run_dir / "node-data" / f"supernode-{index}"
    folder.mkdir(parents=True, exist_ok=True)
    name = f"client_{index:05d}.npz"
    src = run_dir / "partitions" / name
    if src.exists():
        os.replace(src, folder / name)
    elif not (folder / name).exists():
        raise LaunchError(f"partition file {src} not found")
    node = read_node_config(node_config_path(run_dir, index))
    own = dataclasses.replace(node, partition=str((folder / name).resolve()))
    return write_node_config(folder / "node.toml", own)


def launch(args: argparse.Namespace) -> int:
    run_dir = args.out.resolve()
    log_dir = run_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="sfvpa-deploy-"))  # mode 0700: CA key and node keys
    env = launch_env(tmp / "flwr_home")
    procs = Processes(log_dir, env)
    atexit.register(procs.stop_all)
    atexit.register(shutil.rmtree, tmp, True)
    auth = not args.no_auth
    try:
        ca, cert, key = make_tls(tmp / "tls")
        (link_port,) = free_ports(1)
        write_flower_config(tmp / "flwr_home", link_port, ca)
        tls = ["--ssl-ca-certfile", str(ca), "--ssl-certfile", str(cert), "--ssl-keyfile", str(key)]
        t0 = time.perf_counter()
        link = procs.start("superlink", [
            str(BIN / "flower-superlink"), *tls, "--disable-runtime-dependency-installation",
            "--host", "127.0.0.1", "--port", str(link_port),
            *(["--enable-supernode-auth"] if auth else [])])
        wait_port(link_port, link, 60, log_dir / "superlink.log")
        print(f"launch: SuperLink (TLS{', SuperNode auth' if auth else ''}) on "
              f"127.0.0.1:{link_port}, pid {link.pid}", flush=True)

        since = 0 if args.resume else time.time_ns()
        run_cmd = [str(BIN / "securefvpa"), "run", str(args.config.resolve()),
                   "--out", str(run_dir), "--set", 'federation.mode="deployment"',
                   "--set", f'federation.superlink="{CONNECTION}"']
        for item in args.overrides:
            run_cmd += ["--set", item]
        run = procs.start("run", run_cmd + (["--resume"] if args.resume else []))
        manifest = wait_manifest(run_dir, since, run, args.timeout, log_dir / "run.log")
        n = manifest["clients"]
        if args.supernodes is not None and args.supernodes != n:
            raise LaunchError(
                f"--supernodes is {args.supernodes} but the config gives {n} clients "
                f"({manifest.get('train_clients')} training + "
                f"{manifest.get('unseen_clients')} unseen) and the ServerApp waits for exactly "
                f"that many SuperNodes. Change data.users / federation.users_per_client / "
                f"data.unseen_share, or pass --supernodes {n}.")

        wait_node_configs(run_dir, n, since, run, args.timeout, log_dir / "run.log")
        ports = free_ports(n)
        for i in range(n):
            # TLS to the SuperLink (verified against the CA) and on the node's own Runtime API,
            # which its ClientApp processes call on loopback. Every path the node reads or
            # writes comes from its node config file, never from the server.
            own = isolate_partition(run_dir, i) if args.node_data else node_config_path(run_dir, i)
            node_config = f'partition-id={i} num-partitions={n} node-config="{own}"'
            cmd = [str(BIN / "flower-supernode"), "--root-certificates", str(ca),
                   "--superlink", f"127.0.0.1:{link_port}", *tls, "--host", "127.0.0.1",
                   "--port", str(ports[i]), "--node-config", node_config]
            if auth:
                priv, pub = make_node_key(tmp / "node_keys", i)
                register_supernode(pub, f"supernode-{i}", env, log_dir / "register.log")
                cmd += ["--auth-supernode-private-key", str(priv)]
            procs.start(f"supernode-{i}", cmd)
        print(f"launch: {n} SuperNodes started; waiting for the run (logs in {log_dir})",
              flush=True)

        deadline = time.monotonic() + args.timeout
        while run.poll() is None:
            if time.monotonic() > deadline:
                raise LaunchError(f"the run did not finish within {args.timeout:.0f} s; "
                                  f"see {log_dir / 'run.log'}")
            procs.check_alive(("superlink", "supernode-"))
            procs.track()
            time.sleep(0.5)
        if run.returncode != 0:
            raise LaunchError(f"`securefvpa run` exited with status {run.returncode}; see "
                              f"{log_dir / 'run.log'}:\n{_tail(log_dir / 'run.log')}")
        metrics = json.loads((run_dir / "metrics.json").read_text())
        acc = metrics.get("accuracy", {})
        print(f"launch: done in {time.perf_counter() - t0:.1f} s: "
              f"{len(metrics['rounds']) - 1} rounds, seen-user accuracy {acc.get('seen_users')}, "
              f"unseen {acc.get('unseen_users')}; {run_dir / 'metrics.json'}", flush=True)
        return 0
    except LaunchError as err:
        print(f"launch: error: {err}", file=sys.stderr)
        return 1
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


def _raise_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through launch()'s finally: children are stopped


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, required=True, help="securefvpa run config (TOML)")
    p.add_argument("--out", type=Path, required=True, help="run directory")
    p.add_argument("--supernodes", type=int, default=None,
                   help="expected number of SuperNodes (= clients in the manifest); "
                        "default: as many as the manifest lists")
    p.add_argument("--timeout", type=float, default=600.0,
                   help="seconds allowed for the data preparation, and again for the rounds")
    p.add_argument("--no-auth", action="store_true", help="do not enable SuperNode authentication")
    p.add_argument("--resume", action="store_true", help="continue a run from its checkpoint")
    p.add_argument("--node-data", action="store_true",
                   help="move each partition file to RUN_DIR/node-data/supernode-<i>/ and give "
                        "that folder to its SuperNode only (node config data-dir), as on "
                        "separate machines")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="passed on to `securefvpa run --set`")
    args = p.parse_args(argv)
    if args.supernodes is not None and args.supernodes < 1:
        p.error(f"--supernodes must be >= 1. Found {args.supernodes}.")
    if not args.timeout > 0:
        p.error(f"--timeout must be > 0. Found {args.timeout}.")
    if not args.config.is_file():
        p.error(f"--config: file not found: {str(args.config)!r}")
    for tool in ("flower-superlink", "flower-supernode", "flwr", "securefvpa"):
        if not (BIN / tool).exists():
            p.error(f"{tool} is not installed next to {sys.executable}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    return launch(args)


if __name__ == "__main__":
    sys.exit(main())
