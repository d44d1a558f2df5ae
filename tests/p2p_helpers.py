"""Shared builders for P2P scenario tests over `p2p.memory.MemoryNetwork` (virtual time only).

Typical use::

    net, (a, b) = network(2)
    link(net, a, b)                      # b dials a; runs until both sides are established
    fund(a, 3)                           # a few mature coinbases for a's wallet
    traffic = Traffic(net)               # records every message sent, by type
    tx = pay(a, a_block, b.payout_pkh)   # a signed spend of a coinbase
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from consensus.block import Block
from consensus.blockbuild import assemble_block, solve_block
from consensus.chainstate import BlockIndex
from consensus.keys import PrivateKey
from consensus.params import REGTEST, ChainParams
from consensus.tx import Transaction, TxIn, TxOut, sign_transaction
from p2p.config import PROTOCOL_VERSION, Address, P2PConfig
from p2p.memory import LinkModel, MemoryNetwork, MemoryNode
from p2p.messages import CompactBlock, Hello, Message, PrefilledTx
from p2p.peer import Peer
from p2p.protocol import MAX_DATAGRAM_ENVELOPE, SendDatagram
from p2p.session import SessionTable
from p2p.wire import encode_message

#: Coinbases mature after two blocks: wallets get funded in a handful of blocks.
QUICK = REGTEST.with_overrides({"coinbase_maturity": 2})
PORT = 18444
FEE = 10_000


def config(**overrides: Any) -> P2PConfig:
    """A `P2PConfig` that advertises the port MemoryNetwork gives every node."""
    return P2PConfig(listen_port=PORT, **overrides)


def network(
    count: int,
    *,
    seed: int = 1,
    link: LinkModel | None = None,
    params: ChainParams = QUICK,
    configs: dict[int, P2PConfig] | None = None,
) -> tuple[MemoryNetwork, list[MemoryNode]]:
    """A network of `count` unconnected nodes named a, b, c, …"""
    net = MemoryNetwork(params, seed=seed, link=link)
    configs = configs or {}
    nodes = [net.add_node(chr(ord("a") + i), configs.get(i)) for i in range(count)]
    return net, nodes


def foreign_node(
    net: MemoryNetwork, name: str, params: ChainParams, cfg: P2PConfig | None = None
) -> MemoryNode:
    """A node on `net`'s wires that runs other chain parameters (another network)."""
    addr: Address = (f"127.0.1.{len(net.nodes) + 1}", PORT)
    node = MemoryNode(name, addr, params, net, cfg or config(), random.Random(net.rng.random()))
    net.nodes[addr] = node
    return node


def established(a: MemoryNode, b: MemoryNode) -> bool:
    """Both sides see each other as established peers."""
    pa, pb = a.p2p.by_addr.get(b.addr), b.p2p.by_addr.get(a.addr)
    return pa is not None and pb is not None and pa.established and pb.established


def link(net: MemoryNetwork, a: MemoryNode, b: MemoryNode, timeout: float = 10.0) -> None:
    """`b` dials `a` (persistently) and the handshake completes."""
    b.connect(a)
    assert net.run_until(lambda: established(a, b), timeout), f"{b.name} -> {a.name} handshake"


def line(net: MemoryNetwork, nodes: list[MemoryNode]) -> None:
    """Connect nodes[i] to nodes[i+1]: a line, the longest path for relay."""
    for left, right in itertools.pairwise(nodes):
        link(net, left, right)


def peer_of(node: MemoryNode, other: MemoryNode) -> Peer:
    peer = node.p2p.by_addr.get(other.addr)
    assert peer is not None, f"{node.name} has no peer {other.name}"
    return peer


def info_of(node: MemoryNode, other: MemoryNode) -> dict[str, Any]:
    """`node`'s peer_info() row for `other`."""
    rows = [r for r in node.p2p.peer_info() if r["addr"] == f"{other.addr[0]}:{other.addr[1]}"]
    assert rows, f"{node.name} lists no peer {other.name}"
    return rows[0]


