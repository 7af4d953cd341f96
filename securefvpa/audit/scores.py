"""From per-canary membership scores to guesses, counts and epsilon lower bounds.

Convention: a HIGHER score means "more likely a member" (negate a loss before passing it).
``membership[i]`` is True when canary ``i`` was included in training.

Choosing how many guesses to make (``k_plus``, ``k_minus``) or which threshold to use by looking
at which guesses turned out right spends the audit's confidence: an honest audit either fixes
the choice in advance, Bonferroni-corrects over every choice it tries
(:func:`one_run_audit_grid`, :func:`clopper_pearson_bonferroni`), or picks it on a disjoint
random subset and evaluates on the rest (:func:`clopper_pearson_split`). Picking the best of
several and reporting it at the uncorrected confidence overstates the confidence.

numpy/scipy only; imports neither torch nor flwr.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

from securefvpa.audit.stats import (
    AuditBound,
    bonferroni_confidence,
    check_confidence,
    clopper_pearson_audit,
    one_run_audit,
)
from securefvpa.errors import ConfigError


def _scores(name: str, values: ArrayLike, *, allow_empty: bool = False) -> NDArray[np.float64]:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ConfigError(f"{name} must be one-dimensional. Found shape {arr.shape}.")
    if arr.size == 0 and not allow_empty:
        raise ConfigError(f"{name} must not be empty.")
    if not np.all(np.isfinite(arr)):
        bad = arr[~np.isfinite(arr)][0]
        raise ConfigError(f"{name} must be finite. Found {bad}.")
    return arr


def _membership(membership: ArrayLike, size: int) -> NDArray[np.bool_]:
    arr = np.asarray(membership)
    if arr.dtype != np.bool_:
        raise ConfigError(f"membership must be a boolean array. Found dtype {arr.dtype}.")
    if arr.shape != (size,):
        raise ConfigError(f"membership must have shape ({size},). Found {arr.shape}.")
    return arr


def _k(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ConfigError(f"{name} must be an integer >= 0. Found {value!r}.")
    return int(value)


def guesses_from_scores(scores: ArrayLike, k_plus: int, k_minus: int) -> NDArray[np.int8]:
    """Guess +1 ("in") for the ``k_plus`` highest scores, -1 ("out") for the ``k_minus``
    lowest, 0 (abstain) for the rest — Steinke, Nasr & Jagielski 2023, Section 6.

    Ties at a cut are broken by canary index (stable sort), so the index order must not depend
    on membership. Raises ConfigError if ``k_plus + k_minus`` exceeds the number of scores.
    """
    s = _scores("scores", scores)
    kp, km = _k("k_plus", k_plus), _k("k_minus", k_minus)
    if kp + km > s.size:
        raise ConfigError(
            f"k_plus + k_minus must be <= the number of scores ({s.size}). Found {kp} + {km}."
        )
    order = np.argsort(s, kind="stable")
    guesses = np.zeros(s.size, dtype=np.int8)
    guesses[order[s.size - kp :]] = 1
    guesses[order[:km]] = -1
    return guesses


def count_guesses(guesses: ArrayLike, membership: ArrayLike) -> tuple[int, int]:
    """Return ``(r, v)``: the number of non-abstaining guesses and how many are right."""
    g = np.asarray(guesses)
    if g.ndim != 1 or not np.all(np.isin(g, (-1, 0, 1))):
        raise ConfigError("guesses must be a one-dimensional array of -1, 0 and +1.")
    member = _membership(membership, g.size)
    truth = np.where(member, 1, -1)
    return int(np.count_nonzero(g)), int(np.count_nonzero(g == truth))


def one_run_audit_from_scores(
    scores: ArrayLike,
    membership: ArrayLike,
    *,
    k_plus: int,
    k_minus: int,
    delta: float,
    confidence: float,
) -> AuditBound:
    """One-run bound for ONE pre-chosen ``(k_plus, k_minus)`` (Steinke et al. 2023)."""
    guesses = guesses_from_scores(scores, k_plus, k_minus)
    r, v = count_guesses(guesses, membership)
    return one_run_audit(
        canaries=guesses.size,
        guesses=r,
        correct=v,
        delta=delta,
        confidence=confidence,
        note=f"k_plus={int(k_plus)}, k_minus={int(k_minus)}",
    )


def one_run_audit_grid(
    scores: ArrayLike,
    membership: ArrayLike,
    *,
    k_grid: Sequence[tuple[int, int]],
    delta: float,
    confidence: float,
) -> AuditBound:
    """Best one-run bound over ``k_grid``, each tried at Bonferroni confidence
    ``1 - (1 - confidence) / len(k_grid)``, so the returned bound holds at ``confidence``.

    The grid must be fixed before looking at the scores. The result's ``note`` names the winning
    pair and the family size; its ``confidence`` is the overall ``confidence``.
    """
    c = check_confidence(confidence)
    pairs = [(_k("k_plus", kp), _k("k_minus", km)) for kp, km in k_grid]
    if not pairs or len(set(pairs)) != len(pairs):
        raise ConfigError(f"k_grid must be non-empty without repeats. Found {list(k_grid)!r}.")
    per_test = bonferroni_confidence(c, len(pairs))
    best = max(
        (
            one_run_audit_from_scores(
                scores, membership, k_plus=kp, k_minus=km, delta=delta, confidence=per_test
            )
            for kp, km in pairs
        ),
        key=lambda bound: bound.epsilon_lower_bound,
    )
    return dataclasses.replace(
        best, confidence=c, note=f"{best.note}; Bonferroni over {len(pairs)} (k_plus, k_minus) pairs"
    )


def clopper_pearson_at_threshold(
    in_scores: ArrayLike,
    out_scores: ArrayLike,
    *,
    threshold: float,
    delta: float,
    confidence: float,
    note: str = "",
) -> AuditBound:
    """Clopper–Pearson bound (Jagielski et al. 2020) guessing "in" when score >= threshold.

    ``in_scores`` are scores of trials where the target was included (positives),
    ``out_scores`` where it was not (negatives). The threshold must not have been chosen on
    these same scores.
    """
    pos = _scores("in_scores", in_scores)
    neg = _scores("out_scores", out_scores)
    t = float(threshold)
    return clopper_pearson_audit(
        true_positives=int(np.count_nonzero(pos >= t)),
        positives=pos.size,
        false_positives=int(np.count_nonzero(neg >= t)),
        negatives=neg.size,
        delta=delta,
        confidence=confidence,
        note=note or f"threshold={t!r}",
    )


def _best_threshold(
    pos: NDArray[np.float64],
    neg: NDArray[np.float64],
    thresholds: NDArray[np.float64],
    delta: float,
    confidence: float,
) -> tuple[float, AuditBound]:
    candidates = [
        (
            float(t),
            clopper_pearson_at_threshold(
                pos, neg, threshold=float(t), delta=delta, confidence=confidence
            ),
        )
        for t in thresholds
    ]
    return max(candidates, key=lambda pair: pair[1].epsilon_lower_bound)


def clopper_pearson_bonferroni(
    in_scores: ArrayLike,
    out_scores: ArrayLike,
    *,
    delta: float,
    confidence: float,
    thresholds: ArrayLike | None = None,
) -> AuditBound:
    """Best Clopper–Pearson bound over a threshold family, Bonferroni-corrected.

    ``thresholds`` defaults to every distinct score (the whole family a sweep could pick), and
    each threshold is evaluated at ``1 - (1 - confidence) / len(thresholds)``; the returned
    bound therefore holds at ``confidence`` even though the best threshold was picked on the
    same data. A smaller family fixed in advance costs less.
    """
    pos = _scores("in_scores", in_scores)
    neg = _scores("out_scores", out_scores)
    c = check_confidence(confidence)
    if thresholds is None:
        family = np.union1d(pos, neg)
    else:
        family = np.unique(_scores("thresholds", thresholds))
    _, best = _best_threshold(pos, neg, family, delta, bonferroni_confidence(c, family.size))
    return dataclasses.replace(
        best, confidence=c, note=f"{best.note}; Bonferroni over {family.size} thresholds"
    )


def clopper_pearson_split(
    in_scores: ArrayLike,
    out_scores: ArrayLike,
    *,
    delta: float,
    confidence: float,
    rng: np.random.Generator,
    selection_fraction: float = 0.5,
) -> AuditBound:
    """Pick the threshold on a random ``selection_fraction`` of the trials, bound on the rest.

    The split is drawn from ``rng`` (a seeded numpy Generator: reproducible, not a secret) and
    is independent of the scores, so the threshold is independent of the held-out trials and
    their bound holds at the full ``confidence``. Both parts must keep >= 1 positive and
    negative.
    """
    pos = _scores("in_scores", in_scores)
    neg = _scores("out_scores", out_scores)
    c = check_confidence(confidence)
    if not isinstance(rng, np.random.Generator):
        raise ConfigError(f"rng must be a numpy.random.Generator. Found {type(rng).__name__}.")
    if not isinstance(selection_fraction, numbers.Real) or not 0 < selection_fraction < 1:
        raise ConfigError(f"selection_fraction must be in (0, 1). Found {selection_fraction!r}.")

    def split(arr: NDArray[np.float64], name: str) -> tuple[NDArray[np.float64], ...]:
        cut = int(round(arr.size * float(selection_fraction)))
        if not 0 < cut < arr.size:
            raise ConfigError(
                f"{name} has {arr.size} scores; selection_fraction {selection_fraction} "
                "leaves one part empty."
            )
        perm = rng.permutation(arr.size)
        return arr[perm[:cut]], arr[perm[cut:]]

    pos_sel, pos_eval = split(pos, "in_scores")
    neg_sel, neg_eval = split(neg, "out_scores")
    threshold, _ = _best_threshold(pos_sel, neg_sel, np.union1d(pos_sel, neg_sel), delta, c)
    return clopper_pearson_at_threshold(
        pos_eval,
        neg_eval,
        threshold=threshold,
        delta=delta,
        confidence=c,
        note=(
            f"threshold={threshold!r} chosen on {pos_sel.size}+{neg_sel.size} "
            f"of {pos.size}+{neg.size} trials"
        ),
    )
