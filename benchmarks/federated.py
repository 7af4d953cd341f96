"""Federated benchmark on Flower's simulation engine: FedVPA-GP vs FedVPL vs FedBTL vs oracle.

Sections (``--section``):
- ``accuracy``: the posterior-collapse table. For each data setting (generated users with 4, 8
  and 16 pairs; relabeled HH-RLHF with 16 and 40 pairs) and each seed, every model trains on
  the same clients (the split and partitions depend on the seed only). Reported: accuracy on
  held-out pairs of seen users and on unseen users (z inferred from context only), the paired
  difference against FedBTL on the same pairs with a 95 % CI (bootstrap over clients, pooled
  over seeds), the share of the FedBTL→oracle gap closed, MI bits between inferred component and
  user type, active components, mean KL.
- ``timing``: seconds per round at 10, 50 and 100 clients (median of the rounds after the
  first, which includes Ray's start-up).

Prints tables and writes ``benchmarks/results/federated.json``. Real Flower, real Ray, real
MiniLM embeddings (cached under ``.cache/``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
CACHE = str(REPO / ".cache" / "securefvpa" / "embeddings")
MODELS = ("btl", "vpl", "fedvpa-gp", "oracle")

SETTINGS: dict[str, dict[str, Any]] = {
    "synth-4": {"source": "synth", "users": 120, "pairs_per_user": 4, "heldout_pairs": 2},
    "synth-8": {"source": "synth", "users": 120, "pairs_per_user": 8, "heldout_pairs": 3},
    "synth-16": {"source": "synth", "users": 120, "pairs_per_user": 16, "heldout_pairs": 4},
    "hh-16": {"source": "hh_rlhf", "users": 250, "pairs_per_user": 16, "heldout_pairs": 4},
    "hh-40": {"source": "hh_rlhf", "users": 100, "pairs_per_user": 40, "heldout_pairs": 8},
    # 4 users of mixed types per client (60 clients): the client-drift control
    "synth-16-mixed4": {"source": "synth", "users": 240, "pairs_per_user": 16, "heldout_pairs": 4,
                        "federation": {"users_per_client": 4, "type_mix": "mixed"}},
}


def config(
    setting: dict[str, Any],
    model: str,
    seed: int,
    rounds: int,
    fraction: float,
    local_steps: int,
    name: str = "run",
    opt: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One run's config. ``opt``: ``server_optimizer``, ``server_lr``, ``server_tau``,
    ``client_optimizer``, ``client_lr`` (default: FedAvg with local Adam at lr 0.01)."""
    opt = opt or {}
    setting = dict(setting)
    fed_extra = setting.pop("federation", {})
    cfg = {
        "run_id": f"bench-{name}-{model}-{seed}",
        "seed": seed,
        "data": setting | {"unseen_share": 0.2},
        "embedding": {"cache_dir": CACHE},
        "model": {"kind": model},
        "train": {
            "lr": opt.get("client_lr", 0.01),
            "optimizer": opt.get("client_optimizer", "adam"),
        },
        "federation": {
            "mode": "simulation",
            "rounds": rounds,
            "local_steps": local_steps,
            "fraction_fit": fraction,
            "min_fit_clients": 2,
            "eval_every": rounds,
            "round_timeout_s": 600.0,
            "server_optimizer": opt.get("server_optimizer", "fedavg"),
            "server_lr": opt.get("server_lr", 1.0),
            "server_tau": opt.get("server_tau", 1e-8),
        },
    }
    cfg["federation"].update(fed_extra)
    return cfg


def run_one(cfg: dict[str, Any], work: Path) -> dict[str, Any]:
    from securefvpa.run import run

    path = work / f"{cfg['run_id']}.toml"
    path.write_text(tomli_w.dumps(cfg))
    out = work / cfg["run_id"]
    t0 = time.perf_counter()
    metrics = run(path, out).metrics
    metrics["wall_seconds"] = time.perf_counter() - t0
    return metrics


