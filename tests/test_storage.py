"""Tests for storage: both stores' semantics, atomicity, and SQLiteStore's refusals to open."""

from __future__ import annotations

import dataclasses
import random
import re
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from consensus.coins import Coin
from consensus.params import REGTEST, TESTNET
from consensus.tx import OutPoint
from consensus.update import ChainSnapshot, ChainStore, ChainUpdate, IndexRecord
from storage import MemoryStore, SQLiteStore, StorageError, open_store
from storage.sqlite import FILENAME, SCHEMA_VERSION

NETWORK = "regtest"
GENESIS = bytes(range(32))

Store = MemoryStore | SQLiteStore
StoreFactory = Callable[[], Store]


# -- test data --------------------------------------------------------------------------------


def random_hash(rng: random.Random) -> bytes:
    return rng.randbytes(32)


def random_outpoint(rng: random.Random) -> OutPoint:
    return OutPoint(random_hash(rng), rng.randrange(8))


def random_coin(rng: random.Random) -> Coin:
    return Coin(rng.randrange(1, 50 * 10**8), rng.randbytes(20), rng.randrange(10_000), False)


def random_record(rng: random.Random, block_hash: bytes | None = None) -> IndexRecord:
    return IndexRecord(
        hash=block_hash or random_hash(rng),
        header=rng.randbytes(80),
        height=rng.randrange(10_000),
        chainwork=rng.getrandbits(256),
        status=rng.randrange(64),
        sequence=rng.randrange(10**9),
    )


def filled_update(rng: random.Random, n: int = 20) -> ChainUpdate:
    """An update that writes at least `n` rows into every table and sets the tip."""
    hashes = [random_hash(rng) for _ in range(n)]
    return ChainUpdate(
        index={h: random_record(rng, h) for h in hashes},
        blocks={h: rng.randbytes(rng.randrange(1, 2000)) for h in hashes},
        undo={h: rng.randbytes(rng.randrange(0, 300)) for h in hashes},
        utxo={random_outpoint(rng): random_coin(rng) for _ in range(n)},
        tx_index={random_hash(rng): rng.choice(hashes) for _ in range(n)},
        spends={random_outpoint(rng): random_hash(rng) for _ in range(n)},
        tip=hashes[-1],
    )


