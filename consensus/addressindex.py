"""The rows of the optional address index that one block adds (connect) or removes (disconnect).

Pure: given a block, its height and its undo data (the coins its inputs spent, in input order),
it computes what to write. `ChainState` journals these rows into the `ChainUpdate` of the block,
so the store keeps the index in the same transaction as the UTXO set; the node's rebuild uses the
same functions, so an index rebuilt from scratch equals one kept incrementally.

One row kind: a delta per output paid to an address (positive) and per input spending from it
(negative), keyed so that one address's rows read back in chain order. Unlike Bitcore there is no
second table of unspent outputs: an address's unspent outputs are its receiving rows whose
outpoint the chain's spends index does not hold, so the index writes a third fewer rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

from consensus.block import Block
from consensus.coins import Coin
from consensus.tx import OutPoint


class AddressDeltaKey(NamedTuple):
    """Where a delta sits: an address's rows sort by height, position in block, then outputs
    (spending=False) before inputs, then the output or input index."""

    pkh: bytes
    height: int
    blockindex: int  # the transaction's position in its block
    spending: bool
    index: int  # output index (receiving) or input index (spending)


class AddressDelta(NamedTuple):
    txid: bytes
    satoshis: int  # negative when spending


class AddressIndexEntry(NamedTuple):
    """A delta as the store returns it from a query."""

    key: AddressDeltaKey
    delta: AddressDelta


class AddressUtxo(NamedTuple):
    """An unspent output of an address as the store returns it from a query."""

    pkh: bytes
    outpoint: OutPoint
    satoshis: int
    height: int


DeltaRows = dict[AddressDeltaKey, AddressDelta | None]


def index_block(block: Block, height: int, spent: list[Coin], deltas: DeltaRows) -> None:
    """Record the rows connecting `block` adds. `spent` is its undo data (not modified)."""
    coins = iter(spent)
    for position, tx in enumerate(block.txs):
        txid = tx.txid
        if position:
            for n in range(len(tx.inputs)):
                coin = _next_coin(coins)
                deltas[AddressDeltaKey(coin.pkh, height, position, True, n)] = AddressDelta(
                    txid, -coin.amount
                )
        for n, out in enumerate(tx.outputs):
            deltas[AddressDeltaKey(out.pkh, height, position, False, n)] = AddressDelta(
                txid, out.amount
            )
    if next(coins, None) is not None:
        raise ValueError("undo data holds more coins than the block spends")


def unindex_block(block: Block, height: int, spent: list[Coin], deltas: DeltaRows) -> None:
    """Record the rows disconnecting `block` removes."""
    coins = iter(spent)
    for position, tx in enumerate(block.txs):
        if position:
            for n in range(len(tx.inputs)):
                deltas[AddressDeltaKey(_next_coin(coins).pkh, height, position, True, n)] = None
        for n, out in enumerate(tx.outputs):
            deltas[AddressDeltaKey(out.pkh, height, position, False, n)] = None
    if next(coins, None) is not None:
        raise ValueError("undo data holds more coins than the block spends")


def _next_coin(coins: Iterator[Coin]) -> Coin:
    coin = next(coins, None)
    if coin is None:
        raise ValueError("undo data holds fewer coins than the block spends")
    return coin
