"""The one exception type of the storage layer, and the shape check both stores share.

Both stores run `check_update` before touching any state, so a malformed update is rejected the
same way by the in-memory store used in tests and by the on-disk store used in production, and
never leaves either half-written.
"""

from __future__ import annotations

from collections.abc import Mapping

from consensus.addressindex import AddressDelta, AddressDeltaKey
from consensus.coins import Coin
from consensus.tx import OutPoint
from consensus.update import ChainUpdate, IndexRecord

HASH_SIZE = 32
HEADER_SIZE = 80
_U32_LIMIT = 1 << 32
# SQLite integers are signed 64-bit; anything larger would be silently stored as a REAL.
_I64_LIMIT = 1 << 63
_CHAINWORK_LIMIT = 1 << 256


class StorageError(Exception):
    """The store could not be opened, read or written; the message says what and where."""


def _check_hash(value: object, what: str) -> None:
    if type(value) is not bytes or len(value) != HASH_SIZE:
        raise StorageError(f"{what} must be {HASH_SIZE} bytes, got {_describe(value)}")


def _check_int(value: object, what: str, limit: int) -> None:
    # bool is an int subclass; a True height is always a bug upstream.
    if type(value) is not int or not 0 <= value < limit:
        raise StorageError(f"{what} must be an integer in [0, {limit}), got {value!r}")


def _check_outpoint(value: object, what: str) -> None:
    if not isinstance(value, OutPoint):
        raise StorageError(f"{what} must be an OutPoint, got {_describe(value)}")
    _check_hash(value.txid, f"{what}.txid")
    _check_int(value.index, f"{what}.index", _U32_LIMIT)


def _check_coin(value: object, what: str) -> None:
    if not isinstance(value, Coin):
        raise StorageError(f"{what} must be a Coin, got {_describe(value)}")
    _check_int(value.amount, f"{what}.amount", 1 << 64)
    if type(value.pkh) is not bytes:
        raise StorageError(f"{what}.pkh must be bytes, got {_describe(value.pkh)}")
    _check_int(value.height, f"{what}.height", _I64_LIMIT)
    if type(value.is_coinbase) is not bool:
        raise StorageError(f"{what}.is_coinbase must be a bool, got {value.is_coinbase!r}")


def _check_record(key: bytes, value: object, what: str = "") -> None:
    if not isinstance(value, IndexRecord):
        raise StorageError(f"{what} must be an IndexRecord, got {_describe(value)}")
    if value.hash != key:
        raise StorageError(f"{what} holds the record of another block, {_describe(value.hash)}")
    if type(value.header) is not bytes or len(value.header) != HEADER_SIZE:
        raise StorageError(
            f"{what}.header must be {HEADER_SIZE} bytes, got {_describe(value.header)}"
        )
    _check_int(value.height, f"{what}.height", _I64_LIMIT)
    _check_int(value.chainwork, f"{what}.chainwork", _CHAINWORK_LIMIT)
    _check_int(value.status, f"{what}.status", _I64_LIMIT)
    _check_int(value.sequence, f"{what}.sequence", _I64_LIMIT)


def _check_blob(value: object, what: str) -> None:
    if type(value) is not bytes:
        raise StorageError(f"{what} must be bytes, got {_describe(value)}")


def check_update(update: ChainUpdate) -> None:
    """Raise StorageError if any key or value of `update` cannot be stored faithfully.

    None (delete) is accepted in every map, including `index`, `blocks` and `undo`, so that later
    pruning needs no new interface.
    """
    if not isinstance(update, ChainUpdate):
        raise StorageError(f"expected a ChainUpdate, got {_describe(update)}")
    # Each value is checked with an empty label first: naming a row (hex of its key) costs more
    # than checking it, and a block's update has thousands of rows. Only a failure is named.
    _check_index_rows(update.index)
    for table in ("blocks", "undo"):
        for key, blob in getattr(update, table).items():
            _check_hash(key, f"a {table} key")
            if blob is not None and type(blob) is not bytes:
                _check_blob(blob, f"{table}[{key.hex()}]")
    _check_utxo_rows(update.utxo)
    for txid, block_hash in update.tx_index.items():
        _check_hash(txid, "a tx_index key")
        if block_hash is not None and (type(block_hash) is not bytes
                                       or len(block_hash) != HASH_SIZE):
            _check_hash(block_hash, f"tx_index[{txid.hex()}]")
    for outpoint, spender in update.spends.items():
        _check_outpoint(outpoint, "a spends key")
        if spender is not None and (type(spender) is not bytes or len(spender) != HASH_SIZE):
            _check_hash(spender, f"spends[{outpoint}]")
    if update.tip is not None:
        _check_hash(update.tip, "the tip")
    _check_address_rows(update)


def _check_address_rows(update: ChainUpdate) -> None:
    if update.address_tip is not None:
        _check_hash(update.address_tip, "the address index tip")
    if type(update.address_reset) is not bool:
        raise StorageError(f"address_reset must be a bool, got {_describe(update.address_reset)}")
    # A block writes hundreds of rows: each is checked with cheap tests inline and only a
    # failure is described (naming a row costs more than checking it).
    for key, delta in update.address_deltas.items():
        if not (
            type(key) is AddressDeltaKey
            and type(key.pkh) is bytes
            and type(key.height) is int
            and 0 <= key.height < _I64_LIMIT
            and type(key.blockindex) is int
            and 0 <= key.blockindex < _U32_LIMIT
            and type(key.spending) is bool
            and type(key.index) is int
            and 0 <= key.index < _U32_LIMIT
        ):
            raise StorageError(f"malformed address_deltas key {_describe(key)}")
        if delta is not None and not (
            type(delta) is AddressDelta
            and type(delta.txid) is bytes
            and len(delta.txid) == HASH_SIZE
            and type(delta.satoshis) is int
            and -_I64_LIMIT < delta.satoshis < _I64_LIMIT
        ):
            raise StorageError(f"malformed address_deltas[{key}]: {_describe(delta)}")


def _check_index_rows(index: Mapping[bytes, IndexRecord | None]) -> None:
    for key, record in index.items():
        _check_hash(key, "an index key")
        if record is not None:
            try:
                _check_record(key, record)
            except StorageError:
                _check_record(key, record, f"index[{key.hex()}]")
                raise


def _check_utxo_rows(utxo: Mapping[OutPoint, Coin | None]) -> None:
    for outpoint, coin in utxo.items():
        _check_outpoint(outpoint, "a utxo key")
        if coin is not None:
            try:
                _check_coin(coin, "")
            except StorageError:
                _check_coin(coin, f"utxo[{outpoint}]")
                raise


# The chain keys; the node keeps its own entries (peers, settings) beside them.
ADDRESS_TIP_KEY = "address_index_tip"
ADDRESS_FOLDED_KEY = "address_index_folded"  # SQLiteStore's staging boundary (storage/sqlite.py)
RESERVED_META_KEYS = frozenset(
    {"schema_version", "network", "genesis_hash", "tip", ADDRESS_TIP_KEY, ADDRESS_FOLDED_KEY}
)


def check_meta(key: object, value: object) -> None:
    if type(key) is not str or not key:
        raise StorageError(f"a meta key must be a non-empty str, got {key!r}")
    if key in RESERVED_META_KEYS:
        raise StorageError(f"meta key {key!r} is owned by the store and cannot be set directly")
    if value is not None and type(value) is not bytes:
        raise StorageError(f"meta value for {key!r} must be bytes, got {type(value).__name__}")


def _describe(value: object) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return f"{type(value).__name__} of length {len(value)}"
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}{'…' if len(text) > 60 else ''}"
