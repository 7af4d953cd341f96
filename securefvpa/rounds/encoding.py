"""How a round's update becomes a secure-aggregation ring vector and back (both sides use it).

Pure numpy over ``securefvpa.secagg``: the client's secure-aggregation mod encodes with these
functions and the server's workflow (or an in-process round) decodes with the same ones, so the
two sides cannot disagree on parameter order, vector length or fixed-point spec. Everything is
derived from the run config and public counts, never from a message.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
from dataclasses import dataclass

import numpy as np

from securefvpa.config import RunConfig, config_hash
from securefvpa.errors import FederationError
from securefvpa.secagg import ClientPolicy
from securefvpa.secagg.ddg import DdgSpec, rotation_seed
from securefvpa.secagg.ddg import decode as ddg_decode
from securefvpa.secagg.quantization import (
    FixedPointSpec,
    check_clip_range,
    clip_range_for,
    encode,
)
from securefvpa.secagg.quantization import decode as decode_fixed

log = logging.getLogger("securefvpa.rounds")


def fixed_point_spec(
    cfg: RunConfig, *, clip_range: float, max_weight: int, max_clients: int
) -> FixedPointSpec:
    """The fixed-point encoding (clipped coordinates counted) for weights up to
    ``max_weight`` and ``max_clients`` summands; ``clip_range`` from :func:`resolve_clip_range`."""
    return FixedPointSpec.fit(
        clip=clip_range,
        bits=cfg.secagg.bits,
        max_weight=max_weight,
        max_clients=max_clients,
        count_clipped=True,
    )


def update_bounds(cfg: RunConfig, *, min_units: int) -> tuple[float, float]:
    """(L2 bound of a client's update, per-coordinate std of its local DP noise), both in
    parameter units, for local-noise DP-SGD (``train.private``).

    SGD with learning rate eta, K local steps and expected batch B = q n (n = the client's units):
    each step moves the parameters by eta (sum of <= n clipped gradients + N(0, sigma^2 C^2)) / B,
    so ``||signal|| <= K eta n C / B = K eta C / q`` and the noise per coordinate has std
    ``eta sqrt(K) sigma C / B``. Adam moves every coordinate by about eta per step whatever the
    gradient (Kingma & Ba 2015, Sec. 2.1), so ``||update|| <= K eta sqrt(d)`` and its noise is
    already inside that bound (std 0 here).
    """
    p, fed, tr = cfg.privacy, cfg.federation, cfg.train
    k, eta = fed.local_steps, tr.lr
    if tr.optimizer == "sgd":
        batch = max(1, round(p.sample_rate * max(1, min_units)))
        sigma = p.noise_multiplier or 0.0
        return k * eta * p.clip / p.sample_rate, eta * math.sqrt(k) * sigma * p.clip / batch
    return float("nan"), 0.0  # Adam: see resolve_clip_range


def resolve_clip_range(cfg: RunConfig, *, dim: int, min_units: int, sigma: float) -> float:
    """The fixed-point clip range of a run (computed once by the launcher).

    Given (``secagg.clip_range``): kept, but under local DP refused with the numbers when its
    expected clipped share exceeds ``secagg.max_clipped_share`` (``check_clip_range``). Left out:
    under local DP the smallest range whose clipped-share bound is <= that share
    (``clip_range_for``, from :func:`update_bounds` with the run's sigma); without DP, 8.0.
    """
    s, p = cfg.secagg, cfg.privacy
    if not p.enabled or p.noise != "local":
        return s.clip_range if s.clip_range is not None else 8.0
    signal, noise = update_bounds(
        dataclasses.replace(cfg, privacy=dataclasses.replace(p, noise_multiplier=sigma)),
        min_units=min_units,
    )
    if math.isnan(signal):  # Adam
        signal = cfg.federation.local_steps * cfg.train.lr * math.sqrt(dim)
    if s.clip_range is None:
        return clip_range_for(
            signal_l2_bound=signal, noise_std=noise, dim=dim, max_clipped_share=s.max_clipped_share
        )
    check_clip_range(
        clip_range=s.clip_range,
        signal_l2_bound=signal,
        noise_std=noise,
        dim=dim,
        max_clipped_share=s.max_clipped_share,
    )
    return s.clip_range


def client_policy(
    cfg: RunConfig, *, vector_length: int, max_participants: int, min_survivors: int = 0
) -> ClientPolicy:
    """What a client accepts from the server: ring, length, graph degree, threshold, size, and
    (distributed noise) the fewest masked inputs it helps unmask."""
    return ClientPolicy(
        vector_length=vector_length,
        bits=cfg.secagg.bits,
        degree=cfg.secagg.degree,
        threshold_fraction=cfg.secagg.threshold,
        max_participants=max(3, max_participants),
        min_survivors=min_survivors,
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


@dataclass(frozen=True)
class RoundCodec:
    """How one round's client vectors live in the secure-aggregation ring, for both sides.

    ``fixed``: the weighted update in fixed point, ``[q(w * update), w, clipped count]``
    (``secagg.quantization``); the server reads the weighted mean and the clipped count.
    ``ddg``: distributed noise; each client's ring vector is its rounded units plus its
    discrete-Gaussian share (``secagg.ddg``); the server reads the noisy sum of clipped gradients
    ``g``, divides by the expected batch ``B = q * (units of the summed clients)`` (public counts)
    and turns it into the update of one SGD step, ``-train.lr * g / B``, for the server
    optimiser (Kairouz, Liu & Steinke 2021, Alg. 1 with the server dividing by the expected
    batch as in DP-FedAvg, McMahan et al. 2018).
    """

    cfg: RunConfig
    fixed: FixedPointSpec | None = None
    ddg: DdgSpec | None = None

    @staticmethod
    def for_run(
        cfg: RunConfig,
        *,
        clip_range: float,
        max_weight: int,
        max_clients: int,
        distributed: object | None = None,
    ) -> RoundCodec:
        if distributed is not None:
            d = distributed
            spec = DdgSpec(
                dim=d.dim,  # type: ignore[attr-defined]
                clip=cfg.privacy.clip,
                gamma=d.gamma,  # type: ignore[attr-defined]
                local_sigma=d.local_sigma,  # type: ignore[attr-defined]
                beta=d.beta,  # type: ignore[attr-defined]
                bits=d.bits,  # type: ignore[attr-defined]
                block_size=d.block_size,  # type: ignore[attr-defined]
            )
            return RoundCodec(cfg, ddg=spec)
        return RoundCodec(
            cfg,
            fixed=fixed_point_spec(
                cfg, clip_range=clip_range, max_weight=max_weight, max_clients=max_clients
            ),
        )

    def vector_length(self, dim: int) -> int:
        if self.ddg is not None:
            return self.ddg.padded_dim
        return dim + self._fixed().extra_coordinates

    def _fixed(self) -> FixedPointSpec:
        if self.fixed is None:
            raise FederationError("this round uses distributed noise, not fixed point")
        return self.fixed

    def encode_update(self, update: dict[str, np.ndarray], weight: int) -> np.ndarray:
        """A client's fixed-point ring vector for ``update`` with ``weight`` (fixed codec)."""
        return encode(flatten(update), self._fixed(), weight=weight)

    def decode(
        self,
        ring_sum: np.ndarray,
        *,
        like: dict[str, np.ndarray],
        units: list[int],
        rnd: int,
        attempt: int,
    ) -> tuple[dict[str, np.ndarray], dict[str, object]]:
        """(mean update shaped like ``like``, statistics) from the ring sum of the clients whose
        unit counts are ``units`` (one entry per summed client)."""
        n = len(units)
        if self.ddg is not None:
            p = self.cfg.privacy
            seed = rotation_seed(config_hash=config_hash(self.cfg), round=rnd, attempt=attempt)
            g = ddg_decode(ring_sum, spec=self.ddg, rotation_seed=seed)
            batch = max(p.sample_rate * sum(units), 1e-12)
            mean = -self.cfg.train.lr * g / batch
            stats: dict[str, object] = {
                "expected_batch": batch,
                "noise_std_realized": math.sqrt(n) * self.ddg.local_sigma * self.ddg.gamma,
                "clipped_coordinates": 0,
            }
        else:
            dec = decode_fixed(ring_sum, self._fixed(), n)
            mean = dec.weighted_mean()
            stats = {
                "clipped_coordinates": int(dec.clipped or 0),
                "clipped_share": dec.clipped_share,
                "scale": self._fixed().scale,
                "clip_range": self._fixed().clip,
            }
            share = dec.clipped_share or 0.0
            if share > self.cfg.secagg.max_clipped_share:
                log.warning(
                    "round %d: %.2f %% of the summed coordinates were clipped to +/- %g "
                    "(secagg.max_clipped_share = %g): the aggregate is biased toward zero",
                    rnd,
                    100 * share,
                    self._fixed().clip,
                    self.cfg.secagg.max_clipped_share,
                )
        return {k: np.asarray(v, dtype=np.float64) for k, v in unflatten(mean, like).items()}, stats
