"""Relay ahead of validation and BIP152's bandwidth modes, over the in-memory network.

One story per test: a block passed on before the relaying node validated it; an invalid block
relayed that way, which costs its author and not the relayer; at most three peers asked to
push blocks, the others announcing by header; and hostile `sendcmpct` and flagged pushes.
"""

from __future__ import annotations

from typing import Any

import msgpack

from consensus.block import Block
from consensus.pow import bits_to_target, hash_meets_target
from p2p.bandwidth import MAX_HIGH_BANDWIDTH_PEERS
from p2p.core import COMPACT_TRIED_MEMORY
from p2p.memory import MemoryNetwork, MemoryNode
from p2p.messages import (
    COMPACT_VERSION,
    INV_BLOCK,
    INV_CMPCT_BLOCK,
    CompactBlock,
    GetBlockTxn,
    GetData,
    InvItem,
    PrefilledTx,
    SendCmpct,
)
from p2p.protocol import PeerPenalised
from p2p.wire import checksum
from tests.p2p_helpers import (
    Traffic,
    build_block,
    config,
    envelope,
    established,
    flagged_push,
    fund,
    key_of,
    line,
    link,
    network,
    pay,
    peer_of,
    penalties,
    run_until,
    stranger,
    strict,
    tips,
)


def raw_envelope(node: MemoryNode, type_num: int, fields: list[Any]) -> bytes:
    """A hand-built envelope with any payload (fields `encode_message` would refuse)."""
    payload = msgpack.packb(fields, use_bin_type=True)
    return bytes(msgpack.packb([node.params.magic, type_num, payload, checksum(payload)],
                               use_bin_type=True))


def unsolved_header(node: MemoryNode) -> bytes:
    """A header on `node`'s tip whose hash does not meet its target (bad proof of work)."""
    header = build_block(node).header
    target = bits_to_target(header.bits)
    for nonce in range(1, 10_000):
        candidate = header.with_nonce(header.nonce + nonce)
        if not hash_meets_target(candidate.hash, target):
            return candidate.encode()
    raise AssertionError("every nonce met the target")



def test_a_new_block_leaves_the_relay_before_the_relay_has_validated_it() -> None:
    net, nodes = network(3, seed=201, configs=strict(3))
    a, b, c = nodes
    line(net, nodes)
    coins = fund(a, 2)
    run_until(net, lambda: len(tips(nodes)) == 1, 5, "funded")
    for coin in coins:
        a.submit_transaction(pay(a, coin, b.payout_pkh))
        net.flush(a)
    run_until(net, lambda: all(len(n.mempool) == 2 for n in nodes), 5, "mempools")

    # The order in which b puts bytes on the wire and validates, as the network sees it.
    order: list[tuple[str, bool]] = []
    send_stream, accept = net._send_stream, b.chain.accept_block

    def wire(node: MemoryNode, action: Any) -> None:
        if node is b:
            order.append(("b-sends", b.chain.tip.hash == block.hash))
        send_stream(node, action)

    def validate(blk: Block, now: int) -> Any:
        order.append(("b-validates", b.chain.tip.hash == blk.hash))
        return accept(blk, now)

    net._send_stream = wire  # type: ignore[method-assign]
    b.chain.accept_block = validate  # type: ignore[method-assign]
    traffic = Traffic(net)
    before = [n.p2p.pipelined_blocks for n in nodes]  # b pipelined the funding blocks too
    block = build_block(a, list(a.mempool.select_for_block(10**6)[0]))
    assert a.submit_block(block).status == "connected"
    net.flush(a)
    run_until(net, lambda: c.chain.tip.hash == block.hash, 5, "block at c")

    # b passed the block on (flagged) before it validated it, and connected it only after.
    assert order[:2] == [("b-sends", False), ("b-validates", False)], order
    pushes = [(s.sender, s.msg.pipelined) for s in traffic.messages("cmpctblock")]
    assert pushes == [("a", 0), ("b", 1)]  # the miner validated its own block: never flagged
    assert [n.p2p.pipelined_blocks - k for n, k in zip(nodes, before, strict=True)] == [0, 1, 0]
    assert a.p2p.pipelined_blocks == 0
    assert b.chain.tip.hash == block.hash and len(c.mempool) == 0
    # Nothing more than before: one compact block per hop, no full block, no header round.
    counts = traffic.counts()
    assert counts["cmpctblock"] == 2 and counts["block"] == 0 and counts["getdata"] == 0


