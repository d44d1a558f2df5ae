"""A scripted hostile peer against a real node that also has an honest peer.

The hostile peer is plain sockets in the test process, bound to its own loopback address, that
completes a real handshake (Ed25519 Verack) and then misbehaves with handcrafted messages. The
node must name each offence in `getpeerinfo` while the peer is connected, discourage it (listed by
`listbanned`) once the score reaches the threshold, cut it off, and meanwhile keep relaying blocks
to and from its honest peer and answering RPC.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pytest

from consensus.block import Block, BlockHeader, decode_block
from consensus.blockbuild import BLOCK_VERSION, solve_block
from consensus.hashing import merkle_root
from consensus.keys import PrivateKey, decode_address
from consensus.params import REGTEST
from consensus.tx import Transaction, TxOut, decode_transaction, make_coinbase
from p2p.config import PROTOCOL_VERSION
from p2p.errors import ProtocolError
from p2p.messages import (
    BlockMsg,
    Goodbye,
    Hello,
    Message,
    Ping,
    Pong,
    StreamHello,
    TxMsg,
    Verack,
    handshake_digest,
)
from p2p.protocol import PENALTY
from p2p.wire import MAX_MESSAGE_SIZE, checksum, decode_message, encode_message, frame
from tests.daemon_harness import NodeProcess, wait_for
from tests.test_p2p_network import Net, host_of, network

pytestmark = pytest.mark.slow

PARAMS = REGTEST
MAX_UDP = 65_507
THRESHOLD = 100  # P2PConfig.misbehavior_threshold's default


class HostilePeer:
    """A peer scripted by the test: one UDP socket (its identity) and optionally a stream."""

    def __init__(self, host: str, target: tuple[str, int]) -> None:
        self.target = target
        self.key = PrivateKey(os.urandom(32))
        self.node_id = self.key.public_key
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind((host, 0))
        bound_host, bound_port = self.udp.getsockname()
        self.addr = f"{bound_host}:{bound_port}"
        self.stream: socket.socket | None = None
        self.session: bytes | None = None  # the nonce of the node's Hello to us
        self.received: list[Message] = []

    def close(self) -> None:
        self.udp.close()
        if self.stream is not None:
            self.stream.close()

    # ------------------------------------------------------------------------- sending

    def send_raw(self, data: bytes) -> None:
        self.udp.sendto(data, self.target)

    def send(self, msg: Message, magic: bytes = PARAMS.magic) -> None:
        self.send_raw(encode_message(magic, msg))

    def hello(self) -> Hello:
        return Hello(
            PROTOCOL_VERSION,
            PARAMS.genesis_hash,
            self.node_id,
            os.urandom(16),
            0,  # not listening: the node must never dial us back
            0,
            bytes(32),
            PARAMS.genesis_hash,
            "/hostile:0.0/",
            int(time.time()),
        )

    # ------------------------------------------------------------------------- receiving

    def poll(self, seconds: float) -> list[Message]:
        """Whatever the node sends within `seconds` (answering its pings, like a live peer)."""
        deadline = time.monotonic() + seconds
        got: list[Message] = []
        while (left := deadline - time.monotonic()) > 0:
            self.udp.settimeout(left)
            try:
                data, _ = self.udp.recvfrom(MAX_UDP)
            except TimeoutError:
                break
            try:
                msg = decode_message(data, PARAMS.magic, MAX_UDP)
            except ProtocolError:
                continue
            if isinstance(msg, Ping):
                self.send(Pong(msg.nonce, msg.height, msg.chainwork, msg.tip))
            got.append(msg)
        self.received += got
        return got

    def handshake(self, verack_key: PrivateKey | None = None, timeout: float = 20) -> None:
        """Hello, wait for the node's Hello, answer with a Verack signed by `verack_key`
        (default: our own key, i.e. a valid one)."""
        hello = self.hello()
        deadline = time.monotonic() + timeout
        while self.session is None:
            assert time.monotonic() < deadline, "the node never answered our hello"
            self.send(hello)  # datagrams may be lost: retry like a real node
            for msg in self.poll(0.5):
                if isinstance(msg, Hello):
                    self.session = msg.nonce
        signer = verack_key or self.key
        digest = handshake_digest(PARAMS.genesis_hash, self.session, self.node_id)
        self.send(Verack(signer.sign(digest)))

    def open_stream(self) -> None:
        """The TCP stream on the node's port, bound to our session by a StreamHello."""
        assert self.session is not None
        host = self.udp.getsockname()[0]
        self.stream = socket.create_connection(self.target, timeout=5, source_address=(host, 0))
        hello = encode_message(PARAMS.magic, StreamHello(self.node_id, self.session))
        self.stream.sendall(frame(hello))

    def goodbyes(self) -> list[str]:
        return [m.reason for m in self.received if isinstance(m, Goodbye)]


