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
:data:`~securefvpa.secagg.client.MAX_INSTANCES_PER_INPUT` SecAgg+ instances per round of its
own run (:func:`_admit`), so a server that aborts instances to re-draw the neighbour graph gets
that many draws per round's update. A node out of privacy budget declines at the advertisement,
before anyone trains. Every refusal is an error reply, not a raise (:func:`_refuse`): Flower
keeps a node's state only when its ClientApp returns, so this is what deletes the round.
"""

from __future__ import annotations

import functools
import hmac
import logging
from pathlib import Path
from typing import cast

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from flwr.app import ConfigRecord, Context, Error, Message
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.constant import ErrorCode

from securefvpa.errors import PrivacyBudgetExhausted, ProtocolAbort, SecureFVPAError
from securefvpa.fl.node import NodeResolver, node_codec
from securefvpa.fl.wire import (
    CONFIG,
    REPLY,
    RING,
    SECAGG_REPLY,
    STAGE_PROTOCOL,
    STAGE_TRAIN,
    STATUS_DECLINED,
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

log = logging.getLogger("securefvpa.fl.secagg")

STATE_KEY = "secagg-round"  # ConfigRecord: the protocol client's state (secret)
# ConfigRecord: the instance this node joined, "session:round:attempt", and its ring length
INSTANCE_KEY = "secagg-instance"
USED_KEY = "secagg-used"  # ConfigRecord: (session, round) pairs already taken part in
# ConfigRecord: the round number of every SecAgg+ instance this node joined (_admit)
DRAWS_KEY = "secagg-draws"


def _clear(context: Context) -> None:
    """Forget this node's round: its protocol state (secrets) and the instance's record."""
    context.state.config_records.pop(STATE_KEY, None)
    context.state.config_records.pop(INSTANCE_KEY, None)


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
            return call_next(msg, context)  # the train handler refuses it on a secagg node
        try:
            if ins.secagg_stage == STAGE_TRAIN:
                return _train_stage(msg, context, ins, call_next, resolver)
            if ins.secagg_stage == STAGE_PROTOCOL:
                return _protocol_stage(msg, context, ins, resolver)
            raise ProtocolAbort(f"secure-aggregation message without a stage: {ins.secagg_stage!r}")
        except Exception as exc:  # fail closed: whatever went wrong, the node leaves the round
            return _refuse(msg, context, exc)

    return secagg_mod


def _refuse(msg: Message, context: Context, exc: Exception) -> Message:
    """Forget the round and answer with an error reply (a dropout to the server).

    Replied, not raised: Flower keeps a node's state only when its ClientApp returns, so after
    a raise the round's secrets would stay in the state, and the instance and replay counters
    would roll back. A typed error gives its message; anything else only its type."""
    _clear(context)
    if isinstance(exc, SecureFVPAError):
        reason = f"{type(exc).__name__}: {exc}"
    else:
        reason = f"internal error ({type(exc).__name__})"
        log.error("secure aggregation failed on this node", exc_info=exc)
    return Message(
        Error(code=ErrorCode.MOD_FAILED_PRECONDITION, reason=f"secure aggregation: {reason}"),
        reply_to=msg,
    )


def _train_stage(
    msg: Message,
    context: Context,
    ins: Instruction,
    call_next: ClientAppCallable,
    resolver: NodeResolver,
) -> Message:
    """Train, then answer this node's masked-input request (``secagg-payload``) in the same
    reply (record ``secagg-reply``); the plain update never leaves this function.

    Refused *before* training (no privacy budget spent): a payload that is not the
    masked-input request, a node not waiting for its input in this (session, round, attempt),
    or a request the protocol client would refuse (addressee, share senders, quorum, relayed
    shares: ``SecAggClient.check_masked_input_request``). The train handler returns the
    round's ring vector (record ``ddg-ring``): with distributed noise the rounded units + this
    client's noise share, otherwise the update in fixed point (``fl.node.node_codec``);
    anything else is refused. Every refusal is a :class:`ProtocolAbort` that
    :func:`_refuse` turns into an error reply."""
    node, client = resolver.resolve(context)
    resolver.check(node, ins.config_hash)
    if ins.secagg_payload is None or peek_type(ins.secagg_payload) != (
        MessageType.MASKED_INPUT_REQUEST
    ):
        raise ProtocolAbort("a training message must carry this node's masked-input request")
    sac = _restore(context, ins, node, client)
    sac.check_masked_input_request(ins.secagg_payload)
    reply = call_next(msg, context)
    rec = get_config(reply.content, REPLY, TrainReply) if not reply.has_error() else None
    if rec is None or rec.status != STATUS_OK:
        _clear(context)  # declined or failed: a dropout of this instance
        return reply
    arrays = get_arrays(reply.content)
    if set(arrays) != {RING}:
        raise ProtocolAbort("the train handler returned no ring vector to mask")
    ring = np.ascontiguousarray(arrays[RING])
    length = int(cast(int, context.state.config_records[INSTANCE_KEY]["length"]))
    if ring.size != length:
        raise ProtocolAbort(
            f"this node's update has {ring.size} ring words; the instance agreed on {length}"
        )
    masked = sac.handle(ins.secagg_payload, input_vector=ring)
    _keep(context, sac)
    content = make_content(reply=rec)
    content.config_records[SECAGG_REPLY] = ConfigRecord(
        ProtocolReply(secagg_payload=masked).to_values()
    )
    return Message(content, reply_to=msg)


def _protocol_stage(
    msg: Message, context: Context, ins: Instruction, resolver: NodeResolver
) -> Message:
    try:
        out = _handle_protocol(context, ins, resolver)
    except PrivacyBudgetExhausted as exc:  # at the advertisement: declined, nothing joined
        declined = TrainReply(status=STATUS_DECLINED, num_examples=0, reason=str(exc))
        return Message(make_content(reply=declined), reply_to=msg)
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
    if peek_type(payload) == MessageType.ADVERTISE_KEYS_REQUEST:
        _clear(context)  # a new instance replaces any earlier one on this node
        rounds = client.cfg.federation.rounds
        if not 1 <= ins.round <= rounds:
            raise ProtocolAbort(f"round {ins.round} is outside this run's rounds 1..{rounds}")
        used = context.state.config_records.get(USED_KEY, ConfigRecord({"pairs": []}))
        if _tag(ins) in list(cast("list[str]", used["pairs"])):
            raise ProtocolAbort("this (session, round) was already run here: replay refused")
        _admit(context, ins, client)  # checks the count before anything is recorded
        used["pairs"] = [*list(cast("list[str]", used["pairs"]))[-63:], _tag(ins)]
        context.state.config_records[USED_KEY] = used
        if client.plan is not None:
            # the budget guard before the instance (PrivacyBudgetExhausted: the node declines
            # this round before it joins; the guard records the refusal), so a node that
            # cannot train never holds up an instance that others train in
            client.plan.authorize(client_id=client.client_id, round=ins.round, attempt=ins.attempt)
        length = _ring_length(node, client)
        context.state.config_records[INSTANCE_KEY] = ConfigRecord(
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
    _keep(context, sac)
    return out


def _admit(context: Context, ins: Instruction, client: ClientNode) -> None:
    """Count this instance against its round (SecAgg+ only; ProtocolAbort past the limit).

    Each SecAgg+ instance draws a fresh neighbour graph, and a server that aborts instances
    until a victim is surrounded by colluders gets one draw per instance. A node joins at most
    MAX_INSTANCES_PER_INPUT instances per round number (across attempts; the caller refuses
    round numbers outside its own run config), so the round's update (its one input) is
    exposed to at most that many draws. Counted in the node's state before the instance
    starts; honest aborts cost only that round. The complete graph (degree 0) has nothing to
    draw. The count lives in the node's Flower state, which Flower keeps for one run: a new
    run (or run series) starts new counts (``threat_models/secagg.md``)."""
    if client.cfg.secagg.degree == 0:
        return
    draws = context.state.config_records.get(DRAWS_KEY, ConfigRecord({"rounds": []}))
    joined = [int(r) for r in cast("list[int]", draws.get("rounds", []))]
    admit_instance(joined.count(ins.round))
    draws["rounds"] = [*joined, ins.round]
    context.state.config_records[DRAWS_KEY] = draws


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
    meta = context.state.config_records.get(INSTANCE_KEY)
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
