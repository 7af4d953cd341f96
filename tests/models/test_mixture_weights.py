"""FedVPA-GP's mixture weights pi of p(c): uniform (1/K, a constant; the default) or learned
logits. The KL(q(c|C) || pi) term is checked against its closed form for both."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from securefvpa.config import (
    ModelConfig,
    config_from_dict,
    dump_config,
    load_config,
    load_recorded_config,
)
from securefvpa.errors import ConfigError, ModelError
from securefvpa.models.factory import build_model
from securefvpa.models.planted import planted_pairs
from securefvpa.train.episodes import Episode, collate
from securefvpa.train.params import load_arrays, model_to_arrays

SMALL = dict(hidden=8, latent_dim=3, components=3)


def _gp(weights: str | None = None):
    extra = {} if weights is None else {"mixture_weights": weights}
    return build_model(ModelConfig(**SMALL, **extra), embed_dim=6, n_types=2, seed=0)


def _batch():
    pairs, _ = planted_pairs(users=4, pairs_per_user=6, dim=6, heldout_pairs=2, seed=0)
    rows = np.arange(pairs.n_pairs)
    eps = [
        Episode(user=i, context=rows[6 * i : 6 * i + 4], targets=rows[6 * i + 4 : 6 * i + 6],
                type_index=i % 2)
        for i in range(4)
    ]
    return collate(pairs, eps)


def _kl_c(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(KL(q(c|C) || pi) from the model's prior, q(c|C)) at z = mu."""
    model.eval()
    out = model.infer(batch)
    log_q = torch.log(out["comp_probs"])
    terms = model.prior.terms(out["mu"], out["logvar"], log_q)
    return terms.kl_c, out["comp_probs"]


def test_uniform_weights_are_the_default_and_not_a_parameter() -> None:
    model = _gp()
    names = [n for n, _ in model.named_parameters()]
    assert model.prior.mix_logits is None
    assert not any("mix_logits" in n for n in names)
    assert "prior.mix_logits.weight" in [n for n, _ in _gp("learned").named_parameters()]


def test_uniform_weights_give_kl_to_the_uniform_categorical() -> None:
    """KL(q || 1/K) = sum_c q_c log q_c + log K."""
    kl_c, q = _kl_c(_gp("uniform"), _batch())
    want = (q * torch.log(q)).sum(-1) + math.log(SMALL["components"])
    torch.testing.assert_close(kl_c, want)


def test_learned_weights_enter_the_kl_and_get_a_gradient() -> None:
    batch = _batch()
    model = _gp("learned")
    with torch.no_grad():
        model.prior.mix_logits.weight.copy_(torch.tensor([[2.0, 0.0, -1.0]]))
    kl_c, q = _kl_c(model, batch)
    log_pi = torch.log_softmax(torch.tensor([2.0, 0.0, -1.0]), -1)
    torch.testing.assert_close(kl_c, (q * (torch.log(q) - log_pi)).sum(-1))
    model.train()
    loss, _ = model(**batch.inputs())
    loss.mean().backward()
    grad = model.prior.mix_logits.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_bad_values_are_named_and_old_learned_runs_get_a_hint() -> None:
    with pytest.raises(ConfigError, match="model.mixture_weights.*'learnt'"):
        config_from_dict({"model": {"mixture_weights": "learnt"}})
    with pytest.raises(ModelError, match="'learnt'"):
        _gp("learnt")
    with pytest.raises(ModelError, match='learned mixture weights: set model.mixture_weights = "learned"'):
        load_arrays(_gp("uniform"), model_to_arrays(_gp("learned")))
    with pytest.raises(ModelError, match='uniform mixture weights: set model.mixture_weights = "uniform"'):
        load_arrays(_gp("learned"), model_to_arrays(_gp("uniform")))


def test_a_recorded_config_without_the_key_reads_as_learned(tmp_path) -> None:
    """config.resolved.toml written before the key existed: the run trained its weights.
    A config file a user writes still gets today's default."""
    text = dump_config(config_from_dict({"model": {"kind": "fedvpa-gp"}}))
    assert 'mixture_weights = "uniform"' in text
    old = tmp_path / "config.resolved.toml"
    old.write_text(text.replace('mixture_weights = "uniform"\n', ""))
    assert load_recorded_config(old).model.mixture_weights == "learned"
    assert load_config(old).model.mixture_weights == "uniform"
    new = tmp_path / "new.toml"
    new.write_text(text)
    assert load_recorded_config(new).model.mixture_weights == "uniform"


@pytest.mark.parametrize("kind", ["btl", "vpl", "oracle"])
def test_models_without_a_mixture_prior_ignore_the_setting(kind: str) -> None:
    """Their parameters are the same either way (so their runs compare across the setting)."""
    a, b = (
        build_model(ModelConfig(kind=kind, mixture_weights=w, **SMALL), embed_dim=6, n_types=2,
                    seed=0)
        for w in ("uniform", "learned")
    )
    pa, pb = model_to_arrays(a), model_to_arrays(b)
    assert pa.keys() == pb.keys()
    for k in pa:
        np.testing.assert_array_equal(pa[k], pb[k])
