"""The distributed discrete Gaussian (DDG) mechanism in the secure-aggregation ring (pure numpy).

Kairouz, Liu & Steinke 2021, "The Distributed Discrete Gaussian Mechanism for Federated Learning
with Secure Aggregation" (ICML, arXiv 2102.06387), Algorithm 1, with our choices below. Accounting
lives in :mod:`securefvpa.privacy.ddg`; this module encodes, decodes and bounds wrap-around.

Client (:func:`encode`), for the ``[B, dim]`` matrix of its sampled units' gradients::

    clip each row to L2 norm C  ->  pad to padded_dim  ->  rotate (block Hadamard, public seed)
    ->  scale by 1/gamma  ->  conditional randomized rounding of EACH ROW  ->  integer row sum
    ->  + N_Z(0, sigma^2)^padded_dim (exact discrete Gaussian)  ->  mod 2^bits

Server (:func:`decode`): ring sum -> centred signed integers -> * gamma -> inverse rotation ->
unpad = sum of the survivors' clipped gradients + rounding error + noise (float64 ``[dim]``).
No count or weight coordinate is sent: the number of sampled units must stay hidden for
amplification by sampling; the server divides by the public *expected* batch.

Per-unit rounding (the default and the only mode here). Each clipped unit ``g`` becomes an integer
vector ``r`` with ``||r||_2 <= D2 = rounded_l2_bound(C/gamma, padded_dim, beta)`` *enforced
exactly*: rounding is redrawn until ``sum_j r_j^2 <= floor(D2^2)`` (integer arithmetic), so the
accounted sensitivity holds whatever the floating-point input. Adding/removing a unit moves the
integer sum by one such ``r``; replacing moves it by ``r' - r``; the rounding randomness is a
mixture over shifts in that ball and Rényi divergence is jointly quasi-convex (van Erven &
Harremoës 2014, Thm. 13), so the worst shift bounds the privacy loss
(``tests/secagg/test_ddg.py::test_one_unit_moves_the_sum_by_at_most_the_rounded_bound``).

Rounding once on the client's float sum instead (the alternative considered): couple the rounding
of ``S/gamma`` and ``(S + g)/gamma`` through the same uniforms, ``floor(v + U)`` vs
``floor(v + delta + U)``; coordinate-wise their difference is within 1 of ``delta_j``, so it is an
integer vector of L2 norm ``< ||g||/gamma + sqrt(d)``, and joint quasi-convexity over the shared
``U`` gives sensitivity ``C/gamma + sqrt(d)`` (``2C/gamma + sqrt(d)`` for replace-one). The proof
is sound for *unconditional* rounding only: conditioning on the rounded norm makes the accepted
``U`` differ between the two inputs and breaks the coupling. It is never better than per-unit
rounding under add/remove (``min(c + sqrt(d), conditional bound) <= c + sqrt(d)``) and better under
replace-one only when ``c = C/gamma`` is much larger than ``sqrt(d)``; per-unit rounding costs
``B`` roundings per round and adds ``B`` rounding errors (variance ``<= B gamma^2 / 4`` per
coordinate), both small here, so it is what we ship.

Rotation. ``y = H D x / sqrt(block)`` per block of ``block_size`` (a power of two) coordinates,
``D`` diagonal random signs from the AES-CTR keystream of a 32-byte *public* per-round seed (the
same for every client; an orthogonal map fixed before the data, so it does not affect privacy),
``H`` the Walsh-Hadamard matrix (own FWHT: numpy/scipy have no fast transform and
``scipy.linalg.hadamard`` is a dense ``O(block^2)`` matrix). Blocks limit the padding
(66,001 -> 69,632 at block 4096 instead of 131,072); ``block_size = 1`` means no rotation. It only
flattens the coordinates so that the modulus wraps rarely.

Wrap-around (:func:`wrap_probability_bound`). With ``N`` units summed (all survivors) and ``m``
noise shares, coordinate ``j`` of the integer sum is ``A_j + E_j + Z_j``: ``|E_j| < N`` (rounding,
deterministic), ``A_j`` the rotated scaled signal, ``sum(H_jk D_k G_k)/gamma`` with
``||G|| <= N C``, is subgaussian with variance proxy ``(N C / gamma)^2 / block`` over the signs
(Hoeffding), and ``Z_j``, a sum of ``m`` discrete Gaussians, is ``m sigma^2``-subgaussian (CKS20:
the discrete Gaussian is sigma^2-subgaussian). Also ``|A_j + E_j| <= N D2`` always. The sum wraps
iff ``|.| >= 2^(bits-1)``; a union bound over ``padded_dim`` coordinates gives the probability
bound (``tests/secagg/test_ddg.py::test_wrap_rate_stays_below_the_bound_under_worst_case_inputs``:
7 wraps in 3,000 worst-case rounds at a bound of 0.05). It assumes the inputs do not depend on
the round's rotation seed (true for honest gradients; a malicious client can always corrupt the
sum, DP does not depend on it).

Exact discrete Gaussian (:func:`sample_discrete_gaussian`): Canonne, Kamath & Steinke 2020,
"The Discrete Gaussian for Differential Privacy" (NeurIPS), Algorithms 2-3: ``Y`` discrete Laplace
with ``t = floor(sigma) + 1`` accepted with probability ``exp(-(|Y| - sigma^2/t)^2 / (2 sigma^2))``;
``|Y| = U + t V`` with ``U`` uniform on {0..t-1} (64-bit words, rejection above the largest
multiple of ``t``) kept with probability ``exp(-U/t)``, ``V`` geometric with ``P(V >= v) = e^-v``,
a sign bit, and "-0" rejected. Written by hand (not OpenDP) for speed: OpenDP 0.16's exact sampler
runs 4e4-9e4 coordinates/s here (Python lists in and out), ours 7e6-1e7 (vectorised numpy;
``benchmarks/ddg.py``, ``benchmarks/results/ddg.json``); a client needs 1e5-1e6 per round.
Exactness: every Bernoulli is a comparison ``U' < exp(-x)`` with ``U'`` a uniform known bit by bit
(53 bits first) and ``x`` rational (``sigma^2`` is the exact rational value of the float
``sigma``). numpy decides a comparison in float64 only when ``U'``'s interval is farther than a
relative margin ``2^-32`` from ``exp(-x)`` (float64 error here is below ``2^-44``,
``tests/secagg/test_ddg.py::test_float_fast_path_error_is_far_inside_the_margin``); otherwise
(probability ~``2^-31`` per comparison) it is finished exactly: more bits of ``U'`` against integer
fixed-point brackets of ``exp(-x)`` from its alternating Taylor series (:func:`_exp_neg_bracket`,
``test_exact_comparisons_agree_with_high_precision_truth``). Randomness: AES-256-CTR keystream
under a fresh 32-byte key from ``random_bytes`` (``os.urandom`` in production), as everywhere in
secagg. Distribution tested against the exact pmf and OpenDP
(``test_sampler_matches_the_exact_pmf``, ``test_sampler_matches_opendp``,
``test_exact_fallback_path_is_exact``). Not constant-time: the number of rejections (and so the
running time) varies; only the summed ring vector leaves the client.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from securefvpa.errors import ConfigError, ModelError
from securefvpa.privacy import ddg as ddg_accounting
from securefvpa.secagg.primitives import SEED_BYTES, expand_mask, keystream_uniform, ring_dtype

RandomBytes = Callable[[int], bytes]

MAX_SIGMA = float(2**40)
_MARGIN = 2.0**-32  # relative margin of the float64 fast path (float64 error is < 2^-44)
_TWO_M53 = 2.0**-53
_CHUNK = 1 << 17  # candidates per vectorised batch (keeps the working set in cache)
_MAX_ROUNDING_TRIES = 200  # beta <= e^-0.5 gives P(200 failures) <= 1e-43 for a clipped unit
_INT_LIMIT = 2**62


# ----------------------------------------------------------------------------------------------
# Exact discrete Gaussian sampler
# ----------------------------------------------------------------------------------------------


class _LazyUniform:
    """A uniform ``U`` in [0, 1) known to ``bits`` bits: ``U`` in [num/2^bits, (num+1)/2^bits)."""

    __slots__ = ("bits", "num", "_random_bytes")

    def __init__(self, num: int, bits: int, random_bytes: RandomBytes) -> None:
        self.num, self.bits, self._random_bytes = num, bits, random_bytes

    def refine(self) -> None:
        self.num = (self.num << 64) | int.from_bytes(self._random_bytes(8), "big")
        self.bits += 64


def _exp_neg_unit_fixed(f_scaled: int, w: int) -> tuple[int, int]:
    """Integers ``lo <= 2^w exp(-f) <= hi`` for ``f = f_scaled / 2^w`` in [0, 1].

    The Taylor series of ``exp(-f)`` alternates with terms of decreasing size, so an odd partial
    sum is below it and an even one above. Terms are computed in fixed point with ``2^w``
    scaling, rounded down for the lower and up for the upper sum; the last term is < 1 unit.
    """
    one = 1 << w
    lo_term, hi_term = one, one
    lo_sum, hi_sum = one, one  # running lower / upper bounds of the partial sums
    below, above = 0, one
    i = 0
    while True:
        i += 1
        lo_term = (lo_term * f_scaled) // (i * one)
        hi_term = -((-hi_term * f_scaled) // (i * one))
        if i % 2:
            lo_sum, hi_sum = lo_sum - hi_term, hi_sum - lo_term
            below = lo_sum
        else:
            lo_sum, hi_sum = lo_sum + lo_term, hi_sum + hi_term
            above = hi_sum
        if i >= 2 and hi_term <= 1:
            return max(below - i, 0), above + i  # + i units absorb the per-term rounding


@functools.lru_cache(maxsize=4096)
def _exp_neg_int_fixed(n: int, w: int) -> tuple[int, int]:
    """Integers ``lo <= 2^w exp(-n) <= hi`` for an integer ``n >= 1``."""
    guard = w + 8 + 2 * n.bit_length()
    lo_1, hi_1 = _exp_neg_unit_fixed(1 << guard, guard)
    shift = guard * n - w
    return (lo_1**n) >> shift, -((-(hi_1**n)) >> shift)


def _exp_neg_bracket(x: Fraction, prec: int) -> tuple[int, int, int]:
    """``(lo, hi, s)`` with ``lo / 2^s <= exp(-x) <= hi / 2^s`` for rational ``x >= 0`` and
    ``(hi - lo) / 2^s <= 2^-prec``.

    ``x = n + f``: ``f`` is rounded outward to ``w = prec + 16`` bits (``exp(-f)`` decreases, so
    ``exp(-f_hi) <= exp(-f) <= exp(-f_lo)``), the series runs in exact integer fixed point.
    """
    w = prec + 16
    n = x.numerator // x.denominator
    if n >= 4096 and prec <= 5900:  # exp(-x) < exp(-4096) < 2^-5909: bracket [0, 2^-5909]
        return 0, 1, 5909
    rem = x.numerator - n * x.denominator  # f = rem / den in [0, 1)
    f_lo = (rem << w) // x.denominator
    f_hi = -((-(rem << w)) // x.denominator)
    lo_f = _exp_neg_unit_fixed(f_hi, w)[0]
    hi_f = _exp_neg_unit_fixed(f_lo, w)[1]
    if n == 0:
        return lo_f, hi_f, w
    lo_n, hi_n = _exp_neg_int_fixed(n, w)
    return lo_n * lo_f, hi_n * hi_f, 2 * w


def _below_exp(u: _LazyUniform, x: Fraction) -> bool:
    """Exactly decide ``U < exp(-x)``, drawing more bits of ``U`` until the answer is certain."""
    if x == 0:
        return True  # U < 1 always
    while True:
        lo, hi, scale = _exp_neg_bracket(x, u.bits + 8)
        # U in [num, num + 1) / 2^bits, compared by cross-multiplication (all integers).
        if (u.num + 1) << scale <= lo << u.bits:
            return True
        if u.num << scale >= hi << u.bits:
            return False
        u.refine()


def _exact_geometric(u: _LazyUniform, guess: int) -> int:
    """``max{v >= 0 : U < exp(-v)}`` exactly (P(V >= v) = e^-v), searching from ``guess``."""
    v = max(guess, 0)
    if _below_exp(u, Fraction(v)):
        while _below_exp(u, Fraction(v + 1)):
            v += 1
        return v
    while True:
        v -= 1
        if _below_exp(u, Fraction(v)):
            return v


def _exact_candidate(
    u: int,
    jb: int,
    jv: int,
    guess: int,
    j2: int,
    negative: bool,
    t: int,
    sigma2: Fraction,
    random_bytes: RandomBytes,
) -> int | None:
    """One candidate of CKS20 Alg. 2-3 decided exactly from the first 53 bits of its uniforms."""
    if not _below_exp(_LazyUniform(jb, 53, random_bytes), Fraction(u, t)):
        return None
    x = u + t * _exact_geometric(_LazyUniform(jv, 53, random_bytes), guess)
    if negative and x == 0:
        return None
    exponent = (Fraction(x) - sigma2 / t) ** 2 / (2 * sigma2)
    return (
        (-x if negative else x)
        if _below_exp(_LazyUniform(j2, 53, random_bytes), exponent)
        else None
    )


def _check_sigma(sigma: object) -> float:
    if isinstance(sigma, bool) or not isinstance(sigma, int | float):
        raise ConfigError(f"discrete Gaussian sigma must be a number. Found {sigma!r}.")
    s = float(sigma)
    if not (math.isfinite(s) and 0.0 < s <= MAX_SIGMA):
        raise ConfigError(f"discrete Gaussian sigma must be in (0, 2^40]. Found {sigma!r}.")
    return s


def _certain_below(j: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For U in [j, j+1) 2^-53: (surely U < p, surely U >= p) with the float margin."""
    lo = j.astype(np.float64) * _TWO_M53
    hi = (j + np.uint64(1)).astype(np.float64) * _TWO_M53
    return hi <= p * (1.0 - _MARGIN), (j > np.uint64(0)) & (lo >= p * (1.0 + _MARGIN))


