"""The privacy plan: delta and sigma resolved once (given vs calibrated), the guard over the
client's own ledger history, declines and attempts recorded."""

from __future__ import annotations

import dataclasses

import pytest

from securefvpa.config import config_from_dict
from securefvpa.errors import AccountingError, ConfigError, PrivacyBudgetExhausted, RunDirError
from securefvpa.privacy.accountant import epsilon
from securefvpa.privacy.ledger import Ledger
from securefvpa.privacy.plan import (
    DPSettings,
    PrivacyPlan,
    calibrated_noise_multiplier,
    given_noise_multiplier,
    planned_rounds,
    resolve_delta,
)
from securefvpa.rundir import NodeConfig


def _cfg(**privacy):
    return config_from_dict(
        {
            "federation": {
                "mode": "simulation",
                "rounds": 10,
                "fraction_fit": 0.5,
                "local_steps": 3,
            },
            "privacy": {"enabled": True, **privacy},
        }
    )


def test_delta_is_automatic_given_or_refused():
    assert resolve_delta(_cfg().privacy, max_train_pairs=100) == pytest.approx(1e-5)
    assert resolve_delta(_cfg().privacy, max_train_pairs=1_000_000) == pytest.approx(1e-7)
    assert resolve_delta(_cfg(delta=1e-3).privacy, max_train_pairs=100) == 1e-3
    with pytest.raises(ConfigError, match="1/records"):
        resolve_delta(_cfg(delta=0.02).privacy, max_train_pairs=100)


def test_given_and_calibrated_sigma_are_separate_paths():
    assert given_noise_multiplier(_cfg(noise_multiplier=1.7).privacy) == 1.7
    with pytest.raises(ConfigError, match="calibrated"):
        given_noise_multiplier(_cfg().privacy)
    with pytest.raises(ConfigError, match="leave it out"):
        _cfg(noise_multiplier=0.0)
    cfg = _cfg(target_epsilon=4.0)
    sigma = calibrated_noise_multiplier(cfg, delta=1e-5)
    plan = PrivacyPlan.resolve(cfg, max_train_pairs=100, ledger=None)  # type: ignore[arg-type]
    assert plan.noise_multiplier == sigma
    assert planned_rounds(cfg) == 5
    events = [plan.event(client_id="c", round=r) for r in range(1, 6)]
    assert (
        epsilon(events, 1e-5)
        <= 4.0
        < epsilon([dataclasses.replace(e, noise_multiplier=0.95 * sigma) for e in events], 1e-5)
    )


def test_authorize_commit_decline_and_attempts(tmp_path):
    cfg = _cfg(noise_multiplier=8.0, budget_epsilon=2.0, target_epsilon=2.0, sample_rate=0.5)
    plan = PrivacyPlan.resolve(cfg, max_train_pairs=100, ledger=tmp_path / "l.sqlite")
    first = plan.authorize(client_id="c", round=1)
    assert first.allowed and first.epsilon_now == 0.0
    plan.commit(client_id="c", round=1)
    # a crashed round re-run as attempt 2 is a new, counted event; the same attempt is refused
    with pytest.raises(AccountingError, match="already trained in round 1"):
        plan.authorize(client_id="c", round=1, attempt=1)
    again = plan.authorize(client_id="c", round=1, attempt=2)
    assert again.epsilon_now == pytest.approx(first.epsilon_if_trained)
    plan.commit(client_id="c", round=1, attempt=2)
    rnd = 2
    while True:
        try:
            plan.authorize(client_id="c", round=rnd)
        except PrivacyBudgetExhausted as exc:
            assert "budget" in str(exc)
            break
        plan.commit(client_id="c", round=rnd)
        rnd += 1
    with Ledger(plan.ledger) as led:
        kinds = [e.kind for e in led.entries()]
        history = led.events_by_client()["c"]
    assert kinds.count("declined") == 1 and kinds[-1] == "declined"
    assert [(e.round, e.attempt) for e in history][:2] == [(1, 1), (1, 2)]
    assert epsilon(history, plan.delta) <= 2.0  # never above budget


def test_a_node_follows_the_plan_in_its_node_config(tmp_path):
    cfg = _cfg(noise_multiplier=1.3)
    node = NodeConfig(
        partition_id=0,
        partition="p",
        config="c",
        config_hash="h",
        ledger=str(tmp_path / "l.sqlite"),
        noise_multiplier=1.3,
        delta=1e-6,
    )
    plan = PrivacyPlan.for_node(cfg, node)
    assert (plan.noise_multiplier, plan.delta, plan.local_steps) == (1.3, 1e-6, 3)
    assert plan.dp_settings() == DPSettings(noise_multiplier=1.3, clip=1.0, sample_rate=0.5)
    with pytest.raises(RunDirError, match="no privacy plan"):
        PrivacyPlan.for_node(cfg, dataclasses.replace(node, ledger=""))


def test_neighbouring_relation_is_the_configs_and_add_remove_is_for_users_only():
    """The relation every event carries and sigma is calibrated under comes from
    ``privacy.neighbouring_relation``; add/remove-one is refused for pairs (one added pair re-cuts
    its user's episodes) and, for users, needs less noise than replace-one at the same epsilon."""
    with pytest.raises(ConfigError, match="add_remove_one.*unit = 'user'.*'pair'"):
        _cfg(neighbouring_relation="add_remove_one")
    with pytest.raises(ConfigError, match="neighbouring_relation.*'swap'"):
        _cfg(neighbouring_relation="swap", unit="user")
    replace = PrivacyPlan.resolve(_cfg(unit="user"), max_train_pairs=100, ledger=None)  # type: ignore[arg-type]
    add_remove = PrivacyPlan.resolve(
        _cfg(unit="user", neighbouring_relation="add_remove_one"), max_train_pairs=100, ledger=None  # type: ignore[arg-type]
    )
    assert replace.relation == "replace_one"
    assert add_remove.relation == "add_remove_one"
    assert add_remove.event(client_id="c", round=1).relation == "add_remove_one"
    assert add_remove.noise_multiplier < 0.8 * replace.noise_multiplier
    events = [add_remove.event(client_id="c", round=r) for r in range(1, 6)]
    assert epsilon(events, 1e-5) == pytest.approx(8.0, rel=1e-2)
