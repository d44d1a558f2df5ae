"""The receiving side of compact-block short ids: the mempool keyed by a block's salt.

A compact block names each transaction the receiver probably has by `short_tx_id(salt, txid)`,
with a salt the sender picked for that block, so the receiver hashes every mempool transaction
once per compact block (BIP 152 does the same with SipHash). No index can be kept up to date
between blocks (the salt changes with each), so what is cut is the cost per transaction: the
salt's 8 bytes are hashed once and each txid is added to a copy of that state, and entries are
read straight from the mempool's dict; and a block whose transactions all came prefilled (a
coinbase-only block) hashes nothing at all, since the index is only built on the first lookup.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

from consensus.tx import Transaction
from p2p.messages import SHORT_ID_SIZE, U64_MAX


def short_ids_of(salt: int, txs: Iterable[tuple[bytes, Transaction]]) -> dict[bytes, Transaction]:
    """`{short_tx_id(salt, txid): tx}` over `(txid, tx)` pairs; of two with the same short id
    the later one is kept."""
    if not 0 <= salt <= U64_MAX:
        raise ValueError("salt must be a u64")
    salted = hashlib.sha256(salt.to_bytes(8, "big"))
    index: dict[bytes, Transaction] = {}
    for txid, tx in txs:
        h = salted.copy()
        h.update(txid)
        index[h.digest()[:SHORT_ID_SIZE]] = tx
    return index


def short_ids_for(salt: int, txids: Iterable[bytes]) -> list[bytes]:
    """`[short_tx_id(salt, txid) for txid in txids]`, the sender's side, hashing the salt once."""
    if not 0 <= salt <= U64_MAX:
        raise ValueError("salt must be a u64")
    salted = hashlib.sha256(salt.to_bytes(8, "big"))
    ids = []
    for txid in txids:
        h = salted.copy()
        h.update(txid)
        ids.append(h.digest()[:SHORT_ID_SIZE])
    return ids


class TransactionSource(Protocol):
    def transactions(self) -> Iterator[tuple[bytes, Transaction]]: ...


class MempoolShortIds:
    """The mempool's transactions by short id under one salt, built on the first `get`.

    Meant to live for one compact block's reconstruction, which does not change the mempool:
    the index is a snapshot of the mempool at the first lookup and is never kept beyond it."""

    __slots__ = ("_index", "_mempool", "_salt", "get")

    def __init__(self, mempool: TransactionSource, salt: int) -> None:
        self._mempool = mempool
        self._salt = salt
        self._index: dict[bytes, Transaction] | None = None
        # `get(short_id)`: the first call builds the index, then `get` is the dict's own (a
        # thousand lookups per block need not each go through a Python method).
        self.get: Callable[[bytes], Transaction | None] = self._first_get

    def _first_get(self, short_id: bytes) -> Transaction | None:
        index = self._index = short_ids_of(self._salt, self._mempool.transactions())
        self.get = index.get
        return index.get(short_id)

    @property
    def built(self) -> bool:
        """Whether the mempool was hashed (for tests: a coinbase-only block hashes nothing)."""
        return self._index is not None
