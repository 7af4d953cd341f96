"""The model under Opacus: validator clean, per-episode gradients equal a brute-force oracle."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from opacus import GradSampleModule
from opacus.validators import ModuleValidator

from securefvpa.config import ModelConfig
from securefvpa.models.factory import build_model
from securefvpa.models.planted import planted_pairs
from securefvpa.train.episodes import Episode, collate

# Opacus's full backward hooks warn when no input requires grad (inputs are data here).
pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook:UserWarning")
SMALL = dict(hidden=8, latent_dim=3, components=2)


def _batch():
    pairs, _ = planted_pairs(users=5, pairs_per_user=8, dim=6, heldout_pairs=2, seed=0)
    rows = np.random.default_rng(0).permutation(pairs.n_pairs)
    shapes = [(4, 2), (1, 1), (3, 2), (2, 1)]
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
    return collate(pairs, eps)


def _model(kind: str, cond: str, weights: str = "uniform"):
    cfg = ModelConfig(kind=kind, conditioning=cond, mixture_weights=weights, **SMALL)
    return build_model(cfg, embed_dim=6, n_types=2, seed=0).double()


def _double(batch):
    return {k: (v.double() if v.is_floating_point() else v) for k, v in batch.inputs().items()}


@pytest.mark.parametrize("kind", ["btl", "vpl", "fedvpa-gp", "oracle"])
@pytest.mark.parametrize("weights", ["uniform", "learned"])
def test_validator_is_clean(kind: str, weights: str) -> None:
    assert ModuleValidator.validate(_model(kind, "mixture-heads", weights), strict=True) == []


@pytest.mark.parametrize(
    ("kind", "cond", "weights"),
    [
        ("fedvpa-gp", "mixture-heads", "uniform"),
        ("fedvpa-gp", "mixture-heads", "learned"),  # the mixture logits' per-episode gradient
        ("fedvpa-gp", "film", "uniform"),
        ("vpl", "concat", "uniform"),
        ("oracle", "film", "uniform"),
    ],
)
def test_per_episode_gradients_match_micro_batch_oracle(
    kind: str, cond: str, weights: str, monkeypatch
) -> None:
    # Opacus records activations in training mode only; make the training graph deterministic
    # (noise-free reparameterisation and Gumbel-Softmax) so each episode can be recomputed alone.
    monkeypatch.setattr(torch, "randn_like", lambda x: torch.full_like(x, 0.3))
    monkeypatch.setattr(
        torch.nn.functional,
        "gumbel_softmax",
        lambda logits, tau=1.0, hard=False: torch.softmax(logits / tau, dim=-1),
    )
    batch = _batch()
    model = _model(kind, cond, weights)
    assert (weights == "learned") == any("mix_logits" in n for n, _ in model.named_parameters())
    model.train()
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="sum")
    loss, _ = gsm(**_double(batch))
    loss.sum().backward()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    per_sample = {}
    for n, p in params:
        assert p.grad_sample is not None and p.grad_sample.shape[0] == batch.size, n
        torch.testing.assert_close(p.grad_sample.sum(0), p.grad, msg=n)
        per_sample[n] = p.grad_sample.detach().clone()
    gsm._close()  # detach the hooks before the brute-force passes
    for i in range(batch.size):
        model.zero_grad(set_to_none=True)
        single, _ = model(**_double(batch.select([i])))
        grads = torch.autograd.grad(single.sum(), [p for _, p in params], allow_unused=True)
        for (n, p), g in zip(params, grads):
            expected = torch.zeros_like(p) if g is None else g
            torch.testing.assert_close(per_sample[n][i], expected, msg=f"{n} episode {i}")


def test_training_mode_per_sample_gradients_sum_to_the_batch_gradient() -> None:
    """With the Gumbel-Softmax and reparameterisation noise on (same seed for both passes)."""
    batch = _batch()
    model = _model("fedvpa-gp", "mixture-heads")
    model.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        loss, _ = model(**_double(batch))
        ref = torch.autograd.grad(loss.sum(), list(model.parameters()))
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="sum")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        loss, _ = gsm(**_double(batch))
    loss.sum().backward()
    for (n, p), g in zip(model.named_parameters(), ref):
        torch.testing.assert_close(p.grad_sample.sum(0), g, msg=n)
    gsm._close()
