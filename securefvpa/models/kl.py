"""Closed-form KL terms of the variational preference model (pure: numpy, no torch import).

Every function takes an array namespace ``xp`` (``numpy`` by default; the model passes ``torch``)
and uses only ``xp.exp``, ``xp.log``, ``xp.sum`` and arithmetic, so one implementation serves the
autograd path and the numpy tests that check it against Monte-Carlo estimates
(tests/models/test_kl.py).

Shapes: the last axis of Gaussian arguments is the latent dimension L; a leading batch shape
broadcasts. Variances are passed as log-variances. All results are in nats.

References
----------
- Kingma & Welling (2014), "Auto-Encoding Variational Bayes", appendix B (KL to N(0, I)).
- Jiang et al. (2017), "Variational Deep Embedding" (VaDE), eq. 16: the ELBO of a Gaussian
  mixture prior, E_q(c)[KL(q(z) || N(mu_c, sigma_c^2))] + KL(q(c) || pi).
- Dilokthanakul et al. (2016), "Deep Unsupervised Clustering with Gaussian Mixture VAEs".
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

Array = Any  # numpy.ndarray or torch.Tensor; both support the operations used here.


def kl_diag_gaussians(
    mu_q: Array, logvar_q: Array, mu_p: Array, logvar_p: Array, *, xp: ModuleType = np
) -> Array:
    """KL(N(mu_q, diag e^logvar_q) || N(mu_p, diag e^logvar_p)), summed over the last axis.

    0.5 * sum_l [ logvar_p - logvar_q + (e^logvar_q + (mu_q - mu_p)^2) / e^logvar_p - 1 ].
    """
    diff = mu_q - mu_p
    per_dim = logvar_p - logvar_q + (xp.exp(logvar_q) + diff * diff) * xp.exp(-logvar_p) - 1.0
    return 0.5 * xp.sum(per_dim, -1)


def kl_standard_normal(mu: Array, logvar: Array, *, xp: ModuleType = np) -> Array:
    """KL(N(mu, diag e^logvar) || N(0, I)) = 0.5 * sum(e^logvar + mu^2 - 1 - logvar)."""
    return 0.5 * xp.sum(xp.exp(logvar) + mu * mu - 1.0 - logvar, -1)


def kl_categorical(log_q: Array, log_p: Array, *, xp: ModuleType = np) -> Array:
    """KL(q || p) = sum_c q_c (log q_c - log p_c) for log-probabilities over the last axis.

    Components with q_c = 0 contribute 0 (the limit of q log q); ``log_q`` may hold -inf there.
    """
    q = xp.exp(log_q)
    return xp.sum(q * xp.where(q > 0, log_q - log_p, 0.0), -1)


def expected_mixture_kl(
    mu: Array,
    logvar: Array,
    proto_mu: Array,
    proto_logvar: Array,
    log_resp: Array,
    *,
    xp: ModuleType = np,
) -> Array:
    """E_{q(c)}[ KL(N(mu, e^logvar) || N(proto_mu_c, e^proto_logvar_c)) ] (VaDE eq. 16, term 2).

    ``mu``/``logvar``: [..., L]; ``proto_mu``/``proto_logvar``: [..., K, L];
    ``log_resp``: [..., K] log q(c). Returns [...].
    """
    per_comp = kl_diag_gaussians(
        mu[..., None, :], logvar[..., None, :], proto_mu, proto_logvar, xp=xp
    )
    return xp.sum(xp.exp(log_resp) * per_comp, -1)


def log_normal_diag(z: Array, mu: Array, logvar: Array, *, xp: ModuleType = np) -> Array:
    """log N(z; mu, diag e^logvar), summed over the last axis."""
    diff = z - mu
    return -0.5 * xp.sum(np.log(2.0 * np.pi) + logvar + diff * diff * xp.exp(-logvar), -1)
