"""Personalization on real Polis opinion groups, per conversation.

Two sections:

- ``table SWEEP_DIR``: the per-conversation table of a finished ``securefvpa sweep`` over the
  four models (``examples/polis_sweep.toml``): unseen-user accuracy of FedBTL / FedVPL /
  FedVPA-GP / oracle with 95 % Student t intervals over seeds, the FedBTL→oracle gap closed
  (of the seed means), and the MI (bits) and active components of each latent model *within*
  the conversation. Everything comes from the sweep's own ``results*.csv`` files.

      python benchmarks/polis.py table runs/polis_sweep --json benchmarks/results/polis_sweep.json

- ``central``: a fast ablation screen (central training, the harness of ``securefvpa run`` with
  ``federation.mode = "central"``) of model/training settings, each over several seeds. It
  reports, besides the sweep's numbers, what the sweep cannot see: whether the latent *mean*
  separates a conversation's groups even when the component assignment does not (k-means MI of
  the posterior means and a cross-validated linear probe, balanced accuracy), and the same
  probe on the frozen features alone (the mean chosen − rejected embedding of the user's
  context pairs: how much group information 12 pairs carry at all).

      python benchmarks/polis.py central --steps 2400 --seeds 0 1 \\
          --variant base: --variant k2:model.components=2

Within-conversation MI is the plug-in MI between inferred cell (argmax q(c | ctx)) and Polis
group over the conversation's users (seen and unseen, as ``rounds.evaluation.group_metrics``);
"mean MI" averages the 11 conversations with equal weight. Writes JSON under
``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
MODELS = ("btl", "vpl", "fedvpa-gp", "oracle")


# ----------------------------------------------------------------------------------------------
# table: per-conversation summary of a sweep
# ----------------------------------------------------------------------------------------------


def _t_interval(values: list[float]) -> tuple[float, float | None]:
    """Mean and half-width of the 95 % Student t interval (None for one value)."""
    from scipy import stats

    n = len(values)
    mean = float(np.mean(values))
    if n < 2:
        return mean, None
    half = float(stats.t.ppf(0.975, n - 1) * np.std(values, ddof=1) / math.sqrt(n))
    return mean, half


def _num(x: str) -> float | None:
    return None if x in ("", "None") else float(x)


def sweep_table(sweep_dir: Path) -> dict[str, Any]:
    """Per conversation and overall: model -> seed values, means and t intervals."""
    with (sweep_dir / "results_by_group.csv").open(encoding="utf-8") as fh:
        groups = list(csv.DictReader(fh))
    with (sweep_dir / "results.csv").open(encoding="utf-8") as fh:
        overall = list(csv.DictReader(fh))
    out: dict[str, Any] = {"conversations": {}, "overall": {}}
    rows = [(r["group"], r) for r in groups] + [("ALL", r) for r in overall]
    for name, r in rows:
        slot = out["overall"] if name == "ALL" else out["conversations"].setdefault(name, {})
        m = slot.setdefault(r["model"], {"seeds": [], "acc": [], "mi": [], "active": []})
        m["seeds"].append(int(r["seed"]))
        m["acc"].append(_num(r["accuracy_unseen"]))
        m["mi"].append(_num(r["mi_bits"]))
        m["active"].append(_num(r["active_components"]))
        if name != "ALL":
            slot.setdefault("_users", int(r["group_users"]))
            slot.setdefault("_pairs_unseen", int(r["pairs_unseen"] or 0))
    for slot in [out["overall"], *out["conversations"].values()]:
        for model, m in list(slot.items()):
            if model.startswith("_"):
                continue
            for key in ("acc", "mi", "active"):
                vals = [v for v in m[key] if v is not None]
                m[f"{key}_mean"], m[f"{key}_ci"] = _t_interval(vals) if vals else (None, None)
        if {"btl", "oracle"} <= set(slot):
            btl, orc = slot["btl"]["acc_mean"], slot["oracle"]["acc_mean"]
            for model in ("vpl", "fedvpa-gp"):
                if model in slot and orc is not None and btl is not None and orc > btl:
                    slot[model]["gap_closed"] = (slot[model]["acc_mean"] - btl) / (orc - btl)
    return out


def _fmt(mean: float | None, ci: float | None, digits: int = 3) -> str:
    if mean is None:
        return "-"
    return f"{mean:.{digits}f}" + (f"±{ci:.{digits}f}" if ci is not None else "")


def print_sweep_table(table: dict[str, Any]) -> None:
    head = (f"{'conversation':34s} {'users':>5s} {'unseen':>6s} {'BTL':>12s} {'VPL':>12s} "
            f"{'FedVPA-GP':>12s} {'oracle':>12s} {'gap VPL':>7s} {'gap GP':>7s} "
            f"{'MI VPL':>10s} {'MI GP':>10s} {'act GP':>6s}")
    print(head)
    items = sorted(table["conversations"].items()) + [("ALL (pooled)", table["overall"])]
    for name, slot in items:
        def acc(model: str, slot: dict[str, Any] = slot) -> str:
            m = slot.get(model)
            return _fmt(m["acc_mean"], m["acc_ci"]) if m else "-"

        def gap(model: str, slot: dict[str, Any] = slot) -> str:
            g = slot.get(model, {}).get("gap_closed")
            return "-" if g is None else f"{100 * g:.0f}%"

        def mi(model: str, slot: dict[str, Any] = slot) -> str:
            m = slot.get(model)
            return _fmt(m["mi_mean"], m["mi_ci"], 2) if m else "-"

        gp = slot.get("fedvpa-gp")
        act = f"{gp['active_mean']:.1f}" if gp and gp["active_mean"] is not None else "-"
        print(f"{name[:34]:34s} {slot.get('_users', ''):>5} {slot.get('_pairs_unseen', ''):>6} "
              f"{acc('btl'):>12s} {acc('vpl'):>12s} {acc('fedvpa-gp'):>12s} {acc('oracle'):>12s} "
              f"{gap('vpl'):>7s} {gap('fedvpa-gp'):>7s} {mi('vpl'):>10s} {mi('fedvpa-gp'):>10s} "
              f"{act:>6s}")
    conv = table["conversations"].values()
    for model in ("vpl", "fedvpa-gp"):
        mis = [s[model]["mi_mean"] for s in conv if model in s and s[model]["mi_mean"] is not None]
        gaps = [s[model]["gap_closed"] for s in conv if s.get(model, {}).get("gap_closed") is not None]
        if mis:
            print(f"{model}: mean within-conversation MI {np.mean(mis):.3f} bits over {len(mis)} "
                  f"conversations; gap closed >= 50 % in {sum(g >= 0.5 for g in gaps)} of "
                  f"{len(gaps)} conversations where the oracle beats BTL")


# ----------------------------------------------------------------------------------------------
# central: ablation screen with latent diagnostics
# ----------------------------------------------------------------------------------------------


def _probe(x: np.ndarray, y: np.ndarray, seed: int) -> float | None:
    """5-fold cross-validated balanced accuracy of a logistic-regression probe x -> y."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    _, counts = np.unique(y, return_counts=True)
    if len(counts) < 2 or counts.min() < 5:
        return None
    cv = StratifiedKFold(5, shuffle=True, random_state=seed)
    clf = LogisticRegression(max_iter=2000, class_weight="balanced")
    return float(cross_val_score(clf, x, y, cv=cv, scoring="balanced_accuracy").mean())


