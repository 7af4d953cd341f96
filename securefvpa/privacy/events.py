"""Privacy events: one immutable record per round of local DP-SGD a client ran.

Contract (never changes meaning within a schema version):

* One :class:`DpSgdEvent` is ``steps`` local DP-SGD steps of one client in one round. Each step
  Poisson-samples the client's *units* (episodes of preference pairs, or single pairs) with rate
  ``sample_rate``, clips each unit's gradient to L2 norm ``clip`` and adds Gaussian noise of
  standard deviation ``noise_multiplier * clip`` to the sum (Abadi et al. 2016, Algorithm 1).
* ``relation`` is the neighbouring relation of the guarantee:
  ``"replace_one"`` - substituting one preference pair (dataset size public). One pair lies in
  one unit, so a substitution changes one clipped unit gradient ``g -> g'`` with
  ``||g||, ||g'|| <= clip``.
  ``"add_remove_one"`` - adding or removing one pair, valid where one pair is one unit.
* ``attempt`` numbers the attempts of one round (1 = first). A round interrupted by a crash is
  re-run as attempt 2, 3, ... after ``--resume``; every attempt that ran is its own event and is
  counted once (its update may have left the client before the crash).
* ``noise_multiplier`` is sigma = noise std / per-unit norm bound ``clip`` under BOTH relations.
  It is *not* noise std / L2-sensitivity: under ``replace_one`` the sensitivity is ``2 * clip``.
  dp-accounting's PLD REPLACE adjacency models exactly this (the pair N(-C), N(+C)); see
  :mod:`securefvpa.privacy.accountant` and ``tests/privacy/test_accountant.py``.

Events serialise to canonical JSON (sorted keys, no whitespace, exact float repr) carrying
:data:`EVENT_SCHEMA_VERSION`; that text is what the ledger hashes. Schema 1 (before ``attempt``)
is still read, as attempt 1. Every field is keyword-only: swapping sigma and q cannot pass
silently.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Literal, get_args

import dp_accounting

from securefvpa.errors import AccountingError

Relation = Literal["replace_one", "add_remove_one"]
RELATIONS: tuple[str, ...] = get_args(Relation)
EVENT_SCHEMA_VERSION = 2  # 2: ``attempt`` (crash recovery); 1 is read as attempt 1
EVENT_KIND = "dp_sgd"
_MAX_CLIENT_ID_LEN = 256

_FIELDS = (
    "client_id",
    "round",
    "attempt",
    "noise_multiplier",
    "sample_rate",
    "steps",
    "clip",
    "relation",
)


def canonical_json(obj: Any) -> str:
    """Canonical JSON text: sorted keys, no whitespace, ASCII, finite floats only."""
    try:
        return json.dumps(
            obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
        )
    except ValueError as err:
        raise AccountingError(f"value cannot be encoded as canonical JSON: {err}") from err


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _finite_float(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AccountingError(f"{name} must be a real number. Found {value!r}.")
    out = float(value)
    if not math.isfinite(out):
        raise AccountingError(f"{name} must be finite. Found {value!r}.")
    return out


def check_client_id(client_id: object) -> str:
    """Validate a client id: a non-empty printable string of at most 256 characters."""
    if not isinstance(client_id, str) or not client_id:
        raise AccountingError(f"client_id must be a non-empty string. Found {client_id!r}.")
    if len(client_id) > _MAX_CLIENT_ID_LEN or not client_id.isprintable():
        raise AccountingError(
            f"client_id must be printable and at most {_MAX_CLIENT_ID_LEN} characters. "
            f"Found {client_id!r}."
        )
    return client_id


def check_relation(relation: object) -> str:
    if relation not in RELATIONS:
        raise AccountingError(f"relation must be one of {list(RELATIONS)}. Found {relation!r}.")
    return str(relation)


def neighboring_relation(relation: str) -> dp_accounting.NeighboringRelation:
    """The dp-accounting neighbouring relation for ``relation``."""
    check_relation(relation)
    if relation == "replace_one":
        return dp_accounting.NeighboringRelation.REPLACE_ONE
    return dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE


@dataclass(frozen=True, kw_only=True)
class DpSgdEvent:
    """``steps`` Poisson-sampled Gaussian DP-SGD steps of one client in one round attempt.

    Validated at construction; every error names the bad value. Keyword-only.
    """

    client_id: str
    round: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    clip: float
    relation: Relation = "replace_one"
    attempt: int = 1

    def __post_init__(self) -> None:
        check_client_id(self.client_id)
        if not _is_int(self.round) or self.round < 0:
            raise AccountingError(f"round must be an integer >= 0. Found {self.round!r}.")
        if not _is_int(self.attempt) or self.attempt < 1:
            raise AccountingError(f"attempt must be an integer >= 1. Found {self.attempt!r}.")
        sigma = _finite_float("noise_multiplier", self.noise_multiplier)
        if sigma <= 0.0:
            raise AccountingError(
                f"noise_multiplier must be > 0 (sigma = 0 is not private). "
                f"Found {self.noise_multiplier!r}."
            )
        q = _finite_float("sample_rate", self.sample_rate)
        if not 0.0 < q <= 1.0:
            raise AccountingError(f"sample_rate must be in (0, 1]. Found {self.sample_rate!r}.")
        if not _is_int(self.steps) or self.steps < 1:
            raise AccountingError(f"steps must be an integer >= 1. Found {self.steps!r}.")
        clip = _finite_float("clip", self.clip)
        if clip <= 0.0:
            raise AccountingError(f"clip must be > 0. Found {self.clip!r}.")
        check_relation(self.relation)
        # Normalise ints to floats so the canonical JSON of equal events is identical.
        object.__setattr__(self, "noise_multiplier", sigma)
        object.__setattr__(self, "sample_rate", q)
        object.__setattr__(self, "clip", clip)

    @property
    def signature(self) -> tuple[str, float, float]:
        """What the privacy cost of one step depends on: (relation, sigma, q)."""
        return (self.relation, self.noise_multiplier, self.sample_rate)

    def to_dp_event(self) -> dp_accounting.DpEvent:
        """``SelfComposed(PoissonSampled(q, Gaussian(sigma)), steps)`` for dp-accounting."""
        return dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(
                self.sample_rate, dp_accounting.GaussianDpEvent(self.noise_multiplier)
            ),
            self.steps,
        )

    def to_payload(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: getattr(self, name) for name in _FIELDS}
        out["schema_version"] = EVENT_SCHEMA_VERSION
        return out

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no whitespace): the text the ledger hashes."""
        return canonical_json(self.to_payload())

    @classmethod
    def from_payload(cls, payload: object) -> DpSgdEvent:
        if not isinstance(payload, dict):
            raise AccountingError(f"event payload must be a JSON object. Found {payload!r}.")
        version = payload.get("schema_version")
        if version not in (1, EVENT_SCHEMA_VERSION):
            raise AccountingError(
                f"event schema_version must be 1 or {EVENT_SCHEMA_VERSION}. Found {version!r}."
            )
        names = (
            _FIELDS
            if version == EVENT_SCHEMA_VERSION
            else tuple(f for f in _FIELDS if f != "attempt")
        )
        expected = set(names) | {"schema_version"}
        if set(payload) != expected:
            raise AccountingError(
                f"event payload keys must be {sorted(expected)}. Found {sorted(payload)}."
            )
        return cls(**{name: payload[name] for name in names})

    @classmethod
    def from_json(cls, text: str) -> DpSgdEvent:
        try:
            payload = json.loads(text)
        except (TypeError, ValueError) as err:
            raise AccountingError(f"event is not valid JSON: {text!r}") from err
        return cls.from_payload(payload)