def test_a_block_that_fails_the_context_free_checks_is_not_pipelined() -> None:
    # Core runs CheckBlock before NewPoWValidBlock: a block with a second coinbase has valid
    # proof of work and a matching merkle root, but b must not pass it on before validating.
    net, nodes = network(3, seed=211, configs=strict(3))
    a, b, c = nodes
    line(net, nodes)
    a.mine(txs=False)
    a.mine(txs=False)
    run_until(net, lambda: len(tips(nodes)) == 1, 5, "synced")
    tip = c.chain.tip.hash
    old_coinbase = a.chain.get_block(a.chain.tip.prev.hash).txs[0]
    traffic = Traffic(net)
    before = b.p2p.pipelined_blocks

    bad = build_block(a, [old_coinbase])
    a.p2p.announce_block(bad, net.now)
    net.flush(a)
    net.run(2)

    assert b.p2p.pipelined_blocks == before
    assert [s.sender for s in traffic.messages("cmpctblock")] == ["a"]
    assert penalties(b, a) == ["invalid-block"]
    assert b.chain.index[bad.hash].failed and b.chain.tip.hash == tip == c.chain.tip.hash
    assert bad.hash not in c.chain.index


def test_a_block_that_would_not_be_the_new_tip_is_not_pipelined() -> None:
    net, nodes = network(3, seed=202, configs=strict(3))
    a, b, c = nodes
    line(net, nodes)
    fork_base = a.chain.tip
    a.mine(txs=False)
    run_until(net, lambda: len(tips(nodes)) == 1, 5, "first block")
    assert (b.p2p.pipelined_blocks, c.p2p.pipelined_blocks) == (1, 0)  # b relayed, c the end
    # A sibling of b's tip: as much work as the tip, not more.
    sibling = build_block(a, prev=fork_base, extra=5)
    a.p2p.announce_block(sibling, net.now)
    net.flush(a)
    net.run(1)
    assert b.p2p.pipelined_blocks == 1
    assert b.chain.has_block(sibling.hash) and b.chain.tip.hash != sibling.hash


def test_an_invalid_block_relayed_ahead_of_validation_costs_its_author_not_the_relayer() -> None:
    net, nodes = network(3, seed=203, configs=strict(3))
    a, b, c = nodes
    line(net, nodes)
    a.mine(txs=False)
    run_until(net, lambda: len(tips(nodes)) == 1, 5, "synced")
    tip = c.chain.tip.hash
    assert peer_of(c, b).hb_from and peer_of(b, c).hb_to
    traffic = Traffic(net)

    # a is the author: proof of work and a good link, but a coinbase that pays too much. It
    # pushes the block as its own (unflagged), as a node that had validated it would.
    bad = build_block(a, fees=1)
    a.p2p.announce_block(bad, net.now)
    net.flush(a)
    net.run(2)

    # b relayed it to c before finding out, flagged; then penalised a, the author.
    assert [s.msg.pipelined for s in traffic.messages("cmpctblock") if s.sender == "b"] == [1]
    assert penalties(b, a) == ["invalid-block"] and not established(a, b)
    assert key_of(a) in b.p2p.book.list_banned(net.now)
    # c does not penalise b, which only relayed it; b loses its high-bandwidth slot at c.
    assert penalties(c, b) == [] and established(b, c)
    assert not any(isinstance(e, PeerPenalised) for e in c.events)
    assert not peer_of(c, b).hb_from and peer_of(c, b).hb_lost
    assert not peer_of(b, c).hb_to  # c told it (sendcmpct 0)
    # Nobody connected it; b does not serve it, in any form.
    assert b.chain.tip.hash == tip and c.chain.tip.hash == tip
    assert b.chain.index[bad.hash].failed and c.chain.index[bad.hash].failed
    mark = traffic.mark()
    to_b = peer_of(c, b)
    c.p2p._send(to_b, GetData((InvItem(INV_BLOCK, bad.hash), InvItem(INV_CMPCT_BLOCK, bad.hash))))
    c.p2p._send(to_b, GetBlockTxn(bad.hash, (0,)))
    net.flush(c)
    net.run(1)
    from_b = traffic.counts(mark, sender="b")
    assert from_b["block"] == from_b["cmpctblock"] == from_b["blocktxn"] == 0
    assert from_b["notfound"] == 2

    # b is low bandwidth at c now: its next block is announced by header and fetched compact,
    # and delivering a valid block earns the slot back.
    mark = traffic.mark()
    good = b.mine(txs=False)
    run_until(net, lambda: c.chain.tip.hash == good.hash, 5, "b's next block at c")
    sent = traffic.counts(mark)
    assert sent["headers"] == 1 and sent["cmpctblock"] == 1
    fetches = [i.kind for s in traffic.messages("getdata", mark) if s.sender == "c"
               for i in s.msg.items]
    assert fetches == [INV_CMPCT_BLOCK]
    run_until(net, lambda: peer_of(b, c).hb_to, 2, "b high bandwidth at c again")
    assert peer_of(c, b).hb_from and not peer_of(c, b).hb_lost


