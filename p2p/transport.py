"""The asyncio shell around `P2PProtocol`: moves bytes, arms the timer, injects link faults.

UDP (asyncio-dgram) and TCP share one port number. Nothing here decides anything about the
protocol; it only feeds the state machine and carries out the actions it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncio_dgram
import structlog

from p2p.actions import CloseStream, Event, OpenStream, SendDatagram, SendStream
from p2p.config import Address
from p2p.protocol import P2PProtocol

log = structlog.get_logger("powlab.p2p")

TIMER_INTERVAL = 0.25  # seconds between handle_timer calls while the protocol is busy
ORDERING_EPSILON = 1e-6  # seconds between two frames scheduled on one stream
UDP_BUFFER = 4 * 1024 * 1024  # bytes of socket receive buffer asked for
BIND_ATTEMPTS = 20  # tries to find a port free for both UDP and TCP when asked for any port
STREAM_CONNECT_TIMEOUT = 5.0
GOODBYE_DRAIN_SECONDS = 0.5  # at most this long to send the goodbyes when stopping
WILDCARDS = ("0.0.0.0", "::", "")
MAX_QUEUED_DATAGRAMS = 10_000  # beyond this, outgoing datagrams are dropped (UDP is lossy)
STREAM_HIGH_WATER = 16 * 1024 * 1024  # bytes buffered for one stream before we await drain


@dataclass
class LinkFault:
    """Injected on outgoing traffic: delay ± jitter (ms) and a bandwidth cap (kbit/s) on
    everything, loss on datagrams (a stream is reliable: its bytes are delayed, never lost)."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0
    bandwidth_kbps: float = 0.0  # 0 = unlimited

    def validate(self) -> None:
        if self.delay_ms < 0 or self.jitter_ms < 0 or self.bandwidth_kbps < 0:
            raise ValueError("delay_ms, jitter_ms and bandwidth_kbps must not be negative")
        if not 0.0 <= self.loss <= 1.0:
            raise ValueError("loss is a probability between 0 and 1")

    @property
    def active(self) -> bool:
        return bool(self.delay_ms or self.jitter_ms or self.loss or self.bandwidth_kbps)


