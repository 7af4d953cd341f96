"""Self-contained HTML for a privacy report: tables and hand-drawn inline SVG, no scripts.

Everything shown is recomputable from ``privacy_report.json``; every string from the report is
HTML-escaped.
"""

from __future__ import annotations

import html
import math
from typing import Any

import numpy as np

_W, _H = 520, 260
_M = {"left": 64, "right": 16, "top": 16, "bottom": 44}
_STYLE = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:1.2em auto;
padding:0 1em;color:#1d2327}
h1{font-size:1.45em;margin:.2em 0 .4em}h1 .muted{font-size:.7em;font-weight:400}
h2{font-size:1.08em;margin:1.1em 0 .3em;border-bottom:1px solid #ddd}h2.sr{display:none}
table{border-collapse:collapse;margin:.3em 0}td,th{padding:.15em .7em;border-bottom:1px solid #eee;
text-align:left;vertical-align:top}th{background:#f6f7f7;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums}
table.anchor td{word-break:break-all;font-family:ui-monospace,monospace;font-size:.92em}
code,pre{font-size:.88em;background:#f6f7f7;padding:0 .25em}pre{padding:.5em;overflow-x:auto}
.cols{display:flex;gap:1.5em;flex-wrap:wrap;align-items:flex-start}
.muted{color:#646970}.bad{color:#b32d2e;font-weight:600}.ok{color:#00733a}.warn{color:#8a4b00}
.headline{font-size:1.12em;padding:.55em .8em;border-left:6px solid;background:#f6f7f7;margin:.2em 0}
.headline.ok{border-color:#00733a}.headline.warn{border-color:#dba617}.headline.bad{border-color:#b32d2e}
.badge{display:inline-block;font-size:.78em;text-transform:uppercase;letter-spacing:.04em;
padding:.05em .5em;border-radius:3px;background:#1d2327;color:#fff;margin-right:.4em}
.note{background:#fcf9e8;border-left:4px solid #dba617;padding:.35em .7em}
ul.notes{margin:.3em 0 0;padding-left:1.2em}
svg{max-width:100%;height:auto}svg text{font:12px system-ui,sans-serif;fill:#1d2327}
"""


def _e(x: object) -> str:
    return html.escape(str(x), quote=True)


def _fmt(x: object) -> str:
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=raw)
    start = math.ceil(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step + 1e-9) + 1)]


class _Axes:
    def __init__(self, x: tuple[float, float], y: tuple[float, float]) -> None:
        self.x0, self.x1 = x if x[1] > x[0] else (x[0], x[0] + 1.0)
        self.y0, self.y1 = y if y[1] > y[0] else (y[0], y[0] + 1.0)

    def px(self, x: float) -> float:
        span = _W - _M["left"] - _M["right"]
        return _M["left"] + (x - self.x0) / (self.x1 - self.x0) * span

    def py(self, y: float) -> float:
        span = _H - _M["top"] - _M["bottom"]
        return _H - _M["bottom"] - (y - self.y0) / (self.y1 - self.y0) * span

    def frame(self, xlabel: str, ylabel: str) -> list[str]:
        out = [
            f'<line x1="{_M["left"]}" y1="{_H - _M["bottom"]}" x2="{_W - _M["right"]}" '
            f'y2="{_H - _M["bottom"]}" stroke="#1d2327"/>',
            f'<line x1="{_M["left"]}" y1="{_M["top"]}" x2="{_M["left"]}" '
            f'y2="{_H - _M["bottom"]}" stroke="#1d2327"/>',
        ]
        for t in _ticks(self.x0, self.x1):
            x = self.px(t)
            out.append(
                f'<line x1="{x:.1f}" y1="{_H - _M["bottom"]}" x2="{x:.1f}" '
                f'y2="{_H - _M["bottom"] + 4}" stroke="#1d2327"/>'
            )
            out.append(
                f'<text x="{x:.1f}" y="{_H - _M["bottom"] + 17}" text-anchor="middle">{t:g}</text>'
            )
        for t in _ticks(self.y0, self.y1):
            y = self.py(t)
            out.append(
                f'<line x1="{_M["left"]}" y1="{y:.1f}" x2="{_W - _M["right"]}" '
                f'y2="{y:.1f}" stroke="#eee"/>'
            )
            out.append(f'<text x="{_M["left"] - 6}" y="{y + 4:.1f}" text-anchor="end">{t:g}</text>')
        out.append(
            f'<text x="{(_M["left"] + _W - _M["right"]) / 2}" y="{_H - 6}" '
            f'text-anchor="middle">{_e(xlabel)}</text>'
        )
        out.append(
            f'<text transform="translate(14,{(_M["top"] + _H - _M["bottom"]) / 2}) '
            f'rotate(-90)" text-anchor="middle">{_e(ylabel)}</text>'
        )
        return out


def _svg(body: list[str], title: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" '
        f'viewBox="0 0 {_W} {_H}" role="img" aria-label="{_e(title)}">'
        f"<title>{_e(title)}</title>{''.join(body)}</svg>"
    )


def epsilon_by_round(report: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(rounds, eps[client, round]): each client's epsilon after every round, 0 before its first."""
    max_round = report["summary"]["max_round"]
    clients = report["clients"]
    if max_round is None or not clients:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 0))
    eps = np.zeros((len(clients), max_round + 1))
    for i, c in enumerate(clients):
        for r, v in zip(c["rounds_joined"], c["epsilon_after_round"]):
            eps[i, r] = max(eps[i, r], v)
    return np.arange(max_round + 1), np.maximum.accumulate(eps, axis=1)


def _plot_over_rounds(report: dict[str, Any]) -> str:
    rounds, eps = epsilon_by_round(report)
    if eps.size == 0:
        return '<p class="muted">No DP-SGD rounds in the ledger.</p>'
    budget = report["accounting"]["budget_epsilon"]
    curves = {
        "max": (eps.max(axis=0), "#b32d2e"),
        "median": (np.median(eps, axis=0), "#2271b1"),
        "min": (eps.min(axis=0), "#00733a"),
    }
    ax = _Axes((0.0, float(rounds[-1])), (0.0, max(float(eps.max()), budget) * 1.05))
    body = ax.frame("round", "epsilon (after round)")
    yb = ax.py(budget)
    body.append(
        f'<line x1="{_M["left"]}" y1="{yb:.1f}" x2="{_W - _M["right"]}" y2="{yb:.1f}" '
        'stroke="#646970" stroke-dasharray="6 4"/>'
    )
    body.append(
        f'<text x="{_W - _M["right"] - 4}" y="{yb - 5:.1f}" text-anchor="end">'
        f"budget {budget:g}</text>"
    )
    for i, (name, (ys, color)) in enumerate(curves.items()):
        pts = " ".join(f"{ax.px(float(r)):.1f},{ax.py(float(y)):.1f}" for r, y in zip(rounds, ys))
        body.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{pts}"/>')
        # legend in the lower right, where cumulative epsilon curves never are
        body.append(
            f'<text x="{_W - _M["right"] - 8}" y="{_H - _M["bottom"] - 50 + 15 * i}" '
            f'text-anchor="end" fill="{color}">{name} over clients</text>'
        )
    return _svg(body, "epsilon over rounds: min, median and max over clients")


def _plot_histogram(report: dict[str, Any]) -> str:
    eps = np.array([c["epsilon"] for c in report["clients"]], dtype=float)
    if eps.size == 0:
        return '<p class="muted">No clients.</p>'
    hi = float(max(eps.max(), report["accounting"]["budget_epsilon"]))
    counts, edges = np.histogram(eps, bins=20, range=(0.0, hi if hi > 0 else 1.0))
    ax = _Axes((float(edges[0]), float(edges[-1])), (0.0, float(counts.max()) * 1.1))
    body = ax.frame("final epsilon", "clients")
    for c, lo, up in zip(counts, edges[:-1], edges[1:]):
        if c:
            x0, x1, y = ax.px(float(lo)), ax.px(float(up)), ax.py(float(c))
            body.append(
                f'<rect x="{x0 + 1:.1f}" y="{y:.1f}" width="{max(x1 - x0 - 2, 1):.1f}" '
                f'height="{ax.py(0.0) - y:.1f}" fill="#2271b1"/>'
            )
    xb = ax.px(report["accounting"]["budget_epsilon"])
    body.append(
        f'<line x1="{xb:.1f}" y1="{_M["top"]}" x2="{xb:.1f}" y2="{_H - _M["bottom"]}" '
        'stroke="#646970" stroke-dasharray="6 4"/>'
    )
    return _svg(body, "histogram of final per-client epsilon")


def _flatten(d: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.extend(_flatten(v, key + "."))
        else:
            out.append((key, v))
    return out


def _cell(v: Any) -> str:
    if v is None:
        return '<td class="muted">–</td>'
    if isinstance(v, int | float) and not isinstance(v, bool):
        return f'<td class="num">{_e(_fmt(v))}</td>'
    return f"<td>{_e(v)}</td>"


def _table(rows: list[tuple[Any, ...]], header: tuple[str, ...], cls: str = "") -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header) if any(header) else ""
    body = "".join(f"<tr>{''.join(_cell(v) for v in row)}</tr>" for row in rows)
    thead = f"<thead><tr>{head}</tr></thead>" if head else ""
    return f'<table class="{cls}">{thead}<tbody>{body}</tbody></table>'


def _section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{_e(title)}</h2>{body}</section>'


def _p3(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def _signed(x: float | None) -> str:
    return "–" if x is None else f"{x:+.3f}"


def _headline(report: dict[str, Any]) -> str:
    head = report.get("headline")
    summ = report["summary"]
    if head is None:  # schema version 1
        over = summ["over_budget"]
        status = "over_budget" if over else ("exhausted" if summ["exhausted"] else "within_budget")
        text = (
            f"{over} client(s) over budget"
            if over
            else f"{summ['within_budget']} of {summ['clients']} clients within budget, "
            f"{summ['exhausted']} exhausted"
        )
    else:
        status, text = head["status"], head["text"]
    cls = {"over_budget": "bad", "stopped_early": "warn", "exhausted": "warn"}.get(status, "ok")
    label = status.replace("_", " ")
    return (
        f'<p class="headline {cls}"><span class="badge">{_e(label)}</span> {_e(text)}</p>'
    )


def _utility(report: dict[str, Any]) -> str:
    check = report.get("utility_check")
    utility = report.get("utility")
    if not check and not utility:
        return '<p class="muted">No utility metrics were supplied.</p>'
    if not check:
        return _table([(k, v) for k, v in _flatten(utility or {})], ("metric", "value"))
    base = check["baseline"]
    bname = base["model"] if base else "baseline"
    rows = []
    for r in check["rows"]:
        ci = r["ci95"]
        if r["above_chance"] is None:
            verdict = "–"
        elif r["above_chance"]:
            verdict = "above chance"
        else:
            verdict = "not above chance"
        rows.append(
            "<tr>"
            f"<td>{_e(r['metric'].replace('_', ' '))}</td>"
            f'<td class="num"><b>{_p3(r["accuracy"])}</b></td>'
            f'<td class="num">{"–" if ci is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]"}</td>'
            f'<td class="num">{_e("–" if r["scored_pairs"] is None else r["scored_pairs"])}</td>'
            f'<td class="num">{_p3(r["chance"])}</td>'
            f'<td class="num">{_signed(r["minus_chance"])}</td>'
            f'<td class="{"ok" if r["above_chance"] else "bad" if r["above_chance"] is False else ""}">'
            f"{_e(verdict)}</td>"
            f'<td class="num">{_p3(r["baseline"])}</td>'
            f'<td class="num">{_signed(r["minus_baseline"])}</td>'
            "</tr>"
        )
    header = (
        "<tr><th>metric</th><th>this run</th><th>95 % CI</th><th>pairs</th><th>chance</th>"
        f"<th>Δ chance</th><th></th><th>{_e(bname)} (non-private)</th><th>Δ {_e(bname)}</th></tr>"
    )
    table = f'<table class="wide"><thead>{header}</thead><tbody>{"".join(rows)}</tbody></table>'
    src = (
        f'<p class="muted">Baseline: {_e(base["model"])}, {_e(base["source"])}.</p>'
        if base
        else '<p class="muted">No non-private baseline was supplied.</p>'
    )
    chance = (
        f"chance {_p3(check['chance'])}" if check["chance"] is not None
        else "chance 0.5 for pairwise accuracy; not supplied to this report"
    )
    return (
        f"<p><b>{_e(check['verdict'])}.</b> Accuracy is pairwise ({_e(chance)}); the interval "
        "treats scored pairs as independent, so it is optimistic when one user's pairs err "
        f"together.</p>{table}{src}"
    )


def _secure_aggregation(report: dict[str, Any]) -> str:
    if "secure_aggregation" not in report:
        return '<p class="muted">Not recorded (schema version 1 report).</p>'
    sa = report["secure_aggregation"]
    if sa is None:
        return (
            '<p class="muted">Secure aggregation was not used (or not reported): the server '
            "received each client's noised update. The DP guarantee above does not rely on "
            "it.</p>"
        )
    s = sa["summary"]
    rng = (
        s["participants_min"]
        if s["participants_min"] == s["participants_max"]
        else f"{s['participants_min']}–{s['participants_max']}"
    )
    facts = _table(
        [
            ("protocol", "pairwise masks (Bonawitz et al. 2017), SecAgg+ graph"
             + ("" if not sa["graph_degree"] else f" of degree {sa['graph_degree']}")),
            ("threshold t (min over rounds)", s["threshold_min"]),
            ("threshold fraction", sa["threshold_fraction"]),
            ("rounds aggregated", s["rounds"]),
            ("participants per round", rng),
            ("survivors (min over rounds)", s["survivors_min"]),
            ("dropouts (total)", s["dropouts_total"]),
            ("clipped coordinates (total)", s["clipped_coordinates_total"]),
            ("ring", None if sa["ring_bits"] is None else f"Z_2^{sa['ring_bits']}"),
            ("fixed-point clip range", sa["clip_range"]),
        ],
        ("", ""),
    )
    anomalies = (
        "".join(f'<p class="bad">{_e(a)}</p>' for a in sa["anomalies"])
        if sa["anomalies"]
        else '<p class="ok">No anomaly: every unmasked round had at least t survivors.</p>'
    )
    rounds = _table(
        [
            (r["round"], r["participants"], r["threshold"], r["survivors"], r["dropouts"],
             r["clipped_coordinates"], "aborted" if r["aborted"] else "summed")
            for r in sa["rounds"]
        ],
        ("round", "participants", "threshold", "survivors", "dropouts", "clipped", ""),
    )
    return (
        f"<p><b>What the server saw:</b> {_e(sa['server_saw'])}.</p>{facts}{anomalies}"
        f"<details><summary>{len(sa['rounds'])} rounds</summary>{rounds}</details>"
    )


def _accounting(report: dict[str, Any]) -> str:
    acc, summ = report["accounting"], report["summary"]
    clients = report["clients"]
    sigmas = sorted({s for c in clients for s in c["noise_multipliers"]})
    qs = sorted({q for c in clients for q in c["sample_rates"]})
    steps = sorted({k for c in clients for k in c["steps_per_round"]})
    clips = sorted({k for c in clients for k in c["clips"]})

    def join(xs: list[Any]) -> str:
        return ", ".join(f"{x:g}" for x in xs) or "–"

    bound = report.get("per_user_bound")
    if bound is None:
        per_user = "not derived (no group size given)"
    elif bound["group_size"] == 1:
        per_user = "ε above (the unit is the user)"
    elif bound["vacuous"]:
        per_user = f"vacuous bound (group of {bound['group_size']} pairs)"
    else:
        per_user = f"≤ {bound['epsilon_max']:.3g} (a BOUND: group of {bound['group_size']} pairs)"
    left = _table(
        [
            ("privacy unit", acc["privacy_unit"]),
            ("mechanism", acc.get("mechanism", "–")),
            ("ε per user", per_user),
            ("neighbouring relation", acc["neighbouring_relation"] or "–"),
            ("budget ε per client", acc["budget_epsilon"]),
            ("δ", acc["delta"]),
            ("primary accountant", acc["primary_accountant"].upper()),
            ("PLD discretization", acc["pld_value_discretization_interval"]),
            ("noise multiplier σ", join(sigmas)),
            ("sampling rate q", join(qs)),
            ("steps per round", join(steps)),
            ("clip norm C", join(clips)),
        ],
        ("", ""),
    )
    right = _table(
        [
            ("clients", summ["clients"]),
            ("within budget", summ["within_budget"]),
            ("exhausted (declined further rounds)", summ["exhausted"]),
            ("over budget", summ["over_budget"]),
            ("ε max (primary)", summ["epsilon_max"]),
            ("ε median", summ["epsilon_median"]),
            ("ε min", summ["epsilon_min"]),
            ("ε max, RDP cross-check", summ["epsilon_rdp_max"]),
            ("last round", summ["max_round"]),
        ],
        ("", ""),
    )
    rdp, budget = summ["epsilon_rdp_max"], acc["budget_epsilon"]
    if rdp is not None and acc["primary_accountant"] == "pld" and rdp > budget:
        cross = (
            f'<p class="note">The RDP value ({rdp:.3g}) exceeds the budget ({budget:g}): it is '
            "the <b>looser cross-check</b>, an independent upper bound by another method "
            "(Rényi DP converted to (ε, δ)), not the accounted ε. The budget is enforced with "
            f"the PLD accountant (ε max {_fmt(summ['epsilon_max'])}), which is tighter; PLD ≤ "
            "RDP on every tested setting.</p>"
        )
    else:
        cross = (
            '<p class="muted">RDP is an independent, looser upper bound computed as a '
            "cross-check of the primary accountant.</p>"
        )
    method = (
        f'<p class="muted">PLD: {_e(acc["pld_estimate"])}. RDP: {_e(acc["rdp_method"])}.</p>'
    )
    return f'<div class="cols">{left}{right}</div>{cross}{method}'


def _anchor(report: dict[str, Any]) -> str:
    led = report["ledger"]
    runs = ", ".join(
        f"{r['kind']} {r['run_id']} ({r['timestamp'][:19]})" for r in led["runs"][-4:]
    )
    return _table(
        [
            ("ledger id", led["ledger_id"]),
            ("entries", led["entry_count"]),
            ("head hash", led["head_hash"]),
            ("DP-SGD / declined entries", f"{led['dp_sgd_entries']} / {led['declined_entries']}"),
            ("run entries (last 4)", runs or "–"),
            ("config hash", report["config_hash"]),
        ],
        ("", ""),
        "anchor",
    ) + (
        '<p class="muted">Publish the head hash and entry count outside the run directory '
        "(a ticket, a transparency log, the auditor's mail): only such an anchor exposes a "
        "ledger rebuilt together with this report.</p>"
    )


def render_html(report: dict[str, Any]) -> str:
    """A self-contained, script-free page with every section a one-page audit needs.

    Sections (``<section id=...>``): headline, anchor, accounting, utility,
    secure-aggregation, rounds (ε over rounds and its histogram), clients, verify, limits,
    software. Every number is read from ``report``; every string is HTML-escaped.
    """
    led = report["ledger"]
    client_rows = [
        (
            c["client_id"],
            len(c["rounds_joined"]),
            len(c["declined_rounds"]),
            len(c.get("retried_rounds", [])),
            c["epsilon_pld"],
            c["epsilon_rdp"],
            ", ".join(f"{s:g}" for s in c["noise_multipliers"]),
            ", ".join(f"{q:g}" for q in c["sample_rates"]),
            c["total_steps"],
            c["status"].replace("_", " "),
        )
        for c in report["clients"]
    ]
    clients = _table(
        client_rows,
        ("client", "rounds", "declined", "re-run", "ε PLD", "ε RDP", "σ", "q", "steps", "status"),
    )
    # the RDP note is shown where the numbers are (accounting); the others under the headline
    notes = "".join(
        f"<li>{_e(n)}</li>" for n in report.get("notes", []) if not n.startswith("The RDP value")
    )
    software = _table(
        [(k, v or "not installed") for k, v in report["software"].items()], ("package", "version")
    )
    verify = (
        "<pre>securefvpa ledger verify RUN_DIR            # chain + this report's anchor\n"
        f"securefvpa ledger verify RUN_DIR --head {_e(led['head_hash'])} "
        f"--count {led['entry_count']}\n"
        "securefvpa report verify RUN_DIR            # recompute every number from the ledger"
        "</pre>"
    )
    limits = (
        "<ul><li>ε bounds what each client's released updates reveal about any one of its "
        "preference pairs (replace-one); it says nothing about a user's whole data set.</li>"
        "<li>Evaluation replies (per-client counts of correct pairs) are not noised.</li>"
        "<li>The ledger records what the training code reports; that the recorded σ, q, "
        "steps and clipping ran is checked by the DP-SGD tests and the canary audit, not by "
        "this page.</li>"
        "<li>The chain is keyless: without an anchor kept outside the run directory, a "
        "rebuilt ledger with a regenerated report cannot be told apart.</li></ul>"
    )
    version = report["schema_version"]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Privacy report: {_e(report["run_id"])}</title><style>{_STYLE}</style></head>
<body>
<h1>Privacy report <span class="muted">· run <code>{_e(report["run_id"])}</code> ·
schema v{_e(version)}</span></h1>
<section id="headline"><h2 class="sr">Headline</h2>{_headline(report)}
{f'<ul class="notes">{notes}</ul>' if notes else ''}</section>
{_section("anchor", "Ledger anchor", _anchor(report))}
{_section("accounting", "Accounting (per client, ε of the primary accountant)", _accounting(report))}
{_section("utility", "Utility beside chance and the non-private baseline", _utility(report))}
{_section("secure-aggregation", "Secure aggregation", _secure_aggregation(report))}
{_section("rounds", "ε over rounds and per client", '<div class="cols">' + _plot_over_rounds(report) + _plot_histogram(report) + "</div>")}
{_section("clients", "Clients", f"<details><summary>{len(client_rows)} clients</summary>{clients}</details>")}
{_section("verify", "How to verify", verify)}
{_section("limits", "What this report does not show", limits)}
{_section("software", "Software", f"<details><summary>versions</summary>{software}</details>")}
</body></html>
"""
