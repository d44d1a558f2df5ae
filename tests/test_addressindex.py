"""The address index kept incrementally equals one rebuilt from scratch, on both stores.

Random block trees (the builder of test_chain_properties: branches, reorgs, in-block spends,
invalid blocks) are delivered in random order to a chain state that journals address rows; after
every delivery, and after a reorg away and back, the store's index must equal a rebuild of the
active chain into a fresh store, and its unspent rows must be exactly the UTXO set by address.
Also: catch-up after blocks connected without the index, rebuild when the indexed block left the
active chain, and the store's own checks and queries.

Hypothesis runs derandomized, so the suite is deterministic.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consensus.addressindex import AddressDelta, AddressDeltaKey, AddressUtxo
from consensus.keys import AddressError, decode_address, encode_address
from consensus.tx import OutPoint
from consensus.update import ChainUpdate
from node.addressindex import sync_address_index
from node.rpc.errors import RPCError
from node.wallet import WalletError
from storage import MemoryStore, SQLiteStore, StorageError
from storage.addressstaging import STAGED_ROW
from tests.helpers import ChainBuilder, pkh
from tests.test_chain_properties import PARAMS, build_tree

OWNERS = [pkh(n) for n in range(6)]
EVERYTHING = 1 << 40

SETTINGS = settings(
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def dump(store: Any) -> tuple[list[Any], list[tuple[int, int]]]:
    """Every address row of the known owners, as the store's queries return them (unspent
    outputs are derived from the chain's spends index, checked against the UTXO set apart)."""
    return (
        store.address_deltas(OWNERS, 0, EVERYTHING, EVERYTHING),
        [store.address_balance(p) for p in OWNERS],
    )


def check_index(b: ChainBuilder) -> None:
    assert b.store.address_index_tip() == b.chain.tip.hash
    fresh = MemoryStore()
    assert sync_address_index(fresh, b.chain, rebuild=True) == "rebuilt"
    assert dump(b.store) == dump(fresh)
    utxos = set(b.store.address_utxos(OWNERS, EVERYTHING))
    expected = {AddressUtxo(c.pkh, op, c.amount, c.height) for op, c in b.chain.utxo.items()}
    assert utxos == expected
    balances = {p: b.store.address_balance(p)[0] for p in OWNERS}
    for p in OWNERS:
        assert balances[p] == sum(c.amount for c in b.chain.utxo.values() if c.pkh == p)


def indexed_builder(store: Any) -> ChainBuilder:
    b = ChainBuilder(PARAMS, store=store)
    assert sync_address_index(store, b.chain) == "rebuilt"
    b.chain.address_index = True
    return b


def run_random_tree(b: ChainBuilder, data: st.DataObject, max_blocks: int) -> None:
    n = data.draw(st.integers(min_value=3, max_value=max_blocks), label="blocks")
    nodes = build_tree(b, data, n)
    order = data.draw(st.permutations(range(n)), label="delivery order")
    for i in order:
        b.accept(nodes[i].block)
        check_index(b)
    if b.chain.height == 0:
        return
    height = data.draw(st.integers(1, b.chain.height), label="invalidate at")
    victim = b.chain.at_height(height)
    assert victim is not None
    b.chain.invalidate_block(victim.hash)
    b.sync()
    check_index(b)
    b.chain.reconsider_block(victim.hash)
    b.sync()
    check_index(b)


@settings(SETTINGS, max_examples=150)
@given(st.data())
def test_incremental_index_equals_rebuild_on_memory_store(data: st.DataObject) -> None:
    run_random_tree(indexed_builder(MemoryStore()), data, 14)


