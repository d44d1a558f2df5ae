"""An independent hostile review of relay ahead of validation (BIP152 high bandwidth, issue 17).

Each test is one bug the review found, over the in-memory network; see also
tests/test_p2p_pipeline.py for the author's own stories.
"""

from __future__ import annotations

import itertools
import random

from p2p.memory import LinkModel, MemoryNode
from p2p.messages import CompactBlock, Message, PrefilledTx, SendCmpct
from p2p.peer import Peer
from tests.p2p_helpers import (
    build_block,
    envelope,
    established,
    flagged_push,
    link,
    network,
    peer_of,
    penalties,
    run_until,
    stranger,
    strict,
)


def drop_sendcmpct(node: MemoryNode, to: MemoryNode) -> list[Message]:
    """Hold back every `sendcmpct` `node` sends `to`: what `to` does before one arrives (it
    was a datagram, which may be lost; on the stream it can still cross a push). Returns the
    list the held messages are recorded in."""
    dropped: list[Message] = []
    send = node.p2p._send

    def lossy(peer: Peer, msg: Message, stream: bool = False) -> None:
        if isinstance(msg, SendCmpct) and peer.addr == to.addr:
            dropped.append(msg)
            return
        send(peer, msg, stream)

    node.p2p._send = lossy  # type: ignore[method-assign]
    return dropped


def test_an_honest_relayer_whose_low_bandwidth_request_was_lost_is_not_banned() -> None:
    """c has three high-bandwidth peers when a connects, so it tells a `sendcmpct` 0; until
    that arrives (lost as a datagram, or crossing on the wire) a pushes to c, as it does to
    every peer until told otherwise.
    An attacker m pushes a an invalid block; a passes it on to c before validating it, flagged,
    exactly as it would to a peer that asked. a only relayed it: c must not ban it."""
    net, nodes = network(5, seed=301, configs=strict(5))
    c, p1, p2, p3, a = nodes
    for p in (p1, p2, p3):
        link(net, c, p)
    dropped = drop_sendcmpct(c, a)
    link(net, c, a)
    run_until(net, lambda: len(dropped) >= 1, 2, "c's sendcmpct 0 to a (held back)")
    assert [m.high_bandwidth for m in dropped] == [0]
    assert not peer_of(c, a).hb_from and peer_of(a, c).hb_to  # the views disagree

    m = stranger(net, a, "127.0.9.1")
    assert peer_of(a, c).hb_from and a.p2p.by_addr[m.addr].hb_from  # a has two peers: both
    bad = build_block(a, fees=1)  # proof of work and link fine, coinbase pays too much
    m.send(envelope(a, flagged_push(bad, 1)))
    net.run(1)

    assert a.chain.index[bad.hash].failed and c.chain.index[bad.hash].failed
    assert a.p2p.pipelined_blocks == 1  # a relayed it ahead of validation, flagged
    assert penalties(c, a) == [], "c punished a relayer for a block it did not author"
    assert established(c, a)


def test_reconnecting_does_not_win_back_a_lost_high_bandwidth_slot() -> None:
    """The slot lost for a flagged invalid block is "not chosen again until it delivers a
    valid new block" (docs/p2p.md): reconnecting must not be a way around it, or an author
    pushes every invalid block it mines flagged, for the price of a reconnection."""
    net, (n,) = network(1, seed=302)
    m = stranger(net, n, "127.0.9.1")
    assert n.p2p.by_addr[m.addr].hb_from  # n's only peer: asked to push
    m.send(envelope(n, flagged_push(build_block(n, fees=1), 1)))
    assert penalties(n, m) == [] and n.p2p.by_addr[m.addr].hb_lost  # excused once

    n.p2p.disconnect(n.p2p.by_addr[m.addr].id, net.now)
    net.flush(n)
    m = stranger(net, n, "127.0.9.1")  # the same host and identity, a new connection
    again = n.p2p.by_addr[m.addr]
    assert again.established and not again.hb_from and again.hb_lost
    m.send(envelope(n, flagged_push(build_block(n, fees=2), 1)))
    assert penalties(n, m) == ["invalid-block"]
    assert n.chain.height == 0 and n.p2p.handler_failures == 0


