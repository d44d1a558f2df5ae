"""The session layer (p2p.session) and stream framing (p2p.secure_stream), in memory.

`SessionTable` is sans-IO, so these tests drive two or more tables directly through `Wire`,
a tiny discrete-event channel: a virtual clock, datagrams with a latency (and jitter, which
reorders them), and a policy that may drop or duplicate any datagram. Randomness is seeded,
time is virtual, nothing sleeps.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import os
import random
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consensus.keys import PrivateKey
from p2p.config import Address, P2PConfig
from p2p.errors import AUTH_FAILED, BAD_MAGIC, OVERSIZE, ProtocolError
from p2p.secure_stream import (
    LENGTH,
    PREAMBLE,
    PREAUTH_MAX_FRAME,
    REKEY_FRAMES,
    PreambleReader,
    StreamCipher,
    preamble,
    stream_keys,
)
from p2p.session import (
    COOKIE_REPLY,
    COOKIE_SIZE,
    DATA_HEADER,
    FINISH_HEADER,
    FINISH_SIZE,
    INIT_HEADER,
    INIT_SIZE,
    KIND_COOKIE,
    KIND_DATA,
    KIND_FINISH,
    KIND_INIT,
    KIND_REFUSAL,
    KIND_RESPONSE,
    REFUSAL,
    REFUSAL_REASONS,
    RESPONSE_HEADER,
    RESPONSE_SIZE,
    SESSION_OVERHEAD,
    STATIC_KEY_CONTEXT,
    HandshakeRefused,
    SessionTable,
    SessionUp,
)

MAGIC = b"PWRT"
GENESIS = hashlib.sha256(b"powlab session test genesis").digest()
A: Address = ("10.0.0.1", 8333)
B: Address = ("10.0.0.2", 8333)
C: Address = ("10.0.0.3", 8333)
M: Address = ("10.0.0.66", 8333)
TICK = 0.05  # how often every table's timer runs

CONFIG = P2PConfig(
    handshake_timeout=10.0,
    hello_retry_interval=0.5,
    half_open_timeout=5.0,
    rekey_after_seconds=1_000.0,
    peer_timeout=1_000.0,
)


def key(n: int) -> PrivateKey:
    return PrivateKey(bytes([n]) * 32)


def kind(data: bytes) -> int:
    return data[0] if data else -1


# ----------------------------------------------------------------------------- harness


@dataclass
class Sent:
    """One datagram put on the wire (before the channel's policy)."""

    time: float
    src: Address
    dst: Address
    data: bytes
    copies: int  # 0 = the channel dropped it


class Wire:
    """Virtual clock + datagram channel between `SessionTable`s, one per address."""

    def __init__(self, seed: int = 1, *, latency: float = 0.01, jitter: float = 0.0) -> None:
        self.now = 0.0
        self.rng = random.Random(seed)
        self.latency = latency
        self.jitter = jitter
        self.loss = 0.0  # probability a datagram is dropped
        self.dup = 0.0  # probability a datagram is delivered 2-3 times
        # (src, dst, data) -> copies to deliver (0 drops it), or None for the random policy
        self.policy: Callable[[Address, Address, bytes], int | None] | None = None
        self.tables: dict[Address, SessionTable] = {}
        self.queue: list[tuple[float, int, Address, Address, bytes]] = []
        self._seq = itertools.count()
        self.sent: list[Sent] = []
        self.received: dict[Address, list[tuple[Address, bytes]]] = {}
        self.events: dict[Address, list[object]] = {}
        self.next_tick = TICK

    def add(
        self,
        addr: Address,
        identity: PrivateKey,
        config: P2PConfig = CONFIG,
        *,
        magic: bytes = MAGIC,
        genesis: bytes = GENESIS,
    ) -> SessionTable:
        table = SessionTable(magic, genesis, identity, config, self.now)
        self.tables[addr] = table
        self.received[addr] = []
        self.events[addr] = []
        return table

    # -- sending

    def put(self, src: Address, dst: Address, data: bytes) -> None:
        copies = self.policy(src, dst, data) if self.policy else None
        if copies is None:
            if self.rng.random() < self.loss:
                copies = 0
            elif self.rng.random() < self.dup:
                copies = self.rng.choice((2, 3))
            else:
                copies = 1
        self.sent.append(Sent(self.now, src, dst, data, copies))
        for _ in range(copies):
            when = self.now + self.latency + self.rng.uniform(0.0, self.jitter)
            heapq.heappush(self.queue, (when, next(self._seq), src, dst, data))

    def flush(self) -> None:
        for addr, table in self.tables.items():
            for dst, data in table.take_outbox():
                self.put(addr, dst, data)
            self.events[addr].extend(table.take_events())

    def send(self, src: Address, dst: Address, payload: bytes) -> bytes:
        """Seal `payload` on src's session with dst and put it on the wire."""
        sealed = self.tables[src].seal(dst, payload)
        assert sealed is not None, f"{src} has no session with {dst}"
        self.put(src, dst, sealed)
        return sealed

    # -- running

    def deliver(self, src: Address, dst: Address, data: bytes) -> bytes | None:
        table = self.tables.get(dst)
        if table is None:
            return None
        plaintext = table.receive(data, src, self.now)
        if plaintext is not None:
            self.received[dst].append((src, plaintext))
        return plaintext

    def step(self, end: float) -> bool:
        """Advance to the next datagram or timer tick no later than `end`; False at `end`."""
        self.flush()
        next_dg = self.queue[0][0] if self.queue else float("inf")
        when = min(next_dg, self.next_tick)
        if when > end:
            self.now = end
            return False
        self.now = when
        if next_dg <= self.next_tick:
            _, _, src, dst, data = heapq.heappop(self.queue)
            self.deliver(src, dst, data)
        else:
            self.next_tick += TICK
            for table in self.tables.values():
                table.handle_timer(self.now)
        self.flush()
        return True

    def run(self, duration: float, until: Callable[[], bool] | None = None) -> bool:
        """Run for `duration` virtual seconds, or until `until()` holds (then True)."""
        end = self.now + duration
        while True:
            if until is not None and until():
                return True
            if not self.step(end):
                return until() if until is not None else False

    def drain(self, max_time: float = 5.0) -> None:
        """Deliver everything in flight (timers keep running meanwhile)."""
        self.run(max_time, until=lambda: not self.queue)

    # -- observations

    def sent_kinds(self, src: Address, k: int) -> list[Sent]:
        return [s for s in self.sent if s.src == src and kind(s.data) == k]

    def ups(self, addr: Address) -> list[SessionUp]:
        return [e for e in self.events[addr] if isinstance(e, SessionUp)]

    def refusals(self, addr: Address) -> list[HandshakeRefused]:
        return [e for e in self.events[addr] if isinstance(e, HandshakeRefused)]


def paired(x: SessionTable, x_addr: Address, y: SessionTable, y_addr: Address) -> bool:
    """Both sides send on the same session, and the initiator knows the responder has it."""
    sx, sy = x.session(y_addr), y.session(x_addr)
    return (
        sx is not None
        and sy is not None
        and sx.our_index == sy.their_index
        and sx.their_index == sy.our_index
        and sx.confirmed
        and sy.confirmed
        and sx.stream_secret == sy.stream_secret
    )


def two(
    seed: int = 1, config: P2PConfig = CONFIG, keys: tuple[int, int] = (1, 2), **wire: float
) -> tuple[Wire, SessionTable, SessionTable]:
    w = Wire(seed, **wire)
    return w, w.add(A, key(keys[0]), config), w.add(B, key(keys[1]), config)


def paired_up(
    seed: int = 1,
    config: P2PConfig = CONFIG,
    keys: tuple[int, int] = (1, 2),
    within: float = 5.0,
    **wire: float,
) -> tuple[Wire, SessionTable, SessionTable]:
    """`two`, once A's handshake with B made one session on both sides; whatever is still on
    the wire stays there."""
    w, a, b = two(seed, config, keys, **wire)
    a.initiate(B, w.now)
    assert w.run(within, until=lambda: paired(a, A, b, B))
    return w, a, b


def established(
    seed: int = 1, config: P2PConfig = CONFIG
) -> tuple[Wire, SessionTable, SessionTable]:
    w, a, b = paired_up(seed, config)
    w.drain()
    return w, a, b


def talks(w: Wire, x: Address, y: Address) -> bool:
    """A datagram sealed by x now opens at y (delivered directly, not through the channel)."""
    payload = os.urandom(12)
    sealed = w.tables[x].seal(y, payload)
    return sealed is not None and w.tables[y].receive(sealed, x, w.now) == payload


def no_stray_state(x: SessionTable) -> None:
    assert not x.initiating and not x._initiating_by_index
    assert not x.half_open and not x._half_open_by_key
    assert not x._pending


# ----------------------------------------------------------------------------- 1. handshake
# under loss, duplication and reordering

HANDSHAKE_STEPS = {
    # step -> (sender, kind)
    "init": (A, KIND_INIT),
    "response": (B, KIND_RESPONSE),
    "finish": (A, KIND_FINISH),
    "confirm": (B, KIND_DATA),  # no application data is sent in these tests
}


def test_clean_handshake_is_four_datagrams_and_leaves_one_session_each() -> None:
    w, a, b = two()
    a.initiate(B, w.now)
    assert w.run(1.0, until=lambda: paired(a, A, b, B))
    w.drain()
    assert [(s.src, kind(s.data)) for s in w.sent] == list(HANDSHAKE_STEPS.values())
    assert [len(s.data) for s in w.sent[:3]] == [INIT_SIZE, RESPONSE_SIZE, FINISH_SIZE]
    assert w.ups(A) == [SessionUp(B, key(2).public_key, True)]
    assert w.ups(B) == [SessionUp(A, key(1).public_key, False)]
    for t in (a, b):
        no_stray_state(t)
        assert len(t.by_index) == 1 and t.handshakes_completed == 1
        assert not t.drops and not t.auth_failures
    assert talks(w, A, B) and talks(w, B, A)


@pytest.mark.parametrize("times", [1, 4])
@pytest.mark.parametrize("step", list(HANDSHAKE_STEPS))
def test_dropped_handshake_step_is_retransmitted(step: str, times: int) -> None:
    w, a, b = two()
    sender, k = HANDSHAKE_STEPS[step]
    dropped = []

    def policy(src: Address, dst: Address, data: bytes) -> int | None:
        if src == sender and kind(data) == k and len(dropped) < times:
            dropped.append(data)
            return 0
        return None

    w.policy = policy
    a.initiate(B, w.now)
    assert w.run(CONFIG.handshake_timeout, until=lambda: paired(a, A, b, B))
    assert len(dropped) == times
    assert w.now <= CONFIG.handshake_timeout
    w.run(1.0)
    assert len(w.ups(A)) == 1 and len(w.ups(B)) == 1
    assert not w.refusals(A) and not w.refusals(B)
    for t in (a, b):
        no_stray_state(t)
        assert len(t.by_index) == 1 and t.handshakes_completed == 1
        assert not t.auth_failures
    if step == "init":
        # the retransmitted init is byte-identical (same index, same ephemeral key)
        assert len({s.data for s in w.sent_kinds(A, KIND_INIT)}) == 1
    assert talks(w, A, B) and talks(w, B, A)


@pytest.mark.parametrize("step", list(HANDSHAKE_STEPS))
def test_duplicated_handshake_step_makes_no_extra_state(step: str) -> None:
    w, a, b = two(seed=7)
    sender, k = HANDSHAKE_STEPS[step]
    w.policy = lambda src, dst, data: (
        w.rng.choice((2, 3)) if src == sender and kind(data) == k else 1
    )
    a.initiate(B, w.now)
    assert w.run(2.0, until=lambda: paired(a, A, b, B))
    w.run(3.0)
    assert len(w.ups(A)) == 1 and len(w.ups(B)) == 1
    for t in (a, b):
        no_stray_state(t)
        assert len(t.by_index) == 1 and len(t.current) == 1 and t.handshakes_completed == 1
        assert not t.auth_failures and not t.drops["auth-failed"]
    responses = w.sent_kinds(B, KIND_RESPONSE)
    if step == "init":
        # every copy of the init was answered, with the same bytes
        assert len(responses) >= 2 and len({s.data for s in responses}) == 1
    else:
        assert len(responses) == 1
    assert talks(w, A, B) and talks(w, B, A)


def test_duplicated_init_gets_identical_response_and_one_half_open() -> None:
    w, a, b = two()
    a.initiate(B, w.now)
    ((_, init),) = a.take_outbox()
    replies = []
    for _ in range(3):
        assert b.receive(init, A, w.now) is None
        replies.append(b.take_outbox())
    assert all(r == replies[0] for r in replies) and len(replies[0]) == 1
    assert len(b.half_open) == 1 and not b.current and not b.take_events()


@pytest.mark.parametrize("seed", range(12))
def test_everything_duplicated_and_reordered(seed: int) -> None:
    """Every datagram 1-3 times, with jitter far above latency: one session each side."""
    w, a, b = two(seed=seed, latency=0.01, jitter=0.4)
    w.dup = 0.7
    a.initiate(B, w.now)
    assert w.run(CONFIG.handshake_timeout, until=lambda: paired(a, A, b, B))
    w.run(3.0)
    assert len(w.ups(A)) == 1 and len(w.ups(B)) == 1
    for t in (a, b):
        no_stray_state(t)
        assert len(t.by_index) == 1 and t.handshakes_completed == 1
        assert not t.auth_failures
    # data both ways, each datagram duplicated and reordered: each payload delivered once
    payloads = {(A, B): [], (B, A): []}
    for i in range(60):
        for src, dst in payloads:
            p = b"%s-%d" % (src[0].encode(), i)
            payloads[(src, dst)].append(p)
            w.send(src, dst, p)
        w.run(0.01)
    w.drain()
    for (src, dst), sent in payloads.items():
        got = [p for s, p in w.received[dst] if s == src]
        assert sorted(got) == sorted(sent)
    assert a.drops["replay"] + b.drops["replay"] > 0


def test_data_overtaking_the_finish_is_dropped_not_delivered_late() -> None:
    """The initiator may send as soon as it has read the response; a data datagram that
    overtakes the finish cannot be opened yet (its keys need the finish) and is dropped,
    counted, and never surfaces later: delivered at most once, never twice."""
    w, a, b = two()
    a.initiate(B, w.now)
    ((_, init),) = a.take_outbox()
    b.receive(init, A, w.now)
    ((_, response),) = b.take_outbox()
    a.receive(response, B, w.now)
    ((_, finish),) = a.take_outbox()
    early = a.seal(B, b"hello-early")
    assert early is not None
    assert b.receive(early, A, w.now) is None
    assert b.drops["unknown-session"] == 1
    assert b.receive(finish, A, w.now) is None
    ((_, confirm),) = b.take_outbox()
    # the early datagram again, now that b has the keys: it opens, exactly once
    assert b.receive(early, A, w.now) == b"hello-early"
    assert b.receive(early, A, w.now) is None and b.drops["replay"] == 1
    # b's data overtakes b's confirmation: it confirms a's session all the same
    sealed = b.seal(A, b"from-b")
    assert a.receive(sealed, B, w.now) == b"from-b"
    assert a.session(B).confirmed and not a.session(B).finish
    assert a.receive(confirm, B, w.now) is None  # the late confirmation is a keepalive
    assert not a.drops and paired(a, A, b, B)


def test_finish_and_retransmitted_init_out_of_order() -> None:
    """A retransmitted init arriving after the finish (and a response arriving after the
    initiator gave it up for a retransmission) changes nothing."""
    w, a, b = two()
    a.initiate(B, w.now)
    ((_, init),) = a.take_outbox()
    b.receive(init, A, w.now)
    ((_, response),) = b.take_outbox()
    w.now = 0.6
    a.handle_timer(w.now)
    ((_, init2),) = a.take_outbox()
    assert init2 == init
    a.receive(response, B, w.now)
    ((_, finish),) = a.take_outbox()
    b.receive(finish, A, w.now)
    b.take_outbox()
    # the retransmitted init arrives after the finish: a copy of the init of b's session,
    # so no new half-open and no answer
    b.receive(init2, A, w.now)
    assert not b.take_outbox() and not b.half_open and b.drops["duplicate"] == 1
    # and the response a gave up on arrives again: ignored
    assert a.receive(response, B, w.now) is None and a.drops["unknown-index"] == 1
    assert len(a.take_events()) == 1 and len(b.take_events()) == 1  # one SessionUp each
    assert b.session(A) is not None and talks(w, A, B) and talks(w, B, A)
    assert len(a.by_index) == 1 and len(b.by_index) == 1 and b.handshakes_completed == 1


# ----------------------------------------------------------------------------- 2. both sides
# initiate at once


@pytest.mark.parametrize("seed", range(16))
@pytest.mark.parametrize("a_key,b_key", [(1, 2), (2, 1)])
def test_simultaneous_open_agrees_on_one_session(seed: int, a_key: int, b_key: int) -> None:
    w = Wire(seed, latency=0.01, jitter=0.2 if seed % 2 else 0.0)
    if seed >= 8:
        w.loss = 0.2
    a = w.add(A, key(a_key))
    b = w.add(B, key(b_key))
    a.initiate(B, w.now)
    b.initiate(A, w.now)
    assert w.run(
        CONFIG.handshake_timeout,
        until=lambda: paired(a, A, b, B) and not (a.initiating or b.initiating),
    )
    w.run(1.0)
    assert paired(a, A, b, B)
    assert talks(w, A, B) and talks(w, B, A)
    winner_a, winner_b = a.session(B), b.session(A)
    # the winner was initiated by the side with the smaller node id
    smaller = A if key(a_key).public_key < key(b_key).public_key else B
    assert winner_a.initiator == (smaller == A) and winner_b.initiator == (smaller == B)
    # every other session is retired, and no data is sent on it from then on (a retired
    # responder session may still confirm a repeated finish: an empty keepalive)
    for addr, t, winner in ((A, a, winner_a), (B, b, winner_b)):
        for loser in t.by_index.values():
            if loser is winner:
                continue
            assert loser.retired_at is not None
            assert not [
                s
                for s in w.sent
                if s.src == addr
                and kind(s.data) == KIND_DATA
                and s.time > loser.retired_at
                and len(s.data) > SESSION_OVERHEAD
                and DATA_HEADER.unpack_from(s.data)[1] == loser.their_index
            ]
    switch = w.now
    w.loss = 0.0
    for i in range(5):
        w.send(A, B, b"a%d" % i)
        w.send(B, A, b"b%d" % i)
    w.drain()
    later = [s for s in w.sent if s.time >= switch and kind(s.data) == KIND_DATA]
    assert later
    for s in later:
        _, index, _ = DATA_HEADER.unpack_from(s.data)
        receiver = w.tables[s.dst]
        assert index == receiver.session(s.src).our_index
    # the losers expire after handshake_timeout; the winners stay
    w.run(CONFIG.handshake_timeout + 1.0)
    assert a.by_index == {winner_a.our_index: winner_a}
    assert b.by_index == {winner_b.our_index: winner_b}
    assert talks(w, A, B) and talks(w, B, A)
    assert not a.auth_failures and not b.auth_failures


# ----------------------------------------------------------------------------- 3. rekeying


def stream_both_ways(
    w: Wire, duration: float, per_tick: int = 3, gap: float = 0.02
) -> dict[tuple[Address, Address], dict[bytes, int]]:
    """Send numbered payloads both ways for `duration`; returns sent payloads by direction,
    each mapped to the number of copies the channel delivered (0 = dropped)."""
    sent: dict[tuple[Address, Address], dict[bytes, int]] = {(A, B): {}, (B, A): {}}
    n = 0
    end = w.now + duration
    while w.now < end:
        for (src, dst), log in sent.items():
            for _ in range(per_tick):
                payload = b"%s>%d" % (src[0].encode(), n)
                n += 1
                w.send(src, dst, payload)
                log[payload] = w.sent[-1].copies
        w.run(gap)
    return sent


def check_delivery(w: Wire, sent: dict[tuple[Address, Address], dict[bytes, int]]) -> None:
    for (src, dst), log in sent.items():
        got = Counter(p for s, p in w.received[dst] if s == src)
        assert set(got.values()) <= {1}, "a payload was delivered twice"
        lost = {p for p, copies in log.items() if copies and p not in got}
        assert not lost, f"{len(lost)} payloads {src}->{dst} lost beyond the channel's drops"
        assert set(got) <= set(log)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("a_key,b_key", [(1, 2), (2, 1)])
def test_rekey_under_load_by_messages(seed: int, a_key: int, b_key: int) -> None:
    cfg = replace(CONFIG, rekey_after_messages=50)
    w, a, b = paired_up(seed, cfg, (a_key, b_key), within=2.0, latency=0.01, jitter=0.03)
    w.loss, w.dup = 0.03, 0.03
    sent = stream_both_ways(w, 8.0)
    w.loss = w.dup = 0.0
    w.drain()
    check_delivery(w, sent)
    assert a.rekeys[B] >= 5 and b.rekeys[A] >= 5
    assert a.drops["replay"] + b.drops["replay"] > 0  # the duplicates, refused
    assert not a.auth_failures and not b.auth_failures
    # quiet for longer than retired sessions live, then both agree and still talk
    w.run(3 * cfg.handshake_timeout)
    assert paired(a, A, b, B)
    assert talks(w, A, B) and talks(w, B, A)
    # handshakes are not wasted: each one ends as a rekey on both sides
    assert a.handshakes_completed <= a.rekeys[B] + b.rekeys[A] + 2


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("a_key,b_key", [(1, 2), (2, 1)])
def test_rekey_by_messages_one_way(seed: int, a_key: int, b_key: int) -> None:
    """Only the responder sends: it is the one that must start every rekey. With the larger
    node id it waits until the session is handshake_timeout old (else its peer would take the
    rekey for a simultaneous open and keep the old session): a few rekeys, no wasted ones."""
    cfg = replace(CONFIG, rekey_after_messages=50, handshake_timeout=1.5)
    w, a, b = paired_up(seed, cfg, (a_key, b_key), within=2.0, latency=0.01, jitter=0.03)
    w.loss = 0.03
    sent: dict[tuple[Address, Address], dict[bytes, int]] = {(B, A): {}, (A, B): {}}
    for i in range(600):
        payload = b"b>%d" % i
        w.send(B, A, payload)
        sent[(B, A)][payload] = w.sent[-1].copies
        w.run(0.01)
    w.loss = 0.0
    w.drain()
    check_delivery(w, sent)
    w.run(3 * cfg.handshake_timeout)  # let a last rekey settle (its confirmation may be lost)
    b_first = key(b_key).public_key < key(a_key).public_key
    assert b.rekeys[A] >= (5 if b_first else 3) and a.rekeys[B] == b.rekeys[A]
    assert b.handshakes_completed == b.rekeys[A] + 1  # every handshake became the session
    assert a.handshakes_completed == a.rekeys[B] + 1
    assert paired(a, A, b, B) and talks(w, A, B) and talks(w, B, A)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("a_key,b_key", [(1, 2), (2, 1)])
def test_concurrent_rekeys_agree(seed: int, a_key: int, b_key: int) -> None:
    """Steady traffic both ways: both ends reach rekey_after_messages together, long after
    the session was made, and both start a rekey. They must end on the same session."""
    cfg = replace(CONFIG, rekey_after_messages=50, handshake_timeout=1.0)
    w, a, b = paired_up(seed, cfg, (a_key, b_key), within=2.0, latency=0.01, jitter=0.03)
    sent = stream_both_ways(w, 10.0, per_tick=1, gap=0.04)
    w.drain()
    check_delivery(w, sent)
    assert a.rekeys[B] >= 3 and b.rekeys[A] >= 3
    assert paired(a, A, b, B)
    w.run(3 * cfg.handshake_timeout)  # every retired session expires
    assert paired(a, A, b, B) and talks(w, A, B) and talks(w, B, A)


def test_rekey_by_time() -> None:
    cfg = replace(CONFIG, rekey_after_seconds=3.0, handshake_timeout=2.0)
    w, a, b = paired_up(3, cfg, within=2.0, latency=0.01, jitter=0.02)
    sent = stream_both_ways(w, 20.0, per_tick=1, gap=0.1)
    w.drain()
    check_delivery(w, sent)
    assert a.rekeys[B] >= 5 and b.rekeys[A] >= 5
    assert max(s.created for s in a.by_index.values()) >= 15.0
    assert paired(a, A, b, B) and talks(w, A, B) and talks(w, B, A)


def test_data_in_flight_across_a_rekey_still_opens() -> None:
    cfg = replace(CONFIG, rekey_after_seconds=5.0)
    w, a, b = established(config=cfg)
    old_b = b.session(A)
    in_flight = [a.seal(B, b"old-%d" % i) for i in range(5)]
    w.run(6.0, until=lambda: a.rekeys[B] >= 1 and b.rekeys[A] >= 1)
    assert b.session(A) is not old_b and old_b.retired_at is not None
    for i, d in enumerate(in_flight):
        assert b.receive(d, A, w.now) == b"old-%d" % i
    # once the previous session has expired, its datagrams are dropped
    late = in_flight[0]
    w.run(cfg.handshake_timeout + 1.0)
    assert old_b.our_index not in b.by_index
    before = b.drops["unknown-session"]
    assert b.receive(late, A, w.now) is None
    assert b.drops["unknown-session"] == before + 1


# ----------------------------------------------------------------------------- 4. replay


def test_every_replayed_data_datagram_is_dropped() -> None:
    w, _, b = established()
    datagrams = [w.send(A, B, b"m%d" % i) for i in range(50)]
    w.drain()
    assert [p for _, p in w.received[B]] == [b"m%d" % i for i in range(50)]
    rng = random.Random(5)
    replays = datagrams * 3
    rng.shuffle(replays)
    for d in replays:
        assert b.receive(d, A, w.now) is None
    assert b.drops["replay"] == len(replays)
    assert len(w.received[B]) == 50
    assert talks(w, A, B)


def test_replay_from_before_a_rekey() -> None:
    cfg = replace(CONFIG, rekey_after_messages=20)
    w, a, b = established(config=cfg)
    old = [w.send(A, B, b"old%d" % i) for i in range(25)]
    w.drain()
    w.run(2.0, until=lambda: b.rekeys[A] >= 1 and a.rekeys[B] >= 1)
    assert b.rekeys[A] >= 1
    # while the old session is retired but alive: replay
    before = b.drops["replay"]
    for d in old:
        assert b.receive(d, A, w.now) is None
    assert b.drops["replay"] == before + len(old)
    # after it expired: unknown session
    w.run(cfg.handshake_timeout + 1.0)
    before = b.drops["unknown-session"]
    for d in old:
        assert b.receive(d, A, w.now) is None
    assert b.drops["unknown-session"] == before + len(old)
    assert sum(1 for _, p in w.received[B] if p.startswith(b"old")) == 25


# ----------------------------------------------------------------------------- 5. spoofing


def forgeries(a: SessionTable, b: SessionTable, rng: random.Random) -> list[tuple[str, bytes]]:
    """Datagrams of every kind that b did not send, for a's view of b's address."""
    sa = a.session(B)
    r32 = lambda: rng.getrandbits(32)  # noqa: E731
    good = b.seal(A, b"genuine")  # only used to forge from: never delivered itself
    b.session(A).send_counter -= 1  # (so b's counter is untouched)
    tampered = bytearray(good)
    tampered[-1] ^= 1
    out = [
        ("empty", b""),
        ("unknown-kind", bytes([77]) + rng.randbytes(40)),
        ("random", rng.randbytes(100)),
        ("data-wrong-tag", bytes(tampered)),
        ("data-random-body", DATA_HEADER.pack(KIND_DATA, sa.our_index, 10**6) + rng.randbytes(40)),
        ("data-short", DATA_HEADER.pack(KIND_DATA, sa.our_index, 0) + rng.randbytes(3)),
        ("data-unknown-index", DATA_HEADER.pack(KIND_DATA, r32(), 1) + rng.randbytes(40)),
        (
            "data-max-counter",
            DATA_HEADER.pack(KIND_DATA, sa.our_index, 2**64 - 1) + rng.randbytes(20),
        ),
        ("init-short", bytes([KIND_INIT]) + rng.randbytes(100)),
        (
            "init-wrong-magic",
            INIT_HEADER.pack(KIND_INIT, b"XXXX", GENESIS, r32(), bytes(16))
            + bytes(INIT_SIZE - INIT_HEADER.size),
        ),
        (
            "init-wrong-genesis",
            INIT_HEADER.pack(KIND_INIT, MAGIC, bytes(32), r32(), bytes(16))
            + bytes(INIT_SIZE - INIT_HEADER.size),
        ),
        (
            "init-bad-point",
            INIT_HEADER.pack(KIND_INIT, MAGIC, GENESIS, r32(), bytes(16))
            + bytes(INIT_SIZE - INIT_HEADER.size),
        ),
        (
            "init",
            INIT_HEADER.pack(KIND_INIT, MAGIC, GENESIS, r32(), bytes(16))
            + os.urandom(32)
            + bytes(INIT_SIZE - INIT_HEADER.size - 32),
        ),
        (
            "response-wrong-index",
            RESPONSE_HEADER.pack(KIND_RESPONSE, r32(), r32())
            + rng.randbytes(RESPONSE_SIZE - RESPONSE_HEADER.size),
        ),
        (
            "response-session-index",
            RESPONSE_HEADER.pack(KIND_RESPONSE, sa.their_index, sa.our_index)
            + rng.randbytes(RESPONSE_SIZE - RESPONSE_HEADER.size),
        ),
        (
            "finish-wrong-index",
            FINISH_HEADER.pack(KIND_FINISH, r32())
            + rng.randbytes(FINISH_SIZE - FINISH_HEADER.size),
        ),
        (
            "finish-session-index",
            FINISH_HEADER.pack(KIND_FINISH, sa.our_index)
            + rng.randbytes(FINISH_SIZE - FINISH_HEADER.size),
        ),
        ("cookie-wrong-index", COOKIE_REPLY.pack(KIND_COOKIE, r32(), rng.randbytes(16))),
        ("cookie-session-index", COOKIE_REPLY.pack(KIND_COOKIE, sa.our_index, rng.randbytes(16))),
        ("refusal-wrong-index", REFUSAL.pack(KIND_REFUSAL, r32(), 1)),
        ("refusal-session-index", REFUSAL.pack(KIND_REFUSAL, sa.our_index, 2)),
        ("refusal-bad-code", REFUSAL.pack(KIND_REFUSAL, sa.our_index, 99)),
    ]
    return out


def assert_untouched(
    w: Wire, a: SessionTable, b: SessionTable, before_session: object, before_rekeys: int
) -> None:
    assert a.session(B) is before_session
    assert a.rekeys[B] == before_rekeys
    assert paired(a, A, b, B)
    assert talks(w, A, B) and talks(w, B, A)


@pytest.mark.parametrize("a_initiated", [True, False])
def test_forged_datagrams_from_an_established_peer(a_initiated: bool) -> None:
    """Forgeries of every kind from b's address reach a, the session's initiator (or its
    responder): dropped and counted, never answered with more bytes, no event."""
    w = Wire(11)
    a = w.add(A, key(1))
    b = w.add(B, key(2))
    (a.initiate(B, w.now) if a_initiated else b.initiate(A, w.now))
    assert w.run(5.0, until=lambda: paired(a, A, b, B))
    w.drain()
    w.events[A].clear()
    session, rekeys = a.session(B), a.rekeys[B]
    rng = random.Random(3)
    for name, data in forgeries(a, b, rng):
        drops = sum(a.drops.values())
        assert a.receive(data, B, w.now) is None, name
        assert not a.take_events(), name
        replies = a.take_outbox()
        assert sum(len(d) for _, d in replies) <= len(data), name
        assert all(addr == B for addr, _ in replies), name
        if name != "init":  # a well-formed init is a new handshake from b's address
            assert sum(a.drops.values()) == drops + 1, name
        assert_untouched(w, a, b, session, rekeys)
    assert a.auth_failures[B[0]] >= 2  # the data datagrams with b's index and a bad tag
    # time passes: the forged half-open expires, the session lives on
    w.run(CONFIG.half_open_timeout + 1.0)
    assert not a.half_open
    assert_untouched(w, a, b, session, rekeys)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.one_of(
        st.binary(max_size=400),
        st.tuples(st.sampled_from(range(0, 8)), st.binary(max_size=300)).map(
            lambda t: bytes([t[0]]) + t[1]
        ),
        st.tuples(
            st.sampled_from(
                [INIT_SIZE, RESPONSE_SIZE, FINISH_SIZE, COOKIE_REPLY.size, REFUSAL.size, 29, 45]
            ),
            st.integers(1, 6),
            st.randoms(),
        ).map(lambda t: bytes([t[1]]) + t[2].randbytes(t[0] - 1)),
    )
)
def test_fuzzed_datagrams_from_an_established_peer(data: bytes) -> None:
    w, a, _ = established(seed=21)
    session, rekeys = a.session(B), a.rekeys[B]
    for _ in range(2):  # twice: a repeat must not do anything the first did not
        assert a.receive(data, B, w.now) is None
        replies = a.take_outbox()
        assert sum(len(d) for _, d in replies) <= len(data)
        assert not a.take_events()
        assert a.session(B) is session and a.rekeys[B] == rekeys
    assert talks(w, A, B) and talks(w, B, A)
    assert len(a.half_open) <= 1


