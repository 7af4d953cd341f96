"""What a one-page audit needs (issue 12, item 3): utility beside chance and the non-private
baseline, a secure-aggregation section, early stops and exhausted clients in the headline, the
RDP cross-check explained; schema version 2, with version-1 reports still verifiable."""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path

import pytest

from securefvpa.errors import AccountingError
from securefvpa.privacy.report import (
    REPORT_SCHEMA_VERSION,
    build_report,
    validate_report,
    verify_report,
    wilson_interval,
    write_report,
)
from securefvpa.privacy.report_html import render_html

V1 = Path(__file__).resolve().parent / "data" / "report_v1"
ARGS = dict(run_id="anchor-run", delta=1e-5, budget_epsilon=4.0)
UTILITY = {"seen_users": 0.52, "unseen_users": 0.49, "controversial": 0.81}
SCORED = {"seen_users": 400, "unseen_users": 160, "controversial": 300}
BASELINE = {
    "model": "fedbtl",
    "accuracy": {"seen_users": 0.70, "unseen_users": 0.69, "controversial": 0.47},
    "source": "benchmarks/results/federated.json: non-private FedBTL, same data and seed",
}
SECAGG = {
    "threshold_fraction": 0.6,
    "ring_bits": 32,
    "clip_range": 8.0,
    "graph_degree": 0,
    "rounds": [
        {"round": 1, "participants": 10, "threshold": 6, "survivors": 10, "dropouts": 0,
         "clipped_coordinates": 3},
        {"round": 2, "participants": 10, "threshold": 6, "survivors": 8, "dropouts": 2,
         "clipped_coordinates": 0},
        {"round": 3, "participants": 9, "threshold": 6, "survivors": 9, "dropouts": 0,
         "clipped_coordinates": 11},
    ],
}
STOP = "round 5: fewer than min_fit_clients=2 clients remain within their privacy budget"


def _config_hash(run_dir: Path) -> str:
    from securefvpa.config import config_hash, load_config

    return config_hash(load_config(run_dir / "config.resolved.toml"))


def _full(private_run, **over):
    run_dir, path = private_run
    kw = dict(
        ARGS,
        config_hash=_config_hash(run_dir),
        utility=UTILITY,
        scored_pairs=SCORED,
        chance=0.5,
        baseline=BASELINE,
        secagg=SECAGG,
        stopped_early=STOP,
        exhausted_clients=["client_00000"],
    )
    kw.update(over)
    return build_report(path, **kw)


def _section(page: str, name: str) -> str:
    m = re.search(rf'<section id="{name}">(.*?)</section>', page, re.S)
    assert m, f"section {name!r} missing"
    return re.sub(r"<[^>]+>", " ", m.group(1))


def test_report_v2_records_every_audit_input(private_run):
    """Mutant caught: a builder that drops an input (chance, baseline, secagg, stop, exhausted)."""
    rep = _full(private_run)
    validate_report(rep)
    assert rep["schema_version"] == REPORT_SCHEMA_VERSION == 2
    rows = {r["metric"]: r for r in rep["utility_check"]["rows"]}
    assert rows["unseen_users"]["chance"] == 0.5 and rows["unseen_users"]["baseline"] == 0.69
    assert rows["unseen_users"]["minus_baseline"] == pytest.approx(0.49 - 0.69)
    lo, hi = rows["unseen_users"]["ci95"]
    assert lo < 0.5 < hi and not rows["unseen_users"]["above_chance"]
    assert rows["controversial"]["above_chance"]  # 0.81 of 300 pairs: clearly above 0.5
    assert rep["utility_check"]["baseline"]["source"] == BASELINE["source"]
    sa = rep["secure_aggregation"]["summary"]
    assert sa == {
        "rounds": 3, "participants_min": 9, "participants_max": 10, "threshold_min": 6,
        "survivors_min": 8, "dropouts_total": 2, "clipped_coordinates_total": 14,
    }
    assert "ring sum" in rep["secure_aggregation"]["server_saw"]
    assert rep["run_outcome"] == {"stopped_early": STOP, "exhausted_clients": ["client_00000"]}


