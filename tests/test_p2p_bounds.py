"""Resource bounds (issue 10): every table a peer can grow has a named limit in `P2PConfig`.

Each test drives a peer past one bound over the in-memory network (virtual time, seeded), checks
the structure stays at the bound and the named penalty is applied, and that honest peers are still
served.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from collections import Counter

import pytest

import p2p.protocol as protocol
import p2p.sync as sync
from consensus.block import BlockHeader
from consensus.blockbuild import BLOCK_VERSION
from consensus.chainstate import BlockIndex
from consensus.keys import PrivateKey
from consensus.pow import bits_to_target, hash_meets_target
from consensus.tx import Transaction, TxIn, TxOut, sign_transaction
from p2p.config import Address
from p2p.memory import MemoryNetwork, MemoryNode
from p2p.messages import INV_BLOCK, INV_TX, GetData, Headers, Inv, InvItem, Ping
from p2p.peer import Peer
from p2p.protocol import PeerConnected, PeerDisconnected, PeerPenalised
from tests.p2p_helpers import (
    FEE,
    PORT,
    FakePeer,
    LogRecorder,
    Traffic,
    config,
    envelope,
    established,
    fake_peer,
    fund,
    key_of,
    link,
    network,
    pay,
    peer_of,
    run_until,
    send_as,
    tips,
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
        send_as(net, b, a, b"\xc1")

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
        a.p2p._penalise(addr, "invalid-block", net.now)  # 110: discouraged
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
    send_as(net, b, a, b"\xc1")
    assert a.p2p.book.score(b.addr) == 10
    net.run(50)
    send_as(net, b, a, b"\xc1")
    assert a.p2p.book.score(b.addr) == 20  # still within 100 s of the last one
    net.run(101)
    a.p2p._penalise(("10.0.0.1", 1), "malformed", net.now)  # any penalty tidies up
    assert a.p2p.book.score(b.addr) == 0 and a.p2p.book.recent_penalties(b.addr) == []
    assert established(a, b)
    assert not [e for e in a.events if isinstance(e, PeerDisconnected) and e.addr == b.addr]
    assert all(e.addr != b.addr or not e.discouraged for e in a.events
               if isinstance(e, PeerPenalised))


# ====================================================================== transaction announcements


def fan_out(node: MemoryNode, count: int) -> list[Transaction]:
    """`count` independent, confirmed-parent spends paying `node`'s wallet (a chain of that
    many unconfirmed transactions would hit the mempool's descendant limit)."""
    [block] = fund(node, 1)
    parent = pay(node, block, node.payout_pkh, outputs=count)
    assert parent.txid in node.submit_transaction(parent).accepted
    node.mine()
    value = parent.outputs[0].amount - FEE
    return [
        sign_transaction(
            Transaction([TxIn(parent.txid, i, b"", b"")], [TxOut(value, node.payout_pkh)]),
            [node.wallet_key],
            node.params.genesis_hash,
        )
        for i in range(count)
    ]


def unknown_txids(count: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(32) for _ in range(count)]


def getdata_items(traffic: Traffic, sender: MemoryNode, to: MemoryNode, since: int = 0) -> int:
    return sum(
        len(s.msg.items)
        for s in traffic.messages("getdata", since)
        if s.sender == sender.name and s.addr == to.addr
    )


def test_an_inv_flood_of_unknown_txids_is_bounded_and_penalised() -> None:
    net, (a, m, c) = network(3, seed=111)
    link(net, a, m)
    link(net, a, c)
    txs = fan_out(c, 3)
    run_until(net, lambda: a.chain.tip.hash == c.chain.tip.hash, 5, "a has c's coins")
    cfg = a.p2p.config
    traffic = Traffic(net)
    ids = unknown_txids(900 * 1000, seed=1)
    p2p = a.p2p
    tracked = in_flight = 0
    for n in range(900):  # 900 datagrams of 1000 ids: ~33 MB, inside the rate limit
        items = tuple(InvItem(INV_TX, t) for t in ids[n * 1000 : (n + 1) * 1000])
        send_as(net, m, a, envelope(a, Inv(items)))
        tracked = max(tracked, len(p2p._tx_announcers), len(p2p._tx_attempts))
        in_flight = max(in_flight, len(p2p._txs_in_flight))
    assert tracked == cfg.max_peer_tx_announcements  # 5000, not 900,000
    assert in_flight == cfg.max_peer_txs_in_flight  # 100
    assert getdata_items(traffic, a, m) == cfg.max_peer_txs_in_flight  # not 413,000

    # Past its cap (and a burst allowance as large) the flooder paid, 20 points per 5000 ids,
    # and is discouraged and gone...
    penalties = p2p.book.recent_penalties(m.addr)
    assert [p.reason for p in penalties] == ["inv-flood"] * 5
    assert m.addr not in p2p.by_addr and key_of(m) in p2p.book.list_banned(net.now)
    # ...and everything it made us track went with it.
    assert p2p._tx_announcers == {} and p2p._txs_in_flight == {} and p2p._tx_attempts == {}

    # An honest peer's transactions still relay.
    for tx in txs:
        assert tx.txid in c.submit_transaction(tx).accepted
    net.flush(c)
    run_until(net, lambda: all(tx.txid in a.mempool for tx in txs), 5, "honest relay")
    assert established(a, c) and p2p.book.score(c.addr) == 0


