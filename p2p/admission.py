"""Admission: whom we dial, and which authenticated sessions become peers.

A session (`p2p/session.py`) proves the node id at the other end; `SessionUp` is where that
identity is checked (ourselves, the allowlist, a `--connect NODEID@HOST:PORT` pin, the same node
at another address, inbound capacity) and the peer admitted or refused. Both sides then exchange
a `Hello` (chain and version) under the session; with both Hellos in, the peer is established.
"""

from __future__ import annotations

import structlog

from p2p.actions import OpenStream, PeerConnected, PeerRefused
from p2p.config import PROTOCOL_VERSION, Address
from p2p.core import ProtocolCore
from p2p.messages import GetAddr, Goodbye, Hello
from p2p.peer import Peer, PeerStatus
from p2p.session import HandshakeRefused, SessionUp

log = structlog.get_logger("powlab.p2p")


class Admission(ProtocolCore):
    """Dialling out, admitting or refusing sessions, and the Hello exchange."""

    # ----------------------------------------------------------------- dialling

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
        eligible = [
            known
            for known in self.book.candidates(now, self.config.reconnect_interval)
            if known.addr not in self.by_addr
            and known.addr not in self._self_addrs
            and known.node_id not in connected_ids
            and known.node_id != self.node_id
        ]
        if not eligible:
            return
        # At random among the eligible, as Bitcoin Core's addrman `Select` does: which address
        # an outbound slot goes to is then a draw over the book, so an attacker who fills the
        # book with its own addresses wins each slot with probability about its share of it
        # (the eclipse attack; docs/p2p.md#address-book-and-dialling).
        known = self.rng.choice(eligible)
        known.last_attempt = now
        self._last_dial = now
        self.connect(known.addr, now)

    # ----------------------------------------------------------------- sessions

    def _session_events(self, now: float) -> None:
        """Carry out what the session layer did: its datagrams first (a finish must leave
        before the Hello sealed under the session it completes), then its events."""
        self._drain_sessions()
        for event in self.sessions.take_events():
            if isinstance(event, SessionUp):
                self._on_session_up(event, now)
            else:
                self._on_handshake_refused(event, now)

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

    def _refuse_session(
        self, addr: Address, peer: Peer | None, why: str, reason: str, now: float
    ) -> None:
        self._refuse(addr, why)
        if peer is not None:
            self._disconnect(peer, reason, now)
        self.sessions.close(addr)

    def _refuse(self, addr: Address, reason: str) -> None:
        log.info("peer_refused", peer=f"{addr[0]}:{addr[1]}", reason=reason)
        self._events.append(PeerRefused(addr, reason))

    def _on_handshake_refused(self, event: HandshakeRefused, now: float) -> None:
        self._refuse(event.addr, event.reason)
        peer = self.by_addr.get(event.addr)
        if peer is not None and not peer.established:
            self._disconnect(peer, "handshake-refused", now)

    # ----------------------------------------------------------------- hello

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

    def _maybe_established(self, peer: Peer, now: float) -> None:
        if peer.established or not peer.hello_received or peer.node_id is None:
            return
        peer.status = PeerStatus.ESTABLISHED
        peer.connected_at = now
        self.book.note_success(peer.addr, now)
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
        self._hb_peer_established(peer, now)
        self._maybe_request_headers(peer, now)

    def _handshake_timer(self, peer: Peer, now: float) -> None:
        """A peer still in its handshake: give up on it, redial, or repeat our Hello."""
        cfg = self.config
        if now - peer.created > cfg.handshake_timeout:
            self._disconnect(peer, "handshake-timeout", now)
        elif not self.sessions.has_session(peer.addr):
            if not peer.inbound:  # idempotent while a handshake is under way
                self.sessions.initiate(peer.addr, now, self._pinned.get(peer.addr))
        elif now - peer.last_hello_sent >= cfg.hello_retry_interval:
            # Our Hello (or theirs) may have been lost: repeat ours until theirs comes.
            self._send_hello(peer, now)
