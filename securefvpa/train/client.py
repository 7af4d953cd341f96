"""One client's side of a federated round, free of Flower: train, account, evaluate.

A client knows itself only from its own node config (:class:`securefvpa.rundir.NodeConfig`):
:func:`load_node` reads the run config the node agreed to, its partition file and its privacy
plan. :func:`local_train_round` is what a ClientApp's train handler (or the in-process
transport) does:

1. build the model (cached per node) and load the global parameters;
2. with DP on: ask the budget guard whether the planned DP event keeps the client within its
   budget over its own ledger history (``PrivacyPlan.authorize``); if not, the refusal is
   recorded and the client declines — no training, no update;
3. train ``federation.local_steps`` steps (DP-SGD through ``train.private`` when DP is on);
4. with DP on: commit the DP event to the ledger *before* the update is returned;
5. return ``update = theta_local - theta_global``, the weight ``num_examples`` and statistics.

The user's latent z is computed inside the model and never returned; evaluation returns counts
only (:class:`EvalCounts`).
"""

from __future__ import annotations

import dataclasses
import functools
import hmac
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from securefvpa.config import RunConfig, config_hash, load_config
from securefvpa.data.partition import ClientPartition, load_partition
from securefvpa.errors import FederationError, PrivacyBudgetExhausted
from securefvpa.models.factory import build_model
from securefvpa.privacy.plan import DPSettings, PrivacyPlan
from securefvpa.rundir import NodeConfig
from securefvpa.secagg.ddg import DdgSpec, rotation_seed
from securefvpa.secagg.ddg import encode as ddg_encode
from securefvpa.train.params import load_arrays, model_to_arrays

if TYPE_CHECKING:
    from securefvpa.models.preference import PreferenceModel

STATUS_OK = "ok"
STATUS_DECLINED = "declined"  # the budget guard refused the round: no training, no update


@dataclass(frozen=True)
class ClientNode:
    """A client as it knows itself: its run config, its partition and its privacy plan."""

    cfg: RunConfig
    partition: ClientPartition
    plan: PrivacyPlan | None  # None when DP is off
    eval_log: Path | None = None  # where the node keeps its evaluation counts under DP

    @property
    def client_id(self) -> str:
        return client_id(self.partition.partition_id)


@dataclass
class LocalRoundResult:
    """One local round: ``update`` is ``theta_local - theta_global`` (float64), or None.

    Distributed noise: ``ring`` is the round's ring vector instead (the rounded, rotated sum of
    the sampled units' clipped gradients plus this client's discrete-Gaussian share; it leaves
    only masked, through secure aggregation) and ``num_examples`` the client's public unit count.
    """

    status: str  # STATUS_OK | STATUS_DECLINED
    update: dict[str, np.ndarray] | None
    num_examples: int  # the aggregation weight (train pairs; public under replace-one)
    train_loss: float  # nan under DP: the raw loss is not private
    epsilon: float | None = None  # the client's epsilon after this round (DP)
    reason: str = ""
    ring: np.ndarray | None = None
    grad_sum: np.ndarray | None = None  # central noise: the clipped gradient sum (no noise)


@dataclass(frozen=True)
class EvalCounts:
    """What a client's evaluation reveals: counts, never a z or a pair.

    ``contingency`` is the (latent cell x user type) table over the client's users, row-major,
    ``cells * types`` long. ``type_pairs[t]`` / ``type_correct[t]`` are the held-out pairs
    scored / correct (ties 1/2) of the client's users of type index ``t`` (``types`` long; users
    of unknown type are in ``pairs`` only): with the client's role they give accuracy per user
    type and role, e.g. per Polis conversation (``rounds.evaluation.group_metrics``).
    """

    pairs: int
    correct: float  # ties count 1/2
    contro_pairs: int
    contro_correct: float
    users: int
    kl_sum: float
    cells: int
    types: int
    contingency: tuple[int, ...]
    type_pairs: tuple[int, ...] = ()
    type_correct: tuple[float, ...] = ()  # ties count 1/2


def client_id(partition_id: int) -> str:
    return f"client-{partition_id:05d}"


