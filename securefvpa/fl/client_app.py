"""The Flower ClientApp: a thin adapter from Messages to ``securefvpa.train.client``.

A node knows itself from its node config only (:mod:`securefvpa.fl.node`): which partition it
holds, which run config it agreed to, its ledger, its keys. Handlers:

- ``query``: announce partition id, role ("train" / "unseen") and the number of train pairs;
- ``train``: one local round (``train.client.local_train_round``); the reply is the weighted
  update, or ``status = "declined"`` when the budget guard refuses the round;
- ``evaluate``: counts on held-out pairs (``train.client.local_evaluate``);
- secure-aggregation stages arrive as ``train`` messages and are handled by the mod
  (:mod:`securefvpa.fl.secagg_mod`) around the train handler.

Every message's run-config hash is checked against the node's own before anything runs, so a
server cannot switch DP or secure aggregation off or point the node at other files.
``make_client_app(nodes_dir)`` is what simulation uses; ``app`` (``[tool.flwr.app]``) is the
deployment app, which needs ``--node-config "node-config='/path/node.toml'"``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from securefvpa.errors import FederationError
from securefvpa.fl.node import NodeResolver, node_codec
from securefvpa.fl.secagg_mod import make_secagg_mod
from securefvpa.fl.wire import (
    CONFIG,
    RING,
    STATUS_OK,
    EvalKept,
    EvalReply,
    Instruction,
    QueryReply,
    TrainReply,
    get_arrays,
    get_config,
    make_content,
)
from securefvpa.train.client import evaluate_round, local_train_round

Handler = Callable[[Message, Context], Message]


@dataclass(frozen=True)
class ClientHandlers:
    """The three message handlers of a node (tests wrap them to inject faults)."""

    resolver: NodeResolver
    query: Handler
    train: Handler
    evaluate: Handler


def client_handlers(resolver: NodeResolver) -> ClientHandlers:
    """The query/train/evaluate handlers for nodes found by ``resolver``."""

    def instruction(msg: Message, context: Context) -> Instruction:
        node, _ = resolver.resolve(context)
        ins = get_config(msg.content, CONFIG, Instruction)
        resolver.check(node, ins.config_hash)
        return ins

    def query(msg: Message, context: Context) -> Message:
        instruction(msg, context)
        _, client = resolver.resolve(context)
        part = client.partition
        reply = QueryReply(
            partition_id=part.partition_id, role=part.role, train_pairs=part.n_train_pairs
        )
        return Message(make_content(reply=reply), reply_to=msg)

    def train(msg: Message, context: Context) -> Message:
        ins = instruction(msg, context)
        node, client = resolver.resolve(context)
        if ins.secagg != client.cfg.secagg.enabled:
            # The config hash does not cover this per-message flag: a server could otherwise ask
            # a secure-aggregation node for its update (or ring vector) in the clear.
            raise FederationError(
                f"the server asked for a round with secagg = {ins.secagg}; this node's run "
                f"config has secagg.enabled = {client.cfg.secagg.enabled}: nothing trained"
            )
        params = get_arrays(msg.content)
        res = local_train_round(client, params, rnd=ins.round, attempt=ins.attempt)
        reply = TrainReply(
            status=res.status,
            num_examples=res.num_examples,
            reason=res.reason,
            train_loss=res.train_loss if math.isfinite(res.train_loss) else None,
            epsilon=res.epsilon,
        )
        if res.status == STATUS_OK and res.ring is not None:
            # distributed noise: the ring vector; the secure-aggregation mod masks it in this
            # reply (distributed mode requires secure aggregation)
            return Message(make_content(arrays={RING: res.ring}, reply=reply), reply_to=msg)
        if res.status == STATUS_OK and res.update is not None and ins.secagg:
            # secure aggregation: the update in fixed point, [q(w * update), w, clipped count]
            # (secagg.quantization); the mod masks it in this reply. Encoded here, not in the
            # mod, so the float64 update is never serialised into a record and read back.
            ring = node_codec(node, client).encode_update(res.update, res.num_examples)
            return Message(make_content(arrays={RING: ring}, reply=reply), reply_to=msg)
        if res.status == STATUS_OK and res.update is not None:
            weighted = {k: v * res.num_examples for k, v in res.update.items()}
            return Message(make_content(arrays=weighted, reply=reply), reply_to=msg)
        return Message(make_content(reply=reply), reply_to=msg)

    def evaluate(msg: Message, context: Context) -> Message:
        instruction(msg, context)
        _, client = resolver.resolve(context)
        ins = get_config(msg.content, CONFIG, Instruction)
        counts = evaluate_round(client, get_arrays(msg.content), rnd=ins.round)
        if counts is None:  # DP on: the counts stay on the node
            return Message(make_content(reply=EvalKept(role=client.partition.role)), reply_to=msg)
        reply = EvalReply.of(client.partition.role, counts)
        return Message(make_content(reply=reply), reply_to=msg)

    return ClientHandlers(resolver, query, train, evaluate)


def make_client_app(nodes_dir: Path | None = None) -> ClientApp:
    """A ClientApp whose nodes read ``nodes_dir/node_<partition-id>.toml`` (simulation) or the
    file named by their Flower node config key ``node-config`` (deployment)."""
    h = client_handlers(NodeResolver(nodes_dir))
    app = ClientApp()
    app.query()(h.query)
    app.train(mods=[make_secagg_mod(h.resolver)])(h.train)
    app.evaluate()(h.evaluate)
    return app


app = make_client_app()
