"""EpisodeBatch: the tensors one forward pass of a :class:`PreferenceModel` consumes.

An episode is a group of pairs of ONE user: context pairs (encoded into z) and disjoint target
pairs (scored). It is the per-sample unit of DP-SGD: every tensor has the episode batch B as its
first dimension, and padded slots (mask False) contribute exactly nothing to any output.
Built by :mod:`securefvpa.train.episodes`; defined here so the model does not import ``train``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

MODEL_INPUTS = (
    "ctx_prompt",
    "ctx_chosen",
    "ctx_rejected",
    "ctx_len",
    "ctx_mask",
    "tgt_prompt",
    "tgt_chosen",
    "tgt_rejected",
    "tgt_len",
    "tgt_mask",
    "type_index",
)


@dataclass(frozen=True)
class EpisodeBatch:
    ctx_prompt: torch.Tensor  # [B, Kc, d] float32
    ctx_chosen: torch.Tensor  # [B, Kc, d]
    ctx_rejected: torch.Tensor  # [B, Kc, d]
    ctx_len: torch.Tensor  # [B, Kc, 2] log(1 + words) of (chosen, rejected)
    ctx_mask: torch.Tensor  # [B, Kc] bool
    tgt_prompt: torch.Tensor  # [B, Kt, d]
    tgt_chosen: torch.Tensor  # [B, Kt, d]
    tgt_rejected: torch.Tensor  # [B, Kt, d]
    tgt_len: torch.Tensor  # [B, Kt, 2]
    tgt_mask: torch.Tensor  # [B, Kt] bool
    type_index: torch.Tensor  # [B] int64, -1 when unknown
    tgt_rows: npt.NDArray[np.int64]  # [B, Kt] row index into EmbeddedPairs, -1 where padded
    ctx_rows: npt.NDArray[np.int64]  # [B, Kc] row index into EmbeddedPairs, -1 where padded

    @property
    def size(self) -> int:
        return int(self.ctx_mask.shape[0])

    def inputs(self) -> dict[str, torch.Tensor]:
        """Keyword arguments of ``PreferenceModel.forward`` (tensors only, batch dim first)."""
        return {name: getattr(self, name) for name in MODEL_INPUTS}

    def select(self, idx: npt.NDArray[np.int64] | list[int]) -> EpisodeBatch:
        """Episodes ``idx`` of this batch (same padding)."""
        index = torch.as_tensor(np.asarray(idx, dtype=np.int64))
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = (
                value[index] if isinstance(value, torch.Tensor) else value[np.asarray(idx)]
            )
        return EpisodeBatch(**out)