def test_honest_relay_past_the_in_flight_limits_completes() -> None:
    cfg = config(max_peer_txs_in_flight=10, max_peer_tx_announcements=50)
    net, (a, c) = network(2, seed=112, configs={0: cfg})
    link(net, a, c)
    txs = fan_out(c, 120)
    run_until(net, lambda: a.chain.tip.hash == c.chain.tip.hash, 5, "a has c's coins")
    traffic = Traffic(net)
    for tx in txs:  # announced far faster than a may fetch them
        c.submit_transaction(tx)
    net.flush(c)
    peer = peer_of(a, c)
    most = [0, 0]

    def done() -> bool:
        most[0] = max(most[0], len(peer.txs_in_flight), len(a.p2p._txs_in_flight))
        most[1] = max(most[1], len(peer.tx_announced))
        return all(tx.txid in a.mempool for tx in txs)

    # Announcements past a's cap are dropped, then announced again by c (TX_ANNOUNCE_RETRIES):
    # a burst of up to twice the cap costs nothing.
    run_until(net, done, 60, "every transaction relayed")
    assert most == [10, 50]
    assert a.p2p.book.score(c.addr) == 0 and established(a, c)
    asked = [
        i.hash for s in traffic.messages("getdata") if s.sender == a.name for i in s.msg.items
    ]
    assert sorted(t for t in asked if t in a.mempool) == sorted(tx.txid for tx in txs)  # once
    assert a.p2p._tx_announcers == {} and a.p2p._txs_in_flight == {}
    assert a.p2p._tx_attempts == {}


# ====================================================================== getdata


def stranger(net: MemoryNetwork, target: MemoryNode, host: str) -> FakePeer:
    """An established peer of `target` at `host` with nobody behind it: it never opens a
    stream, and what `target` sends it is lost."""
    key = PrivateKey(random.Random(host).randbytes(32))
    peer = fake_peer(net, target, (host, PORT), key)
    assert any(isinstance(e, PeerConnected) and e.addr == peer.addr for e in target.events)
    return peer


def test_a_getdata_flood_from_a_peer_without_a_stream_is_bounded_and_penalised() -> None:
    net, (a, c) = network(2, seed=121)
    link(net, a, c)
    cfg = a.p2p.config
    blocks = [a.mine(txs=False) for _ in range(2 * cfg.max_getdata_blocks)]
    run_until(net, lambda: c.chain.tip.hash == a.chain.tip.hash, 5, "c synced")

    # The reported attack: 100 getdata of 1000 blocks (31 MB queued before). Each asks for far
    # more blocks than we ever request at once: refused, and the sender pays.
    m = stranger(net, a, "127.0.9.1")
    peer = a.p2p.by_addr[m.addr]
    queued_at_start = peer.pending_stream_bytes  # its sendcmpct: a few bytes, once
    request = envelope(
        a, GetData(tuple(InvItem(INV_BLOCK, blocks[k % len(blocks)].hash) for k in range(1000)))
    )
    for _ in range(100):
        m.send(request)
        assert peer.pending_stream_bytes == queued_at_start
    assert [p.reason for p in a.p2p.book.recent_penalties(m.addr)] == ["getdata-flood"] * 5
    assert m.addr not in a.p2p.by_addr and "127.0.9.1" in a.p2p.book.list_banned(net.now)

    # Within the per-request limit, but never reading: the queue stops at its bound.
    small = {0: config(max_pending_stream_bytes=20_000)}
    net, (a, c) = network(2, seed=122, configs=small)
    link(net, a, c)
    run_until(net, lambda: peer_of(a, c).stream_id is not None, 2, "c's stream")
    blocks = [a.mine(txs=False) for _ in range(cfg.max_getdata_blocks)]
    run_until(net, lambda: c.chain.tip.hash == a.chain.tip.hash, 5, "c synced")
    m = stranger(net, a, "127.0.9.2")
    peer = a.p2p.by_addr[m.addr]
    request = envelope(a, GetData(tuple(InvItem(INV_BLOCK, b.hash) for b in blocks)))
    queued = []
    for _ in range(100):
        m.send(request)
        queued.append(peer.pending_stream_bytes)
    assert 0 < max(queued) <= 20_000
    assert [p.reason for p in a.p2p.book.recent_penalties(m.addr)] == ["stream-overflow"] * 2
    assert m.addr not in a.p2p.by_addr

    # Honest peers are still served.
    block = a.mine()
    run_until(net, lambda: c.chain.tip.hash == block.hash, 2, "relay to c")
    assert established(a, c) and a.p2p.book.score(c.addr) == 0


