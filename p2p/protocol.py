"""The P2P protocol as a sans-IO state machine.

`P2PProtocol` never touches a socket or a clock. The transport shell feeds it what arrives
(`receive_datagram`, `stream_opened`, `receive_stream_data`, `stream_closed`) and calls
`handle_timer(now)` regularly; it asks `take_actions()` for what to send and `take_events()` for
what happened. Blocks, headers and transactions are handed to the node through `NodeInterface`
(which validates with the pure consensus code and commits); the node calls `announce_block` /
`announce_tx` after accepting anything, whatever its source, so relay has one path.

Channels: datagrams carry the handshake, pings (with each side's tip and work), address gossip,
inventory and small messages; a per-peer stream carries headers, blocks and anything larger than
a datagram. Nothing depends on a datagram arriving: hellos are retried, pings repeat the tip, and
a peer that is ahead is asked for headers at the next ping.
"""

from __future__ import annotations

import random
import secrets
from dataclasses import dataclass
from typing import Any, ClassVar

import structlog

from consensus.block import Block, decode_block, decode_header
from consensus.chainstate import AcceptResult, BlockIndex, BlockStatus
from consensus.errors import ConsensusError, DecodeError
from consensus.hashing import ZERO_HASH
from consensus.keys import PrivateKey
from consensus.params import ChainParams
from consensus.pow import bits_to_target, work_from_target
from consensus.tx import Transaction, decode_transaction
from consensus.validation import check_header_pow
from p2p.actions import (
    Action,
    CloseStream,
    DoubleSpendSeen,
    Event,
    NodeInterface,
    OpenStream,
    PeerConnected,
    PeerDisconnected,
    PeerPenalised,
    PeerRefused,
    SendDatagram,
    SendStream,
)
from p2p.config import PROTOCOL_VERSION, Address, P2PConfig
from p2p.errors import AUTH_FAILED, ProtocolError
from p2p.messages import (
    INV_BLOCK,
    INV_TX,
    MAX_ADDR,
    MAX_HEADERS,
    MAX_LOCATOR,
    Addr,
    AddrEntry,
    BlockMsg,
    BlockTxn,
    CompactBlock,
    DoubleSpendAlert,
    GetAddr,
    GetBlockTxn,
    GetData,
    GetHeaders,
    Goodbye,
    Headers,
    Hello,
    Inv,
    InvItem,
    Message,
    NotFound,
    Ping,
    Pong,
    PrefilledTx,
    TxMsg,
    short_tx_id,
)
from p2p.peer import BoundedSet, PartialBlock, Peer, PeerStatus
from p2p.peerbook import PeerBook
from p2p.ratelimit import TokenBucket
from p2p.secure_stream import (
    STREAM_NONCE_SIZE,
    TAG_SIZE,
    PreambleReader,
    StreamCipher,
    preamble,
)
from p2p.session import SESSION_OVERHEAD, HandshakeRefused, SessionTable, SessionUp
from p2p.wire import MAX_DATAGRAM_SIZE, MAX_MESSAGE_SIZE, decode_message
from p2p.wire import encode_message as encode_envelope

log = structlog.get_logger("powlab.p2p")

MAX_UDP_PAYLOAD = 65_507
#: The largest envelope sent as a datagram: with the session's header and tag it is one
#: MAX_DATAGRAM_SIZE datagram.
MAX_DATAGRAM_ENVELOPE = MAX_DATAGRAM_SIZE - SESSION_OVERHEAD
MAX_STREAM_FRAME = MAX_MESSAGE_SIZE + TAG_SIZE
MAX_STREAMS_PER_SESSION = 256  # stream nonces remembered per session (then it must rekey)
ADDR_PER_DATAGRAM = 10  # keeps an Addr message inside one datagram
MAX_ANNOUNCE_BLOCKS = 10  # a long reorg is announced by its tip only
# Transaction relay runs over lossy datagrams: an Inv the peer never asked about is repeated,
# and a GetData that went unanswered is retried (with the same announcer if it is the only one).
TX_ANNOUNCE_RETRIES = 3
INV_PER_DATAGRAM = 35  # 36-byte items: an Inv of 35 stays inside one datagram
TX_REQUEST_ATTEMPTS = 8
REPLY_OVERHEAD = 64  # envelope and frame around a block or transaction, at most

# Penalty scores: the threshold (default 100) disconnects and discourages the peer.
PENALTY = {
    "malformed": 10,
    "truncated": 10,
    "bad-magic": 10,
    "bad-checksum": 10,
    "oversize": 50,
    "unknown-type": 10,
    "bad-field": 20,
    "rate-limit": 10,
    "invalid-block": 100,
    "invalid-header": 100,
    "invalid-tx": 10,
    "malformed-tx": 20,
    "malformed-block": 50,
    "wrong-network": 100,
    "unrequested-block-flood": 20,
    "unconnecting-headers": 10,
    "stream-overflow": 50,
    "inv-flood": 20,
    "getdata-flood": 20,
    "headers-flood": 20,
    "low-work-headers": 20,
}
# Block rejections that say nothing bad about the sender: the body may have been mangled in
# transit, or the block is only early.
HARMLESS_BLOCK_REASONS = frozenset(
    {"bad-merkle-root", "bad-txns-duplicate", "time-too-new", "duplicate", "prev-blk-not-found"}
)
# Transaction rejections that an honest peer can cause (races, policy differences).
HARMLESS_TX_REASONS = frozenset(
    {
        "txn-mempool-conflict",
        "txn-already-in-mempool",
        "txn-already-known",
        "bad-txns-inputs-missingorspent",
        "bad-txns-premature-spend-of-coinbase",
        "min-relay-fee-not-met",
        "mempool-full",
        "mempool-min-fee-not-met",
        "too-long-mempool-chain",
    }
)


@dataclass
class _Stream:
    id: int
    addr: Address
    outbound: bool
    opened_at: float
    preamble: PreambleReader | None = None  # listener side until the preamble is read
    cipher: StreamCipher | None = None
    session_addr: Address | None = None  # whose session the preamble named
    peer: Peer | None = None


