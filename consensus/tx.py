"""Transactions in a UTXO model, with one canonical msgpack encoding.

A transaction is ``[version, [input, …], [[amount, pkh], …], locktime]``. An input is
``[prev_txid, prev_index, pubkey, signature]`` when it spends a one-key lock, or
``[prev_txid, prev_index, multisig_script, [slot₁, …, slotₙ]]`` when it spends an m-of-n lock
(`consensus.multisig`; each slot is a signature or empty). A fifth element, the input's sequence
number, is present only when it is not `SEQUENCE_FINAL`, so transactions that never use it keep
the encoding they always had. Its id is the double SHA-256 of that encoding, signatures included;
decoding accepts only the canonical bytes and Ed25519 signatures are not malleable, so nobody but
the signers can produce another valid encoding of the same payment. (A co-signer holding more than
m signatures of a multisig input can choose which m to publish, as with Bitcoin's legacy
multisig; each choice has its own txid.)
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, NamedTuple

import msgpack

from consensus.errors import DecodeError
from consensus.hashing import HASH_SIZE, ZERO_HASH, merkle_leaf, sha256d
from consensus.keys import PUBKEY_HASH_SIZE, PUBKEY_SIZE, SIGNATURE_SIZE, PrivateKey
from consensus.multisig import MultisigScript, decode_multisig_script

U32_MAX = 0xFFFFFFFF
COINBASE_INDEX = U32_MAX
COINBASE_HEIGHT_SIZE = 4
MAX_COINBASE_DATA = 100
SIGHASH_TAG = b"powlab-sighash"
# As in Bitcoin: an input whose sequence is final opts out of the transaction's lock time; a
# transaction whose inputs are all final is final whatever its lock time says.
SEQUENCE_FINAL = U32_MAX
# Below this a lock time is a block height, from it on a Unix time compared with median time past.
LOCKTIME_THRESHOLD = 500_000_000


class OutPoint(NamedTuple):
    txid: bytes
    index: int

    def __str__(self) -> str:
        return f"{self.txid.hex()}:{self.index}"


class TxIn(NamedTuple):
    """One input. A one-key spend fills `pubkey` and `signature`; a multisig spend fills
    `multisig` and `signature_slots` (one per key, empty where that key did not sign) and leaves
    the other two empty. Unsigned inputs (createrawtransaction) carry neither."""

    prev_txid: bytes
    prev_index: int
    pubkey: bytes
    signature: bytes
    sequence: int = SEQUENCE_FINAL
    multisig: MultisigScript | None = None
    signature_slots: tuple[bytes, ...] = ()

    @property
    def outpoint(self) -> OutPoint:
        return OutPoint(self.prev_txid, self.prev_index)

    def encoded_fields(self, blank_unlocking: bool = False) -> list[Any]:
        lock: bytes
        proof: Any
        if blank_unlocking:
            # The sighash form: no key, script or signature of any input (see `sighash`).
            lock, proof = b"", b""
        elif self.multisig is not None:
            lock, proof = self.multisig.encode(), list(self.signature_slots)
        else:
            lock, proof = self.pubkey, self.signature
        fields = [self.prev_txid, self.prev_index, lock, proof]
        if self.sequence != SEQUENCE_FINAL:
            fields.append(self.sequence)
        return fields


class TxOut(NamedTuple):
    amount: int
    pkh: bytes


class Transaction:
    """An immutable transaction; encoding and id are computed once."""

    __slots__ = (
        "_encoded", "_leaf", "_outpoints", "_total_out", "_txid", "checked_with", "inputs",
        "locktime", "outputs", "version",
    )

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
        self._outpoints: tuple[OutPoint, ...] | None = None
        self._total_out: int | None = None
        self._leaf: bytes | None = None
        # The params this transaction passed the context-free checks with: a mempool
        # transaction reused in a block (compact relay) need not be checked again.
        self.checked_with: object = None

    def _as_lists(self, blank_unlocking: bool = False) -> list[Any]:
        return [
            self.version,
            [i.encoded_fields(blank_unlocking) for i in self.inputs],
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
    def merkle_leaf(self) -> bytes:
        """Its leaf in a block's merkle tree, hashed once: a mempool transaction has it before
        the block that confirms it arrives, and half the tree's hashes are leaves."""
        if self._leaf is None:
            self._leaf = merkle_leaf(self.txid)
        return self._leaf

    @property
    def outpoints(self) -> tuple[OutPoint, ...]:
        """The outpoints its inputs spend, in input order: made once, then shared by the
        mempool's and the block's checks and by the indexes keyed by them."""
        if self._outpoints is None:
            self._outpoints = tuple(
                OutPoint(txin.prev_txid, txin.prev_index) for txin in self.inputs
            )
        return self._outpoints

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
        """The digest every input signs: the whole transaction (every outpoint and sequence,
        every output, version, lock time) minus every input's unlocking data (public key or
        multisig script, and signatures), bound to one network by its genesis hash so a
        signature cannot be replayed on another network.

        Leaving out the keys and scripts is what lets co-signers of different inputs sign in any
        order (as Bitcoin's SIGHASH_ALL does not cover other inputs' scriptSigs), and it is sound
        because each coin's lock hash, fixed by the signed outpoint, pins the one key or script
        that may be revealed for it."""
        body = msgpack.packb(self._as_lists(blank_unlocking=True), use_bin_type=True)
        return hashlib.sha256(SIGHASH_TAG + genesis_hash + body).digest()

    def with_inputs(self, inputs: Sequence[TxIn]) -> Transaction:
        """The same transaction with other inputs (keys, signatures), outputs and lock time kept."""
        return Transaction(inputs, self.outputs, self.version, self.locktime)

    def total_out(self) -> int:
        """The sum of its outputs (made once: the mempool and the block both ask)."""
        if self._total_out is None:
            self._total_out = sum(o.amount for o in self.outputs)
        return self._total_out

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
                {"coinbase": i.signature.hex(), "sequence": i.sequence}
                if self.is_coinbase
                else _input_json(i)
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