def sample_discrete_gaussian(
    count: int, *, sigma: float, random_bytes: RandomBytes = os.urandom
) -> np.ndarray:
    """``count`` i.i.d. exact samples of ``N_Z(0, sigma^2)`` (pmf ∝ ``exp(-y^2/(2 sigma^2))``).

    ``sigma`` in (0, 2^40] (levels); returns int64 ``[count]``. Randomness: AES-256-CTR keystream
    under 32 bytes of ``random_bytes`` per batch (``os.urandom`` unless a test injects a stream).
    Algorithm and exactness argument: module docstring. Raises :class:`ConfigError`.
    """
    if isinstance(count, bool) or not isinstance(count, int | np.integer) or count < 0:
        raise ConfigError(f"sample count must be an integer >= 0. Found {count!r}.")
    s = _check_sigma(sigma)
    sigma2 = Fraction(s) ** 2  # exact
    t = math.floor(s) + 1
    s2 = s * s
    shift = s2 / t
    rem = (1 << 64) % t  # w < 2^64 - rem makes w mod t exactly uniform (none when t | 2^64)
    limit = np.uint64((1 << 64) - rem) if rem else None
    out = np.empty(int(count), dtype=np.int64)
    filled = 0
    while filled < count:
        m = min(_CHUNK, max(64, int(3.5 * (count - filled)) + 16))
        words = expand_mask(random_bytes(SEED_BYTES), 4 * m, 64)
        wu, wb, wv, w2 = words[:m], words[m : 2 * m], words[2 * m : 3 * m], words[3 * m :]
        # CKS20 Alg. 2: U uniform on {0..t-1} (rejection keeps it exact), kept w.p. exp(-U/t);
        # V geometric with P(V >= v) = e^-v; X = U + t V is geometric with ratio exp(-1/t).
        u_ok = np.ones(m, dtype=bool) if limit is None else wu < limit
        u = wu % np.uint64(t)
        uf = u.astype(np.float64)
        jb, jv = wb >> np.uint64(11), wv >> np.uint64(11)
        b_yes, b_no = _certain_below(jb, np.exp(-uf / t))
        v = np.maximum(np.floor(-np.log((jv.astype(np.float64) + 0.5) * _TWO_M53)), 0.0)
        v_ok = _certain_below(jv, np.exp(-v))[0] & _certain_below(jv, np.exp(-(v + 1.0)))[1]
        x = uf + t * v
        negative = (w2 & np.uint64(1)).astype(bool)
        j2 = w2 >> np.uint64(11)
        zero_reject = negative & (x == 0.0)
        a = x - shift
        accept, reject = _certain_below(j2, np.exp(-(a * a) / (2.0 * s2)))
        y = np.where(negative, -x, x).astype(np.int64)
        take = u_ok & b_yes & v_ok & ~zero_reject & accept
        exact = u_ok & ~b_no & (~b_yes | ~v_ok | (~zero_reject & ~accept & ~reject))
        for i in np.flatnonzero(exact):  # rare: finish these comparisons exactly
            value = _exact_candidate(
                int(u[i]), int(jb[i]), int(jv[i]), int(v[i]), int(j2[i]), bool(negative[i]),
                t, sigma2, random_bytes,
            )  # fmt: skip
            take[i] = value is not None
            if value is not None:
                y[i] = value
        accepted = y[take]
        k = min(accepted.size, int(count) - filled)
        out[filled : filled + k] = accepted[:k]
        filled += k
    return out


