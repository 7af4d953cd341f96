"""Non-private training (central, or a client's local steps) and evaluation.

:func:`train_steps` runs Adam on minibatches of episodes: at every step each user's train rows are
freshly partitioned into episodes (:func:`securefvpa.train.episodes.partition_episodes`) and
``episodes_per_batch`` of them are drawn without replacement. The Gumbel-Softmax temperature is
annealed by GLOBAL step (``step_offset + i`` of ``total_steps``) so local rounds of a federation
continue one schedule. The private path (Opacus) lives in ``train/private.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from securefvpa.config import TrainConfig
from securefvpa.data.dataset import EmbeddedPairs, UserData, UserSplit
from securefvpa.errors import ConfigError, DataError
from securefvpa.models import metrics
from securefvpa.models.preference import PreferenceModel
from securefvpa.models.priors import geometric_temperature
from securefvpa.train.episodes import collate, eval_batch, partition_episodes

EVAL_CHUNK = 256  # users per evaluation forward pass


@dataclass(frozen=True)
class TrainStats:
    mean_loss: float
    steps: int
    episodes: int


def make_optimizer(model: torch.nn.Module, train_cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam, or plain SGD (``train.optimizer = "sgd"``): in federated rounds a client starts a
    fresh optimizer every round, and a fresh Adam's first steps are sign-like (every coordinate
    moves by about lr), which FedAvg then averages; SGD keeps gradient magnitudes."""
    if train_cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    return torch.optim.Adam(
        model.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay
    )


def apply_schedule(
    model: PreferenceModel, step: int, total_steps: int, train_cfg: TrainConfig
) -> None:
    """Set the Gumbel-Softmax temperature and the KL warm-up weight for global ``step``.

    tau follows :func:`geometric_temperature` from the model's tau_start to tau_end over
    ``total_steps``; the KL weight rises linearly from 0 to 1 over the first
    ``train_cfg.kl_warmup * total_steps`` steps (Bowman et al. 2016) and stays at 1 after.
    The private (Opacus) path calls this too, before each forward.
    """
    model.set_temperature(geometric_temperature(step, total_steps, model.tau_start, model.tau_end))
    ramp = train_cfg.kl_warmup * total_steps
    model.set_kl_weight(1.0 if ramp <= 0 else min(1.0, step / ramp))


def train_steps(
    model: PreferenceModel,
    pairs: EmbeddedPairs,
    users: Sequence[UserData],
    *,
    steps: int,
    train_cfg: TrainConfig,
    rng: np.random.Generator,
    optimizer: torch.optim.Optimizer | None = None,
    step_offset: int = 0,
    total_steps: int | None = None,
) -> TrainStats:
    """``steps`` Adam steps on episodes of ``users``; deterministic given ``rng``'s state.

    The torch RNG used for reparameterisation and Gumbel noise is forked and seeded from ``rng``,
    so the global torch RNG is left untouched.
    """
    if steps < 0:
        raise ConfigError(f"steps must be >= 0. Found {steps!r}.")
    if not users:
        raise DataError("train_steps needs at least one user. Found 0.")
    total = total_steps if total_steps is not None else step_offset + steps
    if total < step_offset + steps:
        raise ConfigError(
            f"total_steps must be >= step_offset + steps = {step_offset + steps}. Found {total!r}."
        )
    opt = optimizer if optimizer is not None else make_optimizer(model, train_cfg)
    model.train()
    losses: list[float] = []
    n_episodes = 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(rng.integers(0, 2**63 - 1)))
        for i in range(steps):
            apply_schedule(model, step_offset + i, total, train_cfg)
            episodes = partition_episodes(
                pairs,
                users,
                context_pairs=train_cfg.context_pairs,
                target_pairs=train_cfg.target_pairs,
                rng=rng,
            )
            take = min(train_cfg.episodes_per_batch, len(episodes))
            chosen = rng.choice(len(episodes), size=take, replace=False)
            batch = collate(pairs, [episodes[j] for j in chosen])
            loss, _ = model(**batch.inputs())
            opt.zero_grad(set_to_none=True)
            loss.mean().backward()
            opt.step()
            losses.append(float(loss.mean().detach()))
            n_episodes += take
    return TrainStats(
        mean_loss=float(np.mean(losses)) if losses else float("nan"),
        steps=steps,
        episodes=n_episodes,
    )


