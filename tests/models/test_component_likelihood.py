"""FedVPA-GP's component likelihood: E_q(c|C)[log p(T | head c)] ("expected") vs the gated
reward ("mixed-reward"), checked against the heads' own per-component rewards."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from securefvpa.config import ModelConfig, config_from_dict
from securefvpa.errors import ConfigError, ModelError
from securefvpa.models.batch import EpisodeBatch
from securefvpa.models.factory import build_model
from securefvpa.models.planted import planted_pairs
from securefvpa.train.episodes import Episode, collate

SMALL = dict(hidden=8, latent_dim=3, components=2)


def _batch() -> tuple[object, EpisodeBatch]:
    """Episodes of unequal sizes, so that context and targets are padded."""
    pairs, _ = planted_pairs(users=6, pairs_per_user=9, dim=6, heldout_pairs=2, seed=0)
    rows = np.random.default_rng(0).permutation(pairs.n_pairs)
    eps, start = [], 0
    for i, (c, t) in enumerate([(4, 3), (1, 1), (3, 2), (2, 3), (4, 1), (0, 2)]):
        eps.append(Episode(user=i, context=rows[start : start + c],
                           targets=rows[start + c : start + c + t], type_index=i % 2))
        start += c + t
    return pairs, collate(pairs, eps)


def _gp(likelihood: str, cond: str = "mixture-heads", kind: str = "fedvpa-gp"):
    cfg = ModelConfig(kind=kind, conditioning=cond, component_likelihood=likelihood, **SMALL)
    return build_model(cfg, embed_dim=6, n_types=2, seed=0)


def _per_head_margins(model, batch) -> torch.Tensor:
    return model._margins(
        batch.tgt_chosen, batch.tgt_rejected, batch.tgt_len, batch.tgt_mask.bool(), None,
        per_head=True,
    )


def test_expected_nll_is_the_component_posterior_average_of_each_heads_nll() -> None:
    _, batch = _batch()
    model = _gp("expected")
    model.eval()  # z = posterior mean, q(c | C) = infer's comp_probs
    _, diag = model(**batch.inputs())
    q = model.infer(batch)["comp_probs"]  # [B, K]
    margin = _per_head_margins(model, batch)  # [B, Kt, K]
    mask = batch.tgt_mask.float().unsqueeze(-1)
    per_head_nll = (F.softplus(-margin) * mask).sum(1) / mask.sum(1).clamp_min(1.0)
    torch.testing.assert_close(diag["nll"], (q * per_head_nll).sum(-1))


def test_mixed_reward_nll_scores_the_gated_reward() -> None:
    _, batch = _batch()
    model = _gp("mixed-reward")
    model.eval()
    _, diag = model(**batch.inputs())
    out = model.infer(batch)
    mask = batch.tgt_mask.float()
    want = (F.softplus(-out["margin"]) * mask).sum(-1) / mask.sum(-1).clamp_min(1.0)
    torch.testing.assert_close(diag["nll"], want)
    # the gated margin is the q-weighted sum of the heads' margins
    torch.testing.assert_close(
        out["margin"], (_per_head_margins(model, batch) * out["comp_probs"][:, None]).sum(-1)
    )


def test_expected_likelihood_bounds_the_mixed_one_and_both_train() -> None:
    """softplus is convex, so E_q[softplus(-D_c)] >= softplus(-E_q D_c) (Jensen); the same
    parameters give a different loss under the two likelihoods, and every parameter gets a
    finite gradient under "expected"."""
    _, batch = _batch()
    exp_model, mix_model = _gp("expected"), _gp("mixed-reward")
    exp_model.eval()
    mix_model.eval()
    _, d_exp = exp_model(**batch.inputs())
    _, d_mix = mix_model(**batch.inputs())
    assert torch.all(d_exp["nll"] >= d_mix["nll"] - 1e-6)
    assert not torch.allclose(d_exp["nll"], d_mix["nll"])
    exp_model.train()
    loss, _ = exp_model(**batch.inputs())
    loss.mean().backward()
    for name, p in exp_model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_padded_targets_change_nothing_under_the_expected_likelihood() -> None:
    _, batch = _batch()
    assert (~batch.tgt_mask).any()
    model = _gp("expected")
    model.eval()
    ref, _ = model(**batch.inputs())
    m = batch.tgt_mask.unsqueeze(-1)
    junk = {
        k: torch.where(m, getattr(batch, k), 1e3 * torch.ones_like(getattr(batch, k)))
        for k in ("tgt_chosen", "tgt_rejected", "tgt_len")
    }
    loss, _ = model(**dataclasses.replace(batch, **junk).inputs())
    torch.testing.assert_close(loss, ref, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["btl", "vpl", "oracle"])
def test_models_without_components_ignore_the_setting(kind: str) -> None:
    _, batch = _batch()
    a, b = _gp("expected", kind=kind), _gp("mixed-reward", kind=kind)
    a.eval()
    b.eval()
    torch.testing.assert_close(a(**batch.inputs())[0], b(**batch.inputs())[0])


def test_bad_values_are_named() -> None:
    with pytest.raises(ConfigError, match="model.component_likelihood.*'sampled'"):
        config_from_dict({"model": {"component_likelihood": "sampled"}})
    with pytest.raises(ModelError, match="'sampled'"):
        from securefvpa.models.preference import PreferenceModel

        PreferenceModel("fedvpa-gp", embed_dim=6, n_types=2, latent_dim=3, hidden=8,
                        components=2, conditioning="mixture-heads", beta=0.1, ortho_weight=0.1,
                        length_feature=True, component_likelihood="sampled")
    film = _gp("expected", cond="film")
    with pytest.raises(ModelError, match="'film'"):
        film.reward(torch.zeros(1, 2, 6), torch.zeros(1, 2), None, per_head=True)
