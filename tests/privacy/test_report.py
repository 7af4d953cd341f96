"""Privacy report: schema-valid, derived from the ledger alone, re-checkable by an auditor."""

from __future__ import annotations

import copy
import json
import sqlite3

import jsonschema
import pytest

from securefvpa.errors import LedgerError, PrivacyError
from securefvpa.privacy.accountant import epsilon
from securefvpa.privacy.events import DpSgdEvent
from securefvpa.privacy.guard import BudgetGuard
from securefvpa.privacy.ledger import Ledger
from securefvpa.privacy.report import (
    build_report,
    report_schema,
    validate_report,
    verify_report,
    write_report,
)

D = 1e-3
ARGS = dict(
    run_id="run-1",
    config_hash="cfg-abc",
    delta=1e-5,
    budget_epsilon=6.0,
    accountant="pld",
    value_discretization_interval=D,
)


@pytest.fixture()
def ledger(tmp_path):
    p = tmp_path / "ledger.sqlite"
    guard = BudgetGuard(budget_epsilon=6.0, delta=1e-5, value_discretization_interval=D)
    history: dict[str, list[DpSgdEvent]] = {}
    with Ledger(p) as led:
        led.append_run_start("run-1", "cfg-abc")
        for r in range(8):
            for c, sigma in (("alice", 0.9), ("bob", 1.5), ("carol", 3.0)):
                if c == "carol" and r % 3:
                    continue
                ev = DpSgdEvent(
                    client_id=c, round=r, noise_multiplier=sigma, sample_rate=0.2, steps=5, clip=1.0
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
        led.append_run_end("run-1", "cfg-abc")
    return p, history


def test_report_is_schema_valid_and_matches_accountant(ledger):
    p, history = ledger
    rep = build_report(p, **ARGS, utility={"fedvpa": {"accuracy": 0.71}, "btl": 0.6})
    jsonschema.Draft202012Validator.check_schema(report_schema())
    jsonschema.validate(rep, report_schema())
    rows = {c["client_id"]: c for c in rep["clients"]}
    assert set(rows) == {"alice", "bob", "carol"}
    for c, evs in history.items():
        assert rows[c]["epsilon_pld"] == epsilon(evs, 1e-5, value_discretization_interval=D)
        assert rows[c]["epsilon_rdp"] == epsilon(evs, 1e-5, accountant="rdp")
        assert rows[c]["epsilon_after_round"][-1] == rows[c]["epsilon"]
        assert rows[c]["rounds_joined"] == [e.round for e in evs]
        assert rows[c]["epsilon"] <= 6.0
    assert rows["alice"]["status"] == "exhausted" and rows["alice"]["declined_rounds"]
    assert rows["carol"]["status"] == "within_budget"
    assert rep["summary"]["over_budget"] == 0
    assert rep["accounting"]["neighbouring_relation"] == "replace_one"
    assert rep["ledger"]["entry_count"] == len(Ledger(p).entries())
    assert rep["software"]["dp-accounting"] == "0.6.0"
    assert [r["kind"] for r in rep["ledger"]["runs"]] == ["run_start", "run_end"]


def test_write_and_verify_report(ledger, tmp_path):
    p, _ = ledger
    rep = build_report(p, **ARGS, utility={"accuracy": 0.7})
    json_path, html_path = write_report(rep, tmp_path / "out")
    assert json.loads(json_path.read_text()) == rep
    page = html_path.read_text()
    assert page.count("<svg") == 2 and "run-1" in page and "<script" not in page
    res = verify_report(json_path, p)
    assert res.ok, res


def test_verify_report_catches_an_edited_number(ledger, tmp_path):
    p, _ = ledger
    rep = build_report(p, **ARGS)
    bad = copy.deepcopy(rep)
    bad["clients"][0]["epsilon_pld"] *= 0.5
    json_path, _ = write_report(bad, tmp_path / "out")
    res = verify_report(json_path, p)
    assert not res.ok and any("epsilon_pld" in m for m in res.mismatches)


def test_verify_report_catches_a_truncated_or_rewritten_ledger(ledger, tmp_path):
    p, _ = ledger
    json_path, _ = write_report(build_report(p, **ARGS), tmp_path / "out")
    conn = sqlite3.connect(p)
    with conn:
        conn.execute("DELETE FROM entries WHERE seq = (SELECT MAX(seq) FROM entries)")
    conn.close()
    res = verify_report(json_path, p)
    assert not res.ok and "truncated" in res.mismatches[0]


def test_verify_report_notes_later_appends(ledger, tmp_path):
    p, _ = ledger
    json_path, _ = write_report(build_report(p, **ARGS), tmp_path / "out")
    with Ledger(p) as led:
        led.append(
            DpSgdEvent(
                client_id="dave", round=9, noise_multiplier=2.0, sample_rate=0.1, steps=1, clip=1.0
            )
        )
    res = verify_report(json_path, p)
    assert res.ok and "appended after" in res.notes[0]


def test_build_refuses_a_tampered_ledger_or_wrong_config(ledger):
    p, _ = ledger
    with pytest.raises(LedgerError, match="config hash"):
        build_report(p, **{**ARGS, "config_hash": "other"})
    conn = sqlite3.connect(p)
    with conn:
        conn.execute("UPDATE entries SET round = 5 WHERE seq = 3")
    conn.close()
    with pytest.raises(LedgerError, match="failed verification"):
        build_report(p, **ARGS)


def test_schema_rejects_malformed_reports(ledger):
    p, _ = ledger
    rep = build_report(p, **ARGS)
    for mutate in (
        lambda r: r.pop("ledger"),
        lambda r: r["clients"][0].update(status="fine"),
        lambda r: r["clients"][0].update(epsilon_pld=-1.0),
        lambda r: r["accounting"].update(delta=1.0),
        lambda r: r.update(surprise=1),
    ):
        bad = copy.deepcopy(rep)
        mutate(bad)
        with pytest.raises(PrivacyError, match="schema"):
            validate_report(bad)


def test_empty_ledger_report(tmp_path):
    p = tmp_path / "empty.sqlite"
    Ledger(p).close()
    rep = build_report(p, **ARGS)
    assert rep["clients"] == [] and rep["summary"]["epsilon_max"] is None
    _, html_path = write_report(rep, tmp_path / "out")
    assert "No DP-SGD rounds" in html_path.read_text()