# ----------------------------------------------------------------------------- 6. cookies

COOKIE_CFG = replace(CONFIG, cookie_threshold=4, max_half_open=12, max_half_open_per_host=2)


def spoofed_init(rng: random.Random, cookie: bytes = bytes(COOKIE_SIZE)) -> bytes:
    head = INIT_HEADER.pack(KIND_INIT, MAGIC, GENESIS, rng.getrandbits(32), cookie)
    # a valid X25519 public key: the responder does all its work for it
    e = key(rng.randrange(3, 250)).public_key  # any 32 bytes that are not a low-order point
    return head + e + bytes(INIT_SIZE - len(head) - 32)


def random_addr(rng: random.Random) -> Address:
    return (f"198.51.{rng.randrange(256)}.{rng.randrange(1, 255)}", rng.randrange(1024, 65535))


def test_cookie_under_load() -> None:
    w = Wire(1)
    b = w.add(B, key(2), COOKIE_CFG)
    honest = w.add(C, key(3), COOKIE_CFG)
    rng = random.Random(2)
    for _ in range(COOKIE_CFG.cookie_threshold):
        init = spoofed_init(rng)
        b.receive(init, random_addr(rng), w.now)
        b.take_outbox()
    assert len(b.half_open) == COOKIE_CFG.cookie_threshold
    # the next init without a cookie: a cookie reply, smaller than the init, and no state
    src = random_addr(rng)
    init = spoofed_init(rng)
    b.receive(init, src, w.now)
    ((dst, reply),) = b.take_outbox()
    assert dst == src and kind(reply) == KIND_COOKIE and len(reply) <= len(init)
    assert len(b.half_open) == COOKIE_CFG.cookie_threshold and b.cookie_replies == 1
    # the cookie is bound to the address: replayed from elsewhere it is no good
    cookie = COOKIE_REPLY.unpack(reply)[2]
    b.receive(spoofed_init(rng, cookie), random_addr(rng), w.now)
    assert kind(b.take_outbox()[0][1]) == KIND_COOKIE
    assert len(b.half_open) == COOKIE_CFG.cookie_threshold
    # an honest initiator echoes the cookie and completes
    honest.initiate(B, w.now)
    assert w.run(3.0, until=lambda: paired(honest, C, b, B))
    assert b.cookie_replies == 3
    inits = w.sent_kinds(C, KIND_INIT)
    assert len(inits) == 2 and INIT_HEADER.unpack_from(inits[1].data)[4] != bytes(COOKIE_SIZE)