def key_of(node: MemoryNode) -> str:
    """The key bans, discouragement and scores are recorded under: the host (IP), any port."""
    return node.addr[0]


def inject(net: MemoryNetwork, node: MemoryNode, data: bytes, source: Address) -> None:
    """Deliver a raw datagram to `node` as if it came from `source`, now (a spoofer's view:
    no session keys)."""
    node.p2p.receive_datagram(data, source, net.now)
    net.flush(node)


def send_as(net: MemoryNetwork, sender: MemoryNode, node: MemoryNode, data: bytes) -> None:
    """Deliver `data` to `node` sealed under `sender`'s session with it, now: what a peer
    that misbehaves on purpose can send."""
    sealed = sender.p2p.sessions.seal(node.addr, data)
    assert sealed is not None, f"{sender.name} has no session with {node.name}"
    inject(net, node, sealed, sender.addr)


def envelope(node: MemoryNode, msg: Message) -> bytes:
    return encode_message(node.params.magic, msg)


@dataclass
class FakePeer:
    """An established peer of `target` with nobody behind it: a session of its own, no
    protocol, no stream; what `target` sends it is lost. It says what a test makes it say."""

    net: MemoryNetwork
    target: MemoryNode
    addr: Address
    sessions: SessionTable

    def send(self, data: bytes) -> None:
        """`data` (an envelope, or anything) sealed under its session, delivered now."""
        sealed = self.sessions.seal(self.target.addr, data)
        assert sealed is not None
        inject(self.net, self.target, sealed, self.addr)


def fake_peer(net: MemoryNetwork, target: MemoryNode, addr: Address, key: PrivateKey) -> FakePeer:
    """A session handshake and a hello from `addr` with `key`'s identity: `target` takes it
    for an established peer. Returns the events `target` had meanwhile in its `events`."""
    params = target.params
    table = SessionTable(params.magic, params.genesis_hash, key, P2PConfig(), net.now)
    table.initiate(target.addr, net.now)
    for _ in range(3):  # init -> response -> finish -> confirmation
        for _, data in table.take_outbox():
            target.p2p.receive_datagram(data, addr, net.now)
        for action in target.p2p.take_actions():
            if isinstance(action, SendDatagram) and action.addr == addr:
                table.receive(action.data, target.addr, net.now)
    peer = FakePeer(net, target, addr, table)
    genesis = params.genesis_hash
    hello = Hello(PROTOCOL_VERSION, genesis, PORT, 0, bytes(32), genesis, "/fake/", int(net.now))
    peer.send(envelope(target, hello))
    return peer


# ------------------------------------------------------------------------------------ chain


def fund(node: MemoryNode, blocks: int) -> list[Block]:
    """Mine `blocks` empty blocks plus enough for the first `blocks` coinbases to mature."""
    mined = [node.mine(txs=False) for _ in range(blocks + node.params.coinbase_maturity)]
    return mined[:blocks]


def pay(
    node: MemoryNode,
    block: Block,
    to_pkh: bytes,
    fee: int = FEE,
    outputs: int = 1,
    tag: int = 0,
) -> Transaction:
    """Spend `block`'s coinbase (paid to `node`'s wallet) to `to_pkh` in `outputs` equal parts.

    `tag` shifts the fee by a few units so two payments of one coin get different ids.
    """
    coinbase = block.txs[0]
    value = coinbase.outputs[0].amount - fee - tag
    part = value // outputs
    unsigned = Transaction(
        [TxIn(coinbase.txid, 0, b"", b"")], [TxOut(part, to_pkh) for _ in range(outputs)]
    )
    return sign_transaction(unsigned, [node.wallet_key], node.params.genesis_hash)


def build_block(
    node: MemoryNode,
    txs: Iterable[Transaction] = (),
    *,
    fees: int = 0,
    prev: BlockIndex | None = None,
    extra: int = 0,
) -> Block:
    """A solved block on `prev` (default: `node`'s tip) that is NOT submitted anywhere.

    `fees` is what the coinbase claims on top of the reward: claim more than the transactions
    pay and the block is invalid (bad coinbase amount) although its proof of work is fine.
    """
    for n in range(extra, extra + 1000):
        block = solve_block(
            assemble_block(node.chain, list(txs), fees, node.payout_pkh, int(node.now), n, prev)
        )
        if block is not None:
            return block
    raise AssertionError("could not solve a regtest block")


