"""How a ClientApp process finds its node: from its node config, never from a server message.

Deployment: the SuperNode's operator starts it with
``--node-config "partition-id=N node-config='/path/node_N.toml'"``; the file
(:class:`securefvpa.rundir.NodeConfig`) names every path the node reads or writes and its
privacy policy. Simulation: the launcher wrote one node config per partition into
``RUN_DIR/nodes/`` and builds the ClientApp with that folder (:class:`NodeResolver`), so the
simulated node reads ``nodes/node_<partition-id>.toml``. Either way the server's messages carry
only parameters, the round and a config hash, which :meth:`NodeResolver.check` compares in
constant time with the node's own.
"""

from __future__ import annotations

import functools
import hmac
from pathlib import Path

from flwr.app import Context

from securefvpa.errors import FederationError
from securefvpa.fl.wire import NODE_CONFIG_KEY, PARTITION_KEY
from securefvpa.rundir import NodeConfig, RunDir, read_node_config
from securefvpa.train.client import ClientNode, load_node


@functools.lru_cache(maxsize=8)
def _node_from_file(path: str) -> tuple[NodeConfig, ClientNode]:
    node = read_node_config(path)
    return node, load_node(node)


class NodeResolver:
    """Resolves a Flower ``Context`` to this node's config and client state (cached)."""

    def __init__(self, nodes_dir: Path | None = None) -> None:
        self.nodes_dir = None if nodes_dir is None else Path(nodes_dir).resolve()

    def path(self, context: Context) -> str:
        explicit = context.node_config.get(NODE_CONFIG_KEY)
        if explicit:
            return str(explicit)
        if self.nodes_dir is not None and PARTITION_KEY in context.node_config:
            pid = context.node_config[PARTITION_KEY]
            if isinstance(pid, bool) or not isinstance(pid, int) or pid < 0:
                raise FederationError(
                    f"node config 'partition-id' must be an int >= 0. Found {pid!r}."
                )
            return str(RunDir(self.nodes_dir.parent).node_config(pid))
        raise FederationError(
            f"this node has no node config: start the SuperNode with --node-config "
            f"\"{NODE_CONFIG_KEY}='/path/node.toml'\" (written by `securefvpa run` under "
            "RUN_DIR/nodes/, or by your operator)"
        )

    def resolve(self, context: Context) -> tuple[NodeConfig, ClientNode]:
        return _node_from_file(self.path(context))

    def check(self, node: NodeConfig, config_hash: str) -> None:
        """Refuse a server message whose run config hash is not this node's (constant time)."""
        if not hmac.compare_digest(node.config_hash.encode(), config_hash.encode()):
            raise FederationError(
                f"the server's run config has hash {config_hash[:16]}…, but node "
                f"{node.partition_id} agreed to {node.config_hash[:16]}… (its node config)"
            )
