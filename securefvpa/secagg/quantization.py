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

Clipping is counted, not silent. With ``FixedPointSpec(count_clipped=True)`` the ring vector is
``[q(w * clip(x)), w, k]`` (length ``d + 2``) where ``k = #{j : |x_j| > c}``; the server learns only
the secure sum of the ``k`` (``n d <= 2^(b-1) - 1`` is checked so it cannot wrap) and
:func:`decode` returns it. With DP in ``local`` mode ``x`` is already the noised update, so ``k``
is post-processing of the DP output. The default ``count_clipped=False`` keeps the historical
``d + 1`` layout for callers that have not switched yet.

Choosing the range. For ``v = x + z`` with ``||x||_2 <= L`` (the clipped, hence bounded, signal)
and ``z ~ N(0, s^2 I_d)`` (the DP noise), for any ``0 < a < R``: at most ``L^2 / a^2`` coordinates
have ``|x_j| > a`` (``sum_j x_j^2 <= L^2``: Markov's inequality on the coordinates), and every
other coordinate leaves ``[-R, R]`` with probability ``<= P(|z_j| > R - a) = erfc((R - a) /
(s sqrt 2))`` (Gaussian tail). Hence the expected share of clipped coordinates is at most
``min_a [min(1, L^2 / (a^2 d)) + erfc((R - a) / (s sqrt 2))]`` (:func:`clipped_share_bound`);
:func:`clip_range_for` inverts it and :func:`check_clip_range` refuses a range above a configured
share with the numbers in the message.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import optimize, special

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
    count_clipped: bool = False  # append the number of clipped coordinates (length d + 2)

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
        if not isinstance(self.count_clipped, bool):
            raise ConfigError(
                f"quantization count_clipped must be a bool. Found {self.count_clipped!r}."
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

    @property
    def extra_coordinates(self) -> int:
        """Ring coordinates after the ``d`` update levels: the weight, and the clip count if on."""
        return 2 if self.count_clipped else 1

    @classmethod
    def fit(
        cls,
        *,
        clip: float,
        bits: int,
        max_weight: int,
        max_clients: int,
        count_clipped: bool = False,
    ) -> FixedPointSpec:
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
            clip=clip,
            scale=scale,
            bits=bits,
            max_weight=max_weight,
            max_clients=max_clients,
            count_clipped=count_clipped,
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
    """Ring vector ``[q(weight * clip(update)), weight(, clipped)]`` (dtype of the ring).

    Length ``d + spec.extra_coordinates``; the last entry counts the coordinates with
    ``|x_j| > spec.clip`` when ``spec.count_clipped``.
    """
    x = np.asarray(update, dtype=np.float64).reshape(-1)
    if not np.isfinite(x).all():
        bad = int(np.flatnonzero(~np.isfinite(x))[0])
        raise ModelError(f"update to encode has a non-finite value at index {bad}: {x[bad]!r}.")
    w = _check_weight(spec, weight)
    if spec.count_clipped:
        _check_count_fits(spec, x.size)
    # In place where possible: at d = 10^6 every pass over the float64 vector costs ~0.5 ms,
    # and this runs on every client every round (benchmarks/secagg.py, client encode).
    scaled = np.clip(x, -spec.clip, spec.clip)
    clipped = x.size - int(np.count_nonzero(scaled == x))  # |x_j| > clip (x is finite)
    scaled *= w * spec.scale
    scaled += keystream_uniform(random_bytes(SEED_BYTES), x.size)
    np.floor(scaled, out=scaled)
    out = np.empty(x.size + spec.extra_coordinates, dtype=ring_dtype(spec.bits))
    # int64 -> uint32/uint64 keeps the low bits: two's complement modulo 2^b
    np.copyto(out[: x.size], scaled.astype(np.int64), casting="unsafe")
    out[x.size] = w
    if spec.count_clipped:
        out[x.size + 1] = clipped
    return out


def _check_count_fits(spec: FixedPointSpec, dim: int) -> None:
    limit = (1 << (spec.bits - 1)) - 1
    if spec.max_clients * dim > limit:
        raise ConfigError(
            f"the clipped-coordinate count could wrap: n={spec.max_clients} clients x d={dim} "
            f"coordinates = {spec.max_clients * dim} > 2^(bits-1) - 1 = {limit} with "
            f"bits={spec.bits}; use 64 bits."
        )


@dataclass(frozen=True)
class DecodedSum:
    """What the server learns from the ring sum of ``n_clients`` encoded vectors."""

    weighted_sum: np.ndarray  # float64 [d]: sum_i w_i clip(x_i) (within n / scale per coordinate)
    total_weight: int  # sum_i w_i
    clipped: int | None  # sum_i #{j : |x_ij| > clip}; None when the spec does not count
    n_clients: int

    @property
    def dim(self) -> int:
        return int(self.weighted_sum.size)

    @property
    def clipped_share(self) -> float | None:
        """Clipped coordinates over all ``n_clients * d`` encoded coordinates."""
        if self.clipped is None:
            return None
        return self.clipped / (self.n_clients * max(self.dim, 1))

    def weighted_mean(self) -> np.ndarray:
        """``sum_i w_i clip(x_i) / sum_i w_i``; a zero total weight is an error."""
        if self.total_weight <= 0:
            raise ConfigError(
                f"total weight of the aggregate must be > 0. Found {self.total_weight}."
            )
        return self.weighted_sum / self.total_weight


def decode(ring_sum: np.ndarray, spec: FixedPointSpec, n_clients: int) -> DecodedSum:
    """Weighted sum, total weight and (if counted) clipped coordinates of ``n_clients`` vectors."""
    if isinstance(n_clients, bool) or not isinstance(n_clients, int | np.integer):
        raise ConfigError(f"n_clients must be an integer. Found {n_clients!r}.")
    if not 1 <= n_clients <= spec.max_clients:
        raise ConfigError(
            f"n_clients must be in [1, {spec.max_clients}] (the spec's no-overflow bound). "
            f"Found {n_clients}."
        )
    dtype = ring_dtype(spec.bits)
    extra = spec.extra_coordinates
    if (
        not isinstance(ring_sum, np.ndarray)
        or ring_sum.dtype != dtype
        or ring_sum.ndim != 1
        or ring_sum.size < extra + 1
    ):
        found = (
            f"{ring_sum.dtype} with shape {ring_sum.shape}"
            if isinstance(ring_sum, np.ndarray)
            else repr(type(ring_sum))
        )
        raise ConfigError(
            f"ring sum must be a 1-D {np.dtype(dtype).name} array of length >= {extra + 1}. "
            f"Found {found}."
        )
    dim = ring_sum.size - extra
    signed = ring_sum.view(np.int32 if spec.bits == 32 else np.int64)
    clipped = None
    if spec.count_clipped:
        _check_count_fits(spec, dim)
        clipped = int(signed[dim + 1])
    return DecodedSum(
        weighted_sum=signed[:dim].astype(np.float64) / spec.scale,
        total_weight=int(signed[dim]),
        clipped=clipped,
        n_clients=int(n_clients),
    )


def decode_sum(
    ring_sum: np.ndarray, spec: FixedPointSpec, n_clients: int
) -> tuple[np.ndarray, int]:
    """``(sum_i w_i clip(x_i), sum_i w_i)`` from the ring sum of ``n_clients`` encoded vectors
    (kept for existing callers; :func:`decode` also returns the clipped count)."""
    decoded = decode(ring_sum, spec, n_clients)
    return decoded.weighted_sum, decoded.total_weight


def decode_weighted_mean(ring_sum: np.ndarray, spec: FixedPointSpec, n_clients: int) -> np.ndarray:
    """``sum_i w_i clip(x_i) / sum_i w_i``; a zero total weight is an error."""
    return decode(ring_sum, spec, n_clients).weighted_mean()


def _nonneg(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be a number >= 0. Found {value!r}.")
    out = float(value)
    if not (math.isfinite(out) and out >= 0.0):
        raise ConfigError(f"{name} must be finite and >= 0. Found {value!r}.")
    return out


def _dim(dim: object) -> int:
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ConfigError(f"dim must be an integer >= 1. Found {dim!r}.")
    return dim


def _share(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 < value < 1.0:
        raise ConfigError(f"{name} must be in (0, 1). Found {value!r}.")
    return float(value)


def clipped_share_bound(
    *, clip_range: float, signal_l2_bound: float, noise_std: float, dim: int
) -> float:
    """Upper bound on the expected share of the ``dim`` coordinates of ``x + z`` that the encoding
    clips to ``[-clip_range, clip_range]``, for any ``||x||_2 <= signal_l2_bound`` and
    ``z ~ N(0, noise_std^2 I)`` (float units of the encoded vector; see the module docstring):
    ``min_{0<a<R} [min(1, L^2 / (a^2 d)) + erfc((R - a) / (s sqrt 2))]``.
    """
    r = _nonneg("clip_range", clip_range)
    big_l = _nonneg("signal_l2_bound", signal_l2_bound)
    s = _nonneg("noise_std", noise_std)
    d = _dim(dim)
    if r == 0.0:
        return 1.0
    if big_l == 0.0:
        return float(special.erfc(r / (s * math.sqrt(2.0)))) if s > 0.0 else 0.0
    if s == 0.0:
        return min(1.0, big_l * big_l / (r * r * d))

    def bound(a: float) -> float:
        return min(1.0, big_l * big_l / (a * a * d)) + float(
            special.erfc((r - a) / (s * math.sqrt(2.0)))
        )

    grid = r * np.linspace(0.005, 0.995, 199)
    values = [bound(float(a)) for a in grid]
    i = int(np.argmin(values))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    best = optimize.minimize_scalar(bound, bounds=(lo, hi), method="bounded")
    return float(min(1.0, values[i], float(best.fun)))


def clip_range_for(
    *, signal_l2_bound: float, noise_std: float, dim: int, max_clipped_share: float
) -> float:
    """Smallest clip range (within 1e-6 relative) whose :func:`clipped_share_bound` is
    ``<= max_clipped_share``."""
    big_l = _nonneg("signal_l2_bound", signal_l2_bound)
    s = _nonneg("noise_std", noise_std)
    d = _dim(dim)
    target = _share("max_clipped_share", max_clipped_share)
    if big_l == 0.0 and s == 0.0:
        raise ConfigError("signal_l2_bound and noise_std are both 0: nothing to encode.")

    def share(r: float) -> float:
        return clipped_share_bound(clip_range=r, signal_l2_bound=big_l, noise_std=s, dim=d)

    hi = max(big_l, s)
    while share(hi) > target:
        hi *= 2.0
    lo = 0.0
    while hi - lo > 1e-6 * hi:
        mid = 0.5 * (lo + hi)
        if share(mid) > target:
            lo = mid
        else:
            hi = mid
    return hi


def check_clip_range(
    *,
    clip_range: float,
    signal_l2_bound: float,
    noise_std: float,
    dim: int,
    max_clipped_share: float,
) -> float:
    """Return the clipped-share bound of ``clip_range``; raise :class:`ConfigError` with the
    numbers when it exceeds ``max_clipped_share``."""
    target = _share("max_clipped_share", max_clipped_share)
    bound = clipped_share_bound(
        clip_range=clip_range, signal_l2_bound=signal_l2_bound, noise_std=noise_std, dim=dim
    )
    if bound > target:
        needed = clip_range_for(
            signal_l2_bound=signal_l2_bound,
            noise_std=noise_std,
            dim=dim,
            max_clipped_share=target,
        )
        raise ConfigError(
            f"secagg.clip_range={clip_range} may clip up to {100.0 * bound:.3g}% of the "
            f"d={dim} coordinates (update L2 norm <= {signal_l2_bound}, noise std "
            f"{noise_std} per coordinate), above the allowed {100.0 * target:.3g}%; "
            f"a range of at least {needed:.6g} meets it."
        )
    return bound
