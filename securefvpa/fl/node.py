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

import hmac
import threading
from collections import OrderedDict
from pathlib import Path
from typing import NamedTuple

from flwr.app import Context

from securefvpa.errors import FederationError
from securefvpa.fl.wire import NODE_CONFIG_KEY, PARTITION_KEY
from securefvpa.rounds.encoding import RoundCodec
from securefvpa.rundir import NodeConfig, RunDir, read_node_config
from securefvpa.train.client import ClientNode, load_node

NODE_CACHE_BYTES = 2 << 30
"""Data bytes of loaded nodes one ClientApp process keeps (a Flower simulation actor serves
many nodes; a SuperNode's app one). A count-bounded LRU of 8 thrashed over 25 nodes of 200 users
(5,000 users): every secure-aggregation message reloaded its node, 0.35-0.65 s each
(``benchmarks/scale.py``). Bounded by bytes, 5,000 users on 25 nodes (~15 MB each) and 20,000
users on 10 nodes (~150 MB each, ``make demo``) stay loaded."""
NODE_CACHE_ENTRIES = 1024  # and at most this many nodes (the small objects beside the data)


class CacheInfo(NamedTuple):
    hits: int
    misses: int
    maxsize: int  # bytes
    currsize: int  # nodes kept


class _NodeCache:
    """Least-recently-used loaded nodes, bounded by their data's bytes and by ``entries`` (at
    least one is kept).

    ``functools.lru_cache`` bounds entries by count, and nodes differ in size by orders of
    magnitude (a user per node, thousands per node), so the bound here is bytes."""

    def __init__(self, budget: int, entries: int = NODE_CACHE_ENTRIES) -> None:
        self.budget = budget
        self.entries = entries
        self._nodes: OrderedDict[str, tuple[NodeConfig, ClientNode, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def __call__(self, path: str) -> tuple[NodeConfig, ClientNode]:
        with self._lock:
            if path in self._nodes:
                self._nodes.move_to_end(path)
                self.hits += 1
                node, client, _ = self._nodes[path]
                return node, client
            self.misses += 1
        node = read_node_config(path)
        client = load_node(node)
        size = client.partition.pairs.nbytes
        with self._lock:
            self._nodes[path] = (node, client, size)
            total = sum(n for _, _, n in self._nodes.values())
            while len(self._nodes) > 1 and (
                total > self.budget or len(self._nodes) > self.entries
            ):
                _, (_, _, freed) = self._nodes.popitem(last=False)
                total -= freed
        return node, client

    def cache_info(self) -> CacheInfo:
        return CacheInfo(self.hits, self.misses, self.budget, len(self._nodes))

    def cache_clear(self) -> None:
        with self._lock:
            self._nodes.clear()
            self.hits = self.misses = 0


_node_from_file = _NodeCache(NODE_CACHE_BYTES)


def node_codec(node: NodeConfig, client: ClientNode) -> RoundCodec:
    """How this node writes its update into the secure-aggregation ring (fixed point), from its
    own run config and the public bounds in its node config — never from a server message."""
    return RoundCodec.for_run(
        client.cfg,
        clip_range=node.clip_range,
        max_weight=node.max_train_pairs,
        max_clients=node.train_clients,
    )


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
