"""Randomness for the DP mechanism, drawn from the OS CSPRNG (numpy only, no torch).

DP-SGD's guarantee assumes the Poisson sampling decisions and the Gaussian noise are secret and
unpredictable. Opacus draws both from torch's Mersenne Twister unless ``secure_mode`` is on,
which needs ``torchcsprng`` (unmaintained, no build for torch 2.13). So we draw the bits from
``os.urandom`` and shape them ourselves:

- bits: an AES-256-CTR keystream under a fresh 256-bit key and nonce from ``os.urandom`` for
  every call (the counter-mode construction of NIST SP 800-90A's CTR_DRBG; cryptography's
  AES-NI path is ~3x faster than ``os.urandom`` for the megabytes a step needs);
- uniforms: 53 random bits per float64 in [0, 1);
- normals: Box–Muller on float64 uniforms, then, as Opacus' secure_mode does (Holohan &
  Braghin 2021, arXiv 2107.10138, Sec. 5.1, against floating-point attacks such as Mironov
  2012), each output is the sum of 4 independent normals divided by 2.
"""

from __future__ import annotations

import os

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from securefvpa.errors import ConfigError

_TWO_53 = float(2**53)


def random_bytes(n: int) -> bytes:
    """``n`` bytes of AES-256-CTR keystream under a fresh key and nonce from ``os.urandom``."""
    encryptor = Cipher(algorithms.AES(os.urandom(32)), modes.CTR(os.urandom(16))).encryptor()
    return encryptor.update(bytes(n)) + encryptor.finalize()


def uniform(n: int) -> npt.NDArray[np.float64]:
    """``n`` independent uniforms in [0, 1) from ``os.urandom`` (53 bits each)."""
    if n < 0:
        raise ConfigError(f"n must be >= 0. Found {n}.")
    raw = np.frombuffer(random_bytes(8 * n), dtype=np.uint64)
    return (raw >> np.uint64(11)).astype(np.float64) / _TWO_53


def standard_normal(n: int) -> npt.NDArray[np.float64]:
    """``n`` independent N(0, 1) draws from the CSPRNG (Box–Muller, 4-sample averaging)."""
    if n < 0:
        raise ConfigError(f"n must be >= 0. Found {n}.")
    m = 4 * n
    pairs = (m + 1) // 2
    u = uniform(2 * pairs)
    u1 = 1.0 - u[:pairs]  # (0, 1]: log is finite
    u2 = u[pairs:]
    r = np.sqrt(-2.0 * np.log(u1))
    z = np.concatenate([r * np.cos(2 * np.pi * u2), r * np.sin(2 * np.pi * u2)])[:m]
    return z.reshape(4, n).sum(axis=0) / 2.0


def poisson_mask(n: int, rate: float) -> npt.NDArray[np.bool_]:
    """Independent inclusion of each of ``n`` items with probability ``rate`` (Poisson sampling)."""
    if not 0.0 <= rate <= 1.0:
        raise ConfigError(f"rate must be in [0, 1]. Found {rate}.")
    return uniform(n) < rate