def test_in_a_mesh_with_jitter_both_ends_agree_on_who_pushes() -> None:
    """Eight nodes, every pair linked, blocks from random miners: a node re-picks its three
    high-bandwidth peers as deliveries change, so a peer may be told 0 then 1 moments apart.
    Datagrams reorder under jitter; the last word must still be the one that holds, or a
    peer we count on to push only announces (a round trip per block, for good)."""
    net, nodes = network(8, seed=5, configs=strict(8))
    for i, left in enumerate(nodes):
        for right in nodes[i + 1:]:
            link(net, left, right)
    net.link = LinkModel(latency=0.005, jitter=0.01)
    rng = random.Random(5)
    for k in range(30):
        block = rng.choice(nodes).mine(txs=False)
        run_until(net, lambda b=block: {n.chain.tip.hash for n in nodes} == {b.hash}, 30,
                  f"block {k} everywhere")
    net.run(2)
    disagree = [(n.name, m.name) for n in nodes for m in nodes if m is not n
                and peer_of(n, m).hb_from != peer_of(m, n).hb_to]
    assert disagree == []
    assert all(sum(p.hb_from for p in n.p2p.peers.values()) == 3 for n in nodes)


def test_an_invalid_pipelined_block_does_not_hold_up_the_valid_one_at_its_height() -> None:
    """Ruled out: m pushes b an invalid block that b passes down the line before validating;
    a valid block at the same height, mined next, still reaches everyone, pipelined too."""
    net, nodes = network(3, seed=303, configs=strict(3))
    a, b, c = nodes
    link(net, a, b)
    link(net, b, c)
    m = stranger(net, b, "127.0.9.1")
    bad = build_block(a, fees=1)
    m.send(envelope(b, flagged_push(bad, 1)))
    net.run(1)
    assert b.chain.index[bad.hash].failed and c.chain.index[bad.hash].failed
    assert b.p2p.pipelined_blocks == 1 and c.chain.height == 0
    good = a.mine(txs=False)  # the same height
    run_until(net, lambda: {n.chain.tip.hash for n in nodes} == {good.hash}, 5, "good block")
    assert b.p2p.pipelined_blocks == 2  # passed on ahead of validation as well
    assert penalties(c, b) == [] and established(b, c)


def test_a_compact_block_whose_transactions_do_not_decode_is_never_pipelined() -> None:
    """Ruled out: garbage in a prefilled transaction is caught before anything is passed on."""
    net, nodes = network(2, seed=304, configs=strict(2))
    b, c = nodes
    link(net, b, c)
    m = stranger(net, b, "127.0.9.1")
    block = build_block(b)
    garbage = CompactBlock(block.header.encode(), 7, (),
                           (PrefilledTx(0, block.txs[0].encode()[:-3]),), 1)
    m.send(envelope(b, garbage))
    net.run(1)
    assert penalties(b, m) == ["malformed-tx"]
    assert b.p2p.pipelined_blocks == 0 and block.hash not in c.chain.index


def test_after_an_invalid_block_crosses_a_line_every_node_still_gets_the_next_one() -> None:
    """What one invalid block with good proof of work costs honest relayers (docs/p2p.md):
    each passes it on before validating, so each loses its slot at the next node (the last
    node is left with no peer asked to push). The next valid block still crosses the line,
    announced by header and fetched compact, and gives every relayer its slot back."""
    net, nodes = network(5, seed=305, configs=strict(5))
    for left, right in itertools.pairwise(nodes):
        link(net, left, right)
    m = stranger(net, nodes[0], "127.0.9.1")
    bad = build_block(nodes[0], fees=1)
    m.send(envelope(nodes[0], flagged_push(bad, 1)))
    net.run(1)
    assert all(n.chain.index[bad.hash].failed for n in nodes)  # it crossed the whole line
    downstream = list(itertools.pairwise(nodes))
    assert all(peer_of(lo, up).hb_lost and not peer_of(lo, up).hb_from for up, lo in downstream)
    assert not any(p.hb_from for p in nodes[-1].p2p.peers.values())  # the end: nobody pushes
    assert all(penalties(lo, up) == [] for up, lo in downstream)

    good = nodes[0].mine(txs=False)
    run_until(net, lambda: {n.chain.tip.hash for n in nodes} == {good.hash}, 5, "next block")
    run_until(net, lambda: all(peer_of(lo, up).hb_from and peer_of(up, lo).hb_to
                               for up, lo in downstream), 2, "slots back")
