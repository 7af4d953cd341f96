"""The Flower ServerApp: the round engine over Flower's Grid (a transport), and the app wiring.

:class:`FlowerTransport` implements :class:`securefvpa.rounds.engine.RoundTransport` with Flower
messages (:mod:`securefvpa.fl.wire`): discovery, a plain or secure training round
(:mod:`securefvpa.fl.secagg_workflow`), evaluation. Sampling, the server optimiser, checkpoints,
the round-attempt journal and the history are the engine's (``securefvpa.rounds``), exactly as
for the audit and the benchmarks. The server holds no client data and never sees a latent z.

``make_server_app(run_dir)`` is what ``securefvpa run`` uses in simulation; ``app`` (loaded by
``flwr run .`` in deployment) reads the run directory from the run config key ``run-dir`` — the
server operator's own setting; clients never take paths from the server.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
from flwr.app import Context, Message
from flwr.serverapp import Grid, ServerApp

from securefvpa.config import RunConfig, config_hash, load_config
from securefvpa.errors import FederationError
from securefvpa.fl.secagg_workflow import SecureTransport, secure_train_round
from securefvpa.fl.wire import (
    MSG_EVALUATE,
    MSG_QUERY,
    MSG_TRAIN,
    REPLY,
    STATUS_DECLINED,
    STATUS_OK,
    EvalKept,
    Instruction,
    QueryReply,
    TrainReply,
    error_reason,
    get_arrays,
    get_config,
    get_eval_reply,
    make_content,
)
from securefvpa.rounds.encoding import RoundCodec
from securefvpa.rounds.engine import (
    NodeInfo,
    RoundOutcome,
    RunDirStore,
    run_rounds,
    weighted_mean,
)
from securefvpa.rounds.evaluation import combine_eval
from securefvpa.rounds.finish import finish_run, initial_parameters
from securefvpa.rounds.prepare import run_codec
from securefvpa.rounds.progress import make_progress
from securefvpa.rundir import Manifest, RunDir, read_manifest
from securefvpa.secagg.keys import load_roster

POLL_MIN_S = 0.002  # first wait between pulls for replies, and again after each arrival
POLL_MAX_S = 0.2  # the longest wait between pulls while nothing arrives

log = logging.getLogger("securefvpa.fl")


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


class FlowerTransport:
    """The round engine's transport over a Flower Grid."""

    def __init__(
        self,
        grid: Grid,
        cfg: RunConfig,
        manifest: Manifest,
        *,
        roster: Any = None,
        codec: RoundCodec | None = None,
    ):
        self.grid = grid
        self.cfg = cfg
        self.cfg_hash = config_hash(cfg)
        self.manifest = manifest
        self.roster = roster
        self.codec = codec
        self.nodes: list[NodeInfo] = []

    def units_of(self, partition_id: int) -> int:
        """Public unit count of a training client (the expected-batch denominator)."""
        return int(self.manifest.units[partition_id])

    # -- messaging -------------------------------------------------------------------------
    def send(self, messages: list[Message]) -> list[Message]:
        """Push ``messages`` and collect the replies until all are in or
        ``federation.round_timeout_s`` has passed (missing replies are dropouts).

        Flower's ``Grid.send_and_receive`` does the same but sleeps a fixed interval between
        pulls, 0.1 s in simulation and 3 s in deployment, and a secure round is six exchanges:
        here the interval starts at :data:`POLL_MIN_S` and doubles while nothing arrives, up to
        :data:`POLL_MAX_S` (``benchmarks/secagg.py --flower-large``)."""
        if not messages:
            return []
        pending = set(self.grid.push_messages(messages))
        deadline = time.monotonic() + self.cfg.federation.round_timeout_s
        replies: list[Message] = []
        wait = POLL_MIN_S
        while pending:
            got = list(self.grid.pull_messages(pending))
            replies += got
            pending.difference_update(r.metadata.reply_to_message_id for r in got)
            left = deadline - time.monotonic()
            if not pending or left <= 0:
                break
            wait = POLL_MIN_S if got else min(2 * wait, POLL_MAX_S)
            time.sleep(min(wait, left))
        return replies

    def message(self, node: NodeInfo, message_type: str, content: Any) -> Message:
        return Message(content, dst_node_id=node.node_id, message_type=message_type)

    def instruction(self, rnd: int, attempt: int = 1) -> Instruction:
        return Instruction(round=rnd, attempt=attempt, config_hash=self.cfg_hash)

    # -- RoundTransport ------------------------------------------------------------------------
    def discover(self) -> list[NodeInfo]:
        node_ids = wait_for_nodes(
            self.grid, self.manifest.clients, self.cfg.federation.round_timeout_s
        )
        content = make_content(config=self.instruction(0))
        replies = self.send(
            [Message(content, dst_node_id=n, message_type=MSG_QUERY) for n in node_ids]
        )
        if len(replies) < len(node_ids):
            log.warning(
                "only %d of %d nodes answered discovery within federation.round_timeout_s = %g s "
                "(a busy machine can need more: raise it)",
                len(replies),
                len(node_ids),
                self.cfg.federation.round_timeout_s,
            )
        nodes = []
        for r in replies:
            if r.has_error():
                log.warning(
                    "node %s failed discovery: %s",
                    r.metadata.src_node_id,
                    error_reason(r),
                )
                continue
            rec = get_config(r.content, REPLY, QueryReply)
            nodes.append(
                NodeInfo(
                    node_id=r.metadata.src_node_id,
                    partition_id=rec.partition_id,
                    role=rec.role,
                    train_pairs=rec.train_pairs,
                )
            )
        nodes.sort(key=lambda n: n.partition_id)
        self.nodes = nodes
        return nodes

    def train_round(
        self, rnd: int, attempt: int, sampled: list[NodeInfo], params: dict[str, np.ndarray]
    ) -> RoundOutcome:
        if self.cfg.secagg.enabled:
            # secagg on: the codec is set (run_codec)
            return secure_train_round(cast(SecureTransport, self), rnd, attempt, sampled, params)
        content = make_content(arrays=params, config=self.instruction(rnd, attempt))
        ok, out = self.train_and_collect(rnd, sampled, content)
        replies = []
        for node, r, rec in ok:
            try:
                update = get_arrays(r.content)
            except FederationError as exc:
                log.warning("round %d: client %d: %s", rnd, node.partition_id, exc)
                out.failed.append(node.partition_id)
                continue
            replies.append((node.partition_id, float(rec.num_examples), update))
        out.mean_update, out.trained, rejected = weighted_mean(replies, params)
        for pid, reason in rejected:
            log.warning(
                "round %d: client %d sent a malformed update (%s); ignored", rnd, pid, reason
            )
            out.failed.append(pid)
        return out

    def train_and_collect(
        self, rnd: int, sampled: list[NodeInfo], content: Any
    ) -> tuple[list[tuple[NodeInfo, Message, TrainReply]], RoundOutcome]:
        """Send a train message to every sampled node (``content``, or ``content(node)`` when it is
        callable); sort the replies into trained (with their message), declined (budget), and
        failed (error, malformed reply, or no reply)."""
        replies = self.send(
            [
                self.message(n, MSG_TRAIN, content(n) if callable(content) else content)
                for n in sampled
            ]
        )
        by_node = {n.node_id: n for n in sampled}
        out = RoundOutcome(mean_update=None)
        ok: list[tuple[NodeInfo, Message, TrainReply]] = []
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
                    "round %d: client %d failed: %s",
                    rnd,
                    node.partition_id,
                    error_reason(r),
                )
                out.failed.append(node.partition_id)
                continue
            try:
                rec = get_config(r.content, REPLY, TrainReply)
            except FederationError as exc:
                log.warning("round %d: client %d: %s", rnd, node.partition_id, exc)
                out.failed.append(node.partition_id)
                continue
            if rec.status == STATUS_DECLINED:
                out.declined.append(node.partition_id)
            elif rec.status == STATUS_OK:
                ok.append((node, r, rec))
                if rec.train_loss is not None and math.isfinite(rec.train_loss):
                    losses.append(rec.train_loss)
                if rec.epsilon is not None:
                    eps.append(rec.epsilon)
        out.failed += [n.partition_id for n in sampled if n.node_id not in seen]
        out.train_loss = float(np.mean(losses)) if losses else None
        out.epsilon_max = max(eps) if eps else None
        return ok, out

    def evaluate(self, rnd: int, params: dict[str, np.ndarray]) -> dict[str, Any]:
        content = make_content(arrays=params, config=self.instruction(rnd))
        replies = self.send([self.message(n, MSG_EVALUATE, content) for n in self.nodes])
        by_node = {n.node_id: n for n in self.nodes}
        rows = []
        kept = 0
        for r in replies:
            node = by_node.get(r.metadata.src_node_id)
            if r.has_error() or node is None:
                reason = error_reason(r) if r.has_error() else "unknown node"
                log.warning("evaluation failed on node %s: %s", r.metadata.src_node_id, reason)
                continue
            try:
                rec = get_eval_reply(r.content)
                if isinstance(rec, EvalKept):
                    kept += 1
                    continue
            except FederationError as exc:
                log.warning("evaluation reply of node %s: %s", r.metadata.src_node_id, exc)
                continue
            rows.append((node.partition_id, node.role, rec.counts()))
        out = combine_eval(rows, self.cfg, type_names=self.manifest.type_names)
        if kept:
            out["kept_on_clients"] = kept
        return out


