"""``securefvpa audit CONFIG --out DIR``: a one-run canary audit of the private federated run.

What runs (nothing is simulated or replaced):

1. the run's real data (``load_dataset``) plus m canaries (:mod:`securefvpa.audit.canaries`),
   embedded by the same frozen encoder and cache, each in one seen user's train rows, trained in
   its audited orientation when a member and flipped otherwise (replace-one neighbours);
2. the run directory prepared exactly as ``securefvpa run`` prepares one
   (``rounds.prepare``: partitions with the canaries, privacy plan, ledger, node configs), and
   the rounds of the production round engine (``rounds.engine.run_rounds``: client sampling,
   budget guard and ledger, ``train.client.local_train_round`` with Opacus per-episode
   clipping, CSPRNG Poisson sampling and noise, the weighted mean and the configured server
   optimiser) over the in-process transport (``rounds.local.LocalTransport``: no Flower
   messages, no secure aggregation — the summed update is the same, and SecAgg's quantisation
   is post-processing of each client's output);
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
    "the production round engine (securefvpa.rounds.engine.run_rounds: sampling, budget guard, "
    "ledger, weighted mean, configured server optimiser) over the in-process transport "
    "(securefvpa.rounds.local.LocalTransport, production client DP-SGD step); no Flower "
    "messages, no secure aggregation (same sum)"
)
CP_NOTE = (
    "indicative only: Clopper-Pearson assumes independent trials, but all canaries share one "
    "training run; the one-run bound is the valid one and alone decides 'passed'"
)


def _train_dp(plan: Any, inject: str) -> Any:
    """The DP settings used for *training*: the plan's, or an injected fault (the ledger and the
    claim always keep the plan's)."""
    from securefvpa.privacy.plan import DPSettings

    dp = plan.dp_settings()
    if inject == "no_noise":
        return dataclasses.replace(dp, noise_multiplier=0.0)
    if inject == "no_clip":
        big = 1e6  # clipping never binds; noise std sigma * clip kept as configured
        return DPSettings(
            noise_multiplier=dp.noise_multiplier * dp.clip / big,
            clip=big,
            sample_rate=dp.sample_rate,
            grad_sample_mode=dp.grad_sample_mode,
        )
    return dp


def train_federated(
    cfg: RunConfig, data: CanaryData, inject: str, work_dir: Path
) -> dict[str, Any]:
    """Run the private federation in-process through the round engine; returns final params,
    the ledger's events and statistics.

    ``work_dir`` becomes a prepared run directory (partitions with the canaries, manifest,
    privacy plan, ledger, node configs), exactly as ``securefvpa run`` prepares one; the rounds
    run over :class:`securefvpa.rounds.local.LocalTransport` (no Flower transport).
    """
    from securefvpa.privacy.ledger import Ledger
    from securefvpa.privacy.plan import load_plan
    from securefvpa.rounds.engine import run_rounds
    from securefvpa.rounds.finish import initial_parameters
    from securefvpa.rounds.prepare import prepare_local
    from securefvpa.rundir import RunDir

    if not cfg.privacy.enabled:
        raise ConfigError("the audit needs privacy.enabled = true")
    rd = RunDir(work_dir)
    for stale in (rd.default_ledger, rd.plan, rd.journal):
        stale.unlink(missing_ok=True)
    local = prepare_local(cfg, data.train_pairs, data.split, rd, data={})
    manifest = local.manifest
    plan = load_plan(cfg, rd)
    if plan is None:  # prepare_local writes it for every DP config
        raise ConfigError(f"no privacy plan in {str(rd.plan)!r} after preparing the audit run")
    start = time.perf_counter()
    result = run_rounds(
        local.transport(dp=_train_dp(plan, inject), evaluate=False),
        cfg,
        initial_params=initial_parameters(cfg, manifest),
    )
    with Ledger(plan.ledger) as ledger:
        events = ledger.events_by_client()
    return {
        "params": result.params,
        "events": events,
        "delta": plan.delta,
        "sigma": plan.noise_multiplier,
        "dp": _train_dp(plan, inject),
        "clients": manifest.train_clients,
        "declined": sum(len(r.get("declined", [])) for r in result.rounds),
        "seconds": time.perf_counter() - start,
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
        margin = model.infer(collate(data.audit_pairs, episodes[i : i + 256]))["margin"]
        out.append(margin[:, 0].numpy().astype(np.float64))
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
    trained = train_federated(cfg, data, settings.inject, out / "federation")
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
            "sigma_source": "calibrated" if cfg.privacy.calibrate_sigma else "config",
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