# ----------------------------------------------------------------------------------------------
# Rotation
# ----------------------------------------------------------------------------------------------


def _check_block(block_size: object) -> int:
    if (
        isinstance(block_size, bool)
        or not isinstance(block_size, int)
        or block_size < 1
        or block_size & (block_size - 1)
        or block_size > 1 << 24
    ):
        raise ConfigError(
            f"ddg block_size must be a power of two in [1, 2^24]. Found {block_size!r}."
        )
    return block_size


def padded_dim(dim: int, block_size: int) -> int:
    """``dim`` rounded up to a multiple of ``block_size``."""
    b = _check_block(block_size)
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ConfigError(f"ddg dim must be an integer >= 1. Found {dim!r}.")
    return -(-dim // b) * b


def _signs(seed: bytes, length: int) -> np.ndarray:
    if not isinstance(seed, bytes) or len(seed) != SEED_BYTES:
        raise ConfigError(
            f"rotation seed must be {SEED_BYTES} bytes. Found {type(seed).__name__} "
            f"of length {len(seed) if isinstance(seed, bytes) else '?'}."
        )
    words = expand_mask(seed, -(-length // 64), 64)
    bits = np.unpackbits(words.view(np.uint8), bitorder="little")[:length]
    return 1.0 - 2.0 * bits.astype(np.float64)


def _fwht(a: np.ndarray) -> np.ndarray:
    """Unnormalised Walsh-Hadamard transform along the last axis (a power of two), in place."""
    n = a.shape[-1]
    lead = a.shape[:-1]
    h = 1
    while h < n:
        v = a.reshape(*lead, n // (2 * h), 2, h)
        x, y = v[..., 0, :], v[..., 1, :]
        tmp = x - y
        x += y
        y[...] = tmp
        h *= 2
    return a


def rotate(x: np.ndarray, *, seed: bytes, block_size: int) -> np.ndarray:
    """``H D x / sqrt(block)`` blockwise along the last axis (length a multiple of the block)."""
    b = _check_block(block_size)
    arr = np.array(x, dtype=np.float64, copy=True)
    p = arr.shape[-1]
    if p % b:
        raise ConfigError(f"rotation input length {p} is not a multiple of block {b}.")
    arr *= _signs(seed, p)
    if b > 1:
        _fwht(arr.reshape(*arr.shape[:-1], p // b, b))
        arr /= math.sqrt(b)
    return arr


def unrotate(y: np.ndarray, *, seed: bytes, block_size: int) -> np.ndarray:
    """Inverse of :func:`rotate`: ``D H y / sqrt(block)``."""
    b = _check_block(block_size)
    arr = np.array(y, dtype=np.float64, copy=True)
    p = arr.shape[-1]
    if p % b:
        raise ConfigError(f"rotation input length {p} is not a multiple of block {b}.")
    if b > 1:
        _fwht(arr.reshape(*arr.shape[:-1], p // b, b))
        arr /= math.sqrt(b)
    arr *= _signs(seed, p)
    return arr


# ----------------------------------------------------------------------------------------------
# Spec, rounding, encode / decode
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DdgSpec:
    """Encoding parameters both sides derive from the run config (never from messages).

    Construction fails (:class:`ConfigError`, naming the value) for parameters the encoder cannot
    honour exactly in int64 arithmetic.
    """

    dim: int  # d: float coordinates of the flattened update
    clip: float  # C: L2 clip norm of one unit's gradient (float units)
    gamma: float  # float value of one ring level (a power of two keeps 1/gamma exact)
    local_sigma: float  # sigma of this client's share N_Z(0, sigma^2), in levels (>= 1)
    beta: float = math.exp(-0.5)  # conditional-rounding parameter (DDG's experiments' value)
    bits: int = 32  # ring Z_{2^bits}
    block_size: int = 4096  # Hadamard block (power of two); 1 = no rotation

    def __post_init__(self) -> None:
        padded_dim(self.dim, self.block_size)
        ring_dtype(self.bits)
        for name in ("clip", "gamma"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"ddg {name} must be a number. Found {value!r}.")
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"ddg {name} must be finite and > 0. Found {value!r}.")
        sigma = _check_sigma(self.local_sigma)
        if sigma < ddg_accounting.MIN_LOCAL_SIGMA:
            raise ConfigError(
                f"ddg local_sigma must be >= {ddg_accounting.MIN_LOCAL_SIGMA} level. "
                f"Found {self.local_sigma!r}."
            )
        if isinstance(self.beta, bool) or not (
            isinstance(self.beta, int | float) and 0.0 <= self.beta < 1.0
        ):
            raise ConfigError(f"ddg beta must be in [0, 1). Found {self.beta!r}.")
        worst = self.clip / self.gamma + math.sqrt(self.padded_dim)
        if not math.isfinite(worst) or worst * worst >= _INT_LIMIT:
            raise ConfigError(
                f"ddg clip/gamma = {self.clip}/{self.gamma} is too large for exact int64 "
                f"norm checks ((clip/gamma + sqrt(padded_dim))^2 must be < 2^62); use a larger "
                "gamma."
            )

    @property
    def padded_dim(self) -> int:
        """Ring coordinates: ``dim`` rounded up to a multiple of ``block_size``."""
        return padded_dim(self.dim, self.block_size)

    @property
    def unit_l2_bound(self) -> float:
        """``D2``: the enforced L2 bound of one rounded unit, in levels."""
        return ddg_accounting.rounded_l2_bound(
            l2_norm=self.clip / self.gamma, dim=self.padded_dim, beta=self.beta
        )

    @property
    def unit_l2_bound_sq(self) -> int:
        """``floor(D2^2)``: the exact integer bound the rounding enforces on ``sum_j r_j^2``."""
        return math.floor(self.unit_l2_bound**2)

    def privacy_round(
        self, *, sample_rate: float, honest_shares: int, relation: str = "replace_one"
    ) -> ddg_accounting.DdgRound:
        """The :class:`~securefvpa.privacy.ddg.DdgRound` one round with this spec realises."""
        return ddg_accounting.DdgRound(
            sample_rate=sample_rate,
            clip=self.clip,
            gamma=self.gamma,
            beta=self.beta,
            dim=self.padded_dim,
            local_sigma=self.local_sigma,
            honest_shares=honest_shares,
            relation=relation,
        )


def _check_units(units: np.ndarray, dim: int) -> np.ndarray:
    arr = np.asarray(units, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise ModelError(f"units must be a [B, {dim}] matrix. Found shape {arr.shape}.")
    if not np.all(np.isfinite(arr)):
        row, col = (int(v[0]) for v in np.nonzero(~np.isfinite(arr)))
        raise ModelError(f"unit gradient {row} has a non-finite value at index {col}.")
    return arr


def conditional_round(
    scaled: np.ndarray, *, bound_sq: int, random_bytes: RandomBytes = os.urandom
) -> np.ndarray:
    """Randomized rounding of each row, redrawn until ``sum_j r_j^2 <= bound_sq`` (exact int64).

    ``scaled``: float64 ``[B, p]`` in levels. ``r_j = floor(v_j + U_j)`` is ``ceil`` with
    probability ``frac(v_j)`` (DDG Sec. 4, conditional randomized rounding). Raises
    :class:`ModelError` when a row still fails after 200 draws (its norm exceeds the clip).
    """
    out = np.empty(scaled.shape, dtype=np.int64)
    pending = np.arange(scaled.shape[0])
    for _ in range(_MAX_ROUNDING_TRIES):
        if pending.size == 0:
            return out
        v = scaled[pending]
        u = keystream_uniform(random_bytes(SEED_BYTES), v.size).reshape(v.shape)
        r = np.floor(v + u).astype(np.int64)
        ok = np.einsum("ij,ij->i", r, r) <= bound_sq
        out[pending[ok]] = r[ok]
        pending = pending[~ok]
    if pending.size == 0:
        return out
    raise ModelError(
        f"conditional rounding failed {_MAX_ROUNDING_TRIES} times for unit {int(pending[0])}: "
        f"its scaled norm {float(np.linalg.norm(scaled[pending[0]])):.6g} is too large for the "
        f"bound sqrt({bound_sq})."
    )


def quantize_units(
    units: np.ndarray,
    *,
    spec: DdgSpec,
    rotation_seed: bytes,
    random_bytes: RandomBytes = os.urandom,
    chunk_rows: int = 16,
) -> np.ndarray:
    """Integer sum (int64 ``[padded_dim]``) of the clipped, rotated, scaled, rounded units.

    ``units``: float ``[B, dim]`` unit gradients (B may be 0). Each row is clipped to L2 norm
    ``spec.clip`` here (a no-op after Opacus' clipping; enforcing it keeps the guarantee
    independent of the caller). No noise is added (see :func:`encode`).
    """
    arr = _check_units(units, spec.dim)
    total = np.zeros(spec.padded_dim, dtype=np.int64)
    if arr.shape[0] * spec.unit_l2_bound >= _INT_LIMIT:
        raise ConfigError(f"{arr.shape[0]} units of bound {spec.unit_l2_bound} overflow int64.")
    bound_sq = spec.unit_l2_bound_sq
    for start in range(0, arr.shape[0], max(1, chunk_rows)):
        rows = arr[start : start + max(1, chunk_rows)]
        norms = np.linalg.norm(rows, axis=1)
        factor = np.minimum(1.0, spec.clip / np.maximum(norms, np.finfo(np.float64).tiny))
        padded = np.zeros((rows.shape[0], spec.padded_dim), dtype=np.float64)
        padded[:, : spec.dim] = rows * factor[:, None]
        scaled = rotate(padded, seed=rotation_seed, block_size=spec.block_size) / spec.gamma
        total += conditional_round(scaled, bound_sq=bound_sq, random_bytes=random_bytes).sum(axis=0)
    return total


def noise_share(spec: DdgSpec, *, random_bytes: RandomBytes = os.urandom) -> np.ndarray:
    """One client's noise share: int64 ``[padded_dim]`` i.i.d. ``N_Z(0, local_sigma^2)``."""
    return sample_discrete_gaussian(
        spec.padded_dim, sigma=spec.local_sigma, random_bytes=random_bytes
    )


def to_ring(values: np.ndarray, bits: int) -> np.ndarray:
    """Two's-complement reduction of int64 ``values`` into Z_{2^bits} (the ring dtype)."""
    dtype = ring_dtype(bits)
    v = np.asarray(values, dtype=np.int64)
    return (v.view(np.uint64) & np.uint64((1 << bits) - 1)).astype(dtype)


def encode(
    units: np.ndarray,
    *,
    spec: DdgSpec,
    rotation_seed: bytes,
    random_bytes: RandomBytes = os.urandom,
) -> np.ndarray:
    """Ring vector ``[padded_dim]`` of one client: rounded unit sum + noise share, mod 2^bits.

    ``units``: float ``[B, dim]`` gradients of this round's sampled units (``B = 0`` when none was
    sampled: the client still sends its share). ``rotation_seed``: the round's public 32-byte
    seed, identical for every client and for :func:`decode`.
    """
    signal = quantize_units(
        units, spec=spec, rotation_seed=rotation_seed, random_bytes=random_bytes
    )
    return to_ring(signal + noise_share(spec, random_bytes=random_bytes), spec.bits)


def rotation_seed(*, config_hash: str, round: int, attempt: int) -> bytes:
    """The round's public 32-byte rotation seed, derived (never sent) by clients and server.

    It only flattens the vector before rounding (utility and the wrap bound); privacy does not
    depend on it (the rotation is orthogonal and the rounded norm bound is enforced exactly), so
    a public value that both sides compute from the run config and the round is enough.
    """
    if isinstance(round, bool) or not isinstance(round, int) or round < 0:
        raise ConfigError(f"round must be an int >= 0. Found {round!r}.")
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
        raise ConfigError(f"attempt must be an int >= 1. Found {attempt!r}.")
    return hashlib.sha256(
        b"securefvpa/ddg/rotation\x00" + config_hash.encode() + b"\x00"
        + round.to_bytes(8, "big") + attempt.to_bytes(8, "big")
    ).digest()  # fmt: skip


def decode(ring_sum: np.ndarray, *, spec: DdgSpec, rotation_seed: bytes) -> np.ndarray:
    """Float64 ``[dim]``: sum of the summed clients' clipped gradients + rounding + noise."""
    dtype = ring_dtype(spec.bits)
    if (
        not isinstance(ring_sum, np.ndarray)
        or ring_sum.dtype != dtype
        or ring_sum.shape != (spec.padded_dim,)
    ):
        found = (
            f"{ring_sum.dtype} {ring_sum.shape}"
            if isinstance(ring_sum, np.ndarray)
            else repr(type(ring_sum))
        )
        raise ConfigError(
            f"ring sum must be a {np.dtype(dtype).name} array of shape ({spec.padded_dim},). "
            f"Found {found}."
        )
    signed = ring_sum.view(np.int32 if spec.bits == 32 else np.int64).astype(np.float64)
    flat = unrotate(signed * spec.gamma, seed=rotation_seed, block_size=spec.block_size)
    return flat[: spec.dim]


# ----------------------------------------------------------------------------------------------
# Wrap-around, bits, scale selection
# ----------------------------------------------------------------------------------------------


def _count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be an integer >= 1. Found {value!r}.")
    return value


def _log_tail(spec: DdgSpec, level: float, max_units: int, max_shares: int) -> float:
    """log of the per-coordinate bound on P(|sum_j| >= level); see module docstring."""
    n, m = max_units, max_shares
    noise_var = m * spec.local_sigma**2
    options = []
    deterministic = n * spec.unit_l2_bound
    if spec.block_size == 1:
        deterministic = min(deterministic, n * (spec.clip / spec.gamma + 1.0))
    if level > deterministic:
        options.append(-((level - deterministic) ** 2) / (2.0 * noise_var))
    if spec.block_size > 1 and level > n:
        signal_var = (n * spec.clip / spec.gamma) ** 2 / spec.block_size
        options.append(-((level - n) ** 2) / (2.0 * (signal_var + noise_var)))
    return math.log(2.0) + max(options) if options else 0.0


def wrap_probability_bound(*, spec: DdgSpec, max_units: int, max_shares: int) -> float:
    """Upper bound on P(any coordinate of the round's ring sum wraps), in [0, 1].

    ``max_units``: units summed over all survivors (worst case: every unit of every client);
    ``max_shares``: noise shares in the sum (the most clients that can survive). Clipped inputs of
    any norm up to ``C`` chosen independently of the rotation seed (module docstring).
    """
    n = _count("max_units", max_units)
    m = _count("max_shares", max_shares)
    log_p = math.log(spec.padded_dim) + _log_tail(spec, float(2 ** (spec.bits - 1)), n, m)
    return 1.0 if log_p >= 0.0 else math.exp(log_p)


def aggregate_bits(*, spec: DdgSpec, max_units: int, max_shares: int, wrap_bound: float) -> int:
    """Bits per coordinate the aggregate needs: the smallest ``b`` such that a ring Z_{2^b} would
    wrap with probability <= ``wrap_bound`` (same bound as :func:`wrap_probability_bound`)."""
    n = _count("max_units", max_units)
    m = _count("max_shares", max_shares)
    if isinstance(wrap_bound, bool) or not (isinstance(wrap_bound, float) and 0 < wrap_bound < 1):
        raise ConfigError(f"wrap_bound must be a float in (0, 1). Found {wrap_bound!r}.")
    target = math.log(wrap_bound) - math.log(spec.padded_dim)
    for b in range(2, 129):
        if _log_tail(spec, float(2 ** (b - 1)), n, m) <= target:
            return b
    raise ConfigError("no ring of <= 128 bits meets the wrap bound")


def choose_gamma(
    *,
    clip: float,
    local_std: float,
    dim: int,
    max_units: int,
    max_shares: int,
    wrap_bound: float,
    bits: int = 32,
    block_size: int = 4096,
    beta: float = math.exp(-0.5),
) -> float:
    """Smallest power of two ``gamma`` whose :func:`wrap_probability_bound` is <= ``wrap_bound``
    when each share's noise std is ``local_std`` in *float* units (``max(local_std/gamma, 1)``
    levels). The bound decreases as gamma grows, so the scan stops at the first fit. Raises
    :class:`ConfigError` when none of 2^-1100 .. 2^1100 fits."""
    if isinstance(local_std, bool) or not isinstance(local_std, int | float) or local_std < 0:
        raise ConfigError(f"local_std must be a number >= 0. Found {local_std!r}.")
    if isinstance(clip, bool) or not isinstance(clip, int | float) or not clip > 0:
        raise ConfigError(f"ddg clip must be > 0. Found {clip!r}.")
    padded_dim(dim, block_size)
    ring_dtype(bits)
    _count("max_units", max_units)
    _count("max_shares", max_shares)
    exponent = math.floor(math.log2(clip)) - 60
    while exponent < 1100:
        gamma = math.ldexp(1.0, exponent)
        exponent += 1
        try:  # too fine a grid for int64 norms or for the sampler's sigma range: go coarser
            spec = DdgSpec(
                dim=dim, clip=clip, gamma=gamma, local_sigma=max(local_std / gamma, 1.0),
                beta=beta, bits=bits, block_size=block_size,
            )  # fmt: skip
        except ConfigError:
            continue
        if wrap_probability_bound(spec=spec, max_units=max_units, max_shares=max_shares) <= (
            wrap_bound
        ):
            return gamma
    raise ConfigError(
        f"no gamma keeps the wrap-around probability <= {wrap_bound} in {bits} bits "
        f"(clip={clip}, local_std={local_std}, max_units={max_units}, max_shares={max_shares})."
    )


@dataclass(frozen=True)
class DdgPlan:
    """Parameters chosen by :func:`plan` and the numbers a report shows."""

    spec: DdgSpec
    honest_shares: int  # h = t - T
    epsilon: float  # epsilon of the planned rounds at delta (never above the target)
    wrap_bound: float  # bound on P(wrap) per round at the planned worst case
    bits_needed: int  # bits per coordinate the aggregate needs at that bound
    central_noise_multiplier: float  # sqrt(h) sigma gamma / C


def plan(
    *,
    target_epsilon: float,
    delta: float,
    rounds: int,
    sample_rate: float,
    clip: float,
    dim: int,
    threshold: int,
    max_colluding: int,
    max_shares: int,
    max_units: int,
    wrap_bound: float = 1e-6,
    bits: int = 32,
    block_size: int = 4096,
    beta: float = math.exp(-0.5),
    relation: str = "replace_one",
) -> DdgPlan:
    """Choose ``gamma`` (a power of two) and ``local_sigma`` for a distributed run.

    ``threshold`` ``t`` (fewest survivors honest clients unmask), ``max_colluding`` ``T``:
    ``h = t - T`` honest shares are accounted. ``gamma`` is the smallest power of two whose wrap
    bound is <= ``wrap_bound`` at the calibrated noise (a finer grid rounds less, so it is closer
    to the continuous Gaussian); sigma is recalibrated at each candidate gamma until both agree.
    Raises :class:`ConfigError` when no gamma fits the ring.
    """
    t = _count("threshold", threshold)
    if isinstance(max_colluding, bool) or not isinstance(max_colluding, int) or max_colluding < 0:
        raise ConfigError(f"max_colluding must be an integer >= 0. Found {max_colluding!r}.")
    h = t - max_colluding
    if h < 1:
        raise ConfigError(
            f"threshold t={t} minus max_colluding T={max_colluding} leaves no honest share; "
            "distributed noise needs t - T >= 1."
        )
    n_units = _count("max_units", max_units)
    m = _count("max_shares", max_shares)
    p_dim = padded_dim(dim, block_size)

    def calibrated(gamma: float) -> float:
        return ddg_accounting.calibrate_local_sigma(
            target_epsilon=target_epsilon,
            delta=delta,
            rounds=rounds,
            sample_rate=sample_rate,
            clip=clip,
            gamma=gamma,
            beta=beta,
            dim=p_dim,
            honest_shares=h,
            relation=relation,
        )

    def spec_for(gamma: float, sigma: float) -> DdgSpec:
        return DdgSpec(
            dim=dim, clip=clip, gamma=gamma, local_sigma=sigma, beta=beta, bits=bits,
            block_size=block_size,
        )  # fmt: skip

    def smallest_gamma(sigma_float: float) -> float:
        return choose_gamma(
            clip=clip, local_std=sigma_float, dim=dim, max_units=n_units, max_shares=m,
            wrap_bound=wrap_bound, bits=bits, block_size=block_size, beta=beta,
        )  # fmt: skip

    # Start from the noise of a near-continuous grid (2^30 levels per clip norm): a lower bound on
    # the float noise at any coarser gamma, hence on the gamma the loop settles on.
    fine = math.ldexp(1.0, math.floor(math.log2(clip)) - 30)
    gamma = smallest_gamma(calibrated(fine) * fine)
    for _ in range(64):  # gamma only grows (sigma in float units grows with gamma): converges
        nxt = smallest_gamma(calibrated(gamma) * gamma)
        if nxt <= gamma:
            break
        gamma = nxt
    sigma = calibrated(gamma)
    spec = spec_for(gamma, sigma)
    bound = wrap_probability_bound(spec=spec, max_units=n_units, max_shares=m)
    if bound > wrap_bound:
        raise ConfigError(
            f"no scale keeps the wrap-around probability <= {wrap_bound} in {bits} bits "
            f"(gamma={gamma}, local_sigma={sigma} levels, bound {bound:.3g}); use 64 bits, "
            "fewer units or a larger wrap bound."
        )
    rnd = spec.privacy_round(sample_rate=sample_rate, honest_shares=h, relation=relation)
    return DdgPlan(
        spec=spec,
        honest_shares=h,
        epsilon=ddg_accounting.epsilon([rnd] * rounds, delta=delta),
        wrap_bound=bound,
        bits_needed=aggregate_bits(
            spec=spec, max_units=n_units, max_shares=m, wrap_bound=wrap_bound
        ),
        central_noise_multiplier=rnd.central_noise_multiplier,
    )