# ---------------------------------------------------------------------------------------------
# The app objects. `securefvpa run` builds apps with `make_server_app`; `flwr run .` (deployment)
# loads `app` below, which reads the run directory from the run config key "run-dir".
# ---------------------------------------------------------------------------------------------


def serve(
    grid: Grid,
    run_dir: RunDir,
    *,
    resume: bool,
    result_sink: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Read the run's config and manifest once, run every round, finish the run directory;
    returns (and passes to ``result_sink``) the run's metrics."""
    cfg = load_config(run_dir.config)
    manifest = read_manifest(run_dir)
    roster = load_roster(run_dir.roster) if cfg.secagg.enabled else None
    codec = run_codec(cfg, run_dir, manifest)
    transport = FlowerTransport(grid, cfg, manifest, roster=roster, codec=codec)
    store = RunDirStore(
        run_dir.checkpoint, run_dir.journal, config_hash=transport.cfg_hash, resume=resume
    )
    result = run_rounds(
        transport,
        cfg,
        initial_params=initial_parameters(cfg, manifest),
        store=store,
        progress=make_progress(cfg),
    )
    metrics = finish_run(cfg, run_dir, result, manifest)
    if result_sink is not None:
        result_sink(metrics)
    return metrics


def make_server_app(
    run_dir: Path,
    *,
    resume: bool = False,
    result_sink: Callable[[dict[str, Any]], None] | None = None,
) -> ServerApp:
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        serve(grid, RunDir(run_dir), resume=resume, result_sink=result_sink)

    return server


app = ServerApp()


@app.main()
def _deployment_main(grid: Grid, context: Context) -> None:
    run_dir = context.run_config.get("run-dir", "")
    if not isinstance(run_dir, str) or not run_dir:
        raise FederationError(
            "run config key 'run-dir' is empty; pass --run-config \"run-dir='RUN_DIR'\""
        )
    resume = bool(context.run_config.get("resume", False))
    serve(grid, RunDir(Path(run_dir)), resume=resume)