def test_half_open_caps_with_cookie_echoing_attacker() -> None:
    """An attacker that can receive at its addresses echoes cookies: still capped, in total
    and per host."""
    w = Wire(1)
    b = w.add(B, key(2), COOKIE_CFG)
    rng = random.Random(4)
    hosts = [f"203.0.113.{i}" for i in range(1, 9)]

    def check() -> None:
        assert len(b.half_open) <= COOKIE_CFG.max_half_open
        per_host = Counter(h.addr[0] for h in b.half_open.values())
        assert max(per_host.values(), default=0) <= COOKIE_CFG.max_half_open_per_host

    for i in range(200):
        src = (rng.choice(hosts), 2000 + i)
        init = spoofed_init(rng)
        b.receive(init, src, w.now)
        check()
        for dst, reply in b.take_outbox():
            assert dst == src and len(reply) <= len(init)
            if kind(reply) == KIND_COOKIE:
                cookie = COOKIE_REPLY.unpack(reply)[2]
                init = (
                    INIT_HEADER.pack(KIND_INIT, MAGIC, GENESIS, 1, cookie)
                    + init[INIT_HEADER.size :]
                )
                b.receive(init, src, w.now)
                check()
                assert all(len(r) <= len(init) for _, r in b.take_outbox())
    assert len(b.half_open) == min(
        COOKIE_CFG.max_half_open, len(hosts) * COOKIE_CFG.max_half_open_per_host
    )
    # Full of proven handshakes: newcomers evict at random rather than being kept out.
    assert b.drops["handshake-evicted"] > 0


