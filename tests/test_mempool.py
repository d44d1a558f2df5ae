"""Tests for consensus.mempool: policy, orphans, eviction, block templates and chain changes."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import consensus.validation
from consensus.block import Block, tx_space_in_block
from consensus.blockbuild import assemble_block, solve_block
from consensus.chainstate import AcceptResult, BlockIndex, ChainState
from consensus.errors import ConsensusError
from consensus.keys import PrivateKey, pubkey_hash
from consensus.mempool import AcceptOutcome, Mempool, MempoolConflict, MempoolUpdate
from consensus.params import REGTEST, ChainParams
from consensus.tx import OutPoint, Transaction, TxIn, TxOut, sign_transaction

PARAMS = REGTEST.with_overrides({"coinbase_maturity": 2})
KEY = PrivateKey(bytes(range(32)))
OTHER_KEY = PrivateKey(bytes(range(1, 33)))
PKH = pubkey_hash(KEY.public_key)
REWARD = PARAMS.initial_reward
# Block spacing that leaves the difficulty unchanged under `_retarget_params` (a 2-block window
# measures one 20 s interval against 2 × 10 s). Slower blocks would hit a bug in
# `consensus.pow.retarget`: at regtest's pow limit, easing overflows 256 bits and raises.
SPACING = 20


class NullReader:
    def get_block_bytes(self, block_hash: bytes) -> bytes | None:
        return None

    def get_undo_bytes(self, block_hash: bytes) -> bytes | None:
        return None


class Env:
    """A chain on which every block pays its coinbase to KEY, and a mempool sharing its cache."""

    def __init__(self, params: ChainParams = PARAMS, blocks: int = 4, **pool_options: int) -> None:
        self.params = params
        self.chain = ChainState(params, NullReader())
        self.pool = Mempool(params, signature_cache=self.chain.signature_cache, **pool_options)
        self.time = params.genesis_timestamp
        self.extra = 0
        for _ in range(blocks):
            self.mine()

    @property
    def now(self) -> int:
        return self.time + 1

    def block_at(self, height: int, tip: BlockIndex | None = None) -> BlockIndex:
        return (tip or self.chain.tip).ancestor(height)

    def coinbase(self, height: int) -> OutPoint:
        block = self.chain.get_block(self.block_at(height).hash)
        assert block is not None
        return OutPoint(block.txs[0].txid, 0)

    def make_block(
        self,
        txs: Sequence[Transaction] = (),
        prev: BlockIndex | None = None,
        timestamp: int | None = None,
    ) -> Block:
        """A solved block; `timestamp` (default: SPACING after the last) leaves the clock be."""
        if timestamp is None:
            self.time += SPACING
            timestamp = self.time
        self.extra += 1  # distinct coinbases on competing branches
        block = solve_block(
            assemble_block(self.chain, list(txs), 0, PKH, timestamp, self.extra, prev)
        )
        assert block is not None
        return block

    def mine(
        self,
        txs: Sequence[Transaction] = (),
        prev: BlockIndex | None = None,
        timestamp: int | None = None,
    ) -> AcceptResult:
        result = self.chain.accept_block(self.make_block(txs, prev, timestamp), self.now)
        assert result.status in ("connected", "side-branch"), result.reason
        return result

    def mine_and_update(self, txs: Sequence[Transaction] = ()) -> MempoolUpdate:
        result = self.mine(txs)
        return self.pool.update_for_chain(result, self.chain, self.now)

    def accept(self, tx: Transaction) -> AcceptOutcome:
        return self.pool.accept(tx, self.chain, self.now)


def spend(
    inputs: Sequence[OutPoint], amounts: Sequence[int], key: PrivateKey = KEY,
    params: ChainParams = PARAMS,
) -> Transaction:
    unsigned = Transaction(
        [TxIn(op.txid, op.index, b"", b"") for op in inputs], [TxOut(a, PKH) for a in amounts]
    )
    return sign_transaction(unsigned, [key] * len(inputs), params.genesis_hash)


def split(op: OutPoint, value: int, fee: int, outputs: int = 2) -> Transaction:
    """Spend `op` (worth `value`) into `outputs` equal-ish outputs paying `fee`."""
    each = (value - fee) // outputs
    amounts = [each] * (outputs - 1) + [value - fee - each * (outputs - 1)]
    return spend([op], amounts)


def out(tx: Transaction, index: int = 0) -> OutPoint:
    return OutPoint(tx.txid, index)


# ------------------------------------------------------------------ acceptance rules


def test_accepts_valid_spend_and_reports_entry() -> None:
    env = Env()
    tx = split(env.coinbase(1), REWARD, 1000)
    outcome = env.accept(tx)
    assert outcome.accepted == [tx.txid] and not outcome.orphan and not outcome.evicted
    entry = env.pool.get(tx.txid)
    assert entry is not None
    assert tx.txid in env.pool and len(env.pool) == 1 and env.pool.txids() == [tx.txid]
    assert entry.fee == 1000 and entry.size == tx.size == env.pool.bytes
    assert entry.fee_rate == pytest.approx(1000 / tx.size)
    assert entry.time == env.now and entry.parents == set() and entry.children == set()
    assert env.pool.usage > env.pool.bytes
    assert env.pool.spender_of(env.coinbase(1)) == tx.txid


def test_first_seen_wins_and_error_names_the_conflict() -> None:
    env = Env()
    first = split(env.coinbase(1), REWARD, 1000)
    second = split(env.coinbase(1), REWARD, 50_000)  # pays more: still refused
    env.accept(first)
    with pytest.raises(MempoolConflict) as info:
        env.accept(second)
    assert info.value.reason == "txn-mempool-conflict"
    assert info.value.conflicting == [first.txid]
    assert first.txid.hex() in str(info.value)
    assert env.pool.conflicts_of(second) == [first.txid]
    assert env.pool.conflicts_of(first) == []
    assert env.pool.txids() == [first.txid]


def test_rejection_reasons() -> None:
    env = Env()
    tx = split(env.coinbase(1), REWARD, 1000)
    env.accept(tx)
    cases: list[tuple[Transaction, str]] = [
        (tx, "txn-already-in-mempool"),
        (env.chain.get_block(env.chain.tip.hash).txs[0], "coinbase"),  # type: ignore[union-attr]
        (Transaction([TxIn(env.coinbase(2).txid, 0, b"", b"")], [TxOut(1, PKH)]),
         "bad-txns-unsigned"),
        (spend([env.coinbase(2)], []), "bad-txns-vout-empty"),
        (spend([env.coinbase(2)], [REWARD + 1]), "bad-txns-in-belowout"),
        (spend([env.coinbase(2)], [REWARD - 1000], key=OTHER_KEY), "bad-txns-pubkey-mismatch"),
        (spend([env.coinbase(2)], [REWARD]), "min-relay-fee-not-met"),
        (spend([out(tx, 5)], [1]), "bad-txns-inputs-missingorspent"),  # no such pool output
    ]
    bad_sig = spend([env.coinbase(2)], [REWARD - 1000])
    forged = Transaction(
        [bad_sig.inputs[0]._replace(signature=bytes(64))], bad_sig.outputs
    )
    cases.append((forged, "bad-txns-bad-signature"))
    for bad, reason in cases:
        with pytest.raises(ConsensusError) as info:
            env.accept(bad)
        assert info.value.reason == reason, (reason, info.value)
    assert env.pool.txids() == [tx.txid]


def test_already_known_and_spent_in_chain() -> None:
    env = Env()
    tx = split(env.coinbase(1), REWARD, 1000)
    env.mine([tx])
    with pytest.raises(ConsensusError, match="txn-already-known"):
        env.accept(tx)
    # The parent is confirmed, so the output is spent, not missing: no orphan.
    double = split(env.coinbase(1), REWARD, 2000)
    with pytest.raises(ConsensusError, match="bad-txns-inputs-missingorspent"):
        env.accept(double)
    assert env.pool.orphan_count() == 0


def test_min_fee_rate_is_configurable() -> None:
    env = Env(min_fee_rate=5)
    low = split(env.coinbase(1), REWARD, 4 * 200)
    assert low.size < 200
    with pytest.raises(ConsensusError, match="min-relay-fee-not-met"):
        env.accept(low)
    env.accept(split(env.coinbase(1), REWARD, 5 * 300))
    assert env.pool.min_fee_rate == 5


def test_coinbase_maturity_at_the_mempool_boundary() -> None:
    env = Env(blocks=3)
    # Tip 3: the next block is 4, where the coinbase of block 3 has depth 1 < 2.
    young = split(env.coinbase(3), REWARD, 1000)
    with pytest.raises(ConsensusError, match="bad-txns-premature-spend-of-coinbase"):
        env.accept(young)
    env.accept(split(env.coinbase(2), REWARD, 1000))  # depth 2: spendable in block 4
    env.mine_and_update()
    assert env.accept(young).accepted == [young.txid]


def test_chains_of_unconfirmed_transactions() -> None:
    env = Env()
    a = split(env.coinbase(1), REWARD, 1000)
    b = split(out(a, 0), a.outputs[0].amount, 1000)
    c = split(out(b, 1), b.outputs[1].amount, 1000)
    for tx in (a, b, c):
        env.accept(tx)
    ea, eb, ec = (env.pool.get(t.txid) for t in (a, b, c))
    assert ea and eb and ec
    assert eb.parents == {a.txid} and ea.children == {b.txid} and ec.parents == {b.txid}
    assert ea.descendant_count == 3 and ea.descendant_fee == 3000
    assert env.pool.snapshot() == [(t.encode(), env.now) for t in (a, b, c)]
    txs, fees = env.pool.select_for_block(1_000_000)
    assert txs == [a, b, c] and fees == 3000
    result = env.mine(txs)
    assert result.status == "connected"


def test_ancestor_limit() -> None:
    env = Env(max_ancestors=2)
    a = split(env.coinbase(1), REWARD, 1000)
    b = split(out(a), a.outputs[0].amount, 1000)
    c = split(out(b), b.outputs[0].amount, 1000)
    env.accept(a)
    env.accept(b)
    with pytest.raises(ConsensusError, match="too-long-mempool-chain"):
        env.accept(c)


def test_descendant_limit() -> None:
    env = Env(max_descendants=2)
    a = split(env.coinbase(1), REWARD, 1000)
    env.accept(a)
    env.accept(split(out(a, 0), a.outputs[0].amount, 1000))
    with pytest.raises(ConsensusError, match="too-long-mempool-chain"):
        env.accept(split(out(a, 1), a.outputs[1].amount, 1000))


# ------------------------------------------------------------------ block templates


def test_select_orders_by_fee_rate_and_child_pays_for_parent() -> None:
    env = Env(blocks=6)
    low = split(env.coinbase(1), REWARD, 300)
    mid = split(env.coinbase(2), REWARD, 5_000)
    parent = split(env.coinbase(3), REWARD, 250)  # alone the worst rate...
    child = split(out(parent), parent.outputs[0].amount, 20_000)  # ...but its child pays for it
    for tx in (low, mid, parent, child):
        env.accept(tx)
    txs, fees = env.pool.select_for_block(1_000_000)
    assert txs == [parent, child, mid, low]
    assert fees == 300 + 5_000 + 250 + 20_000
    # Room for two: the parent+child package beats `mid`, and the child never comes alone.
    room = parent.size + child.size + 10
    txs, fees = env.pool.select_for_block(room)
    assert txs == [parent, child] and fees == 20_250
    # Room for one: the child cannot go without its parent, so `mid` wins.
    txs, _ = env.pool.select_for_block(tx_space_in_block(max(mid.size, parent.size)))
    assert txs == [mid]
    assert env.pool.select_for_block(10) == ([], 0)


def test_selected_template_is_a_valid_block() -> None:
    env = Env(blocks=8)
    txs = []
    for h in range(1, 6):
        tx = split(env.coinbase(h), REWARD, 1000 * h, outputs=3)
        txs.append(tx)
        env.accept(tx)
        child = split(out(tx, 2), tx.outputs[2].amount, 700)
        env.accept(child)
    selected, fees = env.pool.select_for_block(1_000_000)
    assert len(selected) == 10
    block = solve_block(assemble_block(env.chain, selected, fees, PKH, env.time + SPACING))
    assert block is not None
    result = env.chain.accept_block(block, env.now + SPACING)
    assert result.status == "connected", result.reason
    update = env.pool.update_for_chain(result, env.chain, env.now + SPACING)
    assert sorted(update.included) == sorted(t.txid for t in selected)
    assert len(env.pool) == 0 and env.pool.bytes == 0


# ------------------------------------------------------------------ size limit


def test_size_limit_evicts_lowest_fee_rate_with_descendants() -> None:
    env = Env(blocks=6)
    # The parent's package (450/size) is the cheapest: the child (600/size) goes with it.
    cheap = split(env.coinbase(1), REWARD, 300)
    cheap_child = split(out(cheap), cheap.outputs[0].amount, 600)
    dear = split(env.coinbase(2), REWARD, 5_000)
    newcomer = split(env.coinbase(3), REWARD, 3_000)
    budget = cheap.size + cheap_child.size + dear.size + 5
    env.pool.max_bytes = budget
    for tx in (cheap, cheap_child, dear):
        env.accept(tx)
    outcome = env.accept(newcomer)
    assert outcome.accepted == [newcomer.txid]
    assert outcome.evicted == [cheap.txid, cheap_child.txid]
    assert set(env.pool.txids()) == {dear.txid, newcomer.txid}
    assert env.pool.bytes <= budget
    assert env.pool.spender_of(env.coinbase(1)) is None
    # The floor rose above what was evicted, and decays back over time.
    assert env.pool.min_fee_rate == pytest.approx(900 / (cheap.size + cheap_child.size) + 1)
    env.pool.update_for_chain(AcceptResult(b"", "none"), env.chain, env.now + 10 * 24 * 3600)
    assert env.pool.min_fee_rate == env.pool.min_relay_fee_rate


def test_mempool_full_rejects_a_newcomer_not_paying_more() -> None:
    env = Env(blocks=6)
    a = split(env.coinbase(1), REWARD, 2_000)
    b = split(env.coinbase(2), REWARD, 2_000)
    env.pool.max_bytes = a.size + b.size + 5
    env.accept(a)
    env.accept(b)
    same = split(env.coinbase(3), REWARD, 2_000)
    assert same.size == a.size
    with pytest.raises(ConsensusError) as info:
        env.accept(same)
    assert info.value.reason == "mempool-full"
    assert env.pool.txids() == [a.txid, b.txid]
    assert env.pool.min_fee_rate == env.pool.min_relay_fee_rate  # nothing was evicted
    # A child of a pool entry cannot evict its own parent to make room.
    child = split(out(a), a.outputs[0].amount, 50_000)
    outcome = env.accept(child)
    assert outcome.evicted == [b.txid]
    assert set(env.pool.txids()) == {a.txid, child.txid}


def test_too_big_for_the_whole_pool() -> None:
    env = Env(max_bytes=100)
    with pytest.raises(ConsensusError, match="mempool-full"):
        env.accept(split(env.coinbase(1), REWARD, 10_000))


# ------------------------------------------------------------------ orphans


def test_orphan_is_adopted_when_its_parent_arrives() -> None:
    env = Env()
    parent = split(env.coinbase(1), REWARD, 1000)
    child = split(out(parent), parent.outputs[0].amount, 1000)
    grandchild = split(out(child), child.outputs[0].amount, 1000)
    outcome = env.accept(grandchild)
    assert outcome.orphan and outcome.missing_parents == [child.txid] and not outcome.accepted
    assert env.accept(child).missing_parents == [parent.txid]
    assert env.pool.orphan_count() == 2 and env.pool.has_orphan(child.txid)
    assert len(env.pool) == 0
    outcome = env.accept(parent)
    assert outcome.accepted == [parent.txid, child.txid, grandchild.txid]
    assert env.pool.orphan_count() == 0


def test_orphan_pool_is_bounded_and_expires() -> None:
    env = Env(max_orphans=2, orphan_expiry=60)
    parents = [split(env.coinbase(h), REWARD, 1000) for h in (1, 2, 3)]
    orphans = [split(out(p), p.outputs[0].amount, 1000) for p in parents]
    for tx in orphans:
        assert env.accept(tx).orphan
    assert env.pool.orphan_count() == 2
    assert not env.pool.has_orphan(orphans[0].txid)  # oldest went first
    assert env.accept(parents[0]).accepted == [parents[0].txid]
    env.time += 61
    env.accept(parents[1])  # expiry runs first: the waiting child is gone
    assert env.pool.orphan_count() == 0
    assert orphans[1].txid not in env.pool


def test_bad_orphan_is_reported_when_retried() -> None:
    env = Env()
    parent = split(env.coinbase(1), REWARD, 1000)
    greedy = spend([out(parent)], [parent.outputs[0].amount + 1])
    assert env.accept(greedy).orphan
    outcome = env.accept(parent)
    assert outcome.accepted == [parent.txid]
    assert outcome.orphans_rejected == [(greedy.txid, "bad-txns-in-belowout")]


def test_orphan_adopted_when_its_parent_is_mined() -> None:
    env = Env()
    parent = split(env.coinbase(1), REWARD, 1000)
    child = split(out(parent), parent.outputs[0].amount, 1000)
    assert env.accept(child).orphan
    update = env.mine_and_update([parent])
    assert update.orphans_accepted == [child.txid]
    assert child.txid in env.pool


# ------------------------------------------------------------------ chain changes


def test_block_removes_included_and_conflicting_transactions() -> None:
    env = Env(blocks=6)
    a = split(env.coinbase(1), REWARD, 1000)
    a_child = split(out(a), a.outputs[0].amount, 1000)
    b = split(env.coinbase(2), REWARD, 1000)
    b_child = split(out(b), b.outputs[0].amount, 1000)
    keep = split(env.coinbase(3), REWARD, 1000)
    for tx in (a, a_child, b, b_child, keep):
        env.accept(tx)
    rival = split(env.coinbase(2), REWARD, 9_000)  # a double spend of b, mined directly
    update = env.mine_and_update([a, rival])
    assert update.included == [a.txid]
    assert update.conflicted == [b.txid, b_child.txid]
    assert update.conflicted_with == {b.txid: rival.txid, b_child.txid: rival.txid}
    assert set(env.pool.txids()) == {a_child.txid, keep.txid}
    entry = env.pool.get(a_child.txid)
    assert entry is not None and entry.parents == set()
    assert env.pool.bytes == a_child.size + keep.size
    assert env.pool.spender_of(env.coinbase(2)) is None


def _retarget_params() -> ChainParams:
    # Retargeting every 2 blocks lets a branch of fast blocks get harder, so that a shorter
    # branch can carry more work.
    return REGTEST.with_overrides(
        {"coinbase_maturity": 4, "no_retarget": False, "retarget_window": 2}
    )


def test_reorg_to_a_shorter_chain_with_more_work() -> None:
    params = _retarget_params()
    env = Env(params, blocks=6)
    fork = env.chain.tip  # height 6
    t1 = spend([env.coinbase(1)], [REWARD - 1000], params=params)
    t2 = spend([env.coinbase(2)], [REWARD - 1000], params=params)
    t2_rival = spend([env.coinbase(2)], [REWARD - 3000], params=params)
    env.accept(t1)
    env.accept(t2)
    env.mine_and_update([t1])  # 7
    env.mine_and_update([t2])  # 8
    env.mine_and_update()  # 9
    env.mine_and_update()  # 10
    assert env.chain.height == 10
    x1 = spend([env.coinbase(6)], [REWARD - 1000], params=params)  # mature only at height 10
    x2 = spend([env.coinbase(7)], [REWARD - 1000], params=params)  # on the losing branch
    x3 = spend([out(x2)], [REWARD - 2000], params=params)
    x4 = spend([out(t1)], [REWARD - 2000], params=params)  # its parent goes back to the pool
    for tx in (x1, x2, x3, x4):
        assert env.accept(tx).accepted == [tx.txid]
    old_branch = [env.chain.at_height(h).hash for h in range(7, 11)]  # type: ignore[union-attr]

    # Two quick blocks; the retarget makes the second four times as hard: 5 units of work
    # against 4.
    env.mine([t2_rival], prev=fork, timestamp=fork.header.timestamp + 1)
    result = env.mine(prev=_tip_of(env, fork), timestamp=fork.header.timestamp + 2)
    assert result.status == "connected" and env.chain.height == 8
    assert [e.hash for e, _ in result.disconnected] == old_branch[::-1]
    update = env.pool.update_for_chain(result, env.chain, env.now)
    assert update.returned == [t1.txid]
    assert update.conflicted == [t2.txid] and update.conflicted_with == {t2.txid: t2_rival.txid}
    assert update.removed == [x1.txid, x2.txid, x3.txid]
    assert update.removed_reasons == {
        x1.txid: "bad-txns-premature-spend-of-coinbase",
        x2.txid: "bad-txns-inputs-missingorspent",
        x3.txid: "bad-txns-inputs-missingorspent",
    }
    assert env.pool.txids() == [t1.txid, x4.txid]
    entry = env.pool.get(x4.txid)
    assert entry is not None and entry.parents == {t1.txid}
    assert env.pool.spender_of(env.coinbase(1)) == t1.txid
    # The rebuilt pool still makes a valid block.
    txs, _ = env.pool.select_for_block(1_000_000)
    assert txs == [t1, x4]
    assert env.mine_and_update(txs).included == [t1.txid, x4.txid]


def _tip_of(env: Env, fork: BlockIndex) -> BlockIndex:
    """The newest block built on `fork` (the side branch we are extending)."""
    children = env.chain.children[fork.hash]
    return children[-1]


def test_reorg_back_and_forth_restores_the_pool() -> None:
    env = Env(blocks=6)
    a = split(env.coinbase(1), REWARD, 1000)
    b = split(out(a), a.outputs[0].amount, 1000)
    env.accept(a)
    env.accept(b)
    fork = env.chain.tip
    update = env.mine_and_update([a])
    assert update.included == [a.txid] and env.pool.txids() == [b.txid]
    side = env.mine(prev=fork)
    assert side.status == "side-branch"
    result = env.mine(prev=_tip_of(env, fork))
    assert result.reorg_depth == 1
    update = env.pool.update_for_chain(result, env.chain, env.now)
    assert update.returned == [a.txid] and not update.removed and not update.conflicted
    assert env.pool.txids() == [a.txid, b.txid]


def test_invalidate_block_returns_its_transactions() -> None:
    env = Env()
    a = split(env.coinbase(1), REWARD, 1000)
    env.accept(a)
    env.mine_and_update([a])
    assert len(env.pool) == 0
    result = env.chain.invalidate_block(env.chain.tip.hash)
    update = env.pool.update_for_chain(result, env.chain, env.now)
    assert update.returned == [a.txid] and env.pool.txids() == [a.txid]


# ------------------------------------------------------------------ signature cache


def test_signature_cache_skips_verification_when_the_block_connects(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = Env(blocks=6)
    calls = []
    real = consensus.validation.verify_signature

    def counting(pubkey: bytes, signature: bytes, message: bytes) -> bool:
        calls.append(pubkey)
        return real(pubkey, signature, message)

    monkeypatch.setattr(consensus.validation, "verify_signature", counting)
    txs = [split(env.coinbase(h), REWARD, 1000) for h in (1, 2, 3)]
    txs.append(split(out(txs[0]), txs[0].outputs[0].amount, 1000))
    for tx in txs:
        env.accept(tx)
    assert len(calls) == 4
    selected, _ = env.pool.select_for_block(1_000_000)
    update = env.mine_and_update(selected)
    assert len(update.included) == 4
    assert len(calls) == 4  # the block verified nothing again


# ------------------------------------------------------------------ persistence


def test_snapshot_revalidates_into_a_new_pool() -> None:
    env = Env()
    a = split(env.coinbase(1), REWARD, 1000)
    b = split(out(a), a.outputs[0].amount, 1000)
    for tx in (a, b):
        env.accept(tx)
    from consensus.tx import decode_transaction

    fresh = Mempool(PARAMS, signature_cache=env.chain.signature_cache)
    for data, entry_time in env.pool.snapshot():
        fresh.accept(decode_transaction(data, PARAMS.max_block_size), env.chain,
                     env.now + 100, entry_time=entry_time)
    assert fresh.txids() == [a.txid, b.txid]
    entry = fresh.get(b.txid)
    assert entry is not None and entry.time == env.now


# ------------------------------------------------------------------ property


def _check_invariants(env: Env) -> None:
    pool, chain = env.pool, env.chain
    spent: list[OutPoint] = []
    total = 0
    for txid in pool.txids():
        entry = pool.get(txid)
        assert entry is not None and entry.tx.txid == txid
        assert chain.tx_block(txid) is None
        total += entry.size
        parents = set()
        for txin in entry.tx.inputs:
            op = txin.outpoint
            spent.append(op)
            assert pool.spender_of(op) == txid
            parent = pool.get(op.txid)
            if parent is not None:
                parents.add(op.txid)
                assert op.index < len(parent.tx.outputs)
                assert parent.seq < entry.seq
            else:
                coin = chain.coin(op)
                assert coin is not None, f"{op} exists neither in the chain nor in the pool"
                if coin.is_coinbase:
                    assert chain.height + 1 - coin.height >= env.params.coinbase_maturity
        assert entry.parents == parents
        for p in parents:
            parent = pool.get(p)
            assert parent is not None and txid in parent.children
        family, stack = set(), [txid]
        while stack:
            t = stack.pop()
            if t not in family:
                family.add(t)
                stack.extend(pool.get(t).children)  # type: ignore[union-attr]
        members = [pool.get(t) for t in family]
        assert entry.descendant_count == len(family)
        assert entry.descendant_size == sum(m.size for m in members)  # type: ignore[union-attr]
        assert entry.descendant_fee == sum(m.fee for m in members)  # type: ignore[union-attr]
    assert len(spent) == len(set(spent)), "two pool transactions spend one outpoint"
    assert total == pool.bytes <= pool.max_bytes


def _rival_for(env: Env, pick: int, fee: int, at_height: int) -> Transaction | None:
    """A transaction double-spending a pool root's input, valid in a block on `at_height`."""
    victims = []
    for txid in env.pool.txids():
        entry = env.pool.get(txid)
        assert entry is not None
        if entry.parents:
            continue
        op = entry.tx.inputs[0].outpoint
        coin = env.chain.coin(op)
        assert coin is not None
        mature = not coin.is_coinbase or (
            at_height + 1 - coin.height >= env.params.coinbase_maturity
        )
        if coin.height <= at_height and mature and coin.amount > fee:
            victims.append((op, coin.amount))
    if not victims:
        return None
    op, amount = victims[pick % len(victims)]
    return spend([op], [amount - fee - 1])


