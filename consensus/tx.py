"""Transactions in a UTXO model, with one canonical msgpack encoding.

A transaction is ``[version, [[prev_txid, prev_index, pubkey, signature], …], [[amount, pkh], …],
locktime]``. Its id is the double SHA-256 of that encoding, signatures included; decoding accepts
only the canonical bytes and Ed25519 signatures are not malleable, so nobody but the signer can
produce another valid encoding of the same payment.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, NamedTuple

import msgpack

from consensus.errors import DecodeError
from consensus.hashing import HASH_SIZE, ZERO_HASH, sha256d
from consensus.keys import PUBKEY_HASH_SIZE, PUBKEY_SIZE, SIGNATURE_SIZE, PrivateKey

U32_MAX = 0xFFFFFFFF
COINBASE_INDEX = U32_MAX
COINBASE_HEIGHT_SIZE = 4
MAX_COINBASE_DATA = 100
SIGHASH_TAG = b"powlab-sighash"


class OutPoint(NamedTuple):
    txid: bytes
    index: int

    def __str__(self) -> str:
        return f"{self.txid.hex()}:{self.index}"


class TxIn(NamedTuple):
    prev_txid: bytes
    prev_index: int
    pubkey: bytes
    signature: bytes

    @property
    def outpoint(self) -> OutPoint:
        return OutPoint(self.prev_txid, self.prev_index)


class TxOut(NamedTuple):
    amount: int
    pkh: bytes


class Transaction:
    """An immutable transaction; encoding and id are computed once."""

    __slots__ = ("_encoded", "_txid", "checked_with", "inputs", "locktime", "outputs", "version")

    def __init__(
        self,
        inputs: Sequence[TxIn],
        outputs: Sequence[TxOut],
        version: int = 1,
        locktime: int = 0,
        _encoded: bytes | None = None,
    ) -> None:
        self.version = version
        self.inputs = tuple(inputs)
        self.outputs = tuple(outputs)
        self.locktime = locktime
        self._encoded = _encoded
        self._txid: bytes | None = None
        # The params this transaction passed the context-free checks with: a mempool
        # transaction reused in a block (compact relay) need not be checked again.
        self.checked_with: object = None

    def _as_lists(self, blank_signatures: bool = False) -> list[Any]:
        return [
            self.version,
            [
                [i.prev_txid, i.prev_index, i.pubkey, b"" if blank_signatures else i.signature]
                for i in self.inputs
            ],
            [[o.amount, o.pkh] for o in self.outputs],
            self.locktime,
        ]

    def encode(self) -> bytes:
        if self._encoded is None:
            self._encoded = msgpack.packb(self._as_lists(), use_bin_type=True)
        return self._encoded

    @property
    def txid(self) -> bytes:
        if self._txid is None:
            self._txid = sha256d(self.encode())
        return self._txid

    @property
    def size(self) -> int:
        return len(self.encode())

    @property
    def is_coinbase(self) -> bool:
        return (
            len(self.inputs) == 1
            and self.inputs[0].prev_txid == ZERO_HASH
            and self.inputs[0].prev_index == COINBASE_INDEX
        )

    def sighash(self, genesis_hash: bytes) -> bytes:
        """The digest every input signs: the whole transaction minus signatures, bound to one
        network by its genesis hash so a signature cannot be replayed on another network."""
        body = msgpack.packb(self._as_lists(blank_signatures=True), use_bin_type=True)
        return hashlib.sha256(SIGHASH_TAG + genesis_hash + body).digest()

    def total_out(self) -> int:
        return sum(o.amount for o in self.outputs)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Transaction) and self.encode() == other.encode()

    def __hash__(self) -> int:
        return hash(self.txid)

    def __repr__(self) -> str:
        short = self.txid.hex()[:16]
        return f"Transaction({short}…, in={len(self.inputs)}, out={len(self.outputs)})"

    def to_json(self, address_of: Any = None) -> dict[str, Any]:
        """A JSON view; `address_of(pkh)` renders output addresses when given."""
        return {
            "txid": self.txid.hex(),
            "version": self.version,
            "size": self.size,
            "locktime": self.locktime,
            "coinbase": self.is_coinbase,
            "vin": [
                {"coinbase": i.signature.hex()}
                if self.is_coinbase
                else {"txid": i.prev_txid.hex(), "vout": i.prev_index, "pubkey": i.pubkey.hex()}
                for i in self.inputs
            ],
            "vout": [
                {
                    "n": n,
                    "value": o.amount,
                    "address": address_of(o.pkh) if address_of else o.pkh.hex(),
                }
                for n, o in enumerate(self.outputs)
            ],
        }


def make_coinbase(height: int, outputs: Sequence[TxOut], extra: bytes = b"") -> Transaction:
    """A coinbase whose input data starts with the block height (so coinbase ids never repeat)."""
    data = height.to_bytes(COINBASE_HEIGHT_SIZE, "big") + extra
    if len(data) > MAX_COINBASE_DATA:
        raise ValueError(f"coinbase data is at most {MAX_COINBASE_DATA} bytes")
    return Transaction([TxIn(ZERO_HASH, COINBASE_INDEX, b"", data)], outputs)


def coinbase_height(tx: Transaction) -> int | None:
    data = tx.inputs[0].signature
    if len(data) < COINBASE_HEIGHT_SIZE:
        return None
    return int.from_bytes(data[:COINBASE_HEIGHT_SIZE], "big")


def sign_transaction(
    unsigned: Transaction, keys: Sequence[PrivateKey], genesis_hash: bytes
) -> Transaction:
    """Sign every input; `keys[i]` owns input i (its public key is filled in here)."""
    if len(keys) != len(unsigned.inputs):
        raise ValueError("one key per input is needed")
    with_keys = Transaction(
        [
            TxIn(i.prev_txid, i.prev_index, k.public_key, b"")
            for i, k in zip(unsigned.inputs, keys, strict=True)
        ],
        unsigned.outputs,
        unsigned.version,
        unsigned.locktime,
    )
    digest = with_keys.sighash(genesis_hash)
    return Transaction(
        [
            TxIn(i.prev_txid, i.prev_index, i.pubkey, k.sign(digest))
            for i, k in zip(with_keys.inputs, keys, strict=True)
        ],
        with_keys.outputs,
        with_keys.version,
        with_keys.locktime,
    )


def _unpack(data: bytes, max_size: int, what: str) -> Any:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError(f"{what} must be bytes")
    if len(data) > max_size:
        raise DecodeError(f"{what} of {len(data)} bytes exceeds the limit {max_size}", "oversize")
    try:
        return msgpack.unpackb(
            bytes(data),
            use_list=True,
            raw=False,
            strict_map_key=True,
            max_bin_len=max_size,
            max_str_len=max_size,
            max_array_len=max_size,
            max_map_len=0,
            max_ext_len=0,
        )
    except msgpack.ExtraData:
        raise DecodeError(f"trailing bytes after the {what}") from None
    except (ValueError, msgpack.UnpackException, TypeError) as exc:
        raise DecodeError(f"malformed or truncated {what}: {exc}") from None


def _is_u32(value: Any) -> bool:
    return type(value) is int and 0 <= value <= U32_MAX


def _bytes_field(value: Any, sizes: tuple[int, ...] | range, what: str) -> bytes:
    if type(value) is not bytes or len(value) not in sizes:
        raise DecodeError(f"{what} must be bytes of length {sizes}")
    return value


def transaction_from_lists(obj: Any) -> Transaction:
    """Build a transaction from its decoded msgpack structure, checking every field's type."""
    if type(obj) is not list or len(obj) != 4:
        raise DecodeError("a transaction is a list of 4 fields")
    version, raw_inputs, raw_outputs, locktime = obj
    if not _is_u32(version) or not _is_u32(locktime):
        raise DecodeError("version and locktime must be unsigned 32-bit integers")
    if type(raw_inputs) is not list or type(raw_outputs) is not list:
        raise DecodeError("inputs and outputs must be lists")
    inputs = []
    for raw in raw_inputs:
        if type(raw) is not list or len(raw) != 4:
            raise DecodeError("an input is a list of 4 fields")
        prev_txid = _bytes_field(raw[0], (HASH_SIZE,), "prev_txid")
        if not _is_u32(raw[1]):
            raise DecodeError("prev_index must be an unsigned 32-bit integer")
        coinbase = prev_txid == ZERO_HASH and raw[1] == COINBASE_INDEX
        # Unsigned transactions (createrawtransaction) carry neither key nor signature yet.
        pubkey = _bytes_field(raw[2], (0,) if coinbase else (0, PUBKEY_SIZE), "pubkey")
        sig_sizes = range(MAX_COINBASE_DATA + 1) if coinbase else (0, SIGNATURE_SIZE)
        signature = _bytes_field(raw[3], sig_sizes, "signature")
        inputs.append(TxIn(prev_txid, raw[1], pubkey, signature))
    outputs = []
    for raw in raw_outputs:
        if type(raw) is not list or len(raw) != 2 or type(raw[0]) is not int or raw[0] < 0:
            raise DecodeError("an output is [amount >= 0, pubkey_hash]")
        outputs.append(TxOut(raw[0], _bytes_field(raw[1], (PUBKEY_HASH_SIZE,), "pubkey_hash")))
    return Transaction(inputs, outputs, version, locktime)


def decode_transaction(data: bytes, max_size: int) -> Transaction:
    """Parse the canonical encoding; anything else (re-encoding differs) is refused."""
    tx = transaction_from_lists(_unpack(data, max_size, "transaction"))
    if tx.encode() != bytes(data):
        raise DecodeError("non-canonical transaction encoding", "non-canonical")
    return tx
