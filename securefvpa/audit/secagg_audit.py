"""Empirical audits of what the secure-aggregation server (and colluding clients) see.

Real protocol rounds of :mod:`securefvpa.secagg` (production randomness: ``os.urandom``, fresh
Ed25519 identities, X25519 keys and seeds per round) are run in-process, and two claims of
Bonawitz et al. 2017 ("Practical Secure Aggregation for Privacy-Preserving Machine Learning",
CCS, Theorem 6.3) are tested on what an adversary actually receives:

(a) **masked inputs look uniform**: for a FIXED honest input (all zeros, and a constant), the
    masked vector ``y_u`` the server receives is tested against the uniform distribution on
    Z_{2^bits}: Pearson chi-square on byte frequencies (256 cells) and on the frequency of ones
    at every bit position, and a Kolmogorov–Smirnov test of ``y_u / 2^bits`` against U[0, 1).
(b) **fewer than t colluders learn nothing**: the adversary holds the server transcript plus
    the secret state of t - 1 colluding clients (their X25519 mask keys and their Shamir shares
    of the honest client's self-mask seed ``b_u`` and mask key ``s_u^SK``). Reconstruction with
    t - 1 shares is refused by ``shamir.combine``, and Lagrange interpolation through them gives
    a value that differs from the secret; removing every pairwise mask the coalition can compute
    leaves a residual that is still uniform (same tests). A power check runs the same attack with
    t colluders: it reconstructs both secrets and recovers the honest input exactly — so the
    uniformity tests do reject when the threshold is broken.

The p-values are of standard goodness-of-fit tests (scipy.stats); under the null they are
uniform on [0, 1], so a single small one is expected now and then; the audit reports all of them
and applies a Bonferroni-corrected significance level. Imports neither torch nor flwr.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from scipy import stats

from securefvpa.errors import ConfigError, ProtocolAbort
from securefvpa.secagg import (
    ClientPolicy,
    MessageType,
    SecAggClient,
    SecAggServer,
    peek_type,
    shamir,
)
from securefvpa.secagg.messages import MaskedInputReply, parse
from securefvpa.secagg.primitives import PURPOSE_PAIRWISE_MASK, expand_mask, pair_key, ring_dtype

CONSTANT_INPUT = 0x5A5A5A5A


def uniformity_tests(values: np.ndarray, bits: int) -> dict[str, float]:
    """P-values of three goodness-of-fit tests of ``values`` (ring elements) vs uniform."""
    dtype = ring_dtype(bits)
    v = np.ascontiguousarray(values, dtype=dtype)
    if v.size < 64:
        raise ConfigError(f"uniformity tests need >= 64 values. Found {v.size}.")
    byte_counts = np.bincount(v.view(np.uint8), minlength=256)
    byte_p = float(stats.chisquare(byte_counts).pvalue)
    ones = np.array([int(((v >> dtype(i)) & dtype(1)).sum()) for i in range(bits)], dtype=float)
    n = float(v.size)
    bit_stat = float(np.sum((2.0 * ones - n) ** 2 / n))  # sum of 1-df Pearson statistics
    bit_p = float(stats.chi2.sf(bit_stat, df=bits))
    ks_p = float(stats.kstest(v.astype(np.float64) / float(2**bits), "uniform").pvalue)
    return {"chi2_bytes_p": byte_p, "chi2_bits_p": bit_p, "ks_p": ks_p}


@dataclass
class _Snapshot:
    """Secret state of one client right after it sent its masked input."""

    node_id: int
    s_key: X25519PrivateKey
    context: bytes
    s_public: dict[int, bytes]
    b_shares: dict[int, int]
    sk_shares: dict[int, int]
    self_seed: bytes


@dataclass
class RoundView:
    """What one round exposes: masked inputs (server view), client secrets (for coalitions)."""

    n: int
    bits: int
    threshold: int
    inputs: dict[int, np.ndarray]
    masked: dict[int, np.ndarray] = field(default_factory=dict)
    secrets: dict[int, _Snapshot] = field(default_factory=dict)
    result: np.ndarray | None = None


def run_round(inputs: dict[int, np.ndarray], *, bits: int = 32, fraction: float = 0.6,
              round_id: int = 0) -> RoundView:
    """One full protocol round (all five phases, no dropouts) with production randomness."""
    ids = sorted(inputs)
    d = int(next(iter(inputs.values())).shape[0])
    keys = {i: Ed25519PrivateKey.generate() for i in ids}
    roster = {i: k.public_key().public_bytes_raw() for i, k in keys.items()}
    session = os.urandom(32)
    server = SecAggServer(session_id=session, round_id=round_id, participants=ids,
                          vector_length=d, bits=bits, degree=0, threshold_fraction=fraction,
                          roster=roster)
    policy = ClientPolicy(vector_length=d, bits=bits, degree=0, threshold_fraction=fraction)
    clients = {i: SecAggClient(node_id=i, identity_key=keys[i], roster=roster, policy=policy,
                               session_id=session, round_id=round_id) for i in ids}
    view = RoundView(n=len(ids), bits=bits, threshold=0, inputs=inputs)
    out = server.start()
    while out:
        for node, request in out.items():
            c = clients[node]
            masked_phase = peek_type(request) == MessageType.MASKED_INPUT_REQUEST
            reply = c.handle(request, input_vector=inputs[node] if masked_phase else None)
            if masked_phase:
                msg = cast(MaskedInputReply, parse(reply, MaskedInputReply))
                view.masked[node] = np.array(msg.as_array(), dtype=ring_dtype(bits))
                view.secrets[node] = _snapshot(c)
                view.threshold = int(c._t)
            server.receive(node, reply)
        out = server.advance()
    if server.result is None:
        raise ProtocolAbort("the audit round did not produce a result")
    view.result = np.asarray(server.result.vector)
    return view


def _snapshot(c: SecAggClient) -> _Snapshot:
    # The audit plays the colluding clients, so it reads their private state directly.
    return _Snapshot(node_id=c.node_id, s_key=c._s_key, context=c._context,
                     s_public={v: a.s_public for v, a in c._adverts.items()},
                     b_shares=dict(c._b_shares), sk_shares=dict(c._sk_shares),
                     self_seed=bytes(c._self_seed))


def _pair_mask(private: X25519PrivateKey, me: int, peer: int, peer_public: bytes,
               context: bytes, length: int, bits: int) -> np.ndarray:
    seed = pair_key(private, peer_public, context=context, purpose=PURPOSE_PAIRWISE_MASK,
                    a=me, b=peer)
    return expand_mask(seed, length, bits)


def _strip(y: np.ndarray, target: int, mask: np.ndarray, peer: int) -> None:
    """Remove the pairwise mask between ``target`` and ``peer`` from ``y`` (in place)."""
    if target < peer:
        np.subtract(y, mask, out=y)  # the target added it
    else:
        np.add(y, mask, out=y)


def interpolate_at_zero(shares: dict[int, int], prime: int = shamir.PRIME) -> int:
    """Lagrange interpolation at 0 through ALL given shares (what a coalition can compute)."""
    xs = sorted(shares)
    out = 0
    for xi in xs:
        num, den = 1, 1
        for xj in xs:
            if xj != xi:
                num = num * xj % prime
                den = den * (xj - xi) % prime
        out = (out + shares[xi] * num * pow(den, -1, prime)) % prime
    return out


def coalition_attack(view: RoundView, target: int, coalition: list[int]) -> dict[str, Any]:
    """The coalition's best effort against ``target``'s masked input in one round."""
    bits = view.bits
    y = view.masked[target].copy()
    d = y.size
    for c in coalition:
        s = view.secrets[c]
        _strip(y, target, _pair_mask(s.s_key, c, target, s.s_public[target], s.context, d, bits),
               c)
    b_shares = {shamir.point_of(c): view.secrets[c].b_shares[target] for c in coalition}
    sk_shares = {shamir.point_of(c): view.secrets[c].sk_shares[target] for c in coalition}
    truth = view.secrets[target]
    refused = False
    try:
        b_val = shamir.combine(b_shares, view.threshold)
        sk_val = shamir.combine(sk_shares, view.threshold)
    except ProtocolAbort:
        refused = True
        b_val = interpolate_at_zero(b_shares)
        sk_val = interpolate_at_zero(sk_shares)
    b_ok = b_val == shamir.secret_to_int(truth.self_seed)
    sk_ok = sk_val == shamir.secret_to_int(truth.s_key.private_bytes_raw())
    if b_ok and sk_ok:  # threshold reached: unmask everything
        y = view.masked[target].copy()
        np.subtract(y, expand_mask(shamir.int_to_secret(b_val), d, bits), out=y)
        sk = X25519PrivateKey.from_private_bytes(shamir.int_to_secret(sk_val))
        ctx = view.secrets[coalition[0]].context
        publics = view.secrets[coalition[0]].s_public
        for v in sorted(view.masked):
            if v != target:
                _strip(y, target, _pair_mask(sk, target, v, publics[v], ctx, d, bits), v)
    return {"combine_refused": refused, "recovered_b": b_ok, "recovered_sk": sk_ok,
            "residual": y, "input_recovered": bool(np.array_equal(y, view.inputs[target]))}


def run_secagg_audit(*, n: int = 5, d: int = 2048, rounds: int = 8, bits: int = 32,
                     fraction: float = 0.6, significance: float = 0.01) -> dict[str, Any]:
    """Audits (a) and (b) over ``rounds`` real rounds; a JSON-ready dict of p-values."""
    if n < 3:
        raise ConfigError(f"the secagg audit needs n >= 3 clients. Found {n}.")
    if rounds < 1 or d < 64:
        raise ConfigError(f"rounds must be >= 1 and d >= 64. Found rounds={rounds}, d={d}.")
    if not 0 < significance < 1:
        raise ConfigError(f"significance must be in (0, 1). Found {significance!r}.")
    dtype = ring_dtype(bits)
    ids = list(range(1, n + 1))
    zero, const = ids[0], ids[1]
    masked: dict[str, list[np.ndarray]] = {"zeros": [], "constant": []}
    residual_below: list[np.ndarray] = []
    residual_at: list[np.ndarray] = []
    below = {"rounds": 0, "combine_refused": 0, "recovered_b": 0, "recovered_sk": 0,
             "input_recovered": 0}
    at = dict(below)
    sums_ok = 0
    threshold = 0
    for r in range(rounds):
        inputs = {i: np.zeros(d, dtype=dtype) for i in ids}
        inputs[const] = np.full(d, CONSTANT_INPUT % (1 << bits), dtype=dtype)
        view = run_round(inputs, bits=bits, fraction=fraction, round_id=r)
        threshold = view.threshold
        expected = np.zeros(d, dtype=dtype)
        for v in inputs.values():
            expected += v
        sums_ok += int(np.array_equal(cast(np.ndarray, view.result), expected))  # set or raised
        masked["zeros"].append(view.masked[zero])
        masked["constant"].append(view.masked[const])
        others = [i for i in ids if i != zero]
        for coalition, acc, sink in ((others[: threshold - 1], below, residual_below),
                                     (others[:threshold], at, residual_at)):
            res = coalition_attack(view, zero, coalition)
            acc["rounds"] += 1
            for key in ("combine_refused", "recovered_b", "recovered_sk", "input_recovered"):
                acc[key] += int(res[key])
            sink.append(res["residual"])
    tests = {
        "masked_zeros": uniformity_tests(np.concatenate(masked["zeros"]), bits),
        "masked_constant": uniformity_tests(np.concatenate(masked["constant"]), bits),
        "residual_t_minus_1": uniformity_tests(np.concatenate(residual_below), bits),
    }
    n_tests = sum(len(t) for t in tests.values())
    alpha = significance / n_tests
    min_p = min(p for t in tests.values() for p in t.values())
    power_p = uniformity_tests(np.concatenate(residual_at), bits)
    passed = (min_p >= alpha and below["recovered_b"] == 0 and below["recovered_sk"] == 0
              and below["input_recovered"] == 0 and below["combine_refused"] == rounds
              and sums_ok == rounds)
    return {
        "protocol": "Bonawitz et al. 2017 (securefvpa.secagg), complete graph",
        "n": n, "d": d, "rounds": rounds, "bits": bits, "threshold": threshold,
        "values_per_test": d * rounds,
        "honest_inputs": {"zeros": zero, "constant": const, "constant_value": CONSTANT_INPUT},
        "sums_correct": sums_ok,
        "uniformity_p_values": tests,
        "significance": significance, "bonferroni_alpha": alpha, "min_p": min_p,
        "coalition_t_minus_1": below | {"size": threshold - 1},
        "power_check_coalition_t": at | {"size": threshold, "uniformity_p_values": power_p},
        "passed": bool(passed),
        "tests_note": "chi-square on 256 byte cells and on ones per bit position; KS vs U[0,1)",
    }
