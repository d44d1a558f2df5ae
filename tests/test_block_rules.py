"""Block and transaction rules, one row per rejection reason (after Bitcoin Core's
feature_block.py): each row builds a block that breaks exactly one rule on top of a small funded
chain, delivers it with `accept_block`, and checks the exact reason, that the tip did not move,
and whether the block was marked invalid.

A block is marked invalid (later deliveries answer `duplicate-invalid`, children `bad-prevblk`)
when its own content broke a rule. It is not marked when the failure says nothing about the
block the header commits to: a bad proof of work or timestamp is refused before the header is
indexed, and a merkle mismatch (or duplicated transactions, which the merkle root of a mutated
copy would commit to) only shows that the body we received is not the one the header names.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from consensus.block import Block
from consensus.coins import Coin
from consensus.errors import ConsensusError
from consensus.hashing import ZERO_HASH
from consensus.params import TESTNET
from consensus.tx import COINBASE_INDEX, OutPoint, Transaction, TxIn, TxOut, make_coinbase
from consensus.validation import (
    MAX_MONEY,
    check_block,
    check_transaction,
    check_tx_inputs,
    check_tx_signatures,
)
from tests.helpers import (
    ChainBuilder,
    coinbase_outpoint,
    key,
    pkh,
    regtest,
    unsolve,
)

MATURITY = 3
CHAIN_LENGTH = 12  # more than the 11-block median-time-past window
SPENT_HEIGHT = 4  # this block's coinbase output is already spent on the funded chain


def funded(**overrides: Any) -> ChainBuilder:
    """CHAIN_LENGTH blocks, then one spending block SPENT_HEIGHT's coinbase; the other early
    coinbases are mature at the next height, the tip's is not."""
    b = ChainBuilder(regtest(coinbase_maturity=MATURITY, **overrides))
    b.mine(CHAIN_LENGTH)
    b.mine(1, txs=[b.spend([coinbase_outpoint(b.block_at(SPENT_HEIGHT))], fee=10)])
    return b


def fund(b: ChainBuilder, n: int = 1) -> OutPoint:
    """The (mature, unspent) coinbase output of active block `n`."""
    return coinbase_outpoint(b.block_at(n))


def nowhere() -> OutPoint:
    return OutPoint(hashlib.sha256(b"no such transaction").digest(), 0)


def coinbase_with_data(b: ChainBuilder, data: bytes) -> Transaction:
    reward = b.params.block_reward(b.chain.height + 1)
    return Transaction([TxIn(ZERO_HASH, COINBASE_INDEX, b"", data)], [TxOut(reward, pkh(0))])


# ------------------------------------------------------------------ the table


@dataclass
class Case:
    id: str
    reason: str
    make: Callable[[ChainBuilder], Block]
    marked: bool  # is the block (if indexed at all) marked invalid afterwards?
    status: str = "invalid"
    params: dict[str, Any] = field(default_factory=dict)


def _with_tx(make_tx: Callable[[ChainBuilder], Transaction]) -> Callable[[ChainBuilder], Block]:
    return lambda b: b.block(txs=[make_tx(b)])


def _high_hash(b: ChainBuilder) -> Block:
    blk = b.block(solved=False)
    return Block(unsolve(blk.header), blk.txs)


def _time_too_old(b: ChainBuilder) -> Block:
    return b.block(timestamp=b.median_time_past())


def _time_too_new(b: ChainBuilder) -> Block:
    return b.block(timestamp=b.now + b.params.max_future_drift + 1)


def _bad_merkle(b: ChainBuilder) -> Block:
    honest = b.block(txs=[b.spend([fund(b)], fee=100)])
    return Block(honest.header, honest.txs[:1])  # the spend went missing in transit


def _mutated_repeat_last(b: ChainBuilder) -> Block:
    # CVE-2012-2459: the honest block with its last transaction repeated.
    honest = b.block(txs=[b.spend([fund(b)], fee=100), b.spend([fund(b, 2)], fee=100)])
    return Block(honest.header, [*honest.txs, honest.txs[-1]])


def _duplicate_txs(b: ChainBuilder) -> Block:
    tx = b.spend([fund(b)], fee=100)
    return b.block(txs=[tx, tx])