def paired_ci(
    per_model: dict[str, list[list[int]]],
    model: str,
    base: str = "btl",
    n_boot: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Accuracy difference model - base over the same clients' pairs; bootstrap over clients."""
    a = np.array([[r[2], r[3]] for r in per_model[model]], dtype=float)
    b = np.array([[r[2], r[3]] for r in per_model[base]], dtype=float)
    if a.shape != b.shape or not np.array_equal(a[:, 0], b[:, 0]):
        raise RuntimeError("models were not evaluated on the same clients")
    diff = a[:, 1].sum() / a[:, 0].sum() - b[:, 1].sum() / b[:, 0].sum()
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(n_boot, len(a)))
    boots = a[idx, 1].sum(1) / a[idx, 0].sum(1) - b[idx, 1].sum(1) / b[idx, 0].sum(1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return float(diff), float(lo), float(hi)


def accuracy_section(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    names = args.settings.split(",")
    for name in names:
        if name.startswith("hh") and not os.environ.get("SECUREFVPA_HH_RLHF_DIR"):
            print(f"skipping {name}: SECUREFVPA_HH_RLHF_DIR is not set", file=sys.stderr)
            continue
        setting = SETTINGS[name]
        rows: dict[str, list[dict[str, Any]]] = {m: [] for m in MODELS}
        per_client: dict[str, list[list[int]]] = {m: [] for m in MODELS}
        for seed in range(args.seeds):
            for model in MODELS:
                # >= 50 clients take part in every round; more only cost time on 2 cores
                upc = setting.get("federation", {}).get("users_per_client", 1)
                fraction = min(1.0, 60 / (0.8 * setting["users"] / upc))
                m = run_one(
                    config(
                        setting, model, seed, args.rounds, fraction, args.local_steps, name,
                        optimizer_options(args),
                    ),
                    work,
                )
                rounds = m["rounds"]
                rows[model].append(
                    {
                        "seed": seed,
                        "seen": m["accuracy"]["seen_users"],
                        "unseen": m["accuracy"]["unseen_users"],
                        "controversial": m["accuracy"].get("controversial"),
                        "mi_bits": m["latent"].get("mutual_information_bits"),
                        "active_components": m["latent"].get("active_components"),
                        "mean_kl": m["latent"].get("mean_kl"),
                        "collapse": m["latent"].get("posterior_collapse"),
                        "clients": len(rounds[-1]["eval"]["per_client"]),
                        "seconds": m["wall_seconds"],
                    }
                )
                per_client[model] += [
                    [seed * 100000 + r[0], *r[1:]] for r in rounds[-1]["eval"]["per_client"]
                ]
                print(
                    f"  {name} seed={seed} {model}: seen={rows[model][-1]['seen']:.4f} "
                    f"unseen={rows[model][-1]['unseen']:.4f} ({m['wall_seconds']:.0f} s)",
                    flush=True,
                )
        summary = {}
        btl = per_client["btl"]
        for model in MODELS:
            seen = [r for r in per_client[model] if r[1] == "train"]
            unseen = [r for r in per_client[model] if r[1] == "unseen"]
            acc = lambda rs: sum(r[3] for r in rs) / max(1, sum(r[2] for r in rs))  # noqa: E731
            entry = {
                "seen": acc(seen),
                "unseen": acc(unseen),
                "all": acc(per_client[model]),
                "mi_bits": statistics.mean(r["mi_bits"] or 0.0 for r in rows[model]),
                "active_components": statistics.mean(
                    r["active_components"] or 0 for r in rows[model]
                ),
                "mean_kl": statistics.mean(r["mean_kl"] or 0.0 for r in rows[model]),
                "collapse_runs": sum(bool(r["collapse"]) for r in rows[model]),
                "runs": rows[model],
            }
            if model != "btl" and btl:
                entry["diff_vs_btl"] = paired_ci(per_client, model)
            summary[model] = entry
        gap = summary["oracle"]["all"] - summary["btl"]["all"]
        for model in MODELS:
            summary[model]["gap_closed"] = (
                (summary[model]["all"] - summary["btl"]["all"]) / gap if abs(gap) > 1e-9 else None
            )
        out[name] = {"setting": setting, "clients": rows["btl"][0]["clients"], "models": summary}
        print_accuracy_table(name, out[name])
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"accuracy_partial": out}, indent=2))  # survive a crash
    return out


