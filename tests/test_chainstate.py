"""Chain state scenarios, one story per test: fork choice, reorgs, invalid branches, orphans,
manual invalidation, chain tips, retargeting, finality and restarting from a snapshot."""

from __future__ import annotations

from typing import Any

import pytest

from consensus.block import Block
from consensus.chainstate import BlockStatus, ChainState
from consensus.errors import ConsensusError
from consensus.pow import bits_to_target, target_to_bits, work_from_target
from consensus.tx import OutPoint
from storage import MemoryStore
from tests.helpers import (
    ChainBuilder,
    chain_view,
    coinbase_outpoint,
    regtest,
    replay,
    retargeting,
    unsolve,
)


def tips(b: ChainBuilder) -> dict[bytes, tuple[str, int]]:
    return {t.hash: (t.status, t.branchlen) for t in b.chain.chain_tips()}


def hashes(pairs: list[tuple[Any, Block]]) -> list[bytes]:
    return [blk.hash for _, blk in pairs]


def assert_matches_replay(b: ChainBuilder) -> None:
    """The UTXO set and indexes equal a fresh replay of the active chain."""
    active = [b.blocks[h] for h in b.active_hashes()[1:]]
    assert chain_view(replay(b.params, active, b.now)) == chain_view(b.chain)


# ------------------------------------------------------------------ fork choice


def test_most_work_beats_longest() -> None:
    # With retargeting every 4 blocks, a branch mined fast (1 s apart, target 10 s) gets 4x
    # harder at heights 4 and 8 (the clamp), while a branch mined slowly stays at the pow limit
    # (it cannot get easier than that). Each limit block is worth 2 units of work, each block
    # after the first retarget 8: so 5 fast blocks (2 + 3*2 + 2*8 = 24 with genesis) outweigh
    # 10 slow ones (2 + 10*2 = 22) although the slow branch is twice as long.
    b = ChainBuilder(retargeting(window=4))
    slow = b.mine(10, gap=100)
    assert b.chain.height == 10
    assert all(blk.header.bits == b.params.pow_limit_bits for blk in slow)
    slow_work = b.chain.tip.chainwork

    fast = b.branch(5, parent=b.genesis, gap=1)
    assert fast[3].header.bits != b.params.pow_limit_bits  # retargeted at height 4
    assert bits_to_target(fast[3].header.bits) * 4 <= b.params.pow_limit
    for blk in fast[:4]:
        result = b.accept(blk)
        assert result.status == "side-branch"
        assert b.entry(blk).chainwork < slow_work
    result = b.accept(fast[4])
    fast_tip = b.chain.get(fast[4].hash)
    assert fast_tip is not None
    assert 2 * fast_tip.height == 10  # half as long
    assert fast_tip.chainwork > slow_work
    assert fast_tip.chainwork == b.info(fast[4]).chainwork  # the builder's independent sum
    assert result.status == "connected"
    assert b.chain.tip is fast_tip
    assert result.reorg_depth == 10
    assert hashes(result.disconnected) == [blk.hash for blk in reversed(slow)]
    assert hashes(result.connected) == [blk.hash for blk in fast]
    assert result.fork is not None and result.fork.height == 0
    # An 11th slow block ties (24 each): the fast tip was there first. A 12th wins it back.
    slow11, slow12 = b.branch(2, parent=slow[-1], gap=100)
    assert b.accept(slow11).status == "side-branch"
    assert b.entry(slow11).chainwork == fast_tip.chainwork
    assert b.chain.tip is fast_tip
    result = b.accept(slow12)
    assert result.status == "connected" and b.chain.tip.height == 12
    assert hashes(result.disconnected) == [blk.hash for blk in reversed(fast)]


def test_ties_go_to_the_first_seen_block() -> None:
    b = ChainBuilder()
    a1, b1 = b.block(b.genesis), b.block(b.genesis)
    assert b.accept(a1).status == "connected"
    assert b.accept(b1).status == "side-branch"
    assert b.chain.tip.hash == a1.hash
    # The same holds when the competitor arrives first: order of arrival, not hash, decides.
    c = ChainBuilder()
    assert c.accept(b1).status == "connected"
    assert c.accept(a1).status == "side-branch"
    assert c.chain.tip.hash == b1.hash
    # B gets ahead, then A catches up: equal work again, and B's tip was seen first.
    b2, a2 = b.block(b1), b.block(a1)
    result = b.accept(b2)
    assert result.status == "connected" and result.reorg_depth == 1
    assert b.accept(a2).status == "side-branch"
    assert b.chain.tip.hash == b2.hash


