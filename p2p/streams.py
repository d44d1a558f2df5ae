"""Streams: the per-peer TCP connection, encrypted under keys from the peer's session.

The dialler of a peering opens the stream once established and sends a preamble naming the
session (its index and a fresh nonce) and an empty frame that proves the keys. The listener
cannot tell whose a connection is until then: it holds a bounded number of such strangers, and
binds a stream to its peer only once a frame has verified. Framing or authentication errors
close the stream without charging anyone; the dialler reopens it.
"""

from __future__ import annotations

import secrets

from p2p.actions import CloseStream, OpenStream, SendStream
from p2p.config import Address
from p2p.core import ProtocolCore, Stream
from p2p.errors import AUTH_FAILED, ProtocolError
from p2p.peer import Peer, PeerStatus
from p2p.secure_stream import (
    STREAM_NONCE_SIZE,
    TAG_SIZE,
    PreambleReader,
    StreamCipher,
    preamble,
)
from p2p.session import Session
from p2p.wire import MAX_MESSAGE_SIZE, decode_message

MAX_STREAM_FRAME = MAX_MESSAGE_SIZE + TAG_SIZE
MAX_STREAMS_PER_SESSION = 256  # stream nonces remembered per session (then it must rekey)
STREAM_REOPEN_INTERVAL = 1.0  # a dialler opens at most one stream a second to a peer


