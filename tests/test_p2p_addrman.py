"""The address book and dialling from it, the mechanics the eclipse attack works on: outbound
slots go to addresses drawn at random from the book (as Bitcoin Core's addrman does), a full
node refuses inbound peers, and the book survives a restart (peers.json, Core's peers.dat).
Virtual time only (p2p.memory)."""

from __future__ import annotations

from collections import Counter
from itertools import pairwise

from p2p.memory import MemoryNetwork, MemoryNode
from p2p.peerbook import (
    ONCE_CONNECTED_MIN_AGE,
    RETRIES_NEVER_CONNECTED,
    RETRIES_ONCE_CONNECTED,
    PeerBook,
)
from p2p.protocol import PeerRefused
from tests.p2p_helpers import QUICK, config, established, run_until


def outbound_peers(node: MemoryNode) -> set[str]:
    return {p.addr[0] for p in node.p2p.peers.values() if p.established and not p.inbound}


def first_dial(seed: int, listeners: int = 6) -> str:
    """A node with a book of `listeners` reachable addresses and one outbound slot: the host
    it ends up connected to."""
    net = MemoryNetwork(QUICK, seed=seed)
    others = [net.add_node(f"x{i}") for i in range(listeners)]
    a = net.add_node("a", config(max_outbound=1))
    for other in others:
        a.p2p.book.add_address(other.addr, other.p2p.node_id, int(net.now))
    run_until(net, lambda: bool(outbound_peers(a)), 10, "a dials one address from its book")
    (host,) = outbound_peers(a)
    return host


def test_outbound_slots_go_to_addresses_drawn_at_random_from_the_book() -> None:
    hosts = [first_dial(seed) for seed in range(40)]
    counts = Counter(hosts)
    # Not the first address in insertion order every time: a draw over all six.
    assert len(counts) >= 5, counts
    assert max(counts.values()) <= 20, counts
    # The draw comes from the node's own rng: the same seed gives the same choice.
    assert first_dial(7) == first_dial(7)


def test_a_book_full_of_one_operators_addresses_gives_it_every_outbound_slot() -> None:
    """The eclipse in miniature: the book holds only attacker addresses, so every dial goes
    to the attacker."""
    net = MemoryNetwork(QUICK, seed=5)
    attackers = [net.add_node(f"s{i}") for i in range(4)]
    a = net.add_node("a", config(max_outbound=3))
    for s in attackers:
        a.p2p.book.add_address(s.addr, s.p2p.node_id, int(net.now))
    run_until(net, lambda: len(outbound_peers(a)) == 3, 20, "a fills its outbound slots")
    assert outbound_peers(a) <= {s.addr[0] for s in attackers}


def test_a_full_node_refuses_inbound_peers_and_no_listen_refuses_all() -> None:
    net = MemoryNetwork(QUICK, seed=2)
    a = net.add_node("a", config(max_inbound=2))
    sybils = [net.add_node(f"s{i}") for i in range(2)]
    honest = net.add_node("h")
    for s in sybils:
        s.connect(a)
    run_until(net, lambda: all(established(a, s) for s in sybils), 10, "sybils take a's slots")
    honest.connect(a)
    run_until(net, lambda: PeerRefused(honest.addr, "too many inbound peers") in a.events, 10,
              "a refuses the honest newcomer")
    assert not established(a, honest)

    b = net.add_node("b", config(listen=False))
    sybils[0].connect(b)
    run_until(net, lambda: PeerRefused(sybils[0].addr, "not accepting inbound connections")
              in b.events, 10, "b refuses every inbound peer")


def test_the_book_survives_as_records() -> None:
    book = PeerBook(10, 100, 60.0)
    book.add_address(("127.0.0.2", 18444), bytes(range(32)), 1_000)
    book.add_address(("127.0.0.3", 18444), bytes(32), 2_000)
    again = PeerBook(10, 100, 60.0)
    bad = [{"host": "127.0.0.4"}, {"host": "h", "port": 0, "node_id": "00" * 32, "last_seen": 1},
           {"host": "h", "port": 1, "node_id": "zz", "last_seen": 1}]
    assert again.load_records([*book.records(), *bad]) == 2
    assert list(again.addresses) == list(book.addresses)
    assert again.addresses[("127.0.0.2", 18444)].node_id == bytes(range(32))
    assert again.addresses[("127.0.0.3", 18444)].last_seen == 2_000


def test_a_stopping_node_says_goodbye_so_its_peers_redial_at_once() -> None:
    """Without the goodbye a peer would hold the dead link until `peer_timeout` (30 s) and a
    persistent dialler would not come back to the restarted node for that long."""
    net = MemoryNetwork(QUICK, seed=4)
    a, b = net.add_node("a"), net.add_node("b")
    b.connect(a)  # persistent
    run_until(net, lambda: established(a, b), 10, "b reaches a")
    a.p2p.shut_down(net.now)
    net.flush(a)
    run_until(net, lambda: a.addr not in b.p2p.by_addr, 1, "b drops a on its goodbye")
    assert b.p2p._persistent[a.addr] <= net.now + b.p2p.config.reconnect_interval


