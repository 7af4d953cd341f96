"""A run's privacy plan: sigma, delta and the relation, resolved once; the guard and the ledger.

Pure (imports neither torch nor flwr): the launcher resolves the plan once and writes it into
every node config; a client rebuilds it from its own node config and uses it before and after
DP-SGD; the server uses it for the report.

- sigma, two separate paths: ``privacy.noise_multiplier`` when given
  (:func:`given_noise_multiplier`), else calibrated with dp-accounting
  (:func:`calibrated_noise_multiplier`) so that a client joining every planned round
  (``ceil(fraction_fit * rounds)``) reaches exactly ``privacy.target_epsilon`` at ``delta``;
  the budget guard enforces ``budget_epsilon`` whatever the client's actual participation.
- delta: ``privacy.delta`` when given, else ``min(1e-5, 1 / (10 * n))`` with ``n`` the largest
  number of training pairs of a client; a delta >= 1/n is refused.
- relation: ``privacy.neighbouring_relation``, replace-one by default (substitution of one
  unit — a preference pair, or a user's whole profile under ``privacy.unit = "user"``; see
  ``train.private``: unit counts are public), or add/remove-one.
- distributed noise (``privacy.noise = "distributed"``): the discrete mechanism's parameters
  (grid ``gamma``, each client's share ``local_sigma``, the threshold ``t`` the noise is sized
  for) are chosen once by the launcher (``securefvpa.secagg.ddg.plan``, called from
  ``securefvpa.rounds.prepare``) and carried here as plain numbers (:class:`DistributedParams`),
  so the ledger event of a round (:class:`~securefvpa.privacy.ddg.DdgEvent`) is fixed before any
  client trains.
- ledger: every client appends one event per round attempt it trains *before* its update leaves
  it (:meth:`PrivacyPlan.commit`), and a "declined" entry when the guard refuses
  (:meth:`PrivacyPlan.authorize` raises :class:`PrivacyBudgetExhausted`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from securefvpa.config import PrivacyConfig, RunConfig, config_hash
from securefvpa.errors import ConfigError, LedgerError, PrivacyBudgetExhausted, RunDirError
from securefvpa.fsutil import atomic_write_text
from securefvpa.privacy.calibrate import calibrate_noise_multiplier
from securefvpa.privacy.ddg import DdgEvent, PrivacyEvent
from securefvpa.privacy.events import DpSgdEvent
from securefvpa.privacy.guard import BudgetGuard, Decision
from securefvpa.privacy.ledger import Ledger
from securefvpa.rundir import NodeConfig, RunDir

GRAD_SAMPLE_MODES = ("hooks", "functorch", "ghost")


@dataclass(frozen=True, kw_only=True)
class DPSettings:
    """What one client's DP-SGD step needs: sigma, the clip norm C, the sampling rate q.

    ``noise_multiplier`` is noise std / ``clip`` (0 is allowed only for tests and the audit's
    ``no_noise`` injection: it is not private). Keyword-only; every error names the bad value.
    """

    noise_multiplier: float
    clip: float
    sample_rate: float
    grad_sample_mode: str = "hooks"

    def __post_init__(self) -> None:
        if not (self.noise_multiplier >= 0 and math.isfinite(self.noise_multiplier)):
            raise ConfigError(
                f"noise_multiplier must be finite and >= 0. Found {self.noise_multiplier!r}."
            )
        if not (self.clip > 0 and math.isfinite(self.clip)):
            raise ConfigError(f"clip must be finite and > 0. Found {self.clip!r}.")
        if not 0 < self.sample_rate <= 1:
            raise ConfigError(f"sample_rate must be in (0, 1]. Found {self.sample_rate!r}.")
        if self.grad_sample_mode not in GRAD_SAMPLE_MODES:
            raise ConfigError(
                f"grad_sample_mode must be one of {list(GRAD_SAMPLE_MODES)}. "
                f"Found {self.grad_sample_mode!r}."
            )


def ledger_path(cfg: RunConfig, run_dir: RunDir) -> Path:
    """``privacy.ledger`` when set, else ``RUN_DIR/privacy_ledger.sqlite`` (absolute)."""
    path = Path(cfg.privacy.ledger) if cfg.privacy.ledger else run_dir.default_ledger
    return path.resolve()


def planned_rounds(cfg: RunConfig) -> int:
    """Rounds a client is planned to join: ``ceil(fraction_fit * rounds)`` (at least 1)."""
    fed = cfg.federation
    return max(1, min(fed.rounds, math.ceil(fed.fraction_fit * fed.rounds)))


def resolve_delta(privacy: PrivacyConfig, *, max_train_pairs: int) -> float:
    """``privacy.delta`` or ``min(1e-5, 1 / (10 n))``; refuses delta >= 1/n (ConfigError)."""
    n = max(1, max_train_pairs)
    delta = privacy.delta if privacy.delta is not None else min(1e-5, 1.0 / (10.0 * n))
    if delta >= 1.0 / n:
        raise ConfigError(
            f"privacy.delta must be well below 1/records: a client holds up to {n} pairs, so delta "
            f"must be < {1.0 / n:.3g}. Found {delta}."
        )
    return delta


def given_noise_multiplier(privacy: PrivacyConfig) -> float:
    """sigma as configured; a ConfigError when the config asks for calibration instead."""
    if privacy.noise_multiplier is None:
        raise ConfigError(
            "privacy.noise_multiplier is not set: sigma is calibrated from target_epsilon "
            "(calibrated_noise_multiplier)"
        )
    return privacy.noise_multiplier


def calibrated_noise_multiplier(cfg: RunConfig, *, delta: float) -> float:
    """The smallest sigma that keeps a client joining every planned round at target_epsilon."""
    p = cfg.privacy
    return calibrate_noise_multiplier(
        target_epsilon=p.target_epsilon,
        delta=delta,
        sample_rate=p.sample_rate,
        steps_per_round=cfg.federation.local_steps,  # 1 under central noise (config check)
        rounds=planned_rounds(cfg),
        relation=p.neighbouring_relation,
        accountant=p.accountant,
    )


@dataclass(frozen=True, kw_only=True)
class DistributedParams:
    """The distributed discrete-Gaussian mechanism of a run (see ``securefvpa.secagg.ddg``).

    ``gamma``: float value of one ring level; ``local_sigma``: each client's share
    N_Z(0, sigma^2) in levels; ``threshold``: t, the fewest masked inputs any unmasked sum holds
    (honest clients enforce it); ``max_colluding``: T; ``dim``: the model's vector length and
    ``padded_dim`` the noised ring coordinates; ``beta``, ``bits``, ``block_size``: rounding,
    ring and rotation; ``central_noise_multiplier``: sqrt(t - T) sigma gamma / C (reports).
    """

    gamma: float
    local_sigma: float
    threshold: int
    max_colluding: int
    dim: int
    padded_dim: int
    beta: float
    bits: int
    block_size: int
    central_noise_multiplier: float

    @property
    def honest_shares(self) -> int:
        return self.threshold - self.max_colluding


@dataclass(frozen=True, kw_only=True)
class PrivacyPlan:
    """sigma, delta and the relation of a run, and the guard and ledger calls of a client."""

    privacy: PrivacyConfig
    local_steps: int
    noise_multiplier: float
    delta: float
    ledger: Path
    distributed: DistributedParams | None = None

    @property
    def relation(self) -> str:
        """The neighbouring relation of every event (``privacy.neighbouring_relation``)."""
        return self.privacy.neighbouring_relation

    @classmethod
    def resolve(
        cls,
        cfg: RunConfig,
        *,
        max_train_pairs: int,
        ledger: Path,
        distributed: DistributedParams | None = None,
    ) -> PrivacyPlan:
        """Resolve delta, then sigma (given or calibrated): what the launcher does once.

        In distributed mode the mechanism is resolved by the caller (it needs the secure-
        aggregation ring: ``securefvpa.rounds.prepare.resolve_distributed``) and passed in;
        sigma is then its central noise multiplier.
        """
        delta = resolve_delta(cfg.privacy, max_train_pairs=max_train_pairs)
        if cfg.privacy.noise == "distributed":
            if distributed is None:
                raise ConfigError(
                    "privacy.noise = 'distributed': resolve the discrete mechanism first "
                    "(securefvpa.rounds.prepare.resolve_distributed)"
                )
            sigma = distributed.central_noise_multiplier
        elif cfg.privacy.calibrate_sigma:
            sigma = calibrated_noise_multiplier(cfg, delta=delta)
        else:
            sigma = given_noise_multiplier(cfg.privacy)
        return cls(
            privacy=cfg.privacy,
            local_steps=cfg.federation.local_steps,
            noise_multiplier=sigma,
            delta=delta,
            ledger=ledger,
            distributed=distributed,
        )

    @classmethod
    def for_node(cls, cfg: RunConfig, node: NodeConfig) -> PrivacyPlan:
        """The plan a client follows: its own config plus sigma, delta, ledger from its node config."""
        if not node.ledger or node.noise_multiplier <= 0.0 or not 0.0 < node.delta < 1.0:
            raise RunDirError(
                f"node config of partition {node.partition_id} has no privacy plan (ledger "
                f"{node.ledger!r}, noise_multiplier {node.noise_multiplier}, delta {node.delta}) "
                "but its run config enables DP"
            )
        distributed = None
        if cfg.privacy.noise == "distributed":
            try:
                distributed = DistributedParams(**node.distributed)
            except TypeError as exc:
                raise RunDirError(
                    f"node config of partition {node.partition_id}: the run uses distributed "
                    f"noise but its [distributed] table is incomplete: {exc}"
                ) from None
        return cls(
            privacy=cfg.privacy,
            local_steps=cfg.federation.local_steps,
            noise_multiplier=node.noise_multiplier,
            delta=node.delta,
            ledger=Path(node.ledger),
            distributed=distributed,
        )

    def dp_settings(self) -> DPSettings:
        p = self.privacy
        return DPSettings(
            noise_multiplier=self.noise_multiplier,
            clip=p.clip,
            sample_rate=p.sample_rate,
            grad_sample_mode=p.grad_sample_mode,
        )

    def event(self, *, client_id: str, round: int, attempt: int = 1) -> PrivacyEvent:
        """The ledger event of one round attempt (a :class:`DdgEvent` in distributed mode)."""
        p = self.privacy
        dist = self.distributed
        if dist is not None:
            return DdgEvent(
                client_id=client_id,
                round=round,
                attempt=attempt,
                unit=p.unit,
                relation=self.relation,
                sample_rate=p.sample_rate,
                clip=p.clip,
                gamma=dist.gamma,
                beta=dist.beta,
                dim=dist.padded_dim,
                local_sigma=dist.local_sigma,
                honest_shares=dist.honest_shares,
                threshold=dist.threshold,
                max_colluding=dist.max_colluding,
                bits=dist.bits,
                block_size=dist.block_size,
            )
        return DpSgdEvent(
            client_id=client_id,
            round=round,
            attempt=attempt,
            noise_multiplier=self.noise_multiplier,
            sample_rate=p.sample_rate,
            steps=self.local_steps,
            clip=p.clip,
            relation=self.relation,  # type: ignore[arg-type]
        )

    def guard(self) -> BudgetGuard:
        return BudgetGuard(
            budget_epsilon=self.privacy.budget_epsilon,
            delta=self.delta,
            accountant=self.privacy.accountant,
        )

    def authorize(self, *, client_id: str, round: int, attempt: int = 1) -> Decision:
        """Check the budget for one more round attempt of ``client_id`` (its own history only).

        Returns the guard's decision when the round is allowed. When it is not, records a
        ``declined`` ledger entry and raises :class:`PrivacyBudgetExhausted` (nothing trained).
        """
        planned = self.event(client_id=client_id, round=round, attempt=attempt)
        with Ledger(self.ledger) as ledger:
            history = ledger.events_for_client(client_id)  # this client's rows only (indexed)
            decision = self.guard().check(
                client_id=client_id, history=history, planned_event=planned
            )
            if not decision.allowed:
                ledger.append_declined(
                    planned,
                    reason=decision.reason,
                    epsilon_now=decision.epsilon_now,
                    epsilon_if_trained=decision.epsilon_if_trained,
                    budget_epsilon=self.privacy.budget_epsilon,
                )
                raise PrivacyBudgetExhausted(
                    f"client {client_id!r}, round {round}: {decision.reason}; epsilon stays at "
                    f"{decision.epsilon_now:.6g}"
                )
        return decision

    def commit(self, *, client_id: str, round: int, attempt: int = 1) -> None:
        """Append this round attempt's DP event to the ledger (durable when this returns).

        The client's epsilon after it is the guard's ``Decision.epsilon_if_trained``: the same
        history plus this event under the same accountant and delta.
        """
        with Ledger(self.ledger) as ledger:
            ledger.append(self.event(client_id=client_id, round=round, attempt=attempt))

    def summary(self, cfg: RunConfig) -> dict[str, Any]:
        return {
            "config_hash": config_hash(cfg),
            "noise_multiplier": self.noise_multiplier,
            "delta": self.delta,
            "relation": self.relation,
            "unit": self.privacy.unit,
            "noise": self.privacy.noise,
            "planned_rounds": planned_rounds(cfg),
            "target_epsilon": self.privacy.target_epsilon,
            "budget_epsilon": self.privacy.budget_epsilon,
            "sigma_source": "calibrated" if self.privacy.calibrate_sigma else "config",
            "distributed": None if self.distributed is None else asdict(self.distributed),
        }


def run_id(cfg: RunConfig) -> str:
    return cfg.run_id or f"run-{config_hash(cfg)[:12]}"


def start_ledger(
    cfg: RunConfig,
    run_dir: RunDir,
    *,
    max_train_pairs: int,
    distributed: Any = None,
) -> PrivacyPlan:
    """Resolve the plan once (or reload it on ``--resume``), save it, open the ledger's run.

    ``distributed`` is a callable returning :class:`DistributedParams` given delta, called only
    when a distributed plan has to be resolved (it takes seconds: a calibration)."""
    plan = load_plan(cfg, run_dir)
    if plan is None:
        params = None
        if cfg.privacy.noise == "distributed":
            params = distributed(resolve_delta(cfg.privacy, max_train_pairs=max_train_pairs))
        plan = PrivacyPlan.resolve(
            cfg,
            max_train_pairs=max_train_pairs,
            ledger=ledger_path(cfg, run_dir),
            distributed=params,
        )
        atomic_write_text(run_dir.plan, json.dumps(plan.summary(cfg), indent=2))
    with Ledger(plan.ledger) as ledger:
        ledger.append_run_start(run_id(cfg), config_hash(cfg), plan.summary(cfg))
    return plan


def load_plan(cfg: RunConfig, run_dir: RunDir) -> PrivacyPlan | None:
    """The plan saved in ``privacy_plan.json`` for this config, or None when there is none."""
    path = run_dir.plan
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        sigma, delta = float(saved["noise_multiplier"]), float(saved["delta"])
        same = saved.get("config_hash") == config_hash(cfg)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RunDirError(f"privacy plan {str(path)!r} is unreadable: {exc}") from None
    if not same:
        return None
    dist = saved.get("distributed")
    try:
        params = None if dist is None else DistributedParams(**dist)
    except TypeError as exc:
        raise RunDirError(
            f"privacy plan {str(path)!r}: bad distributed parameters: {exc}"
        ) from None
    return PrivacyPlan(
        privacy=cfg.privacy,
        local_steps=cfg.federation.local_steps,
        noise_multiplier=sigma,
        delta=delta,
        ledger=ledger_path(cfg, run_dir),
        distributed=params,
    )


def close_ledger(cfg: RunConfig, plan: PrivacyPlan, *, utility: dict[str, Any] | None) -> None:
    with Ledger(plan.ledger) as ledger:
        ledger.append_run_end(run_id(cfg), config_hash(cfg), {"utility": utility or {}})


def write_privacy_report(
    cfg: RunConfig, run_dir: RunDir, plan: PrivacyPlan, *, metrics: dict[str, Any]
) -> dict[str, str]:
    """Derive privacy_report.json + report.html from the ledger alone (plus the config), with
    the run's metrics beside it (utility vs chance and a baseline, secure aggregation, early
    stop: ``report.report_inputs_from_metrics``).

    An existing report with another history is never overwritten (``report.write_report``):
    the new one is written beside it and :class:`LedgerError` is raised, because at the end of
    a run a report whose history differs from the ledger is evidence of tampering.
    """
    from securefvpa.privacy.report import build_report, report_inputs_from_metrics, write_report

    report = build_report(
        plan.ledger,
        run_id=run_id(cfg),
        config_hash=config_hash(cfg),
        delta=plan.delta,
        budget_epsilon=cfg.privacy.budget_epsilon,
        accountant=cfg.privacy.accountant,
        **report_inputs_from_metrics(metrics),
    )
    files = write_report(report, run_dir.root, ledger_path=plan.ledger)
    out = {"json": str(files.json), "html": str(files.html)}
    if files.conflict is not None:
        raise LedgerError(
            f"the run's report {str(run_dir.report_json)!r} holds another history than the "
            f"ledger ({files.conflict}): {files.note}; the new report is {out['json']}"
        )
    return out
