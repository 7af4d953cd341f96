"""Personalization under privacy: distributed vs local vs central noise, per pair and per user.

``python benchmarks/private_utility.py [--seeds 0,1] [--users 10000] [--rounds 100] [--quick]
[--cells LABEL,...]``
prints a table and writes ``benchmarks/results/private_utility.json``.

Every cell is one ``securefvpa run`` (``federation.mode = "inprocess"``: the production round
engine, client code, DP accounting, ledger and report, without Flower messages; the secure sum is
computed as the plain ring sum, which is what secure aggregation returns). On generated users
with 16 pairs (4 held out, 20 % unseen users) and several users per node:

* FedBTL and FedVPA-GP with distributed noise (discrete-Gaussian shares inside secure
  aggregation) at epsilon in {1, 4, 8} per pair and without DP (inf);
* at epsilon = 8: local noise (every client adds the full noise), central noise (one draw added
  by a trusted server, the reference), the user as the privacy unit, FedVPL and the oracle.

Utility is accuracy on held-out pairs of seen users and on unseen users. Under DP the server
never sees evaluation counts: they stay in the nodes' own logs, which this benchmark (the
operator of every simulated node) reads. Differences are paired against non-private FedBTL on the
same clients (same data, same partition, same rounds): a bootstrap over clients of all seeds
(2,000 resamples, 95 % percentile interval). "gain kept" is (model - FedBTL) at epsilon over
(model - FedBTL) without DP, on unseen users, for the same model settings (and, for
FedVPA-GP, also against the full-size model without DP: what the smaller DP model gives up). Bits per coordinate are what the aggregate needs at
the run's wrap-around bound (``secagg.ddg.aggregate_bits``); clipped share is the fixed-point
path's clipped-coordinate share (the discrete path never clips).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from securefvpa.compare import EvalUnit, client_counts, paired_difference

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "private_utility.json"
CACHE = str(REPO / ".cache" / "securefvpa" / "embeddings")


def base_config(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """The private recipe, read from ``examples/private.toml`` (the one place it is written),
    run in process at this benchmark's size; privacy and secure aggregation as each cell sets."""
    from securefvpa.config import read_toml

    cfg = read_toml(REPO / "examples" / "private.toml")
    cfg.pop("run_id", None)
    cfg["seed"] = seed
    cfg["data"]["users"] = args.users
    cfg["embedding"] = {"cache_dir": CACHE}
    cfg["model"].update(json.loads(args.model))
    cfg["federation"].update(
        mode="inprocess",
        rounds=args.rounds,
        eval_every=args.rounds,
        users_per_client=args.users_per_client,
        local_batch_episodes=args.local_batch,
        **json.loads(args.federation),
    )
    cfg["privacy"].update(sample_rate=args.sample_rate, clip=args.clip)
    return cfg


def cells(quick: bool) -> list[tuple[str, dict[str, Any]]]:
    """(label, overrides as dotted keys) of every cell of the grid."""
    out: list[tuple[str, dict[str, Any]]] = []
    epsilons: list[float] = [8.0] if quick else [1.0, 4.0, 8.0]
    for model in ("btl", "fedvpa-gp"):
        out.append((f"{model} inf", {"model.kind": model, "privacy.enabled": False,
                                     "secagg.enabled": False}))
        for eps in epsilons:
            out.append((f"{model} distributed eps{eps:g}", {"model.kind": model,
                        "privacy.target_epsilon": eps, "privacy.budget_epsilon": eps}))
    if not quick:
        at8 = {"privacy.target_epsilon": 8.0, "privacy.budget_epsilon": 8.0}
        out += [
            ("fedvpa-gp local eps8", at8 | {"privacy.noise": "local", "secagg.enabled": False}),
            ("fedvpa-gp central eps8", at8 | {"privacy.noise": "central",
                                              "secagg.enabled": False}),
            ("fedvpa-gp distributed user eps8", at8 | {"privacy.unit": "user"}),
            ("fedvpa-gp distributed user add-remove eps8", at8 | {
                "privacy.unit": "user", "privacy.neighbouring_relation": "add_remove_one"}),
            ("vpl distributed eps8", at8 | {"model.kind": "vpl"}),
            ("oracle distributed eps8", at8 | {"model.kind": "oracle"}),
            ("vpl inf", {"model.kind": "vpl", "privacy.enabled": False,
                         "secagg.enabled": False}),
            ("oracle inf", {"model.kind": "oracle", "privacy.enabled": False,
                            "secagg.enabled": False}),
            # the full-size model (66k trained parameters) without DP: what the smaller DP
            # model gives up before any noise
            ("fedvpa-gp(full-size) inf", {"privacy.enabled": False, "secagg.enabled": False,
                                          "model.input_projection": 0, "model.hidden": 64}),
        ]
    return out


