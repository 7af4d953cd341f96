"""Self-contained HTML for a privacy report: tables and hand-drawn inline SVG, no scripts.

Everything shown is recomputable from ``privacy_report.json``; every string from the report is
HTML-escaped.
"""

from __future__ import annotations

import html
import math
from typing import Any

import numpy as np

_W, _H = 640, 300
_M = {"left": 64, "right": 16, "top": 16, "bottom": 44}
_STYLE = """
body{font:15px/1.5 system-ui,-apple-system,Segoe UI,sans-serif;max-width:980px;margin:2em auto;
padding:0 1em;color:#1d2327}
h1{font-size:1.6em;margin-bottom:.2em}
h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0}td,th{padding:.25em .8em;border-bottom:1px solid #eee;
text-align:left}th{background:#f6f7f7}td.num{text-align:right;font-variant-numeric:tabular-nums}
code{font-size:.9em;background:#f6f7f7;padding:0 .25em;word-break:break-all}
.muted{color:#646970}.bad{color:#b32d2e;font-weight:600}.ok{color:#00733a}
svg text{font:12px system-ui,sans-serif;fill:#1d2327}
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
        body.append(
            f'<text x="{_M["left"] + 10}" y="{_M["top"] + 14 + 15 * i}" '
            f'fill="{color}">{name} over clients</text>'
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


def _table(rows: list[tuple[Any, ...]], header: tuple[str, ...]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="num">{_e(_fmt(v))}</td>'
            if isinstance(v, int | float) and not isinstance(v, bool)
            else f"<td>{_e(v)}</td>"
            for v in row
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def render_html(report: dict[str, Any]) -> str:
    acc, led, summ = report["accounting"], report["ledger"], report["summary"]
    over = summ["over_budget"]
    status = (
        f'<span class="bad">{over} client(s) over budget</span>'
        if over
        else '<span class="ok">every client within budget</span>'
    )
    overview = _table(
        [
            ("run id", report["run_id"]),
            ("config hash", report["config_hash"]),
            ("primary accountant", acc["primary_accountant"]),
            ("neighbouring relation", acc["neighbouring_relation"] or "-"),
            ("privacy unit", acc["privacy_unit"]),
            ("delta", acc["delta"]),
            ("budget epsilon", acc["budget_epsilon"]),
            ("PLD discretization", acc["pld_value_discretization_interval"]),
            ("ledger entries", led["entry_count"]),
            ("ledger head hash", led["head_hash"]),
        ],
        ("", ""),
    )
    summary = _table(
        [(k.replace("_", " "), "-" if v is None else v) for k, v in summ.items()], ("", "")
    )
    utility = report.get("utility")
    utility_html = (
        _table([(k, v) for k, v in _flatten(utility)], ("metric", "value"))
        if utility
        else '<p class="muted">No utility metrics were supplied.</p>'
    )
    client_rows = [
        (
            c["client_id"],
            len(c["rounds_joined"]),
            len(c["declined_rounds"]),
            c["epsilon_pld"],
            c["epsilon_rdp"],
            ", ".join(f"{s:g}" for s in c["noise_multipliers"]),
            ", ".join(f"{q:g}" for q in c["sample_rates"]),
            c["total_steps"],
            c["status"],
        )
        for c in report["clients"]
    ]
    clients = _table(
        client_rows, ("client", "rounds", "declined", "ε PLD", "ε RDP", "σ", "q", "steps", "status")
    )
    software = _table(
        [(k, v or "not installed") for k, v in report["software"].items()], ("package", "version")
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Privacy report: {_e(report["run_id"])}</title><style>{_STYLE}</style></head>
<body>
<h1>Privacy report</h1>
<p>Run <code>{_e(report["run_id"])}</code>: {status}. Derived from the hash-chained privacy
ledger alone; recheck with <code>securefvpa.privacy.report.verify_report</code>.</p>
{overview}
<h2>Summary (ε of the primary accountant)</h2>
{summary}
<h2>ε over rounds</h2>
{_plot_over_rounds(report)}
<h2>Final ε per client</h2>
{_plot_histogram(report)}
<h2>Utility</h2>
{utility_html}
<h2>Clients</h2>
<details><summary>{len(client_rows)} clients</summary>{clients}</details>
<h2>Accounting method</h2>
<p>PLD: {_e(acc["pld_estimate"])}.<br>RDP: {_e(acc["rdp_method"])}.</p>
<h2>Software</h2>
{software}
</body></html>
"""
