"""``securefvpa audit CONFIG --out DIR``: a one-run canary audit of the private federated run.

What runs (nothing is simulated or replaced):

1. the run's real data (``load_dataset``) plus m canaries (:mod:`securefvpa.audit.canaries`),
   embedded by the same frozen encoder and cache, each in one seen user's train rows, trained in
   its audited orientation when a member and flipped otherwise (replace-one neighbours);
2. the run's client partitions (``fl.partition.make_partitions``) and, per round, the
   production client sampling rule, budget guard and client step: every sampled client runs
   ``train.private.private_train_steps`` (Opacus per-episode clipping, CSPRNG Poisson sampling
   and noise) with the production DP settings (sigma from ``dp_plan.resolve_sigma`` at the
   run's ``resolve_delta``), seeded exactly like ``train.client.local_train_round``, and the
   server takes the weighted FedAvg ``theta += sum(w * delta) / sum(w)`` of ``server_app``.
   The federation is run in-process (no Flower transport, no secure aggregation: the summed
   update is the same, and SecAgg's quantisation is post-processing of each client's output);
3. scores: the final global model's Bradley–Terry margin r(chosen) - r(rejected) of each canary
   in its audited orientation, conditioned on the holder's real train pairs ("user") or on an
   empty context. For a BT loss this equals the white-box loss difference
   ``loss(flipped) - loss(audited)``, so it already is the log-likelihood-ratio score;
4. bounds: the one-run lower bound (Steinke, Nasr & Jagielski 2023) over a fixed ``k_grid``
   with Bonferroni (``scores.one_run_audit_grid``) — this decides ``passed`` — and an
   indicative Clopper–Pearson bound (Jagielski et al. 2020) on members vs non-members
   (threshold chosen on a random half). The CP binomial model assumes independent trials, which
   canaries sharing one training run are not, so CP here is not a valid confidence statement;
5. the claim: max over training clients of epsilon(events, delta) from
   ``securefvpa.privacy.accountant`` for the *configured* sigma, whatever ``audit.inject`` did
   to training. ``passed`` is False when the one-run bound exceeds the claim.

Writes ``OUT/audit_report.json`` and ``OUT/audit.html`` (and links the audit from a privacy
``report.html`` in OUT or ``audit.run_dir`` when there is one).
"""

from __future__ import annotations

import dataclasses
import html
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from securefvpa.audit import scores as audit_scores
from securefvpa.audit.canaries import (
    CanaryData,
    draw_design,
    embed_canaries,
    insert_canaries,
)
from securefvpa.audit.settings import AuditSettings, load_audit_config
from securefvpa.audit.stats import ONE_RUN
from securefvpa.config import RunConfig, config_hash
from securefvpa.errors import ConfigError

log = logging.getLogger("securefvpa.audit")

REPORT_SCHEMA = "securefvpa.audit_report/1"
REPORT_JSON = "audit_report.json"
REPORT_HTML = "audit.html"
_SECTION_START = "<!-- securefvpa-audit:start -->"
_SECTION_END = "<!-- securefvpa-audit:end -->"
FEDERATION_NOTE = (
    "in-process FedAvg over the production client DP-SGD step "
    "(securefvpa.train.private.private_train_steps, production DPSettings, server_app sampling "
    "rule and weighting); no Flower transport, no secure aggregation"
)
CP_NOTE = (
    "indicative only: Clopper-Pearson assumes independent trials, but all canaries share one "
    "training run; the one-run bound is the valid one and alone decides 'passed'"
)


def _train_dp(sigma: float, cfg: RunConfig, inject: str) -> Any:
    from securefvpa.train.private import DPSettings

    p = cfg.privacy
    if inject == "no_noise":
        return DPSettings(0.0, p.clip, p.sample_rate, p.grad_sample_mode)
    if inject == "no_clip":
        big = 1e6  # clipping never binds; noise std sigma * clip kept as configured
        return DPSettings(sigma * p.clip / big, big, p.sample_rate, p.grad_sample_mode)
    return DPSettings(sigma, p.clip, p.sample_rate, p.grad_sample_mode)


def _sample(cfg: RunConfig, rnd: int, eligible: list[int]) -> list[int]:
    """``ServerLoop.sample`` of ``fl.server_app``: same count and same seeded draw."""
    fed = cfg.federation
    if len(eligible) < fed.min_fit_clients:
        return []
    k = min(len(eligible), max(fed.min_fit_clients, math.ceil(fed.fraction_fit * len(eligible))))
    rng = np.random.default_rng([cfg.seed, rnd, 0x5A])
    return [eligible[i] for i in sorted(rng.choice(len(eligible), size=k, replace=False))]


