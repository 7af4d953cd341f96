"""PLD cost: the estimate of ``securefvpa.privacy.pld_cost`` against what dp-accounting builds,
and how long ``securefvpa account`` takes on the inputs that used to exhaust memory.

Run ``python benchmarks/pld_cost.py [--quick]``; prints two tables and writes
``benchmarks/results/pld_cost.json``.

1. For settings small enough to build for real: the estimated one-step and composed PMF sizes
   next to the sizes dp-accounting's arrays have, the estimate's time, and the time to build
   the one-step PLD and compose it (one process, wall-clock ``perf_counter``). The per-point
   costs behind ``DEFAULT_MAX_SINGLE_STEP_POINTS`` / ``DEFAULT_MAX_POINTS`` come from here.
2. ``securefvpa account --json`` in a fresh process for the issue-12 inputs (sigma 1e-3; 1e8
   steps; sigma 0.01 over 10 steps) and an ordinary one: wall time, peak RSS, the interval used
   and the note. Before the cost guard these needed 38 GiB, 250 GiB and > 7 min / 2.5 GB.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dp_accounting.pld import privacy_loss_distribution as pld_lib  # noqa: E402

from securefvpa.privacy.pld_cost import estimate_pld_cost  # noqa: E402

SETTINGS = [  # sigma, q, steps, relation, interval
    (1.1, 0.01, 10_000, "add_remove_one", 1e-4),
    (1.1, 0.01, 10_000, "replace_one", 1e-4),
    (0.8, 0.2, 18, "replace_one", 1e-4),
    (1.0, 0.5, 200, "replace_one", 1e-4),
    (0.5, 0.5, 30, "replace_one", 1e-4),
    (2.0, 0.1, 1000, "add_remove_one", 1e-4),
]
QUICK = SETTINGS[:3]
ACCOUNT = [
    ("ordinary", ["--q", "0.01", "--sigma", "1.1", "--steps", "10000", "--delta", "1e-5"]),
    ("sigma 1e-3", ["--q", "0.01", "--sigma", "1e-3", "--steps", "1", "--delta", "1e-5"]),
    ("steps 1e8", ["--q", "0.01", "--sigma", "1.1", "--steps", "100000000", "--delta", "1e-5"]),
    ("sigma 0.01, 10 steps", ["--q", "0.5", "--sigma", "0.01", "--steps", "10", "--delta",
                              "1e-5"]),
]
CHILD = (
    "import resource, sys, time\n"
    "t = time.perf_counter()\n"
    "from securefvpa.cli import main\n"
    "rc = main(sys.argv[1:])\n"
    "print('BENCH', time.perf_counter() - t, "
    "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
    "sys.exit(rc)\n"
)


def sizes(sigma: float, q: float, steps: int, relation: str, d: float) -> dict:
    t0 = time.perf_counter()
    est = estimate_pld_cost(noise_multiplier=sigma, sample_rate=q, steps=steps,
                            relation=relation, value_discretization_interval=d)
    t_est = time.perf_counter() - t0
    rel = (pld_lib.NeighborRel.REPLACE_ONE if relation == "replace_one"
           else pld_lib.NeighborRel.ADD_OR_REMOVE_ONE)
    t0 = time.perf_counter()
    pld = pld_lib.from_gaussian_mechanism(standard_deviation=sigma, value_discretization_interval=d,
                                          sampling_prob=q, neighboring_relation=rel)
    t_single = time.perf_counter() - t0
    t0 = time.perf_counter()
    comp = pld.self_compose(steps)
    t_comp = time.perf_counter() - t0
    return {
        "sigma": sigma, "q": q, "steps": steps, "relation": relation, "interval": d,
        "single_est": est.single_step_points,
        "single_real": max(pld._pmf_remove.size, pld._pmf_add.size),
        "composed_est": est.composed_points,
        "composed_real": max(comp._pmf_remove.size, comp._pmf_add.size),
        "estimate_s": round(t_est, 4), "build_single_s": round(t_single, 3),
        "compose_s": round(t_comp, 3),
        "us_per_single_point": round(1e6 * t_single / max(1, est.single_step_points), 2),
    }


def account(name: str, args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, "account", *args, "--json"],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    bench = [ln for ln in proc.stderr.splitlines() if ln.startswith("BENCH")]
    wall, rss_kb = (float(x) for x in bench[-1].split()[1:]) if bench else (float("nan"), 0)
    out = json.loads(proc.stdout) if proc.returncode == 0 else {}
    return {
        "case": name, "rc": proc.returncode, "seconds": round(wall, 2),
        "peak_rss_mb": round(rss_kb / 1024), "interval": out.get("pld_value_discretization_interval"),
        "epsilon_pld": out.get("epsilon_pld"), "epsilon_rdp": out.get("epsilon_rdp"),
        "notes": out.get("notes"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="three settings only")
    args = ap.parse_args()
    rows = [sizes(*s) for s in (QUICK if args.quick else SETTINGS)]
    print(f"{'sigma':>6} {'q':>5} {'steps':>6} {'rel':>4} | {'single est':>10} {'real':>10} | "
          f"{'composed est':>12} {'real':>10} | {'est s':>6} {'build s':>7} {'compose s':>9} "
          f"{'us/pt':>6}")
    for r in rows:
        print(f"{r['sigma']:>6} {r['q']:>5} {r['steps']:>6} {r['relation'][:3]:>4} | "
              f"{r['single_est']:>10} {r['single_real']:>10} | {r['composed_est']:>12} "
              f"{r['composed_real']:>10} | {r['estimate_s']:>6} {r['build_single_s']:>7} "
              f"{r['compose_s']:>9} {r['us_per_single_point']:>6}")
    acc = [account(n, a) for n, a in ACCOUNT]
    print()
    print(f"{'securefvpa account':<22} {'rc':>3} {'s':>6} {'MB':>6} {'interval':>9} "
          f"{'eps PLD':>10} {'eps RDP':>10}")
    for a in acc:
        pld = "-" if a["epsilon_pld"] is None else f"{a['epsilon_pld']:.4g}"
        rdp = "-" if a["epsilon_rdp"] is None else f"{a['epsilon_rdp']:.4g}"
        print(f"{a['case']:<22} {a['rc']:>3} {a['seconds']:>6} {a['peak_rss_mb']:>6} "
              f"{a['interval'] or '-':>9} {pld:>10} {rdp:>10}")
    out = ROOT / "benchmarks" / "results" / "pld_cost.json"
    out.write_text(json.dumps({
        "machine": {"python": platform.python_version(), "processor": platform.processor(),
                    "max_rss_unit": "kB"},
        "sizes": rows, "account": acc,
    }, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
