"""Conversions between Flower records and plain Python/numpy values (the only wire format).

Every message between the ServerApp and ClientApps is a RecordDict with these records:
- ``"arrays"``: an ArrayRecord of named float arrays (global parameters, or a client's update);
- ``"config"``: a ConfigRecord with the round, the resolved run config (TOML text) and the run dir;
- ``"reply"``: a ConfigRecord a client answers with (status, counts, losses, epsilon).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from securefvpa.errors import FederationError

STATUS_OK = "ok"
STATUS_DECLINED = "declined"  # the budget guard refused the round: no training, no update


def arrays_to_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def record_to_arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


def get_record(content: RecordDict, name: str, kind: str) -> Any:
    store = content.array_records if kind == "arrays" else content.config_records
    if name not in store:
        raise FederationError(f"message has no {kind} record {name!r} (has {sorted(store)})")
    return store[name]


def config_value(record: ConfigRecord, key: str, typ: type) -> Any:
    if key not in record:
        raise FederationError(f"message config has no key {key!r}")
    value = record[key]
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise FederationError(f"message config {key!r} must be {typ.__name__}. Found {value!r}.")
    return value


def make_content(
    *, arrays: dict[str, np.ndarray] | None = None, **configs: dict[str, Any]
) -> RecordDict:
    content = RecordDict()
    if arrays is not None:
        content.array_records["arrays"] = arrays_to_record(arrays)
    for name, values in configs.items():
        content.config_records[name] = ConfigRecord(values)
    return content
