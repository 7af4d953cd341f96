"""The privacy-utility table of a finished ``securefvpa sweep`` (issue #11's must-show table).

    python benchmarks/privacy_sweep.py SWEEP_DIR [--json benchmarks/results/NAME.json]

One line per model, unit and ε (ε = ∞ once per model): unseen- and seen-user accuracy with 95 %
Student t intervals over seeds, the FedBTL→oracle gap closed, the non-private gain kept, MI
(bits) and active components of the latent, ε spent and seconds per round. Everything comes from
the sweep's own ``summary.csv`` and ``results.csv`` (``securefvpa/sweep.py`` defines the
columns); the JSON keeps both, plus the rows of ``summary_by_group.csv`` at ε = 8 and ∞ when the
data set has groups (Polis conversations), so a reader can recompute any number here.

Examples: ``examples/population_sweep.toml`` (generated users) and
``examples/polis_private_sweep.toml`` (Polis).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path
from typing import Any

MODELS = ("btl", "vpl", "fedvpa-gp", "oracle")
NAMES = {"btl": "FedBTL", "vpl": "FedVPL", "fedvpa-gp": "FedVPA-GP", "oracle": "oracle"}


def _read(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _num(x: str | None) -> float | None:
    return None if x in (None, "", "None") else float(x)


def _ci(row: dict[str, str], key: str, digits: int = 3) -> str:
    mean, lo, hi = (_num(row.get(k)) for k in (key, f"{key}_ci_low", f"{key}_ci_high"))
    if mean is None:
        return "-"
    if lo is None or hi is None or not math.isfinite(lo):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _pct(row: dict[str, str], key: str) -> str:
    v = _num(row.get(key))
    return "-" if v is None else f"{100 * v:.0f}%"


def _eps_order(eps: str) -> float:
    return math.inf if eps == "inf" else float(eps)


def table(sweep_dir: Path) -> dict[str, Any]:
    summary = _read(sweep_dir / "summary.csv")
    if not summary:
        raise SystemExit(f"{sweep_dir}: no summary.csv (run `securefvpa sweep` to the end first)")
    axes = [k for k in summary[0] if "." in k]  # [sweep.axes] columns, e.g. model.beta
    rows = sorted(
        summary,
        key=lambda r: (r["dataset"], r.get("users", ""), *(r[a] for a in axes),
                       MODELS.index(r["model"]), r["unit"] or "", -_eps_order(r["epsilon"])),
    )
    print(f"{'data set':8s} {'model':10s} {'unit':5s} {'eps':>4s} {'seeds':>5s} "
          f"{'unseen [95% CI]':>24s} {'seen [95% CI]':>24s} {'gap':>5s} {'kept':>5s} "
          f"{'MI bits':>6s} {'act':>4s} {'eps spent':>9s} {'s/round':>7s}")
    for r in rows:
        mi = _num(r.get("mi_bits"))
        act = _num(r.get("active_components"))
        spent = _num(r.get("epsilon_spent"))
        spr = _num(r.get("seconds_per_round"))
        label = " ".join([r["dataset"], *(f"{a.split('.')[-1]}={r[a]}" for a in axes)])
        print(f"{label[:8] if not axes else label:8s} {NAMES[r['model']]:10s} {r['unit'] or '-':5s} "
              f"{r['epsilon']:>4s} {r['seeds']:>5s} {_ci(r, 'accuracy_unseen'):>24s} "
              f"{_ci(r, 'accuracy_seen'):>24s} {_pct(r, 'gap_closed'):>5s} "
              f"{_pct(r, 'gain_kept'):>5s} {'-' if mi is None else f'{mi:.2f}':>6s} "
              f"{'-' if act is None else f'{act:.1f}':>4s} "
              f"{'-' if spent is None else f'{spent:.2f}':>9s} "
              f"{'-' if spr is None else f'{spr:.2f}':>7s}")
    return {
        "sweep_dir": str(sweep_dir),
        "summary": summary,
        "rows": _read(sweep_dir / "results.csv"),
        # per group (Polis conversation) at epsilon 8 and without DP only: the file stays small
        "summary_by_group": [
            g for g in _read(sweep_dir / "summary_by_group.csv") if g["epsilon"] in ("8", "inf")
        ],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("sweep_dir", type=Path)
    ap.add_argument("--json", type=Path, default=None, help="write the table's data here")
    args = ap.parse_args()
    result = table(args.sweep_dir)
    if args.json:
        args.json.write_text(json.dumps(result, separators=(",", ":")) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