def _too_big(b: ChainBuilder) -> Block:
    height = b.chain.height + 1
    outs = [TxOut(1, pkh(n % 8)) for n in range(300)]
    return b.block(coinbase=make_coinbase(height, outs))


def _no_coinbase(b: ChainBuilder) -> Block:
    return b.block(all_txs=[b.spend([fund(b)], fee=100)])


def _two_coinbases(b: ChainBuilder) -> Block:
    height = b.chain.height + 1
    extra = make_coinbase(height, [TxOut(1, pkh(1))], b"second")
    first = make_coinbase(height, [TxOut(b.params.block_reward(height), pkh(0))], b"first")
    return b.block(all_txs=[first, extra])


def _cb_height(b: ChainBuilder) -> Block:
    height = b.chain.height + 2
    return b.block(coinbase=make_coinbase(height, [TxOut(1, pkh(0))]))


def _invalid_parent(b: ChainBuilder) -> Block:
    parent = b.block(reward_delta=1)
    result = b.accept(parent)
    assert (result.status, result.reason) == ("invalid", "bad-cb-amount")
    return b.block(parent)


def _resubmit_valid(b: ChainBuilder) -> Block:
    blk = b.block()
    assert b.accept(blk).status == "connected"
    return blk


def _resubmit(make: Callable[[ChainBuilder], Block], reason: str) -> Callable[
    [ChainBuilder], Block
]:
    def build(b: ChainBuilder) -> Block:
        blk = make(b)
        result = b.accept(blk)
        assert (result.status, result.reason) == ("invalid", reason)
        return blk

    return build


