"""Injected link faults: delays, jitter and bandwidth caps shape traffic but never corrupt it."""

from __future__ import annotations

import random
import socket
from pathlib import Path

import pytest

from lab.testnet.processes import NodeProcess
from p2p.transport import LinkFault, P2PService
from tests import subnets
from tests.daemon_harness import wait_for


async def test_bandwidth_cap_queues_bytes_behind_each_other() -> None:
    service = P2PService(("127.0.0.1", 0), False, lambda: 0.0, random.Random(1), print)
    fault = LinkFault(bandwidth_kbps=8)  # 1,000 bytes a second
    first = service._transmission_delay("peer", 1_000, fault)
    second = service._transmission_delay("peer", 500, fault)
    other = service._transmission_delay("another peer", 500, fault)
    assert first == pytest.approx(1.0, abs=0.05)
    assert second == pytest.approx(1.5, abs=0.05)  # waits for the first to leave
    assert other == pytest.approx(0.5, abs=0.05)  # links are independent
    assert service._transmission_delay("peer", 10, LinkFault()) == 0.0


class _FakeTransport:
    """Stands in for a TCP transport: records what is written to it."""

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def get_extra_info(self, name: str) -> object:
        return ("127.0.0.9", 18444) if name == "peername" else None

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes) -> None:
        self.written.append(data)


async def test_jitter_never_lets_a_stream_frame_overtake_an_earlier_one() -> None:
    import asyncio

    service = P2PService(("127.0.0.1", 0), False, lambda: 0.0, random.Random(3), print)
    writer = _FakeTransport()
    service._streams[1] = writer  # type: ignore[assignment]
    service.fault = LinkFault(delay_ms=5, jitter_ms=5)
    frames = [b"%03d" % i for i in range(40)]
    for frame in frames:
        service._write_stream(1, frame)
    for _ in range(200):
        if len(writer.written) == len(frames):
            break
        await asyncio.sleep(0.005)
    assert writer.written == frames


def test_a_peer_fault_reaches_the_stream_the_peer_dialled() -> None:
    """A fault is set for the peer's listening address (getpeerinfo's addr); a stream the
    peer dialled comes from an ephemeral port, and must be delayed all the same (else a link
    fault delays one direction of a link only)."""
    from types import SimpleNamespace

    service = P2PService(("127.0.0.1", 0), False, lambda: 0.0, random.Random(1), print)
    fault = LinkFault(delay_ms=2000)
    service.peer_faults["127.0.0.9:18444"] = fault

    class _Accepted(_FakeTransport):
        def get_extra_info(self, name: str) -> object:
            return ("127.0.0.9", 53211) if name == "peername" else None

    bound = SimpleNamespace(peer=SimpleNamespace(addr=("127.0.0.9", 18444)))
    service.protocol = SimpleNamespace(streams={1: bound, 2: SimpleNamespace(peer=None)})  # type: ignore[assignment]
    assert service._stream_fault(1, _Accepted()) is fault  # type: ignore[arg-type]
    # Not yet bound to a peer: only the socket's own address can say.
    assert service._stream_fault(2, _Accepted()) is service.fault  # type: ignore[arg-type]
    assert service._stream_fault(3, _FakeTransport()) is fault  # type: ignore[arg-type]


def test_link_fault_validation() -> None:
    for bad in (LinkFault(delay_ms=-1), LinkFault(loss=1.5), LinkFault(bandwidth_kbps=-2)):
        with pytest.raises(ValueError):
            bad.validate()


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_jitter_and_bandwidth_never_reorder_a_stream(tmp_path: Path) -> None:
    host_a, host_b = subnets.host(0, subnets.P2P_TESTS), subnets.host(1, subnets.P2P_TESTS)
    port = _free_port(host_a)
    source = NodeProcess(tmp_path / "source", args=["--p2p-bind", f"{host_a}:{port}"])
    sink = NodeProcess(tmp_path / "sink",
                       args=["--p2p-bind", f"{host_b}:{port}", "--connect", f"{host_a}:{port}"])
    try:
        source.start()
        sink.start()
        wait_for(lambda: sink.rpc("getconnectioncount") == 1, 30, "peers")
        # Jitter far larger than the gap between frames, and a bandwidth cap: sync still
        # completes and nothing the source sends looks like misbehaviour.
        source.rpc("setlinkfault", {"delay_ms": 20, "jitter_ms": 40, "bandwidth_kbps": 20_000})
        source.rpc("generatetoaddress", 60, source.rpc("getnewaddress"))
        wait_for(lambda: sink.rpc("getblockcount") == 60, 60, "the sink to sync through jitter")
        peers = sink.rpc("getpeerinfo")
        assert len(peers) == 1 and peers[0]["misbehavior"] == 0 and not peers[0]["penalties"]
        assert sink.rpc("getbestblockhash") == source.rpc("getbestblockhash")
        source.rpc("setlinkfault", {})
        with pytest.raises(Exception, match="unknown fault keys"):
            source.rpc("setlinkfault", {"latency": 5})
    finally:
        source.ensure_dead()
        sink.ensure_dead()