# ------------------------------------------------------------------ reorgs


def test_reorg_disconnects_and_connects_and_moves_coins() -> None:
    b = ChainBuilder(regtest(coinbase_maturity=1))
    base = b.mine(2)
    coin_a, coin_b = coinbase_outpoint(base[0]), coinbase_outpoint(base[1])
    spend_a = b.spend([coin_a], fee=100)
    spend_b = b.spend([coin_b], fee=100)
    main = b.mine(1, txs=[spend_a, spend_b])
    main += b.mine(1)
    assert coin_a not in b.chain.utxo and b.chain.spender(coin_a) == spend_a.txid
    before_fork = chain_view(b.chain)

    # A competing branch from height 2 that confirms spend_b again but not spend_a.
    fork = b.branch(3, parent=base[1])
    fork[0] = b.block(base[1], txs=[spend_b])
    fork[1] = b.block(fork[0])
    fork[2] = b.block(fork[1])
    assert b.accept(fork[0]).status == "side-branch"
    assert b.accept(fork[1]).status == "side-branch"  # a tie
    result = b.accept(fork[2])
    assert result.status == "connected"
    assert result.old_tip is b.entry(main[-1]) and result.new_tip is b.entry(fork[2])
    assert result.fork is b.chain.get(base[1].hash)
    assert hashes(result.disconnected) == [main[1].hash, main[0].hash]
    assert hashes(result.connected) == [f.hash for f in fork]
    assert result.reorg_depth == 2
    # spend_a is back out of the chain: its coin is unspent again, its outputs are gone.
    assert coin_a in b.chain.utxo and b.chain.spender(coin_a) is None
    assert b.chain.tx_block(spend_a.txid) is None
    assert OutPoint(spend_a.txid, 0) not in b.chain.utxo
    # spend_b is confirmed in the new branch's block instead.
    assert b.chain.tx_block(spend_b.txid) is b.chain.get(fork[0].hash)
    assert b.chain.spender(coin_b) == spend_b.txid
    assert b.chain.tx_block(main[0].txs[0].txid) is None
    assert_matches_replay(b)

    # Back again: one more block on the old branch. The UTXO view is restored exactly.
    back = b.block(main[-1])
    extra = b.block(back)
    b.accept(back)
    result = b.accept(extra)
    assert result.reorg_depth == 3 and b.chain.tip.hash == extra.hash
    view = chain_view(b.chain)
    for old, new in zip(before_fork, view, strict=True):
        assert set(old.items()) <= set(new.items())
    assert_matches_replay(b)


def test_invalid_block_in_the_middle_of_a_side_branch() -> None:
    b = ChainBuilder()
    main = b.mine(3)
    # A side branch from genesis whose second block overpays its coinbase. While the branch has
    # less work it is only stored (contextual rules are checked on connecting, as in Core).
    s1 = b.block(b.genesis)
    s2 = b.block(s1, reward_delta=1)
    s3 = b.block(s2)
    s4 = b.block(s3)
    s5 = b.block(s4)
    for blk in (s1, s2, s3):
        assert b.accept(blk).status == "side-branch"
    assert not b.entry(s2).failed
    result = b.accept(s4)  # now the branch has the most work: the node tries it and fails
    assert (result.status, result.reason) == ("invalid", "bad-prevblk")
    assert (s2.hash, "bad-cb-amount") in result.invalid
    assert b.chain.tip.hash == main[-1].hash
    # Net of the attempt, nothing changed (the node went to s1 and came back).
    assert result.connected == [] and result.disconnected == []
    assert b.entry(s2).status & BlockStatus.FAILED
    for blk in (s3, s4):
        entry = b.chain.get(blk.hash)
        assert entry is not None and entry.status & BlockStatus.FAILED_CHILD
    assert not b.entry(s1).failed
    assert tips(b) == {main[-1].hash: ("active", 0), s4.hash: ("invalid", 4)}
    later = b.accept(s5)
    assert (later.status, later.reason) == ("invalid", "bad-prevblk")
    assert_matches_replay(b)
    # The valid prefix remains usable: a heavier branch on s1 wins.
    t = b.branch(3, parent=s1)
    results = [b.accept(blk) for blk in t]
    assert results[-1].status == "connected" and b.chain.tip.hash == t[-1].hash
    assert_matches_replay(b)