def load_node(node: NodeConfig) -> ClientNode:
    """Read everything a client needs from its node config (the trust boundary).

    Raises FederationError when the run config file does not have the pinned hash, and
    ConfigError / DataError / RunDirError for unreadable files.
    """
    cfg = load_config(node.config)
    if not hmac.compare_digest(config_hash(cfg), node.config_hash):
        raise FederationError(
            f"node {node.partition_id}: run config {node.config!r} has hash "
            f"{config_hash(cfg)[:16]}…, but the node config pins {node.config_hash[:16]}…"
        )
    part = load_partition(Path(node.partition))
    if part.partition_id != node.partition_id:
        raise FederationError(
            f"node config names partition {node.partition_id} but {node.partition!r} holds "
            f"partition {part.partition_id}"
        )
    plan = PrivacyPlan.for_node(cfg, node) if cfg.privacy.enabled else None
    log_path = Path(node.eval_log) if node.eval_log else None
    return ClientNode(cfg=cfg, partition=part, plan=plan, eval_log=log_path)


@functools.lru_cache(maxsize=8)
def _config_hash(cfg: RunConfig) -> str:
    """``config_hash(cfg)``, computed once per config (it serialises the whole config to TOML:
    ~0.6 ms, every round of every node otherwise; ``benchmarks/scale.py``)."""
    return config_hash(cfg)


@functools.lru_cache(maxsize=4)
def _cached_model(model_cfg: Any, embed_dim: int, n_types: int, seed: int) -> PreferenceModel:
    return build_model(model_cfg, embed_dim=embed_dim, n_types=n_types, seed=seed)


def _model_for(node: ClientNode, params: dict[str, np.ndarray]) -> PreferenceModel:
    """The node's model with ``params`` loaded, in the state of a freshly built one.

    Built once per process and then reset (parameters, train mode, Gumbel temperature, KL
    weight, and every gradient or per-sample-gradient attribute Opacus may have left), so a
    round sees exactly what a fresh ``build_model`` + ``load_arrays`` would give.
    """
    model = _cached_model(*_model_key(node))
    load_arrays(model, params)
    model.train()
    model.set_temperature(model.tau_start)
    model.set_kl_weight(1.0)
    for p in model.parameters():
        p.grad = None
        for attr in ("grad_sample", "summed_grad", "_forward_counter"):
            if hasattr(p, attr):
                delattr(p, attr)
    return model


def _model_key(node: ClientNode) -> tuple[Any, int, int, int]:
    """What the node's model is built from: (model config, embedding dim, types, seed)."""
    part = node.partition
    return node.cfg.model, part.pairs.dim, max(1, len(part.pairs.type_names)), node.cfg.seed


def model_dim(node: ClientNode) -> int:
    """Number of parameters a round exchanges: every array of the node's model
    (``model_to_arrays``), which is what the server sends and each update covers."""
    return _model_dim(*_model_key(node))


@functools.lru_cache(maxsize=4)
def _model_dim(model_cfg: Any, embed_dim: int, n_types: int, seed: int) -> int:
    model = _cached_model(model_cfg, embed_dim, n_types, seed)
    return sum(int(p.numel()) for p in model.state_dict().values())


def _seed_round(node: ClientNode, rnd: int) -> np.random.Generator:
    """Non-secret randomness (episode shuffles, Gumbel draws), reproducible for --resume."""
    seeds = np.random.SeedSequence([node.cfg.seed, rnd, node.partition.partition_id, 0xC1])
    torch.manual_seed(int(seeds.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1)))
    return np.random.default_rng(seeds)


