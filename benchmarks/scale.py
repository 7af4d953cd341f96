"""Scale benchmark: seconds per round, where the time goes and peak memory at thousands of users.

Run ``python benchmarks/scale.py [--quick]``; prints tables and writes
``benchmarks/results/scale.json``. The whole default run takes about 10 minutes on 2 cores.

The recipe is the DP recipe of issue #11 (private by default): generated users (16 pairs each,
4 held out, 20 % unseen), FedVPA-GP with a 64-d input projection and hidden size 16, one
distributed DP-SGD step per round (pair unit, q = 0.1, target epsilon 8 over 100 planned rounds,
clip 1), secure aggregation on, ``users_per_client = 200`` (silo style: one Opacus call serves a
node's 200 users), every training node every round, FedAdam on the server. Only the number of
users changes between cases, and ``federation.rounds`` (a few rounds are enough for timing; the
noise is then calibrated for those rounds, which changes sigma but not the work of a round).

What is measured (each case in a fresh child process, wall clock, ``uptime`` load beside it):

1. **Seconds per round** from the run's own ``metrics.json`` (``rounds[*].wall_seconds``): the
   first round separately (imports, first Opacus wrap), the mean and median over the training
   rounds >= 2 that do not evaluate, and one evaluation (round 0 evaluates only); the setup
   (data, partitions, DP calibration, Ray start) is the rest of the process' wall time.
   ``federation.mode = "inprocess"`` is the production round engine without Flower messages;
   ``"simulation"`` is Flower's simulation engine (Ray actors, one per core), what ``make demo``
   uses: every secure-aggregation phase is a Flower message per client.
2. **Where the time goes**: in-process, a cProfile of the training rounds >= 2 and of one
   evaluation, each cost as seconds per round and per node-round (per-unit gradients: forward
   and backward, Opacus wrap/unwrap, episodes, collate; DDG encode; budget guard; ledger commit;
   model reset; ring sum and decode; server step; checkpoint). Under Flower, the ClientApp's
   handlers are timed inside the Ray actors (train stage, each secure-aggregation phase,
   evaluation), next to the server's own ``train_seconds`` / ``protocol_seconds``; what the
   actors do not account for is Flower/Ray message transport.
3. **Peak memory**: ``ru_maxrss`` of the child, and the high-water mark (``VmHWM``) of every
   process it started (Ray's raylet, GCS, workers), sampled from ``/proc`` every 0.5 s; the
   peak of the summed proportional set size (PSS: shared pages split between processes).
4. **A projection on paper** for what the engine cannot run on 2 cores: 10,000 single-user
   devices per round, from the measured per-node costs (fixed vs per-unit), the per-client
   secure-aggregation cost against n (``benchmarks/results/secagg.json``), and the
   noise-to-signal scaling: the DP noise in the mean update has norm ``z C sqrt(d) / (q N)``
   (z the central noise multiplier the run's own planner gives, C the clip norm, d the vector
   length, q the sampling rate, N the units in the population), against a clipped mean
   gradient of norm at most C.

``--verify-against DIR`` checks that a performance change left results unchanged: a seeded DP
run (1,000 users, 3 rounds, in-process) is made deterministic by replacing ``os.urandom`` with a
fixed SHA-256 counter stream *in that child process only* (never in a real run), once with the
code in DIR (e.g. ``git archive <commit> | tar -x -C DIR``) and once with this tree; the final
parameters, the evaluation and the ledger's DP events must be identical.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"

PLANNED_ROUNDS = 100  # the recipe's rounds: the noise is calibrated for these
def _recipe() -> dict[str, Any]:
    """The private recipe, read from ``examples/private.toml`` (the one place it is written),
    with this benchmark's size and engine: 1,000 users by default, in process."""
    from securefvpa.config import read_toml

    cfg = read_toml(REPO / "examples" / "private.toml")
    cfg.pop("run_id", None)
    cfg["data"]["users"] = 1000
    cfg["federation"].update(mode="inprocess", rounds=PLANNED_ROUNDS)
    return cfg


RECIPE: dict[str, Any] = _recipe()


# ------------------------------------------------------------------------------------------
# helpers shared by parent and child
# ------------------------------------------------------------------------------------------


def load_avg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def case_config(users: int, mode: str, rounds: int, cache_dir: str | None) -> dict[str, Any]:
    cfg = json.loads(json.dumps(RECIPE))
    cfg["data"]["users"] = users
    cfg["federation"]["mode"] = mode
    cfg["federation"]["rounds"] = rounds
    cfg["federation"]["eval_every"] = rounds  # evaluate at round 0 and at the last round only
    if cache_dir:
        cfg["embedding"] = {"cache_dir": cache_dir}
    return cfg


