"""The Flower ClientApp: a thin adapter from Messages to ``securefvpa.train.client``.

A node learns which partition it holds from its node config (``partition-id``; Flower's
simulation engine sets it, a SuperNode gets it from ``--node-config``) and reads only that
partition's file, from ``data-dir`` in its node config or ``RUN_DIR/partitions``. Handlers:

- ``query``: announce partition id, role ("train" / "unseen") and the number of train pairs;
- ``train``: one local round (see ``local_train_round``); the reply is the weighted update, or
  ``status = "declined"`` when the budget guard refuses the round;
- ``evaluate``: counts on held-out pairs (see ``local_evaluate``);
- secure-aggregation stages arrive as ``train`` messages and are handled by the mod
  ``securefvpa.fl.secagg_mod`` around the train handler.

Node config keys: ``partition-id`` (required), ``data-dir`` (where this node's partition file
is), ``config-hash`` (pin: refuse any run config with another hash, so a server cannot switch
DP or secure aggregation off), ``secagg-identity`` / ``secagg-roster`` (see secagg_mod).
"""

from __future__ import annotations

import functools
import hmac
import math
from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from securefvpa.config import RunConfig, config_from_dict, config_hash
from securefvpa.errors import FederationError
from securefvpa.fl.messages import (
    STATUS_OK,
    config_value,
    get_record,
    make_content,
    record_to_arrays,
)
from securefvpa.fl.partition import ClientPartition, load_partition
from securefvpa.fl.secagg_mod import secagg_mod

app = ClientApp()


@functools.lru_cache(maxsize=4)
def _parse_config(text: str) -> RunConfig:
    import tomllib

    return config_from_dict(tomllib.loads(text))


def node_partition(msg: Message, context: Context) -> tuple[RunConfig, ClientPartition, Path]:
    cfg_rec = get_record(msg.content, "config", "config")
    cfg = _parse_config(config_value(cfg_rec, "config-toml", str))
    pinned = context.node_config.get("config-hash")
    if pinned and not hmac.compare_digest(str(pinned), config_hash(cfg)):
        # The node operator pinned the config (privacy, secagg policy) this node agreed to;
        # a server sending any other config is refused before anything runs.
        raise FederationError(
            f"the server's run config has hash {config_hash(cfg)[:16]}…, but this node is pinned "
            f"to {str(pinned)[:16]}… (node config 'config-hash')"
        )
    run_dir = Path(config_value(cfg_rec, "run-dir", str))
    if "partition-id" not in context.node_config:
        raise FederationError(
            "node config has no 'partition-id' (start the SuperNode with --node-config 'partition-id=N')"
        )
    pid = int(context.node_config["partition-id"])
    data_dir = context.node_config.get("data-dir")
    part = _load_partition(str(data_dir) if data_dir else str(run_dir / "partitions"), pid)
    return cfg, part, run_dir


@functools.lru_cache(maxsize=8)
def _load_partition(directory: str, pid: int) -> ClientPartition:
    return load_partition(Path(directory), pid)


@app.query()
def query(msg: Message, context: Context) -> Message:
    _, part, _ = node_partition(msg, context)
    reply = {
        "partition-id": part.partition_id,
        "role": part.role,
        "train-pairs": part.n_train_pairs,
    }
    return Message(make_content(reply=reply), reply_to=msg)


def train_reply_content(msg: Message, context: Context) -> tuple[dict[str, object], dict | None]:
    """Run one local round; return the reply config values and ``w * delta`` (or None)."""
    from securefvpa.train.client import local_train_round

    cfg, part, run_dir = node_partition(msg, context)
    if part.role != "train":
        raise FederationError(f"partition {part.partition_id} holds unseen users and never trains")
    cfg_rec = get_record(msg.content, "config", "config")
    rnd = config_value(cfg_rec, "round", int)
    params = record_to_arrays(get_record(msg.content, "arrays", "arrays"))
    res = local_train_round(cfg, part, params, rnd=rnd, run_dir=run_dir)
    reply: dict[str, object] = {
        "status": res.status,
        "num-examples": res.num_examples,
        "reason": res.reason,
    }
    if math.isfinite(res.train_loss):  # absent with DP on: the raw loss is not private
        reply["train-loss"] = res.train_loss
    if res.epsilon is not None:
        reply["epsilon"] = float(res.epsilon)
    if res.delta is None:
        return reply, None
    return reply, {k: v * res.num_examples for k, v in res.delta.items()}


@app.train(mods=[secagg_mod])
def train(msg: Message, context: Context) -> Message:
    reply, update = train_reply_content(msg, context)
    if reply["status"] == STATUS_OK and update is not None:
        return Message(make_content(arrays=update, reply=reply), reply_to=msg)
    return Message(make_content(reply=reply), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    from securefvpa.train.client import local_evaluate

    cfg, part, _ = node_partition(msg, context)
    params = record_to_arrays(get_record(msg.content, "arrays", "arrays"))
    counts = local_evaluate(cfg, part, params)
    return Message(make_content(reply=counts | {"role": part.role}), reply_to=msg)
