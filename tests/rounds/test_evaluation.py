"""Server-side evaluation from clients' counts: accuracy per role, MI from the contingency table."""

from __future__ import annotations

import numpy as np
import pytest

from securefvpa.config import config_from_dict
from securefvpa.errors import DataError
from securefvpa.models import metrics
from securefvpa.rounds.evaluation import combine_eval, group_metrics
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


# --- per user type and per group (Polis conversations) ---------------------------------------


def _typed(pairs, correct, table, type_pairs, type_correct):
    c = _counts(pairs, correct, table)
    return EvalCounts(**{**c.__dict__, "type_pairs": tuple(type_pairs), "type_correct": tuple(type_correct)})


# Two conversations whose names hold a "/" before the group id: the group is the text before
# the LAST "/" (a split at the first "/" would merge "org/c1" and "org/c2" into "org").
NAMES = ("org/c1/g0", "org/c1/g1", "org/c2/g0", "org/c2/g1", "org/c2/g2")


def _group_rows():
    # (cells x types) tables: the latent separates the two conversations (cell 0 = c1, cell 1 =
    # c2) but, within c1, puts both groups in one cell; within c2 it separates g0 from g1+g2.
    t_train = [[3, 2, 0, 0, 0], [0, 0, 2, 1, 1], [0, 0, 0, 0, 0]]
    t_unseen = [[1, 1, 0, 0, 0], [0, 0, 0, 0, 0], [0, 0, 1, 1, 1]]
    return [
        (0, "train", _typed(40, 30.0, t_train, [12, 8, 8, 4, 4], [9.0, 6.5, 6.0, 4.0, 3.5])),
        (1, "unseen", _typed(20, 12.0, t_unseen, [4, 4, 4, 4, 4], [4.0, 1.0, 3.0, 2.5, 1.5])),
    ]


def _mi(table):
    table = np.asarray(table)
    cells, types = np.nonzero(table)
    return metrics.mutual_information_bits(
        np.repeat(cells, table[cells, types]), np.repeat(types, table[cells, types])
    )


def test_by_type_sums_counts_per_role():
    out = combine_eval(_group_rows(), _cfg(False), type_names=NAMES)
    assert out["by_type"]["pairs"] == {"seen_users": [12, 8, 8, 4, 4], "unseen_users": [4] * 5}
    assert out["by_type"]["correct"]["unseen_users"] == [4.0, 1.0, 3.0, 2.5, 1.5]
    assert np.asarray(out["by_type"]["contingency"]).sum() == 14
    # the existing keys keep their meaning
    assert out["accuracy"]["seen_users"] == pytest.approx(30 / 40)
    assert out["pairs"] == {"seen_users": 40, "unseen_users": 20}


def test_by_group_is_per_conversation_with_mi_within_it():
    out = combine_eval(_group_rows(), _cfg(False), type_names=NAMES)
    groups = out["by_group"]
    assert sorted(groups) == ["org/c1", "org/c2"]
    c1, c2 = groups["org/c1"], groups["org/c2"]
    assert c1["types"] == 2 and c2["types"] == 3
    assert c1["pairs"] == {"seen_users": 20, "unseen_users": 8}
    assert c1["accuracy"]["seen_users"] == pytest.approx(15.5 / 20)
    assert c1["accuracy"]["unseen_users"] == pytest.approx(5.0 / 8)
    assert c2["accuracy"]["seen_users"] == pytest.approx(13.5 / 16)
    assert c2["accuracy"]["unseen_users"] == pytest.approx(7.0 / 12)
    assert c1["users"] == 7 and c2["users"] == 7
    # Within c1 every user sits in cell 0: no information about the opinion group, although the
    # whole table's MI is large (the latent separates conversations).
    assert c1["mutual_information_bits"] == 0.0
    assert out["latent"]["mutual_information_bits"] > 0.9
    table = np.asarray([[3, 2, 0, 0, 0], [0, 0, 2, 1, 1], [0, 0, 1, 1, 1]])
    assert c2["mutual_information_bits"] == pytest.approx(_mi(table[:, 2:]))
    assert c2["mutual_information_bits"] > 0.0
    assert c1["active_components"] == 1 and c2["active_components"] == 2


def test_no_groups_without_a_slash_or_without_names():
    rows = _group_rows()
    assert "by_group" not in combine_eval(rows, _cfg(False))
    assert "by_group" not in combine_eval(rows, _cfg(False), type_names=("a", "b", "c", "d", "e"))
    assert "by_type" in combine_eval(rows, _cfg(False))


def test_group_metrics_refuses_names_that_do_not_fit_the_table():
    by_type = combine_eval(_group_rows(), _cfg(False))["by_type"]
    with pytest.raises(DataError, match="expected \\(cells, 4\\)"):
        group_metrics(by_type, NAMES[:4], kind="fedvpa-gp")


def test_by_type_is_published_under_dp_but_not_per_client():
    out = combine_eval(_group_rows(), _cfg(True), type_names=NAMES)
    assert "per_client" not in out and set(out["by_group"]) == {"org/c1", "org/c2"}