def test_forged_init_flood_does_not_stop_an_honest_handshake() -> None:
    cfg = replace(CONFIG, cookie_threshold=8, max_half_open=64, max_half_open_per_host=4)
    w = Wire(9)
    b = w.add(B, key(2), cfg)
    honest = w.add(C, key(3), cfg)
    rng = random.Random(10)
    flood_in = flood_out = 0
    # 1,000 forged inits from random sources at 1,000 per second of virtual time; the honest
    # initiator starts a tenth of a second in, the flood still going
    start = w.now
    for i in range(1000):
        if i == 100:
            honest.initiate(B, w.now)
            honest_start = w.now
        src = random_addr(rng)
        init = spoofed_init(rng)
        flood_in += len(init)
        # straight into b: what b answers goes to the forged source, never to the wire
        b.receive(init, src, w.now)
        for dst, reply in b.take_outbox():
            assert dst == src and len(reply) <= len(init)
            flood_out += len(reply)
        assert len(b.half_open) <= cfg.max_half_open
        w.run(0.001)
    assert w.now - start <= 1.0 + 1e-9
    assert w.run(2.0 - (w.now - honest_start), until=lambda: paired(honest, C, b, B))
    assert w.now - honest_start <= 2.0
    assert flood_out <= flood_in
    assert len(b.half_open) <= cfg.cookie_threshold
    assert b.cookie_replies >= 1000 - cfg.cookie_threshold
    assert talks(w, C, B) and talks(w, B, C)


