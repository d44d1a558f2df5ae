"""The write-optimised half of SQLiteStore's address index: recent rows, one blob per height.

`address_deltas` is keyed by address, so one address's rows are one contiguous range of its
b-tree, in chain order; but one block's rows (one per output and input, each to another address)
land on as many random pages, and a commit writes every page it dirtied to the write-ahead log
whole. So the rows of heights above `folded` are kept here instead, in `address_staging`: one
row per height holding that height's index rows packed in chain order, which costs a commit a
few sequential pages. Once more than ADDRESS_STAGING_ROWS rows are staged, the commit that
staged them also folds them all into `address_deltas` in key order, writing each page of it once
for many blocks. Both steps are statements of the update's own transaction, so every commit
leaves a complete, consistent index.

Every row lives in exactly one table: heights up to `folded` (the meta key
`address_index_folded`) in `address_deltas`, heights above it here. A query reads an address's
folded rows, then its staged ones; a disconnect deletes a row from the table its height names.
"""

from __future__ import annotations

import sqlite3
import struct
from collections.abc import Iterator
from typing import Any, NamedTuple

from consensus.addressindex import AddressDelta, AddressDeltaKey
from consensus.keys import PUBKEY_HASH_SIZE
from consensus.update import ChainUpdate

# The bound on staged rows (not counting one update's own rows, which are staged before the fold
# that follows them): it bounds what a query scans beyond an address's folded rows (at most
# ADDRESS_STAGING_ROWS * STAGED_ROW.size = 1.5 MB of blobs, searched in C) and what a fold holds
# in memory, and spaces folds far enough apart that the pages of `address_deltas` they dirty
# take many rows each (figures in docs/performance.md).
ADDRESS_STAGING_ROWS = 20_000

# A row as address_deltas' columns (pkh, height, blockindex, spending, idx, txid, satoshis), so
# a fold hands SQLite the unpacked tuples as they come; fixed size, so a pkh found at a multiple
# of the size is the start of a row.
STAGED_ROW = struct.Struct(f"<{PUBKEY_HASH_SIZE}sqIBI32sq")

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS address_staging (height INTEGER PRIMARY KEY, data BLOB NOT NULL)"
)
COLUMNS = ("height", "data")

_MAIN_DELETE = (
    "DELETE FROM address_deltas WHERE pkh = ? AND height = ? AND blockindex = ?"
    " AND spending = ? AND idx = ?"
)
_MAIN_UPSERT = (
    "INSERT OR REPLACE INTO address_deltas (pkh, height, blockindex, spending, idx, txid,"
    " satoshis) VALUES (?, ?, ?, ?, ?, ?, ?)"
)

# A row as the tables hold it: pkh, height, blockindex, spending, idx, txid, satoshis (the
# fields of AddressDeltaKey then AddressDelta, which is also address_deltas' column order).
Row = tuple[Any, ...]


class StagingCorrupt(Exception):
    """A staged blob that does not decode (the caller names the file)."""


class Staging(NamedTuple):
    """What a store keeps in memory about its staged rows, read at open, kept by `write`."""

    folded: int  # rows at this height or below are in address_deltas; above, staged
    staged: int  # rows staged
    recorded: bool  # whether the file's meta holds `folded`


def encode_height(height: int) -> bytes:
    return str(height).encode("ascii")


def is_staged(key: AddressDeltaKey, folded: int) -> bool:
    # Only outputs' 20-byte hashes exist; a row of another size (which no block writes) is kept
    # in address_deltas at every height, where queries of its address look.
    return key.height > folded and len(key.pkh) == PUBKEY_HASH_SIZE