def optimizer_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "server_optimizer": args.server_optimizer,
        "server_lr": args.server_lr,
        "client_optimizer": args.client_optimizer,
        "client_lr": args.client_lr,
        "server_tau": args.server_tau,
    }


def print_accuracy_table(name: str, res: dict[str, Any]) -> None:
    print(f"\n{name} ({res['clients']} clients)")
    print(
        f"{'model':<10} {'seen':>7} {'unseen':>7} {'Δ vs BTL [95% CI]':>26} {'gap closed':>10} "
        f"{'MI bits':>8} {'active':>6} {'KL':>6}"
    )
    for model, e in res["models"].items():
        d = e.get("diff_vs_btl")
        dtxt = f"{d[0]:+.4f} [{d[1]:+.4f}, {d[2]:+.4f}]" if d else "—"
        gap = f"{e['gap_closed']:.2f}" if e.get("gap_closed") is not None else "—"
        print(
            f"{model:<10} {e['seen']:7.4f} {e['unseen']:7.4f} {dtxt:>26} {gap:>10} "
            f"{e['mi_bits']:8.3f} {e['active_components']:6.1f} {e['mean_kl']:6.2f}"
        )


def timing_section(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    out = {}
    for n in (10, 50, 100):
        unseen = 0.2
        users = int(round(n / (1 - unseen)))
        cfg = config(
            {"source": "synth", "users": users, "pairs_per_user": 16, "heldout_pairs": 4},
            "fedvpa-gp",
            0,
            4,
            1.0,
            args.local_steps,
        )
        cfg["run_id"] = f"timing-{n}"
        cfg["data"]["unseen_share"] = unseen
        cfg["federation"]["eval_every"] = 100
        m = run_one(cfg, work)
        secs = [r["wall_seconds"] for r in m["rounds"][1:]]
        clients = m["rounds"][1]["clients"]
        out[str(n)] = {
            "train_clients": clients,
            "round_seconds": secs,
            "median_after_first": statistics.median(secs[1:]) if len(secs) > 1 else secs[0],
            "first_round": secs[0],
        }
    print("\nseconds per round (fedvpa-gp, synth, 1 user per client, all clients each round)")
    print(f"{'clients':>8} {'train clients':>14} {'first round':>12} {'later rounds (median)':>22}")
    for n, e in out.items():
        print(
            f"{n:>8} {e['train_clients']:>14} {e['first_round']:12.2f} {e['median_after_first']:22.2f}"
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--section", choices=["accuracy", "timing", "all"], default="all")
    p.add_argument("--settings", default="synth-4,synth-8,synth-16,hh-16,hh-40")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--local-steps", type=int, default=10)
    p.add_argument("--server-optimizer", choices=["fedavg", "fedadam"], default="fedavg")
    p.add_argument("--server-lr", type=float, default=1.0)
    p.add_argument("--server-tau", type=float, default=1e-8, help="FedAdam's epsilon")
    p.add_argument("--client-optimizer", choices=["adam", "sgd"], default="adam")
    p.add_argument("--client-lr", type=float, default=0.01)
    p.add_argument(
        "--fedadam",
        action="store_true",
        help="the setting that avoids client drift: FedAdam (server lr 0.01), local SGD at lr "
        "1.0, 2 local steps, 150 rounds",
    )
    p.add_argument("--quick", action="store_true", help="synth-16 only, 1 seed, 5 rounds")
    p.add_argument("--out", type=Path, default=RESULTS / "federated.json")
    args = p.parse_args()
    if args.fedadam:
        args.server_optimizer, args.server_lr = "fedadam", 0.01
        args.client_optimizer, args.client_lr = "sgd", 1.0
        args.local_steps, args.rounds = 2, 150
    if args.quick:
        args.settings, args.seeds, args.rounds = "synth-16", 1, 5
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    result: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
    with tempfile.TemporaryDirectory(prefix="sfvpa-bench-") as tmp:
        work = Path(tmp)
        if args.section in ("accuracy", "all"):
            result["accuracy"] = accuracy_section(args, work)
        if args.section in ("timing", "all"):
            result["timing"] = timing_section(args, work)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