def test_eval_reply_carries_per_type_counts_exactly():
    from flwr.app import ConfigRecord

    from securefvpa.errors import FederationError
    from securefvpa.fl.wire import EvalReply

    counts = _group_rows()[1][2]
    rec = ConfigRecord(EvalReply.of("unseen", counts).to_values())
    back = EvalReply.from_record(rec)
    assert back.counts() == counts
    assert back.type_correct_halves == (8, 2, 6, 5, 3)
    old = EvalReply.from_record(
        ConfigRecord({k: v for k, v in rec.items() if not k.startswith("type-")})
    )
    assert old.counts().type_pairs == ()  # a reply without per-type counts stays valid
    values = dict(rec.items())
    with pytest.raises(FederationError, match="type 1 has 4 pairs and 9 correct halves"):
        EvalReply.from_record(ConfigRecord(values | {"type-correct-halves": [8, 9, 6, 5, 3]}))
    with pytest.raises(FederationError, match="expected 0 or types = 5"):
        EvalReply.from_record(ConfigRecord(values | {"type-pairs": [4, 4], "type-correct-halves": [1, 1]}))


def test_local_evaluate_counts_pairs_per_user_type():
    """A client with users of several types: per-type pairs are the held-out pairs of that
    type's users and per-type correct is their score (checked against score_users)."""
    from securefvpa.data.partition import make_partitions
    from securefvpa.models.factory import build_model
    from securefvpa.models.planted import planted_pairs
    from securefvpa.train.client import ClientNode, local_evaluate
    from securefvpa.train.loop import score_users
    from securefvpa.train.params import model_to_arrays

    cfg = config_from_dict(
        {
            "model": {"kind": "oracle"},
            "federation": {"users_per_client": 5, "type_mix": "mixed", "min_fit_clients": 1},
        }
    )
    pairs, split = planted_pairs(users=30, types=2, heldout_pairs=4, seed=3)
    parts = make_partitions(pairs, split, cfg.federation, cfg.seed)
    params = model_to_arrays(build_model(cfg.model, embed_dim=pairs.dim, n_types=2, seed=0))
    seen_mixed = False
    for part in parts:
        counts = local_evaluate(ClientNode(cfg=cfg, partition=part, plan=None), params)
        types = [u.type_index for u in part.users]
        seen_mixed |= len(set(types)) > 1
        assert counts.type_pairs == tuple(4 * types.count(t) for t in range(2))
        scores = score_users(
            build_model(cfg.model, embed_dim=pairs.dim, n_types=2, seed=0), part.pairs, list(part.users)
        )
        want = [0.0, 0.0]
        for c, t in zip(scores.correct, types):
            want[t] += float(c.sum())
        assert counts.type_correct == pytest.approx(want)
        assert sum(counts.type_correct) == pytest.approx(counts.correct)
        # the oracle's cell is the true type: the contingency columns count the same users
        table = np.asarray(counts.contingency).reshape(counts.cells, counts.types)
        assert table.sum(axis=0).tolist() == [types.count(t) for t in range(2)]
    assert seen_mixed
    # All-zero parameters give every pair a zero margin: each tie scores 1/2.
    zeros = {k: np.zeros_like(v) for k, v in params.items()}
    counts = local_evaluate(ClientNode(cfg=cfg, partition=parts[0], plan=None), zeros)
    assert counts.type_correct == tuple(k / 2 for k in counts.type_pairs)
    assert sum(counts.type_pairs) > 0


def test_without_dp_a_node_logs_its_users_counts_and_sends_only_the_aggregate(tmp_path):
    """Every run keeps each user's (pairs, correct) in the node's own log (for paired per-user
    comparisons, securefvpa.compare); without DP the node sends only its aggregate counts, which
    are the sum of those per-user rows; the reply type has no per-user field."""
    import dataclasses
    import json

    from securefvpa.data.partition import make_partitions
    from securefvpa.models.factory import build_model
    from securefvpa.models.planted import planted_pairs
    from securefvpa.train.client import ClientNode, evaluate_round
    from securefvpa.train.params import model_to_arrays

    cfg = config_from_dict(
        {
            "model": {"kind": "btl"},
            "federation": {"users_per_client": 5, "type_mix": "mixed", "min_fit_clients": 1},
        }
    )
    pairs, split = planted_pairs(users=10, types=2, heldout_pairs=4, seed=3)
    part = make_partitions(pairs, split, cfg.federation, cfg.seed)[0]
    params = model_to_arrays(build_model(cfg.model, embed_dim=pairs.dim, n_types=2, seed=0))
    log = tmp_path / "eval_0.jsonl"
    node = ClientNode(cfg=cfg, partition=part, plan=None, eval_log=log)
    sent = evaluate_round(node, params, rnd=2)
    assert sent is not None
    # aggregates only (per type and per latent cell); a new field must be reviewed here
    assert [f.name for f in dataclasses.fields(sent)] == [
        "pairs", "correct", "contro_pairs", "contro_correct", "users", "kl_sum", "cells",
        "types", "contingency", "type_pairs", "type_correct",
    ]  # fmt: skip
    (row,) = [json.loads(x) for x in log.read_text().splitlines()]
    assert row["round"] == 2 and len(row["per_user"]) == len(part.users)
    assert sum(n for n, _ in row["per_user"]) == sent.pairs == 4 * len(part.users)
    assert sum(c for _, c in row["per_user"]) == pytest.approx(sent.correct)