def _input_json(txin: TxIn) -> dict[str, Any]:
    view: dict[str, Any] = {
        "txid": txin.prev_txid.hex(),
        "vout": txin.prev_index,
        "sequence": txin.sequence,
    }
    if txin.multisig is None:
        view["pubkey"] = txin.pubkey.hex()
    else:
        view["multisig"] = {
            "required": txin.multisig.required,
            "pubkeys": [key.hex() for key in txin.multisig.pubkeys],
            "redeemScript": txin.multisig.encode().hex(),
        }
        view["signatures"] = sum(1 for slot in txin.signature_slots if slot)
    return view


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
    """Sign every input with one key; `keys[i]` owns input i (its public key is filled in
    here). Sequence numbers and lock time are kept; they are signed like everything else."""
    if len(keys) != len(unsigned.inputs):
        raise ValueError("one key per input is needed")
    digest = unsigned.sighash(genesis_hash)
    return unsigned.with_inputs(
        [
            i._replace(
                pubkey=k.public_key, signature=k.sign(digest), multisig=None, signature_slots=()
            )
            for i, k in zip(unsigned.inputs, keys, strict=True)
        ]
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
    inputs = [_input_from_list(raw) for raw in raw_inputs]
    outputs = []
    for raw in raw_outputs:
        if type(raw) is not list or len(raw) != 2 or type(raw[0]) is not int or raw[0] < 0:
            raise DecodeError("an output is [amount >= 0, pubkey_hash]")
        outputs.append(TxOut(raw[0], _bytes_field(raw[1], (PUBKEY_HASH_SIZE,), "pubkey_hash")))
    return Transaction(inputs, outputs, version, locktime)


def _input_from_list(raw: Any) -> TxIn:
    if type(raw) is not list or len(raw) not in (4, 5):
        raise DecodeError("an input is a list of 4 fields, or 5 with a sequence number")
    prev_txid = _bytes_field(raw[0], (HASH_SIZE,), "prev_txid")
    if not _is_u32(raw[1]):
        raise DecodeError("prev_index must be an unsigned 32-bit integer")
    sequence = SEQUENCE_FINAL
    if len(raw) == 5:
        if not _is_u32(raw[4]):
            raise DecodeError("sequence must be an unsigned 32-bit integer")
        sequence = raw[4]
    coinbase = prev_txid == ZERO_HASH and raw[1] == COINBASE_INDEX
    if type(raw[3]) is list and not coinbase:
        return _multisig_input(prev_txid, raw[1], raw[2], raw[3], sequence)
    # Unsigned transactions (createrawtransaction) carry neither key nor signature yet.
    pubkey = _bytes_field(raw[2], (0,) if coinbase else (0, PUBKEY_SIZE), "pubkey")
    sig_sizes = range(MAX_COINBASE_DATA + 1) if coinbase else (0, SIGNATURE_SIZE)
    signature = _bytes_field(raw[3], sig_sizes, "signature")
    return TxIn(prev_txid, raw[1], pubkey, signature, sequence)


def _multisig_input(
    prev_txid: bytes, prev_index: int, raw_script: Any, raw_slots: list[Any], sequence: int
) -> TxIn:
    script = decode_multisig_script(raw_script)
    if len(raw_slots) != script.size:
        raise DecodeError(
            f"a multisig input has one signature slot per key ({script.size}), got {len(raw_slots)}"
        )
    slots = tuple(_bytes_field(slot, (0, SIGNATURE_SIZE), "signature slot") for slot in raw_slots)
    return TxIn(prev_txid, prev_index, b"", b"", sequence, script, slots)


def decode_transaction(data: bytes, max_size: int) -> Transaction:
    """Parse the canonical encoding; anything else (re-encoding differs) is refused."""
    tx = transaction_from_lists(_unpack(data, max_size, "transaction"))
    if tx.encode() != bytes(data):
        raise DecodeError("non-canonical transaction encoding", "non-canonical")
    return tx
