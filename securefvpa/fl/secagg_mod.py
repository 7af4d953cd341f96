"""Secure aggregation on the client: a Flower mod around the ClientApp's train handler.

Messages whose :class:`~securefvpa.fl.wire.Instruction` has ``secagg = true`` are handled here;
all others pass through. A round runs the Bonawitz et al. protocol (``securefvpa.secagg``),
carried as bytes in ``secagg-payload``, with training inside its masked-input step:

- ``secagg-stage = "protocol"``: one protocol request without training — advertise keys, (with
  SecAgg+) reveal the graph-seed contribution, share keys, and after the masked input the
  consistency check and unmasking. Before training the node knows its ring vector's length
  from its own model and config (:func:`_ring_length`), which is all the policy needs.
- ``secagg-stage = "train"``: the parameters with this node's masked-input request. The node
  first checks that it is in this (session, round, attempt) and waiting for its input, then
  runs the wrapped train handler (DP-SGD, guard, ledger as usual), which returns the round's
  ring vector (fixed point ``[q(w * update), w, clipped count]``, or, with distributed noise,
  the ring vector the round produced), masks it and replies with the scalars and the masked
  vector (record ``secagg-reply``). The plain update never leaves the handler: it is neither returned
  nor kept on the node between messages. A node that declines (budget) or fails is a dropout.

With distributed noise the client refuses to help unmask a sum of fewer than the ``t`` masked
inputs its noise was sized for.

Everything that decides what the client accepts comes from the client's side — its identity
key and roster (paths from its node config), and the policy (ring bits, vector length, graph
degree, threshold fraction, fixed-point spec) derived from its own run config and the public
bounds in its node config — never from the server's message. The round state (secrets
included) lives in the node's Flower state between messages and is deleted when the round ends
or aborts. A client refuses a (session, round, attempt) it has already taken part in, so a
server cannot replay an old protocol instance against it, and joins at most
:data:`~securefvpa.secagg.client.MAX_INSTANCES_PER_INPUT` protocol instances per input it masks
(:func:`~securefvpa.secagg.client.admit_instance`), so a server that aborts instances to re-draw
the SecAgg+ graph before anyone trains gets that many draws per update; each input is masked in
exactly one instance.
"""

from __future__ import annotations

import functools
import hmac
from pathlib import Path
from typing import cast

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from flwr.app import ConfigRecord, Context, Message
from flwr.clientapp.typing import ClientAppCallable

from securefvpa.errors import ProtocolAbort
from securefvpa.fl.node import NodeResolver, node_codec
from securefvpa.fl.wire import (
    CONFIG,
    REPLY,
    RING,
    SECAGG_REPLY,
    STAGE_PROTOCOL,
    STAGE_TRAIN,
    STATUS_OK,
    Instruction,
    ProtocolReply,
    TrainReply,
    get_arrays,
    get_config,
    make_content,
)
from securefvpa.rounds.encoding import client_policy
from securefvpa.rundir import NodeConfig
from securefvpa.secagg import ClientPolicy, SecAggClient, admit_instance
from securefvpa.secagg.client import load_roster as load_public_roster
from securefvpa.secagg.keys import load_identity, load_roster, parse_roster
from securefvpa.secagg.messages import MessageType, peek_type
from securefvpa.train.client import ClientNode, ddg_spec, model_dim

STATE_KEY = "secagg-round"  # ConfigRecord: the protocol client's state (secret)
# ConfigRecord: the instance this node joined, "session:round:attempt", and its ring length
LENGTH_KEY = "secagg-length"
USED_KEY = "secagg-used"  # ConfigRecord: (session, round) pairs already taken part in
# ConfigRecord: protocol instances joined since this node last sent a masked input
DRAWS_KEY = "secagg-draws"


def _clear(context: Context) -> None:
    """Forget this node's round: its protocol state (secrets) and the instance's record."""
    context.state.config_records.pop(STATE_KEY, None)
    context.state.config_records.pop(LENGTH_KEY, None)


def _ring_length(node: NodeConfig, client: ClientNode) -> int:
    """The length of this node's ring vector, from its own model and configs (the same codec
    the training stage encodes with; distributed noise: the rotation's padded dimension)."""
    if client.plan is not None and client.plan.distributed is not None:
        return ddg_spec(client).padded_dim
    return node_codec(node, client).vector_length(model_dim(client))