def train_federated(cfg: RunConfig, data: CanaryData, inject: str) -> dict[str, Any]:
    """Run the private federation in-process; returns final params, events and statistics."""
    import torch

    from securefvpa.dp_plan import RELATION, resolve_delta, resolve_sigma
    from securefvpa.fl.partition import make_partitions
    from securefvpa.models.factory import build_model
    from securefvpa.privacy.events import DpSgdEvent
    from securefvpa.privacy.guard import BudgetGuard
    from securefvpa.train.client import client_id
    from securefvpa.train.params import load_arrays, model_to_arrays
    from securefvpa.train.private import private_train_steps

    parts = [p for p in make_partitions(data.train_pairs, data.split, cfg.federation, cfg.seed)
             if p.role == "train"]
    delta = resolve_delta(cfg, max(p.n_train_pairs for p in parts))
    sigma = resolve_sigma(cfg, delta)
    dp = _train_dp(sigma, cfg, inject)
    p, fed = cfg.privacy, cfg.federation
    guard = BudgetGuard(p.budget_epsilon, delta, p.accountant)
    n_types = max(1, len(data.train_pairs.type_names))
    dim = data.train_pairs.dim
    params = model_to_arrays(build_model(cfg.model, embed_dim=dim, n_types=n_types, seed=cfg.seed))
    events: dict[str, list[DpSgdEvent]] = {}
    exhausted: set[int] = set()
    declined = 0
    losses: list[float] = []
    start = time.perf_counter()
    for rnd in range(1, fed.rounds + 1):
        eligible = [q.partition_id for q in parts if q.partition_id not in exhausted]
        sampled = _sample(cfg, rnd, eligible)
        if not sampled:
            break
        acc = {k: np.zeros_like(v, dtype=np.float64) for k, v in params.items()}
        total_w = 0.0
        for pid in sampled:
            part = parts[pid]
            cid = client_id(pid)
            event = DpSgdEvent(cid, rnd, sigma, p.sample_rate, fed.local_steps, p.clip, RELATION)
            if not guard.check(cid, events.get(cid, []), event).allowed:
                exhausted.add(pid)
                declined += 1
                continue
            # Seeding of train.client.local_train_round (non-secret randomness only).
            seeds = np.random.SeedSequence([cfg.seed, rnd, pid, 0xC1])
            torch.manual_seed(int(seeds.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1)))
            rng = np.random.default_rng(seeds)
            model = build_model(cfg.model, embed_dim=dim, n_types=n_types, seed=cfg.seed)
            load_arrays(model, params)
            stats = private_train_steps(
                model, part.pairs, part.users, steps=fed.local_steps, train_cfg=cfg.train, dp=dp,
                rng=rng, step_offset=(rnd - 1) * fed.local_steps,
                total_steps=fed.rounds * fed.local_steps,
            )
            events.setdefault(cid, []).append(event)  # committed before the update is used
            if math.isfinite(stats.mean_loss):
                losses.append(stats.mean_loss)
            local = model_to_arrays(model)
            w = float(part.n_train_pairs)
            for k in acc:
                acc[k] += (local[k].astype(np.float64) - params[k].astype(np.float64)) * w
            total_w += w
        if total_w > 0:
            params = {k: (params[k].astype(np.float64) + acc[k] / total_w).astype(params[k].dtype)
                      for k in params}
    return {
        "params": params, "events": events, "delta": delta, "sigma": sigma, "dp": dp,
        "clients": len(parts), "declined": declined, "seconds": time.perf_counter() - start,
        "mean_local_loss": float(np.mean(losses)) if losses else None,
    }


def canary_scores(cfg: RunConfig, data: CanaryData, params: dict[str, np.ndarray],
                  context: str) -> np.ndarray:
    """BT margin of each canary (audited orientation) under the final global model."""
    from securefvpa.models.factory import build_model
    from securefvpa.train.episodes import Episode, collate
    from securefvpa.train.params import load_arrays

    model = build_model(cfg.model, embed_dim=data.audit_pairs.dim,
                        n_types=max(1, len(data.audit_pairs.type_names)), seed=cfg.seed)
    load_arrays(model, params)
    empty = np.zeros(0, dtype=np.int64)
    episodes = [
        Episode(user=u.user,
                context=np.asarray(u.train_rows, np.int64) if context == "user" else empty,
                targets=np.array([row], dtype=np.int64), type_index=int(u.type_index))
        for u, row in zip(data.canary_user, data.canary_rows)
    ]
    out = []
    for i in range(0, len(episodes), 256):
        delta = model.infer(collate(data.audit_pairs, episodes[i : i + 256]))["delta"]
        out.append(delta[:, 0].numpy().astype(np.float64))
    return np.concatenate(out)


