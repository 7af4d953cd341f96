"""Distributed discrete Gaussian benchmarks: sampler throughput, encode/decode cost, a plan.

Run ``python benchmarks/ddg.py [--quick]``; prints tables and writes
``benchmarks/results/ddg.json``.

What is measured (single process, this machine's CPU, wall-clock ``perf_counter``, median of
repeats):

1. Exact discrete Gaussian sampling, coordinates per second: securefvpa's vectorised CKS20
   sampler (``securefvpa.secagg.ddg.sample_discrete_gaussian``, AES-CTR keystream keyed from
   ``os.urandom``) on 10^6 coordinates, and OpenDP 0.16's exact sampler
   (``then_gaussian`` on an integer vector domain, OpenDP's own CSPRNG, Python list in and out)
   on 2 x 10^4 coordinates, at the same sigma (levels).
2. One client's ``encode`` at d = 66,005 (the demo model's update, block 4096 -> 69,632 ring
   coordinates) for B sampled units, and the server's ``decode`` of a ring sum.
3. ``plan`` for a run shaped like the issue's recipe (150 rounds, 60 of 96 clients, 16 units
   each, q = 0.1, epsilon = 8 per unit, delta = 1e-5, t = 40, T = 5, wrap bound 1e-6), with the
   noise multiplier the continuous Gaussian would need under dp-accounting's PLD and RDP for
   comparison (the price of the general subsampling theorem and of discreteness).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from securefvpa.privacy import ddg as accounting
from securefvpa.privacy.calibrate import calibrate_noise_multiplier
from securefvpa.secagg import ddg

RESULTS = Path(__file__).resolve().parent / "results" / "ddg.json"


def _median_time(fn: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def sampler_table(quick: bool) -> list[dict[str, Any]]:
    ours_n = 200_000 if quick else 1_000_000
    theirs_n = 5_000 if quick else 20_000
    try:
        import opendp.prelude as dp

        dp.enable_features("contrib")
    except ImportError:  # pragma: no cover - opendp is a dev extra
        dp = None
    rows = []
    for sigma in (1.0, 10.0, 1e3, 1e5):
        ours = _median_time(lambda s=sigma: ddg.sample_discrete_gaussian(ours_n, sigma=s), 3)
        row: dict[str, Any] = {"sigma": sigma, "ours_per_s": ours_n / ours}
        if dp is not None:
            meas = (dp.vector_domain(dp.atom_domain(T=int)), dp.l2_distance(T=int)) >> (
                dp.m.then_gaussian(scale=sigma)
            )
            theirs = _median_time(lambda m=meas: m([0] * theirs_n), 3)
            row["opendp_per_s"] = theirs_n / theirs
            row["speedup"] = row["ours_per_s"] / row["opendp_per_s"]
        rows.append(row)
    return rows


def encode_table(quick: bool) -> list[dict[str, Any]]:
    d = 66_005
    spec = ddg.DdgSpec(dim=d, clip=1.0, gamma=2.0**-22, local_sigma=2.4e6, block_size=4096)
    seed = bytes(32)
    rng = np.random.default_rng(0)
    rows = []
    for units in (0, 1, 16) if quick else (0, 1, 16, 64):
        g = rng.normal(size=(units, d))
        g /= np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
        t = _median_time(lambda g=g: ddg.encode(g, spec=spec, rotation_seed=seed), 3)
        rows.append({"units": units, "padded_dim": spec.padded_dim, "encode_s": t})
    ring = ddg.encode(np.zeros((0, d)), spec=spec, rotation_seed=seed)
    rows.append(
        {"decode_s": _median_time(lambda: ddg.decode(ring, spec=spec, rotation_seed=seed), 3)}
    )
    return rows


def plan_table() -> dict[str, Any]:
    kw = dict(target_epsilon=8.0, delta=1e-5, rounds=150, sample_rate=0.1)
    t0 = time.perf_counter()
    p = ddg.plan(
        **kw, clip=1.0, dim=66_005, threshold=40, max_colluding=5, max_shares=60,
        max_units=60 * 16, wrap_bound=1e-6, block_size=4096,
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    out: dict[str, Any] = {
        "seconds": seconds,
        "gamma": p.spec.gamma,
        "local_sigma_levels": p.spec.local_sigma,
        "honest_shares": p.honest_shares,
        "epsilon": p.epsilon,
        "wrap_bound": p.wrap_bound,
        "bits_needed": p.bits_needed,
        "central_noise_multiplier_ddg": p.central_noise_multiplier,
    }
    for relation in ("replace_one", "add_remove_one"):
        for acc in ("pld", "rdp"):
            z = calibrate_noise_multiplier(
                target_epsilon=8.0, delta=1e-5, sample_rate=0.1, steps_per_round=1,
                rounds=150, relation=relation, accountant=acc,
            )  # fmt: skip
            out[f"gaussian_{acc}_{relation}"] = z
    sigma_ar = accounting.calibrate_local_sigma(
        **kw, clip=1.0, gamma=p.spec.gamma, beta=p.spec.beta, dim=p.spec.padded_dim,
        honest_shares=p.honest_shares, relation="add_remove_one",
    )  # fmt: skip
    out["central_noise_multiplier_ddg_add_remove_one"] = (
        math.sqrt(p.honest_shares) * sigma_ar * p.spec.gamma
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (seconds)")
    args = parser.parse_args()
    result: dict[str, Any] = {"machine": platform.platform(), "quick": args.quick}

    result["sampler"] = sampler_table(args.quick)
    print("exact discrete Gaussian sampler (coordinates / s)")
    print(f"{'sigma':>10} {'securefvpa':>12} {'OpenDP':>10} {'speedup':>8}")
    for r in result["sampler"]:
        print(
            f"{r['sigma']:>10g} {r['ours_per_s']:>12.3g} {r.get('opendp_per_s', float('nan')):>10.3g}"
            f" {r.get('speedup', float('nan')):>8.1f}"
        )

    result["encode"] = encode_table(args.quick)
    print("\nencode one client (d = 66,005 -> 69,632 ring coordinates)")
    for r in result["encode"]:
        if "units" in r:
            print(f"  B = {r['units']:>3} units: {r['encode_s']:.3f} s")
        else:
            print(f"  decode: {r['decode_s']:.3f} s")

    result["plan"] = plan_table()
    print("\nplan: eps 8, delta 1e-5, 150 rounds, q 0.1, t 40, T 5, 60 shares, 960 units")
    for k, v in result["plan"].items():
        print(f"  {k:>45}: {v:.6g}")

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
