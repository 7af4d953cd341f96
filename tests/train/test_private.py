"""Client DP-SGD through Opacus: per-episode gradients, one-pair sensitivity, CSPRNG noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from securefvpa.config import ModelConfig, TrainConfig
from securefvpa.data.dataset import EmbeddedPairs
from securefvpa.errors import ConfigError
from securefvpa.models import preference
from securefvpa.models.factory import build_model
from securefvpa.models.planted import planted_pairs
from securefvpa.privacy.plan import DPSettings
from securefvpa.train import csprng
from securefvpa.train.episodes import collate, partition_episodes
from securefvpa.train.private import (
    CsprngDPOptimizer,
    PrivateStepper,
    private_train_steps,
    wrap,
)

TRAIN = TrainConfig(context_pairs=4, target_pairs=2, lr=0.01)


@pytest.fixture
def deterministic_latent(monkeypatch):
    """Row-independent, noise-free latent sampling so a micro-batch oracle sees the same draws."""
    monkeypatch.setattr(preference.torch, "randn_like", torch.zeros_like)
    monkeypatch.setattr(
        preference.F,
        "gumbel_softmax",
        lambda logits, tau=1.0, hard=False: F.softmax(logits / tau, dim=-1),
    )


def _client(kind: str = "fedvpa-gp", users: int = 3):
    pairs, split = planted_pairs(users=12, pairs_per_user=16, dim=16, seed=3)
    model = build_model(
        ModelConfig(kind=kind, hidden=16, latent_dim=4, components=3),
        embed_dim=pairs.dim,
        n_types=2,
        seed=0,
    )
    return model, pairs, list(split.seen[:users])


def _flat_grads(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.requires_grad])


def _flat_params(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat(
        [p.detach().reshape(-1).clone() for p in model.parameters() if p.requires_grad]
    )


SGD1 = TrainConfig(context_pairs=4, target_pairs=2, lr=1.0, optimizer="sgd")


def _oracle_clipped(model: torch.nn.Module, pairs, episodes, clip: float) -> torch.Tensor:
    """Brute force: each episode's gradient on its own (plain autograd, no Opacus), clipped
    with Opacus' rule ``g * min(1, C / (||g|| + 1e-6))``. Shape [n_episodes, n_params]."""
    rows = []
    for ep in episodes:
        model.zero_grad(set_to_none=True)
        loss, _ = model(**collate(pairs, [ep]).inputs())
        loss.sum().backward()
        g = _flat_grads(model)
        rows.append(g * min(1.0, clip / (float(g.norm()) + 1e-6)))
    model.zero_grad(set_to_none=True)
    return torch.stack(rows)


def _stepper_update(
    model,
    pairs,
    episodes,
    *,
    clip: float,
    sigma: float = 0.0,
    expected_batch: float = 1.0,
    mode: str = "hooks",
) -> torch.Tensor:
    """theta_after - theta_before of ONE production DP-SGD step (PrivateStepper, SGD, lr 1) on
    ``episodes``, from a copy of ``model``: ``-(sum_i clip(g_i) + noise) / expected_batch``."""
    import copy

    m = copy.deepcopy(model)
    before = _flat_params(m)
    stepper = PrivateStepper(
        m,
        dp=DPSettings(noise_multiplier=sigma, clip=clip, sample_rate=1.0, grad_sample_mode=mode),
        train_cfg=SGD1,
        expected_batch=expected_batch,
    )
    try:
        stepper.step(collate(pairs, episodes))
    finally:
        stepper.close()
    return _flat_params(m) - before