def test_headline_never_claims_every_client_within_budget_when_some_are_exhausted(private_run):
    """Mutant caught: the old headline ("every client within budget" whenever none is over)."""
    rep = _full(private_run)
    assert rep["summary"]["exhausted"] >= 1
    text = rep["headline"]["text"]
    assert "every client within budget" not in text
    assert "exhausted" in text and "stopped early" in text
    assert rep["headline"]["status"] == "stopped_early"
    page = render_html(rep)
    head = _section(page, "headline")
    assert "every client within budget" not in page
    assert f"{rep['summary']['exhausted']} client" in head and "stopped early" in head


def test_clean_run_headline(private_run):
    rep = _full(private_run, stopped_early=None, exhausted_clients=None)
    if rep["summary"]["exhausted"] == 0:
        assert rep["headline"]["text"].startswith("every client within budget")
    else:
        assert rep["headline"]["status"] == "exhausted"


def test_html_has_every_audit_section_and_its_numbers_match_the_json(private_run):
    """Structural check of the page a browser renders (screenshot: docs/report_screenshot.png)."""
    rep = _full(private_run)
    page = render_html(rep)
    assert "<script" not in page
    for name in ("headline", "anchor", "accounting", "utility", "secure-aggregation",
                 "rounds", "clients", "verify", "limits", "software"):
        _section(page, name)
    anchor = _section(page, "anchor")
    assert rep["ledger"]["head_hash"] in anchor and str(rep["ledger"]["entry_count"]) in anchor
    util = _section(page, "utility")
    for metric, acc in UTILITY.items():
        assert metric.replace("_", " ") in util and f"{acc:.3f}" in util
    assert "0.500" in util and "0.690" in util and "fedbtl" in util
    assert "not above chance" in util
    sa = _section(page, "secure-aggregation")
    for needle in ("ring sum", "threshold", "survivors", "dropouts", "clipped"):
        assert needle in sa
    assert re.search(r"\b14\b", sa) and re.search(r"\b8\b", sa)
    acc = _section(page, "accounting")
    eps_rdp = rep["summary"]["epsilon_rdp_max"]
    assert eps_rdp > rep["accounting"]["budget_epsilon"]
    assert f"The RDP value ({eps_rdp:.3g}) exceeds the budget" in acc
    assert "looser cross-check" in acc and "not the accounted ε" in acc
    verify = _section(page, "verify")
    assert "securefvpa ledger verify" in verify and "securefvpa report verify" in verify


def test_no_inputs_gives_a_report_that_says_what_is_missing(private_run):
    run_dir, path = private_run
    rep = build_report(path, **ARGS, config_hash=_config_hash(run_dir))
    validate_report(rep)
    assert rep["utility_check"] is None and rep["secure_aggregation"] is None
    page = render_html(rep)
    assert "No utility metrics were supplied" in _section(page, "utility")
    assert "not used" in _section(page, "secure-aggregation")


@pytest.mark.parametrize(
    ("over", "needle"),
    [
        ({"chance": 1.5}, "chance"),
        ({"scored_pairs": {"seen_users": -1}}, "scored_pairs"),
        ({"baseline": {"model": "fedbtl"}}, "baseline"),
        ({"secagg": {**SECAGG, "rounds": [{"round": 1}]}}, "secagg.rounds[0]"),
        ({"secagg": {**SECAGG, "surprise": 1}}, "surprise"),
        ({"stopped_early": 3}, "stopped_early"),
        ({"exhausted_clients": "all"}, "exhausted_clients"),
    ],
)
def test_bad_inputs_are_named(private_run, over, needle):
    with pytest.raises(AccountingError, match=re.escape(needle)):
        _full(private_run, **over)


def test_verify_recomputes_the_new_sections(private_run, tmp_path):
    """Mutant caught: verify_report that skips the v2 fields (an edited dropout count passes)."""
    rep = _full(private_run)
    json_path, _ = write_report(rep, tmp_path / "out")
    assert verify_report(json_path, private_run[1]).ok
    bad = copy.deepcopy(rep)
    bad["secure_aggregation"]["summary"]["dropouts_total"] = 0
    bad["headline"]["text"] = "every client within budget"
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "privacy_report.json").write_text(json.dumps(bad))
    res = verify_report(tmp_path / "bad" / "privacy_report.json", private_run[1])
    assert not res.ok and any("dropouts_total" in m for m in res.mismatches)
    assert any("headline" in m for m in res.mismatches)


