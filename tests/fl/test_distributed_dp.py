"""Distributed DP through Flower: discrete-Gaussian shares inside secure aggregation, one
clipped step per round, DdgEvents in the ledger, a report that names the mechanism and unit."""

from __future__ import annotations

import json

import pytest

from securefvpa.privacy import ddg
from securefvpa.privacy.accountant import epsilon
from securefvpa.privacy.ledger import Ledger, verify
from securefvpa.privacy.report import verify_report
from securefvpa.run import run

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("flower")]


def test_distributed_noise_run_in_flower(tmp_path, fed_config, write_config):
    cfg = fed_config(
        data={"users": 30},
        train={"lr": 1.0, "optimizer": "sgd", "context_pairs": 8, "target_pairs": 4},
        federation={"rounds": 2, "local_steps": 1, "users_per_client": 3, "min_fit_clients": 3},
        privacy={
            "enabled": True,
            "noise": "distributed",
            "unit": "user",
            "sample_rate": 0.5,
            "target_epsilon": 8.0,
            "budget_epsilon": 8.0,
            "delta": 1e-5,
        },
        secagg={"enabled": True},
    )
    out = tmp_path / "run"
    metrics = run(write_config(cfg), out).metrics
    trained = [r for r in metrics["rounds"] if r["round"] > 0]
    assert all(r["clients"] >= 3 for r in trained)
    plan = json.loads((out / "privacy_plan.json").read_text())["distributed"]
    for r in trained:
        sa = r["secagg"]
        assert sa["contributors"] == r["clients"]
        assert sa["expected_batch"] > 0 and sa["clipped_coordinates"] == 0
        assert sa["noise_std_realized"] >= plan["central_noise_multiplier"] * 1.0  # >= accounted
    with Ledger(out / "privacy_ledger.sqlite") as led:
        kinds = [e.kind for e in led.entries()]
        by_client = led.events_by_client()
    assert kinds.count("ddg") == sum(r["clients"] for r in trained)
    assert all(
        isinstance(e, ddg.DdgEvent) and e.unit == "user" for es in by_client.values() for e in es
    )
    report = json.loads((out / "privacy_report.json").read_text())
    assert report["accounting"]["primary_accountant"] == "ddg-rdp"
    assert report["accounting"]["privacy_unit"] == "one user's whole preference profile"
    for row in report["clients"]:
        assert row["epsilon"] == pytest.approx(epsilon(by_client[row["client_id"]], 1e-5))
        assert row["epsilon"] <= 8.0
    assert verify(out / "privacy_ledger.sqlite", expected_head=report["ledger"]["head_hash"]).ok
    assert verify_report(out / "privacy_report.json", out / "privacy_ledger.sqlite").ok
    assert [x["survivors"] for x in report["secure_aggregation"]["rounds"]] == [
        r["clients"] for r in trained
    ]
