"""DpSgdEvent: validation names the bad value; canonical JSON round-trips exactly."""

from __future__ import annotations

import math

import dp_accounting
import pytest

from securefvpa.errors import AccountingError
from securefvpa.privacy.events import EVENT_SCHEMA_VERSION, DpSgdEvent

GOOD = dict(
    client_id="c1",
    round=3,
    noise_multiplier=1.1,
    sample_rate=0.25,
    steps=7,
    clip=1.0,
    relation="replace_one",
)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("client_id", ""),
        ("client_id", 5),
        ("client_id", "a\nb"),
        ("client_id", "x" * 257),
        ("round", -1),
        ("round", 1.0),
        ("round", True),
        ("noise_multiplier", 0.0),
        ("noise_multiplier", -1.0),
        ("noise_multiplier", math.inf),
        ("noise_multiplier", math.nan),
        ("noise_multiplier", "1.0"),
        ("noise_multiplier", True),
        ("sample_rate", 0.0),
        ("sample_rate", 1.5),
        ("sample_rate", -0.1),
        ("sample_rate", math.nan),
        ("steps", 0),
        ("steps", 2.0),
        ("steps", False),
        ("clip", 0.0),
        ("clip", -2.0),
        ("clip", math.inf),
        ("relation", "add_one"),
        ("relation", None),
    ],
)
def test_bad_field_is_rejected_with_its_value(field, value):
    with pytest.raises(AccountingError) as info:
        DpSgdEvent(**{**GOOD, field: value})
    assert field in str(info.value)
    assert repr(value)[:20] in str(info.value)


def test_canonical_json_round_trip_and_normalisation():
    ev = DpSgdEvent(**{**GOOD, "noise_multiplier": 2, "clip": 1})
    text = ev.to_json()
    assert text == (
        '{"attempt":1,"client_id":"c1","clip":1.0,"noise_multiplier":2.0,"relation":"replace_one",'
        f'"round":3,"sample_rate":0.25,"schema_version":{EVENT_SCHEMA_VERSION},"steps":7}}'
    )
    assert DpSgdEvent.from_json(text) == ev
    assert DpSgdEvent.from_json(text).to_json() == text


def test_schema_1_payload_reads_as_attempt_1():
    """Ledgers written before ``attempt`` existed still replay: schema 1 is attempt 1."""
    v1 = {**GOOD, "schema_version": 1}
    assert DpSgdEvent.from_payload(v1) == DpSgdEvent(**GOOD)
    with pytest.raises(AccountingError, match="payload keys"):
        DpSgdEvent.from_payload({**v1, "attempt": 1})


def test_fields_are_keyword_only():
    """Swapping sigma and q positionally must not pass silently: positions are refused."""
    with pytest.raises(TypeError):
        DpSgdEvent("c1", 3, 0.25, 2.0, 7, 1.0)  # type: ignore[misc]


@pytest.mark.parametrize("attempt", [0, -1, 1.0, True, "2"])
def test_bad_attempt_rejected(attempt):
    with pytest.raises(AccountingError, match="attempt"):
        DpSgdEvent(**{**GOOD, "attempt": attempt})


@pytest.mark.parametrize(
    "payload",
    [
        {**GOOD, "schema_version": 99},
        {**GOOD},
        {**GOOD, "schema_version": EVENT_SCHEMA_VERSION, "extra": 1},
        [1, 2],
    ],
)
def test_bad_payload_rejected(payload):
    with pytest.raises(AccountingError):
        DpSgdEvent.from_payload(payload)


def test_from_json_rejects_garbage():
    with pytest.raises(AccountingError, match="not valid JSON"):
        DpSgdEvent.from_json("{nope")


def test_to_dp_event_structure():
    ev = DpSgdEvent(**GOOD).to_dp_event()
    assert ev == dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(0.25, dp_accounting.GaussianDpEvent(1.1)), 7
    )


def test_event_is_immutable():
    ev = DpSgdEvent(**GOOD)
    with pytest.raises(AttributeError):
        ev.steps = 10  # type: ignore[misc]