def make_secagg_mod(resolver: NodeResolver):  # type: ignore[no-untyped-def]
    """The secure-aggregation mod for nodes found by ``resolver``."""

    def secagg_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        if CONFIG not in msg.content.config_records:
            return call_next(msg, context)
        ins = get_config(msg.content, CONFIG, Instruction)
        if not ins.secagg:
            return call_next(msg, context)
        if ins.secagg_stage == STAGE_TRAIN:
            return _train_stage(msg, context, ins, call_next, resolver)
        if ins.secagg_stage == STAGE_PROTOCOL:
            return _protocol_stage(msg, context, ins, resolver)
        raise ProtocolAbort(f"secure-aggregation message without a stage: {ins.secagg_stage!r}")

    return secagg_mod


def _train_stage(
    msg: Message,
    context: Context,
    ins: Instruction,
    call_next: ClientAppCallable,
    resolver: NodeResolver,
) -> Message:
    """Train, then answer this node's masked-input request (``secagg-payload``) in the same
    reply (record ``secagg-reply``); the plain update never leaves this function.

    Refused with :class:`ProtocolAbort` *before* training (no privacy budget spent): a payload
    that is not the masked-input request, or a node not waiting for its input in this
    (session, round, attempt). The train handler returns the round's ring vector (record
    ``ddg-ring``): with distributed noise the rounded units + this client's noise share,
    otherwise the update in fixed point (``fl.node.node_codec``); anything else is refused."""
    node, client = resolver.resolve(context)
    resolver.check(node, ins.config_hash)
    if ins.secagg_payload is None or peek_type(ins.secagg_payload) != (
        MessageType.MASKED_INPUT_REQUEST
    ):
        _clear(context)
        raise ProtocolAbort("a training message must carry this node's masked-input request")
    sac = _restore(context, ins, node, client)
    if not sac.needs_input:
        _clear(context)
        raise ProtocolAbort(f"masked input requested in phase {sac.phase.value}")
    reply = call_next(msg, context)
    rec = get_config(reply.content, REPLY, TrainReply) if not reply.has_error() else None
    if rec is None or rec.status != STATUS_OK:
        _clear(context)  # declined or failed: a dropout of this instance
        return reply
    arrays = get_arrays(reply.content)
    if set(arrays) != {RING}:
        _clear(context)
        raise ProtocolAbort("the train handler returned no ring vector to mask")
    ring = np.ascontiguousarray(arrays[RING])
    length = int(cast(int, context.state.config_records[LENGTH_KEY]["length"]))
    if ring.size != length:
        _clear(context)
        raise ProtocolAbort(
            f"this node's update has {ring.size} ring words; the instance agreed on {length}"
        )
    try:
        masked = sac.handle(ins.secagg_payload, input_vector=ring)
    except ProtocolAbort:
        _clear(context)
        raise
    # A masked input was sent: this node may join MAX_INSTANCES_PER_INPUT new instances
    # before its next one (admit_instance).
    context.state.config_records[DRAWS_KEY] = ConfigRecord({"instances": 0})
    _keep(context, sac)
    content = make_content(reply=rec)
    content.config_records[SECAGG_REPLY] = ConfigRecord(
        ProtocolReply(secagg_payload=masked).to_values()
    )
    return Message(content, reply_to=msg)


def _protocol_stage(
    msg: Message, context: Context, ins: Instruction, resolver: NodeResolver
) -> Message:
    out = _handle_protocol(context, ins, resolver)
    return Message(make_content(reply=ProtocolReply(secagg_payload=out)), reply_to=msg)


