"""An in-process transport for the round engine: direct calls into the client code.

The audit runner and the benchmarks run rounds through :func:`securefvpa.rounds.engine.run_rounds`
exactly as the Flower ServerApp does; only the transport differs: instead of Flower messages,
:class:`LocalTransport` calls :func:`securefvpa.train.client.local_train_round` and
:func:`~securefvpa.train.client.local_evaluate` on each node in turn and aggregates the weighted
updates with the same :func:`~securefvpa.rounds.engine.weighted_mean` as the plain Flower path.
Secure aggregation is left out here: it returns the same sum (the masks cancel exactly), so the
aggregate, the server step and every DP event are those of a Flower run.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from securefvpa.errors import FederationError
from securefvpa.privacy.plan import DPSettings
from securefvpa.rounds.encoding import RoundCodec
from securefvpa.rounds.engine import NodeInfo, RoundOutcome, weighted_mean
from securefvpa.rounds.evaluation import combine_eval
from securefvpa.train.client import STATUS_DECLINED, ClientNode, evaluate_round, local_train_round

log = logging.getLogger("securefvpa.rounds")


def central_gaussian_update(
    cfg: Any,
    grad_sum: np.ndarray,
    *,
    sigma: float,
    like: dict[str, np.ndarray],
    units: list[int],
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The trusted-server reference (``privacy.noise = "central"``; DP-FedAvg with server-side
    noise, McMahan et al. 2018, as Flower's server-side DP does): add N(0, sigma^2 C^2) once to
    the plaintext sum of the clients' clipped gradients (CSPRNG: ``train.csprng``), divide by
    the expected batch ``B = q * units`` and return one SGD step's update ``-train.lr * g / B``.
    """
    from securefvpa.rounds.encoding import unflatten
    from securefvpa.train import csprng

    p = cfg.privacy
    std = sigma * p.clip
    noisy = grad_sum + std * csprng.standard_normal(grad_sum.size)
    batch = max(p.sample_rate * sum(units), 1e-12)
    mean = -cfg.train.lr * noisy / batch
    stats = {"expected_batch": batch, "noise_std": std}
    return {k: np.asarray(v, dtype=np.float64) for k, v in unflatten(mean, like).items()}, stats


class LocalTransport:
    """Rounds over ``nodes`` in this process. ``dp`` overrides the DP settings used for training
    (the audit's injections; the ledger still records each node's planned event).

    With a ``codec`` (secure aggregation on) every client vector is encoded into the ring exactly
    as the secure-aggregation mod encodes it (fixed point, or distributed noise) and the server
    decodes the plain ring sum — what secure aggregation returns, since the masks cancel.
    ``units`` gives each training client's public unit count (the distributed denominator).
    """

    def __init__(
        self,
        nodes: list[ClientNode],
        *,
        dp: DPSettings | None = None,
        evaluate: bool = True,
        codec: RoundCodec | None = None,
        units: dict[int, int] | None = None,
    ) -> None:
        if not nodes:
            raise FederationError("LocalTransport needs at least one client node. Found none.")
        self.nodes = {n.partition.partition_id: n for n in nodes}
        self.cfg = nodes[0].cfg
        self.dp = dp
        self.do_evaluate = evaluate
        self.codec = codec
        self.units = units or {}
        self.last_eval_rows: list[tuple[int, str, Any]] = []

    def discover(self) -> list[NodeInfo]:
        return [
            NodeInfo(
                node_id=pid,
                partition_id=pid,
                role=n.partition.role,
                train_pairs=n.partition.n_train_pairs,
            )
            for pid, n in sorted(self.nodes.items())
        ]

    def train_round(
        self, rnd: int, attempt: int, sampled: list[NodeInfo], params: dict[str, np.ndarray]
    ) -> RoundOutcome:
        out = RoundOutcome(mean_update=None)
        replies: list[tuple[int, float, dict[str, np.ndarray]]] = []
        rings: list[tuple[int, np.ndarray]] = []
        sums: list[tuple[int, np.ndarray]] = []
        losses: list[float] = []
        eps: list[float] = []
        for info in sampled:
            res = local_train_round(
                self.nodes[info.partition_id], params, rnd=rnd, attempt=attempt, dp=self.dp
            )
            if res.status == STATUS_DECLINED:
                out.declined.append(info.partition_id)
                continue
            if res.grad_sum is not None:
                sums.append((info.partition_id, res.grad_sum))
            elif self.codec is not None:
                ring = res.ring
                if ring is None and res.update is not None:
                    ring = self.codec.encode_update(res.update, res.num_examples)
                if ring is not None:
                    rings.append((info.partition_id, ring))
            elif res.update is not None:
                w = res.num_examples
                replies.append((info.partition_id, w, {k: v * w for k, v in res.update.items()}))
            if math.isfinite(res.train_loss):
                losses.append(res.train_loss)
            if res.epsilon is not None:
                eps.append(res.epsilon)
        if sums:
            out.trained = [pid for pid, _ in sums]
            plan = self.nodes[out.trained[0]].plan
            out.mean_update, stats = central_gaussian_update(
                self.cfg,
                np.sum([g for _, g in sums], axis=0),
                sigma=plan.noise_multiplier if plan is not None else 0.0,
                like=params,
                units=[self.units.get(pid, 0) for pid in out.trained],
            )
            out.extra = {"central_noise": stats}
        elif self.codec is not None:
            if rings:
                total = np.zeros_like(rings[0][1])
                for _, ring in rings:
                    total += ring  # modulo 2^bits: the unsigned dtype wraps
                out.trained = [pid for pid, _ in rings]
                out.mean_update, stats = self.codec.decode(
                    total,
                    like=params,
                    units=[self.units.get(pid, 0) for pid in out.trained],
                    rnd=rnd,
                    attempt=attempt,
                )
                out.extra = {
                    "secagg": {
                        "contributors": len(rings),
                        "participants": len(rings),
                        "threshold": math.ceil(self.cfg.secagg.threshold * len(rings)),
                    }
                    | stats
                }
        else:
            out.mean_update, out.trained, rejected = weighted_mean(replies, params)
            for pid, reason in rejected:
                log.warning(
                    "round %d: client %d sent a malformed update (%s); ignored", rnd, pid, reason
                )
                out.failed.append(pid)
        out.train_loss = float(np.mean(losses)) if losses else None
        out.epsilon_max = max(eps) if eps else None
        return out

    def evaluate(self, rnd: int, params: dict[str, np.ndarray]) -> dict[str, Any]:
        if not self.do_evaluate:
            return {}
        rows, kept = [], 0
        for pid, n in sorted(self.nodes.items()):
            counts = evaluate_round(n, params, rnd=rnd)
            if counts is None:  # DP on: the counts stay on the node (its own log)
                kept += 1
            else:
                rows.append((pid, n.partition.role, counts))
        self.last_eval_rows = rows
        names = next(iter(self.nodes.values())).partition.pairs.type_names
        out = combine_eval(rows, self.cfg, type_names=names)
        if kept:
            out["kept_on_clients"] = kept
        return out
