"""Priors over the user latent z: N(0, I) (VPL) and the Gumbel-Softmax Gaussian mixture (FedVPA-GP).

The mixture prior p(z) = sum_c pi_c N(z; m_c, diag s_c^2) has K learnable prototypes m_c,
learnable log-variances log s_c^2 and mixture weights pi that are either uniform, pi_c = 1/K (the
GMVAE of Dilokthanakul et al. 2016, section 3; the default) or learnable logits (VaDE, Jiang et
al. 2017). Learned weights track how much each component is used, and the KL(q(c) || pi) term
then pulls every user towards the already popular components (rich get richer); on three
generated user types that left two components dead and two types merged (README, Benchmarks).
Opacus computes per-sample gradients only for layers it knows, so the trained tables are
``nn.Embedding`` modules looked up with index tensors whose first dim is the episode batch
(``arange(K).expand(B, K)``): each episode then has its own copy of the prior in the graph and its
own, well-defined gradient for it.

The closed-form KL terms come from :mod:`securefvpa.models.kl` (pure, tested against Monte-Carlo).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from securefvpa.models import kl


@dataclass(frozen=True)
class MixtureTerms:
    """Per-episode quantities of the mixture prior (all with batch dim first)."""

    log_resp: torch.Tensor  # [B, K] log q(c | ctx)
    kl_per_component: torch.Tensor  # [B, K] KL(q(z|ctx) || N(m_c, s_c^2))
    kl_z: torch.Tensor  # [B]   E_q(c) KL(q(z|ctx) || N(m_c, s_c^2)) (exact expectation)
    kl_c: torch.Tensor  # [B]   KL(q(c|ctx) || pi)
    ortho: torch.Tensor  # [B]   ||P^ P^T - I||_F^2 (same value in every row)


class MixturePrior(nn.Module):
    """K prototype Gaussians (``nn.Embedding`` tables) with uniform or learned mixture weights.

    ``learn_weights=False``: pi_c = 1/K, a constant (no parameter); True: pi = softmax of an
    ``nn.Embedding`` row of logits.
    """

    LOGVAR_BOUND = 4.0

    def __init__(
        self,
        components: int,
        latent_dim: int,
        *,
        learn_weights: bool = False,
        proto_scale: float = 1.5,
    ) -> None:
        super().__init__()
        self.components = components
        self.latent_dim = latent_dim
        self.prototypes = nn.Embedding(components, latent_dim)
        self.logvars = nn.Embedding(components, latent_dim)
        # Uniform weights are a constant, not a parameter: nothing to train, send or noise.
        self.mix_logits = nn.Embedding(1, components) if learn_weights else None
        with torch.no_grad():
            if components <= latent_dim:  # rows of a random orthogonal matrix
                q, _ = torch.linalg.qr(torch.randn(latent_dim, latent_dim))
                self.prototypes.weight.copy_(proto_scale * q[:components])
            else:  # more prototypes than dimensions: random unit directions
                self.prototypes.weight.copy_(
                    proto_scale * F.normalize(torch.randn(components, latent_dim), dim=-1)
                )
            self.logvars.weight.zero_()
            if self.mix_logits is not None:
                self.mix_logits.weight.zero_()

    def tables(self, batch: int, device: torch.device) -> tuple[torch.Tensor, ...]:
        """(prototypes [B,K,L], log-variances [B,K,L], log pi [B,K]), one row per episode
        (log pi = -log K in every row when the weights are uniform)."""
        idx = torch.arange(self.components, device=device).expand(batch, self.components).contiguous()
        protos = self.prototypes(idx)
        logvars = self.LOGVAR_BOUND * torch.tanh(self.logvars(idx) / self.LOGVAR_BOUND)
        if self.mix_logits is None:
            log_pi = torch.full(
                (batch, self.components),
                -math.log(self.components),
                dtype=protos.dtype,
                device=device,
            )
        else:
            zero = torch.zeros(batch, dtype=torch.long, device=device)
            log_pi = torch.log_softmax(self.mix_logits(zero), dim=-1)
        return protos, logvars, log_pi

    def terms(self, mu: torch.Tensor, logvar: torch.Tensor, log_resp: torch.Tensor) -> MixtureTerms:
        """KL terms of the GMVAE ELBO for the component posterior ``log_resp`` = log q(c | ctx)."""
        protos, logvars, log_pi = self.tables(mu.shape[0], mu.device)
        per_comp = kl.kl_diag_gaussians(
            mu.unsqueeze(1), logvar.unsqueeze(1), protos, logvars, xp=torch
        )
        kl_z = kl.expected_mixture_kl(mu, logvar, protos, logvars, log_resp, xp=torch)
        kl_c = kl.kl_categorical(log_resp, log_pi, xp=torch)
        return MixtureTerms(log_resp, per_comp, kl_z, kl_c, orthogonality(protos))


def orthogonality(protos: torch.Tensor) -> torch.Tensor:
    """||P^ P^T - I||_F^2 over row-normalised prototypes P^ [B, K, L] -> [B].

    Zero iff the K prototype directions are mutually orthogonal (needs K <= L).
    """
    p = F.normalize(protos, dim=-1)
    gram = p @ p.transpose(-1, -2)
    eye = torch.eye(p.shape[-2], dtype=p.dtype, device=p.device)
    return ((gram - eye) ** 2).sum(dim=(-1, -2))


def geometric_temperature(step: int, total_steps: int, tau_start: float, tau_end: float) -> float:
    """tau_t = tau_start * (tau_end / tau_start)^(t / (T - 1)), clamped to [tau_end, tau_start].

    The exponential schedule of Jang, Gu & Poole (2017), "Categorical Reparameterization with
    Gumbel-Softmax", section 3.1, written to hit ``tau_end`` exactly at the last step.
    """
    if total_steps <= 1:
        return float(tau_end)
    frac = min(max(step / (total_steps - 1), 0.0), 1.0)
    return float(tau_start * math.exp(frac * math.log(tau_end / tau_start)))
