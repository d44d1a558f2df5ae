"""What the session layer costs per message, as a ratio to decoding the same message.

The baseline, measured in the same run, is `p2p.wire.decode_message` of the envelope: the work
a receiver did per datagram before sessions existed. The session adds, per datagram, one
`SessionTable.seal` on the sender and one `SessionTable.receive` on the receiver (header,
ChaCha20-Poly1305, replay window); per stream frame, `StreamCipher.seal` and `feed`. Printed:
microseconds per operation, the ratio (seal + open) ÷ decode, and the bytes each adds. Also
the cost of one whole handshake (both sides, three messages).

Usage: python benchmarks/bench_session.py [--repeat N]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from consensus.keys import PrivateKey
from consensus.params import REGTEST
from p2p.config import P2PConfig
from p2p.messages import INV_TX, Inv, InvItem, Ping
from p2p.protocol import MAX_STREAM_FRAME
from p2p.secure_stream import StreamCipher
from p2p.session import SESSION_OVERHEAD, SessionTable
from p2p.wire import MAX_MESSAGE_SIZE, decode_message, encode_message

A = ("127.0.0.2", 18444)
B = ("127.0.0.3", 18444)


def per_call_us(fn: Callable[[], object], repeat: int) -> float:
    """Best of five timings of `repeat` calls, in microseconds per call."""
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeat):
            fn()
        best = min(best, time.perf_counter() - start)
    return best / repeat * 1e6


def pair() -> tuple[SessionTable, SessionTable]:
    """Two tables with a completed session between them."""
    now = 0.0
    a = SessionTable(REGTEST.magic, REGTEST.genesis_hash, PrivateKey(b"a" * 32), P2PConfig(), now)
    b = SessionTable(REGTEST.magic, REGTEST.genesis_hash, PrivateKey(b"b" * 32), P2PConfig(), now)
    a.initiate(B, now)
    tables = {A: a, B: b}
    for _ in range(4):  # init, response, finish, confirmation
        for src, table in ((A, a), (B, b)):
            for dst, data in table.take_outbox():
                tables[dst].receive(data, src, now)
    assert a.has_session(B) and b.has_session(A), "handshake did not complete"
    return a, b


def handshake_us(repeat: int) -> float:
    return per_call_us(pair, repeat)


def datagram_row(name: str, envelope: bytes, repeat: int) -> tuple[str, int, float, float, float]:
    a, b = pair()
    decode_us = per_call_us(lambda: decode_message(envelope, REGTEST.magic, 65_507), repeat)
    sealed = [a.seal(B, envelope) for _ in range(repeat * 5)]
    seal_us = per_call_us(lambda: a.seal(B, envelope), repeat)
    feed = iter(sealed)
    open_us = per_call_us(lambda: b.receive(next(feed), A, 0.0), repeat)
    return name, len(envelope), decode_us, seal_us, open_us


def stream_row(size: int, repeat: int) -> tuple[str, int, float, float, float]:
    envelope = bytes(size)
    sender = StreamCipher.for_dialler(b"k" * 32, b"n" * 16, MAX_STREAM_FRAME)
    receiver = StreamCipher.for_listener(b"k" * 32, b"n" * 16, MAX_STREAM_FRAME)
    receiver.authenticated = True
    frames = [sender.seal(envelope) for _ in range(repeat * 5)]
    fresh = StreamCipher.for_dialler(b"k" * 32, b"n" * 16, MAX_STREAM_FRAME)
    seal_us = per_call_us(lambda: fresh.seal(envelope), repeat)
    feed = iter(frames)
    open_us = per_call_us(lambda: receiver.feed(next(feed)), repeat)
    return f"stream frame {size} B", size, float("nan"), seal_us, open_us


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=20_000)
    args = parser.parse_args(argv)
    repeat = args.repeat
    ping = encode_message(REGTEST.magic, Ping(2**63, 123_456, b"\x01" * 32, b"\x02" * 32))
    inv = encode_message(
        REGTEST.magic, Inv(tuple(InvItem(INV_TX, i.to_bytes(32, "big")) for i in range(35)))
    )
    assert len(inv) + SESSION_OVERHEAD <= 1400 and len(ping) < MAX_MESSAGE_SIZE
    rows = [datagram_row("ping datagram", ping, repeat), datagram_row("inv datagram", inv, repeat)]
    rows += [stream_row(size, repeat // 10) for size in (1_000, 100_000)]
    print(f"bench_session: python {sys.version.split()[0]}, best of 5 x {repeat} calls")
    print(f"{'message':<24}{'bytes':>8}{'decode µs':>11}{'seal µs':>9}{'open µs':>9}"
          f"{'(seal+open)/decode':>20}")
    for name, size, decode_us, seal_us, open_us in rows:
        ratio = (seal_us + open_us) / decode_us if decode_us == decode_us else float("nan")
        print(f"{name:<24}{size:>8}{decode_us:>11.2f}{seal_us:>9.2f}{open_us:>9.2f}"
              f"{ratio:>20.2f}")
    print(f"bytes added: {SESSION_OVERHEAD} per datagram (13 header + 16 tag), "
          "20 per stream frame (4 length + 16 tag), 24 per stream (preamble)")
    print(f"one handshake, both sides: {handshake_us(max(repeat // 100, 20)):.0f} µs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
