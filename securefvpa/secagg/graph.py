"""Neighbour graphs and thresholds (SecAgg+).

Bell et al. 2020, "Secure Single-Server Aggregation with (Poly)Logarithmic Overhead" (CCS),
replace Bonawitz et al.'s complete graph by a sparse random k-regular graph: a client agrees
masks with, and secret-shares to, only its k neighbours, so client cost drops from O(n) to
O(log n) when k = O(log n). As in their implementation (and Flower's), the graph is a Harary
graph H(k, n) on a uniformly random permutation of the participants: after sorting the
participants by the permutation, node i is joined to nodes i +- 1, ..., i +- k/2 (mod n).

The permutation is derived from a public 32-byte ``graph_seed`` (AES-CTR keystream,
Fisher-Yates with rejection sampling), so every party recomputes the same graph and a client
checks that the server's neighbour lists match it. The seed is not the server's to choose: the
clients derive it by commit-then-reveal over fresh contributions of every node that advertised
keys (:func:`securefvpa.secagg.primitives.derive_graph_seed`), so a malicious server cannot try
seeds until a victim is surrounded by colluders; it can only abort a protocol instance, which a
client's input survives in at most a few (``client.MAX_INSTANCES_PER_INPUT``). What is left is
the chance that a *uniformly random* neighbourhood holds enough colluders,
:func:`colluder_risk`. See threat_models/secagg.md.

``degree == 0`` (or ``degree >= n - 1``) is the complete graph of Bonawitz et al.

Shares of a client's secrets are held by its *holders*: its neighbours and itself (as in
Bonawitz et al., where a client keeps its own share), ``m = degree + 1`` nodes (``n`` for the
complete graph). The threshold is relative to that neighbourhood: ``t = max(ceil(f * m),
floor(m / 2) + 1)``. Keeping t above m/2 means honest holders, each revealing only one of a
node's two secrets, can never hand the server t shares of both.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from securefvpa.errors import ConfigError
from securefvpa.secagg.primitives import SEED_BYTES, expand_mask

MIN_PARTICIPANTS = 3


def default_degree(n: int) -> int:
    """A practical O(log n) degree: the even number 2 * ceil(log2 n), or 0 (complete) if >= n - 1.

    Bell et al. prove security for k = O(log n) with a constant that depends on the tolerated
    corruption and dropout rates; this default follows their experiments' order of magnitude and
    is not a substitute for choosing k from their Theorem for a given threat model.
    """
    if n < MIN_PARTICIPANTS:
        raise ConfigError(f"secure aggregation needs >= {MIN_PARTICIPANTS} clients. Found {n}.")
    k = 2 * math.ceil(math.log2(n))
    return 0 if k >= n - 1 else k


def degree_for(n: int, dropout: float, fraction: float, failure: float = 1e-6) -> int:
    """Smallest even degree whose round survives i.i.d. dropouts with probability >= 1 - failure.

    Union bound over the n nodes of ``P[Bin(m, 1 - dropout) < t]`` (fewer than t of a node's
    m = k + 1 holders survive), the correctness side of Bell et al.'s choice of k; it does not
    cover their security condition on colluding clients. Returns 0 (complete graph) when no
    sparse degree reaches the target. Note that with t > m/2 a dropout rate near or above
    ``1 - fraction`` needs a large k: SecAgg+ trades degree for tolerated dropouts.
    """
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout must be in [0, 1). Found {dropout!r}.")
    if not 0.0 < failure < 1.0:
        raise ConfigError(f"failure must be in (0, 1). Found {failure!r}.")
    for k in range(2, n - 1, 2):
        t = threshold_for(n, k, fraction)
        m = k + 1
        tail = sum(math.comb(m, i) * (1 - dropout) ** i * dropout ** (m - i) for i in range(t))
        if n * tail <= failure:
            return k
    return 0


def effective_degree(n: int, degree: int) -> int:
    """Number of neighbours of each node: ``n - 1`` for the complete graph, else ``degree``."""
    if degree < 0 or (degree > 0 and degree % 2):
        raise ConfigError(f"secagg.degree must be 0 or an even number >= 2. Found {degree}.")
    return n - 1 if degree == 0 or degree >= n - 1 else degree


def threshold_for(n: int, degree: int, fraction: float) -> int:
    """Shares needed to reconstruct a secret: ``max(ceil(fraction * m), m // 2 + 1)``, m holders."""
    if not 0.5 < fraction <= 1.0:
        raise ConfigError(f"secagg.threshold must be in (0.5, 1]. Found {fraction!r}.")
    m = effective_degree(n, degree) + 1
    return max(math.ceil(fraction * m - 1e-12), m // 2 + 1)


def colluder_risk(n: int, degree: int, fraction: float, colluders: int) -> float:
    """Probability that one honest node's neighbourhood holds ``>= 2t - m`` of ``colluders``.

    A malicious server that shows different survivor lists to different holders of an honest
    node ``u`` receives at most one of ``u``'s two secrets from each honest holder and both from
    each corrupted one, so it can rebuild both (and unmask ``u``) only if ``c_u >= 2t - m``
    corrupted clients sit among ``u``'s ``m - 1 = k`` neighbours (threat_models/secagg.md, §3;
    ``tests/secagg/test_collusion.py``). With the graph seed out of the server's control, ``u``'s
    neighbours are a uniformly random ``k``-subset of the other ``n - 1`` participants (a
    uniform permutation places ``u`` anywhere on the ring), so ``c_u`` is hypergeometric and this
    is its exact upper tail ``sum_{j >= 2t-m} C(c, j) C(n-1-c, k-j) / C(n-1, k)``. It bounds the
    attack on a given victim in one protocol instance; a server that aborts and restarts gets at
    most ``MAX_INSTANCES_PER_INPUT`` independent tries per input. For the complete graph
    (``k = n - 1``) it is 1 if ``c >= 2t - n`` else 0.

    Choose ``degree`` (and ``fraction``) so this is negligible for the number of corrupted
    clients a deployment must tolerate; :func:`degree_for` sizes ``k`` for dropouts only.
    """
    if isinstance(colluders, bool) or not isinstance(colluders, int) or not 0 <= colluders < n:
        raise ConfigError(f"colluders must be an int in [0, n). Found {colluders!r} (n = {n}).")
    k = effective_degree(n, degree)
    m = k + 1
    need = 2 * threshold_for(n, degree, fraction) - m
    if need <= 0:
        return 1.0
    others = n - 1
    total = math.comb(others, k)
    tail = sum(
        math.comb(colluders, j) * math.comb(others - colluders, k - j)
        for j in range(need, min(colluders, k) + 1)
    )
    return tail / total


def _random_permutation(items: Sequence[int], seed: bytes) -> list[int]:
    out = list(items)
    n = len(out)
    words = iter(expand_mask(seed, 4 * n + 64, 64).tolist())
    for i in range(n - 1, 0, -1):
        bound = i + 1
        limit = (1 << 64) - ((1 << 64) % bound)
        while True:  # rejection sampling: uniform in [0, bound)
            try:
                w = next(words)
            except StopIteration:  # pragma: no cover - probability < 2^-64 per draw
                seed = expand_mask(seed, 4, 64).tobytes()
                words = iter(expand_mask(seed, 4 * n + 64, 64).tolist())
                continue
            if w < limit:
                break
        j = w % bound
        out[i], out[j] = out[j], out[i]
    return out


def _checked(participants: Sequence[int], degree: int, seed: bytes) -> tuple[list[int], int]:
    nodes = sorted(participants)
    n = len(nodes)
    if n < MIN_PARTICIPANTS or len(set(nodes)) != n:
        raise ConfigError(
            f"secure aggregation needs >= {MIN_PARTICIPANTS} distinct participants. Found {n} "
            f"({len(set(nodes))} distinct)."
        )
    if len(seed) != SEED_BYTES:
        raise ConfigError(f"graph seed must be {SEED_BYTES} bytes. Found {len(seed)}.")
    return nodes, effective_degree(n, degree)


def neighbour_graph(
    participants: Sequence[int], degree: int, seed: bytes
) -> dict[int, frozenset[int]]:
    """``{node: neighbours}`` (excluding the node itself) for the sorted participant list."""
    nodes, k = _checked(participants, degree, seed)
    n = len(nodes)
    if k == n - 1:
        everyone = frozenset(nodes)
        return {u: everyone - {u} for u in nodes}
    ring = _random_permutation(nodes, seed)
    half = k // 2
    return {
        ring[i]: frozenset(ring[(i + off) % n] for off in range(-half, half + 1) if off != 0)
        for i in range(n)
    }


def neighbours_of(
    participants: Sequence[int], degree: int, seed: bytes, node: int
) -> frozenset[int]:
    """``neighbour_graph(participants, degree, seed)[node]`` without building the other
    nodes' sets (what a client needs: O(n) for the permutation, O(k) for its neighbours)."""
    nodes, k = _checked(participants, degree, seed)
    n = len(nodes)
    if node not in nodes:
        raise ConfigError(f"node {node} is not a participant.")
    if k == n - 1:
        return frozenset(nodes) - {node}
    ring = _random_permutation(nodes, seed)
    i = ring.index(node)
    half = k // 2
    return frozenset(ring[(i + off) % n] for off in range(-half, half + 1) if off != 0)