def test_version_1_reports_still_verify(tmp_path):
    """The committed v1 report and ledger were written by the code before schema 2."""
    shutil.copytree(V1, tmp_path / "v1")
    res = verify_report(tmp_path / "v1" / "privacy_report.json",
                        tmp_path / "v1" / "privacy_ledger.sqlite")
    assert res.ok, res
    assert any("schema version 1" in n for n in res.notes)
    rep = json.loads((tmp_path / "v1" / "privacy_report.json").read_text())
    rep["clients"][0]["epsilon_pld"] += 0.1
    (tmp_path / "v1" / "privacy_report.json").write_text(json.dumps(rep))
    res = verify_report(tmp_path / "v1" / "privacy_report.json",
                        tmp_path / "v1" / "privacy_ledger.sqlite")
    assert not res.ok and any("epsilon_pld" in m for m in res.mismatches)


def test_unknown_report_version_is_refused_with_a_clear_message(tmp_path):
    shutil.copytree(V1, tmp_path / "v1")
    rep = json.loads((tmp_path / "v1" / "privacy_report.json").read_text())
    rep["schema_version"] = 99
    (tmp_path / "v1" / "privacy_report.json").write_text(json.dumps(rep))
    res = verify_report(tmp_path / "v1" / "privacy_report.json",
                        tmp_path / "v1" / "privacy_ledger.sqlite")
    assert not res.ok
    assert "schema_version 99" in res.mismatches[0] and "1 or 2" in res.mismatches[0]


def test_wilson_interval_reference_values():
    """Wilson (1927) score interval; reference values as statsmodels' proportion_confint(...,
    method="wilson") gives them. Mutant caught: a normal-approximation or shifted interval."""
    lo, hi = wilson_interval(0.5, 100)
    assert lo == pytest.approx(0.4038315, abs=1e-6) and hi == pytest.approx(0.5961685, abs=1e-6)
    lo, hi = wilson_interval(0.9, 10)
    assert lo == pytest.approx(0.5958500, abs=1e-6) and hi == pytest.approx(0.9821237, abs=1e-6)
    assert wilson_interval(1.0, 20)[1] == 1.0 and wilson_interval(0.0, 20)[0] == 0.0


def test_report_command_takes_the_audit_inputs_from_metrics(private_run, capsys):
    """`securefvpa report RUN_DIR` completes the inputs of the report the run left with
    metrics.json (accuracy, pairs, stopped_early, exhausted_clients), and keeps them when re-run.
    Mutant caught: inputs taken from metrics.json only when there is no report yet (the run's
    report without a chance line stays without one)."""
    from securefvpa.cli import main

    run_dir, path = private_run
    write_report(build_report(path, **ARGS, config_hash=_config_hash(run_dir),
                              utility=UTILITY), run_dir)  # what a run wrote before the inputs
    (run_dir / "metrics.json").write_text(json.dumps({
        "accuracy": UTILITY, "pairs": SCORED, "stopped_early": STOP,
        "exhausted_clients": [0, 1], "secagg": False,
    }))
    assert main(["report", str(run_dir)]) == 0
    rep = json.loads((run_dir / "privacy_report.json").read_text())
    assert rep["utility_check"]["chance"] == 0.5
    rows = {r["metric"]: r for r in rep["utility_check"]["rows"]}
    assert rows["unseen_users"]["scored_pairs"] == 160
    assert rep["run_outcome"] == {"stopped_early": STOP, "exhausted_clients": ["0", "1"]}
    assert rep["headline"]["status"] == "stopped_early"
    (run_dir / "metrics.json").unlink()
    assert main(["report", str(run_dir)]) == 0  # same history, same inputs: replaced in place
    again = json.loads((run_dir / "privacy_report.json").read_text())
    assert again["utility_check"] == rep["utility_check"]
    assert main(["report", "verify", str(run_dir)]) == 0
    capsys.readouterr()