def _handle_protocol(context: Context, ins: Instruction, resolver: NodeResolver) -> bytes:
    """One protocol request without training (``ins.secagg_payload``) against this node's
    state; the reply bytes. The state is kept for the next request, or deleted when the round
    ends or aborts. The masked-input request comes only with the training message."""
    node, client = resolver.resolve(context)
    resolver.check(node, ins.config_hash)
    if ins.secagg_payload is None or ins.secagg_session is None:
        raise ProtocolAbort("protocol message without secagg-payload or secagg-session")
    payload = ins.secagg_payload
    try:
        if peek_type(payload) == MessageType.ADVERTISE_KEYS_REQUEST:
            _clear(context)  # a new instance replaces any earlier one on this node
            used = context.state.config_records.get(USED_KEY, ConfigRecord({"pairs": []}))
            if _tag(ins) in list(cast("list[str]", used["pairs"])):
                raise ProtocolAbort("this (session, round) was already run here: replay refused")
            used["pairs"] = [*list(cast("list[str]", used["pairs"]))[-63:], _tag(ins)]
            context.state.config_records[USED_KEY] = used
            # At most MAX_INSTANCES_PER_INPUT instances per masked input: a server that aborts
            # rounds to re-draw the neighbour graph before training gets that many draws, then
            # must let this node train and mask in one of them. Counted before the instance
            # starts, and reset only once a masked input was sent.
            draws = context.state.config_records.get(DRAWS_KEY, ConfigRecord({"instances": 0}))
            draws["instances"] = admit_instance(int(cast(int, draws.get("instances", 0))))
            context.state.config_records[DRAWS_KEY] = draws
            length = _ring_length(node, client)
            context.state.config_records[LENGTH_KEY] = ConfigRecord(
                {"length": length, "tag": _tag(ins)}
            )
            sac = SecAggClient(
                node_id=client.partition.partition_id,
                identity_key=load_identity(Path(node.identity)),
                roster=_roster(node),
                policy=_policy(node, client, length),
                session_id=bytes.fromhex(ins.secagg_session),
                round_id=ins.round,
            )
        else:
            sac = _restore(context, ins, node, client)
            if sac.needs_input:
                raise ProtocolAbort("the masked-input request comes only with the training message")
        out = sac.handle(payload)
    except ProtocolAbort:
        _clear(context)
        raise
    _keep(context, sac)
    return out


def _tag(ins: Instruction) -> str:
    return f"{ins.secagg_session}:{ins.round}:{ins.attempt}"


def _policy(node: NodeConfig, client: ClientNode, length: int) -> ClientPolicy:
    return client_policy(
        client.cfg,
        vector_length=length,
        max_participants=node.train_clients,
        min_survivors=int(node.distributed.get("threshold", 0)),
    )


def _restore(
    context: Context, ins: Instruction, node: NodeConfig, client: ClientNode
) -> SecAggClient:
    """This node's protocol client for the instance ``ins`` names, or :class:`ProtocolAbort`
    (no instance in progress, or another (session, round, attempt) than the one it joined)."""
    meta = context.state.config_records.get(LENGTH_KEY)
    if STATE_KEY not in context.state.config_records or meta is None:
        raise ProtocolAbort("protocol message out of order: no round in progress")
    if not hmac.compare_digest(str(meta.get("tag", "")).encode(), _tag(ins).encode()):
        raise ProtocolAbort("protocol message for another (session, round, attempt)")
    return SecAggClient.restore(
        bytes(cast(bytes, context.state.config_records[STATE_KEY]["state"])),
        identity_key=load_identity(Path(node.identity)),
        roster=_roster(node),
        policy=_policy(node, client, int(cast(int, meta["length"]))),
    )


def _roster(node: NodeConfig) -> dict[int, Ed25519PublicKey]:
    """The node's roster as public-key objects, read every message but parsed once per content
    (the protocol client takes the objects as they are; parsing 100 raw keys costs ~0.3 ms a
    message)."""
    path = Path(node.roster)
    try:
        raw = path.read_bytes()
    except OSError:
        return load_public_roster(load_roster(path))  # the loader names the file and the error
    return dict(_parsed_roster(raw, str(path)))


@functools.lru_cache(maxsize=8)
def _parsed_roster(raw: bytes, source: str) -> dict[int, Ed25519PublicKey]:
    return load_public_roster(parse_roster(raw, source=source))


def _keep(context: Context, sac: SecAggClient) -> None:
    """Store the protocol state for the next request, or forget the round once it ended."""
    if sac.phase.value in ("done", "aborted"):
        _clear(context)
    else:
        context.state.config_records[STATE_KEY] = ConfigRecord({"state": sac.export_state()})
