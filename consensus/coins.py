"""Unspent outputs and the per-block undo data needed to disconnect a block."""

from __future__ import annotations

from typing import NamedTuple

import msgpack

from consensus.tx import OutPoint


class Coin(NamedTuple):
    """An unspent output and where it was created (for coinbase maturity)."""

    amount: int
    pkh: bytes
    height: int
    is_coinbase: bool


def encode_coin(coin: Coin) -> bytes:
    return msgpack.packb(list(coin), use_bin_type=True)


def decode_coin(data: bytes) -> Coin:
    amount, pkh, height, is_coinbase = msgpack.unpackb(data)
    return Coin(amount, pkh, height, is_coinbase)


def encode_outpoint(outpoint: OutPoint) -> bytes:
    return outpoint.txid + outpoint.index.to_bytes(4, "big")


def decode_outpoint(data: bytes) -> OutPoint:
    return OutPoint(data[:32], int.from_bytes(data[32:36], "big"))


def encode_undo(spent: list[Coin]) -> bytes:
    """Coins a block spent, in the order its inputs spent them."""
    # A Coin is a tuple, which msgpack packs as the same array a list would give.
    return msgpack.packb(spent, use_bin_type=True)


def decode_undo(data: bytes) -> list[Coin]:
    return [Coin(*c) for c in msgpack.unpackb(data)]