@dataclass
class Setup:
    net: Net
    node: NodeProcess
    honest: NodeProcess
    node_addr: str
    target: tuple[str, int]
    payout: str


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    with network(tmp_path) as net:
        node, node_addr = net.make("target", host_of(0))
        net.start(node)
        honest, _ = net.make("honest", host_of(1), "--connect", node_addr)
        net.start(honest)
        wait_for(lambda: node.rpc("getconnectioncount") == 1, 30, "the honest peer to connect")
        payout = node.rpc("getnewaddress")
        node.rpc("generatetoaddress", 101, payout)
        wait_for(lambda: honest.rpc("getblockcount") == 101, 30, "the honest peer to sync")
        host, port = node_addr.rsplit(":", 1)
        yield Setup(net, node, honest, node_addr, (host, int(port)), payout)


def peer_entry(node: NodeProcess, addr: str) -> dict[str, Any] | None:
    return next((p for p in node.rpc("getpeerinfo") if p["addr"] == addr), None)


def established(node: NodeProcess, peer: HostilePeer) -> bool:
    entry = peer_entry(node, peer.addr)
    return entry is not None and entry["status"] == "established"


def reasons(node: NodeProcess, peer: HostilePeer) -> list[str]:
    entry = peer_entry(node, peer.addr)
    return [] if entry is None else [p["reason"] for p in entry["penalties"]]


def banned(node: NodeProcess) -> set[str]:
    """Banned and discouraged hosts (IPs: both are per host, whatever the port)."""
    return {b["address"] for b in node.rpc("listbanned")}


def host(peer: HostilePeer) -> str:
    return peer.addr.rsplit(":", 1)[0]


def assert_cut_off(s: Setup, peer: HostilePeer, reason: str) -> None:
    """Discouraged, disconnected with a Goodbye naming the offence, and ignored afterwards."""
    wait_for(lambda: host(peer) in banned(s.node), 20, f"{host(peer)} to be discouraged")
    assert peer_entry(s.node, peer.addr) is None
    # The node said why (a Goodbye datagram), then ignores everything from that address.
    wait_for(
        lambda: peer.poll(0.1) is not None
        and any(r.startswith("misbehaving") for r in peer.goodbyes()),
        10,
        "a goodbye naming the misbehaviour",
    )
    assert any(reason in r for r in peer.goodbyes()), peer.goodbyes()
    peer.send(peer.hello())
    assert not [m for m in peer.poll(1.5) if isinstance(m, Hello | Verack)]
    assert peer_entry(s.node, peer.addr) is None


def assert_still_serving(s: Setup) -> None:
    """The honest peer is connected, unpunished, and blocks relay both ways."""
    peers = s.node.rpc("getpeerinfo")
    honest = [p for p in peers if p["status"] == "established"]
    assert len(honest) == 1 and honest[0]["misbehavior"] == 0, peers
    height = s.node.rpc("getblockcount")
    s.node.rpc("generatetoaddress", 2, s.payout)
    wait_for(lambda: s.honest.rpc("getblockcount") == height + 2, 30, "relay to the honest peer")
    s.honest.rpc("generatetoaddress", 1, s.honest.rpc("getnewaddress"))
    wait_for(
        lambda: s.node.rpc("getbestblockhash") == s.honest.rpc("getbestblockhash"),
        30,
        "relay from the honest peer",
    )
    assert s.node.rpc("getblockcount") == height + 3


