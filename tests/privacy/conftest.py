"""Test fixtures: a private run directory with a real ledger, without training anything.

The ledger is written the way a run writes it (``run_start`` with the privacy plan, one
``dp_sgd`` entry per client and round the budget guard allows, ``declined`` otherwise,
``run_end``); the report is then derived from it by the code under test.
"""

from __future__ import annotations

import json
import sqlite3
import types
from pathlib import Path

import pytest

from securefvpa.config import config_from_dict, config_hash, dump_config
from securefvpa.privacy.events import DpSgdEvent
from securefvpa.privacy.guard import BudgetGuard
from securefvpa.privacy.ledger import Ledger, entry_hash, genesis_hash

RUN_ID = "anchor-run"
DELTA = 1e-5
BUDGET = 4.0
CLIENTS = (("client_00000", 1.5), ("client_00001", 1.2), ("client_00002", 3.0))


def private_config() -> dict:
    return {
        "run_id": RUN_ID,
        "data": {"source": "synth", "users": 8},
        "federation": {"mode": "simulation", "rounds": 6, "local_steps": 3},
        "privacy": {
            "enabled": True,
            "budget_epsilon": BUDGET,
            "target_epsilon": BUDGET,
            "delta": DELTA,
            "sample_rate": 0.2,
        },
    }


def make_private_run(run_dir: Path, *, rounds: int = 6) -> Path:
    """Write ``config.resolved.toml`` and ``privacy_ledger.sqlite``; returns the ledger path."""
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = config_from_dict(private_config())
    (run_dir / "config.resolved.toml").write_text(dump_config(cfg))
    h = config_hash(cfg)
    plan = {
        "config_hash": h,
        "noise_multiplier": 1.0,
        "delta": DELTA,
        "budget_epsilon": BUDGET,
        "relation": "replace_one",
    }
    (run_dir / "privacy_plan.json").write_text(json.dumps(plan, indent=2))
    path = run_dir / "privacy_ledger.sqlite"
    guard = BudgetGuard(budget_epsilon=BUDGET, delta=DELTA)
    history: dict[str, list[DpSgdEvent]] = {}
    with Ledger(path) as led:
        led.append_run_start(RUN_ID, h, plan)
        for r in range(1, rounds + 1):
            for c, sigma in CLIENTS:
                ev = DpSgdEvent(
                    client_id=c, round=r, noise_multiplier=sigma, sample_rate=0.2, steps=3, clip=1.0
                )
                dec = guard.check(client_id=c, history=history.get(c, []), planned_event=ev)
                if dec.allowed:
                    led.append(ev)
                    history.setdefault(c, []).append(ev)
                else:
                    led.append_declined(
                        ev,
                        reason=dec.reason,
                        epsilon_now=dec.epsilon_now,
                        epsilon_if_trained=dec.epsilon_if_trained,
                        budget_epsilon=dec.budget,
                    )
        led.append_run_end(RUN_ID, h, {"utility": {}})
    return path


def sql(path: Path, *statements: str) -> None:
    conn = sqlite3.connect(path)
    with conn:
        for s in statements:
            conn.execute(s)
    conn.close()


def rebuild_chain(path: Path, *, drop_seqs: tuple[int, ...]) -> None:
    """What an attacker with write access does: delete entries, renumber, recompute every hash
    (the chain is keyless), so that the chain itself verifies again."""
    conn = sqlite3.connect(path)
    with conn:
        ledger_id = dict(conn.execute("SELECT key, value FROM meta").fetchall())["ledger_id"]
        rows = conn.execute(
            "SELECT seq, timestamp, kind, client_id, round, payload FROM entries ORDER BY seq"
        ).fetchall()
        conn.execute("DELETE FROM entries")
        prev = genesis_hash(ledger_id)
        seq = 0
        for _old, ts, kind, cid, rnd, payload in rows:
            if _old in drop_seqs:
                continue
            seq += 1
            h = entry_hash(seq, ts, kind, cid, rnd, payload, prev)
            conn.execute(
                "INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (seq, ts, kind, cid, rnd, payload, prev, h),
            )
            prev = h
    conn.close()


@pytest.fixture()
def private_run(tmp_path):
    """(run directory, ledger path) of a finished private run without a report yet."""
    run_dir = tmp_path / "run"
    return run_dir, make_private_run(run_dir)


@pytest.fixture()
def ledger_tools():
    """The helpers above, for tests that tamper with a ledger."""
    return types.SimpleNamespace(
        make_private_run=make_private_run, sql=sql, rebuild_chain=rebuild_chain
    )
