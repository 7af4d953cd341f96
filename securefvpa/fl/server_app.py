"""The Flower ServerApp: client sampling, FedAvg (plain or secure), evaluation, checkpoints.

One round:
1. sample training clients (``federation.fraction_fit``, at least ``min_fit_clients``) among
   those that have not declined for budget, with a generator seeded by (seed, round) so a
   resumed run samples exactly as an uninterrupted one;
2. send them the global parameters; each trains locally (DP-SGD when ``privacy.enabled``) and
   returns ``num_examples * (theta_local - theta_global)`` — in the clear, or masked through
   secure aggregation so the server learns only the sum;
3. the weighted mean update ``Delta = sum(w_i * delta_i) / sum(w_i)`` of every shared parameter,
   including the mixture prior's prototypes, log-variances and mixture logits, is applied by
   the server optimiser (``federation.server_optimizer``: FedAvg ``theta += server_lr * Delta``,
   or FedAdam, :mod:`securefvpa.fl.server_opt`);
4. every ``eval_every`` rounds, evaluate on the held-out pairs of training clients and on unseen
   clients, which only infer z from their own context pairs;
5. checkpoint atomically.

A client that fails or times out is dropped from the round; the round proceeds when at least
``min_fit_clients`` updates arrived and fails with a FederationError otherwise (the checkpoint
stays at the last complete round, so ``--resume`` continues from there).
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context, Message
from flwr.serverapp import Grid, ServerApp

from securefvpa.config import FederationConfig, RunConfig, config_hash, dump_config, load_config
from securefvpa.errors import FederationError
from securefvpa.fl.checkpoint import ServerState, load_checkpoint, save_checkpoint
from securefvpa.fl.messages import (
    STATUS_DECLINED,
    STATUS_OK,
    config_value,
    get_record,
    make_content,
    record_to_arrays,
)
from securefvpa.fl.server_opt import server_step

log = logging.getLogger("securefvpa.fl")


@dataclass
class NodeInfo:
    node_id: int
    partition_id: int
    role: str  # "train" | "unseen"
    train_pairs: int


@dataclass
class RoundOutcome:
    mean_update: dict[str, np.ndarray] | None  # weighted mean of the clients' deltas (float64)
    trained: list[int] = field(default_factory=list)  # partition ids whose update was summed
    declined: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    train_loss: float | None = None
    epsilon_max: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


Aggregator = Callable[["ServerLoop", int, list[NodeInfo], dict[str, np.ndarray]], RoundOutcome]


def wait_for_nodes(grid: Grid, n: int, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    nodes: list[int] = []
    while time.monotonic() < deadline:
        nodes = list(grid.get_node_ids())
        if len(nodes) >= n:
            return nodes
        time.sleep(0.2)
    raise FederationError(
        f"only {len(nodes)} of {n} expected client nodes connected within {timeout:.0f} s"
    )


def sample_indices(n_eligible: int, fed: FederationConfig, seed: int, rnd: int) -> list[int]:
    """Sorted indices of round ``rnd``'s training clients among ``n_eligible``: a share
    ``fed.fraction_fit`` (at least ``fed.min_fit_clients``), drawn by a generator seeded by
    (seed, round) so that a resumed run samples exactly as an uninterrupted one."""
    k = min(n_eligible, max(fed.min_fit_clients, math.ceil(fed.fraction_fit * n_eligible)))
    rng = np.random.default_rng([seed, rnd, 0x5A])
    return sorted(int(i) for i in rng.choice(n_eligible, size=k, replace=False))


class ServerLoop:
    """Drives rounds over a Flower Grid. Holds no client data and never sees a latent z."""

    def __init__(self, grid: Grid, cfg: RunConfig, run_dir: Path, *, expected_nodes: int) -> None:
        self.grid = grid
        self.cfg = cfg
        self.run_dir = run_dir
        self.cfg_text = dump_config(cfg)
        self.cfg_hash = config_hash(cfg)
        self.expected_nodes = expected_nodes
        self.nodes: list[NodeInfo] = []

    # -- messaging -------------------------------------------------------------------------
    def base_config(self, rnd: int) -> dict[str, Any]:
        return {
            "round": rnd,
            "rounds": self.cfg.federation.rounds,
            "run-dir": str(self.run_dir),
            "config-toml": self.cfg_text,
            "config-hash": self.cfg_hash,
        }

    def send(self, messages: list[Message]) -> list[Message]:
        if not messages:
            return []
        return list(
            self.grid.send_and_receive(messages, timeout=self.cfg.federation.round_timeout_s)
        )

    def message(self, node: NodeInfo, message_type: str, content: Any) -> Message:
        return Message(content, dst_node_id=node.node_id, message_type=message_type)

    # -- discovery ---------------------------------------------------------------------------
    def discover(self) -> list[NodeInfo]:
        node_ids = wait_for_nodes(
            self.grid, self.expected_nodes, self.cfg.federation.round_timeout_s
        )
        replies = self.send(
            [
                Message(
                    make_content(config=self.base_config(0)), dst_node_id=n, message_type="query"
                )
                for n in node_ids
            ]
        )
        nodes = []
        for r in replies:
            if r.has_error():
                log.warning(
                    "node %s failed discovery: %s", r.metadata.src_node_id, r.error.reason[:200]
                )
                continue
            rec = get_record(r.content, "reply", "config")
            nodes.append(
                NodeInfo(
                    node_id=r.metadata.src_node_id,
                    partition_id=config_value(rec, "partition-id", int),
                    role=config_value(rec, "role", str),
                    train_pairs=config_value(rec, "train-pairs", int),
                )
            )
        nodes.sort(key=lambda n: n.partition_id)
        self.nodes = nodes
        return nodes

    # -- sampling ------------------------------------------------------------------------------
    def sample(self, rnd: int, exhausted: set[int]) -> list[NodeInfo]:
        fed = self.cfg.federation
        eligible = [n for n in self.nodes if n.role == "train" and n.partition_id not in exhausted]
        if len(eligible) < fed.min_fit_clients:
            return []
        return [eligible[i] for i in sample_indices(len(eligible), fed, self.cfg.seed, rnd)]

    # -- evaluation ------------------------------------------------------------------------------
    def evaluate(self, rnd: int, params: dict[str, np.ndarray]) -> dict[str, Any]:
        from securefvpa.fl.evaluation import combine_eval_replies

        content = make_content(arrays=params, config=self.base_config(rnd))
        replies = self.send([self.message(n, "evaluate", content) for n in self.nodes])
        by_node = {n.node_id: n for n in self.nodes}
        rows = []
        for r in replies:
            if r.has_error():
                log.warning(
                    "evaluation failed on node %s: %s", r.metadata.src_node_id, r.error.reason[:200]
                )
                continue
            node = by_node.get(r.metadata.src_node_id)
            if node is not None:
                reply = dict(get_record(r.content, "reply", "config"))
                reply["partition-id"] = node.partition_id
                rows.append((node.role, reply))
        return combine_eval_replies(rows, self.cfg)


def train_and_collect(
    loop: ServerLoop, rnd: int, sampled: list[NodeInfo], content: Any
) -> tuple[list[tuple[NodeInfo, Message]], RoundOutcome]:
    """Send a train message to every sampled node; sort the replies into trained (returned with
    their message), declined (budget), and failed (error, unknown status, or no reply)."""
    replies = loop.send([loop.message(n, "train", content) for n in sampled])
    by_node = {n.node_id: n for n in sampled}
    out = RoundOutcome(mean_update=None)
    ok: list[tuple[NodeInfo, Message]] = []
    losses: list[float] = []
    eps: list[float] = []
    seen: set[int] = set()
    for r in replies:
        node = by_node.get(r.metadata.src_node_id)
        if node is None or node.node_id in seen:
            continue
        seen.add(node.node_id)
        if r.has_error():
            log.warning(
                "round %d: client %d failed: %s", rnd, node.partition_id, r.error.reason[:200]
            )
            out.failed.append(node.partition_id)
            continue
        reply = get_record(r.content, "reply", "config")
        status = config_value(reply, "status", str)
        if status == STATUS_DECLINED:
            out.declined.append(node.partition_id)
        elif status == STATUS_OK:
            ok.append((node, r))
            if "train-loss" in reply:
                losses.append(config_value(reply, "train-loss", float))
            if "epsilon" in reply:
                eps.append(config_value(reply, "epsilon", float))
        else:
            out.failed.append(node.partition_id)
    out.failed += [n.partition_id for n in sampled if n.node_id not in seen]
    out.train_loss = float(np.mean(losses)) if losses else None
    out.epsilon_max = max(eps) if eps else None
    return ok, out


def plain_fedavg(
    loop: ServerLoop, rnd: int, sampled: list[NodeInfo], params: dict[str, np.ndarray]
) -> RoundOutcome:
    """Clients return ``w * delta`` in the clear; the server sums and divides by ``sum(w)``."""
    content = make_content(arrays=params, config=loop.base_config(rnd) | {"secagg": False})
    ok, out = train_and_collect(loop, rnd, sampled, content)
    total_w = 0.0
    acc = {k: np.zeros_like(v, dtype=np.float64) for k, v in params.items()}
    for node, r in ok:
        w = config_value(get_record(r.content, "reply", "config"), "num-examples", int)
        update = record_to_arrays(get_record(r.content, "arrays", "arrays"))
        bad = _shape_mismatch(update, params)
        if bad or w <= 0:
            log.warning(
                "round %d: client %d sent a malformed update (%s); ignored",
                rnd,
                node.partition_id,
                bad or f"num-examples {w}",
            )
            out.failed.append(node.partition_id)
            continue
        for k in acc:
            acc[k] += update[k]
        total_w += w
        out.trained.append(node.partition_id)
    if out.trained:
        out.mean_update = {k: acc[k] / total_w for k in params}
    return out


def _shape_mismatch(update: dict[str, np.ndarray], params: dict[str, np.ndarray]) -> str:
    if set(update) != set(params):
        return f"parameter names {sorted(set(update) ^ set(params))[:3]} differ from the global set"
    for k, v in params.items():
        if update[k].shape != v.shape:
            return f"{k} has shape {update[k].shape}, expected {v.shape}"
        if not np.all(np.isfinite(update[k])):
            return f"{k} holds non-finite values"
    return ""


def run_server(
    grid: Grid,
    cfg: RunConfig,
    run_dir: Path,
    *,
    expected_nodes: int,
    initial_params: dict[str, np.ndarray],
    resume: bool,
    aggregator: Aggregator | None = None,
) -> dict[str, Any]:
    """Run every round; return ``{"rounds": [...], "final": eval metrics, ...}``."""
    fed = cfg.federation
    loop = ServerLoop(grid, cfg, run_dir, expected_nodes=expected_nodes)
    state = load_checkpoint(run_dir, config_hash=loop.cfg_hash) if resume else None
    if state is None:
        state = ServerState(round=0, params=initial_params, config_hash=loop.cfg_hash)
    else:
        log.info("resuming after round %d", state.round)
    nodes = loop.discover()
    n_train = sum(n.role == "train" for n in nodes)
    if n_train < fed.min_fit_clients:
        raise FederationError(
            f"{n_train} training clients answered; federation.min_fit_clients is {fed.min_fit_clients}"
        )
    aggregate = aggregator or plain_fedavg
    if state.round == 0 and not state.history:
        t0 = time.perf_counter()
        ev = loop.evaluate(0, state.params)
        state.history.append(
            {
                "round": 0,
                "clients": 0,
                "train_loss": None,
                "eval": ev,
                "wall_seconds": time.perf_counter() - t0,
            }
        )
        save_checkpoint(run_dir, state)
    stopped = None
    bar = _progress(fed.rounds, state.round)
    for rnd in range(state.round + 1, fed.rounds + 1):
        t0 = time.perf_counter()
        sampled = loop.sample(rnd, state.exhausted)
        if not sampled:
            stopped = (
                f"round {rnd}: fewer than min_fit_clients={fed.min_fit_clients} clients remain "
                f"within their privacy budget; training stopped"
            )
            log.warning(stopped)
            break
        outcome = aggregate(loop, rnd, sampled, state.params)
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
                    f"round {rnd}: only {len(outcome.trained)} of {len(sampled)} sampled clients returned an "
                    f"update (failed: {outcome.failed}, declined: {outcome.declined}); "
                    f"federation.min_fit_clients is {fed.min_fit_clients}. The checkpoint keeps round {state.round}."
                )
        elif outcome.mean_update is not None:
            state.params = server_step(fed, state.params, outcome.mean_update, state.opt)
        entry: dict[str, Any] = {
            "round": rnd,
            "clients": len(outcome.trained),
            "sampled": len(sampled),
            "failed": outcome.failed,
            "declined": outcome.declined,
            "train_loss": outcome.train_loss,
            "epsilon_max": outcome.epsilon_max,
        } | outcome.extra
        if rnd % fed.eval_every == 0 or rnd == fed.rounds:
            entry["eval"] = loop.evaluate(rnd, state.params)
        entry["wall_seconds"] = time.perf_counter() - t0
        state.round = rnd
        state.history.append(entry)
        save_checkpoint(run_dir, state)
        bar(entry)
    final = next((h["eval"] for h in reversed(state.history) if "eval" in h), {})
    return {
        "rounds": state.history,
        "final": final,
        "stopped_early": stopped,
        "params": state.params,
        "exhausted": sorted(state.exhausted),
    }


def _progress(total: int, start: int) -> Callable[[dict[str, Any]], None]:
    if sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=total, initial=start, desc="rounds", unit="round")

        def tick(entry: dict[str, Any]) -> None:
            acc = entry.get("eval", {}).get("accuracy", {}).get("seen_users")
            bar.set_postfix(loss=entry["train_loss"], acc=acc)
            bar.update(1)

        return tick

    def line(entry: dict[str, Any]) -> None:
        acc = entry.get("eval", {}).get("accuracy", {})
        log.info(
            "round %d/%d: %d clients, loss %s, seen %s, unseen %s, %.2f s",
            entry["round"],
            total,
            entry["clients"],
            _fmt(entry["train_loss"]),
            _fmt(acc.get("seen_users")),
            _fmt(acc.get("unseen_users")),
            entry["wall_seconds"],
        )

    return line


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


# ---------------------------------------------------------------------------------------------
# The app object. `securefvpa run` builds apps with `make_server_app`; `flwr run .` (deployment)
# loads `app` below, which reads the run directory from the run config key "run-dir".
# ---------------------------------------------------------------------------------------------


def make_server_app(
    run_dir: Path,
    *,
    resume: bool = False,
    result_sink: Callable[[dict[str, Any]], None] | None = None,
) -> ServerApp:
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        _serve(grid, Path(run_dir), resume=resume, result_sink=result_sink)

    return server


def _serve(
    grid: Grid, run_dir: Path, *, resume: bool, result_sink: Callable[[dict[str, Any]], None] | None
) -> None:
    from securefvpa.fl.driver import finish_federated_run, initial_parameters, read_manifest

    cfg = load_config(run_dir / "config.resolved.toml")
    manifest = read_manifest(run_dir)
    aggregator = None
    if cfg.secagg.enabled:
        from securefvpa.fl.secagg_workflow import secure_fedavg

        aggregator = secure_fedavg
    result = run_server(
        grid,
        cfg,
        run_dir,
        expected_nodes=manifest["clients"],
        initial_params=initial_parameters(cfg, manifest),
        resume=resume,
        aggregator=aggregator,
    )
    finish_federated_run(cfg, run_dir, result)
    if result_sink is not None:
        result_sink(result)


app = ServerApp()


@app.main()
def _deployment_main(grid: Grid, context: Context) -> None:
    run_dir = context.run_config.get("run-dir", "")
    if not isinstance(run_dir, str) or not run_dir:
        raise FederationError(
            "run config key 'run-dir' is empty; pass --run-config \"run-dir='RUN_DIR'\""
        )
    resume = bool(context.run_config.get("resume", False))
    _serve(grid, Path(run_dir), resume=resume, result_sink=None)
