"""The ClientApp's cache of loaded nodes is bounded by the bytes of their data, not by a count."""

from __future__ import annotations

from securefvpa.config import load_config
from securefvpa.data.load import load_dataset
from securefvpa.fl.node import _NodeCache
from securefvpa.rounds.prepare import prepare_or_resume
from securefvpa.run import prepare_run_dir


def test_nodes_stay_loaded_within_the_byte_budget_and_the_least_recent_leaves(
    tmp_path, fed_config, write_config
):
    cfg = load_config(write_config(fed_config(data={"users": 12, "unseen_share": 0.0})))
    rd = prepare_run_dir(cfg, tmp_path / "run", resume=False)
    manifest = prepare_or_resume(cfg, rd, resume=False, load=lambda: load_dataset(cfg))
    paths = [str(rd.node_config(pid)) for pid in range(manifest.clients)]
    assert len(paths) >= 4
    one = _NodeCache(1 << 40)(paths[0])[1].partition.pairs.nbytes
    assert one > 0

    everything = _NodeCache(1 << 40)  # every node fits: one load each, then hits only
    for _ in range(3):
        for p in paths:
            node, client = everything(p)
            assert client.partition.partition_id == node.partition_id
    info = everything.cache_info()
    assert (info.misses, info.hits, info.currsize) == (len(paths), 2 * len(paths), len(paths))

    cache = _NodeCache(int(2.5 * one))  # room for two nodes of this size
    first = cache(paths[0])[1]
    cache(paths[1])
    assert cache(paths[0])[1] is first  # a hit returns the loaded node; 0 is now most recent
    cache(paths[2])  # over budget: node 1, the least recently used, leaves
    assert cache.cache_info().currsize == 2
    assert cache(paths[0])[1] is first
    misses = cache.cache_info().misses
    cache(paths[1])
    assert cache.cache_info().misses == misses + 1  # node 1 was evicted: loaded again

    two = _NodeCache(1 << 40, entries=2)  # the count bound holds too
    for p in paths[:3]:
        two(p)
    assert two.cache_info().currsize == 2
    two(paths[0])
    assert two.cache_info().misses == 4  # node 0 was the least recent: evicted, loaded again

    tiny = _NodeCache(1)  # smaller than any node: the last one loaded is still kept
    tiny(paths[0])
    tiny(paths[0])
    assert tiny.cache_info()[:2] == (1, 1) and tiny.cache_info().currsize == 1