def apply(cfg: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(cfg))
    for dotted, value in over.items():
        node = out
        *path, key = dotted.split(".")
        for p in path:
            node = node.setdefault(p, {})
        node[key] = value
    if not out["privacy"]["enabled"]:
        out.pop("privacy")
    return out


def paired(a: list[Any], b: list[Any], role: str) -> tuple[float, float, float]:
    """Accuracy difference a - b on ``role``'s pairs of the same clients (all seeds pooled),
    with the 95 % bootstrap interval over clients (``securefvpa.compare``)."""
    d = paired_difference(a, b, role=role)
    return d.difference, d.low, d.high


def bits_per_coordinate(run_dir: Path) -> int | None:
    from securefvpa.secagg import ddg

    plan = json.loads((run_dir / "privacy_plan.json").read_text()) if (
        run_dir / "privacy_plan.json"
    ).is_file() else None
    if not plan or not plan.get("distributed"):
        return None
    d = plan["distributed"]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    spec = ddg.DdgSpec(dim=d["dim"], clip=1.0, gamma=d["gamma"], local_sigma=d["local_sigma"],
                       beta=d["beta"], bits=d["bits"], block_size=d["block_size"])
    return ddg.aggregate_bits(spec=spec, max_units=max(1, sum(manifest["units"])),
                              max_shares=manifest["train_clients"], wrap_bound=1e-6)


