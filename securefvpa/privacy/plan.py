"""The privacy plan of a run: sigma, delta and the relation, the guard, the ledger, the report.

Glue between a run directory and the pure privacy core (``securefvpa.privacy``). Imports
neither torch nor flwr, so both the client (before and after DP-SGD) and the server (report)
use it.

- sigma: ``privacy.noise_multiplier`` when > 0, else calibrated with dp-accounting so that a
  client joining every planned round (``ceil(fraction_fit * rounds)``) reaches exactly
  ``privacy.target_epsilon`` at ``delta``; the budget guard enforces ``budget_epsilon``
  whatever the client's actual participation.
- delta: ``privacy.delta`` when > 0, else ``min(1e-5, 1 / (10 * n))`` with ``n`` the largest
  number of training pairs of a client; a delta >= 1/n is refused.
- relation: replace-one (substitution of one preference pair; see ``train.private``).
- ledger: ``privacy.ledger`` or ``RUN_DIR/privacy_ledger.sqlite``; every client appends one
  event per round it trains *before* its update leaves it, and a "declined" entry when the
  guard refuses.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from securefvpa.config import RunConfig, config_hash
from securefvpa.errors import ConfigError
from securefvpa.fsutil import atomic_write_text
from securefvpa.privacy.calibrate import calibrate_noise_multiplier
from securefvpa.privacy.events import DpSgdEvent
from securefvpa.privacy.guard import BudgetGuard, Decision
from securefvpa.privacy.ledger import Ledger

RELATION = "replace_one"
PLAN_FILE = "privacy_plan.json"


def ledger_path(cfg: RunConfig, run_dir: Path) -> Path:
    return Path(cfg.privacy.ledger) if cfg.privacy.ledger else run_dir / "privacy_ledger.sqlite"


def planned_rounds(cfg: RunConfig) -> int:
    fed = cfg.federation
    return max(1, min(fed.rounds, math.ceil(fed.fraction_fit * fed.rounds)))


def resolve_delta(cfg: RunConfig, max_train_pairs: int) -> float:
    n = max(1, max_train_pairs)
    delta = cfg.privacy.delta or min(1e-5, 1.0 / (10.0 * n))
    if delta >= 1.0 / n:
        raise ConfigError(
            f"privacy.delta must be well below 1/records: a client holds up to {n} pairs, so delta "
            f"must be < {1.0 / n:.3g}. Found {delta}."
        )
    return delta


@functools.lru_cache(maxsize=16)
def resolve_sigma(cfg: RunConfig, delta: float) -> float:
    p = cfg.privacy
    if p.noise_multiplier > 0:
        return p.noise_multiplier
    return calibrate_noise_multiplier(
        target_epsilon=p.target_epsilon,
        delta=delta,
        sample_rate=p.sample_rate,
        steps_per_round=cfg.federation.local_steps,
        rounds=planned_rounds(cfg),
        relation=RELATION,
        accountant=p.accountant,
    )


@dataclass(frozen=True)
class PrivacyPlan:
    cfg: RunConfig
    run_dir: Path
    sigma: float
    delta: float

    @classmethod
    def for_run(cls, cfg: RunConfig, run_dir: Path) -> PrivacyPlan:
        plan_file = run_dir / PLAN_FILE
        if plan_file.is_file():
            saved = json.loads(plan_file.read_text())
            if saved.get("config_hash") == config_hash(cfg):
                return cls(cfg, run_dir, float(saved["noise_multiplier"]), float(saved["delta"]))
        from securefvpa.fl.driver import read_manifest

        delta = resolve_delta(cfg, int(read_manifest(run_dir)["max_train_pairs"]))
        return cls(cfg, run_dir, resolve_sigma(cfg, delta), delta)

    def dp_settings(self) -> Any:
        from securefvpa.train.private import DPSettings

        p = self.cfg.privacy
        return DPSettings(
            noise_multiplier=self.sigma,
            clip=p.clip,
            sample_rate=p.sample_rate,
            grad_sample_mode=p.grad_sample_mode,
        )

    def event(self, client_id: str, rnd: int) -> DpSgdEvent:
        p = self.cfg.privacy
        return DpSgdEvent(
            client_id,
            rnd,
            self.sigma,
            p.sample_rate,
            self.cfg.federation.local_steps,
            p.clip,
            RELATION,
        )

    def guard(self) -> BudgetGuard:
        return BudgetGuard(self.cfg.privacy.budget_epsilon, self.delta, self.cfg.privacy.accountant)

    def check(self, client_id: str, rnd: int) -> Decision:
        """Would one more round keep ``client_id`` within budget? Reads its ledger history."""
        with Ledger(ledger_path(self.cfg, self.run_dir)) as ledger:
            history = ledger.events_by_client().get(client_id, [])
        return self.guard().check(client_id, history, self.event(client_id, rnd))

    def commit(self, client_id: str, rnd: int) -> None:
        """Append this round's DP event to the ledger (durable when this returns).

        The client's epsilon after it is the guard's ``Decision.epsilon_if_trained``: the same
        history plus this event under the same accountant and delta.
        """
        with Ledger(ledger_path(self.cfg, self.run_dir)) as ledger:
            ledger.append(self.event(client_id, rnd))

    def record_declined(self, client_id: str, rnd: int, decision: Decision) -> None:
        with Ledger(ledger_path(self.cfg, self.run_dir)) as ledger:
            ledger.append_declined(
                self.event(client_id, rnd),
                reason=decision.reason,
                epsilon_now=decision.epsilon_now,
                epsilon_if_trained=decision.epsilon_if_trained,
                budget_epsilon=self.cfg.privacy.budget_epsilon,
            )

    def summary(self) -> dict[str, Any]:
        return {
            "config_hash": config_hash(self.cfg),
            "noise_multiplier": self.sigma,
            "delta": self.delta,
            "relation": RELATION,
            "planned_rounds": planned_rounds(self.cfg),
            "target_epsilon": self.cfg.privacy.target_epsilon,
            "budget_epsilon": self.cfg.privacy.budget_epsilon,
            "sigma_source": "config" if self.cfg.privacy.noise_multiplier > 0 else "calibrated",
        }


def run_id(cfg: RunConfig) -> str:
    return cfg.run_id or f"run-{config_hash(cfg)[:12]}"


def start_ledger(cfg: RunConfig, run_dir: Path) -> PrivacyPlan:
    """Resolve sigma/delta once, save them to ``privacy_plan.json`` and open the ledger's run."""
    plan = PrivacyPlan.for_run(cfg, run_dir)
    atomic_write_text(run_dir / PLAN_FILE, json.dumps(plan.summary(), indent=2))
    with Ledger(ledger_path(cfg, run_dir)) as ledger:
        ledger.append_run_start(run_id(cfg), config_hash(cfg), plan.summary())
    return plan


def close_ledger(cfg: RunConfig, run_dir: Path, *, utility: dict[str, Any] | None) -> None:
    with Ledger(ledger_path(cfg, run_dir)) as ledger:
        ledger.append_run_end(run_id(cfg), config_hash(cfg), {"utility": utility or {}})


def write_privacy_report(
    cfg: RunConfig, run_dir: Path, *, utility: dict[str, Any] | None
) -> dict[str, str]:
    """Derive privacy_report.json + report.html from the ledger alone (plus the config)."""
    from securefvpa.privacy.report import build_report, write_report

    plan = PrivacyPlan.for_run(cfg, run_dir)
    path = ledger_path(cfg, run_dir)
    report = build_report(
        path,
        run_id=run_id(cfg),
        config_hash=config_hash(cfg),
        delta=plan.delta,
        budget_epsilon=cfg.privacy.budget_epsilon,
        accountant=cfg.privacy.accountant,
        utility=utility,
    )
    json_path, html_path = write_report(report, run_dir)
    return {"json": str(json_path), "html": str(html_path)}
