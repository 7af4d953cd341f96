"""The round engine: one federated loop, used by the Flower ServerApp, the audit and benchmarks.

Imports neither flwr nor torch. A *transport* (:class:`RoundTransport`) moves parameters and
replies: Flower's Grid (``securefvpa.fl.server_app``), or direct calls into the client code
in this process (:mod:`securefvpa.rounds.local`, for the audit and the benchmarks). The engine
owns everything else, so the three callers cannot drift apart:

1. sample training clients (``federation.fraction_fit``, at least ``min_fit_clients``) among
   those that have not declined for budget, with a generator seeded by (seed, round) so a
   resumed run samples exactly as an uninterrupted one (:func:`sample_indices`);
2. start a *round attempt*: the store journals (round, attempt) durably before any client is
   asked to train, so that after a crash the round is re-run as the next attempt and every
   client's DP spend of every attempt is counted once in its ledger (``privacy.events``);
3. the transport trains the sampled clients and aggregates (plain or secure) into a
   :class:`RoundOutcome` holding the weighted mean update;
4. the server optimiser (``federation.server_optimizer``, :mod:`securefvpa.rounds.server_opt`)
   applies it;
5. every ``eval_every`` rounds, the transport evaluates;
6. the store checkpoints atomically; the progress callback reports the round.

A client that fails or times out is dropped from the round; the round proceeds when at least
``min_fit_clients`` updates arrived and fails with a FederationError otherwise (the checkpoint
stays at the last complete round, so ``--resume`` continues from there).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from securefvpa.config import FederationConfig, RunConfig, config_hash
from securefvpa.errors import FederationError, RunDirError
from securefvpa.fsutil import atomic_write_text
from securefvpa.rounds.checkpoint import ServerState, load_checkpoint, save_checkpoint
from securefvpa.rounds.server_opt import server_step

log = logging.getLogger("securefvpa.rounds")

ROLES = ("train", "unseen")


@dataclass(frozen=True)
class NodeInfo:
    """A client node as the server knows it: transport id, partition, role, public counts."""

    node_id: int
    partition_id: int
    role: str  # "train" | "unseen"
    train_pairs: int


@dataclass
class RoundOutcome:
    """What a transport returns for one round of training and aggregation."""

    mean_update: dict[str, np.ndarray] | None  # weighted mean of the clients' updates (float64)
    trained: list[int] = field(default_factory=list)  # partition ids whose update was summed
    declined: list[int] = field(default_factory=list)  # budget refusals
    failed: list[int] = field(default_factory=list)  # errors, timeouts, malformed updates
    train_loss: float | None = None  # mean local loss (None under DP: it is not private)
    epsilon_max: float | None = None  # largest epsilon a client reported after this round
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. secure-aggregation statistics


@dataclass
class RoundsResult:
    """The typed result of :func:`run_rounds`."""

    rounds: list[dict[str, Any]]  # one entry per round (round 0 = initial evaluation)
    final: dict[str, Any]  # the last evaluation
    stopped_early: str | None  # why training stopped before the last round, if it did
    params: dict[str, np.ndarray]  # final global parameters
    exhausted: list[int]  # partition ids that declined for budget


class RoundTransport(Protocol):
    """How the engine reaches clients. Implemented over Flower's Grid and in-process."""

    def discover(self) -> list[NodeInfo]:
        """Every client node, sorted by partition id."""
        ...

    def train_round(
        self, rnd: int, attempt: int, sampled: list[NodeInfo], params: dict[str, np.ndarray]
    ) -> RoundOutcome:
        """Train ``sampled`` on ``params`` and aggregate their updates."""
        ...

    def evaluate(self, rnd: int, params: dict[str, np.ndarray]) -> dict[str, Any]:
        """Evaluation metrics of ``params`` (``rounds.evaluation.combine_eval``)."""
        ...


class RoundStore(Protocol):
    """Checkpoints and the round-attempt journal."""

    def load(self) -> ServerState | None: ...

    def save(self, state: ServerState) -> None: ...

    def begin(self, rnd: int) -> int:
        """Journal a new attempt of round ``rnd`` durably; return its number (1, 2, ...)."""
        ...


class MemoryStore:
    """No checkpoint, no journal: every round is attempt 1 (benchmarks, tests)."""

    def load(self) -> ServerState | None:
        return None

    def save(self, state: ServerState) -> None:
        return None

    def begin(self, rnd: int) -> int:
        return 1


