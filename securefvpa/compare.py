"""A run against non-private FedBTL on the same data: paired accuracy differences with CIs.

The question every private run must answer is whether personalization survived the privacy: does
the model beat the best *non-personalized* model trained without any privacy on the same users?
:func:`compare_with_fedbtl` trains that reference — FedBTL (one Bradley–Terry reward model for
everyone), no DP, no secure aggregation, in process, with the run's own data, seed, partition
and rounds — and compares the two client by client.

Evaluation is the same code in both runs (held-out pairs of seen users, role ``"train"``, and
the pairs of unseen users, role ``"unseen"``); under DP the counts come from the nodes' own
logs, which the operator of a simulation reads: the server never saw them. The difference is
paired per user (same users, same pairs: checked) and its 95 % interval is a percentile
bootstrap over users (Efron & Tibshirani 1993, ch. 13): a user's pairs share one latent z, so
resampling users rather than pairs keeps the within-user correlation in the interval. Each
node keeps its users' own (pairs, correct) in its evaluation log, which never leaves it; runs
without those logs fall back to resampling clients. Statistics, not a security path: numpy's
seeded generator is fine here.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from securefvpa.config import RunConfig, config_to_dict
from securefvpa.errors import RunDirError
from securefvpa.fsutil import atomic_write_text
from securefvpa.rundir import RunDir

log = logging.getLogger("securefvpa.compare")

BASELINE_DIR = "baseline-fedbtl"
COMPARISON_FILE = "comparison.json"
ROLES = {"unseen": "unseen users", "train": "seen users (held-out pairs)"}


@dataclass(frozen=True, kw_only=True)
class EvalUnit:
    """One user's (or, without per-user logs, one client's: ``user = -1``) evaluation at the
    last evaluated round: held-out pairs and correct ones."""

    partition_id: int
    user: int
    role: str
    pairs: int
    correct: float


@dataclass(frozen=True, kw_only=True)
class PairedDifference:
    """Accuracy of the run minus the baseline's on the same clients' pairs of one role.

    ``low``/``high``: 95 % percentile-bootstrap interval over ``units`` (users, or clients
    when the runs kept no per-user logs; ``resamples`` draws). ``beats``: the whole interval is
    above 0.
    """

    role: str
    accuracy: float
    baseline_accuracy: float
    difference: float
    low: float
    high: float
    clients: int
    units: int
    unit: str
    pairs: int
    resamples: int

    @property
    def beats(self) -> bool:
        return self.low > 0.0


def client_counts(run_dir: str | Path, metrics: dict[str, Any]) -> list[EvalUnit]:
    """Every user's counts at the last evaluation, from the nodes' own logs
    (``nodes/eval_*.jsonl``); for runs without them, every client's from the server's metrics.

    Raises :class:`RunDirError` when the run has no evaluation at all or a log is unreadable.
    """
    last: dict[int, list[EvalUnit]] = {}
    for path in sorted((Path(run_dir) / "nodes").glob("eval_*.jsonl")):
        try:
            rows = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x]
            row = max(rows, key=lambda x: x["round"])
            pid, role = int(row["partition_id"]), str(row["role"])
            last[pid] = [
                EvalUnit(partition_id=pid, user=i, role=role, pairs=int(n), correct=float(c))
                for i, (n, c) in enumerate(row["per_user"])
            ]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RunDirError(f"evaluation log {str(path)!r} is unreadable: {exc!r}") from None
    if last:
        return [u for k in sorted(last) for u in last[k]]
    ev: dict[str, Any] = next(
        (r["eval"] for r in reversed(metrics.get("rounds", [])) if r.get("eval")), {}
    )
    if "per_client" not in ev:
        raise RunDirError(f"run {str(run_dir)!r} has no evaluation to compare")
    return sorted(
        (EvalUnit(partition_id=int(p), user=-1, role=str(r), pairs=int(n), correct=float(c))
         for p, r, n, c in ev["per_client"]),
        key=lambda c: c.partition_id,
    )  # fmt: skip


def paired_difference(
    run: list[EvalUnit],
    baseline: list[EvalUnit],
    *,
    role: str,
    resamples: int = 2000,
    seed: int = 0,
) -> PairedDifference:
    """Pooled accuracy of ``run`` minus ``baseline`` on ``role``'s units, with a percentile
    bootstrap interval over the units (users, or clients). Raises :class:`RunDirError` when the
    two runs were not evaluated on the same units with the same numbers of pairs."""
    a = [c for c in run if c.role == role]
    b = [c for c in baseline if c.role == role]
    key = [(c.partition_id, c.user, c.pairs) for c in a]
    if not a or key != [(c.partition_id, c.user, c.pairs) for c in b]:
        raise RunDirError(
            f"the run and its baseline were not evaluated on the same {role!r} units and pairs"
        )
    n = np.array([c.pairs for c in a], dtype=float)
    x = np.array([c.correct for c in a])
    y = np.array([c.correct for c in b])
    idx = np.random.default_rng(seed).integers(0, len(a), size=(resamples, len(a)))
    boots = (x[idx].sum(1) - y[idx].sum(1)) / n[idx].sum(1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return PairedDifference(
        role=role,
        accuracy=float(x.sum() / n.sum()),
        baseline_accuracy=float(y.sum() / n.sum()),
        difference=float((x.sum() - y.sum()) / n.sum()),
        low=float(lo),
        high=float(hi),
        clients=len({c.partition_id for c in a}),
        units=len(a),
        unit="client" if a[0].user < 0 else "user",
        pairs=int(n.sum()),
        resamples=resamples,
    )


def baseline_config(cfg: RunConfig) -> dict[str, Any]:
    """The reference: FedBTL with the default model settings, no DP, no secure aggregation,
    in process — the same seed, data, partition (users per client, type mix) and rounds."""
    raw = config_to_dict(cfg)
    raw["run_id"] = f"{cfg.run_id or 'run'}-{BASELINE_DIR}"
    raw["model"] = {"kind": "btl"}
    raw["privacy"] = {"enabled": False}
    raw["secagg"] = {"enabled": False}
    raw["federation"] = dict(raw["federation"], mode="inprocess")
    return raw


def compare_with_fedbtl(
    cfg: RunConfig, run_dir: str | Path, metrics: dict[str, Any], *, resume: bool = False
) -> dict[str, Any]:
    """Train the FedBTL reference into ``RUN_DIR/baseline-fedbtl`` (reused when it finished
    before, e.g. on ``--resume``), compare, write ``RUN_DIR/comparison.json`` and return it."""
    from securefvpa.run import evaluated_metrics, run

    rd = Path(run_dir)
    base_dir = rd / BASELINE_DIR
    if resume and RunDir(base_dir).metrics.is_file():
        base_metrics = json.loads(RunDir(base_dir).metrics.read_text(encoding="utf-8"))
    else:
        log.info("training the reference: non-private FedBTL on the same data and rounds")
        base_metrics = run(baseline_config(cfg), base_dir, resume=resume).metrics
    own = client_counts(rd, evaluated_metrics(rd, metrics))
    ref = client_counts(base_dir, base_metrics)
    rows = [
        asdict(paired_difference(own, ref, role=role)) for role in ROLES
        if any(c.role == role for c in own)
    ]  # fmt: skip
    out = {
        "model": cfg.model.kind,
        "baseline": {
            "model": "btl",
            "run_dir": str(base_dir),
            "source": "non-private FedBTL, same data, partition and rounds, trained in process",
        },
        "interval": "95% percentile bootstrap over the units (users, or clients), paired",
        "differences": rows,
    }
    atomic_write_text(rd / COMPARISON_FILE, json.dumps(out, indent=2))
    return out


def summary_lines(comparison: dict[str, Any]) -> list[str]:
    """Human lines for the end of a run: one per role, and whether the run beat the baseline
    (on unseen users when there are any: personalization from a few pairs of a new user)."""
    lines = []
    for r in comparison["differences"]:
        lines.append(
            f"{ROLES.get(r['role'], r['role'])}: {comparison['model']} {r['accuracy']:.3f} vs "
            f"non-private FedBTL {r['baseline_accuracy']:.3f}: {100 * r['difference']:+.1f} "
            f"points (95% CI {100 * r['low']:+.1f} to {100 * r['high']:+.1f} over "
            f"{r['units']} {r['unit']}s, {r['pairs']} pairs)"
        )
    rows = {r["role"]: r for r in comparison["differences"]}
    head = rows.get("unseen") or rows.get("train")
    if head is not None:
        verdict = (
            "yes" if head["low"] > 0 else "no (the interval includes 0)"
            if head["high"] > 0 else "no"
        )  # fmt: skip
        lines.append(f"beats non-private FedBTL on {ROLES[head['role']]}: {verdict}")
    return lines
