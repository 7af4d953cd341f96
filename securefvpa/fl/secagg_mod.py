"""Secure aggregation on the client: a Flower mod around the ClientApp's train handler.

Messages whose config has ``secagg = true`` are handled here; all others pass through.

- ``secagg-stage = "train"``: the wrapped train handler runs one local round (DP-SGD, guard,
  ledger as usual). Its update ``w * delta`` is *not* returned: the mod keeps ``delta`` and
  ``w`` in the node's own state and replies with the scalar statistics only.
- ``secagg-stage = "protocol"``: one request of the Bonawitz et al. protocol
  (``securefvpa.secagg``), carried as bytes in ``secagg-payload``. The masked-input request is
  answered with ``encode(delta, spec, weight=w)`` masked by the protocol, so the server only
  ever sees masked vectors and, at the end, the sum over the surviving clients.

Everything that decides what the client accepts comes from the client's side — its identity
key, the roster, and the policy (ring bits, vector length, graph degree, threshold fraction,
fixed-point spec) derived from the run config and manifest — never from the server's message.
The round state (secrets included) lives in the node's Flower state between messages and is
deleted when the round ends or aborts. A client refuses a (session, round) it has already
taken part in, so a server cannot replay an old protocol instance against it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Message
from flwr.clientapp.typing import ClientAppCallable

from securefvpa.config import RunConfig
from securefvpa.errors import FederationError, ProtocolAbort
from securefvpa.fl.messages import (
    STATUS_OK,
    arrays_to_record,
    config_value,
    get_record,
    make_content,
    record_to_arrays,
)
from securefvpa.secagg import ClientPolicy, SecAggClient
from securefvpa.secagg.quantization import FixedPointSpec, encode

STATE_KEY = "secagg-round"  # ConfigRecord: the protocol client's state (secret)
UPDATE_KEY = "secagg-update"  # ArrayRecord: this round's delta (secret until masked)
WEIGHT_KEY = "secagg-weight"  # ConfigRecord: this round's weight (example count)
USED_KEY = "secagg-used"  # ConfigRecord: (session, round) pairs already taken part in


def fixed_point_spec(cfg: RunConfig, manifest: dict[str, Any]) -> FixedPointSpec:
    """The encoding both sides derive from the config and the manifest (never from messages)."""
    return FixedPointSpec.fit(
        clip=cfg.secagg.clip_range,
        bits=cfg.secagg.bits,
        max_weight=int(manifest["max_train_pairs"]),
        max_clients=int(manifest["train_clients"]),
    )


def session_id(config_hash: str, nonce: str) -> bytes:
    return hashlib.sha256(
        b"securefvpa/secagg/session\x00" + config_hash.encode() + b"\x00" + nonce.encode()
    ).digest()


def flatten(arrays: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(arrays[k], dtype=np.float64).ravel() for k in sorted(arrays)])


def unflatten(vector: np.ndarray, like: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out, i = {}, 0
    for k in sorted(like):
        n = like[k].size
        out[k] = vector[i : i + n].reshape(like[k].shape)
        i += n
    if i != vector.size:
        raise FederationError(f"aggregate has {vector.size} values, the model {i}")
    return out


def _identity_and_roster(
    context: Context, run_dir: Path, node_id: int
) -> tuple[Any, dict[int, bytes]]:
    from securefvpa.fl.secagg_keys import identity_path, load_identity, load_roster, roster_path

    ident = context.node_config.get("secagg-identity") or identity_path(run_dir, node_id)
    roster = context.node_config.get("secagg-roster") or roster_path(run_dir)
    return load_identity(Path(str(ident))), load_roster(Path(str(roster)))


def _policy(cfg: RunConfig, manifest: dict[str, Any], vector_length: int) -> ClientPolicy:
    return ClientPolicy(
        vector_length=vector_length,
        bits=cfg.secagg.bits,
        degree=cfg.secagg.degree,
        threshold_fraction=cfg.secagg.threshold,
        max_participants=max(3, int(manifest["train_clients"])),
    )


def _clear(context: Context) -> None:
    context.state.config_records.pop(STATE_KEY, None)
    context.state.array_records.pop(UPDATE_KEY, None)
    context.state.config_records.pop(WEIGHT_KEY, None)


def secagg_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    cfg_rec = msg.content.config_records.get("config")
    if cfg_rec is None or not cfg_rec.get("secagg", False):
        return call_next(msg, context)
    stage = config_value(cfg_rec, "secagg-stage", str)
    if stage == "train":
        return _train_stage(msg, context, call_next)
    if stage == "protocol":
        return _protocol_stage(msg, context)
    raise FederationError(f"unknown secagg-stage {stage!r}")


def _train_stage(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    _clear(context)
    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    rec = dict(get_record(reply.content, "reply", "config"))
    if rec.get("status") == STATUS_OK:
        weighted = record_to_arrays(get_record(reply.content, "arrays", "arrays"))
        w = int(rec["num-examples"])
        # Kept as float32 (the parameters' own precision; the relative rounding, 6e-8, is far
        # below the fixed-point step): the node state travels with every protocol message.
        delta = {
            k: (np.asarray(v, dtype=np.float64) / w).astype(np.float32) for k, v in weighted.items()
        }
        context.state.array_records[UPDATE_KEY] = arrays_to_record(delta)
        context.state.config_records[WEIGHT_KEY] = ConfigRecord({"weight": w})
    return Message(make_content(reply=rec), reply_to=msg)


def _protocol_stage(msg: Message, context: Context) -> Message:
    from securefvpa.fl.client_app import node_partition
    from securefvpa.fl.driver import read_manifest
    from securefvpa.secagg.messages import MessageType, peek_type

    cfg, part, run_dir = node_partition(msg, context)
    cfg_rec = get_record(msg.content, "config", "config")
    payload = config_value(cfg_rec, "secagg-payload", bytes)
    if UPDATE_KEY not in context.state.array_records:
        raise ProtocolAbort("no local update for this round: the train stage did not run here")
    update = context.state.array_records[UPDATE_KEY]
    weight = int(context.state.config_records[WEIGHT_KEY]["weight"])
    manifest = read_manifest(run_dir)
    # The policy needs only the length; the update itself is read and flattened (megabytes at
    # d = 10^6) only for the masked-input request.
    length = sum(int(np.prod(a.shape)) for a in update.values())
    identity, roster = _identity_and_roster(context, run_dir, part.partition_id)
    policy = _policy(cfg, manifest, length + 1)
    try:
        if peek_type(payload) == MessageType.ADVERTISE_KEYS_REQUEST:
            sid = config_value(cfg_rec, "secagg-session", str)
            rnd = config_value(cfg_rec, "round", int)
            used = context.state.config_records.get(USED_KEY, ConfigRecord({"pairs": []}))
            tag = f"{sid}:{rnd}"
            if tag in list(used["pairs"]):
                raise ProtocolAbort("this (session, round) was already run here: replay refused")
            used["pairs"] = [*list(used["pairs"])[-63:], tag]
            context.state.config_records[USED_KEY] = used
            client = SecAggClient(
                node_id=part.partition_id,
                identity_key=identity,
                roster=roster,
                policy=policy,
                session_id=bytes.fromhex(sid),
                round_id=rnd,
            )
        else:
            if STATE_KEY not in context.state.config_records:
                raise ProtocolAbort("protocol message out of order: no round in progress")
            state = context.state.config_records[STATE_KEY]["state"]
            client = SecAggClient.restore(
                bytes(state), identity_key=identity, roster=roster, policy=policy
            )
        x = None
        if client.needs_input:
            vector = flatten(record_to_arrays(update))
            x = encode(vector, fixed_point_spec(cfg, manifest), weight=weight)
        out = client.handle(payload, input_vector=x)
    except ProtocolAbort:
        _clear(context)
        raise
    if client.phase.value in ("done", "aborted"):
        _clear(context)
    else:
        context.state.config_records[STATE_KEY] = ConfigRecord({"state": client.export_state()})
    return Message(make_content(reply={"secagg-payload": out}), reply_to=msg)


__all__ = ["fixed_point_spec", "flatten", "secagg_mod", "session_id", "unflatten"]