class Streams(ProtocolCore):
    """Opening, attributing, binding, reading and closing the peers' streams."""

    def stream_opened(self, stream_id: int, addr: Address, outbound: bool, now: float) -> None:
        if not outbound:
            self._admit_stranger(stream_id, addr, now)
            return
        peer = self.by_addr.get(addr)
        session = self.sessions.session(addr)
        if peer is None or not peer.established or session is None:
            self._actions.append(CloseStream(stream_id))
            return
        nonce = secrets.token_bytes(STREAM_NONCE_SIZE)
        cipher = StreamCipher.for_dialler(session.stream_secret, nonce, MAX_STREAM_FRAME)
        stream = Stream(stream_id, addr, outbound, now, cipher=cipher, session_addr=addr)
        self.streams[stream_id] = stream
        # The empty first frame proves the keys at once, so the listener never has to buffer
        # more than a few bytes from a connection it cannot yet attribute.
        opening = preamble(self.magic, session.their_index, nonce) + cipher.seal(b"")
        self._actions.append(SendStream(stream_id, opening))
        self._bind_stream(stream, peer)

    def _admit_stranger(self, stream_id: int, addr: Address, now: float) -> None:
        """Hold an inbound connection until its first frame verifies. Holding is bounded in
        all and per host; when full, the oldest stranger makes room rather than the newcomer
        being refused, since an honest dialler proves its keys in its very first bytes and
        whoever fills the table with silent connections must not keep it out."""
        if self.book.is_banned(addr, now):
            self._stream_dropped("banned")
            self._actions.append(CloseStream(stream_id))
            return
        cfg = self.config
        strangers = sorted(
            (st for st in self.streams.values() if st.peer is None and not st.outbound),
            key=lambda st: st.opened_at,
        )
        same_host = [st for st in strangers if st.addr[0] == addr[0]]
        if len(same_host) >= cfg.max_unauthenticated_streams_per_host:
            self._stream_dropped("host-capacity")
            self._close_stream(same_host[0])
        elif len(strangers) >= cfg.max_unauthenticated_streams:
            self._stream_dropped("capacity")
            self._close_stream(strangers[0])
        self.streams[stream_id] = Stream(
            stream_id, addr, False, now, preamble=PreambleReader(self.magic)
        )

    def stream_failed(self, addr: Address, now: float) -> None:
        peer = self.by_addr.get(addr)
        if peer is not None:
            peer.stream_requested = False
            self._disconnect(peer, "stream-failed", now)

    def stream_closed(self, stream_id: int, now: float) -> None:
        stream = self.streams.pop(stream_id, None)
        if stream is None or stream.peer is None:
            return
        peer = stream.peer
        if peer.stream_id == stream_id:
            peer.stream_id = None
            self._reopen_later(peer, stream)

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

    def _read_preamble(self, stream: Stream, data: bytes) -> bytes:
        """Feed the listener's preamble reader; once complete, set up the stream's keys from
        the session it names. Returns the bytes after the preamble."""
        assert stream.preamble is not None
        got = stream.preamble.feed(data)
        if got is None:
            return b""
        (index, nonce), rest = got
        session = self.sessions.by_index.get(index)
        if session is None or not self._fresh_stream_nonce(session, nonce):
            # Unknown session, or a replayed preamble: its keys would repeat nonces.
            raise ProtocolError(AUTH_FAILED, "stream preamble names no usable session")
        stream.preamble = None
        stream.session = session
        stream.nonce = nonce
        stream.session_addr = session.addr
        stream.cipher = StreamCipher.for_listener(session.stream_secret, nonce, MAX_STREAM_FRAME)
        return rest

    def _attribute_stream(self, stream: Stream) -> bool:
        """Bind an inbound stream to its peer once a frame has verified under its keys."""
        assert stream.cipher is not None
        if not stream.cipher.authenticated:
            return False
        session = stream.session
        assert session is not None
        # The nonce counts as used only now that a frame verified under it (the listener has
        # sent nothing before): a preamble alone, replayed or not, uses up nothing.
        if not self._fresh_stream_nonce(session, stream.nonce):
            self._stream_dropped("replayed")
            self._close_stream(stream)
            return False
        session.stream_nonces.add(stream.nonce)
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

    @staticmethod
    def _fresh_stream_nonce(session: Session, nonce: bytes) -> bool:
        return (
            nonce not in session.stream_nonces
            and len(session.stream_nonces) < MAX_STREAMS_PER_SESSION
        )

    def _bind_stream(self, stream: Stream, peer: Peer) -> None:
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

    def _send_on_stream(self, peer: Peer, stream: Stream, envelope: bytes) -> None:
        assert stream.cipher is not None
        framed = stream.cipher.seal(envelope)
        peer.bytes_sent += len(framed)
        self._actions.append(SendStream(stream.id, framed))

    def _close_stream(self, stream: Stream) -> None:
        self.streams.pop(stream.id, None)
        self._actions.append(CloseStream(stream.id))
        peer = stream.peer
        if peer is not None and peer.stream_id == stream.id:
            peer.stream_id = None
            self._reopen_later(peer, stream)

    def _reopen_later(self, peer: Peer, lost: Stream) -> None:
        """The dialler redials a lost stream, at most once per STREAM_REOPEN_INTERVAL (so a
        stream that keeps failing is not redialled in a tight loop); the timer does it."""
        peer.stream_requested = False
        if peer.established and not peer.inbound:
            peer.stream_requested = True
            peer.stream_reopen_at = lost.opened_at + STREAM_REOPEN_INTERVAL

    def _reopen_streams(self, now: float) -> None:
        for peer in self.peers.values():
            due = peer.stream_reopen_at
            if due is not None and due <= now:
                peer.stream_reopen_at = None
                if peer.established and not peer.inbound and peer.stream_id is None:
                    self._actions.append(OpenStream(peer.addr))

    def _stream_dropped(self, reason: str) -> None:
        self.stream_drops[reason] = self.stream_drops.get(reason, 0) + 1

    def _stream_protocol_error(self, stream: Stream, exc: ProtocolError, now: float) -> None:
        self._close_stream(stream)
        if stream.peer is not None:
            self._penalise(stream.peer.addr, exc.reason, now)

    def _expire_streams(self, now: float) -> None:
        """Close the streams nobody has been attributed to within stream_hello_timeout, and
        redial the lost streams that are due."""
        self._reopen_streams(now)
        for stream in list(self.streams.values()):
            if stream.peer is None and now - stream.opened_at > self.config.stream_hello_timeout:
                self._close_stream(stream)
