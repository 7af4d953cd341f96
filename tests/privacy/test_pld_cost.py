"""The PLD cost estimate against the arrays dp-accounting really builds, and the choice of a
coarser discretization (securefvpa.privacy.pld_cost)."""

from __future__ import annotations

import pytest
from dp_accounting.pld import privacy_loss_distribution as pld_lib

from securefvpa.errors import AccountingError
from securefvpa.privacy.accountant import epsilon
from securefvpa.privacy.events import DpSgdEvent
from securefvpa.privacy.pld_cost import (
    DEFAULT_MAX_POINTS,
    choose_discretization,
    estimate_pld_cost,
)

SETTINGS = [  # (sigma, q, steps, relation, interval): small enough to build for real
    (1.1, 0.01, 1000, "replace_one", 1e-3),
    (1.1, 0.01, 1000, "add_remove_one", 1e-3),
    (0.8, 0.2, 18, "replace_one", 1e-3),
    (2.0, 0.1, 300, "add_remove_one", 1e-3),
    (1.0, 0.5, 1, "replace_one", 1e-3),
]


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: "-".join(map(str, s)))
def test_estimate_matches_the_library_arrays(setting):
    """Mutants caught: a one-step size off by the relation's two PMFs, a composed size that
    ignores the Chernoff truncation (it would be steps x single) or scales wrongly with d."""
    sigma, q, steps, relation, d = setting
    est = estimate_pld_cost(
        noise_multiplier=sigma, sample_rate=q, steps=steps, relation=relation,
        value_discretization_interval=d,
    )
    rel = (
        pld_lib.NeighborRel.REPLACE_ONE if relation == "replace_one"
        else pld_lib.NeighborRel.ADD_OR_REMOVE_ONE
    )
    pld = pld_lib.from_gaussian_mechanism(
        standard_deviation=sigma, value_discretization_interval=d, sampling_prob=q,
        neighboring_relation=rel,
    )
    single = max(pld._pmf_remove.size, pld._pmf_add.size)
    assert est.single_step_points == single
    composed = pld.self_compose(steps) if steps > 1 else pld
    real = max(composed._pmf_remove.size, composed._pmf_add.size)
    assert 0.75 * real <= est.composed_points <= 1.25 * real + 2, (est, real)


def test_ordinary_settings_keep_the_requested_interval():
    ch = choose_discretization(noise_multiplier=1.1, sample_rate=0.01, steps=10_000,
                               relation="add_remove_one")
    assert ch.value_discretization_interval == 1e-4 and ch.note is None


def test_absurd_settings_are_coarsened_or_refused_with_the_numbers():
    """Mutant caught: a guard that never coarsens (the CLI tests then run out of memory)."""
    ch = choose_discretization(noise_multiplier=0.01, sample_rate=0.5, steps=10,
                               relation="add_remove_one")
    assert ch.value_discretization_interval is not None
    assert ch.value_discretization_interval > 1e-4
    assert ch.chosen is not None and ch.chosen.points <= DEFAULT_MAX_POINTS
    assert ch.requested.points > 1e8 and "GiB" in (ch.note or "")
    gone = choose_discretization(noise_multiplier=1e-3, sample_rate=0.01, steps=1,
                                 relation="add_remove_one")
    assert gone.value_discretization_interval is None and "RDP alone" in (gone.note or "")


def test_a_coarser_interval_is_still_an_upper_bound():
    """Pessimistic connect-the-dots at a coarser interval over-estimates epsilon, never under."""
    ev = DpSgdEvent(client_id="c", round=0, noise_multiplier=0.9, sample_rate=0.3, steps=20,
                    clip=1.0)
    fine = epsilon([ev], 1e-5, value_discretization_interval=1e-3)
    for d in (4e-3, 1e-2, 0.05):
        assert epsilon([ev], 1e-5, value_discretization_interval=d) >= fine - 1e-9


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"noise_multiplier": 0.0}, "noise_multiplier"),
        ({"sample_rate": 1.5}, "sample_rate"),
        ({"steps": 0}, "steps"),
        ({"relation": "add_one"}, "relation"),
    ],
)
def test_bad_arguments_are_named(kw, needle):
    args = {"noise_multiplier": 1.0, "sample_rate": 0.1, "steps": 3, **kw}
    with pytest.raises(AccountingError, match=needle):
        estimate_pld_cost(**args)
