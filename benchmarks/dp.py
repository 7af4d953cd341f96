"""DP benchmarks: print a table and write JSON under benchmarks/results/.

Sections (``--section NAME``; register new ones in ``SECTIONS``):

* ``accountant`` - time to compute per-client epsilon (PLD and RDP) and the per-round epsilon
  trajectories for C clients x R rounds, clients joining each round with a fixed probability
  (seeded numpy Generator: this is a benchmark, not a security path).

Usage: python benchmarks/dp.py --section accountant [--clients 1000 --rounds 1000 ...]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from securefvpa.privacy import accountant as acc  # noqa: E402
from securefvpa.privacy.events import DpSgdEvent  # noqa: E402
from securefvpa.privacy.report import software_versions  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def _histories(args: argparse.Namespace) -> dict[str, list[DpSgdEvent]]:
    rng = np.random.default_rng(args.seed)
    levels = [args.sigma * (1.0 + 0.5 * i) for i in range(args.noise_levels)]
    joined = rng.random((args.clients, args.rounds)) < args.participation
    out: dict[str, list[DpSgdEvent]] = {}
    for c in range(args.clients):
        cid = f"client-{c:04d}"
        sigma = levels[c % len(levels)]
        out[cid] = [
            DpSgdEvent(cid, int(r), sigma, args.q, args.steps, 1.0, args.relation)
            for r in np.flatnonzero(joined[c])
        ]
    return out


def _timed(fn: Callable[[], object]) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def section_accountant(args: argparse.Namespace) -> dict:
    hist = _histories(args)
    d = args.discretization
    delta = args.delta
    acc.clear_caches()
    rows: dict[str, float] = {}

    t, eps_pld = _timed(
        lambda: {c: acc.epsilon(h, delta, value_discretization_interval=d) for c, h in hist.items()}
    )
    rows["final epsilon, PLD (cold cache)"] = t
    t, eps_rdp = _timed(
        lambda: {c: acc.epsilon(h, delta, accountant="rdp") for c, h in hist.items()}
    )
    rows["final epsilon, RDP (cold cache)"] = t
    t, traj = _timed(
        lambda: {
            c: acc.epsilon_trajectory(h, delta, value_discretization_interval=d)
            for c, h in hist.items()
        }
    )
    rows["per-round trajectories, PLD (after finals)"] = t
    t, _ = _timed(
        lambda: {c: acc.epsilon_trajectory(h, delta, accountant="rdp") for c, h in hist.items()}
    )
    rows["per-round trajectories, RDP (after finals)"] = t
    t, _ = _timed(
        lambda: {c: acc.epsilon(h, delta, value_discretization_interval=d) for c, h in hist.items()}
    )
    rows["final epsilon, PLD (warm cache)"] = t
    total = sum(v for k, v in rows.items() if "warm" not in k)
    rows["whole report numbers (cold), total"] = total

    # Uncached baseline: a fresh dp-accounting PLDAccountant per client, on a few clients.
    sample = list(hist.items())[: args.baseline_clients]
    t, _ = _timed(
        lambda: [
            acc.make_accountant("pld", args.relation, value_discretization_interval=d)
            .compose(acc.canonical_dp_event(acc.history_key(h)))
            .get_epsilon(delta)
            for _, h in sample
        ]
    )
    per_client = t / max(len(sample), 1)

    joined = [len(h) for h in hist.values()]
    distinct = len({acc.history_key(h) for h in hist.values()})
    prefixes = len({acc.history_key(h[: i + 1]) for h in hist.values() for i in range(len(h))})
    finals = list(eps_pld.values())
    result = {
        "section": "accountant",
        "params": vars(args) | {"out": str(args.out)},
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "software": software_versions(),
        "timings_s": rows,
        "uncached_pld_per_client_s": per_client,
        "uncached_pld_extrapolated_s": per_client * len(hist),
        "clients": len(hist),
        "rounds_joined": {
            "min": min(joined),
            "median": statistics.median(joined),
            "max": max(joined),
        },
        "distinct_histories": distinct,
        "distinct_prefix_histories": prefixes,
        "epsilon_pld": {
            "min": min(finals),
            "median": statistics.median(finals),
            "max": max(finals),
        },
        "epsilon_rdp_max": max(eps_rdp.values()),
        "trajectory_points": sum(len(v) for v in traj.values()),
    }
    print(
        f"\naccountant: {len(hist)} clients x {args.rounds} rounds, participation "
        f"{args.participation}, sigma {args.sigma} ({args.noise_levels} level(s)), q {args.q}, "
        f"{args.steps} steps/round, {args.relation}, delta {delta}, PLD interval {d}"
    )
    print(
        f"rounds joined per client: {result['rounds_joined']}; distinct histories {distinct}; "
        f"distinct prefixes {prefixes}"
    )
    print(f"{'what':<48}{'seconds':>10}")
    for k, v in rows.items():
        print(f"{k:<48}{v:>10.2f}")
    print(f"{'uncached PLDAccountant, extrapolated':<48}{per_client * len(hist):>10.1f}")
    print(f"epsilon PLD min/median/max: {result['epsilon_pld']}")
    return result


SECTIONS: dict[str, tuple[Callable[[argparse.Namespace], dict], str]] = {
    "accountant": (section_accountant, "dp_accountant.json"),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--section", choices=sorted(SECTIONS), default="accountant")
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=1000)
    p.add_argument("--participation", type=float, default=0.05)
    p.add_argument("--sigma", type=float, default=1.5)
    p.add_argument("--noise-levels", type=int, default=1)
    p.add_argument("--q", type=float, default=0.1)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--relation", choices=["replace_one", "add_remove_one"], default="replace_one")
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument("--discretization", type=float, default=acc.DEFAULT_PLD_DISCRETIZATION)
    p.add_argument("--baseline-clients", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    fn, default_name = SECTIONS[args.section]
    out = args.out or RESULTS / default_name
    args.out = out
    result = fn(args)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
