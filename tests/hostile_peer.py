"""A scripted hostile peer for tests against real `powlab node` processes, built on our own
sans-IO session code, plus the kernel-level tools (raw sockets) to forge and capture datagrams.

`HostilePeer` is plain blocking sockets in the test process, bound to an address of its own:
a `p2p.session.SessionTable` with its own identity does the handshake (everything the UDP socket
receives is fed to it, everything in its outbox is sent), then the peer seals whatever envelope
the test hands it (`p2p.wire.encode_message`, or bytes built by hand) under that session. Its
stream is `p2p.secure_stream`: the preamble naming the node's session index, then frames under
the dialler's keys.

`Spoofer` sends UDP datagrams with any source address (a raw IPv4 socket with IP_HDRINCL, so
root only) and `Sniffer` captures loopback traffic (an AF_PACKET socket on `lo`): together an
on-path attacker, who can see genuine datagrams and forge their source.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from consensus.keys import PrivateKey
from consensus.params import REGTEST, ChainParams
from lab.stats import percentile
from p2p.config import PROTOCOL_VERSION, Address, P2PConfig
from p2p.errors import ProtocolError
from p2p.messages import Hello, Message, Ping, Pong
from p2p.protocol import MAX_STREAM_FRAME
from p2p.secure_stream import STREAM_NONCE_SIZE, StreamCipher, preamble
from p2p.session import (
    COOKIE_SIZE,
    INIT_HEADER,
    INIT_SIZE,
    KIND_INIT,
    Session,
    SessionTable,
)
from p2p.wire import decode_message, encode_message

PARAMS = REGTEST
MAX_UDP = 65_507
UDP_BUFFER = 8 * 1024 * 1024


class HostilePeer:
    """A peer scripted by the test: one UDP socket (its address), a session table (its
    identity) and optionally a TCP stream."""

    def __init__(
        self, host: str, target: Address, port: int = 0, params: ChainParams = PARAMS
    ) -> None:
        self.params = params
        self.target = target
        self.key = PrivateKey(os.urandom(32))
        self.node_id = self.key.public_key
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with contextlib.suppress(OSError):
            self.udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_BUFFER)
        self.udp.bind((host, port))
        self.host, self.port = self.udp.getsockname()
        self.addr = f"{self.host}:{self.port}"
        self.sessions = SessionTable(
            params.magic, params.genesis_hash, self.key, P2PConfig(), time.monotonic()
        )
        self.sent: list[bytes] = []  # every datagram sent to the node, in order
        self.bytes_sent = 0
        self.bytes_received = 0
        self.received: list[Message] = []
        self.stream: socket.socket | None = None
        self.cipher: StreamCipher | None = None
        self.stream_opening = b""  # the bytes our last stream began with
        self._nonce = int.from_bytes(os.urandom(4), "big")

    def close(self) -> None:
        self.udp.close()
        self.close_stream()

    def __enter__(self) -> HostilePeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------- sending

    def send_datagram(self, data: bytes) -> None:
        self.udp.sendto(data, self.target)
        self.sent.append(data)
        self.bytes_sent += len(data)

    def _flush(self) -> None:
        for addr, data in self.sessions.take_outbox():
            if addr == self.target:
                self.send_datagram(data)

    @property
    def session(self) -> Session | None:
        return self.sessions.session(self.target)

    def seal(self, envelope: bytes) -> bytes:
        sealed = self.sessions.seal(self.target, envelope)
        assert sealed is not None, "no session with the node"
        return sealed

    def send_envelope(self, envelope: bytes) -> bytes:
        """Seal `envelope` (any bytes) under our session and send it; returns the datagram."""
        sealed = self.seal(envelope)
        self.send_datagram(sealed)
        return sealed

    def envelope(self, msg: Message, magic: bytes | None = None) -> bytes:
        return encode_message(self.params.magic if magic is None else magic, msg)

    def send(self, msg: Message, magic: bytes | None = None) -> bytes:
        return self.send_envelope(self.envelope(msg, magic))

    def hello(self) -> Hello:
        genesis = self.params.genesis_hash
        return Hello(PROTOCOL_VERSION, genesis, 0, 0, bytes(32), genesis, "/hostile:0.0/",
                     int(time.time()))

    def next_nonce(self) -> int:
        self._nonce = (self._nonce + 1) % 2**64
        return self._nonce

    def ping(self) -> tuple[int, bytes]:
        """Send a Ping; returns its nonce and the sealed datagram."""
        nonce = self.next_nonce()
        genesis = self.params.genesis_hash
        return nonce, self.send(Ping(nonce, 0, bytes(32), genesis))

    # ------------------------------------------------------------------------- receiving

    def _receive_one(self, timeout: float) -> list[Message]:
        self.udp.settimeout(max(timeout, 0.001))
        try:
            data, addr = self.udp.recvfrom(MAX_UDP)
        except TimeoutError:
            return []
        now = time.monotonic()
        if (addr[0], addr[1]) != self.target:
            return []
        self.bytes_received += len(data)
        plaintext = self.sessions.receive(data, self.target, now)
        self.sessions.take_events()
        self._flush()
        if plaintext is None:
            return []
        try:
            msg = decode_message(plaintext, self.params.magic, MAX_UDP)
        except ProtocolError:
            return []
        if isinstance(msg, Ping):
            self.send(Pong(msg.nonce, 0, bytes(32), self.params.genesis_hash))
        self.received.append(msg)
        return [msg]

    def poll(
        self, seconds: float, until: Callable[[Message], bool] | None = None
    ) -> list[Message]:
        """What the node sends within `seconds`, or up to the first message `until` accepts
        (answering its pings and driving the handshake's retransmissions, like a live peer)."""
        deadline = time.monotonic() + seconds
        got: list[Message] = []
        while (left := deadline - time.monotonic()) > 0:
            self.sessions.handle_timer(time.monotonic())
            self._flush()
            msgs = self._receive_one(min(left, 0.25))
            got += msgs
            if until is not None and any(until(m) for m in msgs):
                break
        return got

    def expect(self, until: Callable[[Message], bool], timeout: float, what: str) -> Message:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for msg in self.poll(deadline - time.monotonic(), until):
                if until(msg):
                    return msg
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")

    def round_trip(self, timeout: float = 10) -> float:
        """Ping and wait for its Pong (the node answers only an established peer); returns
        the seconds it took."""
        start = time.monotonic()
        nonce, _ = self.ping()
        self.expect(lambda m: isinstance(m, Pong) and m.nonce == nonce, timeout, "a pong")
        return time.monotonic() - start

    def handshake(self, timeout: float = 20) -> None:
        """The session handshake, then our Hello, until the node answers a Ping (which it
        does only once it counts us as an established peer)."""
        deadline = time.monotonic() + timeout
        self.sessions.initiate(self.target, time.monotonic())
        self._flush()
        while self.session is None or not self.session.confirmed:
            assert time.monotonic() < deadline, "the node never completed our handshake"
            self.poll(0.25, lambda m: True)
        while True:
            assert time.monotonic() < deadline, "the node never counted us as established"
            self.send(self.hello())
            nonce, _ = self.ping()

            def answered(m: Message, nonce: int = nonce) -> bool:
                return isinstance(m, Pong) and m.nonce == nonce

            if any(answered(m) for m in self.poll(0.5, answered)):
                return

    # ------------------------------------------------------------------------- stream

    def open_stream(self, first_frame: bool = True) -> socket.socket:
        """The TCP stream on the node's port: the preamble naming our session, then (unless
        told otherwise) the empty frame that proves our keys."""
        session = self.session
        assert session is not None, "no session to open a stream under"
        self.close_stream()
        nonce = os.urandom(STREAM_NONCE_SIZE)
        self.cipher = StreamCipher.for_dialler(session.stream_secret, nonce, MAX_STREAM_FRAME)
        stream = socket.create_connection(self.target, timeout=5, source_address=(self.host, 0))
        opening = preamble(self.params.magic, session.their_index, nonce)
        if first_frame:
            opening += self.cipher.seal(b"")
        stream.sendall(opening)
        self.stream_opening = opening
        self.stream = stream
        return stream

    def stream_send(self, msg: Message | bytes) -> None:
        """A message (or an envelope built by hand) as one sealed frame on the stream."""
        assert self.stream is not None and self.cipher is not None
        envelope = msg if isinstance(msg, bytes) else self.envelope(msg)
        self.stream.sendall(self.cipher.seal(envelope))

    def stream_closed_by_node(self, timeout: float) -> bool:
        """Read (and discard) until the node closes the stream; False if it is still open
        after `timeout`."""
        assert self.stream is not None
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.stream.settimeout(left)
            try:
                if not self.stream.recv(65536):
                    return True
            except TimeoutError:
                return False
            except ConnectionResetError:
                return True
        return False

    def close_stream(self, reset: bool = False) -> None:
        if self.stream is None:
            return
        if reset:  # SO_LINGER 0: close sends an RST, not a FIN
            self.stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.stream.close()
        self.stream = None
        self.cipher = None


def forged_init(
    params: ChainParams = PARAMS,
    index: int | None = None,
    magic: bytes | None = None,
    genesis: bytes | None = None,
) -> bytes:
    """A handshake init anyone can forge: a random ephemeral key, no cookie."""
    head = INIT_HEADER.pack(
        KIND_INIT,
        params.magic if magic is None else magic,
        params.genesis_hash if genesis is None else genesis,
        int.from_bytes(os.urandom(4), "big") if index is None else index,
        bytes(COOKIE_SIZE),
    )
    head += os.urandom(32)
    return head + bytes(INIT_SIZE - len(head))


# ----------------------------------------------------------------------------- raw sockets


def raw_sockets_unavailable() -> str | None:
    """Why this process cannot forge source addresses or capture loopback, or None if it can."""
    if os.geteuid() != 0:
        return "not root: forging a source address needs a raw socket (CAP_NET_RAW)"
    try:
        socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW).close()
        packet = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        packet.bind(("lo", 0))
        packet.close()
    except (OSError, AttributeError) as exc:
        return f"raw sockets refused ({exc}): cannot forge source addresses on loopback"
    return None


