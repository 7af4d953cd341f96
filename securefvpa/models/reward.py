"""Reward head r(x, y, u): scores ONE response at a time, conditioned on a per-user code u.

The head never sees which slot a response came from: the caller scores chosen and rejected
responses with the same head and takes the difference (Bradley & Terry 1952), so the original
position of a response cannot leak into the score.

Features of a response: its embedding e(x + y) (the frozen encoder embeds prompt and response
together) and, optionally, its log-length. A shared linear "skip" term sees the raw features; the
conditioned part works on a GELU trunk of width ``hidden``. Conditioning on u is one of:

- ``"mixture-heads"``: K scalar heads r_k (trunk + skip, per head) mixed by gate weights g(u)
  on the simplex: r = sum_k g_k r_k. The caller supplies g (a relaxed Gumbel-Softmax sample of the
  mixture component, a softmax of a linear map of z, a one-hot type, or [1] for no latent).
  Multiplicative in u, which is what helped on HH-RLHF (type-specific heads).
- ``"film"``: feature-wise affine modulation h' = h * (1 + s(u)) + b(u) of the trunk
  (Perez et al. 2018, "FiLM"), then a linear read-out.
- ``"concat"``: [h, u] -> GELU layer -> linear read-out (additive conditioning).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from securefvpa.errors import ModelError

CONDITIONINGS = ("mixture-heads", "film", "concat")


class RewardHead(nn.Module):
    def __init__(
        self,
        embed_dim: int,
        hidden: int,
        *,
        conditioning: str,
        cond_dim: int,
        n_heads: int,
        length_feature: bool,
    ) -> None:
        super().__init__()
        if conditioning not in CONDITIONINGS:
            raise ModelError(
                f"model.conditioning must be one of {list(CONDITIONINGS)}. Found {conditioning!r}."
            )
        self.conditioning = conditioning
        self.length_feature = length_feature
        self.cond_dim = cond_dim
        self.n_heads = n_heads
        in_dim = embed_dim + int(length_feature)
        self.trunk = nn.Linear(in_dim, hidden)
        if conditioning == "mixture-heads":
            self.heads = nn.Linear(hidden, n_heads)
            self.skip = nn.Linear(in_dim, n_heads)
        else:
            self.skip = nn.Linear(in_dim, 1)
            self.readout = nn.Linear(hidden, 1)
            if cond_dim > 0 and conditioning == "film":
                self.film = nn.Linear(cond_dim, 2 * hidden)
                with torch.no_grad():  # start as the identity modulation
                    self.film.weight.mul_(0.1)
                    self.film.bias.zero_()
            elif cond_dim > 0:
                self.mix = nn.Linear(hidden + cond_dim, hidden)

    def features(self, emb: torch.Tensor, log_len: torch.Tensor) -> torch.Tensor:
        if self.length_feature:
            return torch.cat([emb, log_len.unsqueeze(-1)], dim=-1)
        return emb

    def forward(
        self,
        emb: torch.Tensor,
        log_len: torch.Tensor,
        cond: torch.Tensor | None,
        *,
        per_head: bool = False,
    ) -> torch.Tensor:
        """Rewards for responses ``emb`` [B, ..., d] with ``log_len`` [B, ...].

        ``cond`` [B, U] is the per-episode code: gate weights for mixture-heads (U = n_heads),
        the code u for film/concat, or None when the head has no latent. ``per_head=True``
        (mixture-heads only; ``cond`` is then ignored) returns every head's reward r_k,
        [B, ..., n_heads], instead of the gated sum.
        """
        if per_head and self.conditioning != "mixture-heads":
            raise ModelError(
                "per-head rewards exist only with conditioning 'mixture-heads'. "
                f"Found {self.conditioning!r}."
            )
        x = self.features(emb, log_len)
        lead = x.shape[:-1]
        # Every Linear sees a 3-D [B, N, F] input: Opacus' ghost-clipping norm samplers handle
        # at most one dimension between the batch and the features.
        x = x.reshape(x.shape[0], -1, x.shape[-1])
        h = F.gelu(self.trunk(x))
        if self.conditioning == "mixture-heads":
            per_head_r = self.heads(h) + self.skip(x)  # [B, N, n_heads]
            if per_head:
                return per_head_r.reshape(*lead, self.n_heads)
            if cond is None:
                out = per_head_r.squeeze(-1) if self.n_heads == 1 else per_head_r.mean(-1)
            else:
                out = (per_head_r * cond.unsqueeze(1)).sum(-1)
            return out.reshape(lead)
        if cond is not None and self.cond_dim > 0:
            u = cond.unsqueeze(1).expand(h.shape[0], h.shape[1], cond.shape[-1])
            if self.conditioning == "film":
                scale, shift = self.film(u).chunk(2, dim=-1)
                h = h * (1.0 + scale) + shift
            else:
                h = F.gelu(self.mix(torch.cat([h, u], dim=-1)))
        return (self.readout(h) + self.skip(x)).squeeze(-1).reshape(lead)
