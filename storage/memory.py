"""A store that keeps everything in dicts: for tests and the simulator, never for a real node."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TypeVar

from consensus.addressindex import AddressDelta, AddressDeltaKey, AddressIndexEntry, AddressUtxo
from consensus.coins import Coin
from consensus.tx import OutPoint
from consensus.update import ChainSnapshot, ChainUpdate, IndexRecord
from storage.errors import StorageError, check_meta, check_update

K = TypeVar("K")
V = TypeVar("V")


def _merge(target: dict[K, V], changes: Mapping[K, V | None]) -> None:
    for key, value in changes.items():
        if value is None:
            target.pop(key, None)
        else:
            target[key] = value


def _sort_key(record: IndexRecord) -> tuple[int, int, bytes]:
    # The same order as SQLiteStore.load, so snapshots of both stores compare equal.
    return (record.height, record.sequence, record.hash)


class MemoryStore:
    """Implements `ChainStore` (and `put_meta`/`get_meta`) with the same semantics as SQLiteStore.

    Stored state shares no mutable object with the caller: IndexRecords are copied on the way in
    and on the way out; everything else (bytes, Coin, OutPoint) is immutable.
    """

    def __init__(self) -> None:
        self._index: dict[bytes, IndexRecord] = {}
        self._blocks: dict[bytes, bytes] = {}
        self._undo: dict[bytes, bytes] = {}
        self._utxo: dict[OutPoint, Coin] = {}
        self._tx_index: dict[bytes, bytes] = {}
        self._spends: dict[OutPoint, bytes] = {}
        self._tip: bytes | None = None
        self._address_deltas: dict[AddressDeltaKey, AddressDelta] = {}
        self._address_tip: bytes | None = None
        self._meta: dict[str, bytes] = {}
        self._closed = False

    def load(self) -> ChainSnapshot:
        self._check_open()
        return ChainSnapshot(
            index=sorted((dataclasses.replace(r) for r in self._index.values()), key=_sort_key),
            tip=self._tip,
            utxo=dict(self._utxo),
            tx_index=dict(self._tx_index),
            spends=dict(self._spends),
        )

    def apply(self, update: ChainUpdate) -> None:
        self._check_open()
        # Validate and copy everything first: the merges below cannot fail, which is what makes
        # this apply all-or-nothing.
        check_update(update)
        index = {h: None if r is None else dataclasses.replace(r) for h, r in update.index.items()}
        _merge(self._index, index)
        _merge(self._blocks, update.blocks)
        _merge(self._undo, update.undo)
        _merge(self._utxo, update.utxo)
        _merge(self._tx_index, update.tx_index)
        _merge(self._spends, update.spends)
        if update.tip is not None:
            self._tip = update.tip
        if update.address_reset:
            self._address_deltas.clear()
        _merge(self._address_deltas, update.address_deltas)
        if update.address_tip is not None:
            self._address_tip = update.address_tip

    # -- address index (scans: fine for tests, which is all this store is for) -----------------

    def address_index_tip(self) -> bytes | None:
        self._check_open()
        return self._address_tip

    def address_deltas(
        self, pkhs: list[bytes], start: int, end: int, limit: int
    ) -> list[AddressIndexEntry]:
        self._check_open()
        wanted = set(pkhs)
        rows = sorted(
            (
                AddressIndexEntry(k, d)
                for k, d in self._address_deltas.items()
                if k.pkh in wanted and start <= k.height <= end
            ),
            key=lambda e: (e.key.height, e.key.blockindex, e.key.spending, e.key.index, e.key.pkh),
        )
        return rows[:limit]

    def address_balance(self, pkh: bytes) -> tuple[int, int]:
        self._check_open()
        amounts = [d.satoshis for k, d in self._address_deltas.items() if k.pkh == pkh]
        return sum(amounts), sum(a for a in amounts if a > 0)

    def address_utxos(self, pkhs: list[bytes], limit: int) -> list[AddressUtxo]:
        self._check_open()
        wanted = set(pkhs)
        rows = sorted(
            (k.height, k.blockindex, k.index, k.pkh, d.txid, d.satoshis)
            for k, d in self._address_deltas.items()
            if k.pkh in wanted and not k.spending and OutPoint(d.txid, k.index) not in self._spends
        )
        return [
            AddressUtxo(pkh, OutPoint(txid, index), satoshis, height)
            for height, _, index, pkh, txid, satoshis in rows[:limit]
        ]

    def get_block_bytes(self, block_hash: bytes) -> bytes | None:
        self._check_open()
        return self._blocks.get(block_hash)

    def get_undo_bytes(self, block_hash: bytes) -> bytes | None:
        self._check_open()
        return self._undo.get(block_hash)

    def put_meta(self, key: str, value: bytes | None) -> None:
        """Set (or with None, delete) a node-owned metadata entry; chain keys are refused."""
        self._check_open()
        check_meta(key, value)
        _merge(self._meta, {key: value})

    def get_meta(self, key: str) -> bytes | None:
        self._check_open()
        return self._meta.get(key)

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> MemoryStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError("the memory store is closed")