class RunDirStore:
    """Checkpoint and journal in a run directory (``server_state.npz``, ``rounds.journal``)."""

    def __init__(self, checkpoint: Path, journal: Path, *, config_hash: str, resume: bool) -> None:
        self.checkpoint = checkpoint
        self.journal = journal
        self.config_hash = config_hash
        self.resume = resume

    def load(self) -> ServerState | None:
        if not self.resume:
            return None
        return load_checkpoint(self.checkpoint, config_hash=self.config_hash)

    def save(self, state: ServerState) -> None:
        save_checkpoint(self.checkpoint, state)

    def attempts(self) -> dict[int, int]:
        """Round -> attempts started so far, from the journal (rewritten atomically, so a
        line that does not parse is damage, not a torn write)."""
        out: dict[int, int] = {}
        if not self.journal.is_file():
            return out
        for n, line in enumerate(self.journal.read_text(encoding="utf-8").splitlines(), 1):
            parts = line.split()
            if len(parts) != 2 or not all(p.isdigit() for p in parts):
                raise RunDirError(
                    f"round journal {str(self.journal)!r} line {n} is damaged: {line!r}"
                )
            out[int(parts[0])] = max(out.get(int(parts[0]), 0), int(parts[1]))
        return out

    def begin(self, rnd: int) -> int:
        attempt = self.attempts().get(rnd, 0) + 1
        self.journal.parent.mkdir(parents=True, exist_ok=True)
        text = self.journal.read_text(encoding="utf-8") if self.journal.is_file() else ""
        atomic_write_text(self.journal, f"{text}{rnd} {attempt}\n")
        if attempt > 1:
            log.warning(
                "round %d: attempt %d (crash recovery: the interrupted attempt %d stays in the "
                "privacy ledger and counts toward each client's epsilon)",
                rnd,
                attempt,
                attempt - 1,
            )
        return attempt


def sample_indices(n_eligible: int, fed: FederationConfig, seed: int, rnd: int) -> list[int]:
    """Sorted indices of round ``rnd``'s training clients among ``n_eligible``: a share
    ``fed.fraction_fit`` (at least ``fed.min_fit_clients``), drawn by a generator seeded by
    (seed, round) so that a resumed run samples exactly as an uninterrupted one."""
    k = min(n_eligible, max(fed.min_fit_clients, math.ceil(fed.fraction_fit * n_eligible)))
    rng = np.random.default_rng([seed, rnd, 0x5A])
    return sorted(int(i) for i in rng.choice(n_eligible, size=k, replace=False))


def sample_nodes(
    nodes: list[NodeInfo], cfg: RunConfig, rnd: int, exhausted: set[int]
) -> list[NodeInfo]:
    """Round ``rnd``'s training clients (empty when fewer than ``min_fit_clients`` remain)."""
    fed = cfg.federation
    eligible = [n for n in nodes if n.role == "train" and n.partition_id not in exhausted]
    if len(eligible) < fed.min_fit_clients:
        return []
    return [eligible[i] for i in sample_indices(len(eligible), fed, cfg.seed, rnd)]


def weighted_mean(
    replies: list[tuple[int, float, dict[str, np.ndarray]]], like: dict[str, np.ndarray]
) -> tuple[dict[str, np.ndarray] | None, list[int], list[tuple[int, str]]]:
    """``sum_i w_i u_i / sum_i w_i`` over ``(partition id, weight w_i, weighted update w_i u_i)``.

    Replies whose names, shapes or values do not fit ``like`` (or whose weight is not > 0) are
    rejected with the reason. Returns (mean or None, accepted ids, rejected (id, reason)).
    """
    acc = {k: np.zeros_like(v, dtype=np.float64) for k, v in like.items()}
    total, accepted, rejected = 0.0, [], []
    for pid, w, update in replies:
        bad = shape_mismatch(update, like) or ("" if w > 0 else f"weight {w}")
        if bad:
            rejected.append((pid, bad))
            continue
        for k in acc:
            acc[k] += update[k]
        total += w
        accepted.append(pid)
    mean = {k: acc[k] / total for k in like} if accepted else None
    return mean, accepted, rejected