class MemoryMonitor(threading.Thread):
    """High-water marks of this process and of every process it started (from ``/proc``)."""

    def __init__(self, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.stop = threading.Event()
        self.hwm_kb: dict[int, int] = {}
        self.kind: dict[int, str] = {}
        self.peak_pss_kb = 0
        self.peak_rss_sum_kb = 0

    @staticmethod
    def _status(pid: int) -> dict[str, int]:
        out = {}
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(("VmHWM:", "VmRSS:")):
                    out[line.split(":")[0]] = int(line.split()[1])
        return out

    @staticmethod
    def _pss(pid: int) -> int:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    return int(line.split()[1])
        return 0

    def _descendants(self) -> list[int]:
        children: dict[int, list[int]] = {}
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = Path(f"/proc/{d}/stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(d))
        out, todo = [], [os.getpid()]
        while todo:
            pid = todo.pop()
            out.append(pid)
            todo += children.get(pid, [])
        return out

    def sample(self) -> None:
        pss = rss = 0
        for pid in self._descendants():
            st = self._status(pid)
            if not st:
                continue
            self.hwm_kb[pid] = max(self.hwm_kb.get(pid, 0), st.get("VmHWM", 0))
            rss += st.get("VmRSS", 0)
            pss += self._pss(pid)
            if pid not in self.kind:
                with contextlib.suppress(OSError):
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                    self.kind[pid] = _process_kind(cmd, pid)
        self.peak_pss_kb = max(self.peak_pss_kb, pss)
        self.peak_rss_sum_kb = max(self.peak_rss_sum_kb, rss)

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(self.interval)

    def result(self) -> dict[str, Any]:
        import resource

        me = os.getpid()
        by_kind: dict[str, list[int]] = {}
        for pid, kb in self.hwm_kb.items():
            if pid != me:
                by_kind.setdefault(self.kind.get(pid, "other"), []).append(kb)
        return {
            "main_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "children": {
                k: {"processes": len(v), "max_hwm_mb": max(v) / 1024, "sum_hwm_mb": sum(v) / 1024}
                for k, v in sorted(by_kind.items())
            },
            "peak_pss_all_mb": self.peak_pss_kb / 1024,
            "peak_rss_sum_all_mb": self.peak_rss_sum_kb / 1024,
        }


def _process_kind(cmd: str, pid: int) -> str:
    if pid == os.getpid():
        return "main"
    for needle, name in (
        ("default_worker.py", "ray worker (ClientApp actor)"),
        ("raylet", "ray raylet"),
        ("gcs_server", "ray gcs"),
        ("dashboard", "ray dashboard/agents"),
        ("runtime_env", "ray dashboard/agents"),
        ("log_monitor", "ray log monitor"),
    ):
        if needle in cmd:
            return name
    return "other"


# ------------------------------------------------------------------------------------------
# the child: one case
# ------------------------------------------------------------------------------------------


def timed_client_app(nodes_dir: Path, log_dir: str, node_cache: int = 0) -> Any:
    """``fl.client_app.make_client_app`` with every handler timed inside the Ray actor: one
    JSON line per message in ``log_dir/<pid>.jsonl`` (kind, seconds, node-cache misses).

    ``node_cache > 0`` is an experiment, never the production setting: each actor's cache of
    loaded nodes (``fl.node._node_from_file``, an LRU bounded by ``fl.node.NODE_CACHE_BYTES``
    of node data) gets a budget of that many MiB instead."""
    from flwr.clientapp import ClientApp

    from securefvpa.fl.client_app import client_handlers
    from securefvpa.fl.node import NodeResolver
    from securefvpa.fl.secagg_mod import make_secagg_mod

    h = client_handlers(NodeResolver(nodes_dir))
    mod = make_secagg_mod(h.resolver)

    def resize_cache() -> None:
        from securefvpa.fl import node as node_mod

        if node_cache:
            node_mod._node_from_file.budget = node_cache << 20

    def record(kind: str, rnd: int, seconds: float) -> None:
        from securefvpa.fl import node as node_mod

        info = node_mod._node_from_file.cache_info()
        line = {"kind": kind, "round": rnd, "s": seconds, "misses": info.misses}
        with open(os.path.join(log_dir, f"{os.getpid()}.jsonl"), "a") as fh:
            fh.write(json.dumps(line) + "\n")

    def timed(kind: str, fn: Any) -> Any:
        def inner(msg: Any, context: Any) -> Any:
            from securefvpa.fl.wire import CONFIG, Instruction, get_config

            rnd = get_config(msg.content, CONFIG, Instruction).round
            resize_cache()
            t0 = time.perf_counter()
            try:
                return fn(msg, context)
            finally:
                record(kind, rnd, time.perf_counter() - t0)

        return inner

    def timed_mod(msg: Any, context: Any, call_next: Any) -> Any:
        from securefvpa.fl.wire import CONFIG, Instruction, get_config
        from securefvpa.secagg.messages import peek_type

        kind, rnd = "train (no secagg)", -1
        if CONFIG in msg.content.config_records:
            ins = get_config(msg.content, CONFIG, Instruction)
            rnd = ins.round
            if ins.secagg and ins.secagg_stage == "train":
                kind = "train stage (local round + masked input)"
            elif ins.secagg and ins.secagg_payload is not None:
                kind = (
                    f"secagg {peek_type(ins.secagg_payload).name.lower().replace('_request', '')}"
                )
        resize_cache()
        prof = None
        if os.environ.get("SCALE_ACTOR_PROFILE") and rnd >= 2:
            import cProfile

            prof = cProfile.Profile()
            prof.enable()
        t0 = time.perf_counter()
        try:
            return mod(msg, context, call_next)
        finally:
            record(kind, rnd, time.perf_counter() - t0)
            if prof is not None:
                prof.disable()
                name = f"{kind.split()[0]}-{os.getpid()}-{time.perf_counter_ns()}.prof"
                prof.dump_stats(os.path.join(os.environ["SCALE_ACTOR_PROFILE"], name))

    app = ClientApp()
    app.query()(h.query)
    app.train(mods=[timed_mod])(h.train)
    app.evaluate()(timed("evaluate", h.evaluate))
    return app


# (label, module, attribute path): wall-clock timers wrapped around these calls in the child
# process (in-process cases) during the training rounds >= 2; labels starting with two spaces
# are parts of the label above them.
TIMED: list[tuple[str, str, str]] = [
    ("local round of a node (local_train_round)", "securefvpa.rounds.local", "local_train_round"),
    ("  budget guard (PrivacyPlan.authorize)", "securefvpa.privacy.plan", "PrivacyPlan.authorize"),
    ("  seeding (_seed_round)", "securefvpa.train.client", "_seed_round"),
    ("  model reset + load (_model_for)", "securefvpa.train.client", "_model_for"),
    ("  schedule (apply_schedule)", "securefvpa.train.loop", "apply_schedule"),
    ("  per-unit gradients (clipped_unit_gradients)", "securefvpa.train.private",
     "clipped_unit_gradients"),
    ("    episodes (unit_episodes)", "securefvpa.train.private", "unit_episodes"),
    ("    Opacus wrap (GradSampleModule)", "securefvpa.train.private", "wrap"),
    ("    collate (gather embeddings)", "securefvpa.train.private", "collate"),
    ("    forward", "opacus", "GradSampleModule.forward"),
    ("    backward (per-sample gradients)", "torch", "Tensor.backward"),
    ("    Opacus unwrap (_close)", "opacus", "GradSampleModule._close"),
    ("  config hash (rotation seed)", "securefvpa.train.client", "config_hash"),
    ("  DDG encode (rotate, round, noise share)", "securefvpa.train.client", "ddg_encode"),
    ("  ledger commit (PrivacyPlan.commit)", "securefvpa.privacy.plan", "PrivacyPlan.commit"),
    ("ring decode (server)", "securefvpa.rounds.encoding", "RoundCodec.decode"),
    ("server optimizer step", "securefvpa.rounds.engine", "server_step"),
    ("checkpoint save", "securefvpa.rounds.engine", "RunDirStore.save"),
    ("round journal", "securefvpa.rounds.engine", "RunDirStore.begin"),
]  # fmt: skip


class Timers:
    """Wall-clock timers around :data:`TIMED` (about a microsecond per call), active only
    inside the training rounds >= 2; one evaluation of every node timed apart."""

    def __init__(self) -> None:
        self.active = False
        self.total: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.rounds: list[float] = []
        self.evaluations: list[float] = []

    def _wrap(self, label: str, fn: Any) -> Any:
        @functools.wraps(fn)
        def timed(*a: Any, **k: Any) -> Any:
            if not self.active:
                return fn(*a, **k)
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.total[label] = self.total.get(label, 0.0) + time.perf_counter() - t0
                self.calls[label] = self.calls.get(label, 0) + 1

        return timed

    def install(self) -> None:
        import importlib

        for label, module, attr in TIMED:
            owner: Any = importlib.import_module(module)
            *path, name = attr.split(".")
            for part in path:
                owner = getattr(owner, part)
            if hasattr(owner, name):  # older trees may lack one (--verify-against)
                setattr(owner, name, self._wrap(label, getattr(owner, name)))
        from securefvpa.rounds.local import LocalTransport

        train, evaluate = LocalTransport.train_round, LocalTransport.evaluate

        def train_round(transport: Any, rnd: int, *a: Any, **k: Any) -> Any:
            self.active = rnd >= 2
            t0 = time.perf_counter()
            try:
                return train(transport, rnd, *a, **k)
            finally:
                if self.active:
                    self.rounds.append(time.perf_counter() - t0)
                self.active = False

        def evaluate_all(transport: Any, rnd: int, params: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return evaluate(transport, rnd, params)
            finally:
                self.evaluations.append(time.perf_counter() - t0)

        LocalTransport.train_round = train_round  # type: ignore[method-assign]
        LocalTransport.evaluate = evaluate_all  # type: ignore[method-assign]

    def result(self) -> dict[str, Any]:
        return {
            "timed_rounds": len(self.rounds),
            "transport_train_round_s": sum(self.rounds),
            "node_rounds": self.calls.get(TIMED[0][0], 0),
            "seconds": {label: self.total.get(label, 0.0) for label, _, _ in TIMED},
            "calls": {label: self.calls.get(label, 0) for label, _, _ in TIMED},
            "evaluation_s": self.evaluations,
        }


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one case (``spec``) and return its measurements."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    mon = MemoryMonitor()
    mon.start()
    t_start = time.perf_counter()
    import importlib

    run_mod = importlib.import_module("securefvpa.run")  # the package exports a function `run`

    cfg = spec["config"]
    out_dir = spec["out"]
    mode = cfg["federation"]["mode"]
    timers = None
    log_dir = None
    if mode == "inprocess":
        timers = Timers()
        timers.install()
    if mode == "simulation" and spec.get("instrument", True):
        import securefvpa.fl.client_app as ca

        log_dir = tempfile.mkdtemp(prefix="scale-actors-")
        cache = int(spec.get("node_cache", 0))
        ca.make_client_app = lambda nodes_dir=None: timed_client_app(nodes_dir, log_dir, cache)  # type: ignore[assignment]
    t0 = time.perf_counter()
    res = run_mod.run(cfg, out_dir)
    wall = time.perf_counter() - t0
    mon.stop.set()
    mon.join()
    mon.sample()
    m = run_mod.evaluated_metrics(res.run_dir, res.metrics)
    rounds = m["rounds"]
    secs = {r["round"]: r["wall_seconds"] for r in rounds}
    last = max(secs)
    train_only = [secs[r] for r in secs if 2 <= r < last]
    out: dict[str, Any] = {
        "users": cfg["data"]["users"],
        "mode": mode,
        "rounds": last,
        "nodes": None,
        "train_nodes_per_round": rounds[-1].get("clients"),
        "process_wall_s": time.perf_counter() - t_start,
        "run_wall_s": wall,
        "setup_s": wall - sum(secs.values()),
        "round_s": {str(r): s for r, s in sorted(secs.items())},
        "first_round_s": secs.get(1),
        "mean_round_s": statistics.fmean(train_only) if train_only else None,
        "median_round_s": statistics.median(train_only) if train_only else None,
        "max_round_s": max(train_only) if train_only else None,
        "evaluation_s": secs.get(0),
        "last_round_with_eval_s": secs.get(last),
        "epsilon_max": rounds[-1].get("epsilon_max"),
        "accuracy": m.get("accuracy"),
        "memory": mon.result(),
        "load_after": load_avg(),
    }
    from securefvpa.rundir import RunDir, read_manifest

    manifest = read_manifest(RunDir(Path(out_dir)))
    out["nodes"] = manifest.clients
    out["train_nodes"] = manifest.train_clients
    out["units_per_train_node"] = statistics.fmean(manifest.units)
    out["dim"] = sum(int(v) for v in _param_sizes(cfg, manifest))
    sec = [r.get("secagg") for r in rounds if 2 <= r["round"] < last and r.get("secagg")]
    if sec and "train_seconds" in sec[0]:
        out["flower_train_stage_s"] = statistics.fmean(s["train_seconds"] for s in sec)
        out["flower_protocol_s"] = statistics.fmean(s["protocol_seconds"] for s in sec)
        out["secagg_phases"] = sec[0].get("phases")
    if timers is not None:
        out["breakdown"] = timers.result()
    if log_dir is not None:
        out["actors"] = _actor_summary(log_dir, rounds)
    return out


def _param_sizes(cfg: dict[str, Any], manifest: Any) -> list[int]:
    from securefvpa.config import config_from_dict
    from securefvpa.rounds.prepare import manifest_param_sizes

    return manifest_param_sizes(config_from_dict(cfg), manifest)


def _actor_summary(log_dir: str, rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Handler seconds inside the Ray actors per message kind: round 1 (imports, first node
    loads) apart from the training rounds >= 2 that do not evaluate; node-cache misses."""
    last = max(r["round"] for r in rounds)
    lines, misses, steady_misses = [], 0, 0
    files = sorted(Path(log_dir).glob("*.jsonl"))
    for f in files:
        mine = [json.loads(x) for x in f.read_text().splitlines()]
        lines += mine
        misses += max((x["misses"] for x in mine), default=0)
        before = max((x["misses"] for x in mine if x["round"] < 2), default=0)
        upto = max((x["misses"] for x in mine if x["round"] < last), default=before)
        steady_misses += upto - before
    steady = [x for x in lines if 2 <= x["round"] < last and x["kind"] != "evaluate"]
    n_steady = max(1, last - 2)

    def table(rows: list[dict[str, Any]], per: int) -> dict[str, Any]:
        out: dict[str, list[float]] = {}
        for x in rows:
            out.setdefault(x["kind"], []).append(x["s"])
        return {
            k: {
                "messages_per_round": len(v) / per,
                "mean_s": statistics.fmean(v),
                "total_s_per_round": sum(v) / per,
            }
            for k, v in sorted(out.items())
        }

    return {
        "actors": len(files),
        "messages": len(lines),
        "node_cache_misses": misses,
        "node_cache_misses_rounds_ge_2": steady_misses,
        "rounds_ge_2": table(steady, n_steady),
        "round_1": table([x for x in lines if x["round"] == 1], 1),
        "evaluate": table([x for x in lines if x["kind"] == "evaluate"], 1),
    }


# ------------------------------------------------------------------------------------------
# verification child: a deterministic seeded DP run (os.urandom replaced in this process only)
# ------------------------------------------------------------------------------------------


def fingerprint_child(out_dir: str, cache_dir: str | None) -> dict[str, Any]:
    counter = [0]

    def fixed_stream(n: int) -> bytes:  # NOT a CSPRNG: makes this verification run repeatable
        buf = b""
        while len(buf) < n:
            buf += hashlib.sha256(b"scale-verify" + counter[0].to_bytes(8, "little")).digest()
            counter[0] += 1
        return buf[:n]

    os.urandom = fixed_stream  # before securefvpa binds it as a default argument anywhere
    import numpy as np

    from securefvpa.run import evaluated_metrics, run

    cfg = case_config(1000, "inprocess", 3, cache_dir)
    cfg["federation"]["eval_every"] = 1
    res = run(cfg, out_dir)
    m = evaluated_metrics(res.run_dir, res.metrics)
    h = hashlib.sha256()
    params = res.parameters()
    for k in sorted(params):
        h.update(k.encode())
        h.update(np.ascontiguousarray(params[k]).tobytes())
    import sqlite3

    ledger = res.ledger_path
    events = hashlib.sha256()
    n_events = 0
    if ledger is not None:
        con = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)
        for kind, client, rnd, payload in con.execute(
            "SELECT kind, client_id, round, payload FROM entries ORDER BY seq"
        ):
            events.update(json.dumps([kind, client, rnd, payload]).encode())
            n_events += 1
        con.close()
    evals = [(r["round"], r.get("eval", {}).get("accuracy")) for r in m["rounds"]]
    import securefvpa

    return {
        "code": str(Path(securefvpa.__file__).parent),
        "params_sha256": h.hexdigest(),
        "ledger_events": n_events,
        "ledger_events_sha256": events.hexdigest(),
        "evaluations": evals,
        "epsilon_max": m["rounds"][-1].get("epsilon_max"),
    }


# ------------------------------------------------------------------------------------------
# the parent
# ------------------------------------------------------------------------------------------


def run_child(
    args: list[str], *, env_extra: dict[str, str] | None = None, timeout: float = 900
) -> dict[str, Any]:
    env = (
        os.environ
        | {"FLWR_TELEMETRY_ENABLED": "0", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        | (env_extra or {})
    )
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("SCALE-RESULT "):
            return json.loads(line[len("SCALE-RESULT ") :])
    raise RuntimeError(f"child {args[:2]} exited with {proc.returncode}:\n{proc.stderr[-4000:]}")


def measure(
    users: int,
    mode: str,
    rounds: int,
    work: Path,
    cache_dir: str | None,
    *,
    users_per_client: int | None = None,
    node_cache: int = 0,
) -> dict[str, Any]:
    cfg = case_config(users, mode, rounds, cache_dir)
    if users_per_client is not None:
        cfg["federation"]["users_per_client"] = users_per_client
    tag = f"{mode}-{users}-upc{cfg['federation']['users_per_client']}"
    tag += f"-cache{node_cache}" if node_cache else ""
    spec = {"config": cfg, "out": str(work / tag), "node_cache": node_cache}
    load = load_avg()
    res = run_child(["--child", json.dumps(spec)])
    res["load_before"] = load
    res["users_per_client"] = cfg["federation"]["users_per_client"]
    res["kind"] = "device" if users_per_client == 1 else "timing"
    if node_cache:
        res["kind"] = "experiment"
        res["node_cache"] = node_cache
    return res


def _secagg_at(n: int) -> dict[str, Any] | None:
    """Per-client and server secure-aggregation seconds at ``n`` clients, extrapolated from the
    two largest n of ``benchmarks/results/secagg.json`` (a power law through them)."""
    path = RESULTS / "secagg.json"
    if not path.is_file():
        return None
    sc = json.loads(path.read_text(encoding="utf-8"))["client_scaling"]
    rows = sorted(sc["rows"], key=lambda r: r["n"])[-2:]
    (a, b) = rows

    def fit(key: str) -> tuple[float, float]:
        k = math.log(b[key] / a[key]) / math.log(b["n"] / a["n"])
        return b[key] * (n / b["n"]) ** k, k

    client, kc = fit("client_s_mean")
    server, ks = fit("server_s")
    return {
        "from": f"benchmarks/results/secagg.json client_scaling, n = {a['n']} and {b['n']}, "
        f"d = {sc['d']} (no dropouts)",
        "client_s": client,
        "client_exponent": kc,
        "server_s": server,
        "server_exponent": ks,
        "client_bytes_received_at_largest_n": b.get("client_bytes_recv_mean"),
    }


def noise_rows(dim: int, units_per_user: float) -> list[dict[str, Any]]:
    """``z C sqrt(d) / (q N)`` for the recipe's layouts, z from the run's own planner
    (``rounds.prepare.plan_distributed``, which ``resolve_distributed`` calls)."""
    from securefvpa.config import config_from_dict
    from securefvpa.rounds.prepare import plan_distributed

    unseen = RECIPE["data"]["unseen_share"]
    rows = []
    for train_users, layout in ((4000, "silo"), (8000, "silo"), (10_000, "device")):
        users = round(train_users / (1 - unseen))
        upc = RECIPE["federation"]["users_per_client"] if layout == "silo" else 1
        n_clients = math.ceil(train_users / upc)
        units = round(train_users * units_per_user)
        cfg = config_from_dict(case_config(users, "inprocess", PLANNED_ROUNDS, None))
        p, s = cfg.privacy, cfg.secagg
        t = math.ceil(s.threshold * n_clients)
        z, err = float("nan"), None
        try:
            z = plan_distributed(
                cfg, delta=p.delta, sampled_clients=n_clients, dim=dim,
                max_units=round(units_per_user * train_users),
            ).central_noise_multiplier  # fmt: skip
        except Exception as exc:  # a refused plan is a finding to report, not a crash
            err = f"{type(exc).__name__}: {exc}"
        noise = z * p.clip * math.sqrt(dim) / (p.sample_rate * units)
        rows.append(
            {
                "train_users": train_users,
                "layout": layout,
                "clients": n_clients,
                "units": units,
                "threshold": t,
                "z_central": z,
                "noise_norm_in_mean_update": noise,
                "noise_to_clip_ratio": noise / p.clip,
                "error": err,
            }
        )
    return rows


def projection(cases: list[dict[str, Any]], devices: int = 10_000) -> dict[str, Any]:
    """``devices`` single-user devices per round, on paper (see the module docstring).

    Per-device costs come from the measured 1-user-per-client cases (in-process and under
    Flower's simulation engine): a round's seconds divided by its training clients. They are
    scaled linearly to ``devices``; what grows faster than linearly with n is the secure
    aggregation (per-client work ~ the SecAgg+ degree, server unmasking ~ n^k), added from
    ``benchmarks/results/secagg.json`` as the difference between n = ``devices`` and the
    measured n."""
    out: dict[str, Any] = {"devices": devices}
    sa = _secagg_at(devices)
    if sa is not None:
        out["secagg_at_n"] = sa
    for mode in ("inprocess", "simulation"):
        dev = next((c for c in cases if c.get("kind") == "device" and c["mode"] == mode), None)
        if dev is None or not dev.get("mean_round_s"):
            continue
        n_dev = dev["train_nodes_per_round"]
        per = dev["mean_round_s"] / n_dev
        extra_server = extra_client = 0.0
        if sa is not None and mode == "simulation":
            base = _secagg_at(n_dev) or sa
            extra_server = max(0.0, sa["server_s"] - base["server_s"])
            extra_client = max(0.0, sa["client_s"] - base["client_s"])
        row = {
            "measured": f"{dev['users']} users, 1 per client, {n_dev} training clients: mean "
            f"round {dev['mean_round_s']:.2f} s (load {dev['load_before']})",
            "per_device_s": per,
            "round_s": devices * per + devices * extra_client / 2 + extra_server,
            "secagg_growth_s": devices * extra_client / 2 + extra_server,
            "main_process_mb_at_measured_n": dev["memory"]["main_maxrss_mb"],
        }
        if dev.get("breakdown") and dev["breakdown"]["node_rounds"]:
            b = dev["breakdown"]
            row["per_device_breakdown_ms"] = {
                k.strip(): 1000 * v / b["node_rounds"]
                for k, v in b["seconds"].items()
                if not k.startswith("    ") and v > 0
            }
        out[mode] = row
    if "inprocess" in out:
        local = out["inprocess"]["per_device_s"]
        out["deployed_round_s"] = local + (sa["client_s"] + sa["server_s"] if sa else 0.0)
    base_case = next((c for c in cases if c.get("dim")), None)
    if base_case is not None:
        upu = base_case["units_per_train_node"] / base_case["users_per_client"]
        out["noise_to_signal"] = {
            "formula": "||noise|| = z C sqrt(d) / (q N) in the mean update; the clipped mean "
            "gradient it is added to has norm <= C",
            "d": base_case["dim"],
            "units_per_user": upu,
            "rows": noise_rows(base_case["dim"], upu),
        }
    mem = [c for c in cases if c.get("kind") == "timing" and c["mode"] == "inprocess"]
    if len(mem) >= 2:
        lo, hi = min(mem, key=lambda c: c["users"]), max(mem, key=lambda c: c["users"])
        if hi["users"] > lo["users"]:
            slope = (hi["memory"]["main_maxrss_mb"] - lo["memory"]["main_maxrss_mb"]) / (
                hi["users"] - lo["users"]
            )
            out["inprocess_mb_per_1000_users"] = 1000 * slope
    return out


def fmt(x: Any, nd: int = 2) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def case_label(c: dict[str, Any]) -> str:
    """A case's mode, marked when it is the node-cache experiment (not the production code)."""
    return c["mode"] + (f"+cache{c['node_cache']}" if c.get("node_cache") else "")


def print_tables(result: dict[str, Any]) -> None:
    cases = result["cases"]
    print("\n== seconds per round (DP recipe; eval = one evaluation of every node) ==")
    print(
        f"{'mode':<17}{'users':>7}{'u/node':>7}{'nodes':>6}{'round1':>8}{'mean>=2':>9}"
        f"{'median':>8}{'max':>7}{'eval':>7}{'setup':>7}{'peak MB':>9}  load (1/5/15 min)"
    )
    for c in cases:
        print(
            f"{case_label(c):<17}{c['users']:>7}{c['users_per_client']:>7}{c['nodes']:>6}"
            f"{fmt(c['first_round_s']):>8}{fmt(c['mean_round_s']):>9}"
            f"{fmt(c['median_round_s']):>8}{fmt(c['max_round_s']):>7}{fmt(c['evaluation_s']):>7}"
            f"{fmt(c['setup_s'], 1):>7}{c['memory']['main_maxrss_mb']:>9.0f}  {c['load_before']}"
        )
    print("\n== peak memory (MB; main = ru_maxrss, others = VmHWM, PSS = all processes) ==")
    for c in cases:
        mem = c["memory"]
        kids = "; ".join(
            f"{k}: {v['processes']} x <= {v['max_hwm_mb']:.0f}" for k, v in mem["children"].items()
        )
        print(
            f"{case_label(c):<17}{c['users']:>7}  main {mem['main_maxrss_mb']:.0f}, "
            f"PSS {mem['peak_pss_all_mb']:.0f}; {kids or 'no child processes'}"
        )
    for c in cases:
        b = c.get("breakdown")
        if not b or not b["timed_rounds"]:
            continue
        r, nr = b["timed_rounds"], max(1, b["node_rounds"])
        tot = b["transport_train_round_s"]
        print(
            f"\n== where a training round goes: in-process, {c['users']} users, "
            f"{c['users_per_client']} per node ({r} rounds, {nr} node-rounds timed; "
            f"load {c['load_before']}) =="
        )
        print(f"{'':<48}{'s/round':>9}{'ms/node':>9}{'share':>7}")
        print(f"{'round (transport.train_round)':<48}{tot / r:>9.3f}{1000 * tot / nr:>9.1f}")
        for k, v in b["seconds"].items():
            print(f"{k:<48}{v / r:>9.3f}{1000 * v / nr:>9.1f}{100 * v / max(tot, 1e-9):>6.0f}%")
        ev = b["evaluation_s"]
        if ev:
            print(f"{'one evaluation of every node (round 0)':<48}{ev[0]:>9.3f}")
    for c in cases:
        a = c.get("actors")
        if not a:
            continue
        print(
            f"\n== {case_label(c)}, {c['users']} users: ClientApp handlers inside the Ray "
            f"actors ({a['actors']} actors; node-cache misses {a['node_cache_misses']}, "
            f"{a['node_cache_misses_rounds_ge_2']} of them in rounds >= 2) =="
        )
        for label, rows in (
            ("rounds >= 2", a["rounds_ge_2"]),
            ("round 1", a["round_1"]),
            ("evaluation", a["evaluate"]),
        ):
            for k, v in rows.items():
                print(
                    f"  {label:<12}{k:<38}{v['messages_per_round']:>6.0f} msgs "
                    f"{1000 * v['mean_s']:>8.1f} ms each {v['total_s_per_round']:>7.2f} s"
                )
        print(
            f"  server: train stage {fmt(c.get('flower_train_stage_s'))} s + secure-aggregation"
            f" protocol {fmt(c.get('flower_protocol_s'))} s per round "
            f"({c.get('secagg_phases')} phases)"
        )
    pj = result.get("projection")
    if not pj:
        return
    print(f"\n== on paper: {pj['devices']:,} single-user devices per round ==")
    for mode in ("inprocess", "simulation"):
        row = pj.get(mode)
        if row is None:
            continue
        print(
            f"  {mode:<11} per device {1000 * row['per_device_s']:.1f} ms ({row['measured']}) "
            f"-> one round of {pj['devices']:,}: {row['round_s']:.0f} s on 2 cores "
            f"(secure-aggregation growth {row['secagg_growth_s']:.0f} s)"
        )
        if row.get("per_device_breakdown_ms"):
            parts = ", ".join(f"{k} {v:.1f}" for k, v in row["per_device_breakdown_ms"].items())
            print(f"              per device, ms: {parts}")
    if "deployed_round_s" in pj:
        print(
            f"  deployed (devices in parallel): {pj['deployed_round_s']:.1f} s of compute per "
            "round (local round + secure-aggregation client and server work; network not counted)"
        )
    if "inprocess_mb_per_1000_users" in pj:
        print(
            f"  in-process memory grows {pj['inprocess_mb_per_1000_users']:.0f} MB per 1,000 users"
        )
    if "secagg_at_n" in pj:
        sa = pj["secagg_at_n"]
        print(
            f"  secure aggregation at n = {pj['devices']:,}: client {sa['client_s']:.4f} s "
            f"(~n^{sa['client_exponent']:.2f}), server {sa['server_s']:.1f} s "
            f"(~n^{sa['server_exponent']:.2f}); {sa['from']}"
        )
    ns = pj.get("noise_to_signal")
    if ns:
        print(
            f"  noise: {ns['formula']}; d = {ns['d']}, {ns['units_per_user']:.0f} unit(s) per user"
        )
        for row in ns["rows"]:
            print(
                f"    {row['train_users']:>6} training users, {row['layout']:<6} "
                f"{row['clients']:>6} clients, t = {row['threshold']:>5}, N = {row['units']:>6}:"
                f" z = {row['z_central']:.3f}, ||noise|| = {row['noise_to_clip_ratio']:.3f} C"
                + (f"  ({row['error']})" if row["error"] else "")
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 1,000 users, 3 rounds")
    p.add_argument("--users", default="1000,5000,10000", help="in-process user counts")
    p.add_argument("--sim-users", default="1000,5000,10000", help="simulation user counts")
    p.add_argument("--rounds", type=int, default=5, help="rounds per in-process case")
    p.add_argument("--sim-rounds", type=int, default=4, help="rounds per simulation case")
    p.add_argument(
        "--device-users",
        type=int,
        default=150,
        help="users of the 1-user-per-client cases (per-device cost); 0: none",
    )
    p.add_argument(
        "--node-cache",
        default="",
        help="experiment: also run simulation cases with this per-actor node cache budget "
        "in MiB (comma-separated user counts:MiB, e.g. 5000:64)",
    )
    p.add_argument("--cache-dir", default=None, help="embedding cache (default: the user's)")
    p.add_argument("--out", type=Path, default=RESULTS / "scale.json")
    p.add_argument(
        "--verify-against",
        type=Path,
        default=None,
        help="a source tree (e.g. an older commit) whose seeded DP run must match",
    )
    p.add_argument(
        "--verify-tree",
        type=Path,
        default=REPO,
        help="the tree checked against --verify-against (default: this repository)",
    )
    p.add_argument(
        "--render",
        type=Path,
        default=None,
        help="re-print the tables (and recompute the projection) of a results file",
    )
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--fingerprint", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child is not None:
        print("SCALE-RESULT " + json.dumps(child(json.loads(args.child)), default=str))
        return
    if args.fingerprint is not None:
        print("SCALE-RESULT " + json.dumps(fingerprint_child(args.fingerprint, args.cache_dir)))
        return
    if args.render is not None:
        result = json.loads(args.render.read_text(encoding="utf-8"))
        if result["cases"]:
            result["projection"] = projection(result["cases"])
        print_tables(result)
        return
    users = [int(u) for u in args.users.split(",") if u]
    sim_users = [int(u) for u in args.sim_users.split(",") if u]
    rounds, sim_rounds = args.rounds, args.sim_rounds
    dev_users = args.device_users
    if args.quick:
        users, sim_users, rounds, sim_rounds, dev_users = [1000], [1000], 3, 3, 60
    result: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "usable_cpus": len(os.sched_getaffinity(0)),
        },
        "recipe": RECIPE | {"planned_rounds": PLANNED_ROUNDS},
        "cases": [],
    }
    t0 = time.perf_counter()
    plan: list[tuple[str, int, int, dict[str, Any]]] = [
        *(("inprocess", u, rounds, {}) for u in users),
        *([("inprocess", dev_users, 3, {"users_per_client": 1})] if dev_users else []),
        *([("simulation", dev_users, 3, {"users_per_client": 1})] if dev_users else []),
        *(("simulation", u, sim_rounds, {}) for u in sim_users),
        *(
            ("simulation", int(x.split(":")[0]), sim_rounds, {"node_cache": int(x.split(":")[1])})
            for x in args.node_cache.split(",")
            if x
        ),
    ]
    with tempfile.TemporaryDirectory(prefix="scale-") as tmp:
        work = Path(tmp)
        if args.verify_against is not None:
            result["verify"] = v = verify(
                args.verify_against, work, args.cache_dir, args.verify_tree
            )
            print(
                f"[scale] verify: {v['before']['code']} vs {v['after']['code']}: params "
                f"{v['before']['params_sha256'][:12]} / {v['after']['params_sha256'][:12]}, "
                f"{v['after']['ledger_events']} ledger events, identical = {v['identical']}",
                flush=True,
            )
        for mode, u, r, kw in plan:
            print(
                f"[scale] {mode} {u} users, {r} rounds {kw or ''} (load {load_avg()})", flush=True
            )
            result["cases"].append(measure(u, mode, r, work, args.cache_dir, **kw))
    if result["cases"]:
        result["projection"] = projection(result["cases"])
    result["benchmark_seconds"] = time.perf_counter() - t0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str) + "\n", encoding="utf-8")
    print_tables(result)
    print(f"\nwrote {args.out} ({result['benchmark_seconds']:.0f} s)")


def verify(ref: Path, work: Path, cache_dir: str | None, tree: Path = REPO) -> dict[str, Any]:
    """Seeded, deterministic DP run with the code in ``ref`` and in ``tree``; compare."""
    extra = ["--cache-dir", cache_dir] if cache_dir else []
    before = run_child(
        ["--fingerprint", str(work / "fp-ref"), *extra],
        env_extra={"PYTHONPATH": str(ref.resolve())},
    )
    after = run_child(
        ["--fingerprint", str(work / "fp-now"), *extra],
        env_extra={"PYTHONPATH": str(tree.resolve())},
    )
    return {
        "reference": str(ref),
        "before": before,
        "after": after,
        "identical": _same(before, after),
    }


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return {k: v for k, v in a.items() if k != "code"} == {
        k: v for k, v in b.items() if k != "code"
    }


if __name__ == "__main__":
    main()
