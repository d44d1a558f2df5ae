"""What the chain state asks the store to persist, and what a store gives back at start.

`ChainState` never writes: every change it makes in memory is also recorded in a `ChainUpdate`,
which the node hands to the store to apply as one atomic transaction. A process killed at any
moment therefore restarts at the last update that was fully committed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from consensus.addressindex import AddressIndexEntry, AddressUtxo, DeltaRows
from consensus.coins import Coin
from consensus.tx import OutPoint


@dataclass(slots=True)
class IndexRecord:
    """One block index entry as stored: the header plus what the node knows about the block."""

    hash: bytes
    header: bytes  # the 80-byte header encoding
    height: int
    chainwork: int
    status: int  # BlockStatus flags
    sequence: int  # order in which the block's data arrived (first seen wins ties)


@dataclass(slots=True)
class ChainUpdate:
    """Changes since the last commit. A value of None in a map means 'delete this key'."""

    index: dict[bytes, IndexRecord] = field(default_factory=dict)
    blocks: dict[bytes, bytes] = field(default_factory=dict)  # hash -> encoded block
    undo: dict[bytes, bytes] = field(default_factory=dict)  # hash -> encoded undo data
    utxo: dict[OutPoint, Coin | None] = field(default_factory=dict)
    tx_index: dict[bytes, bytes | None] = field(default_factory=dict)  # txid -> block hash
    spends: dict[OutPoint, bytes | None] = field(default_factory=dict)  # outpoint -> txid
    tip: bytes | None = None
    # The optional address index (consensus/addressindex.py). `address_tip` is the block up to
    # which the index is valid after this update; a store records it with the rows, so a node
    # that ran without the index (and moved the tip) is detected at its next start.
    address_deltas: DeltaRows = field(default_factory=dict)
    address_tip: bytes | None = None
    address_reset: bool = False  # drop every address row before applying this update's

    def is_empty(self) -> bool:
        address_empty = not (self.address_deltas or self.address_tip or self.address_reset)
        return (
            address_empty
            and not (
                self.index or self.blocks or self.undo or self.utxo or self.tx_index or self.spends
            )
            and self.tip is None
        )


@dataclass(slots=True)
class ChainSnapshot:
    """Everything a store returns at start for `ChainState` to resume from."""

    index: list[IndexRecord]
    tip: bytes | None
    utxo: dict[OutPoint, Coin]
    tx_index: dict[bytes, bytes]
    spends: dict[OutPoint, bytes]


class BlockReader(Protocol):
    """Read access to committed block bodies and undo data (the store implements it)."""

    def get_block_bytes(self, block_hash: bytes) -> bytes | None: ...

    def get_undo_bytes(self, block_hash: bytes) -> bytes | None: ...


class AddressIndexReader(Protocol):
    """Queries of the address index, answered from disk (the index is never loaded whole).

    `address_deltas` and `address_utxos` return every match in chain order when at most `limit`
    match, else `limit` of them: callers ask for one more row than they serve, to detect that.
    `address_balance` is (balance, received): the sum of the deltas and of the positive ones.
    """

    def address_index_tip(self) -> bytes | None: ...

    def address_deltas(
        self, pkhs: list[bytes], start: int, end: int, limit: int
    ) -> list[AddressIndexEntry]: ...

    def address_balance(self, pkh: bytes) -> tuple[int, int]: ...

    def address_utxos(self, pkhs: list[bytes], limit: int) -> list[AddressUtxo]: ...


class ChainStore(BlockReader, Protocol):
    def load(self) -> ChainSnapshot: ...

    def apply(self, update: ChainUpdate) -> None: ...

    def close(self) -> None: ...