_op = st.tuples(
    st.sampled_from(
        ["spend", "spend", "spend", "hold", "release", "mine", "mine-rival", "reorg"]
    ),
    st.lists(st.integers(0, 10_000), min_size=1, max_size=2),  # which outpoints to spend
    st.integers(1, 3),  # outputs
    st.integers(0, 3_000),  # fee
)


def _live_outputs(env: Env) -> list[tuple[OutPoint, int]]:
    """Confirmed outputs (some spent in the pool: conflicts) and unspent pool outputs."""
    live = [(op, coin.amount) for op, coin in env.chain.utxo.items() if coin.pkh == PKH]
    for txid in env.pool.txids():
        entry = env.pool.get(txid)
        assert entry is not None
        for n, o in enumerate(entry.tx.outputs):
            if env.pool.spender_of(OutPoint(txid, n)) is None:
                live.append((OutPoint(txid, n), o.amount))
    return live


def _send(env: Env, txs: list[Transaction]) -> None:
    for tx in txs:
        before = set(env.pool.txids())
        try:
            outcome = env.accept(tx)
        except ConsensusError as exc:
            assert set(env.pool.txids()) == before, f"a rejection ({exc}) changed the pool"
            continue
        assert set(env.pool.txids()) == (before | set(outcome.accepted)) - set(outcome.evicted)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(_op, min_size=1, max_size=30))