def test_getdata_for_things_we_lack_costs_past_an_allowance() -> None:
    net, (a, c) = network(2, seed=123)
    link(net, a, c)
    cfg = a.p2p.config
    m = stranger(net, a, "127.0.9.3")
    traffic = Traffic(net)
    ids = unknown_txids(cfg.max_getdata_misses_per_minute + 1000, seed=3)
    allowance = ids[: cfg.max_getdata_misses_per_minute]
    for n in range(0, len(allowance), 1000):
        request = GetData(tuple(InvItem(INV_TX, t) for t in ids[n : n + 1000]))
        m.send(envelope(a, request))
    assert a.p2p.book.recent_penalties(m.addr) == []
    notfound = [s for s in traffic.messages("notfound") if s.addr == m.addr]
    assert sum(len(s.msg.items) for s in notfound) == len(allowance)
    assert all(not s.stream and s.size <= 1400 for s in notfound)  # datagrams, nothing queued

    extra = ids[len(allowance) :]
    m.send(envelope(a, GetData(tuple(InvItem(INV_TX, t) for t in extra))))
    assert [p.reason for p in a.p2p.book.recent_penalties(m.addr)] == ["getdata-flood"]
    assert len(traffic.messages("notfound")) == len(notfound)  # no answer to that one
    assert established(a, c) and a.p2p.book.score(c.addr) == 0


def test_a_block_a_peer_lacks_is_not_asked_of_it_again() -> None:
    net, (a, x, y) = network(3, seed=125)
    for _ in range(5):
        x.mine(txs=False)
    y_blocks = [y.mine(txs=False) for _ in range(6)]  # more work, another branch
    y.p2p._handlers = {**y.p2p._handlers, GetData: lambda *args: None}  # y never serves
    link(net, a, x)
    run_until(net, lambda: a.chain.tip.hash == x.chain.tip.hash, 5, "a on x's branch")
    traffic = Traffic(net)
    link(net, a, y)
    net.run(a.p2p.config.block_stall_timeout - 1)

    # x has enough work to be asked for y's blocks, says it lacks them: asked once, not every
    # tick (which its getdata-miss allowance would now charge).
    asked = Counter(
        item.hash
        for s in traffic.messages("getdata")
        if s.sender == a.name and s.addr == x.addr
        for item in s.msg.items
    )
    assert asked and set(asked) <= {b.hash for b in y_blocks}
    assert set(asked.values()) == {1}
    assert x.p2p.book.score(a.addr) == 0


def test_a_peer_dropped_while_blocks_are_announced_does_not_break_the_announcement() -> None:
    net, (a, c) = network(2, seed=124, configs={0: config(max_pending_stream_bytes=2_000)})
    link(net, a, c)
    run_until(net, lambda: peer_of(a, c).stream_id is not None, 2, "c's stream")
    m = stranger(net, a, "127.0.9.4")  # never opens its stream: compact blocks queue up
    for _ in range(10):
        block = a.mine(txs=False)  # raised "dictionary changed size during iteration"
    assert m.addr not in a.p2p.by_addr
    assert [e.reason for e in a.events if isinstance(e, PeerDisconnected)] == ["stream-overflow"]
    run_until(net, lambda: c.chain.tip.hash == block.hash, 2, "relay to c")

# ====================================================================== headers