def tip_block(node: NodeProcess) -> Block:
    raw = bytes.fromhex(node.rpc("getblock", node.rpc("getbestblockhash"), 0))
    return decode_block(raw, PARAMS.max_block_size)


def overpaying_block(node: NodeProcess, pkh: bytes) -> Block:
    """A child of the node's tip with valid proof of work whose coinbase pays double."""
    tip = tip_block(node)
    height = node.rpc("getblockcount") + 1
    coinbase = make_coinbase(height, [TxOut(2 * PARAMS.block_reward(height), pkh)])
    header = BlockHeader(
        BLOCK_VERSION,
        tip.hash,
        merkle_root([coinbase.txid]),
        tip.header.timestamp + 1,
        tip.header.bits,
        0,
    )
    solved = solve_block(Block(header, [coinbase]))
    assert solved is not None
    return solved


def badly_signed_tx(node: NodeProcess, payee: str) -> Transaction:
    """A spend of a real, mature coin of the node's wallet with one signature byte flipped."""
    coin = next(u for u in node.rpc("listunspent") if u["spendable"])
    raw = node.rpc(
        "createrawtransaction",
        [{"txid": coin["txid"], "vout": coin["vout"]}],
        {payee: coin["amount"] - 10_000},
    )
    signed = decode_transaction(
        bytes.fromhex(node.rpc("signrawtransactionwithwallet", raw)["hex"]),
        PARAMS.max_block_size,
    )
    txin = signed.inputs[0]
    broken = txin._replace(signature=bytes([txin.signature[0] ^ 1]) + txin.signature[1:])
    return Transaction([broken, *signed.inputs[1:]], signed.outputs, signed.version,
                       signed.locktime)


def envelope(type_num: int, payload: bytes, magic: bytes = PARAMS.magic) -> bytes:
    """A hand-built envelope, for types and payloads `encode_message` would never produce."""
    return bytes(msgpack.packb([magic, type_num, payload, checksum(payload)], use_bin_type=True))


# ----------------------------------------------------------------------------------- tests


