"""The server optimiser: FedAvg is the plain mean step, FedAdam is torch's Adam on -Delta, and
its state survives the atomic checkpoint (so --resume continues the same optimiser)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from securefvpa.config import config_from_dict
from securefvpa.errors import ConfigError, FederationError
from securefvpa.rounds.checkpoint import ServerState, load_checkpoint, save_checkpoint
from securefvpa.rounds.server_opt import ServerOptState, server_step


def _fed(**kw: object):
    return config_from_dict({"federation": {"mode": "simulation", **kw}}).federation


def _params(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "a.weight": rng.normal(size=(3, 4)).astype(np.float32),
        "b.bias": rng.normal(size=(5,)).astype(np.float32),
    }


def test_fedavg_adds_the_mean_update_times_server_lr() -> None:
    rng = np.random.default_rng(0)
    params, delta = _params(rng), {k: v * 0.1 for k, v in _params(rng).items()}
    out = server_step(_fed(server_lr=0.5), params, delta, ServerOptState())
    for k in params:
        assert out[k].dtype == np.float32
        np.testing.assert_allclose(out[k], params[k] + 0.5 * delta[k], rtol=1e-6)


@pytest.mark.parametrize("tau", [1e-3, 1e-8])
def test_fedadam_matches_torch_adam_on_the_negated_update(tau: float) -> None:
    """Reddi et al. (2021) FedAdam == torch.optim.Adam(lr, betas, eps=tau) with grad = -Delta."""
    rng = np.random.default_rng(1)
    fed = _fed(
        server_optimizer="fedadam",
        server_lr=0.01,
        server_beta1=0.8,
        server_beta2=0.95,
        server_tau=tau,
    )
    params = {k: v.astype(np.float64) for k, v in _params(rng).items()}
    ref = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    opt = torch.optim.Adam(list(ref.values()), lr=0.01, betas=(0.8, 0.95), eps=tau)
    state = ServerOptState()
    for _ in range(7):
        delta = {k: rng.normal(scale=0.1, size=v.shape) for k, v in params.items()}
        params = server_step(fed, params, delta, state)
        opt.zero_grad()
        for k, t in ref.items():
            t.grad = torch.tensor(-delta[k])
        opt.step()
        for k in params:
            np.testing.assert_allclose(params[k], ref[k].detach().numpy(), rtol=1e-10, atol=1e-12)
    assert state.step == 7


def test_mismatched_update_names_are_refused() -> None:
    rng = np.random.default_rng(2)
    params = _params(rng)
    with pytest.raises(FederationError, match="differ"):
        server_step(_fed(), params, {"a.weight": params["a.weight"]}, ServerOptState())


def test_fedadam_state_round_trips_through_the_checkpoint(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    fed = _fed(server_optimizer="fedadam", server_lr=0.01)
    params, opt = _params(rng), ServerOptState()
    for _ in range(3):
        params = server_step(
            fed, params, {k: rng.normal(size=v.shape) for k, v in params.items()}, opt
        )
    save_checkpoint(tmp_path / "server_state.npz", ServerState(round=3, params=params, config_hash="h", opt=opt))
    back = load_checkpoint(tmp_path / "server_state.npz", config_hash="h")
    assert back is not None and back.opt.step == 3
    nxt = {k: rng.normal(size=v.shape) for k, v in params.items()}
    a = server_step(fed, params, nxt, opt)
    b = server_step(fed, back.params, nxt, back.opt)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


@pytest.mark.parametrize(
    ("key", "value"),
    [("server_optimizer", "sgd"), ("server_lr", 0.0), ("server_beta1", 1.0), ("server_tau", -1.0)],
)
def test_bad_server_optimizer_settings_are_named(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"federation.{key}"):
        _fed(**{key: value})