def heldout_accuracy(cfg: RunConfig, data: CanaryData, params: dict[str, np.ndarray]) -> float:
    """Held-out pair accuracy of seen users (real pairs only, canaries never scored)."""
    from securefvpa.models.factory import build_model
    from securefvpa.train.loop import evaluate
    from securefvpa.train.params import load_arrays

    model = build_model(cfg.model, embed_dim=data.audit_pairs.dim,
                        n_types=max(1, len(data.audit_pairs.type_names)), seed=cfg.seed)
    load_arrays(model, params)
    users = list(data.canary_user)
    uniq = {u.user: u for u in users}
    res = evaluate(model, data.audit_pairs, list(uniq.values()), seed=cfg.seed)
    acc = res["accuracy"]
    return float(acc) if isinstance(acc, int | float) else float("nan")


def compute_bounds(scores: np.ndarray, membership: np.ndarray, settings: AuditSettings,
                   delta: float) -> dict[str, Any]:
    grid = settings.resolved_k_grid()
    one_run = audit_scores.one_run_audit_grid(scores, membership, k_grid=grid, delta=delta,
                                              confidence=settings.confidence)
    per_k = []
    for kp, km in grid:
        g = audit_scores.guesses_from_scores(scores, kp, km)
        r, v = audit_scores.count_guesses(g, membership)
        per_k.append({"k_plus": kp, "k_minus": km, "guesses": r, "correct": v})
    cp: dict[str, Any] | None = None
    if membership.sum() >= 2 and (~membership).sum() >= 2:
        bound = audit_scores.clopper_pearson_split(
            scores[membership], scores[~membership], delta=delta, confidence=settings.confidence,
            rng=np.random.default_rng([settings.seed, 0xC9]))
        cp = bound.to_dict() | {"validity": CP_NOTE}
    return {"one_run": one_run.to_dict(), "one_run_per_k": per_k, "clopper_pearson": cp}


def _versions() -> dict[str, str | None]:
    from securefvpa.privacy.report import software_versions

    return software_versions()