class P2PProtocol:
    def __init__(
        self,
        params: ChainParams,
        node_key: PrivateKey,
        config: P2PConfig,
        node: NodeInterface,
        rng: random.Random,
        now: float,
    ) -> None:
        self.params = params
        self.key = node_key
        self.node_id = node_key.public_key
        self.config = config
        self.node = node
        self.rng = rng
        self.magic = params.magic
        self.book = PeerBook(
            config.max_addr_book,
            config.misbehavior_threshold,
            config.ban_seconds,
            max_records=config.max_penalty_records,
            max_discouraged=config.max_discouraged,
            penalty_expiry=config.penalty_expiry_seconds,
        )
        self.peers: dict[int, Peer] = {}
        self.by_addr: dict[Address, Peer] = {}
        self.streams: dict[int, _Stream] = {}
        self.network_active = True
        self.undecodable_datagrams = 0
        self.sessions = SessionTable(self.magic, params.genesis_hash, node_key, config, now)
        self.stream_drops: dict[str, int] = {}  # streams closed before authenticating, by reason
        self.bans = 0  # discouragements and setbans, for /metrics
        self._pinned: dict[Address, bytes] = dict(config.peer_ids)  # --connect NODEID@HOST:PORT
        self.handler_failures = 0  # exceptions raised by message handlers (peer dropped)
        self.connect_only = bool(config.connect) or config.connect_only
        self.link_faults: dict[str, Any] = {}
        self._next_peer_id = 1
        self._actions: list[Action] = []
        self._events: list[Event] = []
        self._self_addrs: set[Address] = set()
        self._persistent: dict[Address, float] = {}  # address -> next dial time
        for addr in (*config.connect, *config.addnode):
            self._persistent[addr] = now
        self._blocks_in_flight: dict[bytes, tuple[int, float]] = {}
        # Transactions peers announced to us. Bounded: each peer's announcements we track
        # (Peer.tx_announced, max_peer_tx_announcements) and requests to it
        # (Peer.txs_in_flight, max_peer_txs_in_flight), and max_txs_in_flight in all; a peer's
        # share goes when it disconnects.
        self._txs_in_flight: dict[bytes, tuple[int, float]] = {}  # txid -> (peer id, asked at)
        self._tx_announcers: dict[bytes, list[int]] = {}  # txid -> peers that announced it
        self._tx_attempts: dict[bytes, int] = {}  # GetData sent so far for an announced tx
        # (peer id, txid) -> (when announced, re-announcements): Invs the peer has not asked for
        # (at most max_seen).
        self._tx_unrequested: dict[tuple[int, bytes], tuple[float, int]] = {}
        self._seen_txs = BoundedSet(config.max_seen)  # rejected or already processed
        self._download_queue: list[BlockIndex] = []
        self._download_for: bytes | None = None
        # A block arrived: ask for more once the current input (often a dozen blocks in one
        # stream read) is handled, so a sync sends one getdata per batch, not one per block.
        self._block_requests_due = False
        self._last_dial = 0.0
        self._started = now

    # ----------------------------------------------------------------- outputs

    def take_actions(self) -> list[Action]:
        self._drain_sessions()
        actions, self._actions = self._actions, []
        return actions

    def take_events(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    # ----------------------------------------------------------------- sending

    def _encode(self, msg: Message) -> bytes:
        return encode_envelope(self.magic, msg)

    def _send(self, peer: Peer, msg: Message, stream: bool = False) -> None:
        data = self._encode(msg)
        if not stream and len(data) <= MAX_DATAGRAM_ENVELOPE:
            sealed = self.sessions.seal(peer.addr, data)
            if sealed is not None:
                peer.bytes_sent += len(sealed)
                self._actions.append(SendDatagram(peer.addr, sealed))
            return
        if peer.stream_id is not None:
            self._send_on_stream(peer, self.streams[peer.stream_id], data)
            return
        peer.pending_stream.append(data)
        peer.pending_stream_bytes += len(data)
        if peer.pending_stream_bytes > self.config.max_pending_stream_bytes:
            self._disconnect(peer, "stream-overflow", peer.last_recv)
            return
        if not peer.inbound and not peer.stream_requested and peer.established:
            peer.stream_requested = True
            self._actions.append(OpenStream(peer.addr))

    def _send_on_stream(self, peer: Peer, stream: _Stream, envelope: bytes) -> None:
        assert stream.cipher is not None
        framed = stream.cipher.seal(envelope)
        peer.bytes_sent += len(framed)
        self._actions.append(SendStream(stream.id, framed))

    def _send_to_addr(self, addr: Address, msg: Message) -> None:
        """A message under the session with `addr` whether or not it is a peer (refusals)."""
        sealed = self.sessions.seal(addr, self._encode(msg))
        if sealed is not None:
            self._actions.append(SendDatagram(addr, sealed))

    def _drain_sessions(self) -> None:
        for addr, data in self.sessions.take_outbox():
            self._actions.append(SendDatagram(addr, data))

    def _session_events(self, now: float) -> None:
        """Carry out what the session layer did: its datagrams first (a finish must leave
        before the Hello sealed under the session it completes), then its events."""
        self._drain_sessions()
        for event in self.sessions.take_events():
            if isinstance(event, SessionUp):
                self._on_session_up(event, now)
            else:
                self._on_handshake_refused(event, now)

    # ----------------------------------------------------------------- control

    def connect(
        self, addr: Address, now: float, persistent: bool = False, node_id: bytes | None = None
    ) -> None:
        """Dial `addr`; with `node_id`, only a peer that proves that identity is accepted
        there (`--connect NODEID@HOST:PORT`)."""
        if persistent:
            self._persistent[addr] = now
        if node_id is not None:
            self._pinned[addr] = node_id
        if addr in self.by_addr or addr in self._self_addrs or not self.network_active:
            return
        if self.book.is_banned(addr, now):
            return
        peer = self._new_peer(addr, inbound=False, now=now)
        peer.last_hello_sent = now
        self.sessions.initiate(addr, now, self._pinned.get(addr))
        self._session_events(now)

    def forget_persistent(self, addr: Address) -> bool:
        return self._persistent.pop(addr, None) is not None

    def persistent_addresses(self) -> list[Address]:
        return list(self._persistent)

    def disconnect(self, peer_id: int, now: float, reason: str = "requested") -> bool:
        peer = self.peers.get(peer_id)
        if peer is None:
            return False
        self._disconnect(peer, reason, now)
        return True

    def set_network_active(self, active: bool, now: float) -> None:
        self.network_active = active
        if not active:
            for peer in list(self.peers.values()):
                self._disconnect(peer, "network-inactive", now)
        else:
            for addr in self._persistent:
                self._persistent[addr] = now

    def ban(self, host: str, seconds: float, now: float) -> None:
        self.book.ban(host, seconds, now)
        self.bans += 1
        for peer in list(self.peers.values()):
            if peer.addr[0] == host:
                self._disconnect(peer, "banned", now)

    # ----------------------------------------------------------------- peers

    def _new_peer(self, addr: Address, inbound: bool, now: float) -> Peer:
        peer = Peer(self._next_peer_id, addr, inbound, now, self.config)
        self._next_peer_id += 1
        self.peers[peer.id] = peer
        self.by_addr[addr] = peer
        return peer

    def _hello(self, peer: Peer, now: float) -> Hello:
        tip = self.node.chain.tip
        return Hello(
            PROTOCOL_VERSION,
            self.params.genesis_hash,
            self.config.listen_port if self.config.listen else 0,
            tip.height,
            tip.chainwork.to_bytes(32, "big"),
            tip.hash,
            self.config.user_agent,
            int(now),
        )

    def _send_hello(self, peer: Peer, now: float) -> None:
        peer.last_hello_sent = now
        self._send(peer, self._hello(peer, now))

    def _disconnect(
        self, peer: Peer, reason: str, now: float, close_session: bool = True
    ) -> None:
        if peer.status is PeerStatus.CLOSED:
            return
        was_established = peer.established
        peer.status = PeerStatus.CLOSED
        self.peers.pop(peer.id, None)
        if self.by_addr.get(peer.addr) is peer:
            del self.by_addr[peer.addr]
        if reason not in ("goodbye", "network-inactive-silent"):
            self._send_to_addr(peer.addr, Goodbye(reason[:200]))
        if close_session:
            self.sessions.close(peer.addr)
        if peer.stream_id is not None:
            self.streams.pop(peer.stream_id, None)
            self._actions.append(CloseStream(peer.stream_id))
        for block_hash, (peer_id, _) in list(self._blocks_in_flight.items()):
            if peer_id == peer.id:
                self._block_landed(block_hash)
        self._forget_peer_txs(peer)
        if peer.addr in self._persistent:
            self._persistent[peer.addr] = now + self.config.reconnect_interval
        if was_established:
            log.info("peer_disconnected", peer=peer.label, reason=reason)
            self._events.append(PeerDisconnected(peer.id, peer.addr, reason))

    def _penalise(self, addr: Address, reason: str, now: float, score: int | None = None) -> None:
        score = PENALTY.get(reason, 10) if score is None else score
        discouraged = self.book.penalise(addr, reason, score, now)
        log.info(
            "peer_penalised",
            peer=f"{addr[0]}:{addr[1]}",
            reason=reason,
            score=score,
            total=self.book.score(addr),
            discouraged=discouraged,
        )
        self._events.append(PeerPenalised(addr, reason, score, discouraged))
        if discouraged:
            self.bans += 1
            # Discouragement is per host (as in Bitcoin Core): every peer there goes.
            for peer in [p for p in self.peers.values() if p.addr[0] == addr[0]]:
                self._disconnect(peer, f"misbehaving: {reason}", now)

    # ----------------------------------------------------------------- input: datagrams

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        try:
            self._receive_datagram(data, addr, now)
        finally:
            self._request_due_blocks(now)

    def _receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        if not self.network_active or self.book.is_banned(addr, now):
            return
        plaintext = self.sessions.receive(data, addr, now)
        self._session_events(now)
        if plaintext is None:
            return  # a handshake step, a keepalive, or dropped and counted by the session layer
        peer = self.by_addr.get(addr)
        if peer is None:
            return  # a session we refused a peer on: its last datagrams are still arriving
        try:
            msg = decode_message(plaintext, self.magic, MAX_UDP_PAYLOAD)
        except ProtocolError as exc:
            # Authenticated: the peer itself sent this, so the penalty is deserved.
            self.undecodable_datagrams += 1
            self._penalise(addr, exc.reason, now)
            return
        if not self._within_budget(peer, msg, len(data), now):
            return
        self._handle(peer, msg, now)

    def _within_budget(self, peer: Peer, msg: Message, size: int, now: float) -> bool:
        peer.last_recv = now
        peer.bytes_recv += size
        if self._answers_our_request(peer, msg):
            # We set that volume (blocks in flight per peer, headers per request): a sync at
            # thousands of blocks a second must not look like a flood from the peer serving it.
            return True
        if peer.msg_bucket.take(1, now) and peer.byte_bucket.take(size, now):
            return True
        self._penalise(peer.addr, "rate-limit", now)
        return False

    @staticmethod
    def _answers_our_request(peer: Peer, msg: Message) -> bool:
        kind = type(msg)
        if kind is BlockMsg:
            return peer.blocks_in_flight > 0
        if kind is Headers:
            return peer.headers_requested_at is not None
        if kind is BlockTxn:
            return bool(peer.pending_compact)
        return False

    def _block_requested(self, block_hash: bytes, peer: Peer, now: float) -> None:
        self._block_landed(block_hash)  # it may be re-requested from another peer
        self._blocks_in_flight[block_hash] = (peer.id, now)
        peer.blocks_in_flight += 1

    def _block_landed(self, block_hash: bytes) -> tuple[int, float] | None:
        """Forget the request for `block_hash` (answered, refused or given up on)."""
        request = self._blocks_in_flight.pop(block_hash, None)
        if request is not None:
            peer = self.peers.get(request[0])
            if peer is not None:
                peer.blocks_in_flight -= 1
        return request

    def _refuse(self, addr: Address, reason: str) -> None:
        log.info("peer_refused", peer=f"{addr[0]}:{addr[1]}", reason=reason)
        self._events.append(PeerRefused(addr, reason))

    # ----------------------------------------------------------------- input: streams

    def stream_opened(self, stream_id: int, addr: Address, outbound: bool, now: float) -> None:
        if not outbound:
            strangers = sum(1 for st in self.streams.values() if st.peer is None)
            if strangers >= self.config.max_unauthenticated_streams:
                self._stream_dropped("capacity")
                self._actions.append(CloseStream(stream_id))
                return
            self.streams[stream_id] = _Stream(
                stream_id, addr, outbound, now, preamble=PreambleReader(self.magic)
            )
            return
        peer = self.by_addr.get(addr)
        session = self.sessions.session(addr)
        if peer is None or not peer.established or session is None:
            self._actions.append(CloseStream(stream_id))
            return
        nonce = secrets.token_bytes(STREAM_NONCE_SIZE)
        cipher = StreamCipher.for_dialler(session.stream_secret, nonce, MAX_STREAM_FRAME)
        stream = _Stream(stream_id, addr, outbound, now, cipher=cipher, session_addr=addr)
        self.streams[stream_id] = stream
        # The empty first frame proves the keys at once, so the listener never has to buffer
        # more than a few bytes from a connection it cannot yet attribute.
        opening = preamble(self.magic, session.their_index, nonce) + cipher.seal(b"")
        self._actions.append(SendStream(stream_id, opening))
        self._bind_stream(stream, peer)

    def stream_failed(self, addr: Address, now: float) -> None:
        peer = self.by_addr.get(addr)
        if peer is not None:
            peer.stream_requested = False
            self._disconnect(peer, "stream-failed", now)

    def receive_stream_data(self, stream_id: int, data: bytes, now: float) -> None:
        try:
            self._receive_stream_data(stream_id, data, now)
        finally:
            self._request_due_blocks(now)

    def _request_due_blocks(self, now: float) -> None:
        if self._block_requests_due:
            self._block_requests_due = False
            self._request_blocks(now)

    def _receive_stream_data(self, stream_id: int, data: bytes, now: float) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        try:
            if stream.cipher is None:
                data = self._read_preamble(stream, data)
                if stream.cipher is None:
                    return
            envelopes = stream.cipher.feed(data)
        except ProtocolError as exc:
            # Framing and authentication errors are not charged to anyone: before the first
            # frame verifies the stream is nobody's, and after it an on-path attacker can
            # corrupt a TCP stream as easily as the peer can. The dialler reopens it.
            self._stream_dropped(exc.reason if stream.peer is None else f"bound-{exc.reason}")
            self._close_stream(stream)
            return
        if stream.peer is None and not self._attribute_stream(stream):
            return
        for envelope in envelopes:
            try:
                msg = decode_message(envelope, self.magic, MAX_MESSAGE_SIZE)
            except ProtocolError as exc:
                self._stream_protocol_error(stream, exc, now)
                return
            peer = stream.peer
            if peer is None or peer.status is PeerStatus.CLOSED:
                return
            if not self._within_budget(peer, msg, len(envelope) + 4 + TAG_SIZE, now):
                continue
            self._handle(peer, msg, now)

    def _read_preamble(self, stream: _Stream, data: bytes) -> bytes:
        """Feed the listener's preamble reader; once complete, set up the stream's keys from
        the session it names. Returns the bytes after the preamble."""
        assert stream.preamble is not None
        got = stream.preamble.feed(data)
        if got is None:
            return b""
        (index, nonce), rest = got
        session = self.sessions.by_index.get(index)
        if (
            session is None
            or nonce in session.stream_nonces
            or len(session.stream_nonces) >= MAX_STREAMS_PER_SESSION
        ):
            # Unknown session, or a replayed preamble: its keys would repeat nonces.
            raise ProtocolError(AUTH_FAILED, "stream preamble names no usable session")
        session.stream_nonces.add(nonce)
        stream.preamble = None
        stream.session_addr = session.addr
        stream.cipher = StreamCipher.for_listener(session.stream_secret, nonce, MAX_STREAM_FRAME)
        return rest

    def _attribute_stream(self, stream: _Stream) -> bool:
        """Bind an inbound stream to its peer once a frame has verified under its keys."""
        assert stream.cipher is not None
        if not stream.cipher.authenticated:
            return False
        peer = self.by_addr.get(stream.session_addr) if stream.session_addr else None
        if peer is None or not peer.established:
            self._stream_dropped("no-peer")
            self._close_stream(stream)
            return False
        ours = self.streams.get(peer.stream_id) if peer.stream_id is not None else None
        if ours is not None and ours.outbound:
            # Both sides dialled each other, so both opened a stream. Both keep the one
            # dialled by the smaller node id, and the other side stops dialling for good.
            assert peer.node_id is not None
            if self.node_id < peer.node_id:
                self._stream_dropped("duplicate")
                self._close_stream(stream)
                return False
            peer.inbound = True
        self._bind_stream(stream, peer)
        return True

    def _stream_dropped(self, reason: str) -> None:
        self.stream_drops[reason] = self.stream_drops.get(reason, 0) + 1

    def _stream_protocol_error(self, stream: _Stream, exc: ProtocolError, now: float) -> None:
        self._close_stream(stream)
        if stream.peer is not None:
            self._penalise(stream.peer.addr, exc.reason, now)

    def _bind_stream(self, stream: _Stream, peer: Peer) -> None:
        if peer.stream_id is not None and peer.stream_id != stream.id:
            old = self.streams.pop(peer.stream_id, None)
            if old is not None:
                self._actions.append(CloseStream(old.id))
        stream.peer = peer
        peer.stream_id = stream.id
        for envelope in peer.pending_stream:
            self._send_on_stream(peer, stream, envelope)
        peer.pending_stream = []
        peer.pending_stream_bytes = 0

    def _close_stream(self, stream: _Stream) -> None:
        self.streams.pop(stream.id, None)
        self._actions.append(CloseStream(stream.id))
        peer = stream.peer
        if peer is not None and peer.stream_id == stream.id:
            peer.stream_id = None
            peer.stream_requested = False
            if peer.established and not peer.inbound:
                # We dropped our own stream (it failed to verify): the dialler reopens it.
                peer.stream_requested = True
                self._actions.append(OpenStream(peer.addr))

    def stream_closed(self, stream_id: int, now: float) -> None:
        stream = self.streams.pop(stream_id, None)
        if stream is None or stream.peer is None:
            return
        peer = stream.peer
        if peer.stream_id == stream_id:
            peer.stream_id = None
            peer.stream_requested = False
            if peer.established and not peer.inbound:
                peer.stream_requested = True
                self._actions.append(OpenStream(peer.addr))

    # ----------------------------------------------------------------- handshake

    def _on_session_up(self, event: SessionUp, now: float) -> None:
        """`event.addr` proved it holds `event.node_id`: admit it as a peer, or refuse it."""
        addr, node_id = event.addr, event.node_id
        peer = self.by_addr.get(addr)
        if node_id == self.node_id:
            self._self_addrs.add(addr)
            self._refuse_session(addr, peer, "connection to self", "self-connection", now)
            return
        if self.config.allow_peers and node_id not in self.config.allow_peers:
            self._send_to_addr(addr, Goodbye("not on the allowlist"))
            self._refuse_session(addr, peer, "node id not on the allowlist", "not-allowed", now)
            return
        pinned = self._pinned.get(addr)
        if pinned is not None and pinned != node_id:
            self._refuse_session(
                addr, peer, "node id is not the one pinned with --connect", "wrong-node-id", now
            )
            return
        if peer is not None and peer.node_id is not None:
            if peer.node_id == node_id:
                if not peer.established:
                    self._settle_direction(peer)
                return  # a rekey, or both sides dialled at once: the same peer
            # Another node now answers at this address (a restart with a new identity).
            self._disconnect(peer, "replaced by another node", now, close_session=False)
            peer = None
        if peer is None:
            reason = self._inbound_refusal(node_id, now)
            if reason:
                self._send_to_addr(addr, Goodbye(reason))
                self._refuse_session(addr, None, reason, reason, now)
                return
            peer = self._new_peer(addr, inbound=not event.initiator, now=now)
        else:
            self._settle_direction(peer)
        peer.node_id = node_id
        self._send_hello(peer, now)

    def _settle_direction(self, peer: Peer) -> None:
        """If both sides dialled at once, whoever initiated the session both now use is the
        dialler: the one that opens the stream."""
        current = self.sessions.session(peer.addr)
        if current is not None:
            peer.inbound = not current.initiator

    def _refuse_session(
        self, addr: Address, peer: Peer | None, why: str, reason: str, now: float
    ) -> None:
        self._refuse(addr, why)
        if peer is not None:
            self._disconnect(peer, reason, now)
        self.sessions.close(addr)

    def _on_handshake_refused(self, event: HandshakeRefused, now: float) -> None:
        self._refuse(event.addr, event.reason)
        peer = self.by_addr.get(event.addr)
        if peer is not None and not peer.established:
            self._disconnect(peer, "handshake-refused", now)

    def _on_hello(self, peer: Peer, msg: Hello, now: float) -> None:
        """The peer's chain and version, over its authenticated session."""
        if msg.genesis != self.params.genesis_hash:
            # The session prologue already binds the genesis: only a broken peer gets here.
            self._penalise(peer.addr, "wrong-network", now)
            return
        peer.version = msg.version
        peer.user_agent = msg.user_agent
        peer.listen_port = msg.listen_port
        self._update_peer_tip(peer, msg.height, int.from_bytes(msg.chainwork, "big"), msg.tip)
        if peer.established:
            # It repeats its Hello only while it has not seen ours: ours was lost.
            if now - peer.last_hello_sent >= self.config.hello_retry_interval / 2:
                self._send_hello(peer, now)
            return
        peer.hello_received = True
        self._maybe_established(peer, now)

    def _inbound_refusal(self, node_id: bytes, now: float) -> str:
        if not self.config.listen:
            return "not accepting inbound connections"
        inbound = sum(1 for p in self.peers.values() if p.inbound)
        if inbound >= self.config.max_inbound:
            return "too many inbound peers"
        for existing in list(self.peers.values()):
            if existing.node_id != node_id:
                continue
            if existing.established and now - existing.last_recv < self.config.ping_interval:
                return "already connected"
            # The same node from a new address (a restarted container, say) while the old
            # entry has gone quiet: the old one is stale, let the new one in.
            self._disconnect(existing, "replaced by a new connection", now)
        return ""

    def _maybe_established(self, peer: Peer, now: float) -> None:
        if peer.established or not peer.hello_received or peer.node_id is None:
            return
        peer.status = PeerStatus.ESTABLISHED
        peer.connected_at = now
        advertised = peer.advertised_address()
        if advertised is not None:
            self.book.add_address(advertised, peer.node_id or bytes(32), int(now))
        log.info(
            "peer_connected",
            peer=peer.label,
            inbound=peer.inbound,
            node_id=(peer.node_id or b"").hex()[:16],
            height=peer.height,
        )
        assert peer.node_id is not None
        self._events.append(PeerConnected(peer.id, peer.addr, peer.inbound, peer.node_id))
        if not peer.inbound:
            peer.stream_requested = True
            self._actions.append(OpenStream(peer.addr))
        if not self.connect_only:
            self._send(peer, GetAddr())
        self._maybe_request_headers(peer, now)

    # ----------------------------------------------------------------- dispatch

    def _handle(self, peer: Peer, msg: Message, now: float) -> None:
        if isinstance(msg, Hello):
            self._on_hello(peer, msg, now)
            return
        if isinstance(msg, Goodbye):
            log.info("peer_goodbye", peer=peer.label, reason=msg.reason)
            self._disconnect(peer, "goodbye", now)
            return
        if not peer.established:
            return
        handler = self._handlers.get(type(msg))
        if handler is None:
            return
        try:
            handler(self, peer, msg, now)
        except Exception as exc:
            # A bug (or a case nobody foresaw) in one handler costs that peer its connection,
            # never the node: not a penalty, since the fault may well be ours.
            self.handler_failures += 1
            log.error(
                "peer_handler_failed",
                peer=peer.label,
                message=msg.NAME,
                error=f"{type(exc).__name__}: {exc}",
                exc_info=exc,
            )
            self._disconnect(peer, "internal-error", now)

    # ----------------------------------------------------------------- liveness

    def _update_peer_tip(self, peer: Peer, height: int, work: int, tip: bytes) -> None:
        peer.height, peer.chainwork, peer.tip = height, work, tip

    def _tip_fields(self) -> tuple[int, bytes, bytes]:
        tip = self.node.chain.tip
        return tip.height, tip.chainwork.to_bytes(32, "big"), tip.hash

    def _on_ping(self, peer: Peer, msg: Ping, now: float) -> None:
        self._update_peer_tip(peer, msg.height, int.from_bytes(msg.chainwork, "big"), msg.tip)
        self._send(peer, Pong(msg.nonce, *self._tip_fields()))
        self._maybe_request_headers(peer, now)

    def _on_pong(self, peer: Peer, msg: Pong, now: float) -> None:
        if peer.ping_nonce == msg.nonce:
            peer.latency_ms = (now - peer.last_ping_sent) * 1000
            peer.ping_nonce = None
        self._update_peer_tip(peer, msg.height, int.from_bytes(msg.chainwork, "big"), msg.tip)
        self._maybe_request_headers(peer, now)

    # ----------------------------------------------------------------- addresses

    def _on_getaddr(self, peer: Peer, msg: GetAddr, now: float) -> None:
        entries = [
            AddrEntry(k.addr[0], k.addr[1], k.node_id, k.last_seen)
            for k in self.book.sample(self.rng, MAX_ADDR)
            if k.addr != peer.advertised_address()
        ]
        for i in range(0, len(entries), ADDR_PER_DATAGRAM):
            self._send(peer, Addr(tuple(entries[i : i + ADDR_PER_DATAGRAM])))

    def _on_addr(self, peer: Peer, msg: Addr, now: float) -> None:
        for entry in msg.addrs:
            addr = (entry.host, entry.port)
            if entry.node_id == self.node_id or addr in self._self_addrs:
                continue
            self.book.add_address(addr, entry.node_id, min(entry.last_seen, int(now)))

    # ----------------------------------------------------------------- headers and blocks

    def _maybe_request_headers(self, peer: Peer, now: float) -> None:
        best = self.node.chain.best_header
        if peer.chainwork <= best.chainwork and peer.best_header_work <= best.chainwork:
            self._request_blocks(now)
            return
        if peer.headers_requested_at is not None and (
            now - peer.headers_requested_at < self.config.headers_timeout
        ):
            return
        self._send_getheaders(peer, best, now)

    def _send_getheaders(self, peer: Peer, start: BlockIndex, now: float) -> None:
        if self._headers_room(peer) < MAX_HEADERS:
            # Its headers we have no block for are at max_peer_headers_only: the timer asks
            # again once downloads make room for a full batch.
            peer.headers_waiting = True
            return
        peer.headers_waiting = False
        peer.headers_requested_at = now
        self._send(peer, GetHeaders(tuple(self.node.chain.locator(start)[:64]), ZERO_HASH))

    def _on_getheaders(self, peer: Peer, msg: GetHeaders, now: float) -> None:
        chain = self.node.chain
        fork = chain.fork_from_locator(list(msg.locator))
        headers = []
        height = fork.height + 1
        while len(headers) < MAX_HEADERS:
            entry = chain.at_height(height)
            if entry is None:
                break
            headers.append(entry.header.encode())
            if entry.hash == msg.stop:
                break
            height += 1
        self._send(peer, Headers(tuple(headers)))

    def _on_headers(self, peer: Peer, msg: Headers, now: float) -> None:
        """Headers are stored only if they lead to at least the anti-DoS work threshold
        (Bitcoin Core's headers pre-sync, simplified: a full batch below it is held, not stored,
        while we ask for the rest of that chain), and only within the peer's budget of headers
        we have no block for (max_peer_headers_only)."""
        requested = peer.headers_requested_at is not None
        peer.headers_requested_at = None
        chain = self.node.chain
        raws = list(msg.headers)
        headers = [decode_header(raw) for raw in raws]
        if not headers:
            self._request_blocks(now)
            return
        parent = chain.index.get(headers[0].prev_hash)
        held, base = [], 0
        if parent is not None:
            base = parent.chainwork
        elif peer.presync and headers[0].prev_hash == peer.presync_tail:
            held, base = peer.presync, peer.presync_work  # the rest of a low-work run
        else:
            self._clear_presync(peer)
            self._penalise(peer.addr, "unconnecting-headers", now)
            self._send_getheaders(peer, chain.best_header, now)
            return
        self._clear_presync(peer)
        full = len(raws) == MAX_HEADERS
        # The work the run claims (each header is checked for real when it is accepted).
        work, prev_hash, new = base, headers[0].prev_hash, len(held)
        for n, header in enumerate(headers):
            if header.prev_hash != prev_hash:
                del headers[n:], raws[n:]  # not a chain: the rest is dropped (as before)
                full = False
                break
            prev_hash = header.hash
            work += self._header_work(header.bits)
            new += prev_hash not in chain.index
        room = self._headers_room(peer)
        if new and work < self._antidos_work():
            if not full:
                return  # a chain that ends with too little work: nothing to store (as Core)
            # Maybe the start of a long fork: hold the run, unstored, and ask for the rest.
            if new + MAX_HEADERS > room:
                self._penalise(peer.addr, "low-work-headers", now)
                return
            if chain.check_pow:
                try:
                    for header in headers:
                        check_header_pow(header, self.params)
                except ConsensusError:
                    self._penalise(peer.addr, "invalid-header", now)
                    return
            peer.presync, peer.presync_tail, peer.presync_work = held + raws, prev_hash, work
            peer.headers_requested_at = now
            locator = (prev_hash, *chain.locator(chain.best_header)[: MAX_LOCATOR - 1])
            self._send(peer, GetHeaders(locator, ZERO_HASH))
            return
        if new > room:
            if requested:
                peer.headers_waiting = True  # asked again once downloads make room
            else:
                self._penalise(peer.addr, "headers-flood", now)
            return
        last: BlockIndex | None = None
        for n, raw in enumerate([*held, *raws]):
            header = decode_header(raw)
            header_hash = header.hash
            known = header_hash in chain.index
            try:
                last = self.node.accept_header(header)
            except ConsensusError as exc:
                if exc.reason == "prev-blk-not-found" and n == 0:
                    self._penalise(peer.addr, "unconnecting-headers", now)
                    self._send_getheaders(peer, chain.best_header, now)
                    return
                if exc.reason in HARMLESS_BLOCK_REASONS:
                    break
                self._penalise(peer.addr, "invalid-header", now)
                return
            peer.known.add(header_hash)
            if peer.blocks_lacking:
                peer.blocks_lacking.discard(header_hash)  # it has it now
            if not known and not last.status & BlockStatus.HAVE_DATA:
                peer.headers_only.add(header_hash)
        if last is not None:
            peer.best_header_work = max(peer.best_header_work, last.chainwork)
            if full:
                self._send_getheaders(peer, last, now)
        self._request_blocks(now)

    def _clear_presync(self, peer: Peer) -> None:
        peer.presync, peer.presync_tail, peer.presync_work = [], b"", 0

    def _header_work(self, bits: int) -> int:
        """The work a header claims by its `bits` (0 if they are out of range)."""
        try:
            target = bits_to_target(bits)
        except ConsensusError:
            return 0
        if target <= 0 or target > self.params.pow_limit:
            return 0
        return work_from_target(target)

    def _antidos_work(self) -> int:
        """Bitcoin Core's GetAntiDoSWorkThreshold: new headers must lead to at least our tip's
        work minus antidos_work_blocks blocks' worth (and min_chain_work): a fork off our chain
        deeper than that costs its sender about as much work as it makes us store."""
        tip = self.node.chain.tip
        behind = self.config.antidos_work_blocks * self._header_work(tip.header.bits)
        return max(self.config.min_chain_work, tip.chainwork - behind)

    def _headers_room(self, peer: Peer) -> int:
        """How many more headers we have no block for `peer` may give us (held ones count)."""
        index = self.node.chain.index
        done = [
            h
            for h in peer.headers_only
            if (entry := index.get(h)) is None or entry.status & BlockStatus.HAVE_DATA
        ]
        peer.headers_only.difference_update(done)
        return self.config.max_peer_headers_only - len(peer.headers_only) - len(peer.presync)

    def _refresh_download_queue(self) -> None:
        chain = self.node.chain
        best = chain.best_header
        if self._download_for == best.hash:
            # Blocks mostly arrive in order: drop the delivered front, not the whole queue.
            queue = self._download_queue
            start = 0
            while start < len(queue) and queue[start].status & BlockStatus.HAVE_DATA:
                start += 1
            if start:
                del queue[:start]
            return
        self._download_for = best.hash
        queue = []
        cursor: BlockIndex | None = best
        while cursor is not None and not chain.is_active(cursor):
            if not cursor.status & BlockStatus.HAVE_DATA:
                queue.append(cursor)
            cursor = cursor.prev
        queue.reverse()
        self._download_queue = queue

    def _request_blocks(self, now: float) -> None:
        self._refresh_download_queue()
        if not self._download_queue:
            return
        chain = self.node.chain
        limit_height = chain.height + self.config.block_download_window
        per_peer = self.config.max_blocks_in_flight_per_peer
        load = {p.id: p.blocks_in_flight for p in self.peers.values() if p.established}
        free = sum(max(0, per_peer - n) for n in load.values())
        in_flight_now = len(self._blocks_in_flight)
        still_wanted = len(self._download_queue) - in_flight_now
        if not free or (in_flight_now and free < min(per_peer // 2, still_wanted)):
            # Refill in batches while the pipe is still full: one getdata for many blocks
            # instead of a message (and a wakeup on both sides) per block.
            return
        requests: dict[int, list[InvItem]] = {}
        peers = [p for p in self.peers.values() if p.established]
        self.rng.shuffle(peers)
        in_flight = self._blocks_in_flight
        for entry in self._download_queue:
            if entry.height > limit_height or not free:
                break
            if entry.hash in in_flight or entry.status & BlockStatus.HAVE_DATA:
                continue
            candidates = [
                p
                for p in peers
                if max(p.chainwork, p.best_header_work) >= entry.chainwork
                and load[p.id] < self.config.max_blocks_in_flight_per_peer
                and not (p.blocks_lacking and entry.hash in p.blocks_lacking)
            ]
            if not candidates:
                continue
            peer = min(candidates, key=lambda p: load[p.id])
            load[peer.id] += 1
            free -= 1
            self._block_requested(entry.hash, peer, now)
            requests.setdefault(peer.id, []).append(InvItem(INV_BLOCK, entry.hash))
        for peer_id, items in requests.items():
            self._send(self.peers[peer_id], GetData(tuple(items)))

    def _on_block(self, peer: Peer, msg: BlockMsg, now: float) -> None:
        try:
            block = decode_block(msg.block, self.params.max_block_size)
        except DecodeError:
            self._penalise(peer.addr, "malformed-block", now)
            return
        self._process_block(peer, block, now)

    def _process_block(self, peer: Peer, block: Block, now: float, pushed: bool = False) -> None:
        """`pushed`: a compact block (in flight only while we fetched its transactions), so
        as unrequested as a full block nobody asked for."""
        block_hash = block.hash
        requested = self._block_landed(block_hash)
        peer.known.add(block_hash)
        peer.pending_compact.pop(block_hash, None)
        if requested is None and self.node.chain.has_block(block_hash):
            self._count_unhelpful(peer, now)
            return
        result = self.node.submit_block(block)
        if result.status == "invalid":
            if result.reason not in HARMLESS_BLOCK_REASONS:
                self._penalise(peer.addr, "invalid-block", now)
            return
        if result.status == "orphan":
            self._send_getheaders(peer, self.node.chain.best_header, now)
        if (requested is None or pushed) and result.status not in ("connected",):
            self._count_unhelpful(peer, now)
        if result.status == "connected":
            entry = self.node.chain.get(block_hash)
            if entry is not None:
                peer.best_header_work = max(peer.best_header_work, entry.chainwork)
        self._block_requests_due = True

    def _count_unhelpful(self, peer: Peer, now: float) -> None:
        """Unrequested blocks that do not extend our best chain: a flood costs the sender."""
        window = peer.unhelpful_blocks
        window.append(now)
        while window and now - window[0] > 60:
            window.popleft()
        if len(window) > self.config.max_unrequested_blocks_per_minute:
            self._penalise(peer.addr, "unrequested-block-flood", now)

    # ----------------------------------------------------------------- compact blocks

    def _on_compact_block(self, peer: Peer, msg: CompactBlock, now: float) -> None:
        header = decode_header(msg.header)
        block_hash = header.hash
        peer.known.add(block_hash)
        chain = self.node.chain
        if chain.has_block(block_hash):
            return
        parent = chain.index.get(header.prev_hash)
        if parent is None:
            self._send_getheaders(peer, chain.best_header, now)
            return
        new = block_hash not in chain.index
        if new:
            # The same limits as for headers: enough work, and within the peer's budget.
            if parent.chainwork + self._header_work(header.bits) < self._antidos_work():
                self._count_unhelpful(peer, now)
                return
            if self._headers_room(peer) <= 0:
                return
        try:
            entry = self.node.accept_header(header)
        except ConsensusError as exc:
            if exc.reason not in HARMLESS_BLOCK_REASONS:
                self._penalise(peer.addr, "invalid-header", now)
            return
        if new:
            peer.headers_only.add(block_hash)  # until the block is complete
        peer.best_header_work = max(peer.best_header_work, entry.chainwork)
        count = len(msg.short_ids) + len(msg.prefilled)
        txs: list[Transaction | bytes | None] = [None] * count
        for item in msg.prefilled:
            if item.index >= count:
                self._penalise(peer.addr, "bad-field", now)
                return
            txs[item.index] = item.tx
        by_short = self._mempool_short_ids(msg.salt)
        short_iter = iter(msg.short_ids)
        missing = []
        for index in range(count):
            if txs[index] is None:
                tx = by_short.get(next(short_iter))
                if tx is None:
                    missing.append(index)
                else:
                    txs[index] = tx
        self._block_requested(block_hash, peer, now)
        if missing:
            peer.pending_compact[block_hash] = PartialBlock(msg.header, txs, missing, now)
            self._send(peer, GetBlockTxn(block_hash, tuple(missing)))
            return
        self._finish_compact(peer, msg.header, txs, now)

    def _mempool_short_ids(self, salt: int) -> dict[bytes, Transaction]:
        mempool = self.node.mempool
        result = {}
        for txid in mempool.txids():
            entry = mempool.get(txid)
            if entry is not None:
                result[short_tx_id(salt, txid)] = entry.tx
        return result

    def _finish_compact(
        self, peer: Peer, raw_header: bytes, txs: list[Transaction | bytes | None], now: float
    ) -> None:
        header = decode_header(raw_header)
        # Mempool transactions are used as they are; only what came over the wire is decoded.
        try:
            decoded = [
                t if isinstance(t, Transaction)
                else decode_transaction(t or b"", self.params.max_block_size)
                for t in txs
            ]
        except DecodeError:
            self._penalise(peer.addr, "malformed-tx", now)
            return
        block = Block(header, decoded)
        if block.computed_merkle_root() != header.merkle_root:
            # A short-id collision or a stale guess: fall back to the full block.
            self._block_requested(header.hash, peer, now)
            self._send(peer, GetData((InvItem(INV_BLOCK, header.hash),)))
            return
        self._process_block(peer, block, now, pushed=True)

    def _on_getblocktxn(self, peer: Peer, msg: GetBlockTxn, now: float) -> None:
        block = self.node.chain.get_block(msg.block_hash)
        if block is None or (msg.indexes and msg.indexes[-1] >= len(block.txs)):
            self._send(peer, NotFound((InvItem(INV_BLOCK, msg.block_hash),)))
            return
        self._send(
            peer,
            BlockTxn(msg.block_hash, tuple(block.txs[i].encode() for i in msg.indexes)),
            stream=True,
        )

    def _on_blocktxn(self, peer: Peer, msg: BlockTxn, now: float) -> None:
        partial = peer.pending_compact.pop(msg.block_hash, None)
        if partial is None:
            return
        if len(msg.txs) != len(partial.missing):
            self._penalise(peer.addr, "bad-field", now)
            return
        for index, raw in zip(partial.missing, msg.txs, strict=True):
            partial.txs[index] = raw
        self._finish_compact(peer, partial.header, partial.txs, now)

    # ----------------------------------------------------------------- inventory and transactions

    def _on_inv(self, peer: Peer, msg: Inv, now: float) -> None:
        cap = self.config.max_peer_tx_announcements
        announced = peer.tx_announced
        if len(announced) < cap // 2:
            peer.inv_overflow = 0  # we caught up with it: a past burst is forgiven
        overflow = 0
        unknown_block = False
        for item in msg.items:
            peer.known.add(item.hash)
            if item.kind == INV_TX:
                txid = item.hash
                self._tx_unrequested.pop((peer.id, txid), None)
                if txid in announced or txid in self.node.mempool or txid in self._seen_txs:
                    continue
                if len(announced) >= cap:
                    overflow += 1  # not tracked: an honest peer announces it again later
                    continue
                announced[txid] = None
                self._tx_announcers.setdefault(txid, []).append(peer.id)
            elif not self.node.chain.has_block(item.hash):
                unknown_block = True
        if unknown_block:
            # One getheaders for the whole message, however many blocks it names.
            if peer.headers_requested_at:
                self._maybe_request_headers(peer, now)
            else:
                self._send_getheaders(peer, self.node.chain.best_header, now)
        if overflow:
            # Ids past the cap are dropped (an honest peer announces them again later). A burst
            # of up to another cap's worth is free; each further cap's worth, before we catch
            # up, costs the sender: a flood of unknown ids never lets us catch up.
            peer.inv_overflow += overflow
            while peer.inv_overflow >= 2 * cap and peer.status is not PeerStatus.CLOSED:
                peer.inv_overflow -= cap
                self._penalise(peer.addr, "inv-flood", now)
        self._request_txs(peer, now)

    def _tx_slots(self, peer: Peer) -> int:
        """How many more transactions we may ask `peer` for now."""
        cfg = self.config
        return min(
            cfg.max_peer_txs_in_flight - len(peer.txs_in_flight),
            cfg.max_txs_in_flight - len(self._txs_in_flight),
        )

    def _request_txs(self, peer: Peer, now: float) -> None:
        """Ask `peer` for what it announced that nobody is fetching, oldest first, within the
        in-flight limits; the rest waits for a free slot (an answer, a notfound, a timeout)."""
        if not peer.established or len(peer.tx_announced) <= len(peer.txs_in_flight):
            return
        free = self._tx_slots(peer)
        if free <= 0:
            return
        in_flight, mempool, seen = self._txs_in_flight, self.node.mempool, self._seen_txs
        items, stale = [], []
        for txid in peer.tx_announced:
            if txid in in_flight:
                continue
            if txid in mempool or txid in seen:
                stale.append(txid)  # arrived some other way meanwhile
                continue
            items.append(InvItem(INV_TX, txid))
            if len(items) >= free:
                break
        for txid in stale:
            self._forget_tx(txid)
        self._send_tx_requests(peer, items, now)

    def _send_tx_requests(self, peer: Peer, items: list[InvItem], now: float) -> None:
        for item in items:
            self._txs_in_flight[item.hash] = (peer.id, now)
            peer.txs_in_flight.add(item.hash)
            self._tx_attempts[item.hash] = self._tx_attempts.get(item.hash, 0) + 1
        for i in range(0, len(items), 30):
            self._send(peer, GetData(tuple(items[i : i + 30])))

    def _tx_landed(self, txid: bytes) -> Peer | None:
        """Forget the request for `txid`; returns the peer it was asked of, if still here."""
        request = self._txs_in_flight.pop(txid, None)
        if request is None:
            return None
        peer = self.peers.get(request[0])
        if peer is not None:
            peer.txs_in_flight.discard(txid)
        return peer

    def _forget_tx(self, txid: bytes) -> Peer | None:
        """Stop tracking `txid` (received, or given up on); returns whom we had asked for it."""
        asked = self._tx_landed(txid)
        for peer_id in self._tx_announcers.pop(txid, ()):
            announcer = self.peers.get(peer_id)
            if announcer is not None:
                announcer.tx_announced.pop(txid, None)
        self._tx_attempts.pop(txid, None)
        return asked

    def _drop_announcement(self, peer: Peer, txid: bytes) -> None:
        """`peer` does not have `txid` after all; forget the tx if nobody else announced it."""
        if txid not in peer.tx_announced:
            return
        del peer.tx_announced[txid]
        announcers = self._tx_announcers.get(txid)
        if announcers is not None and peer.id in announcers:
            announcers.remove(peer.id)
            if not announcers:
                self._forget_tx(txid)

    def _forget_peer_txs(self, peer: Peer) -> None:
        """A peer is gone: drop its announcements, requests and pending re-announcements."""
        for txid in peer.txs_in_flight:
            if self._txs_in_flight.get(txid, (None,))[0] == peer.id:
                del self._txs_in_flight[txid]
        peer.txs_in_flight.clear()
        for txid in list(peer.tx_announced):
            self._drop_announcement(peer, txid)
        peer.tx_announced.clear()
        for key in [k for k in self._tx_unrequested if k[0] == peer.id]:
            del self._tx_unrequested[key]

    def _on_getdata(self, peer: Peer, msg: GetData, now: float) -> None:
        cfg = self.config
        items = list(dict.fromkeys(msg.items))  # each thing served once per request
        if sum(1 for item in items if item.kind != INV_TX) > cfg.max_getdata_blocks:
            # We never ask a peer for more than max_blocks_in_flight_per_peer at once.
            self._penalise(peer.addr, "getdata-flood", now)
            return
        missing = []
        for item in items:
            if item.kind == INV_TX:
                self._tx_unrequested.pop((peer.id, item.hash), None)
                entry = self.node.mempool.get(item.hash)
                raw = None if entry is None else entry.tx.encode()
            else:
                raw = self.node.chain.get_block_bytes(item.hash)
            if raw is None:
                missing.append(item)
                continue
            if not self._reply_fits(peer, len(raw), item.kind != INV_TX):
                # Its stream is not up and the queue is full: refuse rather than hold more.
                self._penalise(peer.addr, "stream-overflow", now)
                return
            peer.known.add(item.hash)
            if item.kind == INV_TX:
                self._send(peer, TxMsg(raw))
            else:
                self._send(peer, BlockMsg(raw), stream=True)
        if not missing:
            return
        if peer.getdata_misses is None:
            allowance = cfg.max_getdata_misses_per_minute
            peer.getdata_misses = TokenBucket(allowance / 60, allowance, now)
        if not peer.getdata_misses.take(len(missing), now):
            # An honest peer asks for what we announced: a few misses (mined or evicted since).
            self._penalise(peer.addr, "getdata-flood", now)
            return
        for i in range(0, len(missing), INV_PER_DATAGRAM):
            self._send(peer, NotFound(tuple(missing[i : i + INV_PER_DATAGRAM])))

    def _reply_fits(self, peer: Peer, size: int, stream: bool) -> bool:
        """Can a reply of `size` bytes go out, or be queued within max_pending_stream_bytes
        while the peer's stream is not up?"""
        size += REPLY_OVERHEAD
        if peer.stream_id is not None or (not stream and size <= MAX_DATAGRAM_SIZE):
            return True
        return peer.pending_stream_bytes + size <= self.config.max_pending_stream_bytes

    def _on_notfound(self, peer: Peer, msg: NotFound, now: float) -> None:
        for item in msg.items:
            if item.kind == INV_TX:
                if self._txs_in_flight.get(item.hash, (None,))[0] == peer.id:
                    self._tx_landed(item.hash)
                    self._drop_announcement(peer, item.hash)  # others may still have it
            elif self._blocks_in_flight.get(item.hash, (None,))[0] == peer.id:
                self._block_landed(item.hash)
                # Enough work is no proof it has this branch: do not ask it again (it was
                # asked every tick, and now a peer charges misses past an allowance).
                if peer.blocks_lacking is None:
                    peer.blocks_lacking = BoundedSet(self.config.block_download_window)
                peer.blocks_lacking.add(item.hash)
        self._request_txs(peer, now)

    def _on_tx(self, peer: Peer, msg: TxMsg, now: float) -> None:
        try:
            tx = decode_transaction(msg.tx, self.params.max_block_size)
        except DecodeError:
            self._penalise(peer.addr, "malformed-tx", now)
            return
        txid = tx.txid
        asked = self._forget_tx(txid)
        self._tx_unrequested.pop((peer.id, txid), None)
        peer.known.add(txid)
        if asked is not None:
            self._request_txs(asked, now)  # a slot is free: the next announced one
        if txid in self.node.mempool or txid in self._seen_txs:
            return
        self._seen_txs.add(txid)
        try:
            outcome = self.node.submit_transaction(tx)
        except ConsensusError as exc:
            if exc.reason not in HARMLESS_TX_REASONS:
                self._penalise(peer.addr, "invalid-tx", now)
            return
        if getattr(outcome, "orphan", False):
            # Ask the sender for the parents (as if it had announced them: the same limits),
            # ahead of its other announcements; the orphan pool retries when they arrive.
            self._seen_txs.discard(txid)
            items = []
            for parent in outcome.missing_parents:
                if parent in self._txs_in_flight:
                    continue
                if parent not in peer.tx_announced:
                    if len(peer.tx_announced) >= self.config.max_peer_tx_announcements:
                        break
                    peer.tx_announced[parent] = None
                    self._tx_announcers.setdefault(parent, []).append(peer.id)
                if len(items) < self._tx_slots(peer):
                    items.append(InvItem(INV_TX, parent))
            self._send_tx_requests(peer, items, now)

    def _on_dsalert(self, peer: Peer, msg: DoubleSpendAlert, now: float) -> None:
        try:
            tx_a = decode_transaction(msg.tx_a, self.params.max_block_size)
            tx_b = decode_transaction(msg.tx_b, self.params.max_block_size)
        except DecodeError:
            self._penalise(peer.addr, "malformed-tx", now)
            return
        self._events.append(DoubleSpendSeen(tx_a, tx_b, peer.id))

    # ----------------------------------------------------------------- relay (called by the node)

    def announce_block(self, block: Block, now: float) -> None:
        """Push a compact form of a newly connected block to every peer that lacks it."""
        block_hash = block.hash
        msg: CompactBlock | None = None
        # A copy: a send may drop a peer (its stream queue overflowing).
        for peer in list(self.peers.values()):
            if not peer.established or block_hash in peer.known:
                continue
            if msg is None:
                # From the OS CSPRNG: a peer that could predict the salt could craft short-id
                # collisions (self.rng is a seeded Mersenne Twister, for non-security choices).
                salt = secrets.randbits(64)
                msg = CompactBlock(
                    block.header.encode(),
                    salt,
                    tuple(short_tx_id(salt, tx.txid) for tx in block.txs[1:]),
                    (PrefilledTx(0, block.txs[0].encode()),),
                )
            peer.known.add(block_hash)
            self._send(peer, msg, stream=True)

    def announce_blocks(self, result: AcceptResult, now: float) -> None:
        connected = result.connected[-MAX_ANNOUNCE_BLOCKS:]
        for _, block in connected:
            self.announce_block(block, now)

    def announce_tx(self, tx: Transaction, now: float) -> None:
        txid = tx.txid
        self._seen_txs.add(txid)
        for peer in self.peers.values():
            if peer.established and txid not in peer.known:
                peer.known.add(txid)
                # Queued, not sent: the timer sends each peer one Inv of many ids (a burst of
                # single-id datagrams overflows receive buffers and loses announcements).
                peer.inv_queue.append(InvItem(INV_TX, txid))
                if len(self._tx_unrequested) < self.config.max_seen:
                    self._tx_unrequested.pop((peer.id, txid), None)  # keep oldest-first order
                    self._tx_unrequested[(peer.id, txid)] = (now, 0)

    def broadcast_double_spend(self, tx_a: Transaction, tx_b: Transaction) -> None:
        msg = DoubleSpendAlert(tx_a.encode(), tx_b.encode())
        for peer in list(self.peers.values()):
            if peer.established:
                self._send(peer, msg)

    # ----------------------------------------------------------------- timers

    def handle_timer(self, now: float) -> None:
        if not self.network_active:
            return
        cfg = self.config
        self.sessions.handle_timer(now)
        self._session_events(now)
        for peer in list(self.peers.values()):
            has_session = self.sessions.has_session(peer.addr)
            if peer.status is PeerStatus.HANDSHAKE:
                if now - peer.created > cfg.handshake_timeout:
                    self._disconnect(peer, "handshake-timeout", now)
                elif not has_session:
                    if not peer.inbound:  # idempotent while a handshake is under way
                        self.sessions.initiate(peer.addr, now, self._pinned.get(peer.addr))
                elif now - peer.last_hello_sent >= cfg.hello_retry_interval:
                    # Our Hello (or theirs) may have been lost: repeat ours until theirs comes.
                    self._send_hello(peer, now)
                continue
            if not has_session:
                self._disconnect(peer, "session-expired", now)
                continue
            if now - peer.last_recv > cfg.peer_timeout:
                self._disconnect(peer, "timeout", now)
                continue
            if now - peer.last_ping_sent >= cfg.ping_interval:
                peer.last_ping_sent = now
                peer.ping_nonce = secrets.randbits(64)  # unpredictable: no forged pongs
                self._send(peer, Ping(peer.ping_nonce, *self._tip_fields()))
            for block_hash, partial in list(peer.pending_compact.items()):
                if now - partial.requested_at > cfg.block_stall_timeout:
                    del peer.pending_compact[block_hash]
            if peer.headers_waiting and self._headers_room(peer) >= MAX_HEADERS:
                peer.headers_waiting = False
                self._maybe_request_headers(peer, now)
        for block_hash, (peer_id, at) in list(self._blocks_in_flight.items()):
            # Disconnecting a staller below already dropped the rest of its requests.
            if now - at > cfg.block_stall_timeout and block_hash in self._blocks_in_flight:
                self._block_landed(block_hash)
                stalled = self.peers.get(peer_id)
                if stalled is not None:
                    stalled.stalls += 1
                    if stalled.stalls >= 3:
                        self._disconnect(stalled, "stalling", now)
        self._retry_txs(now)
        for stream in list(self.streams.values()):
            if stream.peer is None and now - stream.opened_at > cfg.stream_hello_timeout:
                self._close_stream(stream)
        self._dial(now)
        self._request_blocks(now)

    def _retry_txs(self, now: float) -> None:
        retries: dict[int, list[InvItem]] = {}
        for txid, (peer_id, at) in list(self._txs_in_flight.items()):
            if now - at <= self.config.tx_request_timeout:
                continue
            self._tx_landed(txid)
            announcers = [p for p in self._tx_announcers.get(txid, []) if p in self.peers]
            if not announcers or self._tx_attempts.get(txid, 0) >= (
                TX_REQUEST_ATTEMPTS + len(announcers)
            ):
                self._forget_tx(txid)
                continue
            # Another announcer if there is one; else the same again: a datagram got lost.
            others = [p for p in announcers if p != peer_id] or announcers
            for candidate in others:
                peer = self.peers[candidate]
                if self._tx_slots(peer) > len(retries.get(candidate, ())):
                    retries.setdefault(candidate, []).append(InvItem(INV_TX, txid))
                    break
            # else it stays announced, and is asked for when one of them has a free slot
        for peer_id, items in retries.items():
            self._send_tx_requests(self.peers[peer_id], items, now)
        for peer in list(self.peers.values()):
            self._request_txs(peer, now)
        self._reannounce_txs(now)
        self.flush_announcements()

    def flush_announcements(self) -> None:
        """Send every peer its queued transaction ids, as few datagrams as fit them."""
        for peer in self.peers.values():
            items, peer.inv_queue = peer.inv_queue, []
            for i in range(0, len(items), INV_PER_DATAGRAM):
                self._send(peer, Inv(tuple(items[i : i + INV_PER_DATAGRAM])))

    def _reannounce_txs(self, now: float) -> None:
        # Oldest first (entries are re-inserted when renewed): stop at the first recent one.
        pending = self._tx_unrequested
        resend: dict[int, list[InvItem]] = {}
        renewed = []
        while pending:
            key = next(iter(pending))
            at, tries = pending[key]
            if now - at <= self.config.tx_request_timeout:
                break
            del pending[key]
            peer_id, txid = key
            if peer_id in self.peers and tries < TX_ANNOUNCE_RETRIES and txid in self.node.mempool:
                renewed.append((key, tries + 1))
                resend.setdefault(peer_id, []).append(InvItem(INV_TX, txid))
        for key, tries in renewed:
            pending[key] = (now, tries)
        for peer_id, items in resend.items():
            self.peers[peer_id].inv_queue.extend(items)

    def _dial(self, now: float) -> None:
        for addr, due in list(self._persistent.items()):
            if due <= now and addr not in self.by_addr:
                self._persistent[addr] = now + self.config.reconnect_interval
                self.connect(addr, now)
        if self.connect_only:
            return
        outbound = sum(1 for p in self.peers.values() if not p.inbound)
        if outbound >= self.config.max_outbound or now - self._last_dial < 1.0:
            return
        connected_ids = {p.node_id for p in self.peers.values()}
        for known in self.book.candidates(now, self.config.reconnect_interval):
            if (
                known.addr in self.by_addr
                or known.addr in self._self_addrs
                or known.node_id in connected_ids
                or known.node_id == self.node_id
            ):
                continue
            known.last_attempt = now
            self._last_dial = now
            self.connect(known.addr, now)
            return

    # ----------------------------------------------------------------- reporting

    def peer_info(self) -> list[dict[str, Any]]:
        return [
            {
                "id": p.id,
                "addr": p.label,
                "inbound": p.inbound,
                "status": p.status.value,
                "node_id": (p.node_id or b"").hex(),
                "height": p.height,
                "tip": p.tip.hex(),
                "latency_ms": None if p.latency_ms is None else round(p.latency_ms, 3),
                "misbehavior": self.book.score(p.addr),
                "penalties": [
                    {"reason": x.reason, "score": x.score}
                    for x in self.book.recent_penalties(p.addr)
                ],
                "bytes_sent": p.bytes_sent,
                "bytes_recv": p.bytes_recv,
                "user_agent": p.user_agent,
                "stream": p.stream_id is not None,
                "blocks_in_flight": p.blocks_in_flight,
                "session": self.sessions.info(p.addr),
            }
            for p in self.peers.values()
        ]

    def established_count(self) -> int:
        return sum(1 for p in self.peers.values() if p.established)

    _handlers: ClassVar[dict[type, Any]] = {}


# A fixed table from message class to handler: nothing from the network picks the code path
# beyond the decoded message type.
P2PProtocol._handlers = {
    Ping: P2PProtocol._on_ping,
    Pong: P2PProtocol._on_pong,
    GetAddr: P2PProtocol._on_getaddr,
    Addr: P2PProtocol._on_addr,
    Inv: P2PProtocol._on_inv,
    GetData: P2PProtocol._on_getdata,
    NotFound: P2PProtocol._on_notfound,
    TxMsg: P2PProtocol._on_tx,
    BlockMsg: P2PProtocol._on_block,
    GetHeaders: P2PProtocol._on_getheaders,
    Headers: P2PProtocol._on_headers,
    CompactBlock: P2PProtocol._on_compact_block,
    GetBlockTxn: P2PProtocol._on_getblocktxn,
    BlockTxn: P2PProtocol._on_blocktxn,
    DoubleSpendAlert: P2PProtocol._on_dsalert,
}