class P2PService:
    def __init__(
        self,
        bind: Address,
        listen: bool,
        clock: Callable[[], float],
        rng: random.Random,
        on_event: Callable[[Event], None],
    ) -> None:
        self.bind_addr = bind
        self.listen = listen
        self.clock = clock
        self.rng = rng
        self.on_event = on_event
        self.protocol: P2PProtocol | None = None
        self.fault = LinkFault()
        self.peer_faults: dict[str, LinkFault] = {}
        self._udp: Any = None
        self._server: asyncio.AbstractServer | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._timer_wake: asyncio.Future[None] | None = None  # the timer's current sleep
        self._timer_idle = False  # that sleep is the long, idle one
        self._streams: dict[int, asyncio.Transport] = {}
        self._stream_ids = itertools.count(1)
        self._send_queue: asyncio.Queue[tuple[bytes, Address]] = asyncio.Queue(
            MAX_QUEUED_DATAGRAMS
        )
        self.port = 0
        self.datagrams_dropped = 0
        self.receive_failures = 0  # exceptions caught on the receive paths (each logged)
        self._link_free_at: dict[str, float] = {}  # link -> when its last queued byte leaves
        self._stream_ready_at: dict[int, float] = {}  # stream -> its last scheduled write

    # ----------------------------------------------------------------- lifecycle

    async def bind(self) -> int:
        """Bind UDP (and TCP on the same port when listening); returns the port.

        With port 0 the system picks a free UDP port, which TCP may not have free: then try
        another, a bounded number of times.
        """
        host, port = self.bind_addr
        attempts = BIND_ATTEMPTS if port == 0 else 1
        for attempt in range(attempts):
            self._udp = await asyncio_dgram.bind((host, port))
            self.port = self._udp.sockname[1]
            # Bursts (a block's worth of announcements, many peers) must not overflow the
            # kernel's small default buffer; the kernel caps this at its own maximum.
            with contextlib.suppress(OSError):
                self._udp.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_BUFFER)
            if not self.listen:
                return self.port
            try:
                loop = asyncio.get_running_loop()
                self._server = await loop.create_server(
                    lambda: _StreamConnection(self, None), host, self.port
                )
                return self.port
            except OSError:
                self._udp.close()
                self._udp = None
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def attach(self, protocol: P2PProtocol) -> None:
        self.protocol = protocol
        self._tasks = [
            asyncio.create_task(self._recv_loop()),
            asyncio.create_task(self._send_loop()),
            asyncio.create_task(self._timer_loop()),
        ]

    async def close(self) -> None:
        if self.protocol is not None and self._udp is not None:
            # Goodbyes first, while the socket is open: peers learn of the stop at once.
            self.protocol.shut_down(self.clock())
            self.flush()
            deadline = self.clock() + GOODBYE_DRAIN_SECONDS
            while not self._send_queue.empty() and self.clock() < deadline:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0)  # the send loop's last datagram
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        streams = list(self._streams.values())
        self._streams.clear()  # closed by us: no stream_closed callbacks into the protocol
        for transport in streams:
            transport.close()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
        if self._udp is not None:
            self._udp.close()

    # ----------------------------------------------------------------- driving the protocol

    def flush(self) -> None:
        """Carry out what the protocol asked for and pass its events on."""
        protocol = self.protocol
        if protocol is None:
            return
        if self._timer_idle and self._timer_wake is not None and protocol.timer_busy():
            self._hurry()
        for action in protocol.take_actions():
            if isinstance(action, SendDatagram):
                self._queue_datagram(action.data, action.addr)
            elif isinstance(action, SendStream):
                self._write_stream(action.stream_id, action.data)
            elif isinstance(action, OpenStream):
                task = asyncio.create_task(self._open_stream(action.addr))
                self._tasks.append(task)
                task.add_done_callback(self._forget_task)
            elif isinstance(action, CloseStream):
                self._close_stream(action.stream_id)
        for event in protocol.take_events():
            self.on_event(event)

    def _hurry(self) -> None:
        """Work began during an idle sleep: tick again within TIMER_INTERVAL."""
        wake = self._timer_wake
        self._timer_idle = False
        if wake is not None and not wake.done():
            asyncio.get_running_loop().call_later(TIMER_INTERVAL, _resolve, wake)

    def _forget_task(self, task: asyncio.Task[Any]) -> None:
        with contextlib.suppress(ValueError):
            self._tasks.remove(task)

    async def _recv_loop(self) -> None:
        assert self.protocol is not None
        while True:
            try:
                data, addr = await self._udp.recv()
            except asyncio_dgram.TransportClosed:
                return
            try:
                self.protocol.receive_datagram(data, (addr[0], addr[1]), self.clock())
            except Exception:  # one bad datagram must not stop all reception
                self.receive_failures += 1
                log.exception("datagram_handler_failed", peer=f"{addr[0]}:{addr[1]}")
            self.flush()

    async def _timer_loop(self) -> None:
        """Tick every TIMER_INTERVAL while the protocol has something in progress
        (`timer_busy`), else every `idle_timer_interval`; work that starts during a long sleep
        (a datagram, a node call: anything followed by `flush`) cuts it short (`_hurry`)."""
        assert self.protocol is not None
        loop = asyncio.get_running_loop()
        while True:
            idle = not self.protocol.timer_busy()
            interval = self.protocol.idle_timer_interval(TIMER_INTERVAL) if idle else TIMER_INTERVAL
            wake: asyncio.Future[None] = loop.create_future()
            self._timer_wake, self._timer_idle = wake, idle
            handle = loop.call_later(interval, _resolve, wake)
            try:
                await wake
            finally:
                handle.cancel()
                self._timer_wake = None
            try:
                self.protocol.handle_timer(self.clock())
            except Exception:  # a bug in one tick must not silence the network for good
                log.exception("p2p_timer_failed")
            self.flush()

    # ----------------------------------------------------------------- datagrams

    def _fault_for(self, addr: Address) -> LinkFault:
        return self.peer_faults.get(f"{addr[0]}:{addr[1]}", self.fault)

    def _delay(self, fault: LinkFault) -> float:
        jitter = self.rng.uniform(-fault.jitter_ms, fault.jitter_ms) if fault.jitter_ms else 0.0
        return max(0.0, fault.delay_ms + jitter) / 1000

    def _transmission_delay(self, key: str, size: int, fault: LinkFault) -> float:
        """Seconds until `size` bytes have left a link capped at fault.bandwidth_kbps: bytes
        queue behind what was sent before them on the same link."""
        if not fault.bandwidth_kbps:
            return 0.0
        now = asyncio.get_running_loop().time()
        start = max(now, self._link_free_at.get(key, 0.0))
        done = start + size * 8 / (fault.bandwidth_kbps * 1000)
        self._link_free_at[key] = done
        return done - now

    def _queue_datagram(self, data: bytes, addr: Address) -> None:
        fault = self._fault_for(addr)
        if fault.active:
            if fault.loss and self.rng.random() < fault.loss:
                self.datagrams_dropped += 1
                return
            delay = self._delay(fault) + self._transmission_delay(
                f"{addr[0]}:{addr[1]}", len(data), fault
            )
            if delay:
                asyncio.get_running_loop().call_later(delay, self._enqueue, data, addr)
                return
        self._enqueue(data, addr)

    def _enqueue(self, data: bytes, addr: Address) -> None:
        try:
            self._send_queue.put_nowait((data, addr))
        except asyncio.QueueFull:
            self.datagrams_dropped += 1

    async def _send_loop(self) -> None:
        while True:
            data, addr = await self._send_queue.get()
            try:
                await self._udp.send(data, addr)
            except asyncio_dgram.TransportClosed:
                return
            except OSError as exc:
                log.debug("datagram_send_failed", addr=f"{addr[0]}:{addr[1]}", error=str(exc))

    # ----------------------------------------------------------------- streams

    def _stream_made(self, transport: asyncio.Transport, outbound_to: Address | None) -> int:
        """A TCP connection is up (dialled by us when `outbound_to` is set): register it and
        tell the protocol, before any of its bytes can arrive."""
        stream_id = next(self._stream_ids)
        self._streams[stream_id] = transport
        if outbound_to is None:
            peer = transport.get_extra_info("peername")
            addr: Address = (peer[0], peer[1])
        else:
            addr = outbound_to
        assert self.protocol is not None
        self.protocol.stream_opened(stream_id, addr, outbound_to is not None, self.clock())
        self.flush()
        return stream_id

    def _stream_data(self, stream_id: int, data: bytes) -> None:
        if stream_id not in self._streams:
            return  # closed by us; bytes already in flight are ignored
        assert self.protocol is not None
        try:
            self.protocol.receive_stream_data(stream_id, data, self.clock())
        except Exception:  # costs this stream, never the event loop's callback
            self.receive_failures += 1
            log.exception("stream_handler_failed", stream=stream_id)
            self._close_stream(stream_id)
            self.protocol.stream_closed(stream_id, self.clock())
        self.flush()

    def _stream_lost(self, stream_id: int) -> None:
        if self._streams.pop(stream_id, None) is None:
            return  # we closed it: the protocol already knows
        self._stream_ready_at.pop(stream_id, None)
        assert self.protocol is not None
        self.protocol.stream_closed(stream_id, self.clock())
        self.flush()

    async def _open_stream(self, addr: Address) -> None:
        assert self.protocol is not None
        loop = asyncio.get_running_loop()
        try:
            # Dial from our own address so the peer sees the host it knows us by (several
            # nodes of a local testnet share the machine on different loopback addresses).
            local = (self.bind_addr[0], 0) if self.bind_addr[0] not in WILDCARDS else None
            await asyncio.wait_for(
                loop.create_connection(
                    lambda: _StreamConnection(self, addr), addr[0], addr[1], local_addr=local
                ),
                STREAM_CONNECT_TIMEOUT,
            )
        except (OSError, TimeoutError) as exc:
            log.info("stream_connect_failed", peer=f"{addr[0]}:{addr[1]}", error=str(exc))
            self.protocol.stream_failed(addr, self.clock())
            self.flush()

    def _write_stream(self, stream_id: int, data: bytes) -> None:
        transport = self._streams.get(stream_id)
        if transport is None or transport.is_closing():
            return
        fault = self._stream_fault(stream_id, transport)
        loop = asyncio.get_running_loop()
        now = loop.time()
        ready = self._stream_ready_at.get(stream_id)
        if not fault.active and (ready is None or ready <= now):
            self._stream_ready_at.pop(stream_id, None)
            self._write_now(stream_id, data)
            return
        delay = self._delay(fault) + self._transmission_delay(
            f"stream:{stream_id}", len(data), fault
        )
        # A stream is a byte sequence: jitter may delay a frame but never let it overtake
        # one written before it, or the peer would read garbage.
        # Strictly later than the previous frame: the loop's timer heap does not keep the
        # order of equal deadlines.
        at = max(now + delay, self._stream_ready_at.get(stream_id, 0.0) + ORDERING_EPSILON)
        self._stream_ready_at[stream_id] = at
        loop.call_at(at, self._write_now, stream_id, data)

    def _stream_fault(self, stream_id: int, transport: asyncio.Transport) -> LinkFault:
        """The fault on a stream's link. A fault is set for the peer's address, the one it
        listens on (what getpeerinfo shows); a stream the peer dialled comes from an ephemeral
        port, so it is found through the peer the stream is bound to, and only a stream not
        yet bound falls back to the socket's remote address."""
        stream = self.protocol.streams.get(stream_id) if self.protocol is not None else None
        peer = stream.peer if stream is not None else None
        if peer is not None:
            return self._fault_for(peer.addr)
        name = transport.get_extra_info("peername")
        return self.fault if name is None else self._fault_for((name[0], name[1]))

    def _write_now(self, stream_id: int, data: bytes) -> None:
        transport = self._streams.get(stream_id)
        if transport is None or transport.is_closing():
            return
        transport.write(data)
        if transport.get_write_buffer_size() > STREAM_HIGH_WATER:
            # A peer that does not read is a peer we stop talking to.
            self._close_stream(stream_id)
            assert self.protocol is not None
            self.protocol.stream_closed(stream_id, self.clock())

    def _close_stream(self, stream_id: int) -> None:
        self._stream_ready_at.pop(stream_id, None)
        transport = self._streams.pop(stream_id, None)
        if transport is not None:
            transport.close()


class _StreamConnection(asyncio.Protocol):
    """One TCP connection, fed straight into the service from the event loop's callbacks:
    no reader task in between, so a received block is handled in the loop iteration that
    read it (a hop of block relay is one wakeup, not two)."""

    def __init__(self, service: P2PService, outbound_to: Address | None) -> None:
        self.service = service
        self.outbound_to = outbound_to
        self.stream_id: int | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.stream_id = self.service._stream_made(transport, self.outbound_to)

    def data_received(self, data: bytes) -> None:
        if self.stream_id is not None:
            self.service._stream_data(self.stream_id, data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.stream_id is not None:
            self.service._stream_lost(self.stream_id)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
