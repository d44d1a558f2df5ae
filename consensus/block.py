"""Block headers (fixed 80-byte binary form, for midstate mining) and blocks (msgpack)."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import msgpack

from consensus.errors import DecodeError
from consensus.hashing import merkle_root_of_leaf_hashes, sha256d
from consensus.tx import Transaction, _unpack, decode_transaction

HEADER_STRUCT = struct.Struct(">I32s32sIII")
HEADER_SIZE = HEADER_STRUCT.size  # 80: the nonce is the last 4 bytes, after one 64-byte block
NONCE_OFFSET = HEADER_SIZE - 4


def tx_space_in_block(tx_size: int) -> int:
    """Bytes a transaction of `tx_size` encoded bytes takes in a block's encoding, where each
    is a msgpack bin: its bytes plus a bin8, bin16 or bin32 header. Templates must count it:
    with small transactions it is about 1 % of the block."""
    if tx_size < 0x100:
        return tx_size + 2
    if tx_size < 0x10000:
        return tx_size + 3
    return tx_size + 5


@dataclass(frozen=True, slots=True)
class BlockHeader:
    version: int
    prev_hash: bytes
    merkle_root: bytes
    timestamp: int
    bits: int
    nonce: int

    def encode(self) -> bytes:
        return HEADER_STRUCT.pack(
            self.version, self.prev_hash, self.merkle_root, self.timestamp, self.bits, self.nonce
        )

    @property
    def hash(self) -> bytes:
        return sha256d(self.encode())

    def with_nonce(self, nonce: int) -> BlockHeader:
        return replace(self, nonce=nonce)

    def to_json(self) -> dict[str, Any]:
        return {
            "hash": self.hash.hex(),
            "version": self.version,
            "previousblockhash": self.prev_hash.hex(),
            "merkleroot": self.merkle_root.hex(),
            "time": self.timestamp,
            "bits": f"{self.bits:08x}",
            "nonce": self.nonce,
        }


def decode_header(data: bytes) -> BlockHeader:
    if len(data) != HEADER_SIZE:
        raise DecodeError(f"a header is {HEADER_SIZE} bytes, got {len(data)}")
    return BlockHeader(*HEADER_STRUCT.unpack(data))


class Block:
    """A header and its transactions; the hash and encoding are cached."""

    __slots__ = ("_encoded", "_hash", "_merkle", "checked_with", "header", "txs")

    def __init__(self, header: BlockHeader, txs: Sequence[Transaction]) -> None:
        self.header = header
        self.txs = tuple(txs)
        self._encoded: bytes | None = None
        self._hash: bytes | None = None
        self._merkle: bytes | None = None
        # The params this block passed the context-free checks with (like Core's fChecked):
        # the same immutable block object need not be checked twice.
        self.checked_with: object = None

    @property
    def hash(self) -> bytes:
        if self._hash is None:
            self._hash = self.header.hash
        return self._hash

    def encode(self) -> bytes:
        if self._encoded is None:
            self._encoded = msgpack.packb(
                [self.header.encode(), [tx.encode() for tx in self.txs]], use_bin_type=True
            )
        return self._encoded

    @property
    def size(self) -> int:
        return len(self.encode())

    def computed_merkle_root(self) -> bytes:
        if self._merkle is None:
            self._merkle = merkle_root_of_leaf_hashes([tx.merkle_leaf for tx in self.txs])
        return self._merkle

    def __repr__(self) -> str:
        return f"Block({self.hash.hex()[:16]}…, txs={len(self.txs)})"


def decode_block(data: bytes, max_size: int) -> Block:
    obj = _unpack(data, max_size, "block")
    if type(obj) is not list or len(obj) != 2 or type(obj[0]) is not bytes:
        raise DecodeError("a block is [header, [transactions]]")
    if type(obj[1]) is not list:
        raise DecodeError("a block's transactions must be a list")
    header = decode_header(obj[0])
    txs = []
    for raw in obj[1]:
        if type(raw) is not bytes:
            raise DecodeError("each transaction in a block is a byte string")
        txs.append(decode_transaction(raw, max_size))
    block = Block(header, txs)
    if block.encode() != bytes(data):
        raise DecodeError("non-canonical block encoding", "non-canonical")
    return block
