"""Resource bounds (issue 10): every table a peer can grow has a named limit in `P2PConfig`.

Each test drives a peer past one bound over the in-memory network (virtual time, seeded), checks
the structure stays at the bound and the named penalty is applied, and that honest peers are still
served.
"""

from __future__ import annotations

import random

import pytest

import p2p.protocol as protocol
from p2p.config import Address
from p2p.memory import MemoryNetwork, MemoryNode
from p2p.messages import Ping
from p2p.peer import Peer
from p2p.protocol import PeerDisconnected, PeerPenalised
from tests.p2p_helpers import (
    PORT,
    LogRecorder,
    Traffic,
    config,
    envelope,
    established,
    inject,
    key_of,
    link,
    network,
    peer_of,
    run_until,
)


def node_at(net: MemoryNetwork, name: str, addr: Address) -> MemoryNode:
    """A node at an address of our choosing (MemoryNetwork gives each node its own host)."""
    node = MemoryNode(name, addr, net.params, net, config(), random.Random(net.rng.random()))
    net.nodes[addr] = node
    return node


def host_number(i: int) -> str:
    return f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"


# ====================================================================== bans and scores per host


def test_discouragement_is_per_host_and_survives_a_new_source_port() -> None:
    net, (a, b, c) = network(3, seed=101)
    twin = node_at(net, "twin", (b.addr[0], PORT + 1))  # b's host, another port
    for node in (b, c, twin):
        link(net, a, node)

    for _ in range(10):  # 10 x malformed = 100: the threshold
        inject(net, a, b"\xc1", b.addr)

    # Every peer of that host goes, not just the one that misbehaved...
    assert b.addr not in a.p2p.by_addr and twin.addr not in a.p2p.by_addr
    assert set(a.p2p.book.list_banned(net.now)) == {key_of(b)}
    assert a.p2p.book.score(twin.addr) == a.p2p.book.score(b.addr) >= 100
    # ...and coming back from a new source port does not help: nobody there is answered.
    net.run(12)  # both keep redialling
    assert not established(a, b) and not established(a, twin)
    assert a.p2p.book.is_banned((b.addr[0], 40_000), net.now)
    # Another host is unaffected.
    assert established(a, c) and a.p2p.book.score(c.addr) == 0


def test_penalty_tables_stay_bounded_over_ten_thousand_hosts() -> None:
    limit = 500
    cfg = config(max_penalty_records=limit, max_discouraged=limit, ban_seconds=600)
    net, (a,) = network(1, configs={0: cfg})
    book = a.p2p.book
    for i in range(10_000):
        addr = (host_number(i), PORT)
        a.p2p._penalise(addr, "malformed", net.now)
        a.p2p._penalise(addr, "bad-handshake", net.now)  # 110: discouraged
        net.now += 0.01
    assert len(book.scores) == len(book.penalties) == limit
    assert len(book.discouraged) == limit
    # The most recent are the ones remembered.
    assert book.score((host_number(9_999), 1)) == 110
    assert book.is_banned((host_number(9_999), 1), net.now)
    assert not book.is_banned((host_number(0), PORT), net.now)

    # Discouragement ends after ban_seconds and takes the score with it.
    net.now += 601
    assert book.list_banned(net.now) == {}
    assert book.scores == {} and book.penalties == {}


def test_scores_are_dropped_some_time_after_the_last_penalty() -> None:
    cfg = config(penalty_expiry_seconds=100)
    net, (a, b) = network(2, seed=102, configs={0: cfg})
    link(net, a, b)
    inject(net, a, b"\xc1", b.addr)
    assert a.p2p.book.score(b.addr) == 10
    net.run(50)
    inject(net, a, b"\xc1", b.addr)
    assert a.p2p.book.score(b.addr) == 20  # still within 100 s of the last one
    net.run(101)
    a.p2p._penalise(("10.0.0.1", 1), "malformed", net.now)  # any penalty tidies up
    assert a.p2p.book.score(b.addr) == 0 and a.p2p.book.recent_penalties(b.addr) == []
    assert established(a, b)
    assert not [e for e in a.events if isinstance(e, PeerDisconnected) and e.addr == b.addr]
    assert all(e.addr != b.addr or not e.discouraged for e in a.events
               if isinstance(e, PeerPenalised))


# ====================================================================== randomness


def test_compact_block_salts_and_ping_nonces_do_not_come_from_the_seeded_rng() -> None:
    net, (a, b) = network(2, seed=103)
    # Whoever knows (or recovers) a's Mersenne Twister state could predict its next outputs.
    predictor = random.Random()
    predictor.setstate(a.p2p.rng.getstate())
    predictable = {predictor.getrandbits(64) for _ in range(10_000)}
    traffic = Traffic(net)
    link(net, a, b)
    a.mine()
    net.run(a.p2p.config.ping_interval * 3)

    salts = [s.msg.salt for s in traffic.messages("cmpctblock") if s.sender == "a"]
    nonces = [s.msg.nonce for s in traffic.messages("ping") if s.sender == "a"]
    assert salts and len(nonces) >= 2
    assert not predictable & {*salts, *nonces}
    assert b.chain.tip.hash == a.chain.tip.hash  # and they still work
    assert peer_of(b, a).latency_ms is not None and peer_of(a, b).latency_ms is not None


# ====================================================================== guarded handlers


def test_a_failing_handler_costs_only_that_peer(monkeypatch: pytest.MonkeyPatch) -> None:
    logs = LogRecorder()
    monkeypatch.setattr(protocol, "log", logs)
    net, (a, b, c) = network(3, seed=104)
    link(net, a, b)
    link(net, a, c)
    original = a.p2p._handlers[Ping]

    def on_ping(self: protocol.P2PProtocol, peer: Peer, msg: Ping, now: float) -> None:
        if peer.addr == b.addr:
            raise KeyError("a bug")
        original(self, peer, msg, now)

    a.p2p._handlers = {**a.p2p._handlers, Ping: on_ping}
    inject(net, a, envelope(a, Ping(7, 0, bytes(32), bytes(32))), b.addr)  # must not raise

    assert a.p2p.handler_failures == 1
    [failure] = logs.events("peer_handler_failed")
    assert failure["peer"] == f"{b.addr[0]}:{PORT}" and failure["message"] == "ping"
    assert failure["error"] == "KeyError: 'a bug'"
    assert b.addr not in a.p2p.by_addr
    assert [e.reason for e in a.events if isinstance(e, PeerDisconnected)] == ["internal-error"]
    assert a.p2p.book.score(b.addr) == 0 and not a.p2p.book.list_banned(net.now)

    # The loop goes on: c is served, and b (not penalised) is back at its next redial.
    block = a.mine()
    run_until(net, lambda: c.chain.tip.hash == block.hash, 2, "relay to c")
    a.p2p._handlers = {**a.p2p._handlers, Ping: original}
    run_until(net, lambda: established(a, b), 10, "b reconnected")
    run_until(net, lambda: b.chain.tip.hash == block.hash, 10, "b synced")
    assert a.p2p.handler_failures == 1