class UpdateGenerator:
    """Random updates that insert new keys, replace live ones and delete live and dead ones."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.blocks: list[bytes] = []
        self.outpoints: list[OutPoint] = []
        self.txids: list[bytes] = []
        self.spent: list[OutPoint] = []

    def _pick(self, pool: list, k: int) -> list:
        return self.rng.sample(pool, min(k, len(pool)))

    def next(self) -> ChainUpdate:
        rng = self.rng
        update = ChainUpdate()
        for h in [random_hash(rng) for _ in range(rng.randrange(3))]:
            self.blocks.append(h)
            update.index[h] = random_record(rng, h)
            update.blocks[h] = rng.randbytes(rng.randrange(1, 500))
            update.undo[h] = rng.randbytes(rng.randrange(0, 100))
        for h in self._pick(self.blocks, 2):  # status upserts and replaced bodies
            update.index[h] = random_record(rng, h)
            update.undo[h] = rng.randbytes(10)
        for h in self._pick(self.blocks, 1):
            update.blocks[h] = None
        for _ in range(rng.randrange(10)):
            outpoint = random_outpoint(rng)
            self.outpoints.append(outpoint)
            update.utxo[outpoint] = random_coin(rng)
        for outpoint in self._pick(self.outpoints, 4):
            update.utxo[outpoint] = None if rng.random() < 0.7 else random_coin(rng)
            if rng.random() < 0.5:
                self.spent.append(outpoint)
                update.spends[outpoint] = random_hash(rng)
        for outpoint in self._pick(self.spent, 1):
            update.spends[outpoint] = None
        for _ in range(rng.randrange(5)):
            txid = random_hash(rng)
            self.txids.append(txid)
            update.tx_index[txid] = random_hash(rng)
        for txid in self._pick(self.txids, 2):
            update.tx_index[txid] = None if rng.random() < 0.5 else random_hash(rng)
        if rng.random() < 0.6 and self.blocks:
            update.tip = rng.choice(self.blocks)
        return update


def merge(updates: list[ChainUpdate]) -> ChainUpdate:
    merged = ChainUpdate()
    for update in updates:
        for name in ("index", "blocks", "undo", "utxo", "tx_index", "spends"):
            getattr(merged, name).update(getattr(update, name))
        if update.tip is not None:
            merged.tip = update.tip
    return merged


def state(store: ChainStore, hashes: Iterator[bytes] | list[bytes]) -> tuple:
    """Everything a store holds about the given block hashes, for exact comparison."""
    hashes = sorted(set(hashes))
    return (
        store.load(),
        {h: store.get_block_bytes(h) for h in hashes},
        {h: store.get_undo_bytes(h) for h in hashes},
    )


def touched(*updates: ChainUpdate) -> list[bytes]:
    return [h for u in updates for h in (*u.index, *u.blocks, *u.undo)]


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(params=["memory", "sqlite"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    opened: list[Store] = []
    counter = iter(range(1_000))

    def factory() -> Store:
        if request.param == "memory":
            store: Store = MemoryStore()
        else:
            store = SQLiteStore.open(tmp_path / f"d{next(counter)}", NETWORK, GENESIS)
        opened.append(store)
        return store

    yield factory
    for store in opened:
        store.close()


@pytest.fixture
def store(make_store: StoreFactory) -> Store:
    return make_store()


def open_sqlite(datadir: Path) -> SQLiteStore:
    return SQLiteStore.open(datadir, NETWORK, GENESIS)


# -- both stores ------------------------------------------------------------------------------


def test_empty_store_loads_nothing(store: Store) -> None:
    assert store.load() == ChainSnapshot(index=[], tip=None, utxo={}, tx_index={}, spends={})
    assert store.get_block_bytes(bytes(32)) is None
    assert store.get_undo_bytes(bytes(32)) is None


def test_round_trip_of_every_table(store: Store) -> None:
    rng = random.Random(1)
    update = filled_update(rng)
    store.apply(update)
    snapshot = store.load()
    assert sorted(snapshot.index, key=lambda r: r.hash) == sorted(
        update.index.values(), key=lambda r: r.hash
    )
    assert [r.height for r in snapshot.index] == sorted(r.height for r in snapshot.index)
    assert snapshot.tip == update.tip
    assert snapshot.utxo == update.utxo
    assert snapshot.tx_index == update.tx_index
    assert snapshot.spends == update.spends
    for h in update.index:
        assert store.get_block_bytes(h) == update.blocks[h]
        assert store.get_undo_bytes(h) == update.undo[h]

    # Delete half of every table; the other half must stay exactly as it was.
    delete = ChainUpdate()
    for name in ("index", "blocks", "undo", "utxo", "tx_index", "spends"):
        keys = list(getattr(update, name))[::2]
        getattr(delete, name).update(dict.fromkeys(keys))
    store.apply(delete)
    snapshot = store.load()
    assert {r.hash for r in snapshot.index} == set(update.index) - set(delete.index)
    assert snapshot.utxo == {k: v for k, v in update.utxo.items() if k not in delete.utxo}
    assert snapshot.tx_index == {
        k: v for k, v in update.tx_index.items() if k not in delete.tx_index
    }
    assert snapshot.spends == {k: v for k, v in update.spends.items() if k not in delete.spends}
    assert snapshot.tip == update.tip  # tip None means unchanged
    for h in update.blocks:
        expected = None if h in delete.blocks else update.blocks[h]
        assert store.get_block_bytes(h) == expected


def test_deleting_a_missing_key_is_a_no_op(store: Store) -> None:
    rng = random.Random(2)
    store.apply(ChainUpdate(utxo={random_outpoint(rng): None}, tx_index={random_hash(rng): None}))
    assert store.load() == MemoryStore().load()


def test_index_status_and_tip_upserts(store: Store) -> None:
    rng = random.Random(3)
    record = random_record(rng)
    store.apply(ChainUpdate(index={record.hash: record}, tip=record.hash))
    changed = dataclasses.replace(record, status=record.status | 0x80, sequence=7)
    other = random_hash(rng)
    store.apply(ChainUpdate(index={record.hash: changed}, tip=other))
    snapshot = store.load()
    assert snapshot.index == [changed]
    assert snapshot.tip == other


def test_large_chainwork_and_extreme_integers_round_trip(store: Store) -> None:
    rng = random.Random(4)
    record = dataclasses.replace(
        random_record(rng), chainwork=(1 << 256) - 1, height=(1 << 63) - 1, status=0, sequence=0
    )
    outpoint = OutPoint(random_hash(rng), 0xFFFFFFFF)
    coin = Coin((1 << 64) - 1, b"", 0, True)
    store.apply(ChainUpdate(index={record.hash: record}, utxo={outpoint: coin}))
    snapshot = store.load()
    assert snapshot.index == [record]
    assert snapshot.utxo == {outpoint: coin}


@pytest.mark.parametrize("seed", range(5))
def test_updates_in_sequence_equal_one_merged_update(make_store: StoreFactory, seed: int) -> None:
    generator = UpdateGenerator(seed)
    updates = [generator.next() for _ in range(60)]
    one_by_one, merged = make_store(), make_store()
    for update in updates:
        one_by_one.apply(update)
    merged.apply(merge(updates))
    hashes = touched(*updates)
    assert state(one_by_one, hashes) == state(merged, hashes)
    assert one_by_one.load().utxo  # the generator must leave something to compare


def test_the_caller_mutating_updates_or_snapshots_cannot_change_the_store(store: Store) -> None:
    rng = random.Random(5)
    update = filled_update(rng)
    store.apply(update)
    expected = state(store, touched(update))
    record = next(iter(update.index.values()))
    record.status = 999
    record.height = 0
    update.utxo.clear()
    update.tx_index[random_hash(rng)] = random_hash(rng)
    update.tip = random_hash(rng)
    snapshot = store.load()
    snapshot.index[0].status = 12345
    snapshot.utxo.clear()
    assert state(store, touched(update)) == expected


BAD_UPDATES: dict[str, Callable[[random.Random], ChainUpdate]] = {
    "spends value not bytes": lambda rng: ChainUpdate(spends={random_outpoint(rng): 123}),  # type: ignore[dict-item]
    "short tx_index value": lambda rng: ChainUpdate(tx_index={random_hash(rng): b"short"}),
    "tip of wrong size": lambda rng: ChainUpdate(tip=b"\x00" * 31),
    "index key differs from record": lambda rng: ChainUpdate(
        index={random_hash(rng): random_record(rng)}
    ),
    "negative chainwork": lambda rng: ChainUpdate(
        index={(h := random_hash(rng)): dataclasses.replace(random_record(rng, h), chainwork=-1)}
    ),
    "chainwork over 256 bits": lambda rng: ChainUpdate(
        index={
            (h := random_hash(rng)): dataclasses.replace(random_record(rng, h), chainwork=1 << 256)
        }
    ),
    "height not an int": lambda rng: ChainUpdate(
        index={(h := random_hash(rng)): dataclasses.replace(random_record(rng, h), height=1.5)}  # type: ignore[arg-type]
    ),
    "coin not a Coin": lambda rng: ChainUpdate(utxo={random_outpoint(rng): (1, b"", 0, False)}),  # type: ignore[dict-item]
    "outpoint index over 32 bits": lambda rng: ChainUpdate(
        utxo={OutPoint(random_hash(rng), 1 << 32): random_coin(rng)}
    ),
    "block body as str": lambda rng: ChainUpdate(blocks={random_hash(rng): "x"}),  # type: ignore[dict-item]
}


@pytest.mark.parametrize("case", sorted(BAD_UPDATES))
def test_an_update_with_a_bad_value_changes_nothing(store: Store, case: str) -> None:
    rng = random.Random(6)
    first = filled_update(rng)
    store.apply(first)
    # Valid changes in every table first, so a store that wrote as it went would be caught.
    bad = filled_update(rng)
    bad_part = BAD_UPDATES[case](rng)
    for name in ("index", "blocks", "undo", "utxo", "tx_index", "spends"):
        getattr(bad, name).update(getattr(bad_part, name))
    bad.tip = bad_part.tip or bad.tip
    expected = state(store, touched(first, bad))
    with pytest.raises(StorageError):
        store.apply(bad)
    assert state(store, touched(first, bad)) == expected
    store.apply(ChainUpdate(tip=first.tip))  # and the store is still usable


def test_a_bad_value_is_named_by_its_row(store: Store) -> None:
    rng = random.Random(7)
    outpoint = OutPoint(random_hash(rng), 3)
    block_hash = random_hash(rng)
    with pytest.raises(StorageError, match=re.escape(f"utxo[{outpoint}].height")):
        store.apply(ChainUpdate(utxo={outpoint: random_coin(rng)._replace(height=-1)}))
    with pytest.raises(StorageError, match=re.escape(f"tx_index[{block_hash.hex()}]")):
        store.apply(ChainUpdate(tx_index={block_hash: b"short"}))


def test_meta_entries(store: Store) -> None:
    assert store.get_meta("peers") is None
    store.put_meta("peers", b"\x01\x02")
    assert store.get_meta("peers") == b"\x01\x02"
    store.put_meta("peers", None)
    assert store.get_meta("peers") is None
    for reserved in ("tip", "network", "genesis_hash", "schema_version"):
        with pytest.raises(StorageError, match="owned by the store"):
            store.put_meta(reserved, b"x")
    with pytest.raises(StorageError, match="must be bytes"):
        store.put_meta("peers", "text")  # type: ignore[arg-type]


def test_closed_store_refuses_use_and_close_is_idempotent(store: Store) -> None:
    store.close()
    store.close()
    with pytest.raises(StorageError, match="closed"):
        store.load()
    with pytest.raises(StorageError, match="closed"):
        store.apply(ChainUpdate())
    with pytest.raises(StorageError, match="closed"):
        store.get_block_bytes(bytes(32))


# -- SQLiteStore ------------------------------------------------------------------------------


def test_reopen_gives_the_same_state(tmp_path: Path) -> None:
    generator = UpdateGenerator(7)
    updates = [generator.next() for _ in range(40)]
    with open_sqlite(tmp_path) as store:
        for update in updates:
            store.apply(update)
        store.put_meta("banned", b"1.2.3.4")
        expected = state(store, touched(*updates))
    with open_sqlite(tmp_path) as store:
        assert state(store, touched(*updates)) == expected
        assert store.get_meta("banned") == b"1.2.3.4"
        assert store.get_meta("network") == NETWORK.encode()
        assert store.get_meta("genesis_hash") == GENESIS


def test_open_creates_parents_and_uses_wal(tmp_path: Path) -> None:
    datadir = tmp_path / "a" / "b"
    with open_sqlite(datadir) as store:
        assert store.path == datadir / FILENAME
        conn = sqlite3.connect(store.path)
        try:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
            assert {"meta", "block_index", "blocks", "undo", "utxo", "tx_index", "spends"} <= tables
        finally:
            conn.close()


def test_open_store_uses_the_network_params(tmp_path: Path) -> None:
    with open_store(tmp_path, REGTEST) as store:
        assert store.get_meta("genesis_hash") == REGTEST.genesis_hash
    with pytest.raises(StorageError, match="testnet"):
        open_store(tmp_path, TESTNET)


def test_an_empty_file_is_initialised(tmp_path: Path) -> None:
    (tmp_path / FILENAME).touch()
    with open_sqlite(tmp_path) as store:
        assert store.load().tip is None


def test_a_failure_inside_the_transaction_rolls_everything_back(tmp_path: Path) -> None:
    rng = random.Random(8)
    store = open_sqlite(tmp_path)
    first = filled_update(rng)
    store.apply(first)
    bad = filled_update(rng)
    expected = state(store, touched(first, bad))
    # A trigger makes the spends insert, the last table written, fail after all others succeeded.
    conn = sqlite3.connect(store.path)
    conn.execute(
        "CREATE TRIGGER fail BEFORE INSERT ON spends BEGIN SELECT RAISE(ABORT, 'boom'); END"
    )
    conn.commit()
    with pytest.raises(StorageError, match=r"nothing was written.*boom"):
        store.apply(bad)
    assert state(store, touched(first, bad)) == expected
    conn.execute("DROP TRIGGER fail")
    conn.commit()
    conn.close()
    store.apply(bad)  # the connection survived the rollback
    store.close()
    with open_sqlite(tmp_path) as store:
        assert store.load().utxo == {**first.utxo, **bad.utxo}


class InterruptingConnection:
    """Delegates to a real connection but is interrupted when it writes the spends table."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def executemany(self, sql: str, rows: object) -> object:
        if "spends" in sql:
            raise KeyboardInterrupt
        return self.conn.executemany(sql, rows)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> object:
        return getattr(self.conn, name)