def shape_mismatch(update: dict[str, np.ndarray], params: dict[str, np.ndarray]) -> str:
    """Why ``update`` does not fit ``params`` (names, shapes, finite values), or ""."""
    if set(update) != set(params):
        return f"parameter names {sorted(set(update) ^ set(params))[:3]} differ from the global set"
    for k, v in params.items():
        if update[k].shape != v.shape:
            return f"{k} has shape {update[k].shape}, expected {v.shape}"
        if not np.all(np.isfinite(update[k])):
            return f"{k} holds non-finite values"
    return ""


Progress = Callable[[dict[str, Any]], None]


def run_rounds(
    transport: RoundTransport,
    cfg: RunConfig,
    *,
    initial_params: dict[str, np.ndarray],
    store: RoundStore | None = None,
    progress: Progress | None = None,
) -> RoundsResult:
    """Run every round of ``cfg.federation`` over ``transport``; return a :class:`RoundsResult`."""
    fed = cfg.federation
    store = store or MemoryStore()
    state = store.load()
    if state is None:
        state = ServerState(round=0, params=initial_params, config_hash=config_hash(cfg))
    else:
        log.info("resuming after round %d", state.round)
    nodes = transport.discover()
    n_train = sum(n.role == "train" for n in nodes)
    if n_train < fed.min_fit_clients:
        raise FederationError(
            f"{n_train} training clients answered; federation.min_fit_clients is {fed.min_fit_clients}"
        )
    if state.round == 0 and not state.history:
        t0 = time.perf_counter()
        ev = transport.evaluate(0, state.params)
        state.history.append(
            RoundEntry(round=0, clients=0, eval=ev, wall_seconds=time.perf_counter() - t0).to_dict()
        )
        store.save(state)
    stopped = None
    for rnd in range(state.round + 1, fed.rounds + 1):
        t0 = time.perf_counter()
        sampled = sample_nodes(nodes, cfg, rnd, state.exhausted)
        if not sampled:
            stopped = (
                f"round {rnd}: fewer than min_fit_clients={fed.min_fit_clients} clients remain "
                f"within their privacy budget; training stopped"
            )
            log.warning(stopped)
            break
        attempt = store.begin(rnd)
        outcome = transport.train_round(rnd, attempt, sampled, state.params)
        state.exhausted.update(outcome.declined)
        if len(outcome.trained) < fed.min_fit_clients:
            if outcome.declined and not outcome.failed:
                # Budget refusals are normal at the end of a budget: skip the round, keep going.
                log.warning(
                    "round %d: only %d updates (declined: %s)",
                    rnd,
                    len(outcome.trained),
                    outcome.declined,
                )
            else:
                raise FederationError(
                    f"round {rnd}: only {len(outcome.trained)} of {len(sampled)} sampled clients "
                    f"returned an update (failed: {outcome.failed}, declined: {outcome.declined});"
                    f" federation.min_fit_clients is {fed.min_fit_clients}. The checkpoint keeps "
                    f"round {state.round}; --resume re-runs round {rnd} as attempt {attempt + 1}."
                )
        elif outcome.mean_update is not None:
            state.params = server_step(fed, state.params, outcome.mean_update, state.opt)
        entry = RoundEntry(
            round=rnd,
            attempt=attempt,
            clients=len(outcome.trained),
            sampled=len(sampled),
            failed=outcome.failed,
            declined=outcome.declined,
            train_loss=outcome.train_loss,
            epsilon_max=outcome.epsilon_max,
            extra=outcome.extra,
        )
        if rnd % fed.eval_every == 0 or rnd == fed.rounds:
            entry.eval = transport.evaluate(rnd, state.params)
        entry.wall_seconds = time.perf_counter() - t0
        state.round = rnd
        state.history.append(entry.to_dict())
        store.save(state)
        if progress is not None:
            progress(state.history[-1])
    final: dict[str, Any] = next((h["eval"] for h in reversed(state.history) if "eval" in h), {})
    return RoundsResult(
        rounds=state.history,
        final=final,
        stopped_early=stopped,
        params=state.params,
        exhausted=sorted(state.exhausted),
    )


@dataclass
class RoundEntry:
    """One round of the history (``metrics.json`` ``rounds[*]``); stored as a plain dict."""

    round: int
    clients: int
    attempt: int = 1
    sampled: int = 0
    failed: list[int] = field(default_factory=list)
    declined: list[int] = field(default_factory=list)
    train_loss: float | None = None
    epsilon_max: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    eval: dict[str, Any] | None = None
    wall_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        extra = out.pop("extra")
        if out["eval"] is None:
            del out["eval"]
        return out | extra
