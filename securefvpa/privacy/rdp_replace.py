"""A sound RDP accountant for the REPLACE_ONE relation (substitution of one record).

dp-accounting's :class:`RdpAccountant` refuses ``PoissonSampledDpEvent`` under REPLACE_ONE, and
for a bare ``GaussianDpEvent`` it ignores the relation, i.e. it treats ``noise_multiplier`` as
noise / sensitivity although under substitution the sensitivity is twice the per-record norm
bound (google/differential-privacy issue #378). We therefore never give REPLACE_ONE to the
library's RDP accountant; this module derives a REPLACE_ONE RDP curve from ADD_OR_REMOVE_ONE
curves the library computes correctly.

Bound. Write a substitution D -> D' = D - x + x' as D -> R = D - x -> D'. For any three
distributions P, R, Q and alpha > 1, Hölder's inequality with exponents p = q = 2 gives the weak
triangle inequality (Mironov 2017, "Rényi Differential Privacy", Proposition 11):

    D_alpha(P || Q) <= (alpha - 1/2) / (alpha - 1) * D_{2 alpha}(P || R) + D_{2 alpha - 1}(R || Q).

(Proof: E_R[(P/R)^a (R/Q)^(a-1)] <= E_R[(P/R)^(2a)]^(1/2) E_R[(R/Q)^(2a-2)]^(1/2), a = alpha.)
P || R is a removal and R || Q an addition. For the Poisson-sampled Gaussian the
ADD_OR_REMOVE_ONE curve rho(beta) = D_beta((1-q) N(0, s^2) + q N(1, s^2) || N(0, s^2)) bounds both
directions (Mironov, Talwar & Zhang 2019, "Rényi DP of the Sampled Gaussian Mechanism",
Theorems 4-5), and RDP composes order by order under adaptive composition, so per event

    eps_replace(alpha) <= (alpha - 1/2) / (alpha - 1) * rho(2 alpha) + rho(2 alpha - 1).

For q = 1 there is no sampling and the exact curve is that of a Gaussian with sensitivity 2C,
i.e. sigma/2 under ADD_OR_REMOVE_ONE: alpha * 2 / sigma^2. The bound is loose (it pays for two
changes); it is a cross-check of the PLD accountant, which is the primary one.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
from dp_accounting import dp_event, privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant as rdp_lib

from securefvpa.errors import AccountingError

NeighborRel = privacy_accountant.NeighboringRelation
CompositionErrorDetails = privacy_accountant.PrivacyAccountant.CompositionErrorDetails
# dp-accounting's default orders from 1.5 up: below that 2*alpha - 1 < 2, where the library's
# fractional-order series may fail to converge, and such low orders never give the minimum
# epsilon at the deltas used for DP-SGD.
DEFAULT_ORDERS: tuple[float, ...] = tuple(float(a) for a in rdp_lib.DEFAULT_RDP_ORDERS if a >= 1.5)


def _add_remove_rdp(q: float, sigma: float, orders: np.ndarray) -> np.ndarray:
    """One step of the Poisson-sampled Gaussian under ADD_OR_REMOVE_ONE, via dp-accounting."""
    acc = rdp_lib.RdpAccountant(orders=list(orders))
    acc.compose(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma)))
    return acc.rdp


@functools.lru_cache(maxsize=1024)
def replace_one_rdp(
    q: float, sigma: float, orders: tuple[float, ...] = DEFAULT_ORDERS
) -> np.ndarray:
    """Upper bound on the RDP of one Poisson-sampled Gaussian step under REPLACE_ONE.

    ``sigma`` is noise std / per-record norm bound. Returns a read-only array over ``orders``.
    """
    a = np.asarray(orders, dtype=np.float64)
    if q == 0.0:
        out = np.zeros_like(a)
    elif sigma == 0.0:
        out = np.full_like(a, np.inf)
    elif q == 1.0:
        out = _add_remove_rdp(1.0, sigma / 2.0, a)
    else:
        out = (a - 0.5) / (a - 1.0) * _add_remove_rdp(q, sigma, 2.0 * a) + _add_remove_rdp(
            q, sigma, 2.0 * a - 1.0
        )
    out.setflags(write=False)
    return out


class ReplaceOneRdpAccountant(privacy_accountant.PrivacyAccountant):
    """RDP accountant for REPLACE_ONE over (Poisson-sampled) Gaussian events; see module doc."""

    def __init__(self, orders: Sequence[float] | None = None) -> None:
        super().__init__(NeighborRel.REPLACE_ONE)
        chosen = DEFAULT_ORDERS if orders is None else tuple(float(a) for a in orders)
        if not chosen or min(chosen) <= 1.0:
            raise AccountingError(f"RDP orders must all be > 1. Found {chosen!r}.")
        self._orders = chosen
        self._rdp = np.zeros(len(chosen), dtype=np.float64)

    def _maybe_compose(
        self, event: dp_event.DpEvent, count: int, do_compose: bool
    ) -> privacy_accountant.PrivacyAccountant.CompositionErrorDetails | None:
        if isinstance(event, dp_event.NoOpDpEvent):
            return None
        if isinstance(event, dp_event.SelfComposedDpEvent):
            return self._maybe_compose(event.event, event.count * count, do_compose)
        if isinstance(event, dp_event.ComposedDpEvent):
            for sub in event.events:
                err = self._maybe_compose(sub, count, do_compose)
                if err is not None:
                    return err
            return None
        if isinstance(event, dp_event.GaussianDpEvent):
            if do_compose:
                self._rdp += count * replace_one_rdp(1.0, event.noise_multiplier, self._orders)
            return None
        if isinstance(event, dp_event.PoissonSampledDpEvent) and isinstance(
            event.event, dp_event.GaussianDpEvent
        ):
            if do_compose:
                self._rdp += count * replace_one_rdp(
                    event.sampling_probability, event.event.noise_multiplier, self._orders
                )
            return None
        return CompositionErrorDetails(
            invalid_event=event,
            error_message="only (Poisson-sampled) Gaussian events are supported under REPLACE_ONE",
        )

    def get_epsilon(self, target_delta: float) -> float:
        return float(rdp_lib.compute_epsilon(self._orders, self._rdp, target_delta)[0])

    @property
    def rdp(self) -> np.ndarray:
        return np.copy(self._rdp)

    @property
    def orders(self) -> np.ndarray:
        return np.asarray(self._orders, dtype=np.float64)
