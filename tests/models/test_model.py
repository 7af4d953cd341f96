"""PreferenceModel structure: masks, position symmetry, Opacus-friendly layers, API contract."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from securefvpa.config import ModelConfig
from securefvpa.errors import ConfigError, ModelError
from securefvpa.models.batch import EpisodeBatch
from securefvpa.models.factory import build_model, count_parameters
from securefvpa.models.planted import planted_pairs
from securefvpa.train.episodes import Episode, collate

KINDS = ["btl", "vpl", "fedvpa-gp", "oracle"]
CONDS = ["mixture-heads", "film", "concat"]
SMALL = dict(hidden=8, latent_dim=3, components=2)


def _batch(dim: int = 6, seed: int = 0) -> tuple[object, EpisodeBatch]:
    """Episodes of unequal sizes (so the batch has context and target padding)."""
    pairs, _ = planted_pairs(users=6, pairs_per_user=9, dim=dim, heldout_pairs=2, seed=seed)
    rows = np.random.default_rng(seed).permutation(pairs.n_pairs)
    shapes = [(4, 3), (1, 1), (3, 2), (2, 3), (4, 1), (0, 2)]
    eps, start = [], 0
    for i, (c, t) in enumerate(shapes):
        eps.append(
            Episode(
                user=i,
                context=rows[start : start + c],
                targets=rows[start + c : start + c + t],
                type_index=i % 2,
            )
        )
        start += c + t
    return pairs, collate(pairs, eps)


def _model(kind: str, cond: str = "mixture-heads", dim: int = 6, **kw) -> nn.Module:
    cfg = ModelConfig(kind=kind, conditioning=cond, **{**SMALL, **kw})
    return build_model(cfg, embed_dim=dim, n_types=2, seed=0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("cond", CONDS)
def test_padded_values_change_no_output(kind: str, cond: str) -> None:
    _, batch = _batch()
    assert (~batch.ctx_mask).any() and (~batch.tgt_mask).any()  # the batch really has padding
    model = _model(kind, cond)
    model.eval()
    ref_loss, _ = model(**batch.inputs())
    ref = model.infer(batch)
    g = torch.Generator().manual_seed(1)
    noisy = {}
    for name, value in batch.inputs().items():
        if name.startswith(("ctx_", "tgt_")) and value.is_floating_point():
            mask = batch.ctx_mask if name.startswith("ctx_") else batch.tgt_mask
            m = mask.reshape(*mask.shape, *([1] * (value.dim() - 2)))
            junk = 1e3 * torch.randn(value.shape, generator=g)
            junk[..., 0] = float("nan")
            value = torch.where(m, value, junk)
        noisy[name] = value
    loss, _ = model(**noisy)
    torch.testing.assert_close(loss, ref_loss, rtol=0, atol=0)
    out = model.infer(dataclasses.replace(batch, **noisy))
    for key, val in ref.items():
        torch.testing.assert_close(out[key], val, rtol=0, atol=0)
    assert torch.all(ref["margin"][~batch.tgt_mask] == 0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("cond", CONDS)
def test_swapping_target_responses_negates_the_reward_difference(kind: str, cond: str) -> None:
    """Each response is scored alone: no slot information can leak into the score."""
    _, batch = _batch()
    model = _model(kind, cond)
    swapped = dataclasses.replace(
        batch,
        tgt_chosen=batch.tgt_rejected,
        tgt_rejected=batch.tgt_chosen,
        tgt_len=batch.tgt_len.flip(-1),
    )
    torch.testing.assert_close(model.infer(swapped)["margin"], -model.infer(batch)["margin"])


@pytest.mark.parametrize("kind", KINDS)
def test_forward_returns_per_episode_loss_and_only_opacus_layers(kind: str) -> None:
    _, batch = _batch()
    model = _model(kind)
    model.train()
    loss, diag = model(**batch.inputs())
    assert loss.shape == (batch.size,) and torch.isfinite(loss).all()
    assert set(diag) == {"nll", "kl", "ortho"} and all(
        v.shape == (batch.size,) for v in diag.values()
    )
    allowed = (nn.Linear, nn.Embedding, nn.LayerNorm)
    for module in model.modules():
        own = list(module.parameters(recurse=False))
        assert not own or isinstance(module, allowed), type(module)
    loss.mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.shared_state() == [n for n, _ in model.named_parameters()]


def test_default_size_is_small() -> None:
    for kind in KINDS:
        for cond in CONDS:
            cfg = ModelConfig(kind=kind, conditioning=cond)  # hidden=64, latent_dim=8
            assert count_parameters(build_model(cfg, embed_dim=384, n_types=2, seed=0)) <= 100_000


def test_same_seed_same_parameters_and_global_rng_untouched() -> None:
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a, b = _model("fedvpa-gp"), _model("fedvpa-gp")
    assert torch.rand(1) == before
    for (na, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(pa, pb), na
    c = build_model(ModelConfig(kind="fedvpa-gp", **SMALL), embed_dim=6, n_types=2, seed=1)
    assert not torch.equal(next(a.parameters()), next(c.parameters()))


def test_gumbel_softmax_from_torch_is_used_in_training_only(monkeypatch) -> None:
    calls: list[float] = []
    real = torch.nn.functional.gumbel_softmax

    def spy(logits, tau=1.0, hard=False, **kw):
        calls.append(tau)
        return real(logits, tau=tau, hard=hard, **kw)

    monkeypatch.setattr(torch.nn.functional, "gumbel_softmax", spy)
    _, batch = _batch()
    model = _model("fedvpa-gp")
    model.train()
    model.set_temperature(0.37)
    model(**batch.inputs())
    assert calls == [0.37]
    model.infer(batch)
    assert calls == [0.37]


def test_kl_weight_scales_only_the_kl_term() -> None:
    _, batch = _batch()
    model = _model("vpl", beta=0.5)
    model.eval()  # deterministic
    full, diag = model(**batch.inputs())
    model.set_kl_weight(0.0)
    none, _ = model(**batch.inputs())
    torch.testing.assert_close(full - none, 0.5 * diag["kl"])
    with pytest.raises(ModelError, match="1.5"):
        model.set_kl_weight(1.5)


def test_oracle_and_schedule_errors_name_the_value() -> None:
    _, batch = _batch()
    model = _model("oracle")
    bad = dataclasses.replace(batch, type_index=torch.full_like(batch.type_index, -1))
    with pytest.raises(ModelError, match="Found -1"):
        model(**bad.inputs())
    with pytest.raises(ModelError, match="Found 0.0"):
        model.set_temperature(0.0)
    with pytest.raises(ConfigError, match="model.latent_dim"):
        build_model(ModelConfig(latent_dim=0), embed_dim=6, n_types=2, seed=0)
    with pytest.raises(ModelError, match="seed"):
        build_model(ModelConfig(), embed_dim=6, n_types=2, seed=-1)


def test_oracle_conditions_on_the_type() -> None:
    _, batch = _batch()
    model = _model("oracle")
    flipped = dataclasses.replace(batch, type_index=1 - batch.type_index)
    assert not torch.allclose(model.infer(batch)["margin"], model.infer(flipped)["margin"])


def test_infer_returns_component_posterior_on_the_simplex() -> None:
    _, batch = _batch()
    out = _model("fedvpa-gp").infer(batch)
    assert out["comp_probs"].shape == (batch.size, 2)
    torch.testing.assert_close(out["comp_probs"].sum(-1), torch.ones(batch.size))
    assert out["mu"].shape == (batch.size, 3) and (out["kl"] >= 0).all()
