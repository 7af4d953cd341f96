"""A run against non-private FedBTL: the paired difference and its interval, the reference's
config, and `securefvpa run --baseline fedbtl` end to end on a private, distributed run whose
evaluation stays on the nodes."""

from __future__ import annotations

import json

import pytest

from securefvpa import cli
from securefvpa.compare import (
    BASELINE_DIR,
    COMPARISON_FILE,
    EvalUnit,
    baseline_config,
    client_counts,
    paired_difference,
    summary_lines,
)
from securefvpa.config import config_from_dict
from securefvpa.errors import RunDirError


def _counts(correct, role="unseen", pairs=100):
    return [
        EvalUnit(partition_id=i, user=-1, role=role, pairs=pairs, correct=float(c))
        for i, c in enumerate(correct)
    ]


def test_paired_difference_is_pooled_and_its_interval_follows_the_clients():
    run = _counts([80, 82, 78, 81, 79, 80])
    base = _counts([70, 71, 69, 72, 70, 68])
    d = paired_difference(run, base, role="unseen")
    assert d.accuracy == pytest.approx(480 / 600)
    assert d.baseline_accuracy == pytest.approx(420 / 600)
    assert d.difference == pytest.approx(0.1)
    assert 0.08 < d.low < 0.1 < d.high < 0.12 and d.beats
    # the same mean difference with clients that disagree: a wider interval that includes 0
    noisy = paired_difference(_counts([95, 65, 95, 65, 95, 65]), _counts([60, 90, 60, 90, 60, 60]),
                              role="unseen")  # fmt: skip
    assert noisy.difference == pytest.approx(0.1)
    assert noisy.low < 0 < noisy.high and not noisy.beats
    lines = summary_lines({"model": "fedvpa-gp", "differences": [vars(noisy)]})
    assert lines[-1] == "beats non-private FedBTL on unseen users: no (the interval includes 0)"


def test_each_bootstrap_resample_pools_its_own_clients_pairs():
    """A client with 10 pairs (+10 correct) and one with 1,000 (no difference): a quarter of the
    resamples draw the small client twice, so the upper bound is its own difference, 1.0."""
    run = [
        EvalUnit(partition_id=0, user=-1, role="unseen", pairs=10, correct=10.0),
        EvalUnit(partition_id=1, user=-1, role="unseen", pairs=1000, correct=500.0),
    ]
    base = [
        EvalUnit(partition_id=0, user=-1, role="unseen", pairs=10, correct=0.0),
        EvalUnit(partition_id=1, user=-1, role="unseen", pairs=1000, correct=500.0),
    ]
    d = paired_difference(run, base, role="unseen")
    assert d.difference == pytest.approx(10 / 1010)
    assert d.high == pytest.approx(1.0) and d.low == pytest.approx(0.0)


def test_paired_difference_refuses_runs_on_different_clients_or_pairs():
    with pytest.raises(RunDirError, match="same 'unseen' units"):
        paired_difference(_counts([1, 2]), _counts([1, 2], pairs=99), role="unseen")
    with pytest.raises(RunDirError, match="same 'unseen' units"):
        paired_difference(_counts([1, 2]), _counts([1]), role="unseen")
    with pytest.raises(RunDirError, match="same 'train' units"):
        paired_difference(_counts([1, 2]), _counts([1, 2]), role="train")


def test_the_reference_is_non_private_fedbtl_on_the_same_data_and_rounds():
    cfg = config_from_dict(
        {
            "seed": 3,
            "data": {"source": "synth", "users": 40},
            "model": {"kind": "fedvpa-gp", "input_projection": 64, "hidden": 32},
            "federation": {"mode": "simulation", "rounds": 7, "local_steps": 1,
                           "users_per_client": 4},
            "privacy": {"enabled": True, "noise": "distributed", "sample_rate": 0.1},
            "secagg": {"enabled": True},
        }
    )  # fmt: skip
    ref = config_from_dict(baseline_config(cfg))
    assert ref.model.kind == "btl" and ref.model.input_projection == 0
    assert not ref.privacy.enabled and not ref.secagg.enabled
    assert ref.federation.mode == "inprocess"
    assert (ref.seed, ref.data, ref.train) == (cfg.seed, cfg.data, cfg.train)
    assert ref.federation.rounds == 7 and ref.federation.users_per_client == 4


def test_run_with_baseline_prints_epsilon_the_comparison_and_the_report(tmp_path, capsys):
    out = tmp_path / "run"
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        """
seed = 0
[data]
source = "synth"
users = 60
pairs_per_user = 16
[model]
kind = "fedvpa-gp"
input_projection = 32
hidden = 16
[train]
lr = 1.0
optimizer = "sgd"
[federation]
mode = "inprocess"
rounds = 2
local_steps = 1
users_per_client = 6
[privacy]
enabled = true
noise = "distributed"
sample_rate = 0.5
target_epsilon = 8.0
budget_epsilon = 8.0
delta = 1e-5
[secagg]
enabled = true
""",
        encoding="utf-8",
    )
    assert cli.main(["run", str(cfg), "--out", str(out), "--baseline", "fedbtl"]) == 0
    text = capsys.readouterr().out
    assert "epsilon spent: " in text and "per pair" in text and "replace_one" in text
    assert "unseen users: fedvpa-gp" in text and "vs non-private FedBTL" in text
    assert "beats non-private FedBTL on unseen users: " in text
    assert text.rstrip().splitlines()[-1].startswith("privacy report: ")
    comparison = json.loads((out / COMPARISON_FILE).read_text())
    assert {r["role"] for r in comparison["differences"]} == {"unseen", "train"}
    # the private run's counts came from the nodes' own logs (the server never had them), per
    # user, and the reference was evaluated on exactly the same users and pairs
    metrics = json.loads((out / "metrics.json").read_text())
    own = client_counts(out, metrics)
    ref = client_counts(
        out / BASELINE_DIR, json.loads((out / BASELINE_DIR / "metrics.json").read_text())
    )
    assert len(own) == 60 and all(u.user >= 0 for u in own)
    assert [(c.partition_id, c.user, c.role, c.pairs) for c in own] == [
        (c.partition_id, c.user, c.role, c.pairs) for c in ref
    ]
    unseen = next(r for r in comparison["differences"] if r["role"] == "unseen")
    assert unseen["unit"] == "user" and unseen["units"] == sum(u.role == "unseen" for u in own)
    acc = sum(c.correct for c in own if c.role == "unseen") / unseen["pairs"]
    assert unseen["accuracy"] == pytest.approx(acc)
    # the per-user counts add up to what the nodes aggregated for the operator
    node = json.loads((out / "node_evaluation.json").read_text())["final"]
    assert unseen["accuracy"] == pytest.approx(node["accuracy"]["unseen_users"])