# ----------------------------------------------------------------------------- 7. identity


class Mallory(SessionTable):
    """Claims to be `claimed` (bob) without holding bob's key."""

    def __init__(
        self, claimed: PrivateKey, own: PrivateKey, *, copy_bob_proof: bool, now: float
    ) -> None:
        super().__init__(MAGIC, GENESIS, own, CONFIG, now)
        if copy_bob_proof:
            # bob's genuine proof, for bob's static key: not for mallory's
            bob = SessionTable(MAGIC, GENESIS, claimed, CONFIG, now)
            self.identity_proof = bob.identity_proof
        else:
            forged = own.sign(STATIC_KEY_CONTEXT + self.static_public)
            self.identity_proof = claimed.public_key + forged


@pytest.mark.parametrize("copy_bob_proof", [False, True])
@pytest.mark.parametrize("mallory_initiates", [False, True])
def test_stolen_identity_is_rejected(copy_bob_proof: bool, mallory_initiates: bool) -> None:
    w = Wire(1)
    a = w.add(A, key(1))
    mallory = Mallory(key(2), key(66), copy_bob_proof=copy_bob_proof, now=w.now)
    w.tables[M] = mallory
    w.received[M] = []
    w.events[M] = []
    if mallory_initiates:
        mallory.initiate(A, w.now)
    else:
        a.initiate(M, w.now, expected_id=None)
    w.run(CONFIG.handshake_timeout + 1.0)
    assert not w.ups(A)
    assert a.session(M) is None and not a.by_index
    assert a.drops["auth-failed"] >= 1 and a.auth_failures[M[0]] >= 1
    assert a.handshakes_completed == 0


