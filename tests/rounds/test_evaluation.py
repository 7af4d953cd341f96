"""Server-side evaluation from clients' counts: accuracy per role, MI from the contingency table."""

from __future__ import annotations

import numpy as np
import pytest

from securefvpa.config import config_from_dict
from securefvpa.models import metrics
from securefvpa.rounds.evaluation import combine_eval
from securefvpa.train.client import EvalCounts


def _counts(pairs, correct, table, *, contro=(0, 0.0), kl=0.0):
    table = np.asarray(table)
    return EvalCounts(
        pairs=pairs,
        correct=correct,
        contro_pairs=contro[0],
        contro_correct=contro[1],
        users=int(table.sum()),
        kl_sum=kl,
        cells=table.shape[0],
        types=table.shape[1],
        contingency=tuple(int(x) for x in table.ravel()),
    )


def _cfg(privacy: bool):
    return config_from_dict({"model": {"kind": "fedvpa-gp"}, "privacy": {"enabled": privacy}})


def test_accuracy_per_role_and_controversial():
    rows = [
        (0, "train", _counts(10, 7.0, [[1, 0], [0, 1]], contro=(4, 3.0))),
        (1, "train", _counts(6, 3.5, [[2, 0], [0, 0]], contro=(2, 0.5))),
        (2, "unseen", _counts(8, 6.0, [[0, 1], [1, 0]], contro=(0, 0.0))),
    ]
    out = combine_eval(rows, _cfg(False))
    assert out["accuracy"]["seen_users"] == pytest.approx(10.5 / 16)
    assert out["accuracy"]["unseen_users"] == pytest.approx(6.0 / 8)
    assert out["accuracy"]["controversial"] == pytest.approx(3.5 / 6)
    assert out["pairs"] == {"seen_users": 16, "unseen_users": 8}


def test_mutual_information_is_that_of_the_summed_table():
    rng = np.random.default_rng(0)
    tables = [rng.integers(0, 5, size=(3, 2)) for _ in range(4)]
    rows = [(i, "train", _counts(1, 1.0, t)) for i, t in enumerate(tables)]
    total = sum(tables)
    cells, types = np.nonzero(total)
    a = np.repeat(cells, total[cells, types])
    b = np.repeat(types, total[cells, types])
    out = combine_eval(rows, _cfg(False))
    assert out["latent"]["mutual_information_bits"] == pytest.approx(
        metrics.mutual_information_bits(a, b)
    )
    assert out["latent"]["active_components"] == metrics.active_components(a)


def test_per_client_counts_are_published_only_without_dp():
    rows = [(3, "train", _counts(4, 2.0, [[1]])), (1, "unseen", _counts(2, 1.0, [[1]]))]
    assert combine_eval(rows, _cfg(False))["per_client"] == [
        [1, "unseen", 2, 1.0],
        [3, "train", 4, 2.0],
    ]
    assert "per_client" not in combine_eval(rows, _cfg(True))


def test_no_answers_give_no_accuracy():
    out = combine_eval([], _cfg(False))
    assert out["accuracy"] == {"seen_users": None, "unseen_users": None, "controversial": None}
