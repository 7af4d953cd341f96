"""How a round's update becomes a secure-aggregation ring vector and back (both sides use it).

Pure numpy over ``securefvpa.secagg``: the client's secure-aggregation mod encodes with these
functions and the server's workflow (or an in-process round) decodes with the same ones, so the
two sides cannot disagree on parameter order, vector length or fixed-point spec. Everything is
derived from the run config and public counts, never from a message.
"""

from __future__ import annotations

import hashlib

import numpy as np

from securefvpa.config import RunConfig
from securefvpa.errors import FederationError
from securefvpa.secagg import ClientPolicy
from securefvpa.secagg.quantization import FixedPointSpec


def fixed_point_spec(cfg: RunConfig, *, max_weight: int, max_clients: int) -> FixedPointSpec:
    """The fixed-point encoding for weights up to ``max_weight`` and ``max_clients`` summands."""
    return FixedPointSpec.fit(
        clip=cfg.secagg.clip_range,
        bits=cfg.secagg.bits,
        max_weight=max_weight,
        max_clients=max_clients,
    )


def client_policy(cfg: RunConfig, *, vector_length: int, max_participants: int) -> ClientPolicy:
    """What a client accepts from the server: ring, length, graph degree, threshold, size."""
    return ClientPolicy(
        vector_length=vector_length,
        bits=cfg.secagg.bits,
        degree=cfg.secagg.degree,
        threshold_fraction=cfg.secagg.threshold,
        max_participants=max(3, max_participants),
    )


def session_id(config_hash: str, nonce: str) -> bytes:
    """32-byte protocol session id bound to the run config and a fresh server nonce."""
    return hashlib.sha256(
        b"securefvpa/secagg/session\x00" + config_hash.encode() + b"\x00" + nonce.encode()
    ).digest()


def flatten(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """Concatenate named arrays in sorted-name order into one float64 vector."""
    return np.concatenate([np.asarray(arrays[k], dtype=np.float64).ravel() for k in sorted(arrays)])


def vector_length(like: dict[str, np.ndarray]) -> int:
    return int(sum(int(np.prod(np.shape(v))) for v in like.values()))


def unflatten(vector: np.ndarray, like: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Inverse of :func:`flatten` for arrays shaped like ``like``."""
    out, i = {}, 0
    for k in sorted(like):
        n = int(np.prod(np.shape(like[k])))
        out[k] = vector[i : i + n].reshape(np.shape(like[k]))
        i += n
    if i != vector.size:
        raise FederationError(f"aggregate has {vector.size} values, the model {i}")
    return out
