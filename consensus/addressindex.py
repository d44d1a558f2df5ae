"""The rows of the optional address index that one block adds (connect) or removes (disconnect).

Pure: given a block, its height and its undo data (the coins its inputs spent, in input order),
it computes what to write. `ChainState` journals these rows into the `ChainUpdate` of the block,
so the store keeps the index in the same transaction as the UTXO set; the node's rebuild uses the
same functions, so an index rebuilt from scratch equals one kept incrementally.

Two row kinds, as in Bitcore's addressindex:
- a delta per output paid to an address (positive) and per input spending from it (negative),
  keyed so that one address's rows read back in chain order;
- an unspent row per output of the address still in the UTXO set (what getaddressutxos lists).
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


class AddressUnspentKey(NamedTuple):
    pkh: bytes
    outpoint: OutPoint


class AddressUnspent(NamedTuple):
    satoshis: int
    height: int


class AddressIndexEntry(NamedTuple):
    """A delta as the store returns it from a query."""

    key: AddressDeltaKey
    delta: AddressDelta


class AddressUtxo(NamedTuple):
    """An unspent row as the store returns it from a query."""

    key: AddressUnspentKey
    value: AddressUnspent


DeltaRows = dict[AddressDeltaKey, AddressDelta | None]
UnspentRows = dict[AddressUnspentKey, AddressUnspent | None]


def index_block(
    block: Block, height: int, spent: list[Coin], deltas: DeltaRows, unspent: UnspentRows
) -> None:
    """Record the rows connecting `block` adds. `spent` is its undo data (not modified)."""
    coins = iter(spent)
    for position, tx in enumerate(block.txs):
        txid = tx.txid
        if position:
            for n, txin in enumerate(tx.inputs):
                coin = _next_coin(coins)
                deltas[AddressDeltaKey(coin.pkh, height, position, True, n)] = AddressDelta(
                    txid, -coin.amount
                )
                # An output spent within the same block was recorded just above: this deletes it.
                unspent[AddressUnspentKey(coin.pkh, txin.outpoint)] = None
        for n, out in enumerate(tx.outputs):
            deltas[AddressDeltaKey(out.pkh, height, position, False, n)] = AddressDelta(
                txid, out.amount
            )
            unspent[AddressUnspentKey(out.pkh, OutPoint(txid, n))] = AddressUnspent(
                out.amount, height
            )
    if next(coins, None) is not None:
        raise ValueError("undo data holds more coins than the block spends")


def unindex_block(
    block: Block, height: int, spent: list[Coin], deltas: DeltaRows, unspent: UnspentRows
) -> None:
    """Record the rows disconnecting `block` removes (and the unspent rows it restores)."""
    coins = iter(reversed(spent))
    for position in range(len(block.txs) - 1, -1, -1):
        tx = block.txs[position]
        txid = tx.txid
        for n in range(len(tx.outputs) - 1, -1, -1):
            out = tx.outputs[n]
            deltas[AddressDeltaKey(out.pkh, height, position, False, n)] = None
            unspent[AddressUnspentKey(out.pkh, OutPoint(txid, n))] = None
        if position:
            for n in range(len(tx.inputs) - 1, -1, -1):
                coin = _next_coin(coins)
                deltas[AddressDeltaKey(coin.pkh, height, position, True, n)] = None
                unspent[AddressUnspentKey(coin.pkh, tx.inputs[n].outpoint)] = AddressUnspent(
                    coin.amount, coin.height
                )
    if next(coins, None) is not None:
        raise ValueError("undo data holds more coins than the block spends")


def _next_coin(coins: Iterator[Coin]) -> Coin:
    coin = next(coins, None)
    if coin is None:
        raise ValueError("undo data holds fewer coins than the block spends")
    return coin
