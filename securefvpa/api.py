"""The Python front door (re-exported by ``securefvpa``): configs, runs, audits, the privacy
calculator, and scoring responses for a user with a trained run.

Importing this module is cheap (no torch, flwr, opacus, transformers or ray): each function
imports what it needs when called. Every error is a :class:`securefvpa.errors.SecureFVPAError`
whose message names the bad value.

``run`` and ``run_audit`` show the same terminal progress as the command line and hide the
known harmless third-party messages (``rounds.progress.filter_known_noise``) while they run.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from securefvpa.config import RunConfig
from securefvpa.errors import AccountingError, ConfigError
from securefvpa.run import RunResult, resolve_config

if TYPE_CHECKING:
    from securefvpa.data.records import PreferenceRecord
    from securefvpa.privacy.events import Relation
    from securefvpa.train.inference import PairsInput, ResponseScores, TrainedModel

log = logging.getLogger("securefvpa")

ConfigInput = str | Path | RunConfig | dict[str, Any]

__all__ = [
    "AuditResult",
    "ConfigInput",
    "calibrate",
    "epsilon",
    "generate_users",
    "load_config",
    "load_model",
    "read_records",
    "run",
    "run_audit",
    "score",
    "write_records",
]


# -- configs and runs --------------------------------------------------------------------------


def load_config(config: ConfigInput, *, overrides: dict[str, Any] | None = None) -> RunConfig:
    """A validated :class:`RunConfig` from a TOML path, a mapping shaped like the TOML file
    (``{"data": {"source": "synth"}, ...}``; not changed) or a RunConfig.

    ``overrides`` maps dotted keys to values (``{"federation.rounds": 3}``), as ``--set``.
    Raises :class:`ConfigError` naming the file, dotted key or value that is wrong.
    """
    return resolve_config(config, overrides)


def run(
    config: ConfigInput,
    out: str | Path,
    *,
    resume: bool = False,
    overrides: dict[str, Any] | None = None,
) -> RunResult:
    """Train ``config`` into the run directory ``out`` (what ``securefvpa run`` does).

    ``config`` as for :func:`load_config`; ``out`` must be new or empty unless ``resume`` (then
    it must hold the same config, and the run continues from its last complete round).
    Returns a :class:`RunResult`: ``metrics``, ``accuracy``, ``report_path`` and
    ``ledger_path`` (DP runs), ``params_path`` and ``parameters()``. Raises
    :class:`ConfigError`, :class:`DataError`, :class:`FederationError`, ... (all
    :class:`SecureFVPAError`).
    """
    from securefvpa.rounds.progress import filter_known_noise
    from securefvpa.run import run as run_config

    with filter_known_noise():
        return run_config(config, out, resume=resume, overrides=overrides)


@dataclass(frozen=True)
class AuditResult:
    """The outcome of an empirical privacy audit (:func:`run_audit`).

    ``passed`` is False when the one-run lower bound ``epsilon_lower_bound`` (Steinke, Nasr &
    Jagielski 2023, at ``confidence``) exceeds ``claimed_epsilon`` (the accountant's epsilon at
    ``delta`` for the configured noise). ``report`` is the whole ``audit_report.json``.
    """

    passed: bool
    claimed_epsilon: float
    epsilon_lower_bound: float
    delta: float
    confidence: float
    canaries: int
    inject: str
    report_path: Path
    html_path: Path
    report: dict[str, Any]


def run_audit(
    config: str | Path | dict[str, Any],
    out: str | Path,
    *,
    overrides: dict[str, Any] | None = None,
) -> AuditResult:
    """Run an empirical canary audit (what ``securefvpa audit`` does) into the folder ``out``.

    ``config`` is an audit configuration: a run config with ``privacy.enabled = true`` plus an
    ``[audit]`` table (``audit.settings``), as a TOML path or a mapping (written to
    ``out/audit_config.toml`` first, so the audit can be rerun). ``overrides`` as in
    :func:`load_config` (``audit.*`` keys go to the audit table). Named ``run_audit`` because
    ``securefvpa.audit`` is the audit package.
    """
    from securefvpa.audit.runner import REPORT_HTML, REPORT_JSON
    from securefvpa.audit.runner import run_audit as run_audit_config
    from securefvpa.rounds.progress import filter_known_noise

    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"out must name a directory. Found the file {str(out_dir)!r}.")
    if isinstance(config, dict):
        import tomli_w

        from securefvpa.fsutil import atomic_write_text

        try:
            text = tomli_w.dumps(config)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"the audit config mapping is not TOML-serialisable: {exc}") from None
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / "audit_config.toml"
        atomic_write_text(path, text)
    elif isinstance(config, str | Path):
        path = Path(config)
    else:
        raise ConfigError(
            f"config must be a TOML path or a dict. Found {type(config).__name__}."
        )
    with filter_known_noise():
        report = run_audit_config(path, out_dir, overrides=overrides)
    s = report["summary"]
    return AuditResult(
        passed=bool(s["passed"]),
        claimed_epsilon=float(s["claimed_epsilon"]),
        epsilon_lower_bound=float(s["epsilon_lower_bound"]),
        delta=float(s["delta"]),
        confidence=float(s["confidence"]),
        canaries=int(s["canaries"]),
        inject=str(s["inject"]),
        report_path=out_dir / REPORT_JSON,
        html_path=out_dir / REPORT_HTML,
        report=report,
    )


# -- the privacy calculator --------------------------------------------------------------------


def epsilon(
    *,
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    delta: float,
    relation: str,
    accountant: str = "pld",
) -> float:
    """Epsilon at ``delta`` of ``steps`` Poisson-subsampled Gaussian steps (DP-SGD).

    ``noise_multiplier`` sigma = noise std / clip norm (> 0); ``sample_rate`` q in (0, 1] is the
    Poisson sampling rate of privacy units per step; ``relation`` is the neighbouring relation,
    ``"replace_one"`` (what securefvpa runs account) or ``"add_remove_one"`` — required, since
    epsilon differs by about 2x between them. ``accountant="pld"`` (primary: privacy loss
    distributions, Koskela et al. 2020 / Doroshenko et al. 2022 via dp-accounting, a pessimistic
    upper bound) or ``"rdp"`` (Renyi DP of the sampled Gaussian, Mironov et al. 2019, the
    cross-check). The same accounting as ``securefvpa account``: a PLD whose discretization
    would need too much memory or time is computed on a coarser grid (still an upper bound,
    logged); one that cannot be bounded at all raises :class:`AccountingError` with the
    estimate (ask for ``accountant="rdp"``). Bad values raise :class:`AccountingError`
    naming them.
    """
    from securefvpa.privacy.accountant import check_accountant
    from securefvpa.privacy.accountant import epsilon as events_epsilon
    from securefvpa.privacy.events import DpSgdEvent
    from securefvpa.privacy.pld_cost import choose_discretization

    accountant = check_accountant(accountant)
    event = DpSgdEvent(
        client_id="calculator", round=0, noise_multiplier=noise_multiplier,
        sample_rate=sample_rate, steps=steps, clip=1.0,
        relation=cast("Relation", relation),  # DpSgdEvent checks it
    )
    if accountant == "rdp":
        return events_epsilon([event], delta, accountant="rdp")
    choice = choose_discretization(
        noise_multiplier=event.noise_multiplier, sample_rate=event.sample_rate,
        steps=event.steps, relation=event.relation,
    )
    if choice.value_discretization_interval is None:
        raise AccountingError(f"{choice.note}; use accountant='rdp'")
    if choice.note:
        log.info("epsilon: %s", choice.note)
    return events_epsilon(
        [event], delta, accountant="pld",
        value_discretization_interval=choice.value_discretization_interval,
    )


def calibrate(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    rounds: int = 1,
    relation: str,
    accountant: str = "pld",
) -> float:
    """The smallest noise multiplier sigma (within 1e-4) such that ``rounds`` rounds of
    ``steps`` Poisson-subsampled Gaussian steps at ``sample_rate`` are
    (``target_epsilon``, ``delta``)-DP under ``relation`` (required, as in :func:`epsilon`).

    A bisection over sigma in [0.1, 1e4] on :func:`epsilon`'s accounting
    (``privacy.calibrate.calibrate_noise_multiplier``); a target already met at sigma = 0.1
    returns 0.1. Raises :class:`AccountingError` for bad values or an unreachable target.
    """
    from securefvpa.privacy.calibrate import calibrate_noise_multiplier

    return calibrate_noise_multiplier(
        target_epsilon=target_epsilon, delta=delta, sample_rate=sample_rate,
        steps_per_round=steps, rounds=rounds, relation=relation, accountant=accountant,
    )


# -- data --------------------------------------------------------------------------------------


def read_records(path: str | Path) -> list[PreferenceRecord]:
    """Every record of a JSONL file of preference pairs, validated (README "Your own data");
    :class:`DataError` names file, line and field."""
    from securefvpa.data.jsonl import read_records as read

    return read(path)


def write_records(path: str | Path, records: Sequence[PreferenceRecord]) -> int:
    """Write records as JSONL (atomically); returns the count. :class:`DataError` on a
    duplicate ``pair_id`` or a path that cannot be written."""
    from securefvpa.data.jsonl import write_records as write

    return write(path, records)


def generate_users(
    *,
    users: int,
    pairs_per_user: int,
    types: int = 2,
    controversial_share: float = 0.5,
    seed: int = 0,
) -> list[PreferenceRecord]:
    """Generated users with conflicting preferences (what ``securefvpa data synth`` writes):
    ``users`` users of ``types`` types, ``pairs_per_user`` records each, of which a share
    ``controversial_share`` the types disagree on (``data.synth``). Seeded, deterministic."""
    from securefvpa.data.synth import generate

    return generate(
        users=users, pairs_per_user=pairs_per_user, types=types,
        controversial_share=controversial_share, seed=seed,
    )


# -- scoring with a trained run ----------------------------------------------------------------


def load_model(
    run_dir: str | Path,
    *,
    model_path: str | Path | None = None,
    cache_dir: str | Path | None = None,
) -> TrainedModel:
    """The trained model of the finished federated run in ``run_dir``, for repeated
    :meth:`TrainedModel.score` calls (``train.inference.load_trained_model``: errors, and
    ``model_path``/``cache_dir`` for a run scored on another machine)."""
    from securefvpa.train.inference import load_trained_model

    return load_trained_model(run_dir, model_path=model_path, cache_dir=cache_dir)


def score(
    run_dir: str | Path,
    pairs: PairsInput,
    *,
    prompt: str,
    responses: Sequence[str],
    return_latent: bool = False,
) -> ResponseScores:
    """Score ``responses`` to ``prompt`` for one user, from that user's own ``pairs``, with the
    model of ``run_dir``.

    The user's latent z is inferred locally from ``pairs`` (their posterior mean) and only the
    scores are returned: ``scores[i]`` is the centred reward r(prompt, responses[i], z) (they
    sum to 0; ``probability(i, j)`` = sigmoid(s_i - s_j) is the model's P(the user prefers i
    over j)), ``preferred`` / ``best`` the top response. ``return_latent=True`` adds the
    posterior for local use only. ``pairs``: records, mappings or a JSONL path, of one
    ``user_id``; ``responses``: at least two strings. See ``securefvpa.train.inference``.
    """
    from securefvpa.train.inference import score_responses

    return score_responses(
        run_dir, pairs, prompt=prompt, responses=responses, return_latent=return_latent
    )