def header_run(node: MemoryNode, start: BlockIndex, count: int, salt: int) -> list[BlockHeader]:
    """`count` headers with valid proof of work on `start` (regtest: about two hashes each),
    timestamps as low as the median-time-past rule allows; no blocks behind them."""
    params = node.params
    target = bits_to_target(params.pow_limit_bits)
    times: list[int] = []
    cursor: BlockIndex | None = start
    while cursor is not None and len(times) < params.median_time_span:
        times.insert(0, cursor.header.timestamp)
        cursor = cursor.prev
    prev, run = start.hash, []
    for i in range(count):
        root = hashlib.sha256(f"{salt}/{i}".encode()).digest()
        last = sorted(times[-params.median_time_span :])
        timestamp = last[len(last) // 2] + 1
        for nonce in itertools.count():
            header = BlockHeader(BLOCK_VERSION, prev, root, timestamp, params.pow_limit_bits, nonce)
            if hash_meets_target(header.hash, target):
                break
        run.append(header)
        times.append(timestamp)
        prev = header.hash
    return run


def push_headers(net: MemoryNetwork, sender: MemoryNode, to: MemoryNode,
                 run: list[BlockHeader]) -> None:
    """`sender` pushes `run` to `to` on its stream, in batches of MAX_HEADERS, unasked."""
    peer = peer_of(sender, to)
    for n in range(0, len(run), sync.MAX_HEADERS):
        batch = Headers(tuple(h.encode() for h in run[n : n + sync.MAX_HEADERS]))
        sender.p2p._send(peer, batch, stream=True)
    net.flush(sender)
    net.run(1)


def test_cheap_side_chain_headers_from_genesis_are_bounded() -> None:
    net, (a, c, m) = network(3, seed=131)
    for _ in range(400):
        a.mine(txs=False)
    link(net, a, c)
    link(net, a, m)
    run_until(net, lambda: tips([a, c, m]) == {a.chain.tip.hash}, 10, "c and m synced")
    cfg = a.p2p.config
    genesis = a.chain.at_height(0)
    assert genesis is not None
    stored = len(a.chain.index)

    # 100 forks of 200 headers each off genesis (20,000 headers): each ends far below our
    # tip's work minus 144 blocks', so none is stored, whoever sends them and however often.
    for k in range(100):
        push_headers(net, m, a, header_run(m, genesis, 200, salt=k))
    assert len(a.chain.index) == stored
    assert a.p2p.book.recent_penalties(m.addr) == [] and established(a, m)

    # One chain of 20,000 off genesis, with more work than ours (regtest work is cheap), pushed
    # in 10 batches: stored up to the peer's headers-only budget, then refused and charged.
    run = header_run(m, genesis, 20_000, salt=1000)
    push_headers(net, m, a, run)
    cap = cfg.max_peer_headers_only
    assert len(a.chain.index) - stored == cap
    reasons = [p.reason for p in a.p2p.book.recent_penalties(m.addr)]
    # The first batch past the budget is refused, and the next ones no longer connect.
    assert reasons == ["headers-flood"] + ["unconnecting-headers"] * 4
    # Pushing the refused batch again and again gets m discouraged.
    while m.addr in a.p2p.by_addr:
        push_headers(net, m, a, run[cap : cap + sync.MAX_HEADERS])
    reasons = [p.reason for p in a.p2p.book.recent_penalties(m.addr)]
    assert reasons[5:] == ["headers-flood"] * 2 and key_of(m) in a.p2p.book.list_banned(net.now)
    assert len(a.chain.index) - stored == cap

    # Honest blocks still connect.
    block = c.mine()
    run_until(net, lambda: a.chain.tip.hash == block.hash, 5, "relay from c")
    assert established(a, c) and a.p2p.book.score(c.addr) == 0


def test_a_deep_fork_with_more_work_is_still_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fork deeper than a headers batch below the anti-DoS threshold: the batches are held
    (not stored) until the chain reaches it, then stored, downloaded and reorganised to."""
    monkeypatch.setattr(sync, "MAX_HEADERS", 50)  # short batches: a deep fork, quickly
    cfg = config(antidos_work_blocks=20, max_peer_headers_only=300)
    net, (a, b) = network(2, seed=132, configs={0: cfg, 1: cfg})
    for _ in range(200):
        a.mine(txs=False)
    for _ in range(230):
        b.mine(txs=False)
    traffic = Traffic(net)
    link(net, a, b)
    run_until(net, lambda: a.chain.tip.hash == b.chain.tip.hash, 30, "a reorganised to b")
    assert a.chain.height == 230
    assert len(traffic.messages("getheaders")) >= 200 // 50  # held batches asked for the rest
    assert a.p2p.book.score(b.addr) == 0 and b.p2p.book.score(a.addr) == 0


def test_sync_past_the_headers_only_budget_pauses_and_resumes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sync, "MAX_HEADERS", 50)
    cfg = config(max_peer_headers_only=120, block_download_window=40)
    net, (a, b) = network(2, seed=133, configs={0: cfg})
    for _ in range(400):
        b.mine(txs=False)
    link(net, a, b)
    peer = peer_of(a, b)
    most = [0]

    def done() -> bool:
        most[0] = max(most[0], len(peer.headers_only) + len(peer.presync))
        return a.chain.tip.hash == b.chain.tip.hash

    run_until(net, done, 60, "a synced")
    assert most[0] <= 120
    assert a.p2p.book.score(b.addr) == 0

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
    send_as(net, b, a, envelope(a, Ping(7, 0, bytes(32), bytes(32))))  # must not raise

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
