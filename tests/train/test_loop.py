"""Training loop, schedules, evaluation and the central runner on a planted two-type problem."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from securefvpa.config import ModelConfig, RunConfig, TrainConfig
from securefvpa.models.factory import build_model
from securefvpa.models.planted import planted_pairs
from securefvpa.models.priors import geometric_temperature
from securefvpa.train.central import run_central
from securefvpa.train.loop import apply_schedule, evaluate, train_steps

PLANTED = dict(users=80, pairs_per_user=16, dim=32, types=2, controversial_share=0.5, seed=0)
MODEL = dict(hidden=32, latent_dim=4, components=2)
TRAIN = TrainConfig(steps=600, episodes_per_batch=32, context_pairs=8, target_pairs=4)


def _fit(kind: str, pairs, split, seed: int = 0):
    model = build_model(ModelConfig(kind=kind, **MODEL), embed_dim=pairs.dim, n_types=2, seed=seed)
    train_steps(
        model,
        pairs,
        list(split.seen),
        steps=TRAIN.steps,
        train_cfg=TRAIN,
        rng=np.random.default_rng(seed),
    )
    return evaluate(model, pairs, split)


def test_fedvpa_gp_separates_conflicting_types_where_btl_cannot() -> None:
    pairs, split = planted_pairs(**PLANTED)
    btl = _fit("btl", pairs, split)
    gp = _fit("fedvpa-gp", pairs, split)
    assert 0.35 <= btl["accuracy"]["controversial"] <= 0.65  # averages the two types away
    assert gp["accuracy"]["controversial"] >= btl["accuracy"]["controversial"] + 0.10
    assert gp["accuracy"]["unseen_users"] >= btl["accuracy"]["unseen_users"] + 0.10
    assert gp["latent"]["mutual_information_bits"] >= 0.3
    assert gp["latent"]["active_components"] == 2
    assert gp["latent"]["posterior_collapse"] is False
    assert btl["latent"]["mutual_information_bits"] == 0.0


def test_training_is_deterministic_given_the_rng() -> None:
    pairs, split = planted_pairs(users=12, pairs_per_user=8, dim=8, seed=1)
    cfg = ModelConfig(kind="fedvpa-gp", hidden=8, latent_dim=3, components=2)
    tc = dataclasses.replace(TRAIN, steps=5, episodes_per_batch=4)
    params = []
    for _ in range(2):
        m = build_model(cfg, embed_dim=8, n_types=2, seed=0)
        stats = train_steps(
            m, pairs, list(split.seen), steps=5, train_cfg=tc, rng=np.random.default_rng(3)
        )
        params.append(torch.cat([p.detach().flatten() for p in m.parameters()]))
    assert torch.equal(params[0], params[1])
    assert stats.steps == 5 and stats.episodes == 20 and np.isfinite(stats.mean_loss)


def test_schedule_anneals_by_global_step() -> None:
    assert geometric_temperature(0, 11, 1.0, 0.3) == pytest.approx(1.0)
    assert geometric_temperature(10, 11, 1.0, 0.3) == pytest.approx(0.3)
    assert geometric_temperature(5, 11, 1.0, 0.3) == pytest.approx(np.sqrt(0.3))
    model = build_model(
        ModelConfig(
            kind="fedvpa-gp", hidden=8, latent_dim=3, components=2, tau_start=2.0, tau_end=0.5
        ),
        embed_dim=8,
        n_types=2,
        seed=0,
    )
    tc = dataclasses.replace(TRAIN, kl_warmup=0.5)
    apply_schedule(model, 25, 101, tc)
    assert model.kl_weight == pytest.approx(25 / 50.5)
    assert model.tau == pytest.approx(2.0 * 0.25**0.25)
    apply_schedule(model, 100, 101, tc)
    assert (model.tau, model.kl_weight) == (pytest.approx(0.5), 1.0)
    # a federated client continuing the global schedule ends where central training ends
    pairs, split = planted_pairs(users=4, pairs_per_user=8, dim=8, seed=1)
    train_steps(
        model,
        pairs,
        list(split.seen),
        steps=3,
        train_cfg=tc,
        rng=np.random.default_rng(0),
        step_offset=98,
        total_steps=101,
    )
    assert model.tau == pytest.approx(0.5)


def test_run_central_contract_and_user_list_evaluation() -> None:
    pairs, split = planted_pairs(users=20, pairs_per_user=8, dim=8, heldout_pairs=2, seed=2)
    cfg = RunConfig(
        seed=0,
        model=ModelConfig(kind="vpl", hidden=8, latent_dim=3, components=2),
        train=dataclasses.replace(TRAIN, steps=4, episodes_per_batch=8),
    )
    out = run_central(cfg, pairs, split, progress=False)
    assert out["model"] == "vpl"
    for key in ("seen_users", "unseen_users", "controversial"):
        assert 0.0 <= out["accuracy"][key] <= 1.0
    lat = out["latent"]
    assert isinstance(lat["mutual_information_bits"], float)
    assert isinstance(lat["active_components"], int) and isinstance(lat["posterior_collapse"], bool)
    assert out["train"]["steps"] == 4 and out["train"]["parameters"] > 0
    assert out["pairs"] == {"seen": 2 * len(split.seen), "unseen": 2 * len(split.unseen)}
    model = build_model(cfg.model, embed_dim=8, n_types=2, seed=0)
    res = evaluate(model, pairs, list(split.seen))
    assert res["pairs"] == 2 * len(split.seen) and 0.0 <= res["accuracy"] <= 1.0


def test_controversial_accuracy_is_none_when_unknown() -> None:
    pairs, split = planted_pairs(users=6, pairs_per_user=8, dim=8, seed=3)
    pairs = dataclasses.replace(pairs, controversial=np.full(pairs.n_pairs, -1, np.int8))
    model = build_model(ModelConfig(kind="btl", hidden=8), embed_dim=8, n_types=2, seed=0)
    assert evaluate(model, pairs, split)["accuracy"]["controversial"] is None
