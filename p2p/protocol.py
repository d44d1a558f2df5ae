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

The state machine is one class made of one part per concern, each a mixin over the shared state
in `p2p/core.py` (`ProtocolCore`): `admission.py` (dialling, sessions becoming peers, hello),
`streams.py` (the per-peer TCP stream), `sync.py` (headers and block download), `compact.py`
(compact blocks), `bandwidth.py` (BIP152 high/low-bandwidth modes), `relay.py` (transactions,
getdata, double-spend alerts) and `penalties.py`.
This module combines them and keeps what ties them together: the control calls, input and
dispatch, liveness and address gossip, the timer, reporting. The actions and events it emits
are in `p2p/actions.py` and importable from here.
"""

from __future__ import annotations

import secrets
from typing import Any, ClassVar

import structlog

from p2p import bandwidth, compact, relay, sync
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
from p2p.admission import Admission
from p2p.bandwidth import HighBandwidth
from p2p.compact import CompactBlocks
from p2p.config import Address
from p2p.core import MAX_DATAGRAM_ENVELOPE
from p2p.errors import ProtocolError
from p2p.messages import MAX_ADDR, Addr, AddrEntry, GetAddr, Goodbye, Hello, Message, Ping, Pong
from p2p.peer import Peer, PeerStatus
from p2p.penalties import PENALTY, Penalties
from p2p.relay import Relay
from p2p.streams import MAX_STREAM_FRAME, Streams
from p2p.sync import HeaderSync
from p2p.wire import decode_message

__all__ = [
    "MAX_DATAGRAM_ENVELOPE",
    "MAX_STREAM_FRAME",
    "MAX_UDP_PAYLOAD",
    "PENALTY",
    "Action",
    "CloseStream",
    "DoubleSpendSeen",
    "Event",
    "NodeInterface",
    "OpenStream",
    "P2PProtocol",
    "PeerConnected",
    "PeerDisconnected",
    "PeerPenalised",
    "PeerRefused",
    "SendDatagram",
    "SendStream",
]

log = structlog.get_logger("powlab.p2p")

MAX_UDP_PAYLOAD = 65_507
ADDR_PER_DATAGRAM = 10  # keeps an Addr message inside one datagram
# The longest a transport's timer sleeps while nothing is in progress (`timer_busy`): at a
# 0.25 s tick, 1,000 idle nodes on one machine wake 4,000 times a second for nothing.
IDLE_TIMER_INTERVAL = 1.0


class P2PProtocol(
    Admission, Streams, HeaderSync, CompactBlocks, HighBandwidth, Relay, Penalties
):
    """The whole protocol: construct with (params, node key, config, node, rng, now)."""

    # ----------------------------------------------------------------- control

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

    def shut_down(self, now: float) -> None:
        """The node is stopping: a goodbye to every peer, so each drops us now (and redials
        a persistent link after `reconnect_interval`) instead of at `peer_timeout`, as a
        closed TCP connection tells a Bitcoin peer. Nothing is accepted afterwards."""
        for peer in list(self.peers.values()):
            self._disconnect(peer, "shutting down", now)
        self.network_active = False

    def ban(self, host: str, seconds: float, now: float) -> None:
        self.book.ban(host, seconds, now)
        self.bans += 1
        for peer in list(self.peers.values()):
            if peer.addr[0] == host:
                self._disconnect(peer, "banned", now)

    # ----------------------------------------------------------------- input

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

    def receive_stream_data(self, stream_id: int, data: bytes, now: float) -> None:
        try:
            self._receive_stream_data(stream_id, data, now)
        finally:
            self._request_due_blocks(now)

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

    # ----------------------------------------------------------------- liveness and addresses

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

    # ----------------------------------------------------------------- timers

    def handle_timer(self, now: float) -> None:
        if not self.network_active:
            return
        self.sessions.handle_timer(now)
        self._session_events(now)
        for peer in list(self.peers.values()):
            if peer.status is PeerStatus.HANDSHAKE:
                self._handshake_timer(peer, now)
            elif self._keep_alive(peer, now):
                self._expire_compact(peer, now)
                self._resume_headers(peer, now)
        self._check_stalls(now)
        self._select_high_bandwidth(now)  # a high-bandwidth peer may have gone
        self._retry_txs(now)
        self._expire_streams(now)
        self._dial(now)
        self._request_blocks(now)

    def timer_busy(self) -> bool:
        """Whether anything waits on a timer step measured in fractions of a second: a handshake
        (or its retries), a stream not yet attributed or due to be reopened, queued
        announcements, requests in flight (blocks, transactions), a block being rebuilt, blocks
        or headers to ask for, a persistent peer to redial. When none does, what remains
        (pings, timeouts, rekeys) is measured in seconds, and the transport may tick less
        often (`idle_timer_interval`)."""
        sessions = self.sessions
        if sessions.initiating or sessions.half_open:
            return True
        if (
            self._blocks_in_flight or self._txs_in_flight or self._tx_unrequested
            or self._download_queue or self._block_requests_due
        ):
            return True
        if any(session.finish for session in sessions.by_index.values()):
            return True
        if any(addr not in self.by_addr for addr in self._persistent):
            return True
        if any(stream.peer is None for stream in self.streams.values()):
            return True
        return any(
            not peer.established or peer.inv_queue or peer.pending_compact
            or peer.headers_waiting or peer.stream_reopen_at is not None
            for peer in self.peers.values()
        )

    def idle_timer_interval(self, busy_interval: float) -> float:
        """How long the timer may sleep while `timer_busy()` is False: up to IDLE_TIMER_INTERVAL,
        but a small fraction of the keep-alive timers, so that pings, timeouts and their meaning
        stay as configured (tests run with short ones)."""
        cfg = self.config
        return max(busy_interval, min(IDLE_TIMER_INTERVAL, cfg.ping_interval / 4,
                                      cfg.peer_timeout / 8, cfg.reconnect_interval / 4))

    def _keep_alive(self, peer: Peer, now: float) -> bool:
        """Drop an established peer whose session or traffic has lapsed (False), else ping it
        when its ping is due."""
        cfg = self.config
        if not self.sessions.has_session(peer.addr):
            self._disconnect(peer, "session-expired", now)
            return False
        if now - peer.last_recv > cfg.peer_timeout:
            self._disconnect(peer, "timeout", now)
            return False
        if now - peer.last_ping_sent >= cfg.ping_interval:
            peer.last_ping_sent = now
            peer.ping_nonce = secrets.randbits(64)  # unpredictable: no forged pongs
            self._send(peer, Ping(peer.ping_nonce, *self._tip_fields()))
        return True

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
                # As Bitcoin Core: we push new blocks to it / asked it to push them to us.
                "bip152_hb_to": p.hb_to,
                "bip152_hb_from": p.hb_from,
                "session": self.sessions.info(p.addr),
            }
            for p in self.peers.values()
        ]

    def established_count(self) -> int:
        return sum(1 for p in self.peers.values() if p.established)

    _handlers: ClassVar[dict[type, Any]] = {}


# A fixed table from message class to handler: nothing from the network picks the code path
# beyond the decoded message type. Each part lists the messages it handles; Hello and Goodbye
# are handled before the table (`_handle`), in any state.
_OWN_HANDLERS: dict[type, Any] = {
    Ping: P2PProtocol._on_ping,
    Pong: P2PProtocol._on_pong,
    GetAddr: P2PProtocol._on_getaddr,
    Addr: P2PProtocol._on_addr,
}
P2PProtocol._handlers = {
    **_OWN_HANDLERS,
    **sync.HANDLERS,
    **compact.HANDLERS,
    **bandwidth.HANDLERS,
    **relay.HANDLERS,
}
