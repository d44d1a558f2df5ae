"""The default on-disk store: one SQLite database per data directory, one transaction per update.

Durability: the database runs in WAL mode with ``synchronous=NORMAL`` by default. In WAL mode a
commit is appended to the write-ahead log before `apply` returns, so it survives the process
being killed at any moment (SIGKILL, OOM killer, a crash in the interpreter): SQLite replays or
discards the log on the next open and every reader sees exactly the last committed update. What
NORMAL gives up is the fsync of the log at every commit, so a power loss or kernel panic may lose
the last few commits (never corrupt the file, never tear an update). The chain state recovers
from that by downloading those blocks again from its peers. ``synchronous="FULL"`` (an argument
of `SQLiteStore.open` and `storage.open_store`) pays an fsync per commit instead and survives
power loss too (see docs/storage.md for measured costs); the node has no option for it and
always opens its store with NORMAL.

Every refusal to open leaves the file as it was: an existing database is first checked through a
read-only connection, and only a database that passes every check is opened for writing.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from consensus.addressindex import AddressDelta, AddressDeltaKey, AddressIndexEntry, AddressUtxo
from consensus.coins import decode_coin, decode_outpoint, encode_coin, encode_outpoint
from consensus.tx import OutPoint
from consensus.update import ChainSnapshot, ChainUpdate, IndexRecord
from storage import addressstaging
from storage.errors import (
    ADDRESS_FOLDED_KEY,
    ADDRESS_TIP_KEY,
    StorageError,
    check_meta,
    check_update,
)

SCHEMA_VERSION = 1
FILENAME = "chain.sqlite3"
CHAINWORK_SIZE = 32

Synchronous = Literal["NORMAL", "FULL"]

_SQLITE_MAGIC = b"SQLite format 3\x00"
_SQLITE_HEADER_SIZE = 100
# Long enough to ride out a checkpoint or a reader in another process, short enough that a stuck
# second writer is reported instead of hanging the node forever.
_BUSY_TIMEOUT = 30.0
_CACHE_KIB = 64 * 1024

# Column names per table, checked at open so a damaged or foreign schema is reported by name
# instead of failing later inside `load`.
_COLUMNS: dict[str, tuple[str, ...]] = {
    "meta": ("key", "value"),
    "block_index": ("hash", "header", "height", "chainwork", "status", "sequence"),
    "blocks": ("hash", "data"),
    "undo": ("hash", "data"),
    "utxo": ("outpoint", "coin"),
    "tx_index": ("txid", "block_hash"),
    "spends": ("outpoint", "txid"),
}

# Small fixed-size rows live directly in the primary-key b-tree (WITHOUT ROWID), which halves
# their lookups and storage. Block bodies and undo data can be large, and SQLite advises against
# WITHOUT ROWID for rows bigger than a twentieth of a page, so those keep a rowid.
_SCHEMA: tuple[str, ...] = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID",
    "CREATE TABLE block_index (hash BLOB PRIMARY KEY, header BLOB NOT NULL,"
    " height INTEGER NOT NULL, chainwork BLOB NOT NULL, status INTEGER NOT NULL,"
    " sequence INTEGER NOT NULL) WITHOUT ROWID",
    "CREATE TABLE blocks (hash BLOB PRIMARY KEY, data BLOB NOT NULL)",
    "CREATE TABLE undo (hash BLOB PRIMARY KEY, data BLOB NOT NULL)",
    "CREATE TABLE utxo (outpoint BLOB PRIMARY KEY, coin BLOB NOT NULL) WITHOUT ROWID",
    "CREATE TABLE tx_index (txid BLOB PRIMARY KEY, block_hash BLOB NOT NULL) WITHOUT ROWID",
    "CREATE TABLE spends (outpoint BLOB PRIMARY KEY, txid BLOB NOT NULL) WITHOUT ROWID",
)

_KEY_COLUMN = {name: columns[0] for name, columns in _COLUMNS.items()}

# The optional address index (consensus/addressindex.py). Its tables are created at every open
# when absent, so a file written before they existed opens unchanged and keeps schema version 1:
# a powlab that does not know them ignores them, and the meta key `address_index_tip` (the block
# the rows are valid for) tells the next --addressindex start whether they are stale. The key of
# `address_deltas` leads with the address, so one address's rows are one contiguous range of the
# b-tree, already in chain order; the most recent rows wait in `address_staging` to be folded
# into it in bulk (storage/addressstaging.py explains why and how).
_ADDRESS_COLUMNS: dict[str, tuple[str, ...]] = {
    "address_deltas": ("pkh", "height", "blockindex", "spending", "idx", "txid", "satoshis"),
    "address_staging": addressstaging.COLUMNS,
}
_ADDRESS_SCHEMA: tuple[str, ...] = (
    "CREATE TABLE IF NOT EXISTS address_deltas (pkh BLOB NOT NULL, height INTEGER NOT NULL,"
    " blockindex INTEGER NOT NULL, spending INTEGER NOT NULL, idx INTEGER NOT NULL,"
    " txid BLOB NOT NULL, satoshis INTEGER NOT NULL,"
    " PRIMARY KEY (pkh, height, blockindex, spending, idx)) WITHOUT ROWID",
    addressstaging.SCHEMA,
)
# An address's unspent outputs: its receiving rows whose outpoint the spends table lacks.
_UTXO_QUERY = (
    "SELECT height, blockindex, idx, txid, satoshis FROM address_deltas AS d"
    " WHERE pkh = ? AND spending = 0 AND NOT EXISTS"
    " (SELECT 1 FROM spends WHERE outpoint = powlab_outpoint(d.txid, d.idx))"
    " ORDER BY height, blockindex, spending, idx LIMIT ?"
)

_Statement = tuple[str, Sequence[tuple[Any, ...]]]
_T = TypeVar("_T")
_F = TypeVar("_F", bound=Callable[..., Any])
_MAX_HEIGHT = (1 << 63) - 1  # every height a row may have (SQLite's largest integer)


def _corrupt(path: Path, detail: str) -> StorageError:
    return StorageError(
        f"{path} is corrupt: {detail}; it was left as it is — move it aside to start afresh"
    )


def _is_corruption(exc: sqlite3.Error) -> bool:
    return getattr(exc, "sqlite_errorname", "") in {"SQLITE_CORRUPT", "SQLITE_NOTADB"}


def _upsert(table: str) -> str:
    columns = _COLUMNS[table]
    return (
        f"INSERT OR REPLACE INTO {table} ({', '.join(columns)})"
        f" VALUES ({', '.join('?' for _ in columns)})"
    )


def _delete(table: str) -> str:
    return f"DELETE FROM {table} WHERE {_KEY_COLUMN[table]} = ?"


def _split(
    table: str, items: Iterable[tuple[Any, Any]], encode_key: Any, encode_value: Any
) -> list[_Statement]:
    deletes: list[tuple[Any, ...]] = []
    upserts: list[tuple[Any, ...]] = []
    for key, value in items:
        if value is None:
            deletes.append((encode_key(key),))
        else:
            upserts.append((encode_key(key), *encode_value(value)))
    return [(_delete(table), deletes), (_upsert(table), upserts)]


def _same(value: Any) -> Any:
    return value


def _one(value: Any) -> tuple[Any]:
    return (value,)


def _record_columns(record: IndexRecord) -> tuple[Any, ...]:
    return (
        record.header,
        record.height,
        record.chainwork.to_bytes(CHAINWORK_SIZE, "big"),
        record.status,
        record.sequence,
    )


def _encode_update(update: ChainUpdate) -> list[_Statement]:
    """Every statement of the update with its rows, computed before the transaction opens."""
    statements = [
        *_split("block_index", update.index.items(), _same, _record_columns),
        *_split("blocks", update.blocks.items(), _same, _one),
        *_split("undo", update.undo.items(), _same, _one),
        *_split("utxo", update.utxo.items(), encode_outpoint, lambda c: (encode_coin(c),)),
        *_split("tx_index", update.tx_index.items(), _same, _one),
        *_split("spends", update.spends.items(), encode_outpoint, _one),
    ]
    if update.tip is not None:
        statements.append((_upsert("meta"), [("tip", update.tip)]))
    if update.address_tip is not None:
        statements.append((_upsert("meta"), [(ADDRESS_TIP_KEY, update.address_tip)]))
    return [(sql, rows) for sql, rows in statements if rows]


def _chain_order(entry: AddressIndexEntry) -> tuple[Any, ...]:
    key = entry.key
    return (key.height, key.blockindex, key.spending, key.index, key.pkh)


def _outpoint_key(txid: bytes, index: int) -> bytes:
    return encode_outpoint(OutPoint(txid, index))


def _spent(conn: sqlite3.Connection, txid: bytes, index: int) -> bool:
    found = conn.execute("SELECT 1 FROM spends WHERE outpoint = ?", (_outpoint_key(txid, index),))
    return found.fetchone() is not None


def _check_existing(path: Path, network: str, genesis_hash: bytes) -> bool:
    """Validate an existing file without writing to it; return False if it holds no tables yet.

    A database with no tables at all is what a crash during the very first open leaves behind, so
    it is initialised rather than refused.
    """
    try:
        with path.open("rb") as f:
            head = f.read(_SQLITE_HEADER_SIZE)
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc}") from exc
    if not head:
        return False
    if len(head) < _SQLITE_HEADER_SIZE or not head.startswith(_SQLITE_MAGIC):
        raise _corrupt(path, "it is not a SQLite database (bad header)")
    try:
        conn = sqlite3.connect(
            path.resolve().as_uri() + "?mode=ro", uri=True, timeout=_BUSY_TIMEOUT
        )
    except sqlite3.Error as exc:
        raise StorageError(f"cannot open {path} for reading: {exc}") from exc
    try:
        return _check_contents(conn, path, network, genesis_hash)
    except sqlite3.Error as exc:
        if _is_corruption(exc):
            raise _corrupt(path, str(exc)) from exc
        raise StorageError(f"cannot read {path}: {exc}") from exc
    finally:
        conn.close()


def _check_contents(
    conn: sqlite3.Connection, path: Path, network: str, genesis_hash: bytes
) -> bool:
    problems = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
    if problems != ["ok"]:
        raise _corrupt(path, "quick_check found " + "; ".join(problems))
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if not tables:
        return False
    if "meta" not in tables:
        raise StorageError(
            f"{path} is a SQLite database but not a powlab chain store (it has no meta table);"
            " it was left as it is — use another data directory"
        )
    meta = dict(
        conn.execute(
            "SELECT key, value FROM meta WHERE key IN ('schema_version', 'network', 'genesis_hash')"
        )
    )
    _check_schema_version(path, meta.get("schema_version"))
    stored_network = meta.get("network")
    stored_genesis = meta.get("genesis_hash")
    if not isinstance(stored_network, bytes) or not isinstance(stored_genesis, bytes):
        raise _corrupt(path, "the meta table lacks the network name or genesis hash")
    if stored_network != network.encode() or stored_genesis != genesis_hash:
        raise StorageError(
            f"{path} holds the chain of network {stored_network.decode(errors='replace')!r}"
            f" (genesis {stored_genesis.hex()}), but this node runs network {network!r}"
            f" (genesis {genesis_hash.hex()}); it was left as it is — use another data"
            " directory for this network"
        )
    for table, expected in (_COLUMNS | _ADDRESS_COLUMNS).items():
        if table not in tables:
            if table in _ADDRESS_COLUMNS:
                continue  # created by the open that follows
            raise _corrupt(path, f"table {table} is missing")
        found = tuple(row[1] for row in conn.execute(f"PRAGMA table_info({table})"))
        if found != expected:
            raise _corrupt(
                path, f"table {table} has columns {list(found)}, expected {list(expected)}"
            )
    return True


def _check_schema_version(path: Path, raw: object) -> None:
    try:
        version = int(raw.decode("ascii")) if isinstance(raw, bytes) else None
    except ValueError:
        version = None
    if version is None or version < 1:
        raise _corrupt(path, f"the meta table holds no valid schema_version (found {raw!r})")
    if version > SCHEMA_VERSION:
        raise StorageError(
            f"{path} was written by a newer powlab (schema version {version}; this one reads up"
            f" to {SCHEMA_VERSION}); it was left as it is — upgrade powlab to use it"
        )


def _one_snapshot(method: _F) -> _F:
    """Run a read of several statements in one read transaction of the reading connection."""

    @functools.wraps(method)
    def wrapper(self: SQLiteStore, *args: Any, **kwargs: Any) -> Any:
        if self._read_lock is None:
            return method(self, *args, **kwargs)
        with self._reading():
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


class SQLiteStore:
    """Implements `ChainStore` on `<datadir>/chain.sqlite3`; open it with `SQLiteStore.open`.

    Two connections, each usable from any thread under its own lock (hence
    ``check_same_thread=False``): one writes (`apply`, `put_meta`) and loads, the other only
    reads (blocks, undo data, meta, the address index). The node applies updates in a writer
    thread (node/storewriter.py); with WAL a read on the other connection sees the last commit
    and never waits for the one in progress, so serving a block never stalls the event loop
    behind a commit. A read that takes several statements runs in one read transaction, so it
    sees one commit. SQLite itself keeps the file consistent if a second process writes to it,
    but keeping that from happening is the node's lock file's job.
    """

    def __init__(
        self, conn: sqlite3.Connection, path: Path, reader: sqlite3.Connection | None = None
    ) -> None:
        self._conn: sqlite3.Connection | None = conn
        self._lock = threading.Lock()
        # Without a reader connection (a caller that built the store by hand) reads share the
        # writing one, under its lock.
        self._reader: sqlite3.Connection | None = reader if reader is not None else conn
        self._read_lock = threading.RLock() if reader is not None else None
        self._read_depth = 0
        self.path = path
        # Read once here, then kept by `apply`, the only writer of the address tables; the
        # bound is an attribute so that tests can make folds frequent.
        self.staging_bound = addressstaging.ADDRESS_STAGING_ROWS
        self._staging = self._read_staging_state(conn)

    @classmethod
    def open(
        cls,
        datadir: Path,
        network: str,
        genesis_hash: bytes,
        *,
        synchronous: Synchronous = "NORMAL",
    ) -> SQLiteStore:
        """Open (or create) the store of `network`; refuse any file it cannot trust, untouched."""
        if synchronous not in ("NORMAL", "FULL"):
            raise StorageError(f"synchronous must be 'NORMAL' or 'FULL', got {synchronous!r}")
        datadir = Path(datadir)
        path = datadir / FILENAME
        try:
            datadir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create the data directory {datadir}: {exc}") from exc
        if path.exists() and not path.is_file():
            raise StorageError(f"{path} exists but is not a file")
        initialised = path.exists() and _check_existing(path, network, genesis_hash)
        try:
            conn = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=_BUSY_TIMEOUT
            )
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open {path}: {exc}") from exc
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                raise StorageError(
                    f"cannot use write-ahead logging for {path} (journal mode stays {mode!r});"
                    " is the data directory on a network file system?"
                )
            conn.execute(f"PRAGMA synchronous={synchronous}")
            conn.execute(f"PRAGMA cache_size=-{_CACHE_KIB}")
            conn.create_function("powlab_outpoint", 2, _outpoint_key, deterministic=True)
            if not initialised:
                cls._initialise(conn, path, network, genesis_hash)
            for statement in _ADDRESS_SCHEMA:
                conn.execute(statement)
            reader = cls._open_reader(path)
            try:
                return cls(conn, path, reader)
            except BaseException:
                reader.close()
                raise
        except BaseException as exc:
            conn.close()
            if isinstance(exc, sqlite3.Error):
                if _is_corruption(exc):
                    raise _corrupt(path, str(exc)) from exc
                raise StorageError(f"cannot prepare {path}: {exc}") from exc
            raise

    @staticmethod
    def _open_reader(path: Path) -> sqlite3.Connection:
        reader = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=_BUSY_TIMEOUT
        )
        try:
            reader.execute("PRAGMA query_only=1")  # this connection never writes
            reader.execute(f"PRAGMA cache_size=-{_CACHE_KIB}")
            reader.create_function("powlab_outpoint", 2, _outpoint_key, deterministic=True)
        except BaseException:
            reader.close()
            raise
        return reader

    def _read_staging_state(self, conn: sqlite3.Connection) -> addressstaging.Staging:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (ADDRESS_FOLDED_KEY,)).fetchone()
        try:
            return addressstaging.read_state(conn, None if row is None else row[0])
        except addressstaging.StagingCorrupt as exc:
            raise _corrupt(self.path, str(exc)) from exc

    @staticmethod
    def _initialise(
        conn: sqlite3.Connection, path: Path, network: str, genesis_hash: bytes
    ) -> None:
        # One transaction: a crash here leaves an empty database, which the next open initialises.
        conn.execute("BEGIN IMMEDIATE")
        try:
            if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                raise StorageError(f"{path} was initialised by another process while opening")
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.executemany(
                _upsert("meta"),
                [
                    ("schema_version", str(SCHEMA_VERSION).encode()),
                    ("network", network.encode()),
                    ("genesis_hash", genesis_hash),
                ],
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    # -- ChainStore -------------------------------------------------------------------------

    def load(self) -> ChainSnapshot:
        with self._lock:
            conn = self._require_open()
            try:
                # One read transaction: every table comes from the same commit.
                conn.execute("BEGIN")
                try:
                    return self._read_snapshot(conn)
                finally:
                    conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if _is_corruption(exc):
                    raise _corrupt(self.path, str(exc)) from exc
                raise StorageError(f"cannot read {self.path}: {exc}") from exc

    def _read_snapshot(self, conn: sqlite3.Connection) -> ChainSnapshot:
        table = "block_index"
        try:
            index = [
                IndexRecord(h, header, height, int.from_bytes(work, "big"), status, sequence)
                for h, header, height, work, status, sequence in conn.execute(
                    "SELECT hash, header, height, chainwork, status, sequence FROM block_index"
                    " ORDER BY height, sequence, hash"
                )
            ]
            table = "meta"
            row = conn.execute("SELECT value FROM meta WHERE key = 'tip'").fetchone()
            table = "utxo"
            utxo = {
                decode_outpoint(k): decode_coin(v)
                for k, v in conn.execute("SELECT outpoint, coin FROM utxo")
            }
            table = "tx_index"
            tx_index = dict(conn.execute("SELECT txid, block_hash FROM tx_index"))
            table = "spends"
            spends = {
                decode_outpoint(k): v for k, v in conn.execute("SELECT outpoint, txid FROM spends")
            }
        except sqlite3.Error:
            raise
        except Exception as exc:  # a row that does not decode: damage SQLite itself cannot see
            raise _corrupt(self.path, f"a row of table {table} does not decode ({exc!r})") from exc
        return ChainSnapshot(
            index=index,
            tip=None if row is None else row[0],
            utxo=utxo,
            tx_index=tx_index,
            spends=spends,
        )

    def apply(self, update: ChainUpdate) -> None:
        """Write the whole update in one transaction, or nothing of it (StorageError)."""
        check_update(update)
        statements = _encode_update(update)
        if not (update.address_deltas or update.address_reset):
            self._write(statements, "apply an update to")
            return
        with self._lock:
            before = self._staging

            def write_address_rows(conn: sqlite3.Connection) -> addressstaging.Staging:
                after = addressstaging.write(conn, update, before, self.staging_bound)
                if after.folded != before.folded or not after.recorded:
                    folded = addressstaging.encode_height(after.folded)
                    conn.execute(_upsert("meta"), (ADDRESS_FOLDED_KEY, folded))
                return after._replace(recorded=True)

            self._staging = self._write_locked(statements, "apply an update to", write_address_rows)

    def get_block_bytes(self, block_hash: bytes) -> bytes | None:
        return self._get("SELECT data FROM blocks WHERE hash = ?", block_hash)

    def get_undo_bytes(self, block_hash: bytes) -> bytes | None:
        return self._get("SELECT data FROM undo WHERE hash = ?", block_hash)

    def close(self) -> None:
        with self._lock, self._read_locked():
            conn, self._conn = self._conn, None
            reader, self._reader = self._reader, None
        for each in (reader, conn) if reader is not conn else (conn,):
            if each is not None:
                try:
                    each.close()
                except sqlite3.Error as exc:
                    raise StorageError(f"cannot close {self.path}: {exc}") from exc

    # -- address index ----------------------------------------------------------------------

    def address_index_tip(self) -> bytes | None:
        """The block the address rows are valid for (None: never built)."""
        value = self._get("SELECT value FROM meta WHERE key = ?", ADDRESS_TIP_KEY)
        return None if value is None else bytes(value)

    @property
    def address_rows_staged(self) -> int:
        """Address rows waiting in the staging table to be folded (storage/addressstaging.py)."""
        return self._staging.staged

    @_one_snapshot
    def address_deltas(
        self, pkhs: list[bytes], start: int, end: int, limit: int
    ) -> list[AddressIndexEntry]:
        """Rows of `pkhs` at heights start..end (inclusive) in chain order, if at most `limit`
        match; else `limit` of them (callers ask for one more than they serve, to detect that).

        Per address, one query walking its range of address_deltas' key in order and stopping at
        the limit, then (below the limit) its staged rows, which lie at greater heights: never
        more than `limit` rows are built, and at most the staging bound's rows searched.
        """
        found: list[AddressIndexEntry] = []
        for pkh in pkhs:
            with self._reading() as conn:
                try:
                    rows = conn.execute(
                        "SELECT pkh, height, blockindex, spending, idx, txid, satoshis"
                        " FROM address_deltas WHERE pkh = ? AND height BETWEEN ? AND ?"
                        " ORDER BY height, blockindex, spending, idx LIMIT ?",
                        (pkh, start, end, limit - len(found)),
                    ).fetchall()
                    if len(found) + len(rows) < limit:
                        staged = addressstaging.rows_of(conn, pkh, start, end)
                        rows += itertools.islice(staged, limit - len(found) - len(rows))
                except sqlite3.Error as exc:
                    raise StorageError(f"cannot read {self.path}: {exc}") from exc
                except addressstaging.StagingCorrupt as exc:
                    raise _corrupt(self.path, str(exc)) from exc
            found.extend(
                AddressIndexEntry(
                    AddressDeltaKey(pkh, height, blockindex, bool(spending), idx),
                    AddressDelta(txid, satoshis),
                )
                for pkh, height, blockindex, spending, idx, txid, satoshis in rows
            )
            if len(found) >= limit:
                break
        if len(pkhs) > 1:  # one address's rows come in chain order already
            found.sort(key=_chain_order)
        return found

    @_one_snapshot
    def address_balance(self, pkh: bytes) -> tuple[int, int]:
        """(balance, received): the sum of the address's deltas, and of its positive ones."""
        rows = self._query(
            "SELECT coalesce(sum(satoshis), 0),"
            " coalesce(sum(CASE WHEN satoshis > 0 THEN satoshis ELSE 0 END), 0)"
            " FROM address_deltas WHERE pkh = ?",
            (pkh,),
        )
        balance, received = int(rows[0][0]), int(rows[0][1])
        for row in self._staged_rows(pkh):
            balance += row[6]
            received += max(row[6], 0)
        return balance, received

    @_one_snapshot
    def address_utxos(self, pkhs: list[bytes], limit: int) -> list[AddressUtxo]:
        """Unspent outputs of `pkhs` in chain order, if at most `limit`; else `limit` of them."""
        found: list[tuple[tuple[Any, ...], AddressUtxo]] = []
        for pkh in pkhs:
            rows = self._query(_UTXO_QUERY, (pkh, limit - len(found)))
            if len(found) + len(rows) < limit:
                rows += self._unspent_staged(pkh, limit - len(found) - len(rows))
            found.extend(
                (
                    (height, blockindex, idx, pkh),
                    AddressUtxo(pkh, OutPoint(txid, idx), amount, height),
                )
                for height, blockindex, idx, txid, amount in rows
            )
            if len(found) >= limit:
                break
        found.sort(key=lambda pair: pair[0])
        return [utxo for _, utxo in found]

    def _staged_rows(self, pkh: bytes) -> list[tuple[Any, ...]]:
        with self._reading() as conn:
            try:
                return list(addressstaging.rows_of(conn, pkh, 0, _MAX_HEIGHT))
            except sqlite3.Error as exc:
                raise StorageError(f"cannot read {self.path}: {exc}") from exc
            except addressstaging.StagingCorrupt as exc:
                raise _corrupt(self.path, str(exc)) from exc

    def _unspent_staged(self, pkh: bytes, limit: int) -> list[tuple[Any, ...]]:
        """(height, blockindex, idx, txid, satoshis) of the staged outputs to `pkh` that the
        spends table lacks, in chain order, at most `limit`."""
        unspent: list[tuple[Any, ...]] = []
        with self._reading() as conn:
            try:
                for _, height, blockindex, spending, idx, txid, amount in addressstaging.rows_of(
                    conn, pkh, 0, _MAX_HEIGHT
                ):
                    if spending or _spent(conn, txid, idx):
                        continue
                    unspent.append((height, blockindex, idx, txid, amount))
                    if len(unspent) >= limit:
                        break
            except sqlite3.Error as exc:
                raise StorageError(f"cannot read {self.path}: {exc}") from exc
            except addressstaging.StagingCorrupt as exc:
                raise _corrupt(self.path, str(exc)) from exc
        return unspent

    # -- node metadata ----------------------------------------------------------------------

    def put_meta(self, key: str, value: bytes | None) -> None:
        """Set (or with None, delete) a node-owned metadata entry; chain keys are refused."""
        check_meta(key, value)
        if value is None:
            statement: _Statement = (_delete("meta"), [(key,)])
        else:
            statement = (_upsert("meta"), [(key, value)])
        self._write([statement], f"write meta key {key!r} to")

    def get_meta(self, key: str) -> bytes | None:
        return self._get("SELECT value FROM meta WHERE key = ?", key)

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals --------------------------------------------------------------------------

    def _require_open(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StorageError(f"the store {self.path} is closed")
        return self._conn

    def _get(self, sql: str, key: Any) -> Any:
        # One statement is its own read transaction: no BEGIN/COMMIT round (a getdata flood
        # reads blocks one by one on the loop).
        with self._reading(single_statement=True) as conn:
            try:
                row = conn.execute(sql, (key,)).fetchone()
            except sqlite3.Error as exc:
                raise StorageError(f"cannot read {self.path}: {exc}") from exc
        return None if row is None else row[0]

    def _query(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        with self._reading() as conn:
            try:
                return conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise StorageError(f"cannot read {self.path}: {exc}") from exc

    @contextlib.contextmanager
    def _read_locked(self) -> Iterator[None]:
        lock = self._read_lock if self._read_lock is not None else contextlib.nullcontext()
        with lock:
            yield

    @contextlib.contextmanager
    def _reading(self, single_statement: bool = False) -> Iterator[sqlite3.Connection]:
        """The reading connection, inside one read transaction however deeply nested: every
        statement of the outermost `with` sees the same commit. `single_statement`: the caller
        runs one statement, which SQLite already reads from one commit (autocommit), so no
        explicit transaction is opened unless an outer `with` holds one."""
        if self._read_lock is None:  # reads share the writing connection and its lock
            with self._lock:
                yield self._require_open()
            return
        with self._read_lock:
            conn = self._reader
            if conn is None:
                raise StorageError(f"the store {self.path} is closed")
            outermost = self._read_depth == 0 and not single_statement
            if outermost:
                try:
                    conn.execute("BEGIN")
                except sqlite3.Error as exc:
                    raise StorageError(f"cannot read {self.path}: {exc}") from exc
            self._read_depth += 1
            try:
                yield conn
            finally:
                self._read_depth -= 1
                if outermost and conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("COMMIT")

    def _write(self, statements: list[_Statement], action: str) -> None:
        with self._lock:
            self._write_locked(statements, action, None)

    def _write_locked(
        self,
        statements: list[_Statement],
        action: str,
        then: Callable[[sqlite3.Connection], _T] | None,
    ) -> _T | None:
        """Run `statements`, then `then` (which may read what they wrote), in one transaction."""
        conn = self._require_open()
        try:
            conn.execute("BEGIN IMMEDIATE")
            for sql, rows in statements:
                conn.executemany(sql, rows)
            result = None if then is None else then(conn)
            conn.execute("COMMIT")
            return result
        except BaseException as exc:
            self._rollback(conn)
            if isinstance(exc, addressstaging.StagingCorrupt):
                raise _corrupt(self.path, str(exc)) from exc
            if isinstance(exc, Exception):
                raise StorageError(
                    f"cannot {action} {self.path} (nothing was written): {exc}"
                ) from exc
            raise

    def _rollback(self, conn: sqlite3.Connection) -> None:
        if not conn.in_transaction:
            return
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            # The connection is unusable; SQLite discards the uncommitted transaction when the
            # file is next opened, so dropping the connection is the safe way out.
            self._conn = None
            conn.close()
