"""An in-memory network of protocol state machines, in virtual time.

Each `MemoryNode` runs the real consensus code (ChainState, Mempool over a MemoryStore) and the
real `P2PProtocol`; `MemoryNetwork` moves their datagrams and stream frames with a latency, loss
and reordering model of your choosing. No sockets, no clock: the same seed gives the same run.
The P2P tests use it (tests/p2p_helpers.py, test_p2p_protocol.py, test_p2p_bounds.py) to
exercise handshakes, relay, sync and resource bounds. `powlab simulate` does not: its network
model (lab/simulate/network.py) runs ChainState alone and models relay as shortest-path
delays, without protocol messages.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from consensus.block import Block
from consensus.blockbuild import assemble_block, solve_block
from consensus.chainstate import AcceptResult, BlockIndex, ChainState
from consensus.keys import PrivateKey, pubkey_hash
from consensus.mempool import Mempool
from consensus.params import ChainParams
from consensus.tx import Transaction
from p2p.actions import CloseStream, Event, OpenStream, SendDatagram, SendStream
from p2p.config import Address, P2PConfig
from p2p.protocol import P2PProtocol
from storage import MemoryStore

TIMER_INTERVAL = 0.25  # virtual seconds between handle_timer calls


@dataclass
class LinkModel:
    """Delay = latency + uniform jitter; datagrams are lost with probability `loss`."""

    latency: float = 0.005
    jitter: float = 0.0
    loss: float = 0.0

    def delay(self, rng: random.Random) -> float:
        return self.latency + (rng.uniform(0, self.jitter) if self.jitter else 0.0)


class MemoryNode:
    """A node without I/O: chain, mempool and P2P protocol, driven by the network's clock."""

    def __init__(
        self,
        name: str,
        addr: Address,
        params: ChainParams,
        network: MemoryNetwork,
        config: P2PConfig,
        rng: random.Random,
    ) -> None:
        self.name = name
        self.addr = addr
        self.params = params
        self.network = network
        self.store = MemoryStore()
        self.chain = ChainState(params, self.store)
        self.store.apply(self.chain.take_update())
        self.mempool = Mempool(params, signature_cache=self.chain.signature_cache)
        self.key = PrivateKey(rng.randbytes(32))
        self.wallet_key = PrivateKey(rng.randbytes(32))
        self.payout_pkh = pubkey_hash(self.wallet_key.public_key)
        self.p2p = P2PProtocol(params, self.key, config, self, rng, network.now)
        self.events: list[Event] = []
        self.online = True

    @property
    def now(self) -> float:
        return self.network.now

    # NodeInterface ------------------------------------------------------------------

    def submit_block(self, block: Block) -> AcceptResult:
        self.network.flush(self)  # a block passed on before validation leaves first
        result = self.chain.accept_block(block, int(self.now))
        self.store.apply(self.chain.take_update())
        if result.connected or result.disconnected:
            self.mempool.update_for_chain(result, self.chain, int(self.now))
            self.p2p.announce_blocks(result, self.now)
        return result

    def submit_transaction(self, tx: Transaction) -> Any:
        outcome = self.mempool.accept(tx, self.chain, int(self.now))
        for txid in outcome.accepted:
            entry = self.mempool.get(txid)
            if entry is not None:
                self.p2p.announce_tx(entry.tx, self.now)
        return outcome

    def accept_header(self, header: Any) -> BlockIndex:
        return self.chain.accept_header(header, int(self.now))

    # Conveniences for tests -------------------------------------------------------

    def mine(self, txs: bool = True) -> Block:
        """Mine one block on our tip (regtest difficulty) and announce it."""
        chosen, fees = (
            self.mempool.select_for_block(self.params.max_block_size - 1000) if txs else ([], 0)
        )
        for extra in itertools.count():
            block = solve_block(
                assemble_block(self.chain, chosen, fees, self.payout_pkh, int(self.now), extra)
            )
            if block is not None:
                break
        result = self.submit_block(block)
        assert result.status == "connected", result
        self.network.flush(self)
        return block

    def connect(self, other: MemoryNode) -> None:
        self.p2p.connect(other.addr, self.now, persistent=True)
        self.network.flush(self)


@dataclass(order=True)
class _Scheduled:
    at: float
    seq: int
    action: Callable[[], None] = field(compare=False)