def test_property_no_double_spends_and_inputs_exist(
    ops: list[tuple[str, list[int], int, int]],
) -> None:
    env = Env(blocks=5, max_bytes=1_200, max_orphans=5)
    # Every output ever made, confirmed or not, accepted or not: conflicts, orphans and spends
    # of spent outputs all come out of picking from it.
    known: list[tuple[OutPoint, int]] = [(env.coinbase(h), REWARD) for h in range(1, 6)]
    held: list[Transaction] = []  # made but not sent yet: sent children-first, they are orphans
    for kind, picks, outputs, fee in ops:
        if kind in ("spend", "hold"):
            live = _live_outputs(env)
            chosen = list(
                dict.fromkeys(
                    live[i % len(live)] if i % 3 and live else known[i % len(known)]
                    for i in picks
                )
            )
            value = sum(v for _, v in chosen)
            each = max(0, (value - fee) // outputs)
            tx = spend([op for op, _ in chosen], [each] * outputs)
            known.extend((out(tx, n), each) for n in range(outputs))
            if kind == "hold":
                held.append(tx)
                continue
            _send(env, [tx])
        elif kind == "release":
            _send(env, held[::-1])
            held.clear()
        elif kind == "mine":
            txs, _ = env.pool.select_for_block(1_500)
            update = env.mine_and_update(txs)
            assert update.included == [t.txid for t in txs]
        elif kind == "mine-rival":
            # A miner double-spends a pool transaction's input directly in a block.
            rival = _rival_for(env, picks[0], fee, env.chain.height)
            if rival is None:
                continue
            victim = env.pool.spender_of(rival.inputs[0].outpoint)
            update = env.mine_and_update([rival])
            assert victim in update.conflicted and update.conflicted_with[victim] == rival.txid
        else:
            # Two blocks on the tip's parent (one with a double spend, maybe) take over.
            fork = env.chain.tip.prev
            assert fork is not None
            rival = _rival_for(env, picks[0], fee, fork.height)
            first = env.mine([rival] if rival else [], prev=fork)
            assert first.status == "side-branch"
            result = env.mine(prev=_tip_of(env, fork))
            assert result.reorg_depth == 1
            update = env.pool.update_for_chain(result, env.chain, env.now)
            assert not set(update.returned) & set(update.removed)
            if rival is not None:
                assert rival.txid not in env.pool
        _check_invariants(env)


def test_a_transaction_above_the_standard_size_is_refused_but_valid_in_a_block() -> None:
    """Policy, as Bitcoin Core's MAX_STANDARD_TX_WEIGHT: never relayed, yet a block may hold it
    (so a peer relaying one is not punished: tests/test_p2p_protocol.py's harmless reasons)."""
    env = Env(max_standard_size=600)
    big = split(env.coinbase(1), REWARD, 10_000, outputs=20)
    assert big.size > 600
    with pytest.raises(ConsensusError) as info:
        env.accept(big)
    assert info.value.reason == "tx-size" and "600" in info.value.detail
    assert big.txid not in env.pool
    env.mine([big])
    assert env.chain.tx_block(big.txid) is not None
    small = split(env.coinbase(2), REWARD, 1000)
    assert env.accept(small).accepted == [small.txid]
