"""Crash recovery under DP (issue: a DP run killed mid-round could never be resumed).

A DP + secure-aggregation simulation is SIGKILLed twice: first in the middle of round 2 (the
sampled clients have already committed their round-2 events to the ledger, the checkpoint still
holds round 1), then right after round 3's checkpoint. Each ``--resume`` re-runs the interrupted
round as its next attempt; the run completes; every attempt's spend is in the ledger exactly
once and counts toward epsilon; the report reproduces from the ledger; and the processes the
killed attempt left behind (Ray's agents outlive a SIGKILLed driver) are stopped.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from securefvpa.fl.launch import RUN_MARK, _processes_marked, run_mark, stop_leftover_processes
from securefvpa.privacy.accountant import epsilon
from securefvpa.privacy.ledger import Ledger, verify
from securefvpa.run import run
from securefvpa.rundir import RunDir

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("flower")]


def _checkpoint_round(path: Path) -> int:
    try:
        with np.load(path) as z:
            return int(json.loads(bytes(z["meta"]).decode())["round"])
    except Exception:
        return -1


def _events(ledger: Path) -> list[tuple[str, int, int]]:
    try:
        with Ledger(ledger) as led:
            return [
                (e.client_id, e.round, e.event().attempt)
                for e in led.entries()
                if e.kind == "dp_sgd"
            ]
    except Exception:
        return []


def _start(cfg: Path, out: Path, resume: bool) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "securefvpa.cli", "run", str(cfg), "--out", str(out)]
    return subprocess.Popen(
        cmd + (["--resume"] if resume else []),
        env=os.environ | {"OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 300) -> None:
    """SIGKILL the main process only (as `kill -9 PID` would), once ``ready()`` holds."""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not ready():
            assert proc.poll() is None, "the run finished before it could be killed"
            time.sleep(0.05)
        assert ready(), "the kill point was not reached in time"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()


def test_dp_run_killed_mid_round_and_between_rounds_resumes_and_counts_every_attempt(
    tmp_path, fed_config, write_config
):
    cfg = write_config(
        fed_config(
            data={"users": 30},
            train={"context_pairs": 4, "target_pairs": 2},
            federation={"rounds": 4, "local_steps": 2, "min_fit_clients": 3},
            privacy={
                "enabled": True,
                "noise_multiplier": 3.0,
                "delta": 1e-5,
                "budget_epsilon": 50.0,
                "target_epsilon": 50.0,
            },
            secagg={"enabled": True},
        )
    )
    out = tmp_path / "run"
    rd = RunDir(out)
    ledger = out / "privacy_ledger.sqlite"

    # Kill point 1: mid-round 2 — round-2 events committed, checkpoint still at round 1.
    proc = _start(cfg, out, resume=False)
    _kill_when(
        proc,
        lambda: (
            any(r == 2 for _, r, _ in _events(ledger)) and _checkpoint_round(rd.checkpoint) == 1
        ),
    )
    mid = _events(ledger)
    assert {a for _, r, a in mid if r == 2} == {1}
    time.sleep(1.0)
    # Ray's agents usually survive the driver's SIGKILL (not always: the raylet sometimes notices
    # the dead driver first); the clean-up itself is tested deterministically in
    # test_stop_leftover_processes_stops_only_this_runs_marked_processes below.
    left = _processes_marked(run_mark(rd))

    # Kill point 2: between rounds — round 3 checkpointed, round 4 not started.
    proc = _start(cfg, out, resume=True)
    _kill_when(proc, lambda: _checkpoint_round(rd.checkpoint) >= 3)
    # ... and the resumed attempt stopped them before starting its own.
    assert not any(pid in _processes_marked(run_mark(rd)) for pid in left)

    metrics = run(cfg, out, resume=True).metrics
    assert [r["round"] for r in metrics["rounds"]] == [0, 1, 2, 3, 4]
    attempts = {r["round"]: r["attempt"] for r in metrics["rounds"][1:]}
    assert attempts[2] == 2  # round 2 ran again as attempt 2 after the crash
    journal = rd.journal.read_text().split()
    assert journal[:6] == ["1", "1", "2", "1", "2", "2"]

    events = _events(ledger)
    assert len(events) == len(set(events))  # each (client, round, attempt) exactly once
    for client, rnd, attempt in mid:  # the interrupted attempt's spend is still counted
        assert (client, rnd, attempt) in events
    with Ledger(ledger) as led:
        by_client = led.events_by_client()
    report = json.loads((out / "privacy_report.json").read_text())
    assert verify(ledger, expected_head=report["ledger"]["head_hash"]).ok
    for row in report["clients"]:
        assert row["epsilon_pld"] == pytest.approx(
            epsilon(by_client[row["client_id"]], report["accounting"]["delta"]), rel=1e-9
        )
    twice = [c for c in by_client if sum(e.round == 2 for e in by_client[c]) == 2]
    assert twice, "some client's interrupted round-2 attempt and its re-run are both counted"


def test_stop_leftover_processes_stops_only_this_runs_marked_processes(tmp_path):
    """A process carrying this run's marker (as Ray's agents of a killed attempt do) is stopped;
    one carrying another run's marker is left alone."""
    mine, other = RunDir(tmp_path / "mine"), RunDir(tmp_path / "other")
    sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
    procs = {
        name: subprocess.Popen(sleeper, env=os.environ | {RUN_MARK: run_mark(rd)})
        for name, rd in (("mine", mine), ("other", other))
    }
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not _processes_marked(run_mark(mine)):
            time.sleep(0.05)
        assert procs["mine"].pid in _processes_marked(run_mark(mine))
        stopped = stop_leftover_processes(mine, grace_s=5.0)
        assert stopped == [procs["mine"].pid]
        assert procs["mine"].wait(timeout=10) != 0
        assert procs["other"].poll() is None
    finally:
        for p in procs.values():
            p.kill()
            p.wait()