def test_pinned_identity_mismatch_is_refused() -> None:
    w = Wire(1)
    a = w.add(A, key(1))
    w.add(B, key(2))
    a.initiate(B, w.now, expected_id=key(3).public_key)
    w.run(CONFIG.handshake_timeout + 1.0)
    assert not w.ups(A) and not w.ups(B)
    assert [e.reason for e in w.refusals(A)] == ["node id is not the one pinned with --connect"]
    assert a.session(B) is None and not a.by_index and not a.initiating
    assert w.tables[B].session(A) is None and not w.tables[B].half_open
    # the right pin works
    a.initiate(B, w.now, expected_id=key(2).public_key)
    assert w.run(2.0, until=lambda: paired(a, A, w.tables[B], B))


# ----------------------------------------------------------------------------- 8. refusal


@pytest.mark.parametrize(
    "magic,genesis,reason",
    [
        (b"XXXX", GENESIS, REFUSAL_REASONS[1]),
        (MAGIC, hashlib.sha256(b"another genesis").digest(), REFUSAL_REASONS[2]),
    ],
)
def test_other_network_is_refused_on_both_sides(magic: bytes, genesis: bytes, reason: str) -> None:
    w = Wire(1)
    a = w.add(A, key(1))
    b = w.add(B, key(2), magic=magic, genesis=genesis)
    a.initiate(B, w.now)
    w.run(CONFIG.handshake_timeout + 1.0)
    assert [e.reason for e in w.refusals(A)] == [reason]
    assert [e.reason for e in w.refusals(B)] == [reason]
    assert not w.ups(A) and not w.ups(B)
    assert not a.initiating and not a.by_index and not b.by_index and not b.half_open
    refusals = w.sent_kinds(B, KIND_REFUSAL)
    assert len(refusals) == 1 and len(refusals[0].data) <= INIT_SIZE
    assert len(w.sent_kinds(A, KIND_INIT)) == 1  # the refusal ended the retransmissions


