"""Time locks (Bitcoin's nLockTime): finality in blocks (parent's median time past as the clock,
BIP113), the mempool's `non-final` refusal and its removals on reorgs, block templates, relay
without penalty, and `is_final_tx` against a restatement of the rule. Real nodes: see
test_locktime_node.py."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consensus.block import Block
from consensus.blockbuild import assemble_block, solve_block
from consensus.errors import ConsensusError
from consensus.hashing import merkle_root
from consensus.mempool import NON_FINAL
from consensus.tx import (
    LOCKTIME_THRESHOLD,
    SEQUENCE_FINAL,
    U32_MAX,
    OutPoint,
    Transaction,
    TxIn,
    TxOut,
    sign_transaction,
)
from consensus.validation import is_final_tx
from p2p.messages import BlockMsg, TxMsg
from tests.p2p_helpers import (
    build_block,
    envelope,
    fund,
    info_of,
    key_of,
    link,
    network,
    run_until,
    send_as,
)
from tests.test_mempool import KEY, PARAMS, PKH, REWARD, Env

NON_FINAL_SEQUENCE = SEQUENCE_FINAL - 1
FEE = 1_000


def locked(
    inputs: Sequence[OutPoint],
    locktime: int,
    sequences: Sequence[int] | None = None,
    value: int = REWARD,
) -> Transaction:
    """A signed spend of `inputs` (each worth `value`) with `locktime`; inputs default to a
    sequence that leaves the lock active."""
    sequences = sequences or [NON_FINAL_SEQUENCE] * len(inputs)
    unsigned = Transaction(
        [TxIn(op.txid, op.index, b"", b"", seq) for op, seq in zip(inputs, sequences, strict=True)],
        [TxOut(value * len(inputs) - FEE, PKH)],
        locktime=locktime,
    )
    return sign_transaction(unsigned, [KEY] * len(inputs), PARAMS.genesis_hash)


def tip_mtp(env: Env) -> int:
    return env.chain.median_time_past(env.chain.tip)


def reason_of(env: Env, tx: Transaction) -> str:
    with pytest.raises(ConsensusError) as info:
        env.accept(tx)
    return info.value.reason


# ------------------------------------------------------------------ the mempool


def test_mempool_height_lock_boundary() -> None:
    env = Env(blocks=4)
    h = env.chain.height
    at_tip = locked([env.coinbase(1)], h)
    next_height = locked([env.coinbase(2)], h + 1)
    env.accept(at_tip)  # final in block h + 1
    with pytest.raises(ConsensusError) as info:
        env.accept(next_height)
    assert info.value.reason == NON_FINAL
    message = str(info.value)
    assert message.startswith("non-final: ") and f"from height {h + 2} on" in message
    assert f"next block is at height {h + 1}" in message
    assert next_height.txid not in env.pool

    env.mine_and_update([at_tip])
    assert env.chain.height == h + 1
    env.accept(next_height)  # final in block h + 2 now
    assert next_height.txid in env.pool


def test_mempool_time_lock_boundary() -> None:
    env = Env(blocks=4)
    mtp = tip_mtp(env)
    assert mtp >= LOCKTIME_THRESHOLD  # a time lock, compared with median time past
    at_mtp = locked([env.coinbase(1)], mtp)
    before_mtp = locked([env.coinbase(2)], mtp - 1)
    with pytest.raises(ConsensusError) as info:
        env.accept(at_mtp)
    assert info.value.reason == NON_FINAL and f"it is {mtp}" in str(info.value)
    env.accept(before_mtp)
    # The tip's own timestamp is past the lock: the clock is the median, not the newest block.
    assert env.chain.tip.header.timestamp > mtp

    env.mine_and_update()
    assert tip_mtp(env) > mtp
    env.accept(at_mtp)


def test_final_sequences_disable_the_lock() -> None:
    env = Env(blocks=4)
    far = env.chain.height + 1_000
    escaped = locked([env.coinbase(1)], far, [SEQUENCE_FINAL])
    env.accept(escaped)
    far_time = locked([env.coinbase(2)], U32_MAX, [SEQUENCE_FINAL])
    env.accept(far_time)
    # One input with a non-final sequence is enough to make the lock count.
    env2 = Env(blocks=4)
    mixed = locked([env2.coinbase(1), env2.coinbase(2)], far, [SEQUENCE_FINAL, 0])
    assert reason_of(env2, mixed) == NON_FINAL


def test_non_final_is_refused_before_orphan_parking() -> None:
    """Core checks finality before looking up inputs: a locked transaction with an unknown
    parent is refused at once, not kept in the orphan pool for later."""
    env = Env(blocks=4)
    tx = locked([OutPoint(b"\x01" * 32, 0)], env.chain.height + 5)
    assert reason_of(env, tx) == NON_FINAL
    assert env.pool.orphan_count() == 0


def test_reorg_removes_what_is_no_longer_final() -> None:
    env = Env(blocks=6)
    h = env.chain.height
    returned = locked([env.coinbase(1)], h)  # mined in block h + 1, then disconnected
    env.accept(returned)
    env.mine_and_update([returned])
    assert env.chain.tx_block(returned.txid) is not None
    by_height = locked([env.coinbase(2)], h + 1)  # final in block h + 2
    env.accept(by_height)
    child = sign_transaction(
        Transaction([TxIn(by_height.txid, 0, b"", b"")], [TxOut(REWARD - 2 * FEE, PKH)]),
        [KEY],
        PARAMS.genesis_hash,
    )
    env.accept(child)
    by_time = locked([env.coinbase(3)], tip_mtp(env) - 1)
    env.accept(by_time)
    untouched = locked([env.coinbase(4)], 0)
    env.accept(untouched)

    # Disconnect blocks h + 1 and h: the tip is h - 1, so the next block is at height h, and
    # the median time past falls back.
    result = env.chain.invalidate_block(env.block_at(h).hash)
    update = env.pool.update_for_chain(result, env.chain, env.now)
    assert env.chain.height == h - 1
    assert tip_mtp(env) <= by_time.locktime
    removed = {returned.txid, by_height.txid, child.txid, by_time.txid}
    assert set(update.removed) == removed
    assert all(update.removed_reasons[t] == NON_FINAL for t in removed)
    assert update.returned == [] and not update.conflicted
    assert env.pool.txids() == [untouched.txid]


def test_reorg_keeps_what_stays_final() -> None:
    env = Env(blocks=4)
    h = env.chain.height
    tx = locked([env.coinbase(1)], h - 1)
    env.accept(tx)
    env.mine_and_update([tx])
    result = env.chain.invalidate_block(env.chain.tip.hash)
    update = env.pool.update_for_chain(result, env.chain, env.now)
    assert update.returned == [tx.txid] and not update.removed
    assert tx.txid in env.pool


# ------------------------------------------------------------------ blocks


def block_with(env: Env, txs: Sequence[Transaction], timestamp: int | None = None) -> Block:
    return env.make_block(txs, timestamp=timestamp)


def test_block_height_boundary() -> None:
    env = Env(blocks=4)
    h = env.chain.height
    early = block_with(env, [locked([env.coinbase(1)], h + 1)])
    result = env.chain.accept_block(early, env.now)
    assert (result.status, result.reason) == ("invalid", "bad-txns-nonfinal")
    entry = env.chain.get(early.hash)
    assert entry is not None and entry.failed
    assert env.chain.height == h
    # Its descendants are invalid with it.
    child = env.make_block(prev=entry)
    assert env.chain.accept_block(child, env.now).status == "invalid"

    on_time = block_with(env, [locked([env.coinbase(1)], h)])
    assert env.chain.accept_block(on_time, env.now).status == "connected"


def test_block_time_boundary_uses_the_parents_median_time_past() -> None:
    env = Env(blocks=4)
    mtp = tip_mtp(env)
    # The block's own timestamp is well past the lock; only the parent's median counts.
    late_stamp = env.time + 100
    early = block_with(env, [locked([env.coinbase(1)], mtp)], timestamp=late_stamp)
    assert early.header.timestamp > mtp
    result = env.chain.accept_block(early, late_stamp)
    assert (result.status, result.reason) == ("invalid", "bad-txns-nonfinal")
    on_time = block_with(env, [locked([env.coinbase(1)], mtp - 1)], timestamp=late_stamp)
    assert env.chain.accept_block(on_time, late_stamp).status == "connected"


def test_block_with_final_sequences_is_valid_whatever_the_lock() -> None:
    env = Env(blocks=4)
    tx = locked([env.coinbase(1)], U32_MAX, [SEQUENCE_FINAL])
    assert env.chain.accept_block(block_with(env, [tx]), env.now).status == "connected"


def test_non_final_coinbase_makes_the_block_invalid() -> None:
    env = Env(blocks=4)
    h = env.chain.height
    template = assemble_block(env.chain, [], 0, PKH, env.time + 20, 7)
    coinbase = template.txs[0]
    locked_cb = Transaction(
        [coinbase.inputs[0]._replace(sequence=0)], coinbase.outputs, locktime=h + 1
    )
    header = dataclasses.replace(template.header, merkle_root=merkle_root([locked_cb.txid]))
    block = solve_block(Block(header, [locked_cb]))
    assert block is not None
    result = env.chain.accept_block(block, env.now + 20)
    assert (result.status, result.reason) == ("invalid", "bad-txns-nonfinal")


# ------------------------------------------------------------------ block templates


def test_templates_take_only_transactions_final_in_that_block() -> None:
    env = Env(blocks=4)
    h = env.chain.height
    tx = locked([env.coinbase(1)], h)
    env.accept(tx)
    child = sign_transaction(
        Transaction([TxIn(tx.txid, 0, b"", b"")], [TxOut(REWARD - 2 * FEE, PKH)]),
        [KEY],
        PARAMS.genesis_hash,
    )
    env.accept(child)
    free = locked([env.coinbase(2)], 0)
    env.accept(free)
    limit = PARAMS.max_block_size
    mtp = tip_mtp(env)
    taken, _ = env.pool.select_for_block(limit, env.chain.lock_time_clock())
    assert {t.txid for t in taken} == {tx.txid, child.txid, free.txid}
    # A template for a block at height h (another branch's): the locked one and its child out.
    taken, fees = env.pool.select_for_block(limit, (h, mtp))
    assert [t.txid for t in taken] == [free.txid] and fees == FEE
    assert env.chain.lock_time_clock() == (h + 1, mtp)


# ------------------------------------------------------------------ relay


def test_peer_relaying_non_final_tx_is_not_punished_but_invalid_block_is() -> None:
    net, (a, b) = network(2, seed=16)
    link(net, a, b)
    [funded] = fund(b, 1)
    run_until(net, lambda: a.chain.tip.hash == b.chain.tip.hash, 60, "a syncs")
    h = b.chain.height
    coinbase = funded.txs[0]
    unsigned = Transaction(
        [TxIn(coinbase.txid, 0, b"", b"", NON_FINAL_SEQUENCE)],
        [TxOut(coinbase.outputs[0].amount - FEE, b.payout_pkh)],
        locktime=h + 1,
    )
    tx = sign_transaction(unsigned, [b.wallet_key], b.params.genesis_hash)

    send_as(net, b, a, envelope(a, TxMsg(tx.encode())))
    assert tx.txid not in a.mempool
    row = info_of(a, b)
    assert row["misbehavior"] == 0 and row["penalties"] == [] and row["status"] == "established"

    # Final once the tip reaches h + 1: the same transaction relayed again gets in (it was not
    # remembered as rejected).
    b.mine(txs=False)
    run_until(net, lambda: a.chain.height == h + 1, 60, "a follows")
    send_as(net, b, a, envelope(a, TxMsg(tx.encode())))
    assert tx.txid in a.mempool

    # A block holding a transaction that is not final in it is invalid: its sender is cut off.
    later = Transaction(
        [TxIn(coinbase.txid, 0, b"", b"", NON_FINAL_SEQUENCE)],
        [TxOut(coinbase.outputs[0].amount - 2 * FEE, b.payout_pkh)],
        locktime=h + 2,
    )
    later = sign_transaction(later, [b.wallet_key], b.params.genesis_hash)
    bad = build_block(b, [later])
    send_as(net, b, a, envelope(a, BlockMsg(bad.encode())))
    entry = a.chain.get(bad.hash)
    assert entry is None or entry.failed
    assert a.chain.height == h + 1
    assert key_of(b) in a.p2p.book.list_banned(net.now)


# ------------------------------------------------------------------ the rule itself


def restated_final(locktime: int, sequences: Sequence[int], height: int, block_time: int) -> bool:
    """Bitcoin's rule said the other way round: locked while the clock the lock time names
    (a height below 500000000, else a time) has not passed it, unless every input opted out."""
    if locktime == 0 or all(s == U32_MAX for s in sequences):
        return True
    clock = block_time if locktime >= 500_000_000 else height
    return clock > locktime


heights = st.integers(min_value=0, max_value=LOCKTIME_THRESHOLD + 10)
times = st.integers(min_value=0, max_value=U32_MAX)
locktimes = st.one_of(
    st.integers(min_value=0, max_value=U32_MAX),
    st.integers(min_value=LOCKTIME_THRESHOLD - 3, max_value=LOCKTIME_THRESHOLD + 3),
    st.sampled_from([0, 1, U32_MAX]),
)
sequences = st.lists(
    st.one_of(st.sampled_from([0, SEQUENCE_FINAL - 1, SEQUENCE_FINAL]), st.integers(0, U32_MAX)),
    min_size=1,
    max_size=4,
)


@settings(max_examples=400, derandomize=True, deadline=None)
@given(locktime=locktimes, seqs=sequences, height=heights, block_time=times)
def test_is_final_tx_matches_the_rule(
    locktime: int, seqs: list[int], height: int, block_time: int
) -> None:
    tx = Transaction(
        [TxIn(bytes([n + 1]) * 32, n, b"", b"", s) for n, s in enumerate(seqs)],
        [TxOut(1, PKH)],
        locktime=locktime,
    )
    assert is_final_tx(tx, height, block_time) == restated_final(locktime, seqs, height, block_time)
    # Monotone in the clock: once final, final at every later height and time.
    if is_final_tx(tx, height, block_time):
        assert is_final_tx(tx, height + 1, block_time + 1)
    # Height locks ignore the time and time locks the height.
    if locktime < LOCKTIME_THRESHOLD:
        assert is_final_tx(tx, height, 0) == is_final_tx(tx, height, U32_MAX)
    else:
        assert is_final_tx(tx, 0, block_time) == is_final_tx(tx, LOCKTIME_THRESHOLD, block_time)