@pytest.mark.parametrize("kind", ["fedvpa-gp", "vpl", "btl", "oracle"])
@pytest.mark.parametrize("mode", ["hooks", "functorch"])
def test_per_episode_grads_match_microbatch_oracle(kind, mode, deterministic_latent):
    model, pairs, users = _client(kind)
    episodes = partition_episodes(
        pairs, users, context_pairs=4, target_pairs=2, rng=np.random.default_rng(0)
    )
    batch = collate(pairs, episodes)
    gsm = wrap(model, mode)
    gsm.train()
    loss, _ = gsm(**batch.inputs())
    loss.mean().backward()
    per_sample = torch.cat(
        [p.grad_sample.reshape(len(episodes), -1) for p in gsm.parameters() if p.requires_grad],
        dim=1,
    )
    summed = _flat_grads(gsm) * len(episodes)
    gsm._close()
    oracle = []
    for i in range(len(episodes)):
        model.zero_grad(set_to_none=True)
        li, _ = model(**collate(pairs, [episodes[i]]).inputs())
        li.sum().backward()
        oracle.append(_flat_grads(model))
    oracle_t = torch.stack(oracle)
    torch.testing.assert_close(per_sample, oracle_t, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(per_sample.sum(0), summed, rtol=1e-4, atol=1e-6)


def _replace_pair(pairs: EmbeddedPairs, row: int, donor: int) -> EmbeddedPairs:
    """Pair ``row`` becomes pair ``donor`` with its preference flipped; nothing else changes."""

    def put(a: np.ndarray, src: np.ndarray) -> np.ndarray:
        b = a.copy()
        b[row] = src[donor]
        return b

    return EmbeddedPairs(
        prompt=put(pairs.prompt, pairs.prompt),
        chosen=put(pairs.chosen, pairs.rejected),
        rejected=put(pairs.rejected, pairs.chosen),
        chosen_len=put(pairs.chosen_len, pairs.rejected_len),
        rejected_len=put(pairs.rejected_len, pairs.chosen_len),
        user_index=pairs.user_index,
        type_index=pairs.type_index,
        controversial=pairs.controversial,
        user_ids=pairs.user_ids,
        type_names=pairs.type_names,
        pair_ids=pairs.pair_ids,
        model_id=pairs.model_id,
    )


@pytest.mark.parametrize("clip", [0.05, 1.0])
@pytest.mark.parametrize("kind", ["fedvpa-gp", "btl"])
def test_private_stepper_equals_the_brute_force_clipped_sum(kind, clip, deterministic_latent):
    """Oracle for the optimizer that trains: with sigma = 0, one PrivateStepper step (SGD, lr 1,
    expected batch B) moves the parameters by exactly ``-sum_i clip(g_i) / B``, where g_i is
    episode i's gradient computed on its own. Catches a wrong clipping rule, norm or scale."""
    model, pairs, users = _client(kind, users=4)
    episodes = partition_episodes(
        pairs, users, context_pairs=4, target_pairs=2, rng=np.random.default_rng(0)
    )
    oracle = _oracle_clipped(model, pairs, episodes, clip)
    assert float(oracle.norm(dim=1).max()) <= clip * (1 + 1e-5)
    got = _stepper_update(model, pairs, episodes, clip=clip, expected_batch=3.0)
    torch.testing.assert_close(got, -oracle.sum(0) / 3.0, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("clip", [0.05, 1.0])
def test_one_pair_changes_one_clipped_gradient(clip, deterministic_latent):
    """Replacing one preference pair changes exactly one clipped per-episode gradient, and the
    clipped sum by at most 2C: the replace-one sensitivity the accountant assumes. Measured with
    the production optimizer (one sigma-0 step per episode, then one on the whole batch)."""
    model, pairs, users = _client("fedvpa-gp", users=3)
    row = int(users[1].train_rows[2])
    donor = int(users[2].heldout_rows[0])
    neighbour = _replace_pair(pairs, row, donor)
    # Same permutation on both datasets: slots depend on the permutation, never on content.
    ep_a = partition_episodes(
        pairs, users, context_pairs=4, target_pairs=2, rng=np.random.default_rng(7)
    )
    ep_b = partition_episodes(
        neighbour, users, context_pairs=4, target_pairs=2, rng=np.random.default_rng(7)
    )
    assert [(e.context.tolist(), e.targets.tolist()) for e in ep_a] == [
        (e.context.tolist(), e.targets.tolist()) for e in ep_b
    ]
    assert sum(row in e.context or row in e.targets for e in ep_a) == 1
    ga = torch.stack([-_stepper_update(model, pairs, [e], clip=clip) for e in ep_a])
    gb = torch.stack([-_stepper_update(model, neighbour, [e], clip=clip) for e in ep_b])
    changed = [i for i in range(len(ep_a)) if not torch.allclose(ga[i], gb[i], atol=1e-9, rtol=0)]
    holder = next(i for i, e in enumerate(ep_a) if row in e.context or row in e.targets)
    assert changed == [holder]
    assert float(ga.norm(dim=1).max()) <= clip * (1 + 1e-5)
    sum_a = -_stepper_update(model, pairs, ep_a, clip=clip)
    sum_b = -_stepper_update(model, neighbour, ep_b, clip=clip)
    diff = float((sum_a - sum_b).norm())
    assert 0 < diff <= 2 * clip * (1 + 1e-5)


def test_csprng_noise_has_the_right_distribution():
    z = csprng.standard_normal(200_000)
    assert abs(z.mean()) < 0.01
    assert abs(z.std() - 1.0) < 0.01
    # fourth moment of a normal is 3
    assert abs(np.mean(z**4) - 3.0) < 0.1
    u = csprng.uniform(100_000)
    assert 0.0 <= u.min() and u.max() < 1.0
    m = csprng.poisson_mask(100_000, 0.3)
    assert abs(m.mean() - 0.3) < 0.01
    with pytest.raises(ConfigError, match="1.5"):
        csprng.poisson_mask(3, 1.5)


def test_dp_optimizer_adds_noise_of_sigma_times_clip(monkeypatch):
    drawn = []

    def fake_normal(n):
        drawn.append(n)
        return np.ones(n)

    monkeypatch.setattr(csprng, "standard_normal", fake_normal)
    lin = torch.nn.Linear(3, 1, bias=False)
    gsm = wrap(lin, "hooks")
    opt = CsprngDPOptimizer(
        torch.optim.SGD(gsm.parameters(), lr=1.0),
        noise_multiplier=2.0,
        max_grad_norm=0.5,
        expected_batch_size=1,
        loss_reduction="sum",
    )
    x = torch.zeros(1, 3)
    gsm(x).sum().backward()  # zero gradient: the step is noise only
    before = lin.weight.detach().clone()
    opt.step()
    assert drawn == [3]
    torch.testing.assert_close(before - lin.weight.detach(), torch.full((1, 3), 2.0 * 0.5))
    gsm._close()


def _train(model, pairs, users, *, steps: int, dp: DPSettings, lr: float = 1.0):
    before = _flat_params(model)
    stats = private_train_steps(
        model,
        pairs,
        users,
        steps=steps,
        train_cfg=TrainConfig(context_pairs=4, target_pairs=2, lr=lr, optimizer="sgd"),
        dp=dp,
        rng=np.random.default_rng(0),
        schedule=False,
    )
    return stats, _flat_params(model) - before


def test_private_training_honours_the_clip_norm(deterministic_latent):
    """sigma = 0, q = 1, C tiny: every step moves the parameters by at most lr * C (the mean of
    E clipped gradients over the expected batch E). Ignoring the clip fails by orders of
    magnitude (unclipped episode gradients are ~1e-1 here)."""
    model, pairs, users = _client("fedvpa-gp")
    clip = 1e-4
    stats, moved = _train(
        model,
        pairs,
        users,
        steps=3,
        dp=DPSettings(noise_multiplier=0.0, clip=clip, sample_rate=1.0),
    )
    assert stats.sampled == 3 * stats.episodes  # q = 1: every episode, every step
    assert 0 < float(moved.norm()) <= 3 * clip * (1 + 1e-4)


@pytest.mark.parametrize("clip", [0.01, 0.04])
def test_private_training_adds_noise_of_sigma_times_clip(clip, deterministic_latent):
    """sigma large, so noise dominates: one step moves the parameters by N(0, (sigma C)^2 I_d) / B
    (B = q * episodes), so ||moved|| ~ sigma * C * sqrt(d) / B within a few percent. Ignoring
    sigma (no noise) or C (noise std sigma instead of sigma * C) fails."""
    model, pairs, users = _client("fedvpa-gp")
    sigma, q = 200.0, 0.5
    d = int(sum(p.numel() for p in model.parameters() if p.requires_grad))
    stats, moved = _train(
        model,
        pairs,
        users,
        steps=1,
        dp=DPSettings(noise_multiplier=sigma, clip=clip, sample_rate=q),
    )
    expected_batch = max(1, round(q * stats.episodes))
    predicted = sigma * clip * np.sqrt(d) / expected_batch
    # the clipped signal adds at most C * episodes / B (<< 1 % of the noise norm here)
    assert abs(float(moved.norm()) / predicted - 1.0) < 0.05, (float(moved.norm()), predicted)


@pytest.mark.parametrize("q", [0.2, 0.8])
def test_private_training_samples_at_rate_q(q, deterministic_latent):
    """Poisson sampling at rate q: over 60 steps the number of sampled episodes is Binomial(60 E,
    q); the test accepts 5 standard deviations (false alarm < 1e-6). A sampler that ignores q
    (always all, or a fixed fraction) fails for one of the two rates."""
    model, pairs, users = _client("btl")
    stats, _ = _train(
        model,
        pairs,
        users,
        steps=60,
        lr=1e-6,
        dp=DPSettings(noise_multiplier=0.0, clip=1.0, sample_rate=q),
    )
    n = 60 * stats.episodes
    sd = np.sqrt(n * q * (1 - q))
    assert abs(stats.sampled - n * q) <= 5 * sd, (stats.sampled, n * q, sd)


def test_private_training_leaves_a_usable_model(deterministic_latent):
    model, pairs, users = _client("fedvpa-gp")
    _train(
        model, pairs, users, steps=2, dp=DPSettings(noise_multiplier=1.0, clip=1.0, sample_rate=0.5)
    )
    # the model is usable without Opacus afterwards (hooks removed)
    loss, _ = model(
        **collate(
            pairs,
            partition_episodes(
                pairs, users, context_pairs=4, target_pairs=2, rng=np.random.default_rng(1)
            ),
        ).inputs()
    )
    assert torch.isfinite(loss).all()
    assert not any(
        hasattr(p, "grad_sample") and p.grad_sample is not None for p in model.parameters()
    )


@pytest.mark.parametrize(
    "bad",
    [
        dict(noise_multiplier=-1.0),
        dict(clip=0.0),
        dict(sample_rate=0.0),
        dict(sample_rate=1.5),
        dict(noise_multiplier=float("nan")),
    ],
)
def test_bad_dp_settings_name_the_value(bad):
    args = dict(noise_multiplier=1.0, clip=1.0, sample_rate=0.5) | bad
    with pytest.raises(ConfigError, match="Found"):
        DPSettings(**args)


@pytest.mark.parametrize("kind", ["fedvpa-gp", "btl"])
def test_ghost_clipping_gives_the_same_clipped_sum(kind, deterministic_latent):
    """Ghost clipping (two backward passes) must produce the clipped per-episode sum that the
    hooks path computes explicitly; otherwise it is not a correct mode for this model."""
    from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping

    from securefvpa.train.private import CsprngGhostDPOptimizer

    model, pairs, users = _client(kind)
    episodes = partition_episodes(
        pairs, users, context_pairs=4, target_pairs=2, rng=np.random.default_rng(0)
    )
    batch = collate(pairs, episodes)
    clip = 0.05
    expected = _oracle_clipped(model, pairs, episodes, clip).sum(0)
    gsm = wrap(model, "ghost", clip=clip)
    opt = CsprngGhostDPOptimizer(
        torch.optim.SGD(gsm.parameters(), lr=0.0),
        noise_multiplier=0.0,
        max_grad_norm=clip,
        expected_batch_size=len(episodes),
    )
    per_episode, _ = gsm(**batch.inputs())
    DPTensorFastGradientClipping(gsm, opt, per_episode, "mean").backward()
    got = torch.cat([p.grad.reshape(-1) for p in gsm.parameters() if p.requires_grad])
    gsm._close()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("unit", ["pair", "user"])
def test_clipped_unit_gradients_equal_the_brute_force_oracle(unit, deterministic_latent):
    """The distributed step's per-unit gradients (q = 1: every unit) are each unit's own
    gradient, clipped with Opacus' rule, flattened in the wire order (sorted state-dict names)."""
    from securefvpa.train.episodes import unit_episodes
    from securefvpa.train.private import clipped_unit_gradients

    model, pairs, users = _client("fedvpa-gp", users=4)
    dp = DPSettings(noise_multiplier=0.0, clip=0.05, sample_rate=1.0)
    out = clipped_unit_gradients(
        model, pairs, users, unit=unit, train_cfg=TRAIN, dp=dp, rng=np.random.default_rng(3)
    )
    episodes = unit_episodes(pairs, users, unit=unit, train_cfg=TRAIN, rng=np.random.default_rng(3))
    assert out.units == len(episodes) == out.grads.shape[0]
    if unit == "user":
        assert len(episodes) == len(users)
        assert all(len(e.context) + len(e.targets) <= 6 for e in episodes)
    oracle = _oracle_clipped(model, pairs, episodes, 0.05)  # parameter order
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    sizes = {n: p.numel() for n, p in model.named_parameters()}
    offsets, at = {}, 0
    for n in names:
        offsets[n] = at
        at += sizes[n]
    wire, at = [], 0
    for n in sorted(model.state_dict()):  # securefvpa.rounds.encoding.flatten order
        wire.append(oracle[:, offsets[n] : offsets[n] + sizes[n]])
    torch.testing.assert_close(
        torch.from_numpy(out.grads), torch.cat(wire, 1).double(), rtol=1e-4, atol=1e-7
    )
    assert float(np.linalg.norm(out.grads, axis=1).max()) <= 0.05 * (1 + 1e-6)
    # nothing trained, nothing left behind
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("clip", [1e-4, 1.0])
def test_replacing_one_users_whole_profile_moves_the_clipped_sum_by_at_most_2c(
    clip, deterministic_latent
):
    """Unit "user": every pair of one user replaced (each by another pair of the data set with
    its preference flipped) changes exactly that user's clipped gradient, and the sum of the
    clipped per-user gradients by at most 2C — the replace-one sensitivity the distributed
    accountant assumes for a user. Real FedVPA-GP, Opacus per-sample gradients, q = 1 (every
    user sampled) so that both neighbours run the same units."""
    from securefvpa.train.private import clipped_unit_gradients

    model, pairs, users = _client("fedvpa-gp", users=4)
    victim = users[1]
    rows = np.concatenate([victim.train_rows, victim.heldout_rows])
    donors = np.concatenate([users[3].train_rows, users[3].heldout_rows])[: len(rows)]
    neighbour = pairs
    for row, donor in zip(rows.tolist(), donors.tolist()):
        neighbour = _replace_pair(neighbour, int(row), int(donor))
    dp = DPSettings(noise_multiplier=0.0, clip=clip, sample_rate=1.0)
    a = clipped_unit_gradients(model, pairs, users[:3], unit="user", train_cfg=SGD1, dp=dp,
                               rng=np.random.default_rng(5))  # fmt: skip
    b = clipped_unit_gradients(model, neighbour, users[:3], unit="user", train_cfg=SGD1, dp=dp,
                               rng=np.random.default_rng(5))  # fmt: skip
    assert a.grads.shape[0] == b.grads.shape[0] == 3 == a.units
    norms = np.linalg.norm(np.concatenate([a.grads, b.grads]), axis=1)
    assert float(norms.max()) <= clip * (1 + 1e-5)
    if clip < 1e-3:  # every per-user gradient is larger: clipping is what bounds the change
        assert float(norms.min()) == pytest.approx(clip, rel=1e-3)
    changed = [i for i in range(3) if not np.allclose(a.grads[i], b.grads[i], atol=1e-12, rtol=0)]
    assert changed == [1]
    diff = float(np.linalg.norm(a.grads.sum(0) - b.grads.sum(0)))
    assert 0 < diff <= 2 * clip * (1 + 1e-5)
