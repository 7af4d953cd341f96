r"""PreferenceModel: BTL, VPL, FedVPA-GP and the type oracle in one module.

Per-episode objective (one episode = context pairs C and target pairs T of one user)
--------------------------------------------------------------------------------------
Reward difference of a target pair (x, y_c, y_r):  Delta = r(x, y_c, u) - r(x, y_r, u), with the
same head for both responses (Bradley & Terry 1952); p(y_c > y_r | u) = sigmoid(Delta).

FedVPA-GP (arXiv 2605.30873) maximises the Gaussian-mixture-VAE evidence lower bound
(Dilokthanakul et al. 2016, "Deep Unsupervised Clustering with Gaussian Mixture VAEs";
Jiang et al. 2017, "Variational Deep Embedding", eq. 16; with the preference likelihood and set
encoder of VPL, Poddar et al. 2024, arXiv 2408.10075). With the mean-field posterior
q(z, c | C) = q(z | C) q(c | C) and the prior p(z, c) = pi_c N(z; m_c, diag s_c^2):

    log p(T | C) >= E_{q(z|C)}[ log p(T | z) ]
                    - E_{q(c|C)}[ KL( q(z|C) || N(m_c, diag s_c^2) ) ]
                    - KL( q(c|C) || pi )

(expand log p(T, z, c) - log q(z, c) and use Jensen). Here q(z|C) = N(mu(C), diag sigma^2(C)) comes
from the set encoder; q(c|C) = softmax(W z + b) is an amortised component posterior evaluated at
the reparameterised z ~ q(z|C) (the GMVAE's q(c|x) network, fed with z), with prototypes m_c and
log-variances log s_c^2 learnable and the mixture weights pi uniform (``model.mixture_weights``;
"learned" trains them, as VaDE does). In training the expectation over c is taken with a relaxed
Gumbel-Softmax sample c~ = gumbel_softmax(log q(c|C), tau) (Jang et al. 2017; Maddison et al.
2017): E_q(c)[KL_c] ~= sum_c c~_c KL_c, reparameterised through q(c|C), with tau annealed
geometrically from tau_start to tau_end; evaluation reports the exact expectation.

The reward is conditioned on z (``model.conditioning``): "mixture-heads" mixes K heads with the
component posterior q(c|C) (a softmax of a linear map of z), "film"/"concat" take u = [z, q(c|C)].
Gating the heads with c~ instead of q(c|C) was measured worse on the planted two-type problem
(3 of 6 seeds separated the types, versus 6 of 6).

The per-episode LOSS minimised is

    loss = mean_{t in T} softplus(-Delta_t)                       (Bradley-Terry NLL)
           + beta * w * [ sum_c c~_c KL(q(z|C) || N(m_c, s_c^2)) + KL(q(c|C) || pi) ]
           + lambda * || P^ P^T - I ||_F^2                         (prototype orthogonality)

i.e. the negative ELBO with the likelihood averaged over targets, the KL weighted by beta
(beta-VAE, Higgins et al. 2017) times a warm-up factor w in [0, 1] (Bowman et al. 2016; set by the
training loop with :meth:`PreferenceModel.set_kl_weight`), plus FedVPA-GP's orthogonality penalty
on the row-normalised prototypes P^. VPL replaces the KL bracket by KL(q(z|C) || N(0, I)) and
mixes heads with softmax(W z + b); BTL has no latent and no KL; the oracle conditions on the true
type one-hot (an upper bound, not a deployable model).

Opacus constraints: every parameter is in nn.Linear / nn.Embedding / nn.LayerNorm; forward takes
batch-first tensors and returns the per-episode loss [B] (never averaged here: DP-SGD clips each
episode) and detached diagnostics. Temperature and KL weight are Python floats.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from securefvpa.errors import ModelError
from securefvpa.models import kl
from securefvpa.models.batch import EpisodeBatch
from securefvpa.models.encoders import GaussianPosterior
from securefvpa.models.priors import MixturePrior
from securefvpa.models.reward import CONDITIONINGS, RewardHead

KINDS = ("btl", "vpl", "fedvpa-gp", "oracle")
COMPONENT_LIKELIHOODS = ("mixed-reward", "expected")
MIXTURE_WEIGHTS = ("uniform", "learned")


class PreferenceModel(nn.Module):
    def __init__(
        self,
        kind: str,
        *,
        embed_dim: int,
        n_types: int,
        latent_dim: int,
        hidden: int,
        components: int,
        conditioning: str,
        beta: float,
        ortho_weight: float,
        length_feature: bool,
        tau_start: float = 1.0,
        tau_end: float = 1.0,
        input_projection: int = 0,
        component_likelihood: str = "mixed-reward",
        mixture_weights: str = "uniform",
    ) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ModelError(f"model.kind must be one of {list(KINDS)}. Found {kind!r}.")
        if conditioning not in CONDITIONINGS:
            raise ModelError(
                f"model.conditioning must be one of {list(CONDITIONINGS)}. Found {conditioning!r}."
            )
        if embed_dim < 1:
            raise ModelError(f"embed_dim must be >= 1. Found {embed_dim!r}.")
        if component_likelihood not in COMPONENT_LIKELIHOODS:
            raise ModelError(
                f"model.component_likelihood must be one of {list(COMPONENT_LIKELIHOODS)}. "
                f"Found {component_likelihood!r}."
            )
        if mixture_weights not in MIXTURE_WEIGHTS:
            raise ModelError(
                f"model.mixture_weights must be one of {list(MIXTURE_WEIGHTS)}. "
                f"Found {mixture_weights!r}."
            )
        if kind == "oracle" and n_types < 1:
            raise ModelError(
                f"the oracle model needs n_types >= 1 (known user types). Found {n_types!r}."
            )
        self.kind = kind
        self.latent_dim = latent_dim
        self.components = components
        self.n_types = n_types
        self.conditioning = conditioning
        self.beta = float(beta)
        self.ortho_weight = float(ortho_weight)
        self.tau_start = float(tau_start)
        self.tau_end = float(tau_end)
        self.tau = self.tau_start  # current Gumbel-Softmax temperature (set_temperature)
        self.kl_weight = 1.0  # current KL warm-up factor (set_kl_weight)
        # "expected": FedVPA-GP's likelihood is E_q(c|C)[log p(T | head c)] (one component per
        # user); "mixed-reward": log p(T | sum_c q(c|C) r_c). Only FedVPA-GP with mixture heads
        # has per-component heads; every other model scores with its one conditioned reward.
        self.expected_likelihood = (
            component_likelihood == "expected"
            and kind == "fedvpa-gp"
            and conditioning == "mixture-heads"
        )
        if not 0 <= input_projection <= embed_dim:
            raise ModelError(
                f"model.input_projection must be in [0, embed_dim={embed_dim}]. "
                f"Found {input_projection!r}."
            )
        if input_projection:
            # A fixed random orthogonal projection of the frozen text embeddings (seeded with the
            # model, identical on every node, never trained nor sent: a non-persistent buffer).
            # Johnson-Lindenstrauss keeps the geometry, and every layer behind it shrinks: under
            # DP the noise norm grows with sqrt(d) of the trained vector (README, private recipe).
            q, _ = torch.linalg.qr(torch.randn(embed_dim, input_projection))
            scale = (embed_dim / input_projection) ** 0.5
            self.register_buffer("input_proj", q * scale, persistent=False)
            embed_dim = input_projection
        else:
            self.input_proj = None

        latent = kind in ("vpl", "fedvpa-gp")
        if latent:
            self.posterior = GaussianPosterior(
                embed_dim, hidden, latent_dim, length_feature=length_feature
            )
        if kind == "fedvpa-gp" or (kind == "vpl" and conditioning == "mixture-heads"):
            self.gate = nn.Linear(latent_dim, components)  # q(c | z) / head gate
        if kind == "fedvpa-gp":
            self.prior = MixturePrior(
                components, latent_dim, learn_weights=mixture_weights == "learned"
            )

        if conditioning == "mixture-heads":
            n_heads = {"btl": 1, "vpl": components, "fedvpa-gp": components, "oracle": n_types}[
                kind
            ]
            cond_dim = n_heads if n_heads > 1 else 0
        else:
            n_heads = 1
            cond_dim = {
                "btl": 0,
                "vpl": latent_dim,
                "fedvpa-gp": latent_dim + components,
                "oracle": n_types,
            }[kind]
        self.reward = RewardHead(
            embed_dim,
            hidden,
            conditioning=conditioning,
            cond_dim=cond_dim,
            n_heads=n_heads,
            length_feature=length_feature,
        )

    # -- schedule and federation -------------------------------------------------------------
    def set_temperature(self, tau: float) -> None:
        """Gumbel-Softmax temperature for the next forward passes (a plain float, not a tensor)."""
        tau = float(tau)
        if not (tau > 0.0 and math.isfinite(tau)):
            raise ModelError(
                f"Gumbel-Softmax temperature must be a finite number > 0. Found {tau!r}."
            )
        self.tau = tau

    def set_kl_weight(self, weight: float) -> None:
        """KL warm-up factor w in [0, 1] multiplying beta (a plain float)."""
        weight = float(weight)
        if not 0.0 <= weight <= 1.0:
            raise ModelError(f"KL warm-up weight must be in [0, 1]. Found {weight!r}.")
        self.kl_weight = weight

    def shared_state(self) -> list[str]:
        """Names of the parameters that are federated: all of them (z is never a parameter)."""
        return [name for name, _ in self.named_parameters()]

    def _project(self, embeddings: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """The frozen input projection ([..., E] -> [..., k]) of text embeddings, if any."""
        if self.input_proj is None:
            return embeddings
        return tuple(e @ self.input_proj for e in embeddings)

    # -- the latent ----------------------------------------------------------------------------
    def _latent(
        self,
        ctx: tuple[torch.Tensor, ...],
        ctx_mask: torch.Tensor,
        type_index: torch.Tensor,
        *,
        sample: bool,
    ) -> dict[str, torch.Tensor | None]:
        """Code u for the reward head, the KL term and the orthogonality term, per episode."""
        zeros = torch.zeros(ctx_mask.shape[0], dtype=ctx[0].dtype, device=ctx[0].device)
        out: dict[str, torch.Tensor | None] = {"kl": zeros, "ortho": zeros, "cond": None}
        if self.kind == "btl":
            return out
        if self.kind == "oracle":
            bad = (type_index < 0) | (type_index >= self.n_types)
            if bool(bad.any()):
                raise ModelError(
                    f"the oracle model needs a known type_index in [0, {self.n_types}). "
                    f"Found {int(type_index[bad][0])}."
                )
            out["cond"] = F.one_hot(type_index, self.n_types).to(ctx[0].dtype)
            return out

        mu, logvar = self.posterior(*self._project(ctx[:3]), ctx[3], ctx_mask)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu) if sample else mu
        out.update(mu=mu, logvar=logvar)
        if self.kind == "vpl":
            out["kl"] = kl.kl_standard_normal(mu, logvar, xp=torch)
            out["cond"] = (
                torch.softmax(self.gate(z), -1) if self.conditioning == "mixture-heads" else z
            )
            return out
        log_qc = torch.log_softmax(self.gate(z), dim=-1)
        out["log_qc"] = log_qc
        terms = self.prior.terms(mu, logvar, log_qc)
        if sample:
            c_tilde = F.gumbel_softmax(log_qc, tau=self.tau, hard=False)
            kl_z = (c_tilde * terms.kl_per_component).sum(-1)
        else:
            kl_z = terms.kl_z
        out["kl"] = kl_z + terms.kl_c
        out["ortho"] = terms.ortho
        q_c = log_qc.exp()
        out["cond"] = q_c if self.conditioning == "mixture-heads" else torch.cat([z, q_c], dim=-1)
        return out

    def _margins(
        self,
        chosen: torch.Tensor,
        rejected: torch.Tensor,
        lengths: torch.Tensor,
        mask: torch.Tensor,
        cond: torch.Tensor | None,
        *,
        per_head: bool = False,
    ) -> torch.Tensor:
        """r(y_c) - r(y_r) per target pair [B, Kt] (``per_head``: per mixture head, [B, Kt, K]);
        both responses go through ONE head call."""
        chosen, rejected = self._project((chosen, rejected))
        zero = torch.zeros((), dtype=chosen.dtype, device=chosen.device)
        m = mask.unsqueeze(-1)
        emb = torch.stack([torch.where(m, chosen, zero), torch.where(m, rejected, zero)], dim=2)
        log_len = torch.where(m, lengths, zero)  # [B, Kt, 2]: chosen, rejected
        if per_head:
            rewards = self.reward(emb, log_len, None, per_head=True)  # [B, Kt, 2, K]
            return torch.where(m, rewards[:, :, 0] - rewards[:, :, 1], zero)
        rewards = self.reward(emb, log_len, cond)  # [B, Kt, 2]
        return torch.where(mask, rewards[..., 0] - rewards[..., 1], zero)

    # -- training objective --------------------------------------------------------------------
    def forward(
        self,
        ctx_prompt: torch.Tensor,
        ctx_chosen: torch.Tensor,
        ctx_rejected: torch.Tensor,
        ctx_len: torch.Tensor,
        ctx_mask: torch.Tensor,
        tgt_prompt: torch.Tensor,
        tgt_chosen: torch.Tensor,
        tgt_rejected: torch.Tensor,
        tgt_len: torch.Tensor,
        tgt_mask: torch.Tensor,
        type_index: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Per-episode loss [B] (see the module docstring) and detached diagnostics [B]."""
        del tgt_prompt  # responses are embedded together with their prompt; kept for the contract
        ctx_mask = ctx_mask.bool()
        tgt_mask = tgt_mask.bool()
        lat = self._latent(
            (ctx_prompt, ctx_chosen, ctx_rejected, ctx_len),
            ctx_mask,
            type_index,
            sample=self.training,
        )
        if self.expected_likelihood:
            # E_q(c|C)[ mean_t softplus(-Delta_t^c) ]: each component's head scores all of the
            # user's targets; the exact expectation over the K components (no sampling).
            head_margin = self._margins(
                tgt_chosen, tgt_rejected, tgt_len, tgt_mask, None, per_head=True
            )
            mask_f = tgt_mask.to(head_margin.dtype)
            nll_c = (F.softplus(-head_margin) * mask_f.unsqueeze(-1)).sum(1) / mask_f.sum(
                -1, keepdim=True
            ).clamp_min(1.0)  # [B, K]
            nll = (cast(torch.Tensor, lat["cond"]) * nll_c).sum(-1)
        else:
            margin = self._margins(tgt_chosen, tgt_rejected, tgt_len, tgt_mask, lat["cond"])
            mask_f = tgt_mask.to(margin.dtype)
            nll = (F.softplus(-margin) * mask_f).sum(-1) / mask_f.sum(-1).clamp_min(1.0)
        kl_term, ortho = cast(torch.Tensor, lat["kl"]), cast(torch.Tensor, lat["ortho"])
        loss = nll + self.beta * self.kl_weight * kl_term + self.ortho_weight * ortho
        diag = {"nll": nll.detach(), "kl": kl_term.detach(), "ortho": ortho.detach()}
        return loss, diag

    def loss(self, batch: EpisodeBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self(**batch.inputs())

    # -- evaluation ----------------------------------------------------------------------------
    @torch.no_grad()
    def infer(self, batch: EpisodeBatch) -> dict[str, torch.Tensor]:
        """Deterministic evaluation pass (z = posterior mean, exact expectations).

        Returns ``margin`` [B, Kt] (reward margins r(chosen) - r(rejected), 0 where padded), ``kl`` [B] and, for latent
        models, ``mu``/``logvar`` [B, L] and ``comp_probs`` [B, K] = q(c | ctx) at z = mu.
        """
        was_training = self.training
        self.eval()
        try:
            lat = self._latent(
                (batch.ctx_prompt, batch.ctx_chosen, batch.ctx_rejected, batch.ctx_len),
                batch.ctx_mask.bool(),
                batch.type_index,
                sample=False,
            )
            margin = self._margins(
                batch.tgt_chosen,
                batch.tgt_rejected,
                batch.tgt_len,
                batch.tgt_mask.bool(),
                lat["cond"],
            )
        finally:
            self.train(was_training)
        out: dict[str, torch.Tensor] = {"margin": margin}
        for key in ("kl", "mu", "logvar"):
            value = lat.get(key)
            if value is not None:
                out[key] = value
        log_qc = lat.get("log_qc")
        if log_qc is not None:
            out["comp_probs"] = log_qc.exp()
        return out
