"""The round engine's pieces: weighted mean, sampling, the round-attempt journal, resume."""

from __future__ import annotations

import numpy as np
import pytest

from securefvpa.config import config_from_dict
from securefvpa.errors import RunDirError
from securefvpa.rounds.engine import (
    NodeInfo,
    RunDirStore,
    sample_indices,
    sample_nodes,
    weighted_mean,
)


def test_weighted_mean_is_exact_and_rejects_malformed_updates():
    like = {"a": np.zeros((2, 2), np.float32), "b": np.zeros(3, np.float32)}
    u1 = {"a": np.full((2, 2), 2.0), "b": np.arange(3.0)}
    u2 = {"a": np.full((2, 2), 4.0), "b": np.ones(3)}
    bad_shape = {"a": np.zeros(4), "b": np.zeros(3)}
    bad_value = {"a": np.full((2, 2), np.nan), "b": np.zeros(3)}
    mean, ok, rejected = weighted_mean(
        [(0, 1.0, u1), (1, 3.0, u2), (2, 1.0, bad_shape), (3, 1.0, bad_value), (4, 0.0, u1)], like
    )
    assert ok == [0, 1]
    assert [r[0] for r in rejected] == [2, 3, 4]
    np.testing.assert_allclose(mean["a"], (u1["a"] + u2["a"]) / 4.0)  # replies are w * update
    np.testing.assert_allclose(mean["b"], (u1["b"] + u2["b"]) / 4.0)
    assert weighted_mean([], like)[0] is None


def test_sampling_is_seeded_by_round_and_respects_the_minimum():
    cfg = config_from_dict({"federation": {"fraction_fit": 0.25, "min_fit_clients": 3}})
    assert sample_indices(20, cfg.federation, 0, 4) == sample_indices(20, cfg.federation, 0, 4)
    assert sample_indices(20, cfg.federation, 0, 4) != sample_indices(20, cfg.federation, 0, 5)
    assert len(sample_indices(20, cfg.federation, 0, 1)) == 5
    assert len(sample_indices(8, cfg.federation, 0, 1)) == 3  # ceil(0.25 * 8) = 2 < minimum
    nodes = [NodeInfo(i, i, "train" if i < 6 else "unseen", 10) for i in range(8)]
    picked = sample_nodes(nodes, cfg, 1, exhausted={0, 1})
    assert all(n.role == "train" and n.partition_id not in {0, 1} for n in picked)
    assert sample_nodes(nodes, cfg, 1, exhausted={0, 1, 2, 3}) == []  # 2 left < 3


def test_round_attempts_are_journaled_and_survive_a_restart(tmp_path):
    def store():
        return RunDirStore(
            tmp_path / "s.npz", tmp_path / "rounds.journal", config_hash="h", resume=True
        )

    assert store().begin(1) == 1
    assert store().begin(2) == 1
    assert store().begin(2) == 2  # a crash in round 2, then --resume
    assert store().begin(3) == 1
    assert store().attempts() == {1: 1, 2: 2, 3: 1}
    (tmp_path / "rounds.journal").write_text("1 1\ngarbage\n")
    with pytest.raises(RunDirError, match="line 2"):
        store().attempts()
