"""DP benchmarks: print a table and write JSON under benchmarks/results/.

Sections (``--section NAME``; register new ones in ``SECTIONS``):

* ``steps`` - local step time, private (hooks / functorch / ghost) vs non-private.
* ``utility`` - accuracy of FedVPA-GP and FedBTL on relabeled HH-RLHF at epsilon 1, 4, 8, inf.
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
            DpSgdEvent(
                client_id=cid,
                round=int(r),
                noise_multiplier=sigma,
                sample_rate=args.q,
                steps=args.steps,
                clip=1.0,
                relation=args.relation,
            )
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


def section_steps(args: argparse.Namespace) -> dict:
    """Local step time, private (per Opacus grad-sample mode) vs non-private, same batches.

    Model: FedVPA-GP at its default size on 384-d embeddings of the planted problem; a batch of
    ``--batch`` episodes of 8 context + 4 target pairs. Each mode is first checked for
    correctness against the explicit hooks computation (clipped per-episode sum); the timed
    private step includes Poisson sampling, per-episode gradients, clipping, CSPRNG noise and
    the Adam update; episode partition and collation are outside the timing for both sides.
    """
    import torch

    from securefvpa.config import ModelConfig, TrainConfig
    from securefvpa.models.factory import build_model, count_parameters
    from securefvpa.models.planted import planted_pairs
    from securefvpa.train.episodes import collate, partition_episodes
    from securefvpa.train.private import DPSettings, PrivateStepper

    torch.set_num_threads(1)
    pairs, split = planted_pairs(users=args.batch, pairs_per_user=16, dim=384, seed=0)
    users = list(split.seen) + list(split.unseen)
    tcfg = TrainConfig(context_pairs=8, target_pairs=4, lr=1e-3, episodes_per_batch=args.batch)
    mcfg = ModelConfig(kind="fedvpa-gp")

    def fresh():
        return build_model(mcfg, embed_dim=pairs.dim, n_types=2, seed=0)

    n_params = count_parameters(fresh())
    rng = np.random.default_rng(0)
    episodes = partition_episodes(pairs, users, context_pairs=8, target_pairs=4, rng=rng)
    batch = collate(pairs, episodes[: args.batch])

    def nonprivate_step(model, opt) -> None:
        loss, _ = model(**batch.inputs())
        opt.zero_grad(set_to_none=True)
        loss.mean().backward()
        opt.step()

    def time_it(fn, reps: int) -> float:
        fn()  # warm-up
        t = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            t.append(time.perf_counter() - t0)
        return statistics.median(t)

    model = fresh()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    base = time_it(lambda: nonprivate_step(model, opt), args.reps)
    rows = {"non-private": {"seconds_per_step": base, "ratio": 1.0}}
    for mode in ("hooks", "functorch", "ghost"):
        dp = DPSettings(noise_multiplier=1.0, clip=1.0, sample_rate=1.0, grad_sample_mode=mode)
        stepper = PrivateStepper(fresh(), dp=dp, train_cfg=tcfg, expected_batch=args.batch)
        sec = time_it(lambda s=stepper: s.step(batch), args.reps)
        stepper.close()
        rows[mode] = {"seconds_per_step": sec, "ratio": sec / base}
    # correctness of each mode is tested in tests/train/test_private.py (oracle, ghost == hooks)
    print(
        f"\nlocal step, batch of {args.batch} episodes (8+4 pairs), {n_params} parameters, 1 thread"
    )
    print(f"{'mode':<14}{'s/step':>10}{'x non-private':>16}")
    for k, v in rows.items():
        print(f"{k:<14}{v['seconds_per_step']:>10.4f}{v['ratio']:>16.2f}")
    return {
        "batch_episodes": args.batch,
        "parameters": n_params,
        "rows": rows,
        "software": software_versions(),
        "machine": platform.processor() or platform.machine(),
    }


def section_utility(args: argparse.Namespace) -> dict:
    """Accuracy of FedVPA-GP and FedBTL on relabeled HH-RLHF at epsilon in {1, 4, 8, inf}.

    Real Flower simulation; DP-SGD on every client with sigma calibrated to each target (inf =
    DP off); per-record epsilon per client from the ledger's report.
    """
    import os
    import tempfile

    import tomli_w

    from securefvpa.run import run

    if not os.environ.get("SECUREFVPA_HH_RLHF_DIR"):
        raise SystemExit("SECUREFVPA_HH_RLHF_DIR is not set")
    out: dict = {"rows": []}
    with tempfile.TemporaryDirectory(prefix="sfvpa-dp-") as tmp:
        for model in ("btl", "fedvpa-gp"):
            for eps in (1.0, 4.0, 8.0, float("inf")):
                cfg = {
                    "seed": args.seed,
                    "data": {
                        "source": "hh_rlhf",
                        "users": args.users,
                        "pairs_per_user": 40,
                        "heldout_pairs": 8,
                        "unseen_share": 0.2,
                    },
                    "embedding": {"cache_dir": str(ROOT / ".cache" / "securefvpa" / "embeddings")},
                    "model": {"kind": model},
                    "train": {"lr": 0.01, "context_pairs": 8, "target_pairs": 4},
                    "federation": {
                        "mode": "simulation",
                        "rounds": args.fl_rounds,
                        "local_steps": args.steps,
                        "eval_every": args.fl_rounds,
                        "min_fit_clients": 2,
                        "round_timeout_s": 900.0,
                    },
                }
                if eps != float("inf"):
                    cfg["privacy"] = {
                        "enabled": True,
                        "target_epsilon": eps,
                        "budget_epsilon": eps,
                        "sample_rate": args.q,
                        "clip": 1.0,
                    }
                path = Path(tmp) / f"{model}-{eps}.toml"
                path.write_text(tomli_w.dumps(cfg))
                t0 = time.perf_counter()
                m = run(path, Path(tmp) / f"{model}-{eps}").metrics
                row = {
                    "model": model,
                    "epsilon_target": eps,
                    "seen": m["accuracy"]["seen_users"],
                    "unseen": m["accuracy"]["unseen_users"],
                    "seconds": time.perf_counter() - t0,
                }
                if eps != float("inf"):
                    rep = json.loads(
                        (Path(tmp) / f"{model}-{eps}" / "privacy_report.json").read_text()
                    )
                    row["epsilon_max"] = rep["summary"]["epsilon_max"]
                    plan = json.loads(
                        (Path(tmp) / f"{model}-{eps}" / "privacy_plan.json").read_text()
                    )
                    row["sigma"] = plan["noise_multiplier"]
                out["rows"].append(row)
                print(
                    f"  {model:<10} eps={eps:<5} seen={row['seen']:.4f} unseen={row['unseen']:.4f} "
                    f"sigma={row.get('sigma', 0):.3f} ({row['seconds']:.0f} s)",
                    flush=True,
                )
    print(f"\n{'model':<10}{'target eps':>11}{'max eps':>9}{'sigma':>8}{'seen':>8}{'unseen':>8}")
    for r in out["rows"]:
        print(
            f"{r['model']:<10}{r['epsilon_target']:>11}{r.get('epsilon_max', float('inf')):>9.3f}"
            f"{r.get('sigma', 0.0):>8.3f}{r['seen']:>8.4f}{r['unseen']:>8.4f}"
        )
    return out


SECTIONS: dict[str, tuple[Callable[[argparse.Namespace], dict], str]] = {
    "accountant": (section_accountant, "dp_accountant.json"),
    "steps": (section_steps, "dp_steps.json"),
    "utility": (section_utility, "dp_utility.json"),
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
    p.add_argument("--batch", type=int, default=64, help="steps: episodes per batch")
    p.add_argument("--reps", type=int, default=20, help="steps: timed repetitions")
    p.add_argument("--users", type=int, default=100, help="utility: HH users (40 pairs each)")
    p.add_argument("--fl-rounds", type=int, default=10, help="utility: federated rounds")
    p.add_argument("--quick", action="store_true", help="accountant: 200 clients x 200 rounds")
    args = p.parse_args(argv)
    if args.quick:
        args.clients, args.rounds, args.reps = 200, 200, 5
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