# ============================================================================ bandwidth modes


def hub_with_five_peers(seed: int) -> tuple[MemoryNetwork, MemoryNode, list[MemoryNode]]:
    """h with five peers: p1..p3 dial h (inbound to it), h dials p4 and p5 (outbound)."""
    net, nodes = network(6, seed=seed, configs=strict(6))
    h, peers = nodes[0], nodes[1:]
    for p in peers[:3]:
        link(net, h, p)
    for p in peers[3:]:
        link(net, p, h)
    run_until(net, lambda: sum(peer_of(p, h).hb_to for p in peers) == 3, 2, "modes settled")
    return net, h, peers


def test_at_most_three_peers_push_and_outbound_peers_are_chosen_first() -> None:
    _, h, peers = hub_with_five_peers(204)
    p1, _, _, p4, p5 = peers
    chosen = {p.name for p in peers if peer_of(h, p).hb_from}
    assert len(chosen) == MAX_HIGH_BANDWIDTH_PEERS
    # At start nobody has delivered a block: the two outbound peers, then the oldest inbound.
    assert chosen == {p4.name, p5.name, p1.name}
    # Each peer honours what h asked for: three push to h, two announce by header.
    assert {p.name for p in peers if peer_of(p, h).hb_to} == chosen
    # Every peer has one peer (h), so each asks h to push: h pushes to all five.
    assert all(peer_of(h, p).hb_to and peer_of(p, h).hb_from for p in peers)
    rows = h.p2p.peer_info()  # getpeerinfo shows both directions, as Bitcoin Core
    assert sum(r["bip152_hb_from"] for r in rows) == 3 and all(r["bip152_hb_to"] for r in rows)


def test_low_bandwidth_peers_announce_every_block_by_header_and_h_fetches_it() -> None:
    net, h, peers = hub_with_five_peers(205)
    p1, p2, p3 = peers[:3]
    everyone = [h, *peers]
    traffic = Traffic(net)
    for miner in (p2, p3, p2, p1):  # two low-bandwidth peers first
        was_hb = peer_of(h, miner).hb_from
        mark = traffic.mark()
        block = miner.mine(txs=False)
        run_until(net, lambda b=block: tips(everyone) == {b.hash}, 5, f"{miner.name}'s block")
        sent = traffic.counts(mark, sender=miner.name)
        if was_hb:
            assert sent["cmpctblock"] == 1 and sent["headers"] == 0
        else:
            # Low bandwidth: the header, then a getdata for the compact block.
            assert sent["headers"] == 1 and sent["cmpctblock"] == 1
            kinds = [i.kind for s in traffic.messages("getdata", mark) if s.sender == h.name
                     for i in s.msg.items]
            assert kinds == [INV_CMPCT_BLOCK]
        # The peer that delivered the new tip ranks first: it pushes from now on, and the
        # least recent of the three makes room. Never more than three.
        assert peer_of(h, miner).hb_from
        assert sum(peer_of(h, p).hb_from for p in peers) == MAX_HIGH_BANDWIDTH_PEERS
        run_until(net, lambda m=miner: peer_of(m, h).hb_to, 2, "the miner told to push")
    assert {p.name for p in peers if peer_of(h, p).hb_from} == {p1.name, p2.name, p3.name}
    assert h.p2p.book.score(p2.addr) == 0 and all(established(h, p) for p in peers)