def run_audit(config_path: str | Path, out_dir: str | Path, *,
              overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the audit described by ``config_path`` (+ ``overrides``); write and return the report.

    ``report["summary"]["passed"]`` is False when the one-run epsilon lower bound exceeds the
    claimed epsilon (the CLI then exits with status 1).
    """
    from securefvpa.data.load import load_dataset
    from securefvpa.privacy.accountant import epsilon

    cfg, settings = load_audit_config(config_path, overrides)
    out = _validate_out(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    pairs, split, info = load_dataset(cfg)
    design = draw_design(settings.canaries, settings.seed, len(split.seen))
    e = cfg.embedding
    emb = embed_canaries(design, model_path=e.model_path, cache_dir=e.cache_dir,
                         max_tokens=e.max_tokens, batch_size=e.batch_size)
    data = insert_canaries(pairs, split, design, emb)
    trained = train_federated(cfg, data, settings.inject)
    scores = canary_scores(cfg, data, trained["params"], settings.score_context)
    delta = float(trained["delta"])
    per_client = {c: epsilon(ev, delta, accountant=cfg.privacy.accountant)
                  for c, ev in trained["events"].items()}
    claimed = max(per_client.values(), default=0.0)
    bounds = compute_bounds(scores, design.membership, settings, delta)
    lb = float(bounds["one_run"]["epsilon_lower_bound"])
    passed = lb <= claimed
    dp = trained["dp"]
    summary = {
        "passed": passed,
        "claimed_epsilon": claimed,
        "delta": delta,
        "epsilon_lower_bound": lb,
        "method": ONE_RUN,
        "confidence": settings.confidence,
        "inject": settings.inject,
        "canaries": design.m,
        "guesses": int(bounds["one_run"]["guesses"]),
        "correct": int(bounds["one_run"]["correct"]),
        "clopper_pearson_indicative": (bounds["clopper_pearson"] or {}).get("epsilon_lower_bound"),
    }
    margin_in = scores[design.membership]
    margin_out = scores[~design.membership]
    report = {
        "schema": REPORT_SCHEMA,
        "summary": summary,
        "claim": {
            "epsilon": claimed, "delta": delta, "accountant": cfg.privacy.accountant,
            "relation": "replace_one", "noise_multiplier": trained["sigma"],
            "sigma_source": "config" if cfg.privacy.noise_multiplier > 0 else "calibrated",
            "target_epsilon": cfg.privacy.target_epsilon, "clip": cfg.privacy.clip,
            "sample_rate": cfg.privacy.sample_rate,
            "per_client_epsilon": per_client,
        },
        "training": {
            "federation": FEDERATION_NOTE,
            "inject": settings.inject,
            "noise_multiplier_used": dp.noise_multiplier, "clip_used": dp.clip,
            "sample_rate": dp.sample_rate, "rounds": cfg.federation.rounds,
            "local_steps": cfg.federation.local_steps, "training_clients": trained["clients"],
            "declined_client_rounds": trained["declined"],
            "mean_local_loss": trained["mean_local_loss"],
            "seconds": round(trained["seconds"], 2),
            "heldout_accuracy_canary_holders": heldout_accuracy(cfg, data, trained["params"]),
            "model": cfg.model.kind,
        },
        "canaries": {
            "m": design.m, "seed": design.seed, "seen_users": len(split.seen),
            "recompute": "securefvpa.audit.canaries.draw_design(m, seed, seen_users)",
            "design": "member = trained in the audited orientation; non-member = the same pair "
                      "with chosen/rejected swapped (replace-one neighbour)",
            "texts": "securefvpa.audit.canaries.canary_records(m, seed)",
            "membership": [int(x) for x in design.membership],
            "user_of": [int(x) for x in design.user_of],
            "pair_ids": [r.pair_id for r in design.records],
        },
        "scores": {
            "kind": "bt_margin_audited_orientation",
            "context": settings.score_context,
            "values": [round(float(s), 6) for s in scores],
            "mean_member": float(margin_in.mean()) if margin_in.size else None,
            "mean_non_member": float(margin_out.mean()) if margin_out.size else None,
            "sign_accuracy": float(np.mean((scores > 0) == design.membership)),
        },
        "bounds": bounds,
        "settings": dataclasses.asdict(settings) | {"k_grid": [list(k) for k in
                                                               settings.resolved_k_grid()]},
        "seeds": {"run": cfg.seed, "canaries": settings.seed},
        "config_hash": config_hash(cfg),
        "data": {"source": info.get("source"), "records": info.get("records"),
                 "users": info.get("users")},
        "software": _versions(),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    (out / REPORT_JSON).write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    section = render_section(report)
    (out / REPORT_HTML).write_text(_page(section))
    _link_into_privacy_report(out, settings, section)
    log.info("audit: claimed eps %.3f, one-run lower bound %.3f (%d/%d correct) -> %s",
             claimed, lb, summary["correct"], summary["guesses"], "PASS" if passed else "FAIL")
    return report


def render_section(report: dict[str, Any]) -> str:
    s = report["summary"]
    e = html.escape
    rows = [
        ("result", "PASS" if s["passed"] else "FAIL (lower bound exceeds the claim)"),
        ("claimed epsilon (accountant, configured sigma)", f"{s['claimed_epsilon']:.4f}"),
        ("delta", f"{s['delta']:.3g}"),
        ("one-run epsilon lower bound", f"{s['epsilon_lower_bound']:.4f}"),
        ("confidence", f"{s['confidence']}"),
        ("canaries / guesses / correct", f"{s['canaries']} / {s['guesses']} / {s['correct']}"),
        ("inject", s["inject"]),
        ("Clopper-Pearson (indicative)", str(s["clopper_pearson_indicative"])),
        ("training", report["training"]["federation"]),
    ]
    body = "".join(f"<tr><th>{e(k)}</th><td>{e(str(v))}</td></tr>" for k, v in rows)
    return (
        f"{_SECTION_START}<section id=\"empirical-audit\"><h2>Empirical privacy audit</h2>"
        f"<p>One-run canary audit (Steinke, Nasr &amp; Jagielski 2023). {e(CP_NOTE)}.</p>"
        f"<table>{body}</table></section>{_SECTION_END}"
    )


def _page(section: str) -> str:
    return (
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>securefvpa audit</title>"
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
        "th{text-align:left;padding-right:1em}</style></head><body>"
        f"{section}</body></html>\n"
    )


def _link_into_privacy_report(out: Path, settings: AuditSettings, section: str) -> None:
    """Add (or replace) the audit section in an existing privacy ``report.html``."""
    candidates = [out / "report.html"]
    if settings.run_dir:
        candidates.append(Path(settings.run_dir) / "report.html")
    for path in candidates:
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        if _SECTION_START in text and _SECTION_END in text:
            head, rest = text.split(_SECTION_START, 1)
            text = head + section + rest.split(_SECTION_END, 1)[1]
        elif "</body>" in text:
            text = text.replace("</body>", section + "</body>", 1)
        else:
            text += section
        path.write_text(text, encoding="utf-8")


def _validate_out(out_dir: str | Path) -> Path:
    p = Path(out_dir)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"--out must be a directory. Found the file {str(p)!r}.")
    return p