@dataclass(frozen=True)
class UserScores:
    """Per-user evaluation output (numpy), the raw material of :func:`evaluate` and benchmarks."""

    users: npt.NDArray[np.int64]  # [U] user index
    types: npt.NDArray[np.int64]  # [U] true type, -1 unknown
    correct: list[npt.NDArray[np.float64]]  # per user: correctness of each held-out pair
    controversial: list[npt.NDArray[np.int8]]  # per user: controversial flag of each pair
    kl: npt.NDArray[np.float64]  # [U] KL term of the posterior (0 for btl / oracle)
    mu: npt.NDArray[np.float64] | None  # [U, L] posterior means
    comp_probs: npt.NDArray[np.float64] | None  # [U, K] q(c | ctx) (FedVPA-GP)


def score_users(
    model: PreferenceModel, pairs: EmbeddedPairs, users: Sequence[UserData]
) -> UserScores:
    """Infer each user's latent from its train rows and score its held-out rows."""
    correct, contro, kls, mus, comps = [], [], [], [], []
    for start in range(0, len(users), EVAL_CHUNK):
        chunk = users[start : start + EVAL_CHUNK]
        batch = eval_batch(pairs, chunk)
        out = model.infer(batch)
        margin = out["margin"].numpy()
        for i in range(len(chunk)):
            m = batch.tgt_rows[i] >= 0
            correct.append(metrics.pair_correct(margin[i][m]))
            contro.append(pairs.controversial[batch.tgt_rows[i][m]])
        kls.append(out["kl"].numpy())
        if "mu" in out:
            mus.append(out["mu"].numpy())
        if "comp_probs" in out:
            comps.append(out["comp_probs"].numpy())
    return UserScores(
        users=np.array([u.user for u in users], dtype=np.int64),
        types=np.array([u.type_index for u in users], dtype=np.int64),
        correct=correct,
        controversial=contro,
        kl=np.concatenate(kls).astype(np.float64) if kls else np.zeros(0),
        mu=np.concatenate(mus).astype(np.float64) if mus else None,
        comp_probs=np.concatenate(comps).astype(np.float64) if comps else None,
    )


def _accuracy(scores: UserScores, *, controversial_only: bool = False) -> float | None:
    parts = []
    for c, flag in zip(scores.correct, scores.controversial):
        parts.append(c[flag == 1] if controversial_only else c)
    allc = np.concatenate(parts) if parts else np.zeros(0)
    return float(allc.mean()) if allc.size else None


def inferred_components(
    model: PreferenceModel, scores: UserScores, *, seed: int = 0
) -> npt.NDArray[np.int64]:
    """Each user's inferred component: argmax q(c|ctx) (FedVPA-GP), seeded k-means of posterior
    means with K = model.components (VPL), the true type (oracle), 0 for everyone (BTL)."""
    if model.kind == "fedvpa-gp" and scores.comp_probs is not None:
        return scores.comp_probs.argmax(-1).astype(np.int64)
    if model.kind == "vpl" and scores.mu is not None:
        return metrics.kmeans_assignments(scores.mu, model.components, seed=seed)
    if model.kind == "oracle":
        return scores.types.copy()
    return np.zeros(scores.users.shape[0], dtype=np.int64)