# ------------------------------------------------------------------ orphans


def test_orphans_delivered_child_first_connect_when_the_parent_arrives() -> None:
    b = ChainBuilder()
    blocks = b.branch(5)
    for blk in reversed(blocks[1:]):
        result = b.accept(blk)
        assert result.status == "orphan"
        assert result.missing_parent == blk.header.prev_hash
    assert b.chain.orphan_count() == 4
    assert b.chain.height == 0
    assert b.chain.has_block(blocks[3].hash)
    assert b.chain.get_block(blocks[3].hash) is blocks[3]  # served from the orphan pool
    assert b.accept(blocks[2]).status == "duplicate"  # already waiting
    result = b.accept(blocks[0])
    assert result.status == "connected"
    assert hashes(result.connected) == [blk.hash for blk in blocks]
    assert b.chain.tip.hash == blocks[-1].hash
    assert b.chain.orphan_count() == 0
    assert_matches_replay(b)


def test_orphan_pool_is_bounded() -> None:
    b = ChainBuilder(max_orphan_blocks=3)
    blocks = b.branch(7)
    for blk in blocks[1:]:
        assert b.accept(blk).status == "orphan"
    assert b.chain.orphan_count() == 3  # the oldest were dropped: blocks 2, 3 and 4
    assert not b.chain.has_block(blocks[1].hash)
    assert b.chain.has_block(blocks[6].hash)
    assert b.accept(blocks[0]).status == "connected"
    assert b.chain.height == 1
    for blk in blocks[1:3]:
        assert b.accept(blk).status == "connected"
    result = b.accept(blocks[3])  # its descendants were still waiting
    assert hashes(result.connected) == [blk.hash for blk in blocks[3:]]
    assert b.chain.height == 7 and b.chain.orphan_count() == 0


def test_orphan_without_proof_of_work_is_not_pooled() -> None:
    b = ChainBuilder()
    parent = b.block()
    child = b.block(parent, solved=False)
    bad = Block(unsolve(child.header), child.txs)
    result = b.accept(bad)
    assert (result.status, result.reason) == ("invalid", "high-hash")
    assert b.chain.orphan_count() == 0


# ------------------------------------------------------------------ manual invalidation


def test_invalidate_and_reconsider_block() -> None:
    b = ChainBuilder(regtest(coinbase_maturity=1))
    main = b.mine(2)
    main += b.mine(3, txs=[])
    spend = b.spend([coinbase_outpoint(main[0])], fee=10)
    main += b.mine(1, txs=[spend])
    fork = b.branch(4, parent=main[1])  # height 6 too: a tie, main was first
    for blk in fork:
        assert b.accept(blk).status == "side-branch"
    view = chain_view(b.chain)

    result = b.chain.invalidate_block(main[2].hash)
    b.sync()
    assert b.chain.tip.hash == fork[-1].hash
    assert hashes(result.disconnected) == [blk.hash for blk in reversed(main[2:])]
    assert hashes(result.connected) == [blk.hash for blk in fork]
    assert b.entry(main[2]).status & BlockStatus.FAILED
    assert tips(b)[main[-1].hash] == ("invalid", 4)
    assert tips(b)[fork[-1].hash] == ("active", 0)
    assert b.chain.spender(coinbase_outpoint(main[0])) is None
    assert_matches_replay(b)
    # A new block on the invalidated branch is refused.
    assert b.accept(b.block(main[-1])).reason == "bad-prevblk"

    result = b.chain.reconsider_block(main[2].hash)
    b.sync()
    assert b.chain.tip.hash == main[-1].hash  # equal work, seen first
    assert chain_view(b.chain) == view
    assert tips(b)[fork[-1].hash] == ("valid-fork", 4)
    assert_matches_replay(b)

    with pytest.raises(ConsensusError) as info:
        b.chain.invalidate_block(b.genesis.hash)
    assert info.value.reason == "invalid-genesis"
    with pytest.raises(ConsensusError) as info:
        b.chain.invalidate_block(bytes(32))
    assert info.value.reason == "block-not-found"