def test_malformed_traffic_then_invalid_block(setup: Setup) -> None:
    s = setup
    peer = HostilePeer("127.0.0.9", s.target)
    try:
        peer.handshake()
        wait_for(lambda: established(s.node, peer), 20, "the hostile handshake")
        entry = peer_entry(s.node, peer.addr)
        assert entry is not None and entry["node_id"] == peer.node_id.hex()
        assert entry["inbound"] and entry["misbehavior"] == 0

        good_ping = encode_message(PARAMS.magic, Ping(1, 0, bytes(32), PARAMS.genesis_hash))
        offences: list[tuple[str, bytes]] = [
            ("malformed", b"\xc1 not msgpack at all \xff\x00"),
            ("truncated", good_ping[: len(good_ping) // 2]),
            ("bad-magic", encode_message(b"XXXX", Ping(1, 0, bytes(32), PARAMS.genesis_hash))),
            ("bad-checksum", good_ping[:-1] + bytes([good_ping[-1] ^ 0xFF])),
            ("unknown-type", envelope(99, b"\x90")),
            ("bad-field", envelope(Ping.TYPE, b"\x92\x01\x02")),  # a Ping of 2 fields
        ]
        expected: list[str] = []
        for reason, data in offences:
            peer.send_raw(data)
            expected.append(reason)
            wait_for(lambda: reasons(s.node, peer) == expected, 10, f"penalty {reason}")
        score = sum(PENALTY[r] for r in expected)
        assert score < THRESHOLD
        entry = peer_entry(s.node, peer.addr)
        assert entry is not None and entry["status"] == "established"
        assert entry["misbehavior"] == score
        assert [p["score"] for p in entry["penalties"]] == [PENALTY[r] for r in expected]
        assert s.node.rpc("listbanned") == []

        # A transaction with a broken signature: penalised, not accepted, still connected.
        bad_tx = badly_signed_tx(s.node, s.payout)
        peer.send(TxMsg(bad_tx.encode()))
        expected.append("invalid-tx")
        wait_for(lambda: reasons(s.node, peer) == expected, 10, "penalty invalid-tx")
        assert bad_tx.txid.hex() not in s.node.rpc("getrawmempool")
        assert established(s.node, peer)

        # A block with valid proof of work that pays its miner twice the reward: discouraged.
        pkh = decode_address(s.payout, PARAMS.address_prefix)
        block = overpaying_block(s.node, pkh)
        tip = s.node.rpc("getbestblockhash")
        peer.send(BlockMsg(block.encode()))
        assert_cut_off(s, peer, "invalid-block")
        assert s.node.rpc("getbestblockhash") == tip
        tips = {t["hash"]: t["status"] for t in s.node.rpc("getchaintips")}
        assert tips.get(block.hash.hex()) in (None, "invalid")
    finally:
        peer.close()
    assert_still_serving(s)


def test_oversized_stream_frame_and_unrequested_block_flood(setup: Setup) -> None:
    s = setup
    peer = HostilePeer("127.0.0.10", s.target)
    try:
        peer.handshake()
        wait_for(lambda: established(s.node, peer), 20, "the hostile handshake")
        peer.open_stream()
        wait_for(
            lambda: (peer_entry(s.node, peer.addr) or {}).get("stream"), 10, "the stream bound"
        )

        # A frame announcing more than any message may be: refused on the length prefix alone.
        assert peer.stream is not None
        peer.stream.sendall(struct.pack(">I", MAX_MESSAGE_SIZE + 1) + b"\x00" * 64)
        wait_for(lambda: reasons(s.node, peer) == ["oversize"], 10, "penalty oversize")
        peer.stream.settimeout(10)
        assert peer.stream.recv(1024) == b""  # the node closed the stream
        entry = peer_entry(s.node, peer.addr)
        assert entry is not None and entry["status"] == "established" and not entry["stream"]

        # Truncated input on the stream: a frame whose envelope ends early.
        peer.open_stream()
        ping = encode_message(PARAMS.magic, Ping(2, 0, bytes(32), PARAMS.genesis_hash))
        assert peer.stream is not None
        peer.stream.sendall(frame(ping[:-3]))
        wait_for(
            lambda: reasons(s.node, peer) == ["oversize", "truncated"], 10, "penalty truncated"
        )

        # Copies of a block the node already has, never asked for: past the per-minute
        # allowance each one costs the sender until it is discouraged.
        known = BlockMsg(tip_block(s.node).encode())
        allowance = 60  # P2PConfig.max_unrequested_blocks_per_minute
        for _ in range(allowance):
            peer.send(known)
        peer.poll(0.3)
        assert reasons(s.node, peer) == ["oversize", "truncated"]
        assert established(s.node, peer)

        def one_more_copy() -> bool:
            # Datagrams can be dropped, so keep sending until the node counts past the limit.
            if "unrequested-block-flood" in reasons(s.node, peer):
                return True
            peer.send(known)
            return False

        # getpeerinfo lists only connected peers, so seeing the reason there is seeing it while
        # the peer is still connected (the score is 80, under the threshold, at that point).
        wait_for(one_more_copy, 10, "penalty unrequested-block-flood while still connected")
        for _ in range(20):
            peer.send(known)
        assert_cut_off(s, peer, "unrequested-block-flood")
    finally:
        peer.close()
    assert_still_serving(s)


def test_forged_handshake_is_discouraged(setup: Setup) -> None:
    s = setup
    peer = HostilePeer("127.0.0.11", s.target)
    try:
        # A Verack signed by a key other than the one our Hello claims.
        peer.handshake(verack_key=PrivateKey(os.urandom(32)))
        assert_cut_off(s, peer, "bad-handshake")
        # A stranger's garbage (no handshake at all) never reaches a handler.
        stranger = HostilePeer("127.0.0.12", s.target)
        try:
            stranger.send(TxMsg(b"\x00" * 10))
            stranger.send_raw(os.urandom(300))
            assert not stranger.poll(1.0)
            assert peer_entry(s.node, stranger.addr) is None
        finally:
            stranger.close()
    finally:
        peer.close()
    assert_still_serving(s)
