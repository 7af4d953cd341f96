"""Privacy report: per-client epsilon derived from the ledger alone, plus an auditor's re-check.

:func:`build_report` is a pure function of the ledger's entries and its arguments (no clock, no
training state), so :func:`verify_report` can recompute it from the same ledger and compare.
The report records the ledger's entry count and head hash (its *anchor*): an auditor holding the
report detects a ledger truncated, rolled back or rewritten after the report was made, and
:func:`write_report` never replaces a report with one of a shorter or different history.

Schema version 2 (``schemas/privacy_report.schema.json``) adds what a one-page audit needs to
version 1: ``headline`` (never "every client within budget" while a client is exhausted or the
run stopped early), ``utility_check`` (utility beside chance and a non-private baseline, with a
Wilson interval when the scored-pair counts are given), ``secure_aggregation`` (threshold,
participants, survivors, dropouts, clipped coordinates, what the server saw), ``run_outcome``
(early stop, exhausted clients as the run reported them), ``notes`` (the RDP cross-check
explained when it exceeds the budget, re-run attempts, secure-aggregation anomalies) and
``clients[].retried_rounds``. Version-1 reports are still verified, on their version-1 fields.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import statistics
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib import metadata, resources
from pathlib import Path
from typing import Any, cast

import jsonschema

from securefvpa._version import __version__
from securefvpa.errors import AccountingError, LedgerError, PrivacyError
from securefvpa.fsutil import atomic_write_text
from securefvpa.privacy.accountant import (
    DEFAULT_PLD_DISCRETIZATION,
    check_accountant,
    check_delta,
    check_discretization,
    epsilon,
    epsilon_trajectory,
    group_epsilon_bound,
)
from securefvpa.privacy.ddg import DdgEvent, PrivacyEvent
from securefvpa.privacy.events import DpSgdEvent, canonical_json
from securefvpa.privacy.ledger import (
    EVENT_KINDS,
    Anchor,
    LedgerEntry,
    check_anchor,
    genesis_hash,
    read_entries,
    verify_entries,
)

log = logging.getLogger("securefvpa.privacy")

REPORT_SCHEMA_VERSION = 2
SUPPORTED_SCHEMA_VERSIONS = (1, 2)
REPORT_JSON = "privacy_report.json"
REPORT_HTML = "report.html"
SERVER_SAW = (
    "only the ring sum (mod 2^bits) of the masked inputs of at least t surviving clients: "
    "pairwise masks cancel in the sum and a dropped client's masks are removed with t Shamir "
    "shares; no individual update"
)
_TRACKED_DISTRIBUTIONS = ("dp-accounting", "numpy", "scipy", "opacus", "torch", "flwr")
_V2_ONLY_TOP = ("headline", "notes", "utility_check", "secure_aggregation", "run_outcome")
_V2_ONLY_CLIENT = ("retried_rounds",)
_Z95 = 1.959963984540054  # standard normal 0.975 quantile
_SECAGG_KEYS = {
    "threshold_fraction",
    "ring_bits",
    "clip_range",
    "graph_degree",
    "server_saw",
    "rounds",
}
_SECAGG_ROUND_INTS = (
    "round",
    "participants",
    "threshold",
    "survivors",
    "dropouts",
    "clipped_coordinates",
)


def report_schema(version: int = REPORT_SCHEMA_VERSION) -> dict[str, Any]:
    """The JSON Schema (2020-12) of report ``version`` (1 or 2)."""
    name = "privacy_report.schema.json" if version == 2 else "privacy_report.v1.schema.json"
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        raise PrivacyError(
            f"privacy report schema_version {version!r} is not supported: this securefvpa "
            f"reads {' or '.join(map(str, SUPPORTED_SCHEMA_VERSIONS))}."
        )
    text = resources.files("securefvpa.privacy").joinpath(f"schemas/{name}").read_text("utf-8")
    return json.loads(text)


def validate_report(report: object) -> None:
    """Raise :class:`PrivacyError` naming the first schema violation of ``report``.

    The schema is chosen by the report's own ``schema_version`` (1 or 2); any other version is
    refused with the versions this code reads.
    """
    version = report.get("schema_version") if isinstance(report, dict) else None
    if isinstance(version, bool) or version not in SUPPORTED_SCHEMA_VERSIONS:
        raise PrivacyError(
            f"privacy report schema_version {version!r} is not supported: this securefvpa "
            f"reads {' or '.join(map(str, SUPPORTED_SCHEMA_VERSIONS))}."
        )
    validator = jsonschema.Draft202012Validator(report_schema(int(version)))
    errors = sorted(validator.iter_errors(report), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        where = "/".join(str(p) for p in err.absolute_path) or "<root>"
        raise PrivacyError(f"privacy report violates its schema at {where}: {err.message}")


def software_versions() -> dict[str, str | None]:
    """Versions of the accounting stack, read from package metadata (nothing is imported)."""
    out: dict[str, str | None] = {
        "python": platform.python_version(),
        "securefvpa": __version__,
    }
    for dist in _TRACKED_DISTRIBUTIONS:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


UNIT_TEXT = {"pair": "one preference pair", "user": "one user's whole preference profile"}
MECHANISM_TEXT = {
    "local": "DP-SGD with local Gaussian noise on every client (Abadi et al. 2016)",
    "distributed": "distributed discrete Gaussian under secure aggregation (Kairouz, Liu & "
    "Steinke 2021): each round one clipped gradient sum, noise from >= t - T honest shares",
    "central": "Gaussian noise added once by a TRUSTED server to the sum of clipped gradients "
    "(DP-FedAvg, McMahan et al. 2018; the reference: the server sees the clients' sums)",
}


def _finite(value: float, what: str) -> float:
    if not math.isfinite(value):
        raise AccountingError(f"{what} is not finite ({value!r}); it cannot be reported.")
    return value


def _client_row(
    client_id: str,
    events: list[PrivacyEvent],
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
    if events and isinstance(events[0], DdgEvent):
        # Distributed rounds: one mechanism, one bound (the DDG RDP bound, privacy.ddg); the
        # pld/rdp columns both hold it. "noise multiplier" is the honest sum's central one.
        sigmas = sorted({e.to_round().central_noise_multiplier for e in events})  # type: ignore[union-attr]
        steps = [1]
        total = len(events)
    else:
        local = cast("list[DpSgdEvent]", events)  # one mode per history (accountant checks it)
        sigmas = sorted({e.noise_multiplier for e in local})
        steps = sorted({e.steps for e in local})
        total = sum(e.steps for e in local)
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
        "retried_rounds": sorted({e.round for e in events if getattr(e, "attempt", 1) > 1}),
        "noise_multipliers": sigmas,
        "sample_rates": sorted({e.sample_rate for e in events}),
        "steps_per_round": steps,
        "clips": sorted({e.clip for e in events}),
        "total_steps": total,
        "epsilon_pld": _finite(eps_pld, f"PLD epsilon of client {client_id!r}"),
        "epsilon_rdp": _finite(eps_rdp, f"RDP epsilon of client {client_id!r}"),
        "epsilon": eps,
        "epsilon_after_round": [_finite(v, f"epsilon of client {client_id!r}") for _, v in traj],
        "budget_epsilon": budget,
        "status": status,
    }


# -- optional inputs: checked, normalised, every error names the key --------------------------


def _bad(key: str, must: str, value: object) -> AccountingError:
    return AccountingError(f"report input {key} must {must}. Found {value!r}.")


def _is_num(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _unit(key: str, x: object) -> float:
    if not _is_num(x) or not 0.0 <= float(x) <= 1.0:  # type: ignore[arg-type]
        raise _bad(key, "be a number in [0, 1]", x)
    return float(x)  # type: ignore[arg-type]


def _count(key: str, x: object, *, minimum: int = 0) -> int:
    if isinstance(x, bool) or not isinstance(x, int) or x < minimum:
        raise _bad(key, f"be an integer >= {minimum}", x)
    return x


def _flat_metrics(utility: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for k in sorted(utility):
        v = utility[k]
        if isinstance(v, Mapping):
            yield from _flat_metrics(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def wilson_interval(accuracy: float, n: int) -> tuple[float, float]:
    """95 % Wilson score interval of a binomial proportion (Wilson 1927, JASA 22:209).

    ``n`` scored pairs treated as independent Bernoulli trials; pairs of one user are not, so
    the interval is optimistic for per-user correlated errors. Hand-written (4 lines) rather
    than scipy/statsmodels so that the privacy package keeps its dependencies.
    """
    z2 = _Z95 * _Z95
    centre = (accuracy + z2 / (2 * n)) / (1 + z2 / n)
    half = _Z95 / (1 + z2 / n) * math.sqrt(accuracy * (1 - accuracy) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def _utility_check(
    utility: dict[str, Any] | None,
    scored_pairs: Mapping[str, Any] | None,
    chance: float | None,
    baseline: Mapping[str, Any] | None,
) -> dict[str, Any] | None:
    if chance is not None:
        if not _is_num(chance) or not 0.0 < float(chance) < 1.0:
            raise _bad("chance", "be a number in (0, 1) (0.5 for pairwise accuracy)", chance)
        chance = float(chance)
    counts: dict[str, int] = {}
    if scored_pairs is not None:
        if not isinstance(scored_pairs, Mapping):
            raise _bad(
                "scored_pairs", "be a mapping metric -> number of scored pairs", scored_pairs
            )
        for k, v in _flat_metrics(scored_pairs):
            if v is not None:
                counts[k] = _count(f"scored_pairs[{k!r}]", v, minimum=1)
    base: dict[str, Any] | None = None
    if baseline is not None:
        if not isinstance(baseline, Mapping) or set(baseline) != {"model", "accuracy", "source"}:
            raise _bad(
                "baseline",
                "be a mapping with exactly the keys model, accuracy, source",
                baseline if not isinstance(baseline, Mapping) else sorted(baseline),
            )
        model, acc, source = baseline["model"], baseline["accuracy"], baseline["source"]
        if not isinstance(model, str) or not model or not isinstance(source, str) or not source:
            raise _bad("baseline.model and baseline.source", "be non-empty strings", baseline)
        if not isinstance(acc, Mapping):
            raise _bad("baseline.accuracy", "be a mapping metric -> accuracy", acc)
        flat = {
            k: (None if v is None else _unit(f"baseline.accuracy[{k!r}]", v))
            for k, v in _flat_metrics(acc)
        }
        base = {"model": model, "accuracy": flat, "source": source}
    if utility is None:
        if base is not None or counts:
            raise _bad("utility", "be given when baseline or scored_pairs are", None)
        return None
    rows: list[dict[str, Any]] = []
    for metric, value in _flat_metrics(utility):
        if not _is_num(value) or not 0.0 <= float(value) <= 1.0:
            continue  # None (no pairs of that kind) or not an accuracy (a count, bits)
        acc_v = float(value)
        n = counts.get(metric)
        ci = wilson_interval(acc_v, n) if n else None
        b = None if base is None else base["accuracy"].get(metric)
        rows.append(
            {
                "metric": metric,
                "accuracy": acc_v,
                "scored_pairs": n,
                "ci95": None if ci is None else [ci[0], ci[1]],
                "chance": chance,
                "minus_chance": None if chance is None else acc_v - chance,
                "above_chance": None if ci is None or chance is None else ci[0] > chance,
                "baseline": b,
                "minus_baseline": None if b is None else acc_v - b,
            }
        )
    known = [r for r in rows if r["above_chance"] is not None]
    if chance is None:
        verdict = "chance level not supplied"
    elif not known:
        verdict = "scored-pair counts not supplied: no confidence interval against chance"
    else:
        above = [r["metric"] for r in known if r["above_chance"]]
        verdict = (
            f"{len(above)} of {len(known)} metrics above chance {chance:g} at 95 % confidence"
            + (f" ({', '.join(above)})" if above else ": nothing measurable was learned")
        )
    return {"chance": chance, "baseline": base, "rows": rows, "verdict": verdict}


def _secure_aggregation(secagg: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if secagg is None:
        return None
    if not isinstance(secagg, Mapping):
        raise _bad("secagg", "be a mapping", secagg)
    unknown = sorted(set(secagg) - _SECAGG_KEYS)
    if unknown:
        raise _bad("secagg", f"have only the keys {sorted(_SECAGG_KEYS)}; unknown", unknown)
    if "rounds" not in secagg or not isinstance(secagg["rounds"], list | tuple):
        raise _bad("secagg.rounds", "be a list of per-round records", secagg.get("rounds"))
    rounds: list[dict[str, Any]] = []
    for i, r in enumerate(secagg["rounds"]):
        key = f"secagg.rounds[{i}]"
        need = set(_SECAGG_ROUND_INTS)
        if not isinstance(r, Mapping) or not need <= set(r) <= need | {"aborted"}:
            raise _bad(key, f"have the keys {sorted(need)} (and optionally aborted)", r)
        row = {k: _count(f"{key}.{k}", r[k]) for k in _SECAGG_ROUND_INTS}
        _count(f"{key}.threshold", r["threshold"], minimum=1)
        aborted = r.get("aborted", False)
        if not isinstance(aborted, bool):
            raise _bad(f"{key}.aborted", "be true or false", aborted)
        rounds.append({**row, "aborted": aborted})
    frac = secagg.get("threshold_fraction")
    if frac is not None and (not _is_num(frac) or not 0.0 < float(frac) <= 1.0):
        raise _bad("secagg.threshold_fraction", "be a number in (0, 1]", frac)
    bits = secagg.get("ring_bits")
    if bits is not None:
        _count("secagg.ring_bits", bits, minimum=1)
    clip = secagg.get("clip_range")
    if clip is not None and (not _is_num(clip) or float(clip) <= 0):
        raise _bad("secagg.clip_range", "be a number > 0", clip)
    degree = secagg.get("graph_degree")
    if degree is not None:
        _count("secagg.graph_degree", degree)
    saw = secagg.get("server_saw", SERVER_SAW)
    if not isinstance(saw, str) or not saw:
        raise _bad("secagg.server_saw", "be a non-empty string", saw)
    done = [r for r in rounds if not r["aborted"]]
    anomalies: list[str] = []
    for r in rounds:
        if r["survivors"] + r["dropouts"] != r["participants"]:
            anomalies.append(
                f"round {r['round']}: survivors {r['survivors']} + dropouts {r['dropouts']} != "
                f"participants {r['participants']}"
            )
        if not r["aborted"] and r["survivors"] < r["threshold"]:
            anomalies.append(
                f"round {r['round']}: unmasked with {r['survivors']} survivors, below the "
                f"threshold t = {r['threshold']}"
            )
    summary = {
        "rounds": len(rounds),
        "participants_min": min((r["participants"] for r in rounds), default=None),
        "participants_max": max((r["participants"] for r in rounds), default=None),
        "threshold_min": min((r["threshold"] for r in rounds), default=None),
        "survivors_min": min((r["survivors"] for r in done), default=None),
        "dropouts_total": sum(r["dropouts"] for r in rounds),
        "clipped_coordinates_total": sum(r["clipped_coordinates"] for r in rounds),
    }
    return {
        "threshold_fraction": None if frac is None else float(frac),
        "ring_bits": bits,
        "clip_range": None if clip is None else float(clip),
        "graph_degree": degree,
        "server_saw": saw,
        "rounds": rounds,
        "summary": summary,
        "anomalies": anomalies,
    }


def _run_outcome(stopped_early: object, exhausted_clients: object) -> dict[str, Any]:
    if stopped_early is not None and (not isinstance(stopped_early, str) or not stopped_early):
        raise _bad("stopped_early", "be None or a non-empty reason", stopped_early)
    exhausted: int | list[str] | None
    if exhausted_clients is None or (
        isinstance(exhausted_clients, int) and not isinstance(exhausted_clients, bool)
    ):
        exhausted = (
            None if exhausted_clients is None else _count("exhausted_clients", exhausted_clients)
        )
    elif isinstance(exhausted_clients, list | tuple):
        if not all(isinstance(c, str | int) and not isinstance(c, bool) for c in exhausted_clients):
            raise _bad(
                "exhausted_clients", "list client ids (strings or integers)", exhausted_clients
            )
        exhausted = [str(c) for c in exhausted_clients]
    else:
        raise _bad(
            "exhausted_clients", "be None, a count or a list of client ids", exhausted_clients
        )
    return {"stopped_early": stopped_early, "exhausted_clients": exhausted}


def _headline(
    summary: dict[str, Any], outcome: dict[str, Any], *, budget: float, delta: float
) -> dict[str, str]:
    n, within = summary["clients"], summary["within_budget"]
    exhausted, over = summary["exhausted"], summary["over_budget"]
    run_ex = outcome["exhausted_clients"]
    run_ex_n = len(run_ex) if isinstance(run_ex, list) else run_ex
    stop = outcome["stopped_early"]
    parts: list[str] = []
    if over:
        parts.append(f"{over} client(s) OVER budget ε = {budget:g}")
    if n == 0:
        parts.append("no DP-SGD round in the ledger")
    elif within == n:
        parts.append(f"every client within budget (ε ≤ {budget:g} at δ = {delta:g})")
    else:
        parts.append(f"{within} of {n} clients within budget (ε ≤ {budget:g} at δ = {delta:g})")
    if exhausted:
        parts.append(
            f"{exhausted} client(s) exhausted their budget (further rounds declined, nothing "
            "trained)"
        )
    if run_ex_n is not None and run_ex_n != exhausted:
        parts.append(f"the run reported {run_ex_n} exhausted client(s)")
    if summary["epsilon_max"] is not None:
        parts.append(f"ε max {summary['epsilon_max']:.4g}")
    if stop:
        parts.append(f"training stopped early: {stop}")
    if over:
        status = "over_budget"
    elif stop:
        status = "stopped_early"
    elif exhausted or run_ex_n:
        status = "exhausted"
    elif n == 0:
        status = "no_rounds"
    else:
        status = "within_budget"
    return {"status": status, "text": "; ".join(parts)}


def _notes(report: dict[str, Any]) -> list[str]:
    acc, summ = report["accounting"], report["summary"]
    notes: list[str] = []
    rdp, budget = summ["epsilon_rdp_max"], acc["budget_epsilon"]
    if acc["primary_accountant"] == "pld" and rdp is not None and rdp > budget:
        k = sum(c["epsilon_rdp"] > budget for c in report["clients"])
        notes.append(
            f"The RDP value (max {rdp:.3g}, {k} client(s) above the budget {budget:g}) is the "
            "looser cross-check: a second, independent upper bound (Rényi DP converted to "
            "(ε, δ)), not the accounted ε. The budget is enforced with the PLD accountant "
            f"(ε max {summ['epsilon_max']:.3g}), which is tighter; PLD ≤ RDP on every tested "
            "setting (tests/privacy/test_accountant.py::test_rdp_upper_bounds_pld)."
        )
    retried = sum(len(c["retried_rounds"]) for c in report["clients"])
    if retried:
        notes.append(
            f"{retried} client round(s) were run more than once (a crash, then --resume); every "
            "attempt is a separate ledger event and counted in ε."
        )
    sa = report["secure_aggregation"]
    if sa is not None:
        notes.extend(f"secure aggregation: {a}" for a in sa["anomalies"])
    return notes


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
    chance: float | None = None,
    scored_pairs: Mapping[str, Any] | None = None,
    baseline: Mapping[str, Any] | None = None,
    secagg: Mapping[str, Any] | None = None,
    stopped_early: str | None = None,
    exhausted_clients: int | list[str] | list[int] | None = None,
    group_size: int | None = None,
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
    utility_check = _utility_check(utility_norm, scored_pairs, chance, baseline)
    secure = _secure_aggregation(secagg)
    outcome = _run_outcome(stopped_early, exhausted_clients)
    budget = float(budget_epsilon)

    events: dict[str, list[PrivacyEvent]] = {}
    declined: dict[str, list[int]] = {}
    runs: list[dict[str, Any]] = []
    noise_mode = "local"  # the run's plan, recorded in its run_start entry
    for e in entries:
        if e.kind in EVENT_KINDS:
            ev = e.event()
            events.setdefault(ev.client_id, []).append(ev)
        elif e.kind == "declined":
            ev = e.event()
            declined.setdefault(ev.client_id, []).append(ev.round)
        else:
            obj = e.payload_obj()
            if e.kind == "run_start" and obj["run_id"] == run_id:
                noise_mode = str(obj.get("extra", {}).get("noise", "local"))
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
    distributed = any(isinstance(ev, DdgEvent) for evs in events.values() for ev in evs)
    units = {getattr(ev, "unit", "pair") for evs in events.values() for ev in evs}

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
    summary = {
        "clients": len(clients),
        "within_budget": sum(c["status"] == "within_budget" for c in clients),
        "exhausted": sum(c["status"] == "exhausted" for c in clients),
        "over_budget": sum(c["status"] == "over_budget" for c in clients),
        "max_round": max(all_rounds) if all_rounds else None,
        "epsilon_max": max(eps) if eps else None,
        "epsilon_median": float(statistics.median(eps)) if eps else None,
        "epsilon_min": min(eps) if eps else None,
        "epsilon_rdp_max": max(c["epsilon_rdp"] for c in clients) if clients else None,
    }
    report: dict[str, Any] = {
        "schema_version": REPORT_SCHEMA_VERSION,
        "report_kind": "securefvpa.privacy_report",
        "run_id": run_id,
        "config_hash": config_hash,
        "software": software_versions(),
        "headline": _headline(summary, outcome, budget=budget, delta=delta),
        "accounting": {
            "primary_accountant": "ddg-rdp" if distributed else primary,
            "neighbouring_relation": next(iter(relations)) if relations else None,
            "privacy_unit": UNIT_TEXT[next(iter(units))] if len(units) == 1 else "mixed units",
            "mechanism": MECHANISM_TEXT["distributed" if distributed else noise_mode],
            "delta": delta,
            "budget_epsilon": budget,
            "pld_value_discretization_interval": d,
            "pld_estimate": (
                "not applicable: no PLD exists for a sum of discrete Gaussians; both epsilon "
                "columns hold the DDG RDP bound (securefvpa.privacy.ddg)"
                if distributed
                else "dp-accounting PLDAccountant, connect-the-dots, pessimistic (upper bound)"
            ),
            "rdp_method": (
                "DDG Prop. 14 bound for sums of discrete Gaussians, Zhu & Wang 2019 Thm. 6 "
                "Poisson subsampling, weak triangle (Mironov 2017 Prop. 11) for replace_one"
                if distributed
                else "dp-accounting RdpAccountant (add_remove_one); weak-triangle bound "
                "over add/remove curves, Mironov 2017 Prop. 11 (replace_one)"
            ),
        },
        "ledger": {
            "ledger_id": ledger_id,
            "entry_count": len(entries),
            "head_hash": entries[-1].entry_hash if entries else genesis_hash(ledger_id),
            "dp_sgd_entries": sum(e.kind in EVENT_KINDS for e in entries),
            "declined_entries": sum(e.kind == "declined" for e in entries),
            "runs": runs,
        },
        "summary": summary,
        "clients": clients,
        "utility": utility_norm,
        "utility_check": utility_check,
        "secure_aggregation": secure,
        "run_outcome": outcome,
    }
    report["per_user_bound"] = _per_user_bound(
        events, units, group_size, delta=delta, primary=primary
    )
    report["notes"] = _notes(report)
    return report


def _per_user_bound(
    events: Mapping[str, list[PrivacyEvent]],
    units: set[str],
    group_size: int | None,
    *,
    delta: float,
    primary: str,
) -> dict[str, Any] | None:
    """Per-user epsilon: the accounted epsilon when the unit is the user; for pair-level runs a
    group-privacy bound over the most train pairs one user holds (``group_size``, public under
    replace-one), labelled a bound (``accountant.group_epsilon_bound``)."""
    if units == {"user"}:
        return {
            "group_size": 1,
            "epsilon_max": None,
            "vacuous": False,
            "note": "the privacy unit is the user: the epsilon above is already per user",
        }
    if group_size is None:
        return None
    k = _count("group_size", group_size, minimum=1)
    bounds = [
        group_epsilon_bound(evs, delta=delta, group_size=k, accountant=primary)
        for evs in events.values()
        if evs
    ]
    worst = max(bounds, default=0.0)
    vacuous = not math.isfinite(worst)
    return {
        "group_size": k,
        "epsilon_max": None if vacuous else worst,
        "vacuous": vacuous,
        "note": (
            f"a BOUND by group privacy over the {k} train pairs one user may hold "
            "(k eps', k e^((k-1) eps') delta'), not an accounted value"
            + ("; at this epsilon it is vacuous (no finite bound at this delta)" if vacuous else "")
        ),
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
    chance: float | None = None,
    scored_pairs: Mapping[str, Any] | None = None,
    baseline: Mapping[str, Any] | None = None,
    secagg: Mapping[str, Any] | None = None,
    stopped_early: str | None = None,
    exhausted_clients: int | list[str] | list[int] | None = None,
    group_size: int | None = None,
) -> dict[str, Any]:
    """Verify the ledger, then derive the privacy report from its entries and the arguments.

    Everything about ε comes from the ledger; the keyword inputs below are recorded beside it
    (checked and normalised; a bad one raises :class:`AccountingError` naming the key) and
    re-checked by :func:`verify_report` only for consistency with the report:

    - ``utility``: the run's accuracies, e.g. ``{"seen_users": 0.71, "unseen_users": 0.66,
      "controversial": 0.58}`` (nested mappings are flattened to dotted metric names; values
      in [0, 1] are compared with chance and the baseline, others — None for a metric the run
      could not compute, counts — are only recorded);
    - ``scored_pairs``: pairs scored per metric (same keys), for a 95 % Wilson interval;
    - ``chance``: the chance level of the metrics (0.5 for pairwise accuracy);
    - ``baseline``: ``{"model": "fedbtl", "accuracy": {...same keys...}, "source": "..."}`` — a
      non-private run on the same data, and where its numbers come from;
    - ``secagg``: ``{"rounds": [{"round", "participants", "threshold", "survivors",
      "dropouts", "clipped_coordinates", "aborted"?}, ...], "threshold_fraction"?,
      "ring_bits"?, "clip_range"?, "graph_degree"?, "server_saw"?}``;
    - ``stopped_early``: why training stopped before the planned rounds, or None;
    - ``exhausted_clients``: the clients the run stopped sampling (ids or a count);
    - ``group_size``: the most train pairs one user holds, for a per-user group-privacy bound
      of a pair-level run (``per_user_bound``; labelled a bound).

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
        chance=chance,
        scored_pairs=scored_pairs,
        baseline=baseline,
        secagg=secagg,
        stopped_early=stopped_early,
        exhausted_clients=exhausted_clients,
        group_size=group_size,
    )
    validate_report(report)
    return report