def test_a_dead_address_is_dialled_less_often_then_forgotten() -> None:
    """An address nothing answers at (a node gone, a container moved off its network) is
    forgotten after RETRIES_NEVER_CONNECTED failed dials, as Core's addrman drops a terrible
    address; until then each failure lengthens the wait before the next dial. Nothing is left
    behind as a peer stuck in its handshake. (The node is well connected: two live peers.)"""
    net = MemoryNetwork(QUICK, seed=8)
    a = net.add_node("a")
    live = [net.add_node(f"x{i}") for i in range(2)]
    for other in live:
        a.connect(other)
    run_until(net, lambda: all(established(a, o) for o in live), 10, "a reaches two peers")
    dead = ("127.99.0.1", 18444)
    a.p2p.book.add_address(dead, bytes(range(32)), int(net.now))
    dials: list[float] = []

    def dialled_again() -> bool:
        if dead in a.p2p.by_addr and (not dials or a.p2p.by_addr[dead].created != dials[-1]):
            dials.append(a.p2p.by_addr[dead].created)
        return dead not in a.p2p.book.addresses

    run_until(net, dialled_again, 300, "a forgets the dead address")
    assert len(dials) == RETRIES_NEVER_CONNECTED
    gaps = [later - earlier for earlier, later in pairwise(dials)]
    assert gaps == sorted(gaps) and gaps[-1] > gaps[0], gaps  # backing off
    run_until(net, lambda: dead not in a.p2p.by_addr, 30, "its last handshake gives up")
    assert not net.run_until(lambda: dead in a.p2p.by_addr, 120), "a dials a forgotten address"
    assert dead not in a.p2p.book.addresses


def test_a_node_that_lost_its_own_link_forgets_no_one() -> None:
    """With no outbound peer of its own, every dial fails because of us, not the addresses:
    none is counted, so an outage cannot empty the book for an attacker to refill."""
    net = MemoryNetwork(QUICK, seed=9)
    a = net.add_node("a")
    gone = [(f"127.99.0.{k}", 18444) for k in range(1, 6)]
    for k, addr in enumerate(gone, start=1):
        a.p2p.book.add_address(addr, bytes([k]) * 32, int(net.now))
    assert not net.run_until(lambda: len(a.p2p.book.addresses) < len(gone), 600)
    assert all(a.p2p.book.addresses[addr].failures == 0 for addr in gone)


def test_an_address_that_once_answered_is_kept_longer_and_forgiven_on_success() -> None:
    book = PeerBook(10, 100, 60.0)
    fresh, known = ("127.0.0.2", 1), ("127.0.0.3", 1)
    book.add_address(fresh, bytes(32), 1)
    book.add_address(known, bytes(32), 1)
    book.note_success(known, 100.0)
    for _ in range(RETRIES_NEVER_CONNECTED - 1):
        assert not book.note_failure(fresh, 100.0)
        assert not book.note_failure(known, 100.0)
    assert book.note_failure(fresh, 100.0) and fresh not in book.addresses
    book.note_success(known, 100.0)
    assert book.addresses[known].failures == 0
    # Ten failures in a row, but it answered moments ago: kept (Core: not within a week).
    results = [book.note_failure(known, 200.0) for _ in range(RETRIES_ONCE_CONNECTED + 5)]
    assert not any(results) and known in book.addresses
    assert book.note_failure(known, 100.0 + ONCE_CONNECTED_MIN_AGE)
    assert not book.note_failure(("127.0.0.9", 1), 0.0)  # not in the book: nothing to count


def test_failures_survive_a_restart_in_the_records_and_garbage_counts_are_refused() -> None:
    book = PeerBook(10, 100, 60.0)
    addr = ("127.0.0.2", 18444)
    book.add_address(addr, bytes(32), 5)
    book.note_success(addr, 50.0)
    book.note_failure(addr, 60.0)
    again = PeerBook(10, 100, 60.0)
    records = book.records()
    hostile = [dict(records[0], host="127.0.0.3", failures=10**9),
               dict(records[0], host="127.0.0.4", failures="x"),
               dict(records[0], host="127.0.0.5", failures=-7, connected_once="yes"),
               dict(records[0], host="127.0.0.6", failures=float("inf")),
               dict(records[0], host="127.0.0.7", last_success=float("nan")),
               dict(records[0], host="127.0.0.8", last_success="soon")]
    assert again.load_records([*records, *hostile]) == 3
    assert again.addresses[addr].failures == 1 and again.addresses[addr].connected_once
    assert again.addresses[addr].last_success == 50.0
    assert again.addresses[("127.0.0.3", 18444)].failures == RETRIES_ONCE_CONNECTED - 1
    for refused in ("127.0.0.4", "127.0.0.6", "127.0.0.7", "127.0.0.8"):
        assert (refused, 18444) not in again.addresses
    fifth = again.addresses[("127.0.0.5", 18444)]
    assert fifth.failures == 0 and not fifth.connected_once