def test_a_lost_high_bandwidth_peer_is_replaced() -> None:
    net, h, peers = hub_with_five_peers(206)
    p4 = peers[3]
    h.p2p.disconnect(peer_of(h, p4).id, net.now)
    p4.online = False
    net.flush(h)
    run_until(net, lambda: sum(p.hb_from for p in h.p2p.peers.values()) == 3, 2, "refilled")
    assert not any(p.established for p in h.p2p.peers.values() if p.addr == p4.addr)


# ============================================================================ hostile


def test_sendcmpct_garbage_costs_bad_field_and_other_versions_are_ignored() -> None:
    net, (n,) = network(1, seed=207)
    m = stranger(net, n, "127.0.9.1")
    peer = n.p2p.by_addr[m.addr]
    assert peer.hb_to  # pushed to from the start, as before sendcmpct existed
    for fields in ([2, 1], [-1, 1], [True, 1], [1, 2**32], [1, "1"], [1], [1, 1, 1], [None, None]):
        m.send(raw_envelope(n, SendCmpct.TYPE, fields))
    assert penalties(n, m) == ["bad-field"] * 5  # 100: discouraged at the fifth
    assert m.addr not in n.p2p.by_addr and n.p2p.handler_failures == 0

    m2 = stranger(net, n, "127.0.9.2")
    m2.send(envelope(n, SendCmpct(0, COMPACT_VERSION + 1)))  # another version: ignored
    assert n.p2p.by_addr[m2.addr].hb_to
    m2.send(envelope(n, SendCmpct(0, COMPACT_VERSION)))
    assert not n.p2p.by_addr[m2.addr].hb_to and penalties(n, m2) == []


def test_cmpctblock_pipelined_flag_garbage_costs_bad_field() -> None:
    net, (n,) = network(1, seed=208)
    m = stranger(net, n, "127.0.9.1")
    header = build_block(n).header.encode()
    for flag in (2, -1, True, b"\x01"):
        m.send(raw_envelope(n, CompactBlock.TYPE, [header, 1, [], [], flag]))
    m.send(raw_envelope(n, CompactBlock.TYPE, [header, 1, [], []]))  # the old four fields
    assert penalties(n, m) == ["bad-field"] * 5
    assert n.chain.height == 0 and n.p2p.handler_failures == 0


def test_a_sendcmpct_flood_holds_nothing_and_hits_the_rate_limit() -> None:
    net, (n,) = network(1, seed=209, configs={0: config(msg_rate=100.0, msg_burst=200.0)})
    m = stranger(net, n, "127.0.9.1")
    on, off = envelope(n, SendCmpct(1, COMPACT_VERSION)), envelope(n, SendCmpct(0, COMPACT_VERSION))
    for k in range(5000):
        m.send(on if k % 2 else off)
        if m.addr not in n.p2p.by_addr:
            break
    # One flag per peer is all it can set; past the message budget it pays, then goes.
    assert "rate-limit" in penalties(n, m)
    assert n.p2p.handler_failures == 0 and n.p2p.refused_high_bandwidth == 0


