"""Evaluation metrics: preference accuracy, latent/type mutual information, collapse diagnostics.

Definitions (tested in tests/models/test_metrics.py):

- Preference accuracy: share of held-out pairs with r(x, y_c, z) - r(x, y_r, z) > 0; an exact
  tie counts 1/2. Pooled over pairs (pair-weighted).
- Mutual information (bits) between the inferred component of a user and the user's true type,
  plug-in estimate from the contingency table:
  I = sum_ab p(a,b) log2 p(a,b) / (p(a) p(b)).
  Miller-Madow correction (Miller 1955; Paninski 2003, "Estimation of Entropy and Mutual
  Information", eq. 3.5) adds (m - 1) / (2N) nats to each entropy, m = occupied cells, giving
  I_MM = I + [(m_a - 1) + (m_b - 1) - (m_ab - 1)] / (2N ln 2) bits.
  A permutation null (type labels shuffled, seeded) gives the MI expected by chance.
- Active components: components that are the argmax for at least ``ACTIVE_SHARE`` (2 %) of users
  (and at least one user).
- Posterior collapse: mean KL per latent dimension < ``COLLAPSE_KL_PER_DIM`` (0.01 nats) AND
  MI < ``COLLAPSE_MI_BITS`` (0.05 bits): the posterior carries (almost) no information, neither
  in nats of KL nor about the type.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from securefvpa.errors import DataError

ACTIVE_SHARE = 0.02
COLLAPSE_KL_PER_DIM = 0.01
COLLAPSE_MI_BITS = 0.05


def preference_accuracy(margin: npt.ArrayLike) -> float:
    """Share of reward margins r(chosen) - r(rejected) > 0 (ties count 1/2); NaN-free input."""
    d = np.asarray(margin, dtype=np.float64).ravel()
    if d.size == 0:
        raise DataError("preference_accuracy needs at least one pair. Found 0.")
    if not np.all(np.isfinite(d)):
        raise DataError(f"reward margins must be finite. Found {d[~np.isfinite(d)][0]!r}.")
    return float(np.mean((d > 0) + 0.5 * (d == 0)))


def pair_correct(margin: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Per-pair correctness of reward margins (1, 0, or 1/2 for a tie)."""
    d = np.asarray(margin, dtype=np.float64)
    return (d > 0).astype(np.float64) + 0.5 * (d == 0)


def _labels(x: npt.ArrayLike, name: str) -> npt.NDArray[np.int64]:
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise DataError(f"{name} must be a 1-D array of labels. Found shape {arr.shape}.")
    _, inv = np.unique(arr, return_inverse=True)
    return inv.astype(np.int64)


def _mi_nats(a: npt.NDArray[np.int64], b: npt.NDArray[np.int64]) -> float:
    table = np.zeros((a.max() + 1, b.max() + 1), dtype=np.float64)
    np.add.at(table, (a, b), 1.0)
    joint = table / table.sum()
    pa = joint.sum(1, keepdims=True)
    pb = joint.sum(0, keepdims=True)
    nz = joint > 0
    return float(np.sum(joint[nz] * np.log(joint[nz] / (pa @ pb)[nz])))


def mutual_information_bits(inferred: npt.ArrayLike, truth: npt.ArrayLike) -> float:
    """Plug-in MI (bits) between two label vectors of equal length."""
    a, b = _labels(inferred, "inferred"), _labels(truth, "truth")
    if a.shape != b.shape:
        raise DataError(f"label vectors differ in length: {a.shape[0]} vs {b.shape[0]}")
    if a.size == 0:
        raise DataError("mutual information needs at least one user. Found 0.")
    return max(_mi_nats(a, b), 0.0) / math.log(2)


def miller_madow_mi_bits(inferred: npt.ArrayLike, truth: npt.ArrayLike) -> float:
    """Plug-in MI plus the Miller-Madow bias correction of its three entropies (bits)."""
    a, b = _labels(inferred, "inferred"), _labels(truth, "truth")
    n = a.size
    m_a, m_b = np.unique(a).size, np.unique(b).size
    m_ab = np.unique(a * (b.max() + 1) + b).size
    corr = ((m_a - 1) + (m_b - 1) - (m_ab - 1)) / (2.0 * n)
    return (mutual_information_bits(a, b) * math.log(2) + corr) / math.log(2)


def permutation_null_mi_bits(
    inferred: npt.ArrayLike, truth: npt.ArrayLike, *, rounds: int = 200, seed: int = 0
) -> tuple[float, float]:
    """(mean MI under shuffled types, one-sided p-value of the observed MI) from ``rounds``."""
    a, b = _labels(inferred, "inferred"), _labels(truth, "truth")
    rng = np.random.default_rng(seed)
    observed = _mi_nats(a, b)
    null = np.array([_mi_nats(a, rng.permutation(b)) for _ in range(rounds)])
    p_value = (1.0 + np.sum(null >= observed - 1e-12)) / (rounds + 1.0)
    return float(null.mean() / math.log(2)), float(p_value)


def active_components(assignments: npt.ArrayLike, *, share: float = ACTIVE_SHARE) -> int:
    """Number of distinct labels held by >= ``share`` of the users (and by >= 1 user)."""
    a = np.asarray(assignments).ravel()
    if a.size == 0:
        return 0
    _, counts = np.unique(a, return_counts=True)
    return int(np.sum(counts >= max(share * a.size, 1)))


def posterior_collapse(mean_kl: float, latent_dim: int, mi_bits: float) -> bool:
    """True when mean KL per latent dim < 0.01 nats AND MI < 0.05 bits (see module docstring)."""
    if latent_dim < 1:
        raise DataError(f"latent_dim must be >= 1. Found {latent_dim!r}.")
    return bool(mean_kl / latent_dim < COLLAPSE_KL_PER_DIM and mi_bits < COLLAPSE_MI_BITS)


def kmeans_assignments(points: npt.ArrayLike, k: int, *, seed: int) -> npt.NDArray[np.int64]:
    """Seeded k-means (scikit-learn, 10 restarts) cluster labels for VPL's posterior means."""
    from sklearn.cluster import KMeans

    x = np.asarray(points, dtype=np.float64)
    k = max(1, min(k, x.shape[0]))
    return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(x).astype(np.int64)
