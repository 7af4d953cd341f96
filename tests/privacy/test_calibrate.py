"""Noise calibration meets the target and is (nearly) the smallest sigma that does."""

from __future__ import annotations

import math

import pytest

from securefvpa.errors import AccountingError
from securefvpa.privacy.accountant import epsilon
from securefvpa.privacy.calibrate import calibrate_noise_multiplier
from securefvpa.privacy.events import DpSgdEvent

D = 1e-3


def planned(sigma, q, steps, rounds, relation):
    return [
        DpSgdEvent(
            client_id="x",
            round=r,
            noise_multiplier=sigma,
            sample_rate=q,
            steps=steps,
            clip=1.0,
            relation=relation,
        )
        for r in range(rounds)
    ]


@pytest.mark.parametrize(
    ("target", "q", "steps", "rounds", "relation", "accountant"),
    [
        (3.0, 0.1, 10, 5, "replace_one", "pld"),
        (1.0, 0.05, 5, 20, "add_remove_one", "pld"),
        (8.0, 0.5, 5, 10, "replace_one", "rdp"),
        (2.0, 0.02, 20, 10, "add_remove_one", "rdp"),
    ],
)
def test_calibrated_sigma_meets_target_and_is_tight(target, q, steps, rounds, relation, accountant):
    sigma = calibrate_noise_multiplier(
        target_epsilon=target,
        delta=1e-5,
        sample_rate=q,
        steps_per_round=steps,
        rounds=rounds,
        relation=relation,
        accountant=accountant,
        value_discretization_interval=D,
        tol=1e-3,
    )

    def eps(s):
        return epsilon(
            planned(s, q, steps, rounds, relation),
            1e-5,
            accountant=accountant,
            value_discretization_interval=D,
        )

    assert eps(sigma) <= target
    assert eps(sigma * 0.99) > target


def test_loose_target_returns_the_floor():
    sigma = calibrate_noise_multiplier(
        target_epsilon=1e6,
        delta=1e-5,
        sample_rate=0.01,
        steps_per_round=1,
        rounds=1,
        accountant="rdp",
    )
    assert sigma == 0.1


def test_unreachable_target_raises():
    with pytest.raises(AccountingError, match="unreachable"):
        calibrate_noise_multiplier(
            target_epsilon=1e-7,
            delta=1e-10,
            sample_rate=1.0,
            steps_per_round=1000,
            rounds=1000,
            accountant="rdp",
        )


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"target_epsilon": 0.0}, "target_epsilon"),
        ({"target_epsilon": -1.0}, "target_epsilon"),
        ({"target_epsilon": math.nan}, "target_epsilon"),
        ({"delta": 1.0}, "delta"),
        ({"sample_rate": 0.0}, "sample_rate"),
        ({"steps_per_round": 0}, "steps"),
        ({"rounds": 0}, "rounds"),
        ({"relation": "swap"}, "relation"),
        ({"accountant": "prv"}, "accountant"),
        ({"tol": 0.0}, "tol"),
    ],
)
def test_bad_arguments(kwargs, name):
    args = dict(target_epsilon=1.0, delta=1e-5, sample_rate=0.1, steps_per_round=1, rounds=1)
    with pytest.raises(AccountingError, match=name):
        calibrate_noise_multiplier(**{**args, **kwargs})
