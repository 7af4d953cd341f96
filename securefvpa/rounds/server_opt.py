"""Server optimisers for the aggregated update: FedAvg (``x += Delta``) and FedAdam.

Adaptive federated optimisation (Reddi et al. 2021, "Adaptive Federated Optimization", ICLR,
Algorithm 2): the server treats the weighted mean client update ``Delta_t`` (plain or securely
aggregated) as a negative pseudo-gradient and takes an Adam step on it,

    m_t = b1 m_{t-1} + (1 - b1) Delta_t
    v_t = b2 v_{t-1} + (1 - b2) Delta_t^2
    x_t = x_{t-1} + lr * m_hat / (sqrt(v_hat) + tau),   m_hat = m_t / (1 - b1^t), v_hat = v_t / (1 - b2^t)

i.e. exactly ``torch.optim.Adam`` with gradient ``-Delta_t`` (a test checks this step for step).
Why not Flower's ``FedAdam`` strategy or a torch optimiser: Flower's class aggregates plaintext
``Message`` replies itself, while our update arrives as a securely aggregated sum; and the
server keeps no torch state, so m, v and t live in the atomic npz checkpoint (``--resume``
continues the same optimiser).

Why it matters here: with one user of one type per client, a round's local steps fit the shared
reward head to that type, and averaging those drifted updates erases the signal that makes the
latent useful (the posterior collapses). A few local SGD steps plus a server-side Adam behaves
like central Adam over large mixed batches, where the latent does learn the user types
(``benchmarks/federated.py``; numbers in the README).

Post-processing only: ``server_step`` is a function of the aggregate and its own state alone
(``tests/fl/test_server_opt.py`` drives it with nothing else), so DP guarantees and secure
aggregation are unaffected. Imports neither torch nor flwr.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from securefvpa.config import FederationConfig
from securefvpa.errors import FederationError


@dataclass
class ServerOptState:
    """Adam moments and step count (empty for FedAvg)."""

    step: int = 0
    m: dict[str, np.ndarray] = field(default_factory=dict)
    v: dict[str, np.ndarray] = field(default_factory=dict)


def server_step(
    fed: FederationConfig,
    params: dict[str, np.ndarray],
    mean_update: dict[str, np.ndarray],
    state: ServerOptState,
) -> dict[str, np.ndarray]:
    """New global parameters from the weighted mean update; updates ``state`` in place."""
    if set(mean_update) != set(params):
        raise FederationError(
            f"aggregate names {sorted(set(mean_update) ^ set(params))[:3]} differ from the parameters"
        )
    if fed.server_optimizer == "fedavg":
        return {
            k: (params[k] + fed.server_lr * mean_update[k]).astype(params[k].dtype) for k in params
        }
    b1, b2, tau = fed.server_beta1, fed.server_beta2, fed.server_tau
    if not state.m:
        state.m = {k: np.zeros(v.shape, dtype=np.float64) for k, v in params.items()}
        state.v = {k: np.zeros(v.shape, dtype=np.float64) for k, v in params.items()}
    state.step += 1
    c1 = 1.0 - b1**state.step
    c2 = 1.0 - b2**state.step
    out = {}
    for k, x in params.items():
        d = np.asarray(mean_update[k], dtype=np.float64)
        state.m[k] = b1 * state.m[k] + (1.0 - b1) * d
        state.v[k] = b2 * state.v[k] + (1.0 - b2) * d * d
        step = fed.server_lr * (state.m[k] / c1) / (np.sqrt(state.v[k] / c2) + tau)
        out[k] = (x.astype(np.float64) + step).astype(x.dtype)
    return out
