"""Model parameters <-> named numpy arrays (what the federation moves)."""

from __future__ import annotations

import numpy as np
import torch

from securefvpa.errors import ModelError


def model_to_arrays(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def load_arrays(model: torch.nn.Module, arrays: dict[str, np.ndarray]) -> None:
    """Load named arrays into ``model``; names and shapes must match exactly."""
    state = model.state_dict()
    if set(arrays) != set(state):
        missing = sorted(set(state) - set(arrays))[:3]
        extra = sorted(set(arrays) - set(state))[:3]
        hint = ""
        if "prior.mix_logits.weight" in set(arrays) ^ set(state):
            stored = "learned" if "prior.mix_logits.weight" in arrays else "uniform"
            hint = (
                f' (the stored parameters have {stored} mixture weights: set'
                f' model.mixture_weights = "{stored}")'
            )
        raise ModelError(
            f"parameter names do not match the model (missing {missing}, unexpected {extra})"
            + hint
        )
    for k, v in arrays.items():
        if tuple(v.shape) != tuple(state[k].shape):
            raise ModelError(
                f"parameter {k!r} has shape {tuple(v.shape)}, expected {tuple(state[k].shape)}"
            )
    model.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in arrays.items()})
