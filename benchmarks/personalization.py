"""Central personalization benchmark: BTL vs VPL vs FedVPA-GP vs the type oracle, one harness.

For each data setting (relabeled HH-RLHF with 40 and 16 pairs per user, read from
$SECUREFVPA_HH_RLHF_DIR; the data helper's generated text users with 4 and 16 pairs per user)
users are rotated through a user-level 5-fold split (securefvpa.data.split.kfold_users): in fold
f the users of fold f are unseen (never trained on; z inferred from their context pairs alone)
and the rest are seen (held-out pairs never trained on). Every model trains centrally
(securefvpa.train.central) on the same seen users and is scored on the same held-out pairs.

Reported per setting and model: pair-weighted accuracy for seen users (pooled over the 4 folds
in which a user is seen) and unseen users (each user unseen exactly once); the paired difference
against BTL on the same pairs with a 95 % CI from a paired bootstrap over users (2,000
resamples); the share of the BTL -> oracle gap closed; MI (bits) between inferred component and
true type (mean over folds); active components; mean KL; embedding time of the data setting.
A second table compares the reward conditioning (mixture-heads / film / concat) for FedVPA-GP and
the oracle on HH-RLHF with 40 pairs per user.

    python benchmarks/personalization.py [--seed 0] [--quick]

Prints tables and writes benchmarks/results/personalization.json. Numbers are measured, never
edited; --quick (1 fold, 300 steps, one HH and one generated setting) is for smoke runs only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from securefvpa.config import HH_RLHF_ENV, config_from_dict  # noqa: E402
from securefvpa.data.load import load_dataset  # noqa: E402
from securefvpa.data.split import kfold_users  # noqa: E402
from securefvpa.train.central import train_central  # noqa: E402
from securefvpa.train.loop import latent_diagnostics, merge_scores, score_users  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
CACHE = str(REPO / ".cache" / "securefvpa" / "embeddings")
MODELS = ("btl", "vpl", "fedvpa-gp", "oracle")
CONDITIONINGS = ("mixture-heads", "film", "concat")
FOLDS = 5
BOOTSTRAP = 2000

SETTINGS: dict[str, dict[str, Any]] = {
    "hh-40": {"source": "hh_rlhf", "users": 100, "pairs_per_user": 40, "heldout_pairs": 8},
    "hh-16": {"source": "hh_rlhf", "users": 250, "pairs_per_user": 16, "heldout_pairs": 4},
    "synth-16": {"source": "synth", "users": 120, "pairs_per_user": 16, "heldout_pairs": 4},
    "synth-4": {"source": "synth", "users": 120, "pairs_per_user": 4, "heldout_pairs": 2},
}


def run_config(setting: dict[str, Any], model: dict[str, Any], seed: int, steps: int) -> Any:
    return config_from_dict(
        {
            "seed": seed,
            "data": dict(setting) | {"unseen_share": 0.2},
            "embedding": {"cache_dir": CACHE},
            "model": model,
            "train": {"steps": steps},
        }
    )


@dataclasses.dataclass
class Pooled:
    """Per-user sums of correct pairs and pair counts, pooled over folds."""

    correct: dict[int, float] = dataclasses.field(default_factory=dict)
    count: dict[int, int] = dataclasses.field(default_factory=dict)

    def add(self, scores: Any) -> None:
        for user, c in zip(scores.users.tolist(), scores.correct):
            self.correct[user] = self.correct.get(user, 0.0) + float(c.sum())
            self.count[user] = self.count.get(user, 0) + int(c.size)

    def accuracy(self) -> float | None:
        n = sum(self.count.values())
        return sum(self.correct.values()) / n if n else None


def paired_difference(
    model: Pooled, base: Pooled, rng: np.random.Generator
) -> dict[str, float] | None:
    users = sorted(set(model.count) & set(base.count))
    if not users:
        return None
    diff = np.array([model.correct[u] - base.correct[u] for u in users])
    n = np.array([model.count[u] for u in users], dtype=np.float64)
    if n.sum() == 0:
        return None
    idx = rng.integers(0, len(users), size=(BOOTSTRAP, len(users)))
    boot = diff[idx].sum(1) / n[idx].sum(1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {"diff": float(diff.sum() / n.sum()), "ci_low": float(lo), "ci_high": float(hi)}


def evaluate_setting(
    name: str,
    setting: dict[str, Any],
    models: list[dict[str, Any]],
    *,
    seed: int,
    steps: int,
    folds: list[int],
) -> dict[str, Any]:
    t0 = time.perf_counter()
    pairs, _, info = load_dataset(run_config(setting, {"kind": "btl"}, seed, steps))
    load_s = time.perf_counter() - t0
    print(
        f"[{name}] {pairs.n_pairs} pairs, {len(pairs.user_ids)} users, embedding "
        f"{info['embed_seconds']} s for {info['cache_misses']} new texts "
        f"({info['cache_hits']} cached)",
        flush=True,
    )
    out: dict[str, Any] = {
        "pairs": pairs.n_pairs,
        "users": len(pairs.user_ids),
        "types": list(pairs.type_names),
        "embed_seconds": info["embed_seconds"],
        "embed_new_texts": info["cache_misses"],
        "embed_cached_texts": info["cache_hits"],
        "load_seconds": round(load_s, 2),
        "folds": folds,
        "steps": steps,
        "models": {},
    }
    pooled: dict[str, dict[str, Pooled]] = {}
    for spec in models:
        label = spec["kind"] + (f"/{spec['conditioning']}" if "conditioning" in spec else "")
        seen, unseen, contro = Pooled(), Pooled(), Pooled()
        mis, kls, actives, collapses, secs = [], [], [], [], []
        for fold in folds:
            split = kfold_users(
                pairs, FOLDS, fold, heldout_pairs=setting["heldout_pairs"], seed=seed
            )
            cfg = run_config(setting, spec, seed, steps)
            model, tinfo = train_central(cfg, pairs, split, progress=False)
            s_seen = score_users(model, pairs, split.seen)
            s_unseen = score_users(model, pairs, split.unseen)
            seen.add(s_seen)
            unseen.add(s_unseen)
            both = merge_scores([s_seen, s_unseen])
            contro.add(
                dataclasses.replace(
                    both, correct=[c[f == 1] for c, f in zip(both.correct, both.controversial)]
                )
            )
            lat = latent_diagnostics(model, both, seed=seed)
            mis.append(lat["mutual_information_bits"])
            kls.append(lat["mean_kl"])
            actives.append(lat["active_components"])
            collapses.append(lat["posterior_collapse"])
            secs.append(tinfo["seconds"])
        pooled[label] = {"seen": seen, "unseen": unseen, "controversial": contro}
        out["models"][label] = {
            "accuracy": {
                "seen_users": seen.accuracy(),
                "unseen_users": unseen.accuracy(),
                "controversial": contro.accuracy(),
            },
            "latent": {
                "mutual_information_bits": _mean(mis),
                "mean_kl": _mean(kls),
                "active_components": actives,
                "posterior_collapse": collapses,
            },
            "train_seconds_per_fold": round(float(np.mean(secs)), 2),
        }
        acc = out["models"][label]["accuracy"]
        print(
            f"  {label:28s} seen {_fmt(acc['seen_users'])} unseen {_fmt(acc['unseen_users'])} "
            f"controversial {_fmt(acc['controversial'])} MI {_fmt(_mean(mis))} "
            f"({np.mean(secs):.1f} s/fold)",
            flush=True,
        )
    rng = np.random.default_rng(seed)
    base_key = next((k for k in pooled if k.split("/")[0] == "btl"), None)
    oracle_key = next((k for k in pooled if k.split("/")[0] == "oracle"), None)
    for label, groups in pooled.items():
        entry = out["models"][label]
        entry["vs_btl"] = {}
        entry["gap_closed"] = {}
        for group in ("seen", "unseen", "controversial"):
            if base_key is not None:
                entry["vs_btl"][group] = paired_difference(
                    groups[group], pooled[base_key][group], rng
                )
            if base_key is not None and oracle_key is not None:
                b = pooled[base_key][group].accuracy()
                o = pooled[oracle_key][group].accuracy()
                m = groups[group].accuracy()
                entry["gap_closed"][group] = (
                    None if None in (b, o, m) or abs(o - b) < 1e-9 else (m - b) / (o - b)
                )
    return out


def _mean(values: list[Any]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def _fmt(x: float | None) -> str:
    return "  n/a" if x is None else f"{x:.3f}"


def print_table(name: str, res: dict[str, Any]) -> None:
    print(
        f"\n== {name}: {res['pairs']} pairs, {res['users']} users, folds {res['folds']}, "
        f"{res['steps']} steps; embedding {res['embed_seconds']} s =="
    )
    head = (
        f"{'model':28s} {'seen':>6s} {'unseen':>7s} {'contro':>7s}  {'unseen - BTL [95% CI]':>26s}"
        f"  {'gap closed':>10s} {'MI bits':>8s}"
    )
    print(head)
    for label, m in res["models"].items():
        acc = m["accuracy"]
        d = m.get("vs_btl", {}).get("unseen")
        ci = "" if d is None else f"{d['diff']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"
        gap = m.get("gap_closed", {}).get("unseen")
        print(
            f"{label:28s} {_fmt(acc['seen_users']):>6s} {_fmt(acc['unseen_users']):>7s} "
            f"{_fmt(acc['controversial']):>7s}  {ci:>26s}  {_fmt(gap):>10s} "
            f"{_fmt(m['latent']['mutual_information_bits']):>8s}"
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0, help="user split / training seed")
    ap.add_argument("--quick", action="store_true", help="1 fold, 300 steps, fewer settings")
    ap.add_argument("--steps", type=int, default=0, help="training steps (default 600; quick 300)")
    ap.add_argument("--out", default=str(RESULTS / "personalization.json"))
    args = ap.parse_args(argv)
    steps = args.steps or (300 if args.quick else 600)
    folds = [0] if args.quick else list(range(FOLDS))
    names = list(SETTINGS)
    if not os.environ.get(HH_RLHF_ENV):
        print(f"${HH_RLHF_ENV} is not set: skipping the HH-RLHF settings", flush=True)
        names = [n for n in names if not n.startswith("hh")]
    if args.quick:
        names = [n for n in names if n in ("hh-40", "synth-16")]
    results: dict[str, Any] = {
        "seed": args.seed,
        "quick": args.quick,
        "steps": steps,
        "settings": {},
        "conditioning": None,
    }
    t0 = time.perf_counter()
    for name in names:
        models = [{"kind": k} for k in MODELS]
        results["settings"][name] = evaluate_setting(
            name, SETTINGS[name], models, seed=args.seed, steps=steps, folds=folds
        )
    cond_setting = "hh-40" if "hh-40" in names else "synth-16"
    models = [{"kind": "btl"}] + [
        {"kind": k, "conditioning": c} for k in ("fedvpa-gp", "oracle") for c in CONDITIONINGS
    ]
    results["conditioning"] = {
        "setting": cond_setting,
        **evaluate_setting(
            f"{cond_setting} conditioning",
            SETTINGS[cond_setting],
            models,
            seed=args.seed,
            steps=steps,
            folds=folds,
        ),
    }
    results["seconds"] = round(time.perf_counter() - t0, 1)
    for name, res in results["settings"].items():
        print_table(name, res)
    print_table(f"conditioning on {cond_setting}", results["conditioning"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {out} ({results['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
