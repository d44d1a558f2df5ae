"""The shortcuts that trim a relaying node's work per block (benchmarks/bench_hop.py) give the
same answers as the long way round, and serve nothing stale."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import msgpack
import pytest

import p2p.shortids
from consensus.block import Block, BlockHeader
from consensus.coins import Coin, decode_undo, encode_undo
from consensus.hashing import merkle_leaf, merkle_root, merkle_root_of_leaf_hashes
from consensus.tx import OutPoint, Transaction, TxIn, TxOut
from lab.testnet.processes import NodeProcess
from p2p.messages import U64_MAX, short_tx_id
from p2p.shortids import MempoolShortIds, short_ids_of
from tests.daemon_harness import REPO, wait_for
from tests.helpers import ChainBuilder, coinbase_outpoint, regtest
from tests.p2p_helpers import Traffic, config, fund, line, network, pay, run_until


def _pool_pairs(node) -> dict[bytes, Transaction]:  # type: ignore[no-untyped-def]
    return dict(node.mempool.transactions())


@pytest.mark.parametrize("salt", [0, 1, 0x0123456789ABCDEF, U64_MAX])
def test_short_ids_of_matches_short_tx_id_for_every_salt(salt: int) -> None:
    rng = random.Random(salt & 0xFFFF)
    txids = [rng.randbytes(32) for _ in range(50)]
    index = short_ids_of(salt, ((t, t) for t in txids))  # type: ignore[misc]
    assert index == {short_tx_id(salt, t): t for t in txids}


@pytest.mark.parametrize("salt", [-1, U64_MAX + 1])
def test_short_ids_of_refuses_a_salt_outside_u64(salt: int) -> None:
    with pytest.raises(ValueError, match="u64"):
        short_ids_of(salt, [])


def test_of_two_transactions_with_one_short_id_the_later_is_kept() -> None:
    """As the dict the receiver used to build: a collision is resolved the same way."""
    first, second = b"\x01" * 32, b"\x02" * 32
    index = short_ids_of(7, [(first, "a"), (first, "b"), (second, "c")])  # type: ignore[list-item]
    assert index[short_tx_id(7, first)] == "b"


def _three_with_pool(seed: int, txs: int = 3):  # type: ignore[no-untyped-def]
    # No dialling of gossiped addresses: the line stays a line, so message counts are exact.
    strict = config(connect_only=True)
    net, nodes = network(3, seed=seed, configs=dict.fromkeys(range(3), strict))
    line(net, nodes)
    coins = fund(nodes[0], txs)
    run_until(net, net.converged, 10, "funding blocks")
    a = nodes[0]
    for coin in coins:
        a.submit_transaction(pay(a, coin, nodes[2].payout_pkh))
    net.flush(a)
    run_until(net, lambda: all(len(n.mempool) == txs for n in nodes), 5, "tx relay")
    return net, nodes


def test_the_index_is_the_mempool_now_never_what_it_was() -> None:
    """Built per compact block from the pool as it is: a transaction confirmed (so gone from
    the pool) or replaced since an earlier block is not in a later block's index."""
    net, nodes = _three_with_pool(5)
    b = nodes[1]
    before = MempoolShortIds(b.mempool, 99)
    pool = _pool_pairs(b)
    for txid, tx in pool.items():
        assert before.get(short_tx_id(99, txid)) is tx
    nodes[0].mine()
    run_until(net, net.converged, 5, "block relay")
    assert len(b.mempool) == 0
    after = MempoolShortIds(b.mempool, 99)
    assert all(after.get(short_tx_id(99, txid)) is None for txid in pool)
    # The earlier index is a snapshot of its own block's reconstruction, not a cache.
    assert all(before.get(short_tx_id(99, txid)) is not None for txid in pool)


def test_an_evicted_or_replaced_transaction_is_not_served() -> None:
    _net, nodes = _three_with_pool(6)
    b = nodes[1]
    victim_id, _ = next(iter(b.mempool.transactions()))
    b.mempool._remove_entry(victim_id)  # as eviction or a replacement would
    index = MempoolShortIds(b.mempool, 3)
    assert index.get(short_tx_id(3, victim_id)) is None
    assert len(short_ids_of(3, b.mempool.transactions())) == 2