def tips(nodes: Iterable[MemoryNode]) -> set[bytes]:
    return {n.chain.tip.hash for n in nodes}


def run_until(net: MemoryNetwork, done: Callable[[], bool], timeout: float, what: str) -> float:
    """Run until `done()`, failing with `what` otherwise; returns the virtual time it took."""
    start = net.now
    assert net.run_until(done, timeout), f"timed out after {timeout}s waiting for {what}"
    return net.now - start


# ------------------------------------------------------------------------------------ traffic


@dataclass
class Sent:
    sender: str
    addr: Address | None  # datagram destination (None on a stream)
    stream: bool
    msg: Message
    size: int


@dataclass
class Traffic:
    """Wraps every node's protocol to record each message it sends, by type, before
    encryption (what a protocol *asked* to send, whether or not the network then lost it)."""

    net: MemoryNetwork
    sent: list[Sent] = field(default_factory=list)

    def __post_init__(self) -> None:
        for node in self.net.nodes.values():
            self.watch(node)

    def watch(self, node: MemoryNode) -> None:
        p2p = node.p2p
        send, send_to_addr = p2p._send, p2p._send_to_addr

        def recorded_send(peer: Peer, msg: Message, stream: bool = False) -> None:
            self._record(node, peer.addr, msg, stream)
            send(peer, msg, stream)

        def recorded_send_to_addr(addr: Address, msg: Message) -> None:
            self._record(node, addr, msg, False)
            send_to_addr(addr, msg)

        p2p._send = recorded_send  # type: ignore[method-assign]
        p2p._send_to_addr = recorded_send_to_addr  # type: ignore[method-assign]

    def _record(self, node: MemoryNode, addr: Address, msg: Message, stream: bool) -> None:
        size = len(encode_message(node.params.magic, msg))
        on_stream = stream or size > MAX_DATAGRAM_ENVELOPE
        self.sent.append(Sent(node.name, None if on_stream else addr, on_stream, msg, size))

    def mark(self) -> int:
        """A position to count from later (`since=`)."""
        return len(self.sent)

    def counts(self, since: int = 0, sender: str | None = None) -> Counter[str]:
        return Counter(
            s.msg.NAME for s in self.sent[since:] if sender is None or s.sender == sender
        )

    def messages(self, name: str, since: int = 0) -> list[Sent]:
        return [s for s in self.sent[since:] if name == s.msg.NAME]


class LogRecorder:
    """Stands in for the protocol's structlog logger: keeps (event, fields) pairs."""

    def __init__(self) -> None:
        self.records: list[tuple[str, dict[str, Any]]] = []

    def _record(self, event: str, **fields: Any) -> None:
        self.records.append((event, fields))

    info = warning = debug = error = _record

    def events(self, name: str) -> list[dict[str, Any]]:
        return [f for e, f in self.records if e == name]


def strict(count: int) -> dict[int, Any]:
    """Configs that dial no gossiped address: the topology stays the one a test links."""
    return {i: config(max_outbound=0) for i in range(count)}


def flagged_push(block: Block, pipelined: int) -> CompactBlock:
    """`block` as a compact block with every transaction prefilled (nothing to fetch)."""
    prefilled = tuple(PrefilledTx(i, tx.encode()) for i, tx in enumerate(block.txs))
    return CompactBlock(block.header.encode(), 7, (), prefilled, pipelined)


def stranger(net: MemoryNetwork, target: MemoryNode, host: str) -> FakePeer:
    return fake_peer(net, target, (host, PORT), PrivateKey(random.Random(host).randbytes(32)))


def penalties(node: MemoryNode, other: MemoryNode | FakePeer) -> list[str]:
    return [p.reason for p in node.p2p.book.recent_penalties(other.addr)]
