"""Shamir t-of-n secret sharing over the prime field GF(2^521 - 1).

Shamir 1979, "How to share a secret" (CACM): the secret is the constant term of a random
polynomial of degree t - 1; a share is its value at a public non-zero point; any t shares give
the secret by Lagrange interpolation at 0, any t - 1 shares are uniformly distributed whatever
the secret (perfect secrecy).

Written by hand with Python integers because no maintained library fits: PyCryptodome's
``Crypto.Protocol.SecretSharing`` (what Flower uses) works on 16-byte blocks in GF(2^128), so a
32-byte secret must be split into independently shared chunks, and it is only a transitive
dependency of flwr; the PyPI ``secretsharing``-style packages are unmaintained. 2^521 - 1 is a
Mersenne prime, so every 32-byte secret (X25519 private key, self-mask seed) is one field element
and reduction is cheap.

Evaluation points are ``x = node_id + 1``: node ids are distinct 64-bit integers, so the points
are distinct and never 0 (which would reveal the secret). Polynomial coefficients are drawn from
the injected ``random_bytes`` (``os.urandom`` in production) by rejection sampling.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence

from securefvpa.errors import ConfigError, ProtocolAbort

PRIME = (1 << 521) - 1
SHARE_BYTES = 66  # ceil(521 / 8)
SECRET_BYTES = 32


def random_field_element(random_bytes: Callable[[int], bytes], prime: int = PRIME) -> int:
    """Uniform element of GF(prime) by rejection sampling on ``random_bytes``."""
    nbits = prime.bit_length()
    nbytes = (nbits + 7) // 8
    mask = (1 << nbits) - 1
    while True:
        value = int.from_bytes(random_bytes(nbytes), "big") & mask
        if value < prime:
            return value


def split(
    secret: int,
    points: Sequence[int],
    threshold: int,
    random_bytes: Callable[[int], bytes] = os.urandom,
    prime: int = PRIME,
) -> dict[int, int]:
    """Shares ``{x: f(x)}`` of ``secret`` for every evaluation point in ``points``."""
    if not 0 <= secret < prime:
        raise ConfigError(
            f"Shamir secret must be in [0, prime). Found a {secret.bit_length()}-bit value."
        )
    if not 1 <= threshold <= len(points):
        raise ConfigError(
            f"Shamir threshold must be in [1, {len(points)}] (the number of points). "
            f"Found {threshold}."
        )
    if len(set(points)) != len(points) or any(not 0 < x < prime for x in points):
        raise ConfigError(
            f"Shamir points must be distinct and in (0, prime). Found {list(points)}."
        )
    coefficients = [secret] + [
        random_field_element(random_bytes, prime) for _ in range(threshold - 1)
    ]
    shares: dict[int, int] = {}
    for x in points:
        acc = 0
        for c in reversed(coefficients):  # Horner
            acc = (acc * x + c) % prime
        shares[x] = acc
    return shares


def combine(shares: Mapping[int, int], threshold: int, prime: int = PRIME) -> int:
    """Lagrange interpolation at 0 from exactly ``threshold`` of the given ``{x: y}`` shares.

    Fewer than ``threshold`` shares abort: they carry no information about the secret.
    ``f(0) = sum_i y_i * prod_{j != i} x_j / (x_j - x_i)`` (Shamir 1979). The products run over
    plain integers (the points are small: node id + 1 < 2^65) and are reduced once, and the
    ``threshold`` denominators share one modular inversion (Montgomery's batch-inversion
    trick), instead of one inversion and ``2 t`` modular products per share.
    """
    if threshold < 1:
        raise ConfigError(f"Shamir threshold must be >= 1. Found {threshold}.")
    if len(shares) < threshold:
        raise ProtocolAbort(
            f"cannot reconstruct a secret: {len(shares)} shares, threshold {threshold}"
        )
    chosen = sorted(shares.items())[:threshold]
    xs = [x % prime for x, _ in chosen]
    if any(x == 0 for x in xs):
        raise ProtocolAbort("a Shamir share has evaluation point 0")
    if len(set(xs)) != len(xs):
        raise ProtocolAbort("two Shamir shares have the same evaluation point")
    dens = []
    for i, xi in enumerate(xs):
        d = 1
        for j, xj in enumerate(xs):
            if j != i:
                d *= xj - xi
        dens.append(d % prime)
    prefix = [1]
    for d in dens:
        prefix.append(prefix[-1] * d % prime)
    inv = pow(prefix[-1], -1, prime)  # 1 / prod(dens); distinct points make it invertible
    everything = math.prod(xs)
    secret = 0
    for i in range(len(xs) - 1, -1, -1):
        inv_den_i = inv * prefix[i] % prime  # 1 / dens[i]
        inv = inv * dens[i] % prime  # 1 / prod(dens[:i])
        secret += chosen[i][1] * (everything // xs[i] % prime) % prime * inv_den_i
    return secret % prime


def point_of(node_id: int) -> int:
    """Public evaluation point of the share held by ``node_id``."""
    return node_id + 1


def encode_share(value: int) -> bytes:
    """Fixed-width big-endian encoding of a field element."""
    return value.to_bytes(SHARE_BYTES, "big")


def decode_share(data: bytes) -> int:
    """Strict inverse of :func:`encode_share`; values outside the field abort."""
    if len(data) != SHARE_BYTES:
        raise ProtocolAbort(f"a Shamir share must be {SHARE_BYTES} bytes, got {len(data)}")
    value = int.from_bytes(data, "big")
    if value >= PRIME:
        raise ProtocolAbort("a Shamir share is not a field element")
    return value


def secret_to_int(secret: bytes) -> int:
    """A 32-byte secret as a field element (always < 2^256 < PRIME)."""
    if len(secret) != SECRET_BYTES:
        raise ConfigError(f"secret must be {SECRET_BYTES} bytes. Found {len(secret)}.")
    return int.from_bytes(secret, "big")


def int_to_secret(value: int) -> bytes:
    """Inverse of :func:`secret_to_int`; a reconstructed value >= 2^256 means bad shares."""
    if not 0 <= value < 1 << (8 * SECRET_BYTES):
        raise ProtocolAbort("reconstructed secret is out of range: inconsistent shares")
    return value.to_bytes(SECRET_BYTES, "big")
