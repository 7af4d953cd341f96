"""The canonical preference record, shared by every data source, and its validation.

A record is one preference pair of one user: ``prompt``, the ``chosen`` and ``rejected`` responses
(final assistant turns, not whole dialogues), and the user's ``user_type`` when known (the hidden
context: e.g. ``"helpful"`` or ``"harmless"``). ``controversial`` is set by the generator when the
user types disagree on the pair, ``None`` when unknown. The privacy unit everywhere is one record.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from securefvpa.errors import DataError

REQUIRED_FIELDS = ("user_id", "pair_id", "prompt", "chosen", "rejected")
OPTIONAL_FIELDS = ("user_type", "controversial")


@dataclass(frozen=True)
class PreferenceRecord:
    user_id: str
    pair_id: str
    prompt: str
    chosen: str
    rejected: str
    user_type: str | None = None
    controversial: bool | None = None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        return {k: v for k, v in out.items() if v is not None or k in REQUIRED_FIELDS}

    @classmethod
    def from_json(cls, obj: Any, *, where: str) -> PreferenceRecord:
        """Validate one decoded JSON object; ``where`` (``"file:line"``) prefixes every error."""
        if not isinstance(obj, dict):
            raise DataError(f"{where}: a record must be a JSON object. Found {type(obj).__name__}.")
        unknown = sorted(set(obj) - set(REQUIRED_FIELDS) - set(OPTIONAL_FIELDS))
        if unknown:
            raise DataError(f"{where}: unknown field {unknown[0]!r}")
        for name in REQUIRED_FIELDS:
            if name not in obj:
                raise DataError(f"{where}: missing field {name!r}")
            value = obj[name]
            if not isinstance(value, str):
                raise DataError(f"{where}: field {name!r} must be a string. Found {value!r}.")
            if name != "prompt" and not value.strip():
                raise DataError(f"{where}: field {name!r} must not be empty")
        user_type = obj.get("user_type")
        if user_type is not None and (not isinstance(user_type, str) or not user_type):
            raise DataError(
                f"{where}: field 'user_type' must be a non-empty string. Found {user_type!r}."
            )
        controversial = obj.get("controversial")
        if controversial is not None and not isinstance(controversial, bool):
            raise DataError(
                f"{where}: field 'controversial' must be true or false. Found {controversial!r}."
            )
        if obj["chosen"] == obj["rejected"]:
            raise DataError(
                f"{where}: field 'chosen' equals field 'rejected' (pair {obj['pair_id']!r})"
            )
        return cls(
            user_id=obj["user_id"],
            pair_id=obj["pair_id"],
            prompt=obj["prompt"],
            chosen=obj["chosen"],
            rejected=obj["rejected"],
            user_type=user_type,
            controversial=controversial,
        )