def test_other_networks_dialling_each_other_at_once() -> None:
    """Each side learns of the refusal from the answer to its own init: one event each."""
    w = Wire(1)
    a = w.add(A, key(1))
    b = w.add(B, key(2), magic=b"XXXX")
    a.initiate(B, w.now)
    b.initiate(A, w.now)
    w.run(CONFIG.handshake_timeout + 1.0)
    assert [e.reason for e in w.refusals(A)] == [REFUSAL_REASONS[1]]
    assert [e.reason for e in w.refusals(B)] == [REFUSAL_REASONS[1]]
    assert not a.initiating and not b.initiating and not a.half_open and not b.half_open
    assert all(len(s.data) <= INIT_SIZE for s in w.sent if kind(s.data) == KIND_REFUSAL)


# ----------------------------------------------------------------------------- 9. streams

SECRET = hashlib.sha256(b"stream secret").digest()
NONCE = bytes(range(16))
MAX_FRAME = 1 << 20


def stream_pair() -> tuple[StreamCipher, StreamCipher]:
    return (
        StreamCipher.for_dialler(SECRET, NONCE, MAX_FRAME),
        StreamCipher.for_listener(SECRET, NONCE, MAX_FRAME),
    )


def feed_chunked(
    cipher: StreamCipher, data: bytes, rng: random.Random, max_chunk: int
) -> list[bytes]:
    out: list[bytes] = []
    pos = 0
    while pos < len(data):
        n = rng.randint(1, max_chunk)
        out += cipher.feed(data[pos : pos + n])
        pos += n
    return out


@settings(max_examples=12, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    max_chunk=st.sampled_from([1, 3, 17, 64, 1000, 100_000]),
    frames=st.integers(2 * REKEY_FRAMES + 1, 3 * REKEY_FRAMES + 10),
)
def test_stream_round_trip_across_rekeys(seed: int, max_chunk: int, frames: int) -> None:
    rng = random.Random(seed)
    dialler, listener = stream_pair()
    envelopes = [rng.randbytes(rng.choice((0, 1, 5, 40))) for _ in range(frames)]
    wire = dialler.seal(b"") + b"".join(dialler.seal(e) for e in envelopes)
    if max_chunk == 1:
        wire, envelopes = wire[:5000], None  # byte by byte: only the first frames
    got = feed_chunked(listener, wire, rng, max_chunk)
    if envelopes is not None:
        assert got == [e for e in envelopes if e]
        assert listener.buffered == 0
    assert listener.authenticated
    back = [rng.randbytes(rng.randint(1, 300)) for _ in range(frames)]
    wire = b"".join(listener.seal(e) for e in back)
    assert feed_chunked(dialler, wire, rng, max(max_chunk, 7)) == back


def test_stream_key_is_replaced_every_rekey_frames() -> None:
    """Frame REKEY_FRAMES and later are not sealed under the stream's first key (a key
    learnt later does not open earlier frames, nor the first key later ones)."""
    first_key = stream_keys(SECRET, NONCE)[0]
    dialler, listener = stream_pair()
    frames = [dialler.seal(b"") for _ in range(2)] + [
        dialler.seal(b"f%d" % i) for i in range(2, REKEY_FRAMES + 2)
    ]

    def opens_with_first_key(n: int) -> bool:
        frame = frames[n]
        nonce = bytes(4) + n.to_bytes(8, "little")
        try:
            ChaCha20Poly1305(first_key).decrypt(nonce, frame[4:], frame[:4])
        except InvalidTag:
            return False
        return True

    assert opens_with_first_key(0) and opens_with_first_key(REKEY_FRAMES - 1)
    assert not opens_with_first_key(REKEY_FRAMES) and not opens_with_first_key(REKEY_FRAMES + 1)
    got = listener.feed(b"".join(frames))
    assert got == [b"f%d" % i for i in range(2, REKEY_FRAMES + 2)]


def test_preauth_oversize_frame_rejected_before_body() -> None:
    _, listener = stream_pair()
    with pytest.raises(ProtocolError) as err:
        listener.feed(LENGTH.pack(PREAUTH_MAX_FRAME + 1))  # the length alone, no body
    assert err.value.reason == OVERSIZE
    assert listener.buffered == 0
    with pytest.raises(ProtocolError):
        listener.feed(b"")  # failed for good
    # a 4 MiB claim, its body never sent
    _, listener = stream_pair()
    with pytest.raises(ProtocolError) as err:
        listener.feed(LENGTH.pack(4 << 20) + b"\x00" * 10)
    assert err.value.reason == OVERSIZE and listener.buffered == 0
    # a frame within the pre-auth limit is buffered until complete
    dialler, listener = stream_pair()
    first = dialler.seal(b"")
    assert listener.feed(first[:-1]) == [] and listener.buffered == len(first) - 1
    assert listener.feed(first[-1:]) == [] and listener.authenticated
    # once authenticated, larger frames are fine
    big = os.urandom(100_000)
    assert listener.feed(dialler.seal(big)) == [big]


def test_preauth_frame_must_be_the_empty_one() -> None:
    dialler, listener = stream_pair()
    with pytest.raises(ProtocolError) as err:
        listener.feed(dialler.seal(b"x" * 10))
    assert err.value.reason == OVERSIZE


@settings(max_examples=60, deadline=None)
@given(position=st.integers(0, 10_000), bit=st.integers(0, 7))
def test_flipped_bit_fails_and_stays_failed(position: int, bit: int) -> None:
    dialler, listener = stream_pair()
    frames = [dialler.seal(b"")] + [dialler.seal(os.urandom(50)) for _ in range(3)]
    listener.feed(frames[0])
    data = bytearray(b"".join(frames[1:]))
    position %= len(data)
    data[position] ^= 1 << bit
    in_length = (position - 0) % (4 + 16 + 50) < 4
    try:
        listener.feed(bytes(data))
    except ProtocolError as exc:
        assert exc.reason in ((OVERSIZE, AUTH_FAILED) if in_length else (AUTH_FAILED,))
        with pytest.raises(ProtocolError) as again:
            listener.feed(frames[1])
        assert again.value.reason == exc.reason
        assert listener.buffered == 0
    else:
        # only a length made larger can leave the stream waiting for more bytes
        assert in_length and listener.buffered > 0


def test_flipped_body_bit_is_auth_failed() -> None:
    dialler, listener = stream_pair()
    listener.feed(dialler.seal(b""))
    frame = bytearray(dialler.seal(b"payload"))
    frame[6] ^= 0x10
    with pytest.raises(ProtocolError) as err:
        listener.feed(bytes(frame))
    assert err.value.reason == AUTH_FAILED
    genuine = StreamCipher.for_dialler(SECRET, NONCE, MAX_FRAME)
    genuine.seal(b"")
    with pytest.raises(ProtocolError) as err:
        listener.feed(genuine.seal(b"payload"))  # the genuine frame: too late
    assert err.value.reason == AUTH_FAILED


def test_preamble_reader() -> None:
    pre = preamble(MAGIC, 0xDEADBEEF, NONCE)
    assert len(pre) == PREAMBLE.size
    reader = PreambleReader(MAGIC)
    for byte in pre[:-1]:
        assert reader.feed(bytes([byte])) is None
    assert reader.feed(pre[-1:] + b"rest") == ((0xDEADBEEF, NONCE), b"rest")
    with pytest.raises(ProtocolError) as err:
        PreambleReader(MAGIC).feed(preamble(b"XXXX", 1, NONCE))
    assert err.value.reason == BAD_MAGIC


