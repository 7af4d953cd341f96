"""The wire format between the ServerApp and the ClientApps, defined once for both sides.

Like Flower's ``secaggplus_constants``: the client app, its secure-aggregation mod, the server
app and the secure-aggregation workflow all import the keys and typed records from here, so
none of them imports another. Contract (never changes meaning):

* Message types: ``"query"`` (discovery), ``"train"`` (local round; secure-aggregation stages
  are ``train`` messages too), ``"evaluate"``.
* Every message is a RecordDict with at most these records:
  ``"arrays"`` (ArrayRecord: global parameters, or a client's weighted update ``w * update``),
  ``"config"`` (ConfigRecord, server to client: an :class:`Instruction`), and
  ``"reply"`` (ConfigRecord, client to server: a :class:`QueryReply`, :class:`TrainReply`,
  :class:`EvalReply` or :class:`ProtocolReply`).
* The server sends only what the protocol needs: the round, its attempt and the hash of the run
  config, which the client compares with its own (``securefvpa.rundir`` trust boundary). No
  path, no config text, no privacy setting ever travels from the server.

Every ``from_record`` checks types and ranges and raises :class:`FederationError` naming the key
and the value, so a malformed message from either side is a typed error.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, TypeVar

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from securefvpa.errors import FederationError
from securefvpa.train.client import STATUS_DECLINED, STATUS_OK, EvalCounts

# Flower node config keys (the node operator's, never a server's; see securefvpa.fl.node)
NODE_CONFIG_KEY = "node-config"  # path of this node's NodeConfig file (securefvpa.rundir)
PARTITION_KEY = "partition-id"  # set by Flower's simulation engine and by --node-config

MSG_QUERY = "query"
MSG_TRAIN = "train"
MSG_EVALUATE = "evaluate"

ARRAYS = "arrays"
CONFIG = "config"
REPLY = "reply"
SECAGG_REPLY = "secagg-reply"  # a secure-aggregation reply riding on a training reply
RING = "ddg-ring"  # secure aggregation: the client's ring vector (never leaves the node unmasked)

STAGE_TRAIN = "train"  # secure aggregation: train, keep the update on the node
STAGE_PROTOCOL = "protocol"  # secure aggregation: one request of the protocol (bytes)
STATUSES = (STATUS_OK, STATUS_DECLINED)

__all__ = [
    "ARRAYS",
    "CONFIG",
    "MSG_EVALUATE",
    "MSG_QUERY",
    "MSG_TRAIN",
    "NODE_CONFIG_KEY",
    "PARTITION_KEY",
    "REPLY",
    "SECAGG_REPLY",
    "RING",
    "STAGE_PROTOCOL",
    "STAGE_TRAIN",
    "STATUSES",
    "STATUS_DECLINED",
    "STATUS_OK",
    "EvalKept",
    "EvalReply",
    "Instruction",
    "ProtocolReply",
    "QueryReply",
    "TrainReply",
    "arrays_to_record",
    "get_arrays",
    "get_config",
    "get_eval_reply",
    "make_content",
    "record_to_arrays",
]

R = TypeVar("R", bound="_Record")


def _key(name: str) -> str:
    return name.replace("_", "-")


class _Record:
    """A frozen dataclass <-> ConfigRecord with kebab-case keys; ``None`` fields are left out."""

    def to_values(self) -> dict[str, Any]:
        out = {}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if value is None:
                continue
            out[_key(f.name)] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_record(cls: type[R], record: ConfigRecord) -> R:
        values: dict[str, Any] = {}
        known = {_key(f.name): f for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(record) - set(known))
        if unknown:
            raise FederationError(f"{cls.__name__}: unknown keys {unknown}")
        for key, f in known.items():
            if key not in record:
                continue
            values[f.name] = _typed(cls.__name__, key, record[key], str(f.type))
        try:
            return cls(**values)
        except TypeError as exc:
            raise FederationError(f"{cls.__name__} is incomplete: {exc}") from None


def _typed(where: str, key: str, value: Any, annotation: str) -> Any:
    """Check ``value`` against the field annotation text (int, float, str, bool, bytes, tuple)."""
    base = annotation.replace(" | None", "")
    if base == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if base.startswith("tuple"):
        if not isinstance(value, list) or any(
            isinstance(v, bool) or not isinstance(v, int) for v in value
        ):
            raise FederationError(f"{where}: {key!r} must be a list of integers. Found {value!r}.")
        return tuple(value)
    typ = {"int": int, "float": float, "str": str, "bool": bool, "bytes": bytes}[base]
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise FederationError(f"{where}: {key!r} must be {typ.__name__}. Found {value!r}.")
    return value


@dataclass(frozen=True)
class Instruction(_Record):
    """Server to client: which round (and attempt) this is, and the run config hash to check."""

    round: int
    config_hash: str
    attempt: int = 1
    secagg: bool = False
    secagg_stage: str | None = None
    secagg_payload: bytes | None = None
    secagg_session: str | None = None

    def __post_init__(self) -> None:
        if self.round < 0 or self.attempt < 1:
            raise FederationError(
                f"Instruction: round must be >= 0 and attempt >= 1. Found {self.round}, "
                f"{self.attempt}."
            )
        if self.secagg_stage not in (None, STAGE_TRAIN, STAGE_PROTOCOL):
            raise FederationError(f"Instruction: unknown secagg-stage {self.secagg_stage!r}")


@dataclass(frozen=True)
class QueryReply(_Record):
    """Client to server at discovery: partition, role and public counts."""

    partition_id: int
    role: str
    train_pairs: int

    def __post_init__(self) -> None:
        if self.role not in ("train", "unseen") or self.partition_id < 0 or self.train_pairs < 0:
            raise FederationError(
                f"QueryReply: bad partition-id/role/train-pairs {self.partition_id}, "
                f"{self.role!r}, {self.train_pairs}"
            )


@dataclass(frozen=True)
class TrainReply(_Record):
    """Client to server after a local round (the update itself is the ``arrays`` record)."""

    status: str
    num_examples: int
    reason: str = ""
    train_loss: float | None = None  # absent under DP: the raw loss is not private
    epsilon: float | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise FederationError(f"TrainReply: unknown status {self.status!r}")
        if self.num_examples < 0:
            raise FederationError(
                f"TrainReply: num-examples must be >= 0. Found {self.num_examples}."
            )


@dataclass(frozen=True)
class EvalReply(_Record):
    """Client to server after evaluation: its role and :class:`EvalCounts` (counts only).

    Per-type correct counts travel as integers in half-pair units (``type-correct-halves[t] =
    2 * type_correct[t]``; a tie scores 1/2, so the value is exact) because record lists here
    hold integers only. A reply without per-type counts (``type-pairs`` absent) stays valid.
    """

    role: str
    pairs: int
    correct: float
    contro_pairs: int
    contro_correct: float
    users: int
    kl_sum: float
    cells: int
    types: int
    contingency: tuple[int, ...]
    type_pairs: tuple[int, ...] = ()
    type_correct_halves: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.cells < 0 or self.types < 0 or len(self.contingency) != self.cells * self.types:
            raise FederationError(
                f"EvalReply: contingency has {len(self.contingency)} cells, expected "
                f"{self.cells} x {self.types}"
            )
        n, halves = self.type_pairs, self.type_correct_halves
        if len(n) not in (0, self.types) or len(halves) != len(n):
            raise FederationError(
                f"EvalReply: type-pairs / type-correct-halves have {len(n)} / {len(halves)} "
                f"entries, expected 0 or types = {self.types} each"
            )
        bad = next(
            (t for t, (k, h) in enumerate(zip(n, halves)) if k < 0 or not 0 <= h <= 2 * k), None
        )
        if bad is not None:
            raise FederationError(
                f"EvalReply: type {bad} has {n[bad]} pairs and {halves[bad]} correct halves; "
                "need 0 <= halves <= 2 * pairs"
            )
        if sum(n) > self.pairs:
            raise FederationError(
                f"EvalReply: type-pairs sum to {sum(n)}, more than the {self.pairs} pairs scored"
            )

    @classmethod
    def of(cls, role: str, counts: EvalCounts) -> EvalReply:
        plain = {f.name: getattr(counts, f.name) for f in fields(EvalCounts)}
        correct = plain.pop("type_correct")
        halves = tuple(round(2.0 * x) for x in correct)
        if any(abs(2.0 * x - h) > 1e-6 for x, h in zip(correct, halves)):
            raise FederationError(
                f"EvalReply: type_correct must be multiples of 1/2 (ties score 1/2). Found "
                f"{correct!r}."
            )
        return cls(role=role, type_correct_halves=halves, **plain)

    def counts(self) -> EvalCounts:
        plain = {
            f.name: getattr(self, f.name) for f in fields(EvalCounts) if f.name != "type_correct"
        }
        return EvalCounts(**plain, type_correct=tuple(h / 2.0 for h in self.type_correct_halves))


@dataclass(frozen=True)
class EvalKept(_Record):
    """Client to server after evaluation with DP on: the counts stayed on the node (its own
    evaluation log); nothing about its held-out pairs is sent."""

    role: str
    kept_on_client: bool = True

    def __post_init__(self) -> None:
        if self.role not in ("train", "unseen") or self.kept_on_client is not True:
            raise FederationError(f"EvalKept: bad role/flag {self.role!r}, {self.kept_on_client!r}")


@dataclass(frozen=True)
class ProtocolReply(_Record):
    """Client to server: one secure-aggregation reply (protocol bytes)."""

    secagg_payload: bytes


def arrays_to_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def record_to_arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


def make_content(
    *,
    arrays: dict[str, np.ndarray] | None = None,
    config: Instruction | None = None,
    reply: _Record | None = None,
) -> RecordDict:
    content = RecordDict()
    if arrays is not None:
        content.array_records[ARRAYS] = arrays_to_record(arrays)
    if config is not None:
        content.config_records[CONFIG] = ConfigRecord(config.to_values())
    if reply is not None:
        content.config_records[REPLY] = ConfigRecord(reply.to_values())
    return content


def get_config(content: RecordDict, name: str, cls: type[R]) -> R:
    """The typed record ``cls`` from config record ``name``; FederationError when absent/bad."""
    if name not in content.config_records:
        raise FederationError(
            f"message has no config record {name!r} (has {sorted(content.config_records)})"
        )
    return cls.from_record(content.config_records[name])


def get_eval_reply(content: RecordDict) -> EvalReply | EvalKept:
    """A client's evaluation reply: its counts, or the notice that they stayed on the node."""
    reply = content.config_records.get(REPLY)
    if reply is not None and "kept-on-client" in reply:
        return get_config(content, REPLY, EvalKept)
    return get_config(content, REPLY, EvalReply)


def get_arrays(content: RecordDict) -> dict[str, np.ndarray]:
    if ARRAYS not in content.array_records:
        raise FederationError(
            f"message has no arrays record {ARRAYS!r} (has {sorted(content.array_records)})"
        )
    return record_to_arrays(content.array_records[ARRAYS])


def error_reason(message: Message, limit: int = 200) -> str:
    """The first ``limit`` characters of an error reply's reason, for the log (Flower's
    ``Error.reason`` may be None)."""
    return (message.error.reason or "no reason given")[:limit]