def latent_diagnostics(
    model: PreferenceModel, scores: UserScores, *, seed: int = 0
) -> dict[str, object]:
    """MI (plug-in, Miller-Madow, permutation null), active components, mean KL, collapse flag."""
    comp = inferred_components(model, scores, seed=seed)
    known = scores.types >= 0
    mi = mm = null_mean = p_value = None
    if model.kind == "btl":
        mi, mm, null_mean, p_value = 0.0, 0.0, 0.0, 1.0
    elif known.sum() >= 1:
        mi = metrics.mutual_information_bits(comp[known], scores.types[known])
        mm = metrics.miller_madow_mi_bits(comp[known], scores.types[known])
        null_mean, p_value = metrics.permutation_null_mi_bits(
            comp[known], scores.types[known], seed=seed
        )
    mean_kl = float(scores.kl.mean()) if scores.kl.size else 0.0
    latent = model.kind in ("vpl", "fedvpa-gp")
    collapse = (
        metrics.posterior_collapse(mean_kl, model.latent_dim, mi if mi is not None else 0.0)
        if latent
        else False
    )
    return {
        "mutual_information_bits": mi,
        "mi_miller_madow_bits": mm,
        "mi_permutation_null_bits": null_mean,
        "mi_permutation_p_value": p_value,
        "active_components": metrics.active_components(comp),
        "mean_kl": mean_kl,
        "kl_per_dim": mean_kl / model.latent_dim if latent else 0.0,
        "posterior_collapse": collapse,
    }


def evaluate(
    model: PreferenceModel,
    pairs: EmbeddedPairs,
    split_or_users: UserSplit | Sequence[UserData],
    *,
    seed: int = 0,
) -> dict[str, object]:
    """Pair-weighted held-out accuracy and latent diagnostics.

    Given a :class:`UserSplit`: accuracy for seen and unseen users separately, controversial
    accuracy and latent diagnostics over all users together. Given users: the same over them.
    ``controversial`` is None when no evaluated pair is known to be controversial.
    """
    if isinstance(split_or_users, UserSplit):
        seen = score_users(model, pairs, split_or_users.seen) if split_or_users.seen else None
        unseen = score_users(model, pairs, split_or_users.unseen) if split_or_users.unseen else None
        parts = [s for s in (seen, unseen) if s is not None]
        if not parts:
            raise DataError("evaluate: the split has no users")
        both = merge_scores(parts)
        return {
            "accuracy": {
                "seen_users": _accuracy(seen) if seen else None,
                "unseen_users": _accuracy(unseen) if unseen else None,
                "controversial": _accuracy(both, controversial_only=True),
                "controversial_seen": _accuracy(seen, controversial_only=True) if seen else None,
                "controversial_unseen": (
                    _accuracy(unseen, controversial_only=True) if unseen else None
                ),
                "all_users": _accuracy(both),
            },
            "pairs": {"seen": _count(seen), "unseen": _count(unseen)},
            "latent": latent_diagnostics(model, both, seed=seed),
        }
    users = list(split_or_users)
    if not users:
        raise DataError("evaluate needs at least one user. Found 0.")
    scores = score_users(model, pairs, users)
    return {
        "accuracy": _accuracy(scores),
        "controversial": _accuracy(scores, controversial_only=True),
        "pairs": _count(scores),
        "latent": latent_diagnostics(model, scores, seed=seed),
    }


def _count(scores: UserScores | None) -> int:
    return int(sum(c.size for c in scores.correct)) if scores is not None else 0


def merge_scores(parts: list[UserScores]) -> UserScores:
    def cat(name: str) -> npt.NDArray[np.float64] | None:
        vals = [getattr(p, name) for p in parts]
        return None if any(v is None for v in vals) else np.concatenate(vals)

    return UserScores(
        users=np.concatenate([p.users for p in parts]),
        types=np.concatenate([p.types for p in parts]),
        correct=[c for p in parts for c in p.correct],
        controversial=[c for p in parts for c in p.controversial],
        kl=np.concatenate([p.kl for p in parts]),
        mu=cat("mu"),
        comp_probs=cat("comp_probs"),
    )
