"""Prometheus metrics, in a registry of the node's own (so tests can run several nodes)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

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
        self.reorgs_refused = Counter(
            "powlab_reorgs_refused",
            "Heavier branches refused because the reorganisation would revert a final block "
            "(--enforce-finality)", registry=r,
        )
        self.finality_conflicts = Gauge(
            "powlab_finality_conflicts",
            "Heavier branches currently refused beyond finality (a chain split)", registry=r,
        )
        self.reorg_depth = Histogram(
            "powlab_reorg_depth", "Blocks disconnected per reorganisation",
            buckets=REORG_DEPTH_BUCKETS, registry=r,
        )

    def watch_p2p(self, protocol: Callable[[], Any]) -> None:
        """Export the P2P layer's own counters (sessions, drops, bans) at every scrape."""
        self.registry.register(_P2PCollector(protocol))

    def render(self, node: Any) -> bytes:
        """Refresh the gauges from the node's current state, then render the text format."""
        self.height.set(node.chain.height)
        self.mempool_txs.set(len(node.mempool))
        self.mempool_bytes.set(node.mempool.bytes)
        self.peers.set(node.protocol.established_count())
        self.hashrate.set(node.miner.hashrate_measured())
        self.finality_conflicts.set(len(node.chain.finality_conflicts()))
        return generate_latest(self.registry)


class _P2PCollector:
    """Reads the counters the sans-IO P2P code keeps (it imports no metrics library)."""

    def __init__(self, protocol: Callable[[], Any]) -> None:
        self.protocol = protocol

    def describe(self) -> list[Metric]:
        return []  # no fixed description: collected fresh at every scrape

    def collect(self) -> Iterator[Metric]:
        p2p = self.protocol()
        if p2p is None:
            return
        sessions = p2p.sessions
        simple = (
            ("powlab_p2p_auth_failures", "Datagrams that failed session authentication",
             sessions.drops.get("auth-failed", 0)),
            ("powlab_p2p_cookie_replies", "Handshake inits answered with a cookie (under load)",
             sessions.cookie_replies),
            ("powlab_p2p_handshakes", "Session handshakes completed",
             sessions.handshakes_completed),
            ("powlab_p2p_bans", "Peers discouraged for misbehaviour or banned by setban",
             p2p.bans),
        )
        for name, doc, value in simple:
            yield CounterMetricFamily(name, doc, value=value)
        dropped = CounterMetricFamily(
            "powlab_p2p_datagrams_dropped", "Datagrams dropped before the protocol, by reason",
            labels=["reason"],
        )
        for reason, count in sorted(sessions.drops.items()):
            dropped.add_metric([reason], count)
        yield dropped
        streams = CounterMetricFamily(
            "powlab_p2p_streams_dropped", "Streams closed before or for failing authentication",
            labels=["reason"],
        )
        for reason, count in sorted(p2p.stream_drops.items()):
            streams.add_metric([reason], count)
        yield streams
        yield GaugeMetricFamily(
            "powlab_p2p_half_open_handshakes", "Handshakes awaiting their third message",
            value=len(sessions.half_open),
        )
