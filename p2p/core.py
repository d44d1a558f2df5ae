"""The state every part of the P2P protocol shares, and the few operations on it.

`ProtocolCore` holds what `P2PProtocol` knows (peers, streams, sessions, the address book, what is
in flight) and does what every concern needs: queue actions and events, send a message to a
peer (a datagram, or on its stream), admit a peer to the table and drop it again. The concerns
(`p2p/admission.py`, `streams.py`, `sync.py`, `compact.py`, `relay.py`, `penalties.py`) are
mixins over this class, combined by `P2PProtocol` in `p2p/protocol.py`; they call each other
through `self`, so a method keeps its name wherever it lives.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import structlog

from consensus.chainstate import BlockIndex
from consensus.keys import PrivateKey
from consensus.params import ChainParams
from p2p.actions import (
    Action,
    CloseStream,
    Event,
    NodeInterface,
    OpenStream,
    PeerDisconnected,
    SendDatagram,
)
from p2p.config import Address, P2PConfig
from p2p.messages import Goodbye, Message
from p2p.peer import BoundedSet, Peer, PeerStatus
from p2p.peerbook import PeerBook
from p2p.secure_stream import PreambleReader, StreamCipher
from p2p.session import SESSION_OVERHEAD, Session, SessionTable
from p2p.wire import MAX_DATAGRAM_SIZE
from p2p.wire import encode_message as encode_envelope

log = structlog.get_logger("powlab.p2p")

# Why an outbound dial can end before its handshake completed, counted against the address in
# the book (disconnects we chose, such as `setnetworkactive false`, are not the address's fault).
DIAL_FAILURES = frozenset({"handshake-timeout", "handshake-refused", "wrong-node-id",
                           "not-allowed"})
MIN_OUTBOUND_FOR_FAILURES = 2
# How many recent compact blocks are remembered so that a retry fetches the full block
# (`_compact_tried`): far more than are ever in flight at once.
COMPACT_TRIED_MEMORY = 256
# Hosts that lost their high-bandwidth slot for a flagged invalid block (p2p/bandwidth.py),
# remembered across reconnections so that reconnecting does not win the slot back.
HB_LOST_MEMORY = 1_000

#: The largest envelope sent as a datagram: with the session's header and tag it is one
#: MAX_DATAGRAM_SIZE datagram.
MAX_DATAGRAM_ENVELOPE = MAX_DATAGRAM_SIZE - SESSION_OVERHEAD


@dataclass
class Stream:
    """One TCP connection: a stranger until its preamble names a session and a frame verifies
    under that session's keys, then bound to the session's peer."""

    id: int
    addr: Address
    outbound: bool
    opened_at: float
    preamble: PreambleReader | None = None  # listener side until the preamble is read
    cipher: StreamCipher | None = None
    session: Session | None = None  # the session the preamble named (listener side)
    nonce: bytes = b""  # the preamble's stream nonce (listener side)
    session_addr: Address | None = None  # whose session the preamble named
    peer: Peer | None = None


class ProtocolCore:
    """The shared state (all of it set up here) and the operations every concern uses."""

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
        self.streams: dict[int, Stream] = {}
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
        # Block download (p2p/sync.py): block hash -> (peer id, asked at).
        self._blocks_in_flight: dict[bytes, tuple[int, float]] = {}
        # Transaction relay (p2p/relay.py).
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
        # Blocks we had as compact blocks (pushed or fetched): fetched in full if ever again.
        self._compact_tried = BoundedSet(COMPACT_TRIED_MEMORY)
        self._hb_lost_hosts = BoundedSet(HB_LOST_MEMORY)
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

    def _send_to_addr(self, addr: Address, msg: Message) -> None:
        """A message under the session with `addr` whether or not it is a peer (refusals)."""
        sealed = self.sessions.seal(addr, self._encode(msg))
        if sealed is not None:
            self._actions.append(SendDatagram(addr, sealed))

    def _drain_sessions(self) -> None:
        for addr, data in self.sessions.take_outbox():
            self._actions.append(SendDatagram(addr, data))

    # ----------------------------------------------------------------- peers

    def _new_peer(self, addr: Address, inbound: bool, now: float) -> Peer:
        peer = Peer(self._next_peer_id, addr, inbound, now, self.config)
        self._next_peer_id += 1
        self.peers[peer.id] = peer
        self.by_addr[addr] = peer
        return peer

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
        if close_session and reason not in ("goodbye", "network-inactive-silent"):
            # (Without close_session the session at that address is someone else's now.)
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
        if (not was_established and not peer.inbound and reason in DIAL_FAILURES
                and self._well_connected() and self.book.note_failure(peer.addr, now)):
            log.info("address_forgotten", addr=f"{peer.addr[0]}:{peer.addr[1]}", reason=reason)
        if was_established:
            log.info("peer_disconnected", peer=peer.label, reason=reason)
            self._events.append(PeerDisconnected(peer.id, peer.addr, reason))

    def _well_connected(self) -> bool:
        """Enough established outbound peers that a failed dial says something about the
        address rather than about our own link (Core counts failures only then)."""
        wanted = min(MIN_OUTBOUND_FOR_FAILURES, self.config.max_outbound)
        outbound = sum(1 for p in self.peers.values() if p.established and not p.inbound)
        return outbound >= max(1, wanted)

    def _update_peer_tip(self, peer: Peer, height: int, work: int, tip: bytes) -> None:
        peer.height, peer.chainwork, peer.tip = height, work, tip

    def _tip_fields(self) -> tuple[int, bytes, bytes]:
        tip = self.node.chain.tip
        return tip.height, tip.chainwork.to_bytes(32, "big"), tip.hash