def test_invalidating_a_side_branch_block_keeps_the_tip() -> None:
    b = ChainBuilder()
    main = b.mine(3)
    side = b.branch(2, parent=main[0])
    for blk in side:
        b.accept(blk)
    result = b.chain.invalidate_block(side[0].hash)
    assert result.reorg_depth == 0 and b.chain.tip.hash == main[-1].hash
    assert tips(b)[side[-1].hash] == ("invalid", 2)
    b.chain.reconsider_block(side[-1].hash)  # reconsidering a descendant clears its ancestors
    assert tips(b)[side[-1].hash] == ("valid-headers", 2)


# ------------------------------------------------------------------ chain tips


def test_chain_tips_statuses() -> None:
    b = ChainBuilder()
    a = b.mine(3)
    # valid-fork: a branch that was active once, then overtaken.
    f = b.branch(4, parent=b.genesis)
    for blk in f:
        b.accept(blk)
    assert b.chain.tip.hash == f[-1].hash
    # valid-headers: bodies stored, never connected (less work).
    v = b.block(f[0])
    assert b.accept(v).status == "side-branch"
    # headers-only: headers accepted without bodies.
    h1 = b.block(f[1])
    h2 = b.block(h1)
    b.chain.accept_header(h1.header, b.now)
    entry = b.chain.accept_header(h2.header, b.now)
    assert entry.height == 4 and not entry.status & BlockStatus.HAVE_DATA
    assert b.chain.best_header.hash == f[-1].hash  # equal work, not more
    # invalid: a block on the tip that breaks a contextual rule.
    bad = b.block(f[-1], reward_delta=1)
    assert b.accept(bad).status == "invalid"
    assert tips(b) == {
        f[-1].hash: ("active", 0),
        bad.hash: ("invalid", 1),
        a[-1].hash: ("valid-fork", 3),
        h2.hash: ("headers-only", 2),
        v.hash: ("valid-headers", 1),
    }
    ordered = [t.height for t in b.chain.chain_tips()]
    assert ordered == sorted(ordered, reverse=True)
    # The headers-only branch gets its bodies (in reverse) and, with one more block, wins.
    h3 = b.block(h2)
    assert b.accept(h3).status == "side-branch"  # parent known as a header only
    assert b.accept(h2).status == "side-branch"
    result = b.accept(h1)
    assert result.status == "connected" and b.chain.tip.hash == h3.hash
    # The old tip has an (invalid) child, so the tip of that branch is the invalid block.
    assert f[-1].hash not in tips(b)
    assert tips(b)[bad.hash] == ("invalid", 3)


def test_header_rules_apply_to_accept_header() -> None:
    b = ChainBuilder()
    blk = b.block(bits=0x203FFFFF)
    with pytest.raises(ConsensusError) as info:
        b.chain.accept_header(blk.header, b.now)
    assert info.value.reason == "bad-diffbits"
    orphan = b.block(b.block())
    with pytest.raises(ConsensusError) as info:
        b.chain.accept_header(orphan.header, b.now)
    assert info.value.reason == "prev-blk-not-found"


# ------------------------------------------------------------------ retargeting