def conversation_diagnostics(model: Any, pairs: Any, split: Any, *, seed: int) -> dict[str, Any]:
    """Per conversation: unseen accuracy, argmax MI / active components, k-means MI and probe
    of posterior means, probe of the frozen features (all users of the conversation)."""
    from sklearn.cluster import KMeans

    from securefvpa.models import metrics
    from securefvpa.train.loop import score_users

    users = list(split.seen) + list(split.unseen)
    role = np.array(["seen"] * len(split.seen) + ["unseen"] * len(split.unseen))
    scores = score_users(model, pairs, users)
    types = scores.types
    conv = np.array([pairs.type_names[t].rsplit("/", 1)[0] for t in types])
    raw = np.stack([(pairs.chosen[u.train_rows] - pairs.rejected[u.train_rows]).mean(0)
                    for u in users])
    out: dict[str, Any] = {}
    for c in sorted(set(conv)):
        idx = np.nonzero(conv == c)[0]
        t = types[idx]
        groups = len(set(t.tolist()))
        unseen = [scores.correct[i] for i in idx if role[i] == "unseen"]
        acc = float(np.concatenate(unseen).mean()) if unseen else None
        row: dict[str, Any] = {"users": int(idx.size), "groups": groups, "accuracy_unseen": acc,
                               "pairs_unseen": int(sum(u.size for u in unseen)),
                               "probe_raw": _probe(raw[idx], t, seed)}
        if scores.comp_probs is not None:
            cells = scores.comp_probs[idx].argmax(1)
            row["mi_bits"] = metrics.mutual_information_bits(cells, t)
            row["active_components"] = metrics.active_components(cells)
        if scores.mu is not None:
            mu = scores.mu[idx]
            km = (KMeans(groups, n_init=10, random_state=seed).fit_predict(mu)
                  if idx.size > groups else np.zeros(idx.size, np.int64))
            row["kmeans_mi_bits"] = metrics.mutual_information_bits(km, t)
            row["probe_mu"] = _probe(mu, t, seed)
        out[c] = row
    allc = np.concatenate([scores.correct[i] for i in range(len(users)) if role[i] == "unseen"])
    summary: dict[str, Any] = {"accuracy_unseen": float(allc.mean()), "pairs_unseen": int(allc.size)}
    for key in ("mi_bits", "active_components", "kmeans_mi_bits", "probe_mu", "probe_raw"):
        vals = [r[key] for r in out.values() if r.get(key) is not None]
        summary[f"mean_{key}"] = float(np.mean(vals)) if vals else None
    if scores.comp_probs is not None:
        summary["global_component_users"] = np.bincount(
            scores.comp_probs.argmax(1), minlength=scores.comp_probs.shape[1]).tolist()
    return {"summary": summary, "conversations": out}