@settings(SETTINGS, max_examples=40)
@given(st.data())
def test_incremental_index_equals_rebuild_on_sqlite_store(data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        store = SQLiteStore.open(Path(scratch), PARAMS.name, PARAMS.genesis_hash)
        try:
            run_random_tree(indexed_builder(store), data, 10)
        finally:
            store.close()


def spend_chain(b: ChainBuilder, blocks: int) -> None:
    """Mine `blocks` blocks, each also paying the previous block's coinbase to another owner."""
    for i in range(blocks):
        txs = []
        if b.chain.height >= 1:
            cb = b.block_at(b.chain.height).txs[0]
            txs.append(b.spend([OutPoint(cb.txid, 0)], fee=10, to=OWNERS[1 + i % 4]))
        b.mine(1, txs=txs)


def test_catch_up_after_blocks_connected_without_the_index(tmp_path: Path) -> None:
    store = SQLiteStore.open(tmp_path, PARAMS.name, PARAMS.genesis_hash)
    b = indexed_builder(store)
    spend_chain(b, 5)
    marked = b.chain.tip.hash
    b.chain.address_index = False  # a run without --addressindex
    spend_chain(b, 4)
    assert store.address_index_tip() == marked
    assert sync_address_index(store, b.chain, batch_blocks=3) == "caught-up"
    b.chain.address_index = True
    check_index(b)
    assert sync_address_index(store, b.chain) == "current"
    store.close()


def test_rebuild_when_the_indexed_block_left_the_active_chain(tmp_path: Path) -> None:
    store = SQLiteStore.open(tmp_path, PARAMS.name, PARAMS.genesis_hash)
    b = indexed_builder(store)
    spend_chain(b, 4)
    fork = b.chain.at_height(2)
    assert fork is not None
    b.chain.address_index = False
    b.mine(4, parent=fork.hash, payout=OWNERS[5])  # a heavier branch, connected unindexed
    assert not b.chain.is_active(b.chain.get(store.address_index_tip() or b""))  # type: ignore[arg-type]
    assert sync_address_index(store, b.chain) == "rebuilt"
    b.chain.address_index = True
    check_index(b)
    # A forced rebuild of a current index changes nothing.
    before = dump(store)
    assert sync_address_index(store, b.chain, rebuild=True) == "rebuilt"
    assert dump(store) == before
    store.close()


def test_a_file_without_the_address_tables_opens_and_gets_them(tmp_path: Path) -> None:
    import sqlite3

    store = SQLiteStore.open(tmp_path, PARAMS.name, PARAMS.genesis_hash)
    store.close()
    conn = sqlite3.connect(tmp_path / "chain.sqlite3")
    conn.execute("DROP TABLE address_deltas")
    conn.commit()
    conn.close()
    store = SQLiteStore.open(tmp_path, PARAMS.name, PARAMS.genesis_hash)
    assert store.address_index_tip() is None
    assert store.address_deltas([pkh(0)], 0, EVERYTHING, 10) == []
    assert store.address_balance(pkh(0)) == (0, 0)
    store.close()


TXID = bytes(32)


@pytest.mark.parametrize(
    "update",
    [
        ChainUpdate(address_tip=b"short"),
        ChainUpdate(address_reset=1),  # type: ignore[arg-type]
        ChainUpdate(address_deltas={("not", "a key"): None}),  # type: ignore[dict-item]
        ChainUpdate(address_deltas={AddressDeltaKey(pkh(0), -1, 0, False, 0): None}),
        ChainUpdate(address_deltas={AddressDeltaKey(pkh(0), 1, 0, 0, 0): None}),  # type: ignore[arg-type]
        ChainUpdate(
            address_deltas={AddressDeltaKey(pkh(0), 1, 0, False, 0): AddressDelta(b"x", 5)}
        ),
        ChainUpdate(
            address_deltas={AddressDeltaKey(pkh(0), 1, 0, False, 0): AddressDelta(TXID, 1 << 63)}
        ),
        ChainUpdate(
            address_deltas={AddressDeltaKey(pkh(0), 1, 0, False, 1 << 32): AddressDelta(TXID, 1)}
        ),
    ],
)
def test_malformed_address_rows_are_refused_by_both_stores(
    update: ChainUpdate, tmp_path: Path
) -> None:
    for store in (MemoryStore(), SQLiteStore.open(tmp_path, PARAMS.name, PARAMS.genesis_hash)):
        with pytest.raises(StorageError):
            store.apply(update)
        assert store.address_index_tip() is None
        store.close()


@pytest.mark.parametrize("key", ["address_index_tip", "address_index_folded"])
def test_the_address_index_meta_keys_are_reserved(key: str) -> None:
    with pytest.raises(StorageError, match="owned by the store"):
        MemoryStore().put_meta(key, bytes(32))


@pytest.mark.parametrize("staging_bound", [None, 3])
def test_query_limits_and_ranges(tmp_path: Path, staging_bound: int | None) -> None:
    sqlite = SQLiteStore.open(tmp_path, PARAMS.name, PARAMS.genesis_hash)
    if staging_bound is not None:  # rows split between address_deltas and the staging table
        sqlite.staging_bound = staging_bound
    for store in (MemoryStore(), sqlite):
        b = indexed_builder(store)
        spend_chain(b, 6)
        rows = store.address_deltas([pkh(0)], 0, EVERYTHING, EVERYTHING)
        heights = [r.key.height for r in rows]
        assert heights == sorted(heights) and len(rows) >= 6
        assert len(store.address_deltas([pkh(0)], 0, EVERYTHING, 3)) == 3
        window = store.address_deltas([pkh(0)], 2, 4, EVERYTHING)
        assert {r.key.height for r in window} == {2, 3, 4}
        assert len(store.address_utxos([pkh(0)], 1)) == 1
        received = sum(r.delta.satoshis for r in rows if r.delta.satoshis > 0)
        assert store.address_balance(pkh(0)) == (sum(r.delta.satoshis for r in rows), received)
        store.close()


class _Wallet:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def decode(self, address: str) -> bytes:
        try:
            return decode_address(address, self.prefix)
        except AddressError as exc:
            raise WalletError(str(exc)) from None


def test_rpc_result_bound_asks_for_a_height_range(monkeypatch: pytest.MonkeyPatch) -> None:
    from node.rpc.methods import addressindex as rpc

    b = indexed_builder(MemoryStore())
    spend_chain(b, 6)
    node = SimpleNamespace(
        address_index=b.store, wallet=_Wallet(PARAMS.address_prefix), chain=b.chain
    )
    address = encode_address(PARAMS.address_prefix, pkh(0))
    everything = asyncio.run(rpc.getaddressdeltas(node, {"addresses": [address]}))
    monkeypatch.setattr(rpc, "MAX_ADDRESS_RESULTS", len(everything) - 1)
    for method in (rpc.getaddressdeltas, rpc.getaddresstxids):
        with pytest.raises(RPCError) as err:
            asyncio.run(method(node, {"addresses": [address]}))
        assert err.value.code == -8 and "start/end" in err.value.message
    narrower = asyncio.run(
        rpc.getaddressdeltas(node, {"addresses": [address], "start": 2, "end": 3})
    )
    assert narrower == [d for d in everything if 2 <= d["height"] <= 3]
    utxos = asyncio.run(rpc.getaddressutxos(node, address))
    monkeypatch.setattr(rpc, "MAX_ADDRESS_RESULTS", len(utxos) - 1)
    with pytest.raises(RPCError, match="unspent outputs"):
        asyncio.run(rpc.getaddressutxos(node, address))
    node.address_index = None
    with pytest.raises(RPCError, match="--addressindex"):
        asyncio.run(rpc.getaddressbalance(node, address))


# -- SQLiteStore's staging table (storage/addressstaging.py) ---------------------------------


def staged_count(store: SQLiteStore) -> int:
    conn = store._conn
    assert conn is not None
    size = conn.execute("SELECT coalesce(sum(length(data)), 0) FROM address_staging").fetchone()
    return int(size[0]) // STAGED_ROW.size


def folded_rows(store: SQLiteStore) -> int:
    conn = store._conn
    assert conn is not None
    return int(conn.execute("SELECT count(*) FROM address_deltas").fetchone()[0])


@settings(SETTINGS, max_examples=40)
@given(st.data())
def test_incremental_index_equals_rebuild_when_folding_at_most_commits(
    data: st.DataObject,
) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        store = SQLiteStore.open(Path(scratch), PARAMS.name, PARAMS.genesis_hash)
        store.staging_bound = data.draw(st.integers(0, 6), label="staging bound")
        try:
            run_random_tree(indexed_builder(store), data, 10)
        finally:
            store.close()


def test_staging_is_bounded_folds_and_survives_reopening(tmp_path: Path) -> None:
    store = SQLiteStore.open(tmp_path, PARAMS.name, PARAMS.genesis_hash)
    store.staging_bound = 7
    b = indexed_builder(store)
    folds = 0
    for _ in range(12):
        before = folded_rows(store)
        spend_chain(b, 1)
        # Each block writes 2-4 rows: after a commit at most the bound plus its own are staged.
        assert staged_count(store) <= 7 + 4
        folds += folded_rows(store) > before
        check_index(b)
    assert folds >= 2 and staged_count(store) > 0
    store.close()
    store = SQLiteStore.open(tmp_path, PARAMS.name, PARAMS.genesis_hash)
    store.staging_bound = 7
    b.store = store
    b.chain.reader = store
    check_index(b)
    spend_chain(b, 6)
    check_index(b)
    store.close()


def test_a_file_without_the_staging_table_opens_and_keeps_its_rows(tmp_path: Path) -> None:
    import sqlite3

    store = SQLiteStore.open(tmp_path, PARAMS.name, PARAMS.genesis_hash)
    store.staging_bound = 0  # every commit folds: all rows end in address_deltas
    b = indexed_builder(store)
    spend_chain(b, 4)
    before = dump(store)
    store.close()
    conn = sqlite3.connect(tmp_path / "chain.sqlite3")
    conn.execute("DROP TABLE address_staging")
    conn.execute("DELETE FROM meta WHERE key = 'address_index_folded'")
    conn.commit()
    conn.close()
    store = SQLiteStore.open(tmp_path, PARAMS.name, PARAMS.genesis_hash)
    assert dump(store) == before
    b.store = store
    b.chain.reader = store
    spend_chain(b, 3)
    check_index(b)
    assert staged_count(store) > 0  # rows above the old rows' heights are staged
    store.close()


@pytest.mark.parametrize(
    "damage",
    [
        "UPDATE address_staging SET data = substr(data, 2)",
        "UPDATE meta SET value = X'ff' WHERE key = 'address_index_folded'",
    ],
)
def test_a_damaged_staging_table_is_reported_as_corrupt(tmp_path: Path, damage: str) -> None:
    import sqlite3

    store = SQLiteStore.open(tmp_path, PARAMS.name, PARAMS.genesis_hash)
    spend_chain(indexed_builder(store), 3)
    assert staged_count(store) > 0
    store.close()
    conn = sqlite3.connect(tmp_path / "chain.sqlite3")
    conn.execute(damage)
    conn.commit()
    conn.close()
    with pytest.raises(StorageError, match="corrupt"):
        SQLiteStore.open(tmp_path, PARAMS.name, PARAMS.genesis_hash)
