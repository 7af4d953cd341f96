"""Fixed-point encoding of weighted float updates into the ring Z_{2^bits} (pure numpy).

A client with update ``x`` (floats) and integer weight ``w`` (its example count) sends the ring
vector ``[q(w * clip(x)), w]`` of length ``d + 1``; the server sums the vectors of the survivors
and :func:`decode_weighted_mean` returns ``sum_i w_i x_i / sum_i w_i``.

Encoding, with ``clip(x) = min(max(x, -c), c)`` and scale ``s`` (levels per unit):
``q(v) = floor(s * v + U)`` with ``U ~ Uniform[0, 1)`` (stochastic rounding: ``E[q(v)] = s v``,
``|q(v) - s v| < 1``; Gupta et al. 2015, "Deep Learning with Limited Numerical Precision").
The uniforms come from an AES-CTR keystream under a key from ``os.urandom``; never numpy's RNG.

No-wrap proof. Let ``W`` bound the weight and ``n`` the number of summed clients. For
``|v| <= W c``: ``q(v) <= floor(W c s + U) <= floor(W c s) + 1`` and
``q(v) >= floor(-W c s) >= -floor(W c s) - 1``, so ``|q(v)| <= Q := floor(W c s) + 1``. The true
integer sum ``S`` of n such values has ``|S| <= n Q``. The ring sum equals ``S mod 2^b``; reading
it as a two's-complement b-bit integer returns ``S`` exactly iff ``-2^(b-1) <= S < 2^(b-1)``,
which holds whenever ``n Q <= 2^(b-1) - 1``. The weight entry sums to ``<= n W``, so also
``n W <= 2^(b-1) - 1``. Finally ``s v`` is computed in float64, exact-integer-safe while
``Q < 2^53``. :class:`FixedPointSpec` refuses any configuration that breaks one of these
inequalities, and :meth:`FixedPointSpec.fit` picks the largest power-of-two scale that keeps
them.

Error: each client's encoded value is off by < 1 level, so the decoded weighted sum is within
``n / s`` of ``sum_i w_i clip(x_i)`` per coordinate, and the weighted mean within
``n / (s * sum_i w_i)``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from securefvpa.errors import ConfigError, ModelError
from securefvpa.secagg.primitives import SEED_BYTES, keystream_uniform, ring_dtype

_FLOAT_EXACT = 1 << 53


@dataclass(frozen=True)
class FixedPointSpec:
    """Encoding parameters; construction fails if ``max_clients`` encoded values could wrap."""

    clip: float  # c: coordinates are clipped to [-c, c]
    scale: float  # s: integer levels per unit
    bits: int  # b: ring Z_{2^b}
    max_weight: int  # W: largest weight (example count) a client may send
    max_clients: int  # n: most clients whose vectors are summed

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise ConfigError(f"quantization clip must be finite and > 0. Found {self.clip!r}.")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ConfigError(f"quantization scale must be finite and > 0. Found {self.scale!r}.")
        ring_dtype(self.bits)
        if not (isinstance(self.max_weight, int) and self.max_weight >= 1):
            raise ConfigError(
                f"quantization max_weight must be an int >= 1. Found {self.max_weight!r}."
            )
        if not (isinstance(self.max_clients, int) and self.max_clients >= 1):
            raise ConfigError(
                f"quantization max_clients must be an int >= 1. Found {self.max_clients!r}."
            )
        q = self.level_bound
        limit = (1 << (self.bits - 1)) - 1
        if (
            self.max_clients * q > limit
            or self.max_clients * self.max_weight > limit
            or q >= _FLOAT_EXACT
        ):
            raise ConfigError(
                "fixed-point encoding could overflow the ring: "
                f"n={self.max_clients} clients x Q={q} levels (Q = floor(W*c*s) + 1 with "
                f"weight bound W={self.max_weight}, clip c={self.clip}, scale s={self.scale}) "
                f"= {self.max_clients * q} must be <= 2^(bits-1) - 1 = {limit} with "
                f"bits={self.bits} (and n*W={self.max_clients * self.max_weight} <= {limit}, "
                "Q < 2^53)."
            )

    @property
    def level_bound(self) -> int:
        """``Q = floor(W c s) + 1``: the largest absolute encoded value of one client."""
        return math.floor(self.max_weight * self.clip * self.scale) + 1

    @classmethod
    def fit(cls, *, clip: float, bits: int, max_weight: int, max_clients: int) -> FixedPointSpec:
        """The spec with the largest power-of-two scale that cannot overflow."""
        if not (math.isfinite(clip) and clip > 0):
            raise ConfigError(f"quantization clip must be finite and > 0. Found {clip!r}.")
        ring_dtype(bits)
        limit = min((1 << (bits - 1)) - 1, _FLOAT_EXACT - 1)
        per_client = limit // max(max_clients, 1) - 1  # floor(W c s) must stay <= this
        if per_client < 1:
            raise ConfigError(
                f"no scale fits: n={max_clients} clients, bits={bits}, weight bound W={max_weight},"
                f" clip c={clip}; use 64 bits or fewer clients."
            )
        exponent = math.floor(math.log2(per_client / (max_weight * clip)))
        scale = math.ldexp(1.0, exponent)
        while math.floor(max_weight * clip * scale) > per_client:  # guard float log2 edge cases
            scale /= 2
        return cls(
            clip=clip, scale=scale, bits=bits, max_weight=max_weight, max_clients=max_clients
        )

    @property
    def resolution(self) -> float:
        """Per-client worst-case rounding error of one coordinate of ``w * x``: ``1 / s``."""
        return 1.0 / self.scale


def _check_weight(spec: FixedPointSpec, weight: int) -> int:
    if isinstance(weight, bool) or not isinstance(weight, int | np.integer):
        raise ConfigError(f"weight must be an integer example count. Found {weight!r}.")
    if not 0 <= int(weight) <= spec.max_weight:
        raise ConfigError(f"weight must be in [0, {spec.max_weight}]. Found {weight}.")
    return int(weight)


def encode(
    update: np.ndarray,
    spec: FixedPointSpec,
    *,
    weight: int = 1,
    random_bytes: Callable[[int], bytes] = os.urandom,
) -> np.ndarray:
    """Ring vector ``[q(weight * clip(update)), weight]`` (length ``d + 1``, dtype of the ring)."""
    x = np.asarray(update, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(x)):
        bad = int(np.flatnonzero(~np.isfinite(x))[0])
        raise ModelError(f"update to encode has a non-finite value at index {bad}: {x[bad]!r}.")
    w = _check_weight(spec, weight)
    scaled = np.clip(x, -spec.clip, spec.clip) * (w * spec.scale)
    noise = keystream_uniform(random_bytes(SEED_BYTES), x.size)
    levels = np.floor(scaled + noise).astype(np.int64)
    out = np.empty(x.size + 1, dtype=ring_dtype(spec.bits))
    mask = np.uint64((1 << spec.bits) - 1)
    out[:-1] = levels.view(np.uint64) & mask  # two's complement modulo 2^b
    out[-1] = w
    return out


def decode_sum(
    ring_sum: np.ndarray, spec: FixedPointSpec, n_clients: int
) -> tuple[np.ndarray, int]:
    """``(sum_i w_i clip(x_i), sum_i w_i)`` from the ring sum of ``n_clients`` encoded vectors."""
    if not 1 <= n_clients <= spec.max_clients:
        raise ConfigError(
            f"n_clients must be in [1, {spec.max_clients}] (the spec's no-overflow bound). "
            f"Found {n_clients}."
        )
    dtype = ring_dtype(spec.bits)
    if ring_sum.dtype != dtype or ring_sum.ndim != 1 or ring_sum.size < 1:
        raise ConfigError(
            f"ring sum must be a 1-D {np.dtype(dtype).name} array of length >= 1. "
            f"Found {ring_sum.dtype} with shape {ring_sum.shape}."
        )
    signed = ring_sum.view(np.int32 if spec.bits == 32 else np.int64)
    total_weight = int(signed[-1])
    return signed[:-1].astype(np.float64) / spec.scale, total_weight


def decode_weighted_mean(ring_sum: np.ndarray, spec: FixedPointSpec, n_clients: int) -> np.ndarray:
    """``sum_i w_i clip(x_i) / sum_i w_i``; a zero total weight is an error."""
    weighted, total_weight = decode_sum(ring_sum, spec, n_clients)
    if total_weight <= 0:
        raise ConfigError(f"total weight of the aggregate must be > 0. Found {total_weight}.")
    return weighted / total_weight
