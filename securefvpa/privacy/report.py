"""Privacy report: per-client epsilon derived from the ledger alone, plus an auditor's re-check.

:func:`build_report` is a pure function of the ledger's entries and its arguments (no clock, no
training state), so :func:`verify_report` can recompute it from the same ledger and compare.
The report records the ledger's entry count and head hash: an auditor holding the report
detects a ledger truncated or rewritten after the report was made.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
from dataclasses import dataclass, field
from importlib import metadata, resources
from pathlib import Path
from typing import Any

import jsonschema

import securefvpa
from securefvpa.errors import AccountingError, LedgerError, PrivacyError
from securefvpa.privacy.accountant import (
    DEFAULT_PLD_DISCRETIZATION,
    check_accountant,
    check_delta,
    check_discretization,
    epsilon,
    epsilon_trajectory,
)
from securefvpa.privacy.events import DpSgdEvent, canonical_json
from securefvpa.privacy.ledger import LedgerEntry, genesis_hash, read_entries, verify_entries

REPORT_SCHEMA_VERSION = 1
REPORT_JSON = "privacy_report.json"
REPORT_HTML = "report.html"
_TRACKED_DISTRIBUTIONS = ("dp-accounting", "numpy", "scipy", "opacus", "torch", "flwr")


def report_schema() -> dict[str, Any]:
    text = (
        resources.files("securefvpa.privacy")
        .joinpath("schemas/privacy_report.schema.json")
        .read_text(encoding="utf-8")
    )
    return json.loads(text)


def validate_report(report: object) -> None:
    """Raise :class:`PrivacyError` naming the first schema violation of ``report``."""
    validator = jsonschema.Draft202012Validator(report_schema())
    errors = sorted(validator.iter_errors(report), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        where = "/".join(str(p) for p in err.absolute_path) or "<root>"
        raise PrivacyError(f"privacy report violates its schema at {where}: {err.message}")


def software_versions() -> dict[str, str | None]:
    """Versions of the accounting stack, read from package metadata (nothing is imported)."""
    out: dict[str, str | None] = {
        "python": platform.python_version(),
        "securefvpa": securefvpa.__version__,
    }
    for dist in _TRACKED_DISTRIBUTIONS:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _finite(value: float, what: str) -> float:
    if not math.isfinite(value):
        raise AccountingError(f"{what} is not finite ({value!r}); it cannot be reported.")
    return value


def _client_row(
    client_id: str,
    events: list[DpSgdEvent],
    declined: list[int],
    *,
    delta: float,
    budget: float,
    primary: str,
    d: float,
) -> dict[str, Any]:
    events = sorted(events, key=lambda e: e.round)
    traj = epsilon_trajectory(events, delta, accountant=primary, value_discretization_interval=d)
    eps_pld = epsilon(events, delta, accountant="pld", value_discretization_interval=d)
    eps_rdp = epsilon(events, delta, accountant="rdp")
    eps = eps_pld if primary == "pld" else eps_rdp
    if eps > budget:
        status = "over_budget"
    elif declined:
        status = "exhausted"
    else:
        status = "within_budget"
    return {
        "client_id": client_id,
        "relation": events[0].relation if events else None,
        "rounds_joined": [e.round for e in events],
        "declined_rounds": sorted(declined),
        "noise_multipliers": sorted({e.noise_multiplier for e in events}),
        "sample_rates": sorted({e.sample_rate for e in events}),
        "steps_per_round": sorted({e.steps for e in events}),
        "clips": sorted({e.clip for e in events}),
        "total_steps": sum(e.steps for e in events),
        "epsilon_pld": _finite(eps_pld, f"PLD epsilon of client {client_id!r}"),
        "epsilon_rdp": _finite(eps_rdp, f"RDP epsilon of client {client_id!r}"),
        "epsilon": eps,
        "epsilon_after_round": [_finite(v, f"epsilon of client {client_id!r}") for _, v in traj],
        "budget_epsilon": budget,
        "status": status,
    }


def build_report_from_entries(
    ledger_id: str,
    entries: list[LedgerEntry],
    *,
    run_id: str,
    config_hash: str,
    delta: float,
    budget_epsilon: float,
    accountant: str = "pld",
    utility: dict[str, Any] | None = None,
    value_discretization_interval: float = DEFAULT_PLD_DISCRETIZATION,
) -> dict[str, Any]:
    """The report for verified ``entries``; see :func:`build_report`."""
    delta = check_delta(delta)
    primary = check_accountant(accountant)
    d = check_discretization(value_discretization_interval)
    if (
        isinstance(budget_epsilon, bool)
        or not isinstance(budget_epsilon, int | float)
        or not (math.isfinite(budget_epsilon) and budget_epsilon > 0)
    ):
        raise AccountingError(f"budget_epsilon must be finite and > 0. Found {budget_epsilon!r}.")
    for name, value in (("run_id", run_id), ("config_hash", config_hash)):
        if not isinstance(value, str) or not value:
            raise AccountingError(f"{name} must be a non-empty string. Found {value!r}.")
    if utility is not None and not isinstance(utility, dict):
        raise AccountingError(f"utility must be a dict or None. Found {type(utility).__name__}.")
    utility_norm = None if utility is None else json.loads(canonical_json(utility))
    budget = float(budget_epsilon)

    events: dict[str, list[DpSgdEvent]] = {}
    declined: dict[str, list[int]] = {}
    runs: list[dict[str, Any]] = []
    for e in entries:
        if e.kind == "dp_sgd":
            ev = e.event()
            events.setdefault(ev.client_id, []).append(ev)
        elif e.kind == "declined":
            ev = e.event()
            declined.setdefault(ev.client_id, []).append(ev.round)
        else:
            obj = e.payload_obj()
            runs.append(
                {
                    "seq": e.seq,
                    "kind": e.kind,
                    "run_id": obj["run_id"],
                    "config_hash": obj["config_hash"],
                    "timestamp": e.timestamp,
                }
            )
    for r in runs:
        if r["run_id"] == run_id and r["config_hash"] != config_hash:
            raise LedgerError(
                f"ledger entry {r['seq']} records run {run_id!r} with config hash "
                f"{r['config_hash']!r}, not {config_hash!r}."
            )
    relations = {ev.relation for evs in events.values() for ev in evs}
    if len(relations) > 1:
        raise LedgerError(f"ledger mixes neighbouring relations {sorted(relations)}.")

    clients = [
        _client_row(
            c,
            events.get(c, []),
            declined.get(c, []),
            delta=delta,
            budget=budget,
            primary=primary,
            d=d,
        )
        for c in sorted(set(events) | set(declined))
    ]
    eps = [c["epsilon"] for c in clients]
    all_rounds = [r for c in clients for r in c["rounds_joined"] + c["declined_rounds"]]
    return {
        "schema_version": REPORT_SCHEMA_VERSION,
        "report_kind": "securefvpa.privacy_report",
        "run_id": run_id,
        "config_hash": config_hash,
        "software": software_versions(),
        "accounting": {
            "primary_accountant": primary,
            "neighbouring_relation": next(iter(relations)) if relations else None,
            "privacy_unit": "one preference pair",
            "delta": delta,
            "budget_epsilon": budget,
            "pld_value_discretization_interval": d,
            "pld_estimate": "dp-accounting PLDAccountant, connect-the-dots, pessimistic "
            "(upper bound)",
            "rdp_method": "dp-accounting RdpAccountant (add_remove_one); weak-triangle bound "
            "over add/remove curves, Mironov 2017 Prop. 11 (replace_one)",
        },
        "ledger": {
            "ledger_id": ledger_id,
            "entry_count": len(entries),
            "head_hash": entries[-1].entry_hash if entries else genesis_hash(ledger_id),
            "dp_sgd_entries": sum(e.kind == "dp_sgd" for e in entries),
            "declined_entries": sum(e.kind == "declined" for e in entries),
            "runs": runs,
        },
        "summary": {
            "clients": len(clients),
            "within_budget": sum(c["status"] == "within_budget" for c in clients),
            "exhausted": sum(c["status"] == "exhausted" for c in clients),
            "over_budget": sum(c["status"] == "over_budget" for c in clients),
            "max_round": max(all_rounds) if all_rounds else None,
            "epsilon_max": max(eps) if eps else None,
            "epsilon_median": float(statistics.median(eps)) if eps else None,
            "epsilon_min": min(eps) if eps else None,
            "epsilon_rdp_max": max(c["epsilon_rdp"] for c in clients) if clients else None,
        },
        "clients": clients,
        "utility": utility_norm,
    }


def build_report(
    ledger_path: str | os.PathLike[str],
    *,
    run_id: str,
    config_hash: str,
    delta: float,
    budget_epsilon: float,
    accountant: str = "pld",
    utility: dict[str, Any] | None = None,
    value_discretization_interval: float = DEFAULT_PLD_DISCRETIZATION,
) -> dict[str, Any]:
    """Verify the ledger, then derive the privacy report from its entries and the arguments.

    Raises :class:`LedgerError` if the ledger fails verification or disagrees with
    ``run_id``/``config_hash``; :class:`AccountingError` for bad arguments.
    """
    ledger_id, entries = read_entries(ledger_path)
    check = verify_entries(ledger_id, entries)
    if not check.ok:
        raise LedgerError(f"ledger {str(ledger_path)!r} failed verification: {check.reason}")
    report = build_report_from_entries(
        ledger_id,
        entries,
        run_id=run_id,
        config_hash=config_hash,
        delta=delta,
        budget_epsilon=budget_epsilon,
        accountant=accountant,
        utility=utility,
        value_discretization_interval=value_discretization_interval,
    )
    validate_report(report)
    return report


def write_report(report: dict[str, Any], out_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Validate ``report`` and write ``privacy_report.json`` and ``report.html`` to ``out_dir``."""
    from securefvpa.privacy.report_html import render_html

    validate_report(report)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = (out / REPORT_JSON, out / REPORT_HTML)
    texts = (
        json.dumps(report, indent=2, sort_keys=True, allow_nan=False) + "\n",
        render_html(report),
    )
    for path, text in zip(paths, texts):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    return paths