def test_an_interrupt_inside_the_transaction_rolls_back_and_propagates(tmp_path: Path) -> None:
    rng = random.Random(9)
    store = open_sqlite(tmp_path)
    first = filled_update(rng)
    store.apply(first)
    bad = filled_update(rng)
    expected = state(store, touched(first, bad))
    real = store._conn
    assert real is not None
    store._conn = InterruptingConnection(real)  # type: ignore[assignment]
    with pytest.raises(KeyboardInterrupt):
        store.apply(bad)
    assert not real.in_transaction
    store._conn = real
    assert state(store, touched(first, bad)) == expected
    store.close()


def test_apply_from_another_thread(tmp_path: Path) -> None:
    rng = random.Random(10)
    update = filled_update(rng)
    with open_sqlite(tmp_path) as store:
        thread = threading.Thread(target=store.apply, args=(update,))
        thread.start()
        thread.join()
        assert store.load().utxo == update.utxo


# -- SQLiteStore refusing to open ----------------------------------------------------------


def make_database(datadir: Path, seed: int = 11) -> Path:
    with open_sqlite(datadir) as store:
        store.apply(filled_update(random.Random(seed), n=300))
        return store.path


def assert_refused(datadir: Path, pattern: str, network: str = NETWORK, genesis: bytes = GENESIS):
    path = datadir / FILENAME
    before = path.read_bytes()
    with pytest.raises(StorageError, match=pattern) as info:
        SQLiteStore.open(datadir, network, genesis)
    assert path.read_bytes() == before
    assert str(path) in str(info.value)
    return info.value