def _variant(text: str) -> tuple[str, dict[str, Any]]:
    """``name:key=value,key=value`` (values parsed as TOML scalars)."""
    import tomllib

    name, _, rest = text.partition(":")
    sets: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        try:
            sets[key.strip()] = tomllib.loads(f"v = {value.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            raise SystemExit(
                f"--variant {text!r}: the value of {key.strip()!r} is not a TOML value: "
                f"{value.strip()!r} (strings need quotes, e.g. model.kind=\"btl\")"
            ) from None
    return name, sets


def run_central(args: argparse.Namespace) -> dict[str, Any]:
    from securefvpa.config import load_config
    from securefvpa.data.load import load_dataset
    from securefvpa.train.central import train_central

    variants = [_variant(v) for v in args.variant] or [("base", {})]
    results: dict[str, Any] = {"config": args.config, "steps": args.steps, "seeds": args.seeds,
                               "variants": {}}
    data_cache: dict[int, Any] = {}
    for seed in args.seeds:
        for name, sets in variants:
            overrides = {"seed": seed, "train.steps": args.steps, **sets}
            cfg = load_config(args.config, overrides=overrides)
            if seed not in data_cache:
                data_cache.clear()
                data_cache[seed] = load_dataset(cfg)[:2]
            pairs, split = data_cache[seed]
            t0 = time.perf_counter()
            model, _ = train_central(cfg, pairs, split, progress=False)
            diag = conversation_diagnostics(model, pairs, split, seed=seed)
            diag["seconds"] = time.perf_counter() - t0
            diag["overrides"] = sets
            results["variants"].setdefault(name, {})[str(seed)] = diag
            s = diag["summary"]
            print(f"{name:24s} seed {seed}  unseen {s['accuracy_unseen']:.3f}  "
                  f"MI {s['mean_mi_bits'] if s['mean_mi_bits'] is not None else float('nan'):.3f}  "
                  f"act {s['mean_active_components'] or 0:.1f}  "
                  f"kmMI {s['mean_kmeans_mi_bits'] if s['mean_kmeans_mi_bits'] is not None else float('nan'):.3f}  "
                  f"probe_mu {s['mean_probe_mu'] or float('nan'):.3f}  "
                  f"probe_raw {s['mean_probe_raw'] or float('nan'):.3f}  "
                  f"comps {s.get('global_component_users')}  {diag['seconds']:.0f} s", flush=True)
    print()
    print(f"{'variant':24s} {'unseen acc':>16s} {'mean MI (bits)':>16s} {'active':>6s} "
          f"{'kmeans MI':>16s} {'probe mu':>16s}")
    for name, per_seed in results["variants"].items():
        ss = [d["summary"] for d in per_seed.values()]

        def col(key: str, digits: int = 3, ss: list[Any] = ss) -> str:
            vals = [s[key] for s in ss if s.get(key) is not None]
            return _fmt(*_t_interval(vals), digits) if vals else "-"

        print(f"{name:24s} {col('accuracy_unseen'):>16s} {col('mean_mi_bits'):>16s} "
              f"{col('mean_active_components', 1):>6s} {col('mean_kmeans_mi_bits'):>16s} "
              f"{col('mean_probe_mu'):>16s}")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="section", required=True)
    t = sub.add_parser("table", help="per-conversation table of a finished Polis sweep")
    t.add_argument("sweep_dir", type=Path)
    t.add_argument("--json", type=Path, default=RESULTS / "polis_sweep.json")
    c = sub.add_parser("central", help="central ablation screen with latent diagnostics")
    c.add_argument("--config", default=str(REPO / "examples" / "polis_central.toml"))
    c.add_argument("--steps", type=int, default=2400)
    c.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    c.add_argument("--variant", action="append", default=[],
                   help="name:key=value,... (dotted run-config keys); repeatable")
    c.add_argument("--json", type=Path, default=RESULTS / "polis_central.json")
    args = parser.parse_args(argv)
    os.environ.setdefault("SECUREFVPA_POLIS_DIR", str(REPO.parent / "shared" / "data" / "polis"))
    if args.section == "table":
        table = sweep_table(args.sweep_dir)
        print_sweep_table(table)
        result: dict[str, Any] = {"sweep_dir": str(args.sweep_dir), **table}
    else:
        result = run_central(args)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2, default=float), encoding="utf-8")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