@dataclass(frozen=True)
class ReportVerification:
    """Result of :func:`verify_report`: ``ok`` iff no mismatch; notes are informational."""

    ok: bool
    mismatches: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _diff(a: Any, b: Any, path: str, out: list[str]) -> None:
    if len(out) >= 20:
        return
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                out.append(f"{path}/{k}: present in only one report")
            else:
                _diff(a[k], b[k], f"{path}/{k}", out)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out.append(f"{path}: {len(a)} items vs {len(b)} recomputed")
        else:
            for i, (x, y) in enumerate(zip(a, b)):
                _diff(x, y, f"{path}/{i}", out)
    elif isinstance(a, float) or isinstance(b, float):
        if not (
            isinstance(a, int | float)
            and isinstance(b, int | float)
            and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
        ):
            out.append(f"{path}: {a!r} in report vs {b!r} recomputed")
    elif a != b or type(a) is not type(b):
        out.append(f"{path}: {a!r} in report vs {b!r} recomputed")


def verify_report(
    report_path: str | os.PathLike[str], ledger_path: str | os.PathLike[str]
) -> ReportVerification:
    """An auditor's check: recompute the report from the ledger and compare.

    The report is recomputed from the ledger's first ``entry_count`` entries (a ledger that grew
    since is noted, not failed); the head hash must match. Software versions that differ from
    the report's are noted; every other field must agree (floats to 1e-9 relative).
    """
    try:
        report = json.loads(Path(report_path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        return ReportVerification(False, [f"cannot read report {str(report_path)!r}: {err}"])
    try:
        validate_report(report)
    except PrivacyError as err:
        return ReportVerification(False, [str(err)])
    ledger_id, entries = read_entries(ledger_path)
    n = report["ledger"]["entry_count"]
    notes: list[str] = []
    if len(entries) < n:
        return ReportVerification(
            False, [f"ledger has {len(entries)} entries; the report covered {n} (truncated)"]
        )
    if len(entries) > n:
        notes.append(f"ledger has {len(entries) - n} entries appended after the report")
    check = verify_entries(
        ledger_id, entries[:n], expected_head=report["ledger"]["head_hash"], expected_count=n
    )
    if not check.ok:
        return ReportVerification(False, [f"ledger: {check.reason}"], notes)
    acc = report["accounting"]
    try:
        again = build_report_from_entries(
            ledger_id,
            entries[:n],
            run_id=report["run_id"],
            config_hash=report["config_hash"],
            delta=acc["delta"],
            budget_epsilon=acc["budget_epsilon"],
            accountant=acc["primary_accountant"],
            utility=report["utility"],
            value_discretization_interval=acc["pld_value_discretization_interval"],
        )
    except PrivacyError as err:
        return ReportVerification(False, [f"cannot recompute: {err}"], notes)
    for k, v in report["software"].items():
        if again["software"].get(k) != v:
            notes.append(f"software {k}: report {v!r}, here {again['software'].get(k)!r}")
    mismatches: list[str] = []
    _diff(
        {k: v for k, v in report.items() if k != "software"},
        {k: v for k, v in again.items() if k != "software"},
        "",
        mismatches,
    )
    return ReportVerification(not mismatches, mismatches, notes)