def local_train_round(
    node: ClientNode,
    params: dict[str, np.ndarray],
    *,
    rnd: int,
    attempt: int = 1,
    dp: DPSettings | None = None,
) -> LocalRoundResult:
    """One local round on ``params``. ``dp`` overrides the plan's DP settings for *training
    only* (the audit's injections); the ledger always records the plan's event."""
    part = node.partition
    if part.role != "train":
        raise FederationError(f"partition {part.partition_id} holds unseen users and never trains")
    if node.plan is not None and (
        node.plan.distributed is not None or node.cfg.privacy.noise == "central"
    ):
        return _distributed_round(node, params, rnd=rnd, attempt=attempt)
    rng = _seed_round(node, rnd)
    model = _model_for(node, params)
    fed = node.cfg.federation
    step_offset = (rnd - 1) * fed.local_steps
    total_steps = fed.rounds * fed.local_steps
    epsilon = None
    if node.plan is not None:
        from securefvpa.train.private import private_train_steps

        try:
            decision = node.plan.authorize(client_id=node.client_id, round=rnd, attempt=attempt)
        except PrivacyBudgetExhausted as exc:
            return LocalRoundResult(STATUS_DECLINED, None, 0, float("nan"), None, str(exc))
        private_train_steps(
            model,
            part.pairs,
            part.users,
            steps=fed.local_steps,
            train_cfg=node.cfg.train,
            dp=dp or node.plan.dp_settings(),
            rng=rng,
            step_offset=step_offset,
            total_steps=total_steps,
        )
        # The event is committed before the update leaves this function.
        node.plan.commit(client_id=node.client_id, round=rnd, attempt=attempt)
        epsilon = decision.epsilon_if_trained
        # The raw training loss is a function of the private pairs that no noise protects:
        # with DP on it stays on the client (only the noised update leaves).
        loss = float("nan")
    else:
        from securefvpa.train.loop import train_steps

        stats = train_steps(
            model,
            part.pairs,
            list(part.users),
            steps=fed.local_steps,
            train_cfg=dataclasses.replace(
                node.cfg.train, episodes_per_batch=fed.local_batch_episodes
            ),
            rng=rng,
            step_offset=step_offset,
            total_steps=total_steps,
        )
        loss = float(stats.mean_loss)
    local = model_to_arrays(model)
    update = {k: local[k].astype(np.float64) - params[k].astype(np.float64) for k in params}
    return LocalRoundResult(STATUS_OK, update, part.n_train_pairs, loss, epsilon)


def ddg_spec(node: ClientNode) -> DdgSpec:
    """The distributed mechanism this node follows (its plan, from its node config)."""
    if node.plan is None or node.plan.distributed is None:
        raise FederationError(f"node {node.partition.partition_id} does not use distributed noise")
    d = node.plan.distributed
    return DdgSpec(
        dim=d.dim,
        clip=node.cfg.privacy.clip,
        gamma=d.gamma,
        local_sigma=d.local_sigma,
        beta=d.beta,
        bits=d.bits,
        block_size=d.block_size,
    )


def _distributed_round(
    node: ClientNode, params: dict[str, np.ndarray], *, rnd: int, attempt: int
) -> LocalRoundResult:
    """One distributed DP-SGD step (``privacy.noise = "distributed"``, or ``"central"``: the
    clipped sum is returned without noise for the trusted server to noise).

    Poisson-sample the units (rate q, CSPRNG), clip each unit's gradient to C, round each unit
    onto the ring grid and add this client's discrete-Gaussian share (``secagg.ddg.encode``):
    only this ring vector leaves, masked by secure aggregation. The DP event is committed
    before it is returned. Nothing trains here: the server steps on the decoded sum.
    """
    from securefvpa.train.loop import apply_schedule
    from securefvpa.train.private import clipped_unit_gradients

    plan = node.plan
    if plan is None:
        raise FederationError(f"node {node.partition.partition_id} has no privacy plan")
    part = node.partition
    try:
        decision = plan.authorize(client_id=node.client_id, round=rnd, attempt=attempt)
    except PrivacyBudgetExhausted as exc:
        return LocalRoundResult(STATUS_DECLINED, None, 0, float("nan"), None, str(exc))
    rng = _seed_round(node, rnd)
    model = _model_for(node, params)
    if hasattr(model, "set_kl_weight"):  # the round is the step: same schedule as local mode
        apply_schedule(model, rnd - 1, node.cfg.federation.rounds, node.cfg.train)
    units = clipped_unit_gradients(
        model,
        part.pairs,
        part.users,
        unit=node.cfg.privacy.unit,
        train_cfg=node.cfg.train,
        dp=plan.dp_settings(),
        rng=rng,
    )
    if plan.distributed is None:  # central noise: the trusted server adds it to the sum
        plan.commit(client_id=node.client_id, round=rnd, attempt=attempt)
        return LocalRoundResult(
            STATUS_OK,
            None,
            units.units,
            float("nan"),
            decision.epsilon_if_trained,
            grad_sum=units.grads.sum(axis=0),
        )
    seed = rotation_seed(config_hash=_config_hash(node.cfg), round=rnd, attempt=attempt)
    ring = ddg_encode(units.grads, spec=ddg_spec(node), rotation_seed=seed)
    plan.commit(client_id=node.client_id, round=rnd, attempt=attempt)
    return LocalRoundResult(
        STATUS_OK, None, units.units, float("nan"), decision.epsilon_if_trained, ring=ring
    )


