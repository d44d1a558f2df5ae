"""A many-node network in virtual time, running the daemon's own chain selection.

Every node holds a real `ChainState` (the same validation, most-work selection, reorganisation
and finality code as `powlab node`), fed the blocks it receives in the order it receives them.
What is modelled instead of run:
- mining: a Poisson process with the given mean interval; the finder is drawn by hash-rate
  share. There is no hashing and proof of work is not checked (it is not what is studied here).
- relay: a node forwards a block to its neighbours as soon as it has it, so a block reaches each
  node after the shortest-path delay from its miner over link latency plus transmission time
  (block size ÷ bandwidth) plus a validation delay per hop.
"""

from __future__ import annotations

import gc
import heapq
import json
import math
import random
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from consensus.attack_theory import exact_probability
from consensus.block import Block
from consensus.blockbuild import assemble_block
from consensus.chainstate import ChainState
from consensus.coins import encode_undo
from consensus.params import REGTEST, ChainParams
from lab.stats import percentile

DEFAULT_DEGREE = 8
DEFAULT_FINALITY_TARGET = 1e-6  # "blocks needed" is the z with reversal risk below this


class LatencyModel:
    """Per-link one-way delay in seconds: fixed, uniform, exponential or normal."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        kind, _, rest = spec.partition(":")
        if not rest:
            kind, rest = "fixed", spec
        self.kind = kind
        try:
            values = [parse_seconds(v) for v in rest.split(",")] if rest else []
        except ValueError as exc:
            raise ValueError(f"latency {spec!r}: {exc}") from None
        expected = {"fixed": 1, "uniform": 2, "exp": 1, "normal": 2}
        if kind not in expected or len(values) != expected[kind]:
            raise ValueError(
                f"latency {spec!r}: use 100ms, uniform:50ms,150ms, exp:100ms or "
                "normal:100ms,20ms"
            )
        self.values = values

    def draw(self, rng: random.Random) -> float:
        v = self.values
        if self.kind == "fixed":
            return v[0]
        if self.kind == "uniform":
            return rng.uniform(v[0], v[1])
        if self.kind == "exp":
            return rng.expovariate(1.0 / v[0])
        return max(0.0, rng.gauss(v[0], v[1]))


def parse_seconds(text: str) -> float:
    text = text.strip().lower()
    for suffix, factor in (("ms", 1e-3), ("us", 1e-6), ("s", 1.0)):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def parse_bytes(text: str) -> int:
    text = text.strip().upper()
    for suffix, factor in (("KB", 1_000), ("MB", 1_000_000), ("B", 1)):
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * factor)
    return int(text)


def parse_bandwidth(text: str) -> float:
    """Bits per second from '10Mbps', '1Gbps', '500kbps' or a number."""
    text = text.strip().lower().removesuffix("ps")
    for suffix, factor in (("gb", 1e9), ("mb", 1e6), ("kb", 1e3), ("b", 1.0)):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


@dataclass
class NetworkConfig:
    nodes: int = 200
    blocks: int = 1000
    block_interval: float = 10.0  # seconds, mean
    latency: str = "100ms"
    degree: int = DEFAULT_DEGREE
    miners: int = 10
    hashrates: list[float] | None = None  # shares of the miners; default equal
    bandwidth_bps: float | None = None  # None = infinite
    block_size: int = 1_000_000  # bytes, for transmission time
    validation_delay: float = 0.0  # seconds per hop
    finality_depth: int = 6
    enforce_finality: bool = False
    finality_target: float = DEFAULT_FINALITY_TARGET
    assumed_attacker_share: float = 0.1
    topology_file: Path | None = None
    seed: int = 1

    def validate(self) -> None:
        if self.nodes < 2 or self.blocks < 1 or self.block_interval <= 0:
            raise ValueError("need nodes >= 2, blocks >= 1 and a positive block interval")
        if not 1 <= self.miners <= self.nodes:
            raise ValueError("miners must be between 1 and the number of nodes")
        if self.hashrates is not None and (
            len(self.hashrates) != self.miners or any(h < 0 for h in self.hashrates)
            or sum(self.hashrates) <= 0
        ):
            raise ValueError("give one non-negative hash-rate share per miner")
        if self.degree < 1:
            raise ValueError("degree must be at least 1")


@dataclass
class _SimNode:
    chain: ChainState
    reorgs: Counter[int] = field(default_factory=Counter)  # this node's reorgs by depth


class _SharedBlocks:
    """Block bodies by hash for every simulated node (blocks are immutable, so one copy)."""

    def __init__(self) -> None:
        self.blocks: dict[bytes, bytes] = {}
        self._empty_undo = encode_undo([])

    def get_block_bytes(self, block_hash: bytes) -> bytes | None:
        return self.blocks.get(block_hash)

    def get_undo_bytes(self, block_hash: bytes) -> bytes | None:
        # Simulated blocks carry only a coinbase, so every block's undo data is empty.
        return self._empty_undo if block_hash in self.blocks else None


def build_graph(cfg: NetworkConfig, rng: random.Random) -> list[dict[int, float]]:
    """Adjacency with one-way link delays: from a topology file, else a random graph where
    every node dials `degree // 2` others plus a ring (so it is connected)."""
    adjacency: list[dict[int, float]] = [{} for _ in range(cfg.nodes)]
    if cfg.topology_file is not None:
        data = json.loads(Path(cfg.topology_file).read_text())
        for edge in data["edges"]:
            a, b = int(edge[0]), int(edge[1])
            delay = parse_seconds(str(edge[2])) if len(edge) > 2 else 0.1
            adjacency[a][b] = adjacency[b][a] = delay
        return adjacency
    latency = LatencyModel(cfg.latency)
    for a in range(cfg.nodes):
        targets = {(a + 1) % cfg.nodes}
        while len(targets) < min(max(1, cfg.degree // 2), cfg.nodes - 1):
            b = rng.randrange(cfg.nodes)
            if b != a:
                targets.add(b)
        for b in targets:
            if b not in adjacency[a]:
                delay = latency.draw(rng)
                adjacency[a][b] = adjacency[b][a] = delay
    return adjacency


def shortest_delays(adjacency: list[dict[int, float]], source: int, per_hop: float) -> list[float]:
    dist = [math.inf] * len(adjacency)
    dist[source] = 0.0
    heap = [(0.0, source)]
    while heap:
        d, node = heapq.heappop(heap)
        if d > dist[node]:
            continue
        for neighbour, delay in adjacency[node].items():
            nd = d + delay + per_hop
            if nd < dist[neighbour]:
                dist[neighbour] = nd
                heapq.heappush(heap, (nd, neighbour))
    return dist


def _percentile(values: list[float], q: float) -> float:
    """lab.stats.percentile (nearest rank), 0 when nothing was measured."""
    return percentile(values, q) if values else 0.0


def simulate_network(cfg: NetworkConfig, params: ChainParams = REGTEST) -> dict[str, Any]:
    cfg.validate()
    # A run allocates millions of long-lived objects and frees almost none: the cyclic
    # collector would rescan them over and over for nothing.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _simulate(cfg, params)
    finally:
        if gc_was_enabled:
            gc.enable()


def _simulate(cfg: NetworkConfig, params: ChainParams) -> dict[str, Any]:
    rng = random.Random(cfg.seed)
    adjacency = build_graph(cfg, rng)
    transmission = (cfg.block_size * 8 / cfg.bandwidth_bps) if cfg.bandwidth_bps else 0.0
    per_hop = transmission + cfg.validation_delay
    miners = rng.sample(range(cfg.nodes), cfg.miners)
    shares = cfg.hashrates or [1.0] * cfg.miners
    delays = {m: shortest_delays(adjacency, m, per_hop) for m in miners}
    if any(math.isinf(d) for m in miners for d in delays[m]):
        raise ValueError("the topology is not connected: some node never hears of a block")

    shared = _SharedBlocks()
    nodes = [
        _SimNode(ChainState(params, shared, check_pow=False, finality_depth=cfg.finality_depth,
                            enforce_finality=cfg.enforce_finality))
        for _ in range(cfg.nodes)
    ]
    for node in nodes:
        node.chain.discard_update()
    start = float(params.genesis_timestamp + 1)
    now = start
    arrivals: list[tuple[float, int, int, Block]] = []
    seq = 0
    mined_at: dict[bytes, float] = {}
    propagation: list[float] = []  # per (block, node) delay
    time_to_all: list[float] = []
    events = 0
    # A network reorganisation is one abandoned branch: every node that leaves it takes part
    # in the same event, however much of the branch it had, so the event is keyed by the
    # branch's first block and its depth is the most any node disconnected.
    network_reorgs: dict[bytes, int] = {}

    def deliver(node_index: int, block: Block, at: float) -> None:
        node = nodes[node_index]
        result = node.chain.accept_block(block, int(at))
        node.chain.discard_update()
        if result.disconnected:
            node.reorgs[len(result.disconnected)] += 1
            depth = len(result.disconnected)
            root = result.disconnected[-1][0].hash  # listed from the old tip down
            network_reorgs[root] = max(depth, network_reorgs.get(root, 0))

    next_mine = now + rng.expovariate(1.0 / cfg.block_interval)
    mined = 0
    while mined < cfg.blocks or arrivals:
        if arrivals and (mined >= cfg.blocks or arrivals[0][0] <= next_mine):
            at, _, node_index, block = heapq.heappop(arrivals)
            now = at
            deliver(node_index, block, at)
            events += 1
            continue
        now = next_mine
        miner = rng.choices(miners, weights=shares)[0]
        chain = nodes[miner].chain
        block = assemble_block(chain, [], 0, miner.to_bytes(20, "big"), int(now), mined)
        shared.blocks[block.hash] = block.encode()
        mined_at[block.hash] = now
        deliver(miner, block, now)
        row = delays[miner]
        for index, delay in enumerate(row):
            if index != miner:
                seq += 1
                heapq.heappush(arrivals, (now + delay, seq, index, block))
                propagation.append(delay)
        time_to_all.append(max(row))
        mined += 1
        events += 1
        next_mine = now + rng.expovariate(1.0 / cfg.block_interval)

    reference = nodes[0].chain
    main_chain = reference.height
    tips = {n.chain.tip.hash for n in nodes}
    node_reorgs: Counter[int] = Counter()
    for node in nodes:
        node_reorgs.update(node.reorgs)
    reorgs = Counter(network_reorgs.values())
    propagation.sort()
    time_to_all.sort()
    deepest = max(reorgs) if reorgs else 0
    stale_rate = (cfg.blocks - main_chain) / cfg.blocks
    effective_share = effective_attacker_share(cfg.assumed_attacker_share, stale_rate)
    return {
        "nodes": cfg.nodes,
        "blocks": cfg.blocks,
        "seed": cfg.seed,
        "block_interval": cfg.block_interval,
        "latency": cfg.latency,
        "block_size": cfg.block_size,
        "bandwidth_bps": cfg.bandwidth_bps,
        "validation_delay": cfg.validation_delay,
        "miners": cfg.miners,
        "main_chain_blocks": main_chain,
        "stale_blocks": cfg.blocks - main_chain,
        "stale_rate": stale_rate,
        "converged": len(tips) == 1,
        "propagation_ms": {
            "p50": round(_percentile(propagation, 0.5) * 1000, 3),
            "p90": round(_percentile(propagation, 0.9) * 1000, 3),
            "max": round((propagation[-1] if propagation else 0.0) * 1000, 3),
        },
        "time_to_all_nodes_ms": {
            "p50": round(_percentile(time_to_all, 0.5) * 1000, 3),
            "p90": round(_percentile(time_to_all, 0.9) * 1000, 3),
        },
        # Distinct reorganisations of the network (one per abandoned branch, however many
        # nodes left it), by depth; node_reorg_depths counts every node's own reorgs.
        "reorg_depths": {str(depth): count for depth, count in sorted(reorgs.items())},
        "reorg_events": sum(reorgs.values()),
        "node_reorg_depths": {str(d): c for d, c in sorted(node_reorgs.items())},
        "deepest_reorg": deepest,
        "finality": {
            "observed_safe_depth": deepest + 1,
            "target": cfg.finality_target,
            "assumed_attacker_share": cfg.assumed_attacker_share,
            "effective_attacker_share": effective_share,
            "blocks_for_target": blocks_for_target(effective_share, cfg.finality_target),
        },
        "events": events,
        "virtual_seconds": round(now - start, 3),
        "mean_interval_observed": round((now - start) / max(1, cfg.blocks), 3),
        "median_link_ms": round(statistics.median(
            d for row in adjacency for d in row.values()) * 1000, 3),
        "note": "mining is a Poisson process and proof of work is not checked",
    }


def effective_attacker_share(q: float, stale_rate: float) -> float:
    """The attacker's share of the blocks that count, when a fraction `stale_rate` of the
    honest blocks is wasted on stale branches and the attacker (mining privately on its own
    branch) wastes none: q / (q + (1 - q)(1 - stale_rate)). A simplification of how Gervais et
    al. 2016 (CCS, "On the Security and Performance of Proof of Work Blockchains") let the
    stale rate weaken the honest chain in their security model; at stale rate 0 it is q."""
    honest = (1.0 - q) * (1.0 - stale_rate)
    return q / (q + honest) if q + honest > 0 else 1.0


def blocks_for_target(q: float, target: float, limit: int = 1000) -> int | None:
    """Smallest z whose exact (catch-up) reversal probability is below `target`."""
    for z in range(limit + 1):
        if exact_probability(q, z) < target:
            return z
    return None
