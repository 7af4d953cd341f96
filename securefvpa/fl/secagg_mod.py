"""Secure aggregation on the client: a Flower mod around the ClientApp's train handler.

Messages whose :class:`~securefvpa.fl.wire.Instruction` has ``secagg = true`` are handled here;
all others pass through.

- ``secagg-stage = "train"``: the wrapped train handler runs one local round (DP-SGD, guard,
  ledger as usual). Its update ``w * update`` is *not* returned: the mod keeps ``update`` and
  ``w`` in the node's own state and replies with the scalar statistics only.
- ``secagg-stage = "protocol"``: one request of the Bonawitz et al. protocol
  (``securefvpa.secagg``), carried as bytes in ``secagg-payload``. The masked-input request is
  answered with ``encode(update, spec, weight=w)`` masked by the protocol, so the server only
  ever sees masked vectors and, at the end, the sum over the surviving clients.

Everything that decides what the client accepts comes from the client's side — its identity
key and roster (paths from its node config), and the policy (ring bits, vector length, graph
degree, threshold fraction, fixed-point spec) derived from its own run config and the public
bounds in its node config — never from the server's message. The round state (secrets
included) lives in the node's Flower state between messages and is deleted when the round ends
or aborts. A client refuses a (session, round, attempt) it has already taken part in, so a
server cannot replay an old protocol instance against it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, Context, Message
from flwr.clientapp.typing import ClientAppCallable

from securefvpa.errors import ProtocolAbort
from securefvpa.fl.node import NodeResolver
from securefvpa.fl.wire import (
    CONFIG,
    REPLY,
    STAGE_PROTOCOL,
    STAGE_TRAIN,
    STATUS_OK,
    Instruction,
    ProtocolReply,
    TrainReply,
    arrays_to_record,
    get_arrays,
    get_config,
    make_content,
    record_to_arrays,
)
from securefvpa.rounds.encoding import client_policy, fixed_point_spec, flatten
from securefvpa.secagg import SecAggClient
from securefvpa.secagg.keys import load_identity, load_roster
from securefvpa.secagg.messages import MessageType, peek_type
from securefvpa.secagg.quantization import encode

STATE_KEY = "secagg-round"  # ConfigRecord: the protocol client's state (secret)
UPDATE_KEY = "secagg-update"  # ArrayRecord: this round's update (secret until masked)
WEIGHT_KEY = "secagg-weight"  # ConfigRecord: this round's weight (example count)
USED_KEY = "secagg-used"  # ConfigRecord: (session, round) pairs already taken part in


def _clear(context: Context) -> None:
    context.state.config_records.pop(STATE_KEY, None)
    context.state.array_records.pop(UPDATE_KEY, None)
    context.state.config_records.pop(WEIGHT_KEY, None)


def make_secagg_mod(resolver: NodeResolver):  # type: ignore[no-untyped-def]
    """The secure-aggregation mod for nodes found by ``resolver``."""

    def secagg_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        if CONFIG not in msg.content.config_records:
            return call_next(msg, context)
        ins = get_config(msg.content, CONFIG, Instruction)
        if not ins.secagg:
            return call_next(msg, context)
        if ins.secagg_stage == STAGE_TRAIN:
            return _train_stage(msg, context, call_next)
        if ins.secagg_stage == STAGE_PROTOCOL:
            return _protocol_stage(msg, context, ins, resolver)
        raise ProtocolAbort(f"secure-aggregation message without a stage: {ins.secagg_stage!r}")

    return secagg_mod


def _train_stage(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    _clear(context)
    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    rec = get_config(reply.content, REPLY, TrainReply)
    if rec.status == STATUS_OK:
        weighted = get_arrays(reply.content)
        w = rec.num_examples
        # Kept as float32 (the parameters' own precision; the relative rounding, 6e-8, is far
        # below the fixed-point step): the node state travels with every protocol message.
        update = {
            k: (np.asarray(v, dtype=np.float64) / w).astype(np.float32) for k, v in weighted.items()
        }
        context.state.array_records[UPDATE_KEY] = arrays_to_record(update)
        context.state.config_records[WEIGHT_KEY] = ConfigRecord({"weight": w})
    return Message(make_content(reply=rec), reply_to=msg)


def _protocol_stage(
    msg: Message, context: Context, ins: Instruction, resolver: NodeResolver
) -> Message:
    node, client = resolver.resolve(context)
    resolver.check(node, ins.config_hash)
    if ins.secagg_payload is None or ins.secagg_session is None:
        raise ProtocolAbort("protocol message without secagg-payload or secagg-session")
    payload = ins.secagg_payload
    if UPDATE_KEY not in context.state.array_records:
        raise ProtocolAbort("no local update for this round: the train stage did not run here")
    update = context.state.array_records[UPDATE_KEY]
    weight = int(context.state.config_records[WEIGHT_KEY]["weight"])
    # The policy needs only the length; the update itself is read and flattened (megabytes at
    # d = 10^6) only for the masked-input request.
    length = sum(int(np.prod(a.shape)) for a in update.values())
    cfg = client.cfg
    identity = load_identity(Path(node.identity))
    roster = load_roster(Path(node.roster))
    policy = client_policy(cfg, vector_length=length + 1, max_participants=node.train_clients)
    try:
        if peek_type(payload) == MessageType.ADVERTISE_KEYS_REQUEST:
            tag = f"{ins.secagg_session}:{ins.round}:{ins.attempt}"
            used = context.state.config_records.get(USED_KEY, ConfigRecord({"pairs": []}))
            if tag in list(used["pairs"]):
                raise ProtocolAbort("this (session, round) was already run here: replay refused")
            used["pairs"] = [*list(used["pairs"])[-63:], tag]
            context.state.config_records[USED_KEY] = used
            sac = SecAggClient(
                node_id=client.partition.partition_id,
                identity_key=identity,
                roster=roster,
                policy=policy,
                session_id=bytes.fromhex(ins.secagg_session),
                round_id=ins.round,
            )
        else:
            if STATE_KEY not in context.state.config_records:
                raise ProtocolAbort("protocol message out of order: no round in progress")
            state = context.state.config_records[STATE_KEY]["state"]
            sac = SecAggClient.restore(
                bytes(state),
                identity_key=identity,
                roster=roster,
                policy=policy,  # type: ignore[arg-type]
            )
        x = None
        if sac.needs_input:
            vector = flatten(record_to_arrays(update))
            spec = fixed_point_spec(
                cfg, max_weight=node.max_train_pairs, max_clients=node.train_clients
            )
            x = encode(vector, spec, weight=weight)
        out = sac.handle(payload, input_vector=x)
    except ProtocolAbort:
        _clear(context)
        raise
    if sac.phase.value in ("done", "aborted"):
        _clear(context)
    else:
        context.state.config_records[STATE_KEY] = ConfigRecord({"state": sac.export_state()})
    return Message(make_content(reply=ProtocolReply(secagg_payload=out)), reply_to=msg)