@settings(max_examples=200, deadline=None)
@given(
    chunks=st.lists(st.binary(max_size=200), max_size=8),
    authenticated=st.booleans(),
    valid_first=st.booleans(),
)
def test_fuzzed_stream_bytes_only_raise_protocol_error(
    chunks: list[bytes], authenticated: bool, valid_first: bool
) -> None:
    dialler, listener = stream_pair()
    cipher = dialler if authenticated else listener
    if valid_first and not authenticated:
        listener.feed(dialler.seal(b""))
    try:
        for chunk in chunks:
            cipher.feed(chunk)
    except ProtocolError as exc:
        assert exc.reason in (OVERSIZE, AUTH_FAILED)
        assert cipher.buffered == 0
    if not cipher.authenticated:  # a stranger never gets more than one small frame buffered
        assert cipher.buffered <= LENGTH.size + PREAUTH_MAX_FRAME
    try:
        PreambleReader(MAGIC).feed(b"".join(chunks))
    except ProtocolError as exc:
        assert exc.reason == BAD_MAGIC


def test_struct_sizes_match_the_docstring() -> None:
    assert (INIT_SIZE, RESPONSE_SIZE, FINISH_SIZE, COOKIE_REPLY.size, REFUSAL.size) == (
        256,
        201,
        165,
        21,
        6,
    )
    assert struct.calcsize(">BIQ") == DATA_HEADER.size == 13


# ----------------------------------------------------------------------------- review findings


def test_a_spoofer_cannot_lock_one_host_out_of_handshakes() -> None:
    """Spoofed inits from the victim's address fill its per-host share without cookies; the
    victim, who receives at its address, echoes a cookie and evicts them."""
    w = Wire(21)
    b = w.add(B, key(2), COOKIE_CFG)
    victim = w.add(A, key(1), COOKIE_CFG)
    rng = random.Random(21)

    def spoof() -> None:
        for port in range(4):
            b.receive(spoofed_init(rng), (A[0], 40_000 + port), w.now)
        b.take_outbox()  # the replies go to the victim's host, which ignores them

    spoof()
    victim.initiate(B, w.now)
    deadline = w.now + 5
    while w.now < deadline and not paired(victim, A, b, B):
        spoof()  # every 10 ms, for as long as it takes
        w.run(0.01)
    assert paired(victim, A, b, B), dict(b.drops)


def test_an_attacker_holding_every_half_open_slot_cannot_keep_a_newcomer_out() -> None:
    cfg = replace(CONFIG, cookie_threshold=4, max_half_open=16, max_half_open_per_host=2)
    w = Wire(22)
    b = w.add(B, key(2), cfg)
    honest = w.add(C, key(3), cfg)
    rng = random.Random(22)
    hosts = [(f"198.51.100.{i}", 9000) for i in range(1, 9)]  # 8 hosts x 2 = all 16 slots

    def refill() -> None:  # an attacker that receives at its addresses and echoes cookies
        for src in hosts:
            for _ in range(2):
                b.receive(spoofed_init(rng), src, w.now)
                for _, reply in b.take_outbox():
                    if kind(reply) == KIND_COOKIE:
                        cookie = COOKIE_REPLY.unpack(reply)[2]
                        b.receive(spoofed_init(rng, cookie), src, w.now)
                        b.take_outbox()

    refill()
    assert len(b.half_open) == 16
    honest.initiate(B, w.now)
    deadline = w.now + 5
    while w.now < deadline and not paired(honest, C, b, B):
        refill()
        w.run(0.05)
    assert paired(honest, C, b, B)


def test_one_address_cannot_make_us_start_handshakes_or_keep_sessions_without_limit() -> None:
    w, a, b = two(23)
    w.run(1, until=lambda: paired(a, A, b, B))
    cfg = CONFIG
    start, completed = w.now, b.handshakes_completed
    for _ in range(60):  # a peer that completes handshake after handshake, as fast as it can
        a.close(B)
        a.initiate(B, w.now)
        w.run(0.3, until=lambda: a.has_session(B) and a.session(B).confirmed)  # type: ignore[union-attr]
    sessions_for_a = [s for s in b.by_index.values() if s.addr == A]
    # The current one, at most MAX_RETIRED_PER_ADDRESS superseded ones, maybe one pending.
    assert len(sessions_for_a) <= 1 + 2 + 1
    assert b.drops["handshake-rate"] > 0
    allowed = cfg.handshake_burst_per_host + cfg.handshake_rate_per_host * (w.now - start)
    assert b.handshakes_completed - completed <= allowed + 1


def test_spoofed_wrong_network_inits_cannot_flood_the_refusal_log() -> None:
    w = Wire(24)
    b = w.add(B, key(2))
    rng = random.Random(24)
    for i in range(2000):  # rotating source ports and hosts, 2000 a second
        head = INIT_HEADER.pack(KIND_INIT, b"EVIL", GENESIS, rng.getrandbits(32), bytes(16))
        src = (f"192.0.2.{i % 50}", 10_000 + i)
        b.receive(head + bytes(INIT_SIZE - len(head)), src, w.now)
        w.now += 0.0005
    refusals = [e for e in b.take_events() if isinstance(e, HandshakeRefused)]
    assert 0 < len(refusals) <= 10  # one per host per minute and at most 5 a second overall
    assert b.drops["wrong-network"] == 2000


def test_forged_cookie_replies_are_not_answered_one_init_each() -> None:
    w = Wire(25)
    a = w.add(A, key(1))
    a.initiate(B, w.now)  # nobody at B: the init goes unanswered
    index = INIT_HEADER.unpack_from(a.take_outbox()[0][1])[3]
    sent_bytes = received_bytes = 0
    for n in range(1000):  # an on-path attacker who saw the index: 1000 cookie replies in 1 s
        reply = COOKIE_REPLY.pack(KIND_COOKIE, index, n.to_bytes(16, "big"))
        received_bytes += len(reply)
        a.receive(reply, B, w.now)
        a.handle_timer(w.now)
        sent_bytes += sum(len(d) for _, d in a.take_outbox())
        w.now += 0.001
    # One init per retry interval, not one per reply.
    assert sent_bytes <= INIT_SIZE * (1 / CONFIG.hello_retry_interval + 1)
    assert sent_bytes < received_bytes


def test_a_small_order_identity_proves_nothing() -> None:
    """The Ed25519 identity point verifies any signature: a node id of small order is
    refused, whatever it signs."""
    w, a, b = two(26)
    identity_point = bytes([1]) + bytes(31)
    a.identity_proof = identity_point + bytes([1]) + bytes(31) + bytes(32)  # R = identity, S = 0
    a.initiate(B, w.now)
    w.run(3)
    assert not w.ups(B) and not b.has_session(A)
    assert b.drops["auth-failed"] >= 1


def test_no_session_outlives_reject_after_seconds_even_if_rekeys_fail() -> None:
    cfg = replace(CONFIG, rekey_after_seconds=1_000.0, reject_after_seconds=30.0)
    w, a, b = two(27, cfg)
    w.run(1, until=lambda: paired(a, A, b, B))
    w.run(31)
    assert not a.has_session(B) and not b.has_session(A)