def run_cell(cfg: dict[str, Any], out: Path) -> dict[str, Any]:
    from securefvpa.run import evaluated_metrics, run

    t0 = time.perf_counter()
    res = run(cfg, out)
    m = evaluated_metrics(res.run_dir, res.metrics)
    trained = [r for r in m["rounds"] if r["round"] > 0]
    clipped = [r["secagg"].get("clipped_share") for r in trained if r.get("secagg")]
    return {
        "accuracy": m["accuracy"],
        "mi_bits": m["latent"].get("mutual_information_bits"),
        "active_components": m["latent"].get("active_components"),
        "epsilon": res.epsilon,
        "seconds": time.perf_counter() - t0,
        "seconds_per_round": float(np.mean([r["wall_seconds"] for r in trained])),
        "bits_per_coordinate": bits_per_coordinate(res.run_dir),
        "clipped_share": max((c for c in clipped if c is not None), default=None),
        "per_client": client_counts(res.run_dir, m),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--users", type=int, default=10000)
    ap.add_argument("--users-per-client", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--sample-rate", type=float, default=0.1)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--local-batch", type=int, default=10)
    ap.add_argument("--model", default="{}", help="JSON: extra model settings")
    ap.add_argument("--federation", default="{}", help="JSON: extra federation settings")
    ap.add_argument("--quick", action="store_true", help="eps 8 and inf only")
    ap.add_argument("--cells", default="", help="comma-separated cell labels to run (default: all)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/securefvpa-private-utility"))
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    grid = cells(args.quick)
    if args.cells:
        wanted = [c.strip() for c in args.cells.split(",")]
        unknown = sorted(set(wanted) - {label for label, _ in grid})
        if unknown:
            raise SystemExit(f"--cells: unknown cell(s) {unknown}; known: {[g[0] for g in grid]}")
        if "btl inf" not in wanted:
            wanted.insert(0, "btl inf")  # every difference is paired against it
        grid = [g for g in grid if g[0] in wanted]
    results: dict[str, dict[int, dict[str, Any]]] = {}
    for seed in seeds:
        base = base_config(args, seed)
        for label, over in grid:
            out = args.work / f"s{seed}" / label.replace(" ", "_")
            done = out.with_name(out.name + ".cell.json")
            if done.is_file():  # finished by an earlier, interrupted invocation: reuse
                r = json.loads(done.read_text())
                r["per_client"] = [EvalUnit(**u) for u in r["per_client"]]
            else:
                if out.exists():  # an interrupted cell: start it again
                    import shutil

                    shutil.rmtree(out)
                r = run_cell(apply(base, over), out)
                done.write_text(json.dumps(
                    r | {"per_client": [dataclasses.asdict(u) for u in r["per_client"]]},
                    default=str))
            results.setdefault(label, {})[seed] = r
            acc = r["accuracy"]
            print(f"seed {seed} {label:<34} seen {acc['seen_users']:.3f} unseen "
                  f"{acc['unseen_users']:.3f} MI {r['mi_bits'] or 0:.2f} "
                  f"eps {r['epsilon'] or math.inf:.2f} {r['seconds_per_round']:.2f} s/round",
                  flush=True)
    rows = []
    for label, by_seed in results.items():
        model = label.split()[0]
        base_runs = results["btl inf"]
        a = [row for s in seeds for row in by_seed[s]["per_client"]]
        b = [row for s in seeds for row in base_runs[s]["per_client"]]
        d_unseen = paired(a, b, "unseen")
        d_seen = paired(a, b, "train")
        inf_label = f"{model} inf"
        kept = None
        if inf_label in results and label != inf_label:
            c = [row for s in seeds for row in results[inf_label][s]["per_client"]]
            gain_inf = paired(c, b, "unseen")[0]
            kept = d_unseen[0] / gain_inf if gain_inf > 0 else None
        kept_full = None
        full = "fedvpa-gp(full-size) inf"
        if model == "fedvpa-gp" and full in results:
            c = [row for s in seeds for row in results[full][s]["per_client"]]
            gain_full = paired(c, b, "unseen")[0]
            kept_full = d_unseen[0] / gain_full if gain_full > 0 else None
        def mean(k: str, runs: dict[int, dict[str, Any]] = by_seed) -> float:
            return float(np.mean([runs[s]["accuracy"][k] for s in seeds]))

        rows.append({
            "cell": label,
            "seen": mean("seen_users"),
            "unseen": mean("unseen_users"),
            "delta_unseen_vs_fedbtl": d_unseen,
            "delta_seen_vs_fedbtl": d_seen,
            "gain_kept": kept,
            "gain_kept_vs_full_size": kept_full,
            "mi_bits": float(np.mean([by_seed[s]["mi_bits"] or 0 for s in seeds])),
            "epsilon": max((by_seed[s]["epsilon"] or 0.0) for s in seeds) or None,
            "bits_per_coordinate": by_seed[seeds[0]]["bits_per_coordinate"],
            "clipped_share": by_seed[seeds[0]]["clipped_share"],
            "seconds_per_round": float(np.mean([by_seed[s]["seconds_per_round"] for s in seeds])),
        })
    print()
    print(f"{'cell':<34} {'seen':>6} {'unseen':>6}  {'Δ unseen vs FedBTL [95% CI]':<28} "
          f"{'kept':>5} {'full':>5} {'MI':>5} {'ε':>5} {'bits':>4} {'s/rnd':>6}")
    for r in rows:
        d = r["delta_unseen_vs_fedbtl"]
        kept = "-" if r["gain_kept"] is None else f"{100 * r['gain_kept']:.0f}%"
        full = "-" if r["gain_kept_vs_full_size"] is None else (
            f"{100 * r['gain_kept_vs_full_size']:.0f}%")
        eps = "inf" if r["epsilon"] is None else f"{r['epsilon']:.2f}"
        bits = "-" if r["bits_per_coordinate"] is None else str(r["bits_per_coordinate"])
        print(f"{r['cell']:<34} {r['seen']:6.3f} {r['unseen']:6.3f}  "
              f"{d[0]:+.3f} [{d[1]:+.3f}, {d[2]:+.3f}]{'':<6} {kept:>5} {full:>5} {r['mi_bits']:5.2f} "
              f"{eps:>5} {bits:>4} {r['seconds_per_round']:6.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "work")},
        "rows": rows,
        "runs": {label: {str(s): {k: v for k, v in r.items() if k != "per_client"}
                         for s, r in by_seed.items()} for label, by_seed in results.items()},
    }, indent=2, default=str))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
