"""Central (non-federated, non-private) training of one model kind, and its evaluation.

``securefvpa run`` with ``federation.mode = "central"`` calls :func:`run_central`; the benchmark
and the tests use it to compare BTL, VPL, FedVPA-GP and the type oracle in one harness.
"""

from __future__ import annotations

import time

import numpy as np

from securefvpa.config import RunConfig
from securefvpa.data.dataset import EmbeddedPairs, UserSplit
from securefvpa.errors import DataError
from securefvpa.models.factory import build_model, count_parameters
from securefvpa.models.preference import PreferenceModel
from securefvpa.train.loop import evaluate, make_optimizer, train_steps

PROGRESS_CHUNKS = 20


def train_central(
    cfg: RunConfig, pairs: EmbeddedPairs, split: UserSplit, *, progress: bool = True
) -> tuple[PreferenceModel, dict[str, object]]:
    """Build the model of ``cfg.model`` and train it on the seen users' train rows."""
    if not split.seen:
        raise DataError("central training needs at least one seen user. Found 0.")
    model = build_model(
        cfg.model, embed_dim=pairs.dim, n_types=len(pairs.type_names), seed=cfg.seed
    )
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 1]))
    optimizer = make_optimizer(model, cfg.train)
    steps = cfg.train.steps
    chunk = max(1, -(-steps // PROGRESS_CHUNKS))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, desc=f"train {cfg.model.kind}", unit="step")
    losses, episodes, done = [], 0, 0
    start = time.perf_counter()
    while done < steps:
        n = min(chunk, steps - done)
        stats = train_steps(
            model,
            pairs,
            list(split.seen),
            steps=n,
            train_cfg=cfg.train,
            rng=rng,
            optimizer=optimizer,
            step_offset=done,
            total_steps=steps,
        )
        losses.append(stats.mean_loss * n)
        episodes += stats.episodes
        done += n
        if bar is not None:
            bar.update(n)
            bar.set_postfix(loss=f"{stats.mean_loss:.3f}")
    if bar is not None:
        bar.close()
    info: dict[str, object] = {
        "steps": steps,
        "episodes": episodes,
        "mean_loss": float(sum(losses) / steps),
        "seconds": time.perf_counter() - start,
        "parameters": count_parameters(model),
    }
    return model, info


def run_central(
    cfg: RunConfig, pairs: EmbeddedPairs, split: UserSplit, *, progress: bool = True
) -> dict[str, object]:
    """Train ``cfg.model.kind`` centrally and evaluate on seen and unseen users.

    Returns ``{"model", "accuracy": {"seen_users", "unseen_users", "controversial", ...},
    "latent": {"mutual_information_bits", "active_components", "mean_kl",
    "posterior_collapse", ...}, "pairs", "train"}``; accuracies are None where no pair exists.
    """
    model, info = train_central(cfg, pairs, split, progress=progress)
    result = evaluate(model, pairs, split, seed=cfg.seed)
    return {"model": cfg.model.kind, **result, "train": info}
