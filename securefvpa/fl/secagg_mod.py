"""Secure aggregation on the client: a Flower mod around the ClientApp's train handler.

Messages whose :class:`~securefvpa.fl.wire.Instruction` has ``secagg = true`` are handled here;
all others pass through.

- ``secagg-stage = "train"``: the wrapped train handler runs one local round (DP-SGD, guard,
  ledger as usual). Its update is *not* returned: the mod encodes it into the ring (fixed point
  ``[q(w * update), w, clipped count]``, or, with distributed noise, the ring vector the round
  produced) and keeps that vector on the node, sealed (see below); it replies with the scalars only,
  and, when the message carries the protocol's advertise-keys request, with the node's signed
  key advertisement (record ``secagg-reply``; one exchange fewer).
- ``secagg-stage = "protocol"``: one request of the Bonawitz et al. protocol
  (``securefvpa.secagg``), carried as bytes in ``secagg-payload``. The masked-input request is
  answered with the stored vector masked by the protocol, so the server only ever sees masked
  vectors and, at the end, the sum over the surviving clients; the sealed vector is then
  deleted (later requests neither need nor carry it). With distributed noise the client
  refuses to help unmask a sum of fewer than the ``t`` masked inputs its noise was sized for.

Where the vector waits: not in the node's Flower state, which Flower's simulation engine ships
to and from a Ray actor with every message (at d = 10^6 and n = 100 that cost the exchanges after
training 1.3 s per round: ``benchmarks/secagg.py --flower-large --degree 14``, README), but in
a file in the node's own directory, sealed with AES-256-GCM
under a fresh key that lives only in the node's state (:func:`_stash_ring`); the file's path is
rebuilt from the node's config, the run and a random token, never read from the state. The
file alone reveals nothing (a crash leaves ciphertext whose key is gone), an altered or swapped
file fails authentication (:class:`ProtocolAbort`), and the file is deleted once masked, when
the round aborts, and at the node's next training message in the same run.

Everything that decides what the client accepts comes from the client's side — its identity
key and roster (paths from its node config), and the policy (ring bits, vector length, graph
degree, threshold fraction, fixed-point spec) derived from its own run config and the public
bounds in its node config — never from the server's message. The round state (secrets
included) lives in the node's Flower state between messages and is deleted when the round ends
or aborts. A client refuses a (session, round, attempt) it has already taken part in, so a
server cannot replay an old protocol instance against it, and offers one local update to at most
:data:`~securefvpa.secagg.client.MAX_INSTANCES_PER_INPUT` protocol instances
(:func:`~securefvpa.secagg.client.admit_instance`), so a server that aborts instances to re-draw
the SecAgg+ graph gets that many draws per update.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import cast

import numpy as np
from flwr.app import ConfigRecord, Context, Message
from flwr.clientapp.typing import ClientAppCallable

from securefvpa.errors import ProtocolAbort
from securefvpa.fl.node import NodeResolver
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
from securefvpa.rounds.encoding import RoundCodec, client_policy
from securefvpa.rundir import NodeConfig
from securefvpa.secagg import SecAggClient, admit_instance
from securefvpa.secagg.keys import load_identity, load_roster
from securefvpa.secagg.messages import MessageType, peek_type
from securefvpa.secagg.primitives import open_sealed, seal

STATE_KEY = "secagg-round"  # ConfigRecord: the protocol client's state (secret)
# ConfigRecord: the key and file token of this round's sealed ring vector (secret; gone once
# masked). The file's path is rebuilt from the node's own config, never read from the state.
RING_KEY = "secagg-ring"
LENGTH_KEY = "secagg-length"  # ConfigRecord: the ring vector's length (public)
USED_KEY = "secagg-used"  # ConfigRecord: (session, round) pairs already taken part in
_RING_DTYPES = ("uint32", "uint64")  # the ring's words (secagg.bits 32 or 64)
_STASH_PREFIX = ".secagg-ring-"
_TOKEN_HEX = 32  # a 128-bit random file token, in hex


def _stash_dir(node: NodeConfig) -> Path:
    """The node's own directory: beside its evaluation log, else beside its identity key; it
    must be absolute (a relative one would follow the process's working directory)."""
    own = node.eval_log or node.identity
    if not own or not Path(own).is_absolute():
        raise ProtocolAbort(
            "this node's config names no absolute eval_log or identity path: no directory of "
            "its own to keep its sealed update in"
        )
    return Path(own).parent


def _stash_name(run_id: int, partition_id: int, token: str) -> str:
    return f"{_STASH_PREFIX}{run_id}-{partition_id}-{token}"


def _drop_stashes(context: Context, node: NodeConfig) -> None:
    """Delete every stash of this node in this run (never another run's or another node's)."""
    with contextlib.suppress(OSError, ProtocolAbort):
        for old in _stash_dir(node).glob(_stash_name(context.run_id, node.partition_id, "*")):
            old.unlink(missing_ok=True)


def _stash_ring(context: Context, node: NodeConfig, ring: np.ndarray) -> None:
    """Seal ``ring`` (AES-256-GCM under a fresh key; associated data: run, node, file token,
    word type, length) into a new owner-only file of the node's own directory; only the key
    and the token go into the node's state (``RING_KEY``). The training stage's :func:`_clear`
    has already deleted this node's earlier stashes in this run (a crashed or abandoned round)."""
    directory = _stash_dir(node)
    key, token = os.urandom(32), os.urandom(_TOKEN_HEX // 2).hex()
    dtype = np.dtype(ring.dtype).name
    aad = _associated_data(context, node, token, dtype, int(ring.size))
    sealed = seal(key, os.urandom(12), np.ascontiguousarray(ring).tobytes(), aad)
    # Owner-only, never an existing file (O_EXCL), and no fsync: after a crash the key is gone
    # with the node's state, so a durable or even complete file would be of no use.
    path = directory / _stash_name(context.run_id, node.partition_id, token)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(sealed)
    context.state.config_records[RING_KEY] = ConfigRecord(
        {"key": key, "token": token, "dtype": dtype, "size": int(ring.size)}
    )


def _associated_data(
    context: Context, node: NodeConfig, token: str, dtype: str, size: int
) -> bytes:
    return f"securefvpa ring {context.run_id} {node.partition_id} {token} {dtype} {size}".encode()


def _take_ring(context: Context, node: NodeConfig) -> np.ndarray:
    """Open this node's stash, or raise :class:`ProtocolAbort` (record missing or malformed;
    file missing, altered, or another node's, run's or round's)."""
    rec = context.state.config_records.get(RING_KEY)
    if rec is None:
        raise ProtocolAbort("masked input requested, but this node's input is gone")
    key, token, dtype, size = rec.get("key"), rec.get("token"), rec.get("dtype"), rec.get("size")
    if not (
        isinstance(key, bytes)
        and len(key) == 32
        and isinstance(token, str)
        and len(token) == _TOKEN_HEX
        and all(ch in "0123456789abcdef" for ch in token)
        and dtype in _RING_DTYPES
        and isinstance(size, int)
        and not isinstance(size, bool)
        and size >= 0
    ):
        raise ProtocolAbort("this node's record of its sealed input is malformed")
    path = _stash_dir(node) / _stash_name(context.run_id, node.partition_id, token)
    try:
        sealed = path.read_bytes()
    except OSError as exc:
        raise ProtocolAbort(f"this node's sealed input cannot be read ({exc.strerror})") from exc
    try:
        plain = open_sealed(key, sealed, _associated_data(context, node, token, str(dtype), size))
    except ProtocolAbort as exc:
        raise ProtocolAbort("this node's sealed input failed authentication") from exc
    ring = np.frombuffer(plain, dtype=str(dtype))
    if ring.size != size:  # pragma: no cover - the size is authenticated
        raise ProtocolAbort(f"this node's sealed input has {ring.size} words, not {size}")
    return ring


def _clear(context: Context, node: NodeConfig) -> None:
    """Forget this node's round: protocol state, the stash's key, the stash file(s)."""
    context.state.config_records.pop(STATE_KEY, None)
    context.state.config_records.pop(LENGTH_KEY, None)
    context.state.config_records.pop(RING_KEY, None)
    _drop_stashes(context, node)


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
    """Run the local round and keep its ring vector on the node, sealed (nothing leaves).

    Distributed noise: the round already produced the ring vector (rounded units + this
    client's noise share). Otherwise the weighted update is encoded here in fixed point, its
    clipped coordinates counted (``secagg.quantization``). When the message also carries the
    protocol's advertise-keys request (``secagg-payload``), a node that trained answers it in
    the same reply (record ``secagg-reply``), exactly as it would in a protocol exchange; any
    other request there is refused."""
    node, client = resolver.resolve(context)
    _clear(context, node)
    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    rec = get_config(reply.content, REPLY, TrainReply)
    if rec.status == STATUS_OK:
        arrays = get_arrays(reply.content)
        if RING in arrays:
            ring = np.ascontiguousarray(arrays[RING])
        else:
            w = rec.num_examples
            codec = RoundCodec.for_run(
                client.cfg,
                clip_range=node.clip_range,
                max_weight=node.max_train_pairs,
                max_clients=node.train_clients,
            )
            ring = codec.encode_update(
                {k: np.asarray(v, dtype=np.float64) / w for k, v in arrays.items()}, w
            )
        _stash_ring(context, node, ring)
        # "instances": protocol instances this input was offered to (admit_instance)
        context.state.config_records[LENGTH_KEY] = ConfigRecord(
            {"length": int(ring.size), "instances": 0}
        )
        if ins.secagg_payload is not None:
            if peek_type(ins.secagg_payload) != MessageType.ADVERTISE_KEYS_REQUEST:
                _clear(context, node)
                raise ProtocolAbort("a training message may carry only the advertise-keys request")
            advert = _handle_protocol(context, ins, resolver)
            content = make_content(reply=rec)
            content.config_records[SECAGG_REPLY] = ConfigRecord(
                ProtocolReply(secagg_payload=advert).to_values()
            )
            return Message(content, reply_to=msg)
    return Message(make_content(reply=rec), reply_to=msg)


def _protocol_stage(
    msg: Message, context: Context, ins: Instruction, resolver: NodeResolver
) -> Message:
    out = _handle_protocol(context, ins, resolver)
    return Message(make_content(reply=ProtocolReply(secagg_payload=out)), reply_to=msg)


def _handle_protocol(context: Context, ins: Instruction, resolver: NodeResolver) -> bytes:
    """One protocol request (``ins.secagg_payload``) against this node's state; the reply bytes.
    The state is kept for the next request, or deleted when the round ends or aborts."""
    node, client = resolver.resolve(context)
    resolver.check(node, ins.config_hash)
    if ins.secagg_payload is None or ins.secagg_session is None:
        raise ProtocolAbort("protocol message without secagg-payload or secagg-session")
    payload = ins.secagg_payload
    if LENGTH_KEY not in context.state.config_records:
        raise ProtocolAbort("no local update for this round: the train stage did not run here")
    # The policy needs only the length; the vector itself (megabytes at d = 10^6) is opened only
    # for the masked-input request and its sealed file deleted once masked.
    length = int(context.state.config_records[LENGTH_KEY]["length"])  # type: ignore[arg-type]
    cfg = client.cfg
    identity = load_identity(Path(node.identity))
    roster = load_roster(Path(node.roster))
    min_survivors = int(node.distributed.get("threshold", 0))
    policy = client_policy(
        cfg,
        vector_length=length,
        max_participants=node.train_clients,
        min_survivors=min_survivors,
    )
    try:
        if peek_type(payload) == MessageType.ADVERTISE_KEYS_REQUEST:
            tag = f"{ins.secagg_session}:{ins.round}:{ins.attempt}"
            used = context.state.config_records.get(USED_KEY, ConfigRecord({"pairs": []}))
            if tag in list(cast("list[str]", used["pairs"])):
                raise ProtocolAbort("this (session, round) was already run here: replay refused")
            used["pairs"] = [*list(cast("list[str]", used["pairs"]))[-63:], tag]
            context.state.config_records[USED_KEY] = used
            # One input joins at most MAX_INSTANCES_PER_INPUT instances: a server that aborts
            # rounds to re-draw the neighbour graph gets that many draws, then the input is
            # discarded (ProtocolAbort below clears it). Counted before the instance starts.
            meta = context.state.config_records[LENGTH_KEY]
            meta["instances"] = admit_instance(int(meta.get("instances", 0)))  # type: ignore[arg-type]
            context.state.config_records[LENGTH_KEY] = meta
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
                bytes(cast(bytes, state)),
                identity_key=identity,
                roster=roster,
                policy=policy,  # type: ignore[arg-type]
            )
        masking = sac.needs_input
        x = None
        if masking:
            x = _take_ring(context, node)
        out = sac.handle(payload, input_vector=x)
    except ProtocolAbort:
        _clear(context, node)
        raise
    if sac.phase.value in ("done", "aborted"):
        _clear(context, node)
    else:
        context.state.config_records[STATE_KEY] = ConfigRecord({"state": sac.export_state()})
        if masking:  # sent masked: the plain vector is never needed again
            context.state.config_records.pop(RING_KEY, None)
            _drop_stashes(context, node)
    return out