def test_a_high_bandwidth_request_past_the_limit_is_served_low_bandwidth() -> None:
    net, (n,) = network(1, seed=210, configs={0: config(max_high_bandwidth_to=2)})
    ms = [stranger(net, n, f"127.0.9.{i}") for i in range(1, 4)]
    peers = [n.p2p.by_addr[m.addr] for m in ms]
    assert [p.hb_to for p in peers] == [True, True, False]  # the bound holds from the start
    ms[2].send(envelope(n, SendCmpct(1, COMPACT_VERSION)))
    assert not peers[2].hb_to and n.p2p.refused_high_bandwidth == 1
    assert penalties(n, ms[2]) == []  # asking is not an offence
    traffic = Traffic(net)
    n.mine(txs=False)
    got = {(s.addr, s.msg.NAME) for s in traffic.sent if s.msg.NAME in ("cmpctblock", "headers")}
    assert got == {(None, "cmpctblock"), (ms[2].addr, "headers")}  # pushes go on the stream
    assert len(traffic.messages("cmpctblock")) == 2
    # A slot freed is taken by the next request.
    ms[0].send(envelope(n, SendCmpct(0, COMPACT_VERSION)))
    ms[2].send(envelope(n, SendCmpct(1, COMPACT_VERSION)))
    assert [p.hb_to for p in peers] == [False, True, True]


def test_a_flagged_push_excuses_only_a_peer_we_asked_to_push() -> None:
    net, (n,) = network(1, seed=211)
    ms = [stranger(net, n, f"127.0.9.{i}") for i in range(1, 5)]
    peers = [n.p2p.by_addr[m.addr] for m in ms]
    assert [p.hb_from for p in peers] == [True, True, True, False]  # three asked, by age
    bad = build_block(n, fees=1)  # proof of work and link fine, coinbase pays too much

    # A peer we asked to push relays it flagged: excused, but it loses its slot.
    ms[0].send(envelope(n, flagged_push(bad, 1)))
    assert penalties(n, ms[0]) == [] and peers[0].hb_lost and not peers[0].hb_from
    assert peers[3].hb_from  # the fourth peer takes the free slot
    assert n.chain.index[bad.hash].failed and n.chain.height == 0

    # Another invalid block, flagged, from a peer we told not to push: it may not have heard
    # yet (our sendcmpct 0 may cross its push), so once it is excused and told again; then
    # no excuse.
    bad2 = build_block(n, fees=2)
    m5 = stranger(net, n, "127.0.9.5")
    assert not n.p2p.by_addr[m5.addr].hb_from
    traffic = Traffic(net)
    m5.send(envelope(n, flagged_push(bad2, 1)))
    assert penalties(n, m5) == [] and n.p2p.by_addr[m5.addr].hb_lost
    assert [s.msg.high_bandwidth for s in traffic.messages("sendcmpct")] == [0]
    m5.send(envelope(n, flagged_push(build_block(n, fees=4), 1)))
    assert penalties(n, m5) == ["invalid-block"] and m5.addr not in n.p2p.by_addr

    # Unflagged from a peer we asked: it vouched for the block, so it is the author.
    bad3 = build_block(n, fees=3)
    ms[1].send(envelope(n, flagged_push(bad3, 0)))
    assert penalties(n, ms[1]) == ["invalid-block"]
    # Header-level failures cost the sender whatever the flag: a bad proof of work.
    ms[2].send(envelope(n, CompactBlock(unsolved_header(n), 1, (), (), 1)))
    assert penalties(n, ms[2]) == ["invalid-header"]
    assert n.chain.height == 0 and n.p2p.handler_failures == 0


def test_a_compact_block_that_cannot_be_completed_is_fetched_in_full() -> None:
    net, (n,) = network(1, seed=212)
    m = stranger(net, n, "127.0.9.1")
    traffic = Traffic(net)
    block = build_block(n)
    # A short id that matches nothing in n's mempool: n asks for the transaction, m never
    # answers (it has no protocol behind it).
    m.send(envelope(n, CompactBlock(block.header.encode(), 9, (b"\x01" * 6,),
                                    (PrefilledTx(0, block.txs[0].encode()),))))
    assert [s.msg.NAME for s in traffic.sent] == ["getblocktxn"]
    net.run(n.p2p.config.block_stall_timeout + 2)
    kinds = [i.kind for s in traffic.messages("getdata") for i in s.msg.items]
    assert kinds and set(kinds) == {INV_BLOCK}  # the retry is the full block, not compact again
    assert block.hash in n.p2p._compact_tried
    assert n.p2p._compact_tried.limit == COMPACT_TRIED_MEMORY  # bounded: the oldest go first