CASES = [
    # --- header: refused before the header is indexed
    Case("high-hash", "high-hash", _high_hash, False),
    Case("bad-diffbits-wrong", "bad-diffbits", lambda b: b.block(bits=0x203FFFFF), False),
    Case("bad-diffbits-above-limit", "bad-diffbits", lambda b: b.block(bits=0x2100FFFF), False),
    Case(
        "bad-diffbits-negative",
        "bad-diffbits",
        lambda b: b.block(bits=0x20800001, solved=False),
        False,
    ),
    Case("time-too-old", "time-too-old", _time_too_old, False),
    Case("time-too-new", "time-too-new", _time_too_new, False),
    # --- the body is not the one the header commits to: not marked
    Case("bad-merkle-root", "bad-merkle-root", _bad_merkle, False),
    Case("bad-merkle-root-cve-2012-2459", "bad-merkle-root", _mutated_repeat_last, False),
    Case("bad-txns-duplicate", "bad-txns-duplicate", _duplicate_txs, False),
    # --- context-free block rules: marked
    Case("bad-blk-length", "bad-blk-length", _too_big, True, params={"max_block_size": 4000}),
    Case("bad-cb-missing", "bad-cb-missing", _no_coinbase, True),
    Case("bad-cb-missing-empty", "bad-cb-missing", lambda b: b.block(all_txs=[]), True),
    Case("bad-cb-multiple", "bad-cb-multiple", _two_coinbases, True),
    Case("bad-cb-height", "bad-cb-height", _cb_height, True),
    Case(
        "bad-cb-length-short",
        "bad-cb-length",
        lambda b: b.block(coinbase=coinbase_with_data(b, b"\x00\x00\x0d")),
        True,
    ),
    Case(
        # Longer than decoding allows: such a block could never be relayed or reloaded.
        "bad-cb-length-long",
        "bad-cb-length",
        lambda b: b.block(
            coinbase=coinbase_with_data(b, (b.chain.height + 1).to_bytes(4, "big") + bytes(97))
        ),
        True,
    ),
    Case(
        "bad-txns-vin-empty",
        "bad-txns-vin-empty",
        _with_tx(lambda b: Transaction([], [TxOut(1, pkh(1))])),
        True,
    ),
    Case(
        "bad-txns-vout-empty",
        "bad-txns-vout-empty",
        _with_tx(lambda b: b.spend([fund(b)], outputs=[])),
        True,
    ),
    Case(
        "bad-txns-vout-negative",
        "bad-txns-vout-negative",
        _with_tx(lambda b: b.spend([fund(b)], amounts=[-1])),
        True,
    ),
    Case(
        "bad-txns-vout-toolarge",
        "bad-txns-vout-toolarge",
        _with_tx(lambda b: b.spend([fund(b)], amounts=[MAX_MONEY + 1])),
        True,
    ),
    Case(
        "bad-txns-txouttotal-toolarge",
        "bad-txns-txouttotal-toolarge",
        _with_tx(lambda b: b.spend([fund(b)], amounts=[MAX_MONEY, 1])),
        True,
    ),
    Case(
        "bad-txns-inputs-duplicate",
        "bad-txns-inputs-duplicate",
        _with_tx(lambda b: b.spend([fund(b), fund(b)], amounts=[1])),
        True,
    ),
    Case(
        "bad-txns-prevout-null",
        "bad-txns-prevout-null",
        _with_tx(lambda b: b.spend([OutPoint(ZERO_HASH, 0)], amounts=[1], keys=[key(0)])),
        True,
    ),
    Case(
        "bad-txns-unsigned",
        "bad-txns-unsigned",
        _with_tx(
            lambda b: Transaction([TxIn(fund(b).txid, 0, b"", b"")], [TxOut(1, pkh(1))])
        ),
        True,
    ),
    # --- contextual (UTXO) rules, found when connecting: marked
    Case(
        "bad-txns-inputs-missingorspent",
        "bad-txns-inputs-missingorspent",
        _with_tx(lambda b: b.spend([nowhere()], amounts=[1], keys=[key(0)])),
        True,
    ),
    Case(
        "bad-txns-inputs-spent-earlier",
        "bad-txns-inputs-missingorspent",
        _with_tx(lambda b: b.spend([fund(b, SPENT_HEIGHT)], fee=1)),
        True,
    ),
    Case(
        "bad-txns-inputs-spent-in-block",
        "bad-txns-inputs-spent-in-block",
        lambda b: b.block(
            txs=[b.spend([fund(b)], fee=100), b.spend([fund(b)], fee=200)]
        ),
        True,
    ),
    Case(
        "bad-txns-premature-spend-of-coinbase",
        "bad-txns-premature-spend-of-coinbase",
        _with_tx(lambda b: b.spend([fund(b, b.chain.height)], fee=1)),
        True,
    ),
    Case(
        "bad-txns-in-belowout",
        "bad-txns-in-belowout",
        _with_tx(lambda b: b.spend([fund(b)], amounts=[b.outputs[fund(b)].amount + 1])),
        True,
    ),
    Case(
        "bad-txns-pubkey-mismatch",
        "bad-txns-pubkey-mismatch",
        _with_tx(lambda b: b.spend([fund(b)], fee=1, keys=[key(5)])),
        True,
    ),
    Case(
        "bad-txns-bad-signature",
        "bad-txns-bad-signature",
        _with_tx(lambda b: b.spend([fund(b)], fee=1, genesis_hash=TESTNET.genesis_hash)),
        True,
    ),
    Case("bad-cb-amount", "bad-cb-amount", lambda b: b.block(reward_delta=1), True),
    Case(
        "bad-cb-amount-with-fees",
        "bad-cb-amount",
        lambda b: b.block(txs=[b.spend([fund(b)], fee=500)], reward_delta=1),
        True,
    ),
    # --- relations to other blocks
    Case("bad-prevblk", "bad-prevblk", _invalid_parent, False),
    Case("duplicate", "duplicate", _resubmit_valid, False, status="duplicate"),
    Case(
        "duplicate-invalid",
        "duplicate-invalid",
        _resubmit(lambda b: b.block(reward_delta=1), "bad-cb-amount"),
        True,
    ),
    Case(
        "duplicate-invalid-body",
        "duplicate-invalid",
        _resubmit(_cb_height, "bad-cb-height"),
        True,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_block_rule(case: Case) -> None:
    b = funded(**case.params)
    tip = b.chain.tip
    utxo = dict(b.chain.utxo)

    block = case.make(b)
    tip_before_delivery = b.chain.tip
    result = b.accept(block)

    assert (result.status, result.reason) == (case.status, case.reason)
    assert b.chain.tip is tip_before_delivery
    if case.status == "invalid":
        assert b.chain.tip is tip
        assert b.chain.utxo == utxo
    entry = b.chain.get(block.hash)
    assert (entry is not None and entry.failed) == case.marked
    if case.marked:
        assert (block.hash, case.reason) in result.invalid or case.reason == "duplicate-invalid"
        # Marked means remembered: the same block again is refused without a second look...
        again = b.accept(block)
        assert (again.status, again.reason) == ("invalid", "duplicate-invalid")
        # ...and so is any child.
        child = b.accept(b.block(block))
        assert (child.status, child.reason) == ("invalid", "bad-prevblk")
    # Whatever happened, the chain still extends normally.
    assert b.accept(b.block()).status == "connected"


# ------------------------------------------------------------------ follow-ups of single rows


@pytest.mark.parametrize("mangle", [_bad_merkle, _mutated_repeat_last])
def test_mangled_body_does_not_poison_the_honest_block(
    mangle: Callable[[ChainBuilder], Block],
) -> None:
    b = funded()
    mangled = mangle(b)
    honest = b.blocks[mangled.hash]  # the builder keeps the block it built under that hash
    assert honest is not mangled and honest.header == mangled.header
    result = b.accept(mangled)
    assert (result.status, result.reason) == ("invalid", "bad-merkle-root")
    result = b.accept(honest)
    assert (result.status, result.reason) == ("connected", None)
    assert b.chain.tip.hash == honest.hash
    assert b.chain.get_block(honest.hash).txs == honest.txs  # type: ignore[union-attr]


def test_header_only_failure_of_merkle_does_not_block_children() -> None:
    b = funded()
    honest = b.block(txs=[b.spend([fund(b)], fee=100)])
    child = b.block(honest)
    assert b.accept(Block(honest.header, honest.txs[:1])).reason == "bad-merkle-root"
    assert b.accept(child).status == "side-branch"  # waits for its parent's real body
    result = b.accept(honest)
    assert result.status == "connected"
    assert b.chain.tip.hash == child.hash
    assert [e.hash for e, _ in result.connected] == [honest.hash, child.hash]


def test_timestamp_window_edges_are_accepted() -> None:
    b = funded()
    mtp = b.median_time_past()
    assert b.accept(b.block(timestamp=mtp + 1)).status == "connected"
    edge = b.block(timestamp=b.now + b.params.max_future_drift)
    assert b.accept(edge).status == "connected"
    # A block once too new is not marked: with time passing it becomes acceptable.
    late = b.block(timestamp=b.now + b.params.max_future_drift + 50)
    assert b.accept(late).reason == "time-too-new"
    assert b.accept(late, now=b.now + 50).status == "connected"


def test_spending_the_mature_edge_and_in_block_chains() -> None:
    """Spends that are valid: a coinbase exactly at maturity, and a chain within one block."""
    b = funded()
    height = b.chain.height + 1
    at_edge = fund(b, height - MATURITY)
    first = b.spend([at_edge], fee=100)
    second = b.spend([OutPoint(first.txid, 0)], fee=100, to=pkh(2))
    result = b.accept(b.block(txs=[first, second]))
    assert (result.status, result.reason) == ("connected", None)
    assert at_edge not in b.chain.utxo
    assert OutPoint(first.txid, 0) not in b.chain.utxo
    assert b.chain.coin(OutPoint(second.txid, 0)) == Coin(
        b.outputs[at_edge].amount - 200, pkh(2), height, False
    )
    assert b.chain.spender(at_edge) == first.txid
    assert b.chain.tx_block(second.txid) is b.chain.tip
    # The miner collected both fees.
    cb = b.blocks[b.chain.tip.hash].txs[0]
    assert cb.total_out() == b.params.block_reward(height) + 200


def test_out_of_order_spend_within_a_block_is_missing() -> None:
    b = funded()
    first = b.spend([fund(b)], fee=100)
    second = b.spend([OutPoint(first.txid, 0)], fee=100)
    result = b.accept(b.block(txs=[second, first]))
    assert (result.status, result.reason) == ("invalid", "bad-txns-inputs-missingorspent")


# ------------------------------------------------------------------ rules no block can carry


def test_oversized_transaction() -> None:
    params = regtest(max_block_size=2000)
    tx = Transaction([TxIn(nowhere().txid, 0, bytes(32), bytes(64))],
                     [TxOut(1, pkh(0))] * 100)
    assert tx.size > params.max_block_size
    with pytest.raises(ConsensusError) as info:
        check_transaction(tx, params)
    assert info.value.reason == "bad-txns-oversize"


def test_a_passed_check_is_remembered_only_for_the_same_params() -> None:
    tx = Transaction([TxIn(nowhere().txid, 0, bytes(32), bytes(64))], [TxOut(1, pkh(0))] * 100)
    roomy = regtest()
    check_transaction(tx, roomy)
    assert tx.checked_with is roomy  # a compact block reusing this object skips the checks
    with pytest.raises(ConsensusError) as info:
        check_transaction(tx, regtest(max_block_size=2000))  # other rules: checked again
    assert info.value.reason == "bad-txns-oversize"
    assert tx.checked_with is roomy


@pytest.mark.parametrize(
    ("tx", "reason"),
    [
        (Transaction([], [TxOut(1, pkh(0))]), "bad-txns-vin-empty"),
        (Transaction([TxIn(nowhere().txid, 0, bytes(32), bytes(64))], []), "bad-txns-vout-empty"),
        (
            Transaction([TxIn(ZERO_HASH, 7, bytes(32), bytes(64))], [TxOut(1, pkh(0))]),
            "bad-txns-prevout-null",
        ),
        (
            Transaction([TxIn(nowhere().txid, 0, bytes(32), b"")], [TxOut(1, pkh(0))]),
            "bad-txns-unsigned",
        ),
        (
            Transaction([TxIn(nowhere().txid, 0, b"", bytes(64))], [TxOut(1, pkh(0))]),
            "bad-txns-unsigned",
        ),
        (
            Transaction(
                [TxIn(nowhere().txid, 0, bytes(32), bytes(64))] * 2, [TxOut(1, pkh(0))]
            ),
            "bad-txns-inputs-duplicate",
        ),
        (
            Transaction([TxIn(ZERO_HASH, COINBASE_INDEX, b"", b"\x00")], [TxOut(1, pkh(0))]),
            "bad-cb-length",
        ),
    ],
)
def test_check_transaction_directly(tx: Transaction, reason: str) -> None:
    with pytest.raises(ConsensusError) as info:
        check_transaction(tx, regtest())
    assert info.value.reason == reason


def test_utxo_rules_directly() -> None:
    """The functions the mempool shares: inputs against a view, then signatures."""
    params = regtest(coinbase_maturity=MATURITY)
    b = ChainBuilder(params)
    tx = Transaction([TxIn(nowhere().txid, 0, b"", b"")], [TxOut(40, pkh(1))])
    coin = Coin(50, pkh(0), 10, True)
    lookup = {nowhere(): coin}.get
    with pytest.raises(ConsensusError) as info:
        check_tx_inputs(tx, lookup, 10 + MATURITY - 1, params)
    assert info.value.reason == "bad-txns-premature-spend-of-coinbase"
    fee, coins = check_tx_inputs(tx, lookup, 10 + MATURITY, params)
    assert (fee, coins) == (10, [coin])
    with pytest.raises(ConsensusError) as info:
        check_tx_inputs(tx, {}.get, 100, params)
    assert info.value.reason == "bad-txns-inputs-missingorspent"
    b.outputs[nowhere()] = TxOut(50, pkh(0))
    signed = b.spend([nowhere()], amounts=[40])
    check_tx_signatures(signed, [coin], params.genesis_hash)
    with pytest.raises(ConsensusError) as info:
        check_tx_signatures(signed, [coin._replace(pkh=pkh(3))], params.genesis_hash)
    assert info.value.reason == "bad-txns-pubkey-mismatch"


def test_check_block_accepts_a_well_formed_block() -> None:
    b = funded()
    check_block(b.block(txs=[b.spend([fund(b)], fee=10)]), b.params)
