"""One client's side of a federated round, free of Flower: train, account, evaluate.

``local_train_round`` is what a ClientApp's train handler does:
1. build the model and load the global parameters;
2. with DP on: ask the budget guard whether the planned DP event keeps the client within its
   budget (over the client's own ledger history); if not, record the refusal and decline —
   no training, no update;
3. train ``federation.local_steps`` steps (DP-SGD through ``train.private`` when DP is on);
4. with DP on: commit the DP event to the ledger *before* the update is returned;
5. return ``theta_local - theta_global``, the weight ``num_examples`` and scalar statistics.

The user's latent z is computed inside the model and never returned; evaluation returns
counts only (see ``local_evaluate``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from securefvpa.config import RunConfig
from securefvpa.fl.partition import ClientPartition
from securefvpa.models.factory import build_model
from securefvpa.train.params import load_arrays, model_to_arrays


@dataclass
class LocalRoundResult:
    status: str  # "ok" | "declined"
    delta: dict[str, np.ndarray] | None  # local - global (float64); the weight is num_examples
    num_examples: int
    train_loss: float
    epsilon: float | None = None
    reason: str = ""


def client_id(partition_id: int) -> str:
    return f"client-{partition_id:05d}"


def _model_for(
    cfg: RunConfig, part: ClientPartition, params: dict[str, np.ndarray]
) -> torch.nn.Module:
    model = build_model(
        cfg.model,
        embed_dim=part.pairs.dim,
        n_types=max(1, len(part.pairs.type_names)),
        seed=cfg.seed,
    )
    load_arrays(model, params)
    return model


def local_train_round(
    cfg: RunConfig, part: ClientPartition, params: dict[str, np.ndarray], *, rnd: int, run_dir: Path
) -> LocalRoundResult:
    # Non-secret randomness (episode shuffles, Gumbel draws), reproducible for --resume.
    seeds = np.random.SeedSequence([cfg.seed, rnd, part.partition_id, 0xC1])
    torch.manual_seed(int(seeds.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1)))
    rng = np.random.default_rng(seeds)
    model = _model_for(cfg, part, params)
    fed = cfg.federation
    step_offset = (rnd - 1) * fed.local_steps
    total_steps = fed.rounds * fed.local_steps
    n_examples = part.n_train_pairs
    epsilon = None
    if cfg.privacy.enabled:
        from securefvpa.dp_plan import PrivacyPlan
        from securefvpa.train.private import private_train_steps

        plan = PrivacyPlan.for_run(cfg, run_dir)
        decision = plan.check(client_id(part.partition_id), rnd)
        if not decision.allowed:
            plan.record_declined(client_id(part.partition_id), rnd, decision)
            return LocalRoundResult(
                "declined", None, 0, float("nan"), decision.epsilon_now, decision.reason
            )
        stats = private_train_steps(
            model,
            part.pairs,
            part.users,
            steps=fed.local_steps,
            train_cfg=cfg.train,
            dp=plan.dp_settings(),
            rng=rng,
            step_offset=step_offset,
            total_steps=total_steps,
        )
        # The event is committed before the update leaves this function.
        plan.commit(client_id(part.partition_id), rnd)
        epsilon = decision.epsilon_if_trained
        # The raw training loss is a function of the private pairs that no noise protects:
        # with DP on it stays on the client (only the noised update leaves).
        loss = float("nan")
        del stats
    else:
        from securefvpa.train.loop import train_steps

        stats_np = train_steps(
            model,
            part.pairs,
            list(part.users),
            steps=fed.local_steps,
            train_cfg=_local_train_cfg(cfg),
            rng=rng,
            step_offset=step_offset,
            total_steps=total_steps,
        )
        loss = float(stats_np.mean_loss)
    local = model_to_arrays(model)
    delta = {k: local[k].astype(np.float64) - params[k].astype(np.float64) for k in params}
    return LocalRoundResult("ok", delta, n_examples, float(loss), epsilon)


def _local_train_cfg(cfg: RunConfig) -> Any:
    import dataclasses

    return dataclasses.replace(cfg.train, episodes_per_batch=cfg.federation.local_batch_episodes)


def local_evaluate(
    cfg: RunConfig, part: ClientPartition, params: dict[str, np.ndarray]
) -> dict[str, Any]:
    """Counts for the server: pairs scored/correct, controversial scored/correct, KL sum, and
    the (latent cell x user type) contingency table over this client's users. No z leaves."""
    from securefvpa.train.loop import score_users

    model = _model_for(cfg, part, params)
    scores = score_users(model, part.pairs, list(part.users))
    cells, n_cells = latent_cells(model, scores)
    n_types = max(1, len(part.pairs.type_names))
    table = np.zeros((n_cells, n_types), dtype=np.int64)
    for c, t in zip(cells, scores.types):
        if t >= 0:
            table[c, t] += 1
    correct = np.concatenate(scores.correct) if scores.correct else np.zeros(0)
    contro = np.concatenate(scores.controversial) if scores.controversial else np.zeros(0, np.int8)
    return {
        "pairs": int(correct.size),
        "correct": float(correct.sum()),  # ties count 1/2
        "contro-pairs": int((contro == 1).sum()),
        "contro-correct": float(correct[contro == 1].sum()),
        "users": int(scores.users.size),
        "kl-sum": float(scores.kl.sum()),
        "cells": n_cells,
        "types": n_types,
        "contingency": [int(x) for x in table.ravel()],
    }


def latent_cells(model: Any, scores: Any) -> tuple[np.ndarray, int]:
    """Each user's latent cell, computed on the client so that no z leaves it.

    FedVPA-GP: argmax q(c | ctx) over the K components. VPL has no components and its users'
    posterior means may not be pooled for k-means in a federation, so its cell is the sign
    pattern of the first ceil(log2 K) latent coordinates (a coarse, z-free discretisation;
    the central harness uses k-means instead). Oracle: the true type. BTL: one cell.
    """
    n = scores.users.shape[0]
    if model.kind == "fedvpa-gp" and scores.comp_probs is not None:
        return scores.comp_probs.argmax(-1).astype(np.int64), int(scores.comp_probs.shape[1])
    if model.kind == "vpl" and scores.mu is not None:
        bits = max(1, int(np.ceil(np.log2(max(2, model.components)))))
        bits = min(bits, scores.mu.shape[1])
        signs = (scores.mu[:, :bits] > 0).astype(np.int64)
        return (signs * (1 << np.arange(bits))).sum(axis=1), 1 << bits
    if model.kind == "oracle":
        return np.maximum(scores.types, 0), int(model.n_types)
    return np.zeros(n, dtype=np.int64), 1