def ip_udp_packet(src: Address, dst: Address, payload: bytes) -> bytes:
    """An IPv4 header and a UDP header around `payload`. The kernel fills in the IP checksum
    (IP_HDRINCL); a UDP checksum of zero means none, which IPv4 allows."""
    udp_length = 8 + len(payload)
    udp = struct.pack(">HHHH", src[1], dst[1], udp_length, 0)
    ip = struct.pack(
        ">BBHHHBBH4s4s",
        0x45, 0, 20 + udp_length, 0, 0x4000, 64, socket.IPPROTO_UDP, 0,
        socket.inet_aton(src[0]), socket.inet_aton(dst[0]),
    )
    return ip + udp + payload


class Spoofer:
    """Sends UDP datagrams from any source address (root only)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
        self.bytes_sent = 0  # UDP payload bytes
        self.datagrams = 0

    def send(self, src: Address, dst: Address, payload: bytes) -> None:
        self.sock.sendto(ip_udp_packet(src, dst, payload), (dst[0], 0))
        self.bytes_sent += len(payload)
        self.datagrams += 1

    def close(self) -> None:
        self.sock.close()


@dataclass(frozen=True)
class Captured:
    src: Address
    dst: Address
    payload: bytes


class Sniffer:
    """Captures UDP datagrams on the loopback interface (root only)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        self.sock.bind(("lo", 0))

    def capture(
        self, keep: Callable[[Captured], bool], timeout: float, what: str
    ) -> Captured:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                frame, meta = self.sock.recvfrom(MAX_UDP + 100)
            except TimeoutError:
                break
            if meta[2] == socket.PACKET_OUTGOING:
                continue  # on lo every packet is seen leaving and arriving: keep one
            got = parse_udp_frame(frame)
            if got is not None and keep(got):
                return got
        raise AssertionError(f"captured no {what} within {timeout}s")

    def close(self) -> None:
        self.sock.close()


