"""Every closed-form KL term against a Monte-Carlo estimate (tolerance from its standard error)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from securefvpa.models import kl

N_MC = 200_000
Z = 5.0  # tolerance in standard errors


def _mc_check(samples: np.ndarray, exact: float) -> None:
    est, se = samples.mean(), samples.std(ddof=1) / np.sqrt(samples.size)
    assert abs(est - exact) <= Z * se + 1e-9, (est, exact, se)


def _log_normal(z, mu, logvar):
    return kl.log_normal_diag(z, mu, logvar)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_diag_gaussian_kl_matches_monte_carlo(seed: int) -> None:
    rng = np.random.default_rng(seed)
    d = 4
    mu_q, lv_q = rng.normal(size=d), rng.normal(scale=0.5, size=d)
    mu_p, lv_p = rng.normal(size=d), rng.normal(scale=0.5, size=d)
    z = mu_q + np.exp(0.5 * lv_q) * rng.normal(size=(N_MC, d))
    samples = _log_normal(z, mu_q, lv_q) - _log_normal(z, mu_p, lv_p)
    _mc_check(samples, float(kl.kl_diag_gaussians(mu_q, lv_q, mu_p, lv_p)))


def test_standard_normal_kl_matches_monte_carlo_and_general_formula() -> None:
    rng = np.random.default_rng(3)
    d = 6
    mu, lv = rng.normal(size=d), rng.normal(scale=0.7, size=d)
    z = mu + np.exp(0.5 * lv) * rng.normal(size=(N_MC, d))
    samples = _log_normal(z, mu, lv) - _log_normal(z, np.zeros(d), np.zeros(d))
    exact = float(kl.kl_standard_normal(mu, lv))
    _mc_check(samples, exact)
    assert exact == pytest.approx(float(kl.kl_diag_gaussians(mu, lv, np.zeros(d), np.zeros(d))))


def test_categorical_kl_matches_monte_carlo_and_handles_zero_mass() -> None:
    rng = np.random.default_rng(4)
    q = rng.dirichlet(np.ones(5))
    p = rng.dirichlet(np.ones(5))
    c = rng.choice(5, size=N_MC, p=q)
    samples = np.log(q[c]) - np.log(p[c])
    _mc_check(samples, float(kl.kl_categorical(np.log(q), np.log(p))))
    q0 = np.array([0.5, 0.5, 0.0])
    with np.errstate(divide="ignore"):
        val = kl.kl_categorical(np.log(q0), np.log(np.full(3, 1 / 3)))
    assert val == pytest.approx(np.log(1.5))


def test_expected_mixture_kl_matches_monte_carlo_over_c_and_z() -> None:
    rng = np.random.default_rng(5)
    k, d = 3, 4
    mu, lv = rng.normal(size=d), rng.normal(scale=0.5, size=d)
    pm, plv = rng.normal(size=(k, d)), rng.normal(scale=0.5, size=(k, d))
    resp = rng.dirichlet(np.ones(k))
    c = rng.choice(k, size=N_MC, p=resp)
    z = mu + np.exp(0.5 * lv) * rng.normal(size=(N_MC, d))
    samples = _log_normal(z, mu, lv) - _log_normal(z, pm[c], plv[c])
    exact = float(kl.expected_mixture_kl(mu, lv, pm, plv, np.log(resp)))
    _mc_check(samples, exact)


def test_torch_and_numpy_paths_agree_and_have_gradients() -> None:
    rng = np.random.default_rng(6)
    mu, lv = rng.normal(size=(2, 4)), rng.normal(size=(2, 4))
    pm, plv = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 3, 4))
    lr = np.log(rng.dirichlet(np.ones(3), size=2))
    t = {
        k: torch.tensor(v, requires_grad=True)
        for k, v in dict(mu=mu, lv=lv, pm=pm, plv=plv, lr=lr).items()
    }
    out_t = kl.expected_mixture_kl(t["mu"], t["lv"], t["pm"], t["plv"], t["lr"], xp=torch)
    out_n = kl.expected_mixture_kl(mu, lv, pm, plv, lr)
    np.testing.assert_allclose(out_t.detach().numpy(), out_n, rtol=1e-10)
    cat_t = kl.kl_categorical(t["lr"], t["lr"].flip(-1), xp=torch)
    np.testing.assert_allclose(
        cat_t.detach().numpy(), kl.kl_categorical(lr, lr[:, ::-1]), rtol=1e-10
    )
    (out_t.sum() + cat_t.sum()).backward()
    assert all(torch.isfinite(v.grad).all() for v in t.values())


def test_kl_module_does_not_import_torch() -> None:
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(kl))
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not any(name.split(".")[0] in ("torch", "flwr") for name in names)