def report_inputs(report: Mapping[str, Any]) -> dict[str, Any]:
    """The optional keyword inputs of :func:`build_report` recorded in ``report`` (v1 or v2),
    so that the same report can be recomputed from the ledger."""
    out: dict[str, Any] = {"utility": report.get("utility")}
    check = report.get("utility_check")
    if check:
        out["chance"] = check["chance"]
        counts = {r["metric"]: r["scored_pairs"] for r in check["rows"] if r["scored_pairs"]}
        out["scored_pairs"] = counts or None
        out["baseline"] = check["baseline"]
    sa = report.get("secure_aggregation")
    if sa:
        out["secagg"] = {
            "rounds": sa["rounds"],
            "server_saw": sa["server_saw"],
            **{
                k: sa[k]
                for k in ("threshold_fraction", "ring_bits", "clip_range", "graph_degree")
                if sa[k] is not None
            },
        }
    outcome = report.get("run_outcome")
    if outcome:
        out["stopped_early"] = outcome["stopped_early"]
        out["exhausted_clients"] = outcome["exhausted_clients"]
    bound = report.get("per_user_bound")
    if bound and bound["group_size"] > 1:
        out["group_size"] = bound["group_size"]
    return out


def report_inputs_from_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Report inputs from a run's ``metrics.json`` (what ``securefvpa report RUN_DIR`` uses
    when the run left no report): ``accuracy`` -> utility (chance 0.5: pairwise accuracy),
    ``pairs`` -> scored_pairs, and ``baseline``, ``secagg`` (when a mapping),
    ``stopped_early``, ``exhausted_clients`` as they are."""
    out: dict[str, Any] = {}
    acc = metrics.get("accuracy")
    if isinstance(acc, Mapping) and acc:
        out["utility"] = dict(acc)
        out["chance"] = 0.5
        pairs = metrics.get("pairs")
        if isinstance(pairs, Mapping):
            out["scored_pairs"] = {k: v for k, v in pairs.items() if k in acc and v}
        if isinstance(metrics.get("baseline"), Mapping):
            out["baseline"] = dict(metrics["baseline"])
    if isinstance(metrics.get("secagg"), Mapping):
        out["secagg"] = dict(metrics["secagg"])
    if metrics.get("stopped_early"):
        out["stopped_early"] = metrics["stopped_early"]
    if metrics.get("exhausted_clients") is not None:
        out["exhausted_clients"] = metrics["exhausted_clients"]
    if metrics.get("privacy_group_size"):
        out["group_size"] = int(metrics["privacy_group_size"])
    return out


# -- writing: never replace a report with a shorter or different history ------------------------


@dataclass(frozen=True)
class ReportFiles:
    """What :func:`write_report` wrote. Unpacks as ``json_path, html_path``.

    ``conflict`` is None when ``privacy_report.json`` / ``report.html`` were written (new, or
    the same or a longer history of the same ledger); otherwise the existing report was kept
    and the new one written under the next free number: ``"shorter"``, ``"different"``
    (another ledger, or the anchored entries changed), ``"unreadable"`` (the existing report
    cannot be read) or ``"unverifiable"`` (the history grew but no ledger was given to prove
    it). ``note`` says why, naming the kept anchor.
    """

    json: Path
    html: Path
    conflict: str | None = None
    note: str | None = None

    def __iter__(self) -> Iterator[Path]:
        return iter((self.json, self.html))


def _existing_anchor(path: Path) -> Anchor | str:
    """The anchor of the report at ``path``, or why it cannot be read."""
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
        led = old["ledger"]
        return Anchor(
            head_hash=led["head_hash"],
            entry_count=led["entry_count"],
            ledger_id=led["ledger_id"],
            source=path.name,
        )
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, LedgerError) as err:
        return f"{type(err).__name__}: {err}"


def _conflict(
    report: dict[str, Any], old: Anchor | str, ledger_path: Path | None
) -> tuple[str, str] | None:
    """(kind, why) when ``report`` must not replace the report anchored by ``old``."""
    if isinstance(old, str):
        return "unreadable", f"the existing report cannot be read ({old})"
    new = report["ledger"]
    n_old, n_new = old.entry_count or 0, new["entry_count"]
    if new["ledger_id"] != old.ledger_id:
        return "different", (
            f"different history: ledger {new['ledger_id']}, the existing report is of ledger "
            f"{old.ledger_id}"
        )
    if n_new < n_old:
        return "shorter", (
            f"shorter history: the ledger has {n_new} entries, the existing report covered "
            f"{n_old} (entries were removed, or an older copy of the ledger was put back)"
        )
    if n_new == n_old:
        if new["head_hash"] == old.head_hash:
            return None
        return "different", (
            f"different history: same {n_new} entries but head hash {new['head_hash']}, the "
            f"existing report recorded {old.head_hash}"
        )
    if ledger_path is None or not ledger_path.is_file():
        return "unverifiable", (
            "the ledger grew but was not given, so it cannot be checked that the new history "
            "extends the existing report's"
        )
    ledger_id, entries = read_entries(ledger_path)
    if (
        ledger_id != new["ledger_id"]
        or len(entries) < n_new
        or (entries[n_new - 1].entry_hash != new["head_hash"])
    ):
        return "unverifiable", f"the ledger {str(ledger_path)!r} is not the one this report is of"
    why = check_anchor(ledger_id, entries, old)
    if why is not None:
        return "different", f"different history: {why}"
    return None


def _numbered(out: Path) -> tuple[Path, Path]:
    stem, suffix = REPORT_JSON.rsplit(".", 1)
    hstem, hsuffix = REPORT_HTML.rsplit(".", 1)
    n = 1
    while (out / f"{stem}.{n}.{suffix}").exists() or (out / f"{hstem}.{n}.{hsuffix}").exists():
        n += 1
    return out / f"{stem}.{n}.{suffix}", out / f"{hstem}.{n}.{hsuffix}"


def write_report(
    report: dict[str, Any],
    out_dir: str | os.PathLike[str],
    *,
    ledger_path: str | os.PathLike[str] | None = None,
) -> ReportFiles:
    """Validate ``report`` and write ``privacy_report.json`` and ``report.html`` to ``out_dir``.

    An existing ``privacy_report.json`` is the run's anchor and is replaced only by a report of
    the same history or of one that extends it (checked against ``ledger_path``, default
    ``out_dir/privacy_ledger.sqlite``). Otherwise — a shorter history (truncation, rollback), a
    different one (another or a rebuilt ledger), an unreadable existing report — both files
    are kept and the new report goes to ``privacy_report.<n>.json`` / ``report.<n>.html``
    (the next free ``n``); the returned :class:`ReportFiles` says why, and it is logged.
    ``tests/privacy/test_ledger_anchor.py`` checks each case.
    """
    from securefvpa.privacy.report_html import render_html

    validate_report(report)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out / REPORT_JSON, out / REPORT_HTML
    conflict: tuple[str, str] | None = None
    if json_path.exists():
        led = Path(ledger_path) if ledger_path is not None else out / "privacy_ledger.sqlite"
        conflict = _conflict(report, _existing_anchor(json_path), led)
    note = None
    if conflict is not None:
        json_path, html_path = _numbered(out)
        note = (
            f"{REPORT_JSON} was kept (it anchors the history an auditor holds); the new report "
            f"is {json_path.name} and {html_path.name}: {conflict[1]}."
        )
        log.warning("%s", note)
    atomic_write_text(
        json_path, json.dumps(report, indent=2, sort_keys=True, allow_nan=False) + "\n"
    )
    atomic_write_text(html_path, render_html(report))
    return ReportFiles(json_path, html_path, None if conflict is None else conflict[0], note)


# -- verification -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReportVerification:
    """Result of :func:`verify_report`: ``ok`` iff no mismatch; notes are informational."""

    ok: bool
    mismatches: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _diff(a: Any, b: Any, path: str, out: list[str], *, subset: bool = False) -> None:
    """Differences of ``a`` (the report) from ``b`` (recomputed); with ``subset``, keys only in
    ``b`` are ignored (a version-1 report is compared on its own fields)."""
    if len(out) >= 20:
        return
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a and subset:
                continue
            if k not in a or k not in b:
                out.append(f"{path}/{k}: present in only one report")
            else:
                _diff(a[k], b[k], f"{path}/{k}", out, subset=subset)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out.append(f"{path}: {len(a)} items vs {len(b)} recomputed")
        else:
            for i, (x, y) in enumerate(zip(a, b)):
                _diff(x, y, f"{path}/{i}", out, subset=subset)
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
    the report's are noted; every other field must agree (floats to 1e-9 relative). A
    schema-version-1 report is compared on its version-1 fields (noted); other versions are
    refused with the versions this code reads. A ledger that is not an intact ledger file is a
    mismatch; a missing ledger raises :class:`LedgerError`.
    """
    try:
        report = json.loads(Path(report_path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        return ReportVerification(False, [f"cannot read report {str(report_path)!r}: {err}"])
    try:
        validate_report(report)
    except PrivacyError as err:
        return ReportVerification(False, [str(err)])
    from securefvpa.privacy.ledger import LedgerCorruptError

    try:
        ledger_id, entries = read_entries(ledger_path)
    except LedgerCorruptError as err:
        return ReportVerification(False, [f"ledger: {err}"])
    n = report["ledger"]["entry_count"]
    notes: list[str] = []
    if report["schema_version"] == 1:
        notes.append(
            "schema version 1 report (before headline, utility check and secure-aggregation "
            "sections): verified on its version-1 fields"
        )
    if len(entries) < n:
        return ReportVerification(
            False,
            [f"ledger has {len(entries)} entries; the report covered {n} (truncated)"],
            notes,
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
            # distributed reports name "ddg-rdp"; the DDG bound ignores the accountant argument
            accountant="pld"
            if acc["primary_accountant"] == "ddg-rdp"
            else acc["primary_accountant"],
            value_discretization_interval=acc["pld_value_discretization_interval"],
            **report_inputs(report),
        )
    except PrivacyError as err:
        return ReportVerification(False, [f"cannot recompute: {err}"], notes)
    for k, v in report["software"].items():
        if again["software"].get(k) != v:
            notes.append(f"software {k}: report {v!r}, here {again['software'].get(k)!r}")
    mismatches: list[str] = []
    skip = {"software", "schema_version"}
    _diff(
        {k: v for k, v in report.items() if k not in skip},
        {k: v for k, v in again.items() if k not in skip},
        "",
        mismatches,
        subset=report["schema_version"] == 1,
    )
    return ReportVerification(not mismatches, mismatches, notes)