def test_retargeting_raises_and_lowers_difficulty() -> None:
    params = retargeting(window=4)
    b = ChainBuilder(params)
    limit = params.pow_limit
    span = params.target_spacing * params.retarget_window  # 40 s

    def expected(last_bits: int, actual: int) -> int:
        clamped = max(span // 4, min(actual, span * 4))
        return target_to_bits(min(bits_to_target(last_bits) * clamped // span, limit))

    def window(*gaps: int) -> int:
        """Mine the blocks between two retargets with these gaps (seconds); return the bits the
        next (retarget) block must carry, after checking that the old bits are refused."""
        assert (b.chain.height + 1) % params.retarget_window == 1
        for gap in gaps:
            b.mine(1, gap=gap)
        new_bits = b.chain.next_bits(b.chain.tip)
        assert new_bits == expected(b.chain.tip.header.bits, sum(gaps))
        if new_bits != b.chain.tip.header.bits:
            assert b.accept(b.block(bits=b.chain.tip.header.bits)).reason == "bad-diffbits"
        b.mine(1, gap=1)  # the retarget block itself (its own gap is in no window)
        assert b.chain.tip.header.bits == new_bits
        return new_bits

    def target(bits: int) -> int:
        return bits_to_target(bits)

    def compact(t: int) -> int:
        return bits_to_target(target_to_bits(t))

    # The first window counts from genesis: 3 blocks 1 s apart, so 4x harder (the clamp).
    b.mine(3, gap=1)
    first = b.chain.next_bits(b.chain.tip)
    assert first == expected(params.pow_limit_bits, 3) == target_to_bits(limit * 10 // 40)
    assert b.accept(b.block(bits=params.pow_limit_bits)).reason == "bad-diffbits"
    b.mine(1, gap=1)
    assert b.chain.tip.header.bits == first
    assert work_from_target(target(first)) == 4 * work_from_target(limit)

    harder = window(1, 1, 1)  # fast again: 4x harder again, and no more than that
    assert target(harder) == compact(target(first) // 4)
    same = window(10, 15, 15)  # exactly on schedule (40 s): unchanged
    assert same == harder
    half = window(5, 5, 10)  # twice as fast: twice as hard
    assert target(half) == compact(target(harder) // 2)
    easier = window(1000, 1000, 1000)  # very slow: 4x easier, and no more than that
    assert target(easier) == compact(target(half) * 4)
    easier2 = window(1000, 1000, 1000)
    assert target(easier2) == compact(target(easier) * 4)
    assert target(easier2) * 4 > limit
    capped = window(1000, 1000, 1000)  # never easier than the pow limit
    assert capped == params.pow_limit_bits
    assert window(1000, 1000, 1000) == params.pow_limit_bits
    assert span == 40


# ------------------------------------------------------------------ finality


def _finality_story(enforce: bool) -> tuple[ChainBuilder, list[Block], list[Block], list[Any]]:
    b = ChainBuilder(enforce_finality=enforce, finality_depth=3)
    main = b.mine(5)
    # Forks 3 blocks back (at height 2) with 4 blocks: more work than main.
    deep = b.branch(4, parent=main[1])
    results = [b.accept(blk) for blk in deep]
    return b, main, deep, results


def test_finality_refuses_a_deep_reorg() -> None:
    b, main, deep, results = _finality_story(enforce=True)
    assert b.chain.tip.hash == main[-1].hash
    assert results[-1].status == "side-branch"
    assert results[-1].finality_refused == [deep[-1].hash]
    assert not any(r.finality_refused for r in results[:-1])
    assert not b.entry(deep[-1]).failed  # parked, not invalid
    # The parked branch keeps growing and stays refused.
    more = b.block(deep[-1])
    result = b.accept(more)
    assert result.finality_refused == [more.hash] and b.chain.tip.hash == main[-1].hash
    # A fork only 2 blocks back is still allowed to win.
    shallow = b.branch(3, parent=main[2])
    results = [b.accept(blk) for blk in shallow]
    assert [r.status for r in results] == ["side-branch", "side-branch", "connected"]
    assert results[-1].reorg_depth == 2 and not results[-1].finality_refused
    assert b.chain.tip.hash == shallow[-1].hash
    assert_matches_replay(b)


def test_without_finality_the_heavier_branch_wins() -> None:
    b, _main, deep, results = _finality_story(enforce=False)
    assert b.chain.tip.hash == deep[-1].hash
    assert results[-1].status == "connected" and results[-1].reorg_depth == 3
    assert results[-1].finality_refused == []


def test_restart_with_finality_off_takes_the_parked_branch() -> None:
    b, main, deep, _ = _finality_story(enforce=True)
    assert b.chain.tip.hash == main[-1].hash
    resumed = ChainState(b.params, b.store, b.store.load(), enforce_finality=False)
    assert resumed.tip.hash == deep[-1].hash


# ------------------------------------------------------------------ restart


def test_restart_from_snapshot_resumes_the_same_chain() -> None:
    b = ChainBuilder(regtest(coinbase_maturity=1), store=MemoryStore())
    base = b.mine(3)
    b.mine(1, txs=[b.spend([coinbase_outpoint(base[0])], fee=10)])
    side = b.branch(2, parent=base[1])
    for blk in side:
        b.accept(blk)
    b.accept(b.block(b.chain.tip, reward_delta=5))  # an invalid tip too
    headers_only = b.block(side[-1])
    b.chain.accept_header(headers_only.header, b.now)
    b.sync()

    snapshot = b.store.load()
    resumed = ChainState(b.params, b.store, snapshot)
    assert resumed.tip.hash == b.chain.tip.hash
    assert resumed.height == b.chain.height
    assert chain_view(resumed) == chain_view(b.chain)
    assert [(t.hash, t.status, t.branchlen) for t in resumed.chain_tips()] == [
        (t.hash, t.status, t.branchlen) for t in b.chain.chain_tips()
    ]
    # It carries on: a new block connects, and a reorg onto the stored side branch works,
    # reading bodies and undo data back from the store.
    b.chain = resumed
    nxt = b.block()
    assert b.accept(nxt).status == "connected"
    longer = b.branch(4, parent=side[-1])  # heights 5-8 against the tip's 5
    results = [b.accept(blk) for blk in longer]
    assert [r.reorg_depth for r in results] == [0, 3, 0, 0]
    assert b.chain.tip.hash == longer[-1].hash
    assert_matches_replay(b)


def test_restart_refuses_another_networks_store() -> None:
    b = ChainBuilder()
    b.mine(2)
    with pytest.raises(ConsensusError) as info:
        ChainState(regtest(coinbase_maturity=7), b.store, b.store.load())
    assert info.value.reason in ("bad-genesis", "bad-store")


def test_deep_reorg_reads_blocks_and_undo_from_the_store() -> None:
    # Deeper than the chain state's 256-block cache, so disconnecting needs the store.
    b = ChainBuilder(regtest(coinbase_maturity=1))
    base = b.mine(2)
    b.mine(1, txs=[b.spend([coinbase_outpoint(base[0])], fee=10)])
    b.mine(265)  # tip at height 268
    side = b.branch(267, parent=base[1])  # heights 3-269
    for blk in side[:-1]:
        assert b.accept(blk).status == "side-branch"
    result = b.accept(side[-1])
    assert result.status == "connected" and result.reorg_depth == 266
    assert coinbase_outpoint(base[0]) in b.chain.utxo
    assert_matches_replay(b)


def test_finality_conflict_names_the_heavier_branch_and_its_transactions() -> None:
    # Boundary: finality depth 3 means a transaction with 3 confirmations is final, so a reorg
    # disconnecting 3 blocks (reverting it) is refused, while one disconnecting 2 is allowed
    # (test_finality_refuses_a_deep_reorg).
    b, main, deep, _ = _finality_story(enforce=True)
    [conflict] = b.chain.finality_conflicts()
    assert conflict.tip.hash == deep[-1].hash and conflict.depth == 3
    assert conflict.fork.hash == main[1].hash and conflict.fork.height == 2
    assert b.chain.confirmations(b.entry(main[2])) == 3  # the final block it would revert
    data = conflict.to_json()
    assert data["hash"] == deep[-1].hash.hex() and data["fork_height"] == 2
    assert deep[-1].hash.hex() in conflict.warning() and "height 6" in conflict.warning()
    coinbase = deep[0].txs[0].txid
    assert b.chain.branch_has_tx(conflict, coinbase)
    assert not b.chain.branch_has_tx(conflict, main[2].txs[0].txid)
    # Once our own branch has more work again, the warning goes away.
    b.mine(2)
    assert b.chain.finality_conflicts() == []


def test_finality_conflict_resolved_by_invalidate_and_reconsider() -> None:
    b, _main, deep, _ = _finality_story(enforce=True)
    [conflict] = b.chain.finality_conflicts()
    # What `powlab testnet heal --resolve` does: invalidate our first block after the fork,
    # then reconsider the refused tip (which un-parks it); the reorg is then 0 blocks deep.
    b.chain.invalidate_block(b.chain.active[conflict.fork.height + 1].hash)
    b.chain.reconsider_block(conflict.tip.hash)
    assert b.chain.tip.hash == deep[-1].hash
    assert b.chain.finality_conflicts() == []