class MemoryNetwork:
    def __init__(self, params: ChainParams, seed: int = 0, link: LinkModel | None = None) -> None:
        self.params = params
        self.rng = random.Random(seed)
        self.link = link or LinkModel()
        self.now = float(params.genesis_timestamp + 1_000)
        self.nodes: dict[Address, MemoryNode] = {}
        self._queue: list[_Scheduled] = []
        self._seq = itertools.count()
        self._stream_ids = itertools.count(1)
        self._stream_peer: dict[tuple[Address, int], tuple[Address, int]] = {}
        self._stream_ready: dict[tuple[Address, int], float] = {}
        self.partitions: list[set[Address]] = []
        self.datagrams_sent = 0
        self.datagrams_lost = 0
        self.bytes_sent = 0
        self._next_timer = self.now

    def add_node(self, name: str, config: P2PConfig | None = None) -> MemoryNode:
        addr = (f"127.0.1.{len(self.nodes) + 1}", 18444)
        config = config or P2PConfig(listen_port=addr[1])
        node = MemoryNode(name, addr, self.params, self, config, random.Random(self.rng.random()))
        self.nodes[addr] = node
        return node

    # ------------------------------------------------------------------ plumbing

    def _schedule(self, delay: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._queue, _Scheduled(self.now + delay, next(self._seq), action))

    def _reachable(self, a: Address, b: Address) -> bool:
        if not self.partitions:
            return True
        return any(a in group and b in group for group in self.partitions)

    def flush(self, node: MemoryNode) -> None:
        """Carry out everything `node`'s protocol asked to send."""
        for action in node.p2p.take_actions():
            if isinstance(action, SendDatagram):
                self._send_datagram(node, action)
            elif isinstance(action, SendStream):
                self._send_stream(node, action)
            elif isinstance(action, OpenStream):
                self._open_stream(node, action.addr)
            elif isinstance(action, CloseStream):
                self._close_stream(node.addr, action.stream_id)
        node.events.extend(node.p2p.take_events())

    def _send_datagram(self, node: MemoryNode, action: SendDatagram) -> None:
        self.datagrams_sent += 1
        self.bytes_sent += len(action.data)
        target = self.nodes.get(action.addr)
        if target is None or not self._reachable(node.addr, action.addr):
            return
        if self.link.loss and self.rng.random() < self.link.loss:
            self.datagrams_lost += 1
            return
        source, data = node.addr, action.data

        def deliver() -> None:
            if target.online and node.online:
                target.p2p.receive_datagram(data, source, self.now)
                self.flush(target)

        self._schedule(self.link.delay(self.rng), deliver)

    def _open_stream(self, node: MemoryNode, addr: Address) -> None:
        target = self.nodes.get(addr)
        if target is None or not self._reachable(node.addr, addr) or not target.online:
            def fail() -> None:
                node.p2p.stream_failed(addr, self.now)
                self.flush(node)
            self._schedule(self.link.latency, fail)
            return
        local, remote = next(self._stream_ids), next(self._stream_ids)
        self._stream_peer[(node.addr, local)] = (addr, remote)
        self._stream_peer[(addr, remote)] = (node.addr, local)
        ephemeral = (node.addr[0], 40_000 + local)

        def opened() -> None:
            target.p2p.stream_opened(remote, ephemeral, False, self.now)
            self.flush(target)
            node.p2p.stream_opened(local, addr, True, self.now)
            self.flush(node)

        self._schedule(self.link.latency, opened)

    def _send_stream(self, node: MemoryNode, action: SendStream) -> None:
        peer_end = self._stream_peer.get((node.addr, action.stream_id))
        if peer_end is None:
            return
        self.bytes_sent += len(action.data)
        target_addr, remote = peer_end
        target = self.nodes[target_addr]
        if not self._reachable(node.addr, target_addr) or not target.online:
            # TCP never loses bytes and carries on: a connection that cannot deliver breaks.
            self._break_stream(node, action.stream_id)
            return
        # A stream is ordered: never deliver before what was sent on it earlier.
        key = (target_addr, remote)
        at = max(self._stream_ready.get(key, 0.0), self.now + self.link.delay(self.rng))
        self._stream_ready[key] = at
        data = action.data

        def deliver() -> None:
            if not target.online:
                self._break_stream(node, action.stream_id)
                return
            target.p2p.receive_stream_data(remote, data, self.now)
            self.flush(target)

        heapq.heappush(self._queue, _Scheduled(at, next(self._seq), deliver))

    def _break_stream(self, node: MemoryNode, stream_id: int) -> None:
        """Both ends learn that the connection is gone (a reset, or a timeout)."""
        if (node.addr, stream_id) not in self._stream_peer:
            return
        self._close_stream(node.addr, stream_id)

        def closed() -> None:
            node.p2p.stream_closed(stream_id, self.now)
            self.flush(node)

        self._schedule(self.link.latency, closed)

    def _close_stream(self, addr: Address, stream_id: int) -> None:
        peer_end = self._stream_peer.pop((addr, stream_id), None)
        if peer_end is None:
            return
        self._stream_peer.pop(peer_end, None)
        target = self.nodes[peer_end[0]]

        def closed() -> None:
            target.p2p.stream_closed(peer_end[1], self.now)
            self.flush(target)

        self._schedule(self.link.latency, closed)

    # ------------------------------------------------------------------ driving

    def run(self, seconds: float) -> None:
        self.run_until(lambda: False, seconds)

    def run_until(self, done: Callable[[], bool], timeout: float) -> bool:
        """Advance virtual time until `done()` or `timeout` virtual seconds pass."""
        end = self.now + timeout
        while self.now <= end:
            if done():
                return True
            next_event = self._queue[0].at if self._queue else float("inf")
            if self._next_timer <= next_event:
                self.now = max(self.now, self._next_timer)
                self._next_timer = self.now + TIMER_INTERVAL
                for node in self.nodes.values():
                    if node.online:
                        node.p2p.handle_timer(self.now)
                        self.flush(node)
                continue
            item = heapq.heappop(self._queue)
            self.now = max(self.now, item.at)
            item.action()
        return done()

    def converged(self) -> bool:
        tips = {n.chain.tip.hash for n in self.nodes.values() if n.online}
        return len(tips) == 1

    def mempools_converged(self) -> bool:
        pools = {frozenset(n.mempool.txids()) for n in self.nodes.values() if n.online}
        return len(pools) == 1
