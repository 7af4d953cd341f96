"""Build a :class:`PreferenceModel` from a :class:`ModelConfig`, deterministically by seed."""

from __future__ import annotations

import torch

from securefvpa.config import ModelConfig
from securefvpa.errors import ModelError
from securefvpa.models.preference import PreferenceModel


def build_model(cfg: ModelConfig, *, embed_dim: int, n_types: int, seed: int) -> PreferenceModel:
    """A fresh model; the same ``seed`` gives bit-identical initial parameters.

    The global torch RNG is forked, so building a model neither depends on nor changes it.
    """
    cfg.validate()
    if not 0 <= seed < 2**63:
        raise ModelError(f"seed must be in [0, 2**63). Found {seed!r}.")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return PreferenceModel(
            cfg.kind,
            embed_dim=embed_dim,
            n_types=n_types,
            latent_dim=cfg.latent_dim,
            hidden=cfg.hidden,
            components=cfg.components,
            conditioning=cfg.conditioning,
            beta=cfg.beta,
            ortho_weight=cfg.ortho_weight,
            length_feature=cfg.length_feature,
            tau_start=cfg.tau_start,
            tau_end=cfg.tau_end,
            input_projection=cfg.input_projection,
            component_likelihood=cfg.component_likelihood,
            mixture_weights=cfg.mixture_weights,
        )


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