def evaluate_round(
    node: ClientNode, params: dict[str, np.ndarray], *, rnd: int
) -> EvalCounts | None:
    """What a node releases after evaluating ``params``: its counts when DP is off; with DP on,
    nothing — the counts (a function of its held-out pairs that no noise covers) stay on the node.

    Either way, when its node config names an ``eval_log``, the node appends the counts and its
    users' own (pairs, correct) — in partition order, for paired comparisons per user
    (``securefvpa.compare``) — to that log, which never leaves it. In a simulation the
    operator of every node may aggregate those logs
    (``rounds.evaluation.collect_node_evaluations``); the server never sees them.
    """
    counts, per_user = _evaluate(node, params)
    if node.eval_log is None:
        if node.plan is None:
            return counts
        raise FederationError(
            f"node {node.partition.partition_id}: DP is on but its node config names no "
            "eval_log to keep its evaluation counts in"
        )
    node.eval_log.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(
        {
            "round": rnd,
            "partition_id": node.partition.partition_id,
            "role": node.partition.role,
            "counts": dataclasses.asdict(counts),
            "per_user": per_user,
        }
    )
    with node.eval_log.open("a", encoding="utf-8") as fh:
        fh.write(line + "\n")
    return counts if node.plan is None else None


def local_evaluate(node: ClientNode, params: dict[str, np.ndarray]) -> EvalCounts:
    """Counts for the server: pairs scored/correct, controversial scored/correct, KL sum, the
    (latent cell x user type) contingency table over this client's users, and pairs
    scored/correct per user type. No z leaves."""
    return _evaluate(node, params)[0]


def _evaluate(
    node: ClientNode, params: dict[str, np.ndarray]
) -> tuple[EvalCounts, list[list[float]]]:
    """:func:`local_evaluate`'s counts and each user's [pairs, correct] (for the node's log)."""
    from securefvpa.train.loop import score_users

    model = _model_for(node, params)
    part = node.partition
    scores = score_users(model, part.pairs, list(part.users))
    cells, n_cells = latent_cells(model, scores)
    n_types = max(1, len(part.pairs.type_names))
    table = np.zeros((n_cells, n_types), dtype=np.int64)
    for c, t in zip(cells, scores.types):
        if t >= 0:
            table[c, t] += 1
    type_pairs = np.zeros(n_types, dtype=np.int64)
    type_correct = np.zeros(n_types, dtype=np.float64)
    for user_correct, t in zip(scores.correct, scores.types):  # one entry per user
        if t >= 0:
            type_pairs[t] += user_correct.size
            type_correct[t] += float(user_correct.sum())
    correct = np.concatenate(scores.correct) if scores.correct else np.zeros(0)
    contro = np.concatenate(scores.controversial) if scores.controversial else np.zeros(0, np.int8)
    per_user = [[int(c.size), float(c.sum())] for c in scores.correct]
    return EvalCounts(
        pairs=int(correct.size),
        correct=float(correct.sum()),
        contro_pairs=int((contro == 1).sum()),
        contro_correct=float(correct[contro == 1].sum()),
        users=int(scores.users.size),
        kl_sum=float(scores.kl.sum()),
        cells=n_cells,
        types=n_types,
        contingency=tuple(int(x) for x in table.ravel()),
        type_pairs=tuple(int(x) for x in type_pairs),
        type_correct=tuple(float(x) for x in type_correct),
    ), per_user


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