def parse_udp_frame(frame: bytes) -> Captured | None:
    """The UDP datagram in an Ethernet frame from `lo` (whose link header is 14 zero-ish
    bytes), or None for anything else."""
    if len(frame) < 14 + 20 + 8 or frame[12:14] != b"\x08\x00":
        return None
    ip = frame[14:]
    ihl = (ip[0] & 0x0F) * 4
    if ip[0] >> 4 != 4 or ip[9] != socket.IPPROTO_UDP:
        return None
    total = struct.unpack_from(">H", ip, 2)[0]
    src_ip, dst_ip = socket.inet_ntoa(ip[12:16]), socket.inet_ntoa(ip[16:20])
    sport, dport, length = struct.unpack_from(">HHH", ip, ihl)
    payload = ip[ihl + 8 : min(total, ihl + length)]
    return Captured((src_ip, sport), (dst_ip, dport), payload)


# ----------------------------------------------------------------------------- measuring


def rss_bytes(pid: int) -> int:
    """VmRSS of process `pid`."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


class Monitor:
    """Watches a node while something hostile happens, from two threads until stopped: RPC
    latency (`call`, timed, back to back with a short pause) and the process's resident
    memory (sampled every `rss_interval`, whatever the RPC calls cost)."""

    def __init__(
        self,
        pid: int,
        call: Callable[[], object],
        interval: float = 0.02,
        rss_interval: float = 0.02,
    ) -> None:
        self.pid = pid
        self.call = call
        self.interval = interval
        self.rss_interval = rss_interval
        self.latencies: list[float] = []
        self.errors: list[BaseException] = []
        self.baseline_rss = rss_bytes(pid)
        self.peak_rss = self.baseline_rss
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._call_loop, daemon=True),
            threading.Thread(target=self._rss_loop, daemon=True),
        ]

    def _call_loop(self) -> None:
        while not self._stop.is_set():
            start = time.monotonic()
            try:
                self.call()
            except Exception as exc:  # reported by the test, not lost in the thread
                self.errors.append(exc)
            self.latencies.append(time.monotonic() - start)
            self._stop.wait(self.interval)  # pacing between samples, not synchronisation

    def _rss_loop(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError):
                self.sample_rss()
            self._stop.wait(self.rss_interval)

    def sample_rss(self) -> int:
        rss = rss_bytes(self.pid)
        self.peak_rss = max(self.peak_rss, rss)
        return rss

    def __enter__(self) -> Monitor:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        with contextlib.suppress(OSError):
            self.sample_rss()

    @property
    def growth(self) -> int:
        return self.peak_rss - self.baseline_rss

    def p99(self) -> float:
        return percentile(self.latencies, 0.99)

    def summary(self) -> str:
        return (
            f"RSS {self.baseline_rss / 2**20:.1f} MB -> peak {self.peak_rss / 2**20:.1f} MB "
            f"(+{self.growth / 2**20:.1f} MB); RPC getblockcount p50 "
            f"{percentile(self.latencies, 0.5) * 1000:.1f} ms, p99 {self.p99() * 1000:.1f} ms, "
            f"max {max(self.latencies) * 1000:.1f} ms over {len(self.latencies)} calls"
        )