def test_a_coinbase_only_compact_block_hashes_no_mempool(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing to look up, nothing hashed: the index is built on the first lookup only. A
    block with transactions still is rebuilt from the mempool."""
    net, nodes = _three_with_pool(7)
    calls: list[int] = []
    real = p2p.shortids.short_ids_of

    def counting(salt: int, txs):  # type: ignore[no-untyped-def]
        calls.append(salt)
        return real(salt, txs)

    monkeypatch.setattr(p2p.shortids, "short_ids_of", counting)
    traffic = Traffic(net)
    a = nodes[0]
    a.mine(txs=False)
    run_until(net, net.converged, 5, "coinbase-only block relay")
    assert traffic.counts()["cmpctblock"] == 2
    assert calls == []
    assert all(len(n.mempool) == 3 for n in nodes)
    a.mine()
    run_until(net, net.converged, 5, "block relay")
    assert len(calls) == 2  # b and c, once each
    assert all(len(n.mempool) == 0 for n in nodes)
    assert traffic.counts()["getblocktxn"] == 0


# ------------------------------------------------------------------ the same bytes, sooner


def test_outpoints_are_the_inputs_outpoints_made_once() -> None:
    rng = random.Random(3)
    tx = Transaction(
        [TxIn(rng.randbytes(32), n, b"", b"") for n in range(5)], [TxOut(1, bytes(20))]
    )
    assert list(tx.outpoints) == [txin.outpoint for txin in tx.inputs]
    assert tx.outpoints is tx.outpoints
    # Another transaction with other inputs has its own.
    other = tx.with_inputs(tx.inputs[:2])
    assert list(other.outpoints) == [txin.outpoint for txin in tx.inputs[:2]]


def test_undo_encoding_is_unchanged_and_round_trips() -> None:
    rng = random.Random(4)
    coins = [Coin(rng.randrange(2**50), rng.randbytes(20), rng.randrange(10**6), n % 3 == 0)
             for n in range(300)]
    assert encode_undo(coins) == msgpack.packb([list(c) for c in coins], use_bin_type=True)
    assert decode_undo(encode_undo(coins)) == coins
    assert encode_undo([]) == msgpack.packb([], use_bin_type=True)


# ------------------------------------------------------------------ undo encoded for the store


def _spending_block(builder: ChainBuilder) -> Block:
    """A block on the tip that spends the oldest mature coinbase (so its undo is not empty)."""
    spendable = builder.block_at(1)
    tx = builder.spend([coinbase_outpoint(spendable)], fee=1000)
    return builder.block(txs=[tx])


def test_undo_reaches_the_store_with_the_update_that_connected_its_block() -> None:
    builder = ChainBuilder(regtest(coinbase_maturity=1))
    builder.mine(2)
    block = _spending_block(builder)
    builder.chain.accept_block(block, builder.now)
    update = builder.chain.take_update()
    assert decode_undo(update.undo[block.hash]) == builder.chain.block_undo(block.hash)
    assert len(update.undo[block.hash]) > 1  # one spent coin, encoded
    builder.store.apply(update)
    assert builder.chain.take_update().undo == {}  # handed over once


def test_a_block_disconnected_before_the_commit_still_has_its_undo() -> None:
    """A reorg inside one update: the undo data the disconnection needs is the unencoded one,
    even once the decoded-undo cache no longer holds it."""
    builder = ChainBuilder(regtest(coinbase_maturity=1))
    builder.mine(2)
    fork_point = builder.chain.tip.hash
    block = _spending_block(builder)
    chain = builder.chain
    chain.accept_block(block, builder.now)
    chain._undo.clear()  # as if evicted from the bounded cache
    assert chain.block_undo(block.hash)  # served from the update not yet taken
    heavier = builder.branch(2, fork_point)
    for b in heavier:
        builder.record(b)
        chain.accept_block(b, builder.now)
    assert chain.tip.hash == heavier[-1].hash
    spent = coinbase_outpoint(builder.block_at(1))
    assert chain.coin(spent) is not None  # given back by the disconnection
    update = chain.take_update()
    assert block.hash in update.undo and heavier[-1].hash in update.undo
    builder.store.apply(update)
    assert decode_undo(builder.store.get_undo_bytes(block.hash) or b"") != []


def test_discarding_the_update_discards_the_unencoded_undo() -> None:
    builder = ChainBuilder(regtest(coinbase_maturity=1))
    builder.mine(2)
    block = _spending_block(builder)
    builder.chain.accept_block(block, builder.now)
    builder.chain.discard_update()
    assert builder.chain.take_update().undo == {}


# ------------------------------------------------------------------ the collector and the node


_FREEZE_CHILD = """
import gc
from node.gcpolicy import freeze_loaded_state

loaded = [[n] for n in range(10_000)]
frozen = freeze_loaded_state()
assert frozen >= 10_000, frozen
# What is made afterwards is collected as before: a cycle made now goes at the next collection.
cycle = []
cycle.append(cycle)
del cycle
assert gc.collect() >= 1
assert gc.get_freeze_count() == frozen
print("ok")
"""


def test_freezing_takes_what_is_loaded_out_of_collection_and_nothing_later() -> None:
    """In a child: a freeze is for the life of the process."""
    done = subprocess.run(
        [sys.executable, "-c", _FREEZE_CHILD], cwd=REPO, capture_output=True, text=True,
        timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


@pytest.mark.slow
def test_a_node_process_freezes_its_loaded_state_once_started(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "n1").start()
    try:
        def frozen() -> list[dict[str, object]]:
            lines = node.log_path.read_text().splitlines()
            return [json.loads(x) for x in lines if '"loaded_state_frozen"' in x]

        wait_for(lambda: frozen(), timeout=30, what="the loaded_state_frozen log line")
        (event,) = frozen()
        assert isinstance(event["objects"], int) and event["objects"] > 10_000
        assert node.rpc("getblockcount") == 0  # and it serves as before
    finally:
        node.ensure_dead()


def test_connected_outputs_are_real_outpoints_and_coins() -> None:
    """Made with tuple.__new__: still the named tuples, equal and hashing as the ones made the
    usual way (the UTXO set is looked up with OutPoints built from inputs)."""
    builder = ChainBuilder(regtest(coinbase_maturity=1))
    builder.mine(2)
    block = _spending_block(builder)
    builder.accept(block)
    spend = block.txs[1]
    made = OutPoint(spend.txid, 0)
    coin = builder.chain.coin(made)
    assert coin is not None and type(coin) is Coin
    assert coin == Coin(spend.outputs[0].amount, spend.outputs[0].pkh, 3, False)
    (key,) = [k for k in builder.chain.utxo if k == made]
    assert type(key) is OutPoint and key.txid == spend.txid and key.index == 0
    assert hash(key) == hash(made)


def test_total_out_is_the_sum_of_the_outputs_made_once() -> None:
    tx = Transaction([TxIn(bytes(32), 1, b"", b"")], [TxOut(a, bytes(20)) for a in (3, 4, 5)])
    assert tx.total_out() == 12
    assert tx.total_out() == 12  # the cached answer
    assert tx.with_inputs(tx.inputs).total_out() == 12


@pytest.mark.parametrize("count", [0, 1, 2, 3, 7, 8, 33, 1001])
def test_the_merkle_root_from_cached_leaves_is_the_merkle_root(count: int) -> None:
    rng = random.Random(count)
    txs = [
        Transaction([TxIn(rng.randbytes(32), 0, b"", b"")], [TxOut(n + 1, bytes(20))])
        for n in range(count)
    ]
    txids = [tx.txid for tx in txs]
    assert merkle_root_of_leaf_hashes([tx.merkle_leaf for tx in txs]) == merkle_root(txids)
    assert all(tx.merkle_leaf == merkle_leaf(tx.txid) for tx in txs)
    if txs:
        block = Block(BlockHeader(1, bytes(32), bytes(32), 0, 0, 0), txs)
        assert block.computed_merkle_root() == merkle_root(txids)