def read_state(conn: sqlite3.Connection, folded_value: bytes | None) -> Staging:
    """The staging state of an open file, whose meta holds `folded_value` (None: absent)."""
    if folded_value is None:
        # A file written before the staging table existed: every row is in address_deltas.
        # One scan, at this open only: the first commit of address rows records the key.
        found = conn.execute("SELECT coalesce(max(height), -1) FROM address_deltas").fetchone()
        folded, recorded = int(found[0]), False
    else:
        try:
            folded, recorded = int(bytes(folded_value).decode("ascii")), True
        except (TypeError, ValueError) as exc:
            raise StagingCorrupt(f"address_index_folded is {folded_value!r}") from exc
    size = conn.execute("SELECT coalesce(sum(length(data)), 0) FROM address_staging").fetchone()
    if size[0] % STAGED_ROW.size:
        raise StagingCorrupt("address_staging holds a partial row")
    return Staging(folded, size[0] // STAGED_ROW.size, recorded)


def write(conn: sqlite3.Connection, update: ChainUpdate, state: Staging, bound: int) -> Staging:
    """Write the update's address rows inside the caller's open transaction; return the state
    the commit leaves (the caller records `folded` in meta when it changed or was unrecorded)."""
    folded, staged, recorded = state
    if update.address_reset:
        conn.execute("DELETE FROM address_deltas")
        conn.execute("DELETE FROM address_staging")
        folded, staged, recorded = -1, 0, False
    deletes: list[Row] = []
    upserts: list[Row] = []
    by_height: dict[int, dict[AddressDeltaKey, AddressDelta | None]] = {}
    for key, delta in update.address_deltas.items():
        if is_staged(key, folded):
            by_height.setdefault(key.height, {})[key] = delta
        elif delta is None:
            deletes.append(key)
        else:
            upserts.append(key + delta)
    conn.executemany(_MAIN_DELETE, deletes)
    # Inserting in key order keeps each page of the b-tree hot while it is filled.
    upserts.sort()
    conn.executemany(_MAIN_UPSERT, upserts)
    for height, changes in by_height.items():
        staged += _restage(conn, height, changes)
    if staged > bound:
        folded = _fold(conn, folded)
        staged = 0
    return Staging(folded, staged, recorded)


def _restage(
    conn: sqlite3.Connection, height: int, changes: dict[AddressDeltaKey, AddressDelta | None]
) -> int:
    """Apply `changes` to the rows staged at `height`; return the change in their number."""
    found = conn.execute("SELECT data FROM address_staging WHERE height = ?", (height,)).fetchone()
    if found is None:
        rows, before = changes, 0
    else:  # a reorg: rows of a block disconnected, or connected again
        rows = {
            AddressDeltaKey._make(row[:5]): AddressDelta._make(row[5:])
            for row in decode(height, found[0])
        }
        before = len(rows)
        rows.update(changes)
    pack = STAGED_ROW.pack
    # Chain order within the height, so a query returns a height's rows as they lie.
    packed = sorted(
        (k.blockindex, k.spending, k.index, k.pkh, pack(*k, *d))
        for k, d in rows.items()
        if d is not None
    )
    if packed:
        data = b"".join([row[4] for row in packed])
        conn.execute(
            "INSERT OR REPLACE INTO address_staging (height, data) VALUES (?, ?)", (height, data)
        )
    elif found is not None:
        conn.execute("DELETE FROM address_staging WHERE height = ?", (height,))
    return len(packed) - before


def _fold(conn: sqlite3.Connection, folded: int) -> int:
    """Move every staged row into address_deltas; return the new `folded`."""
    rows: list[Row] = []
    for height, data in conn.execute("SELECT height, data FROM address_staging ORDER BY height"):
        rows.extend(decode(height, data))
        folded = max(folded, height)
    # Key order (the tuples are the columns, key first), so each page is filled while hot.
    rows.sort()
    conn.executemany(_MAIN_UPSERT, rows)
    conn.execute("DELETE FROM address_staging")
    return folded


def decode(height: int, data: bytes) -> Iterator[Row]:
    """The rows staged at `height`, as address_deltas' columns (`spending` as 0 or 1)."""
    if len(data) % STAGED_ROW.size:
        raise StagingCorrupt(f"the rows staged at height {height} hold a partial row")
    return STAGED_ROW.iter_unpack(data)


def rows_of(conn: sqlite3.Connection, pkh: bytes, start: int, end: int) -> Iterator[Row]:
    """The staged rows of `pkh` at heights start..end, in chain order."""
    if len(pkh) != PUBKEY_HASH_SIZE:
        return
    size = STAGED_ROW.size
    # instr() skips, in C, the heights whose blob holds the address nowhere; a hit may still
    # straddle two fields, so only one at a row boundary counts.
    for height, data in conn.execute(
        "SELECT height, data FROM address_staging WHERE height BETWEEN ? AND ?"
        " AND instr(data, ?) ORDER BY height",
        (start, end, pkh),
    ).fetchall():
        if len(data) % size:
            raise StagingCorrupt(f"the rows staged at height {height} hold a partial row")
        at = data.find(pkh)
        while at >= 0:
            if at % size:
                at = data.find(pkh, at + 1)
                continue
            yield STAGED_ROW.unpack_from(data, at)
            at = data.find(pkh, at + size)