def test_another_networks_datadir_is_refused(tmp_path: Path) -> None:
    make_database(tmp_path)
    error = assert_refused(tmp_path, "network 'regtest'.*network 'testnet'", network="testnet")
    assert GENESIS.hex() in str(error)
    other = bytes(32)
    error = assert_refused(tmp_path, "genesis", genesis=other)
    assert other.hex() in str(error) and GENESIS.hex() in str(error)


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = make_database(tmp_path)
    conn = sqlite3.connect(path)
    conn.execute(
        "UPDATE meta SET value = ? WHERE key = 'schema_version'",
        (str(SCHEMA_VERSION + 1).encode(),),
    )
    conn.commit()
    conn.close()
    assert_refused(tmp_path, f"newer powlab \\(schema version {SCHEMA_VERSION + 1}")


def test_a_garbage_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / FILENAME).write_bytes(random.Random(12).randbytes(10_000))
    assert_refused(tmp_path, "is corrupt: .*not a SQLite database.*move it aside")
    (tmp_path / FILENAME).write_bytes(b"hello")
    assert_refused(tmp_path, "is corrupt")


@pytest.mark.parametrize("fraction", [0.03, 0.3, 0.5, 0.9])
def test_a_truncated_database_is_refused(tmp_path: Path, fraction: float) -> None:
    path = make_database(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    assert_refused(tmp_path, "is corrupt: .*left as it is — move it aside")


def test_a_damaged_page_is_refused(tmp_path: Path) -> None:
    path = make_database(tmp_path)
    data = bytearray(path.read_bytes())
    page_size = int.from_bytes(data[16:18], "big")
    for offset in range(page_size * 2, len(data), page_size * 3):  # wreck every third page
        data[offset : offset + 64] = random.Random(offset).randbytes(64)
    path.write_bytes(bytes(data))
    assert_refused(tmp_path, "is corrupt")


def test_a_foreign_sqlite_database_is_refused(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / FILENAME)
    conn.execute("CREATE TABLE notes (text TEXT)")
    conn.commit()
    conn.close()
    assert_refused(tmp_path, "not a powlab chain store")


@pytest.mark.parametrize("table", ["utxo", "block_index", "spends"])
def test_a_missing_table_is_refused(tmp_path: Path, table: str) -> None:
    path = make_database(tmp_path)
    conn = sqlite3.connect(path)
    conn.execute(f"DROP TABLE {table}")
    conn.commit()
    conn.close()
    assert_refused(tmp_path, f"table {table} is missing")


def test_a_changed_table_is_refused(tmp_path: Path) -> None:
    path = make_database(tmp_path)
    conn = sqlite3.connect(path)
    conn.execute("ALTER TABLE tx_index RENAME COLUMN block_hash TO blockhash")
    conn.commit()
    conn.close()
    assert_refused(tmp_path, "table tx_index has columns")


def test_an_undecodable_row_is_reported_at_load(tmp_path: Path) -> None:
    path = make_database(tmp_path)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE utxo SET coin = x'c1'")  # 0xc1 is never valid msgpack
    conn.commit()
    conn.close()
    with open_sqlite(tmp_path) as store, pytest.raises(StorageError, match="table utxo"):
        store.load()
