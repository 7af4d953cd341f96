"""DP-SGD in the federation: the guard stops clients at their budget, the ledger and the report
agree, and no client ever ends above its budget."""

from __future__ import annotations

import json

import pytest

from securefvpa.privacy.ledger import verify
from securefvpa.privacy.report import verify_report
from securefvpa.run import run

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("flower")]


def _one_round_of_budget(fed_config, *, federation: dict | None = None, **sections) -> dict:
    """DP with budget for one round per client: sigma 2, q 0.5, 3 steps per round give
    eps(1 round) = 3.60, eps(2 rounds) = 5.37 > budget 5.0."""
    return fed_config(
        train={"context_pairs": 4, "target_pairs": 2},
        federation={"rounds": 3, "local_steps": 3, **(federation or {})},
        privacy={
            "enabled": True,
            "noise_multiplier": 2.0,
            "sample_rate": 0.5,
            "budget_epsilon": 5.0,
            "target_epsilon": 5.0,
            "delta": 1e-5,
        },
        **sections,
    )


def test_budget_guard_stops_clients_and_report_matches_ledger(tmp_path, fed_config, write_config):
    cfg = _one_round_of_budget(fed_config)
    out = tmp_path / "run"
    metrics = run(write_config(cfg), out).metrics
    rounds = metrics["rounds"]
    assert rounds[1]["clients"] >= 4 and not rounds[1]["declined"]
    assert rounds[1]["train_loss"] is None  # the raw loss never leaves a DP client
    # round 2: every client that trained in round 1 declines; afterwards nobody is sampled
    assert rounds[2]["clients"] == 0
    assert len(rounds[2]["declined"]) == rounds[1]["clients"]
    assert metrics["stopped_early"] and "privacy budget" in metrics["stopped_early"]
    assert sorted(metrics["exhausted_clients"]) == sorted(rounds[2]["declined"])

    report = json.loads((out / "privacy_report.json").read_text())
    assert report["accounting"]["neighbouring_relation"] == "replace_one"
    assert report["summary"]["over_budget"] == 0
    for c in report["clients"]:
        assert c["epsilon_pld"] <= 5.0
        assert c["epsilon_pld"] == pytest.approx(3.6006, abs=2e-3)
        assert c["rounds_joined"] == [1]
    ledger = out / "privacy_ledger.sqlite"
    check = verify(ledger, expected_head=report["ledger"]["head_hash"])
    assert check.ok, check.reason
    assert verify_report(out / "privacy_report.json", ledger).ok
    html = (out / "report.html").read_text()
    assert "<svg" in html and report["run_id"] in html


def test_secure_rounds_with_clients_out_of_budget_aggregate_the_others(
    tmp_path, fed_config, write_config
):
    """Secure aggregation under DP, half the clients sampled per round, one round of budget
    each: a sampled client that already trained declines at the key advertisement (before
    anyone trains), and the round is aggregated over the others in a fresh instance; nobody
    ends above the budget and every client trained at most once."""
    cfg = _one_round_of_budget(
        fed_config, federation={"fraction_fit": 0.5}, secagg={"enabled": True}
    )
    out = tmp_path / "run"
    metrics = run(write_config(cfg), out).metrics
    rounds = metrics["rounds"][1:]
    mixed = [r for r in rounds if r["declined"] and r["clients"] > 0]
    assert mixed, [(r["clients"], r["declined"]) for r in rounds]
    for r in mixed:
        assert r["secagg"]["contributors"] == r["clients"] >= 3
        assert not set(r["declined"]) & set(r.get("failed", []))
    report = json.loads((out / "privacy_report.json").read_text())
    assert report["summary"]["over_budget"] == 0
    assert all(len(c["rounds_joined"]) <= 1 for c in report["clients"])
