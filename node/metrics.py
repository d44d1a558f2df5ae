"""Prometheus metrics, in a registry of the node's own (so tests can run several nodes)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

REORG_DEPTH_BUCKETS = (1, 2, 3, 4, 6, 10, 20, 50, 100)


class NodeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.height = Gauge("powlab_block_height", "Height of the active chain tip", registry=r)
        self.mempool_txs = Gauge("powlab_mempool_transactions", "Mempool size", registry=r)
        self.mempool_bytes = Gauge("powlab_mempool_bytes", "Mempool size in bytes", registry=r)
        self.peers = Gauge("powlab_peers", "Connected peers", registry=r)
        self.hashrate = Gauge("powlab_hashrate", "Measured hashes per second", registry=r)
        self.blocks_connected = Counter(
            "powlab_blocks_connected", "Blocks connected to the active chain", registry=r
        )
        self.blocks_disconnected = Counter(
            "powlab_blocks_disconnected", "Blocks disconnected by reorganisations", registry=r
        )
        self.reorg_depth = Histogram(
            "powlab_reorg_depth", "Blocks disconnected per reorganisation",
            buckets=REORG_DEPTH_BUCKETS, registry=r,
        )

    def render(self, node: Any) -> bytes:
        """Refresh the gauges from the node's current state, then render the text format."""
        self.height.set(node.chain.height)
        self.mempool_txs.set(len(node.mempool))
        self.mempool_bytes.set(node.mempool.bytes)
        self.peers.set(node.protocol.established_count())
        self.hashrate.set(node.miner.hashrate_measured())
        return generate_latest(self.registry)
