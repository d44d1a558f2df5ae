"""The p2p message types: one frozen dataclass per message, and the fixed type-number table.

A message's payload is a msgpack array of its fields in declaration order (see `p2p.wire` for the
envelope around it). Every field is checked on construction, so a `Message` object that exists is
well-formed no matter whether it came from the network or from our own code; semantic checks
(does this header connect, is this signature valid) belong to the node, not here.

Nested records (`AddrEntry`, `InvItem`, `PrefilledTx`) are NamedTuples and list fields are stored
as tuples, which keeps every message hashable and comparable; constructors also accept lists and
plain tuples and normalise them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields
from typing import Any, ClassVar, NamedTuple, Self

from consensus.block import HEADER_SIZE
from consensus.hashing import HASH_SIZE
from p2p.errors import BAD_FIELD, ProtocolError

U16_MAX = 2**16 - 1
U32_MAX = 2**32 - 1
U64_MAX = 2**64 - 1

SHORT_ID_SIZE = 6

INV_TX = 1
INV_BLOCK = 2
# A getdata for a block answered with a `cmpctblock` rather than the full block (BIP152's
# MSG_CMPCT_BLOCK): how a node fetches a block a low-bandwidth peer announced by its header.
INV_CMPCT_BLOCK = 3
INV_KINDS = frozenset({INV_TX, INV_BLOCK, INV_CMPCT_BLOCK})
# The compact-block protocol version `sendcmpct` names; a request for another is ignored.
COMPACT_VERSION = 1

MAX_USER_AGENT = 64  # characters
MAX_HOST_LEN = 64  # characters: a DNS name or an IP literal
MAX_GOODBYE_REASON = 200  # characters
MAX_ADDR = 100
MAX_INV = 1000
MAX_LOCATOR = 64
MAX_HEADERS = 2000
MAX_TX_BYTES = 1_000_000
MAX_BLOCK_BYTES = 4_000_000
# Bounds every per-block list (short ids, prefilled and requested transactions) and the indexes
# into it; no block under MAX_BLOCK_BYTES can hold more transactions than this.
MAX_BLOCK_TXS = 100_000

# Loosest bounds over all messages, for the msgpack unpacker's allocation limits in `p2p.wire`.
MAX_STRING_CHARS = max(MAX_USER_AGENT, MAX_HOST_LEN, MAX_GOODBYE_REASON)
MAX_LIST_LEN = max(MAX_ADDR, MAX_INV, MAX_LOCATOR, MAX_HEADERS, MAX_BLOCK_TXS)



def _bad(where: str, problem: str) -> ProtocolError:
    return ProtocolError(BAD_FIELD, f"{where}: {problem}")


# --- field checkers ---------------------------------------------------------------------------
# Each checker validates one value (naming it as `where` in errors), returns its normal form, and
# turns a normal-form value back into what msgpack should encode.


class _Check:
    def check(self, where: str, value: Any) -> Any:
        raise NotImplementedError

    def dump(self, value: Any) -> Any:
        return value


class _UInt(_Check):
    def __init__(self, maximum: int, minimum: int = 0) -> None:
        self.minimum = minimum
        self.maximum = maximum

    def check(self, where: str, value: Any) -> int:
        # `type() is int` rather than isinstance: msgpack `true` decodes to bool, a subclass of int.
        if type(value) is not int:
            raise _bad(where, f"expected an integer, got {type(value).__name__}")
        if not self.minimum <= value <= self.maximum:
            raise _bad(where, f"{value} outside {self.minimum}..{self.maximum}")
        return value


class _OneOf(_Check):
    def __init__(self, allowed: frozenset[int]) -> None:
        self.allowed = allowed

    def check(self, where: str, value: Any) -> int:
        if type(value) is not int or value not in self.allowed:
            raise _bad(where, f"{value!r} is not one of {sorted(self.allowed)}")
        return value


class _Bytes(_Check):
    """Bytes of exactly `size`, or of at most `max_len` when size is None."""

    def __init__(self, size: int | None = None, max_len: int | None = None) -> None:
        self.size = size
        self.max_len = max_len

    def check(self, where: str, value: Any) -> bytes:
        if type(value) is not bytes:
            raise _bad(where, f"expected bytes, got {type(value).__name__}")
        if self.size is not None and len(value) != self.size:
            raise _bad(where, f"expected {self.size} bytes, got {len(value)}")
        if self.max_len is not None and len(value) > self.max_len:
            raise _bad(where, f"{len(value)} bytes exceeds {self.max_len}")
        return value


class _Str(_Check):
    def __init__(self, max_len: int) -> None:
        self.max_len = max_len

    def check(self, where: str, value: Any) -> str:
        if type(value) is not str:
            raise _bad(where, f"expected a string, got {type(value).__name__}")
        if len(value) > self.max_len:
            raise _bad(where, f"{len(value)} characters exceeds {self.max_len}")
        try:
            value.encode()
        except UnicodeEncodeError:
            # Lone surrogates fit in a Python str but not in msgpack's UTF-8 strings.
            raise _bad(where, "not encodable as UTF-8") from None
        return value


class _List(_Check):
    def __init__(self, item: _Check, max_len: int) -> None:
        self.item = item
        self.max_len = max_len

    def check(self, where: str, value: Any) -> tuple[Any, ...]:
        if not isinstance(value, list | tuple):
            raise _bad(where, f"expected an array, got {type(value).__name__}")
        if len(value) > self.max_len:
            raise _bad(where, f"{len(value)} entries exceeds {self.max_len}")
        check = self.item.check
        try:
            # Thousands of short ids or headers: no per-item location string unless one fails.
            return tuple([check(where, v) for v in value])
        except ProtocolError:
            pass
        return tuple(check(f"{where}[{i}]", v) for i, v in enumerate(value))  # raises, located

    def dump(self, value: tuple[Any, ...]) -> list[Any]:
        return [self.item.dump(v) for v in value]


class _Record(_Check):
    """A fixed-length array of heterogeneous fields, normalised into a NamedTuple."""

    def __init__(self, cls: type[tuple[Any, ...]], *items: _Check) -> None:
        self.cls = cls
        self.items = items

    def check(self, where: str, value: Any) -> tuple[Any, ...]:
        if not isinstance(value, list | tuple) or len(value) != len(self.items):
            raise _bad(where, f"expected an array of {len(self.items)} fields")
        names: tuple[str, ...] = self.cls._fields  # type: ignore[attr-defined]
        return self.cls(
            *(c.check(f"{where}.{n}", v) for c, n, v in zip(self.items, names, value, strict=True))
        )

    def dump(self, value: tuple[Any, ...]) -> list[Any]:
        return [c.dump(v) for c, v in zip(self.items, value, strict=True)]


def _strictly_increasing(where: str, values: list[int]) -> None:
    # Duplicates would let one small request demand the same transaction many times over, and
    # a fixed order keeps the encoding of a given set unique.
    for i in range(1, len(values)):
        if values[i] <= values[i - 1]:
            raise _bad(f"{where}[{i}]", "indexes must be strictly increasing")


_U32 = _UInt(U32_MAX)
_FLAG = _OneOf(frozenset({0, 1}))
_U64 = _UInt(U64_MAX)
_HASH = _Bytes(HASH_SIZE)
_TX = _Bytes(max_len=MAX_TX_BYTES)
_TX_INDEX = _UInt(MAX_BLOCK_TXS - 1)


# --- nested records -----------------------------------------------------------------------------


class AddrEntry(NamedTuple):
    host: str
    port: int
    node_id: bytes
    last_seen: int  # unix seconds


class InvItem(NamedTuple):
    kind: int  # INV_TX or INV_BLOCK
    hash: bytes


class PrefilledTx(NamedTuple):
    index: int  # position in the block's transaction list
    tx: bytes


# Advertising port 0 would be an address nobody can dial, so unlike Hello it is refused here.
_ADDR_ENTRY = _Record(AddrEntry, _Str(MAX_HOST_LEN), _UInt(U16_MAX, minimum=1), _HASH, _U64)
_INV_ITEM = _Record(InvItem, _OneOf(INV_KINDS), _HASH)
_PREFILLED = _Record(PrefilledTx, _TX_INDEX, _TX)


# --- messages -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Message:
    """Base of all messages; subclasses set TYPE, NAME and _SPEC (field name and checker)."""

    TYPE: ClassVar[int]
    NAME: ClassVar[str]
    _SPEC: ClassVar[tuple[tuple[str, _Check], ...]] = ()

    def __post_init__(self) -> None:
        for name, check in self._SPEC:
            value = getattr(self, name)
            normal = check.check(f"{self.NAME}.{name}", value)
            if normal is not value:
                object.__setattr__(self, name, normal)
        self._check_extra()

    def _check_extra(self) -> None:
        """Cross-field rules beyond the per-field checks."""

    def to_payload(self) -> list[Any]:
        return [check.dump(getattr(self, name)) for name, check in self._SPEC]

    @classmethod
    def from_payload(cls, obj: Any) -> Self:
        if not isinstance(obj, list | tuple) or len(obj) != len(cls._SPEC):
            raise _bad(cls.NAME, f"payload must be an array of {len(cls._SPEC)} fields")
        return cls(*obj)


@dataclass(frozen=True, slots=True)
class Hello(Message):
    TYPE: ClassVar[int] = 1
    NAME: ClassVar[str] = "hello"
    _SPEC: ClassVar[tuple[tuple[str, _Check], ...]] = (
        ("version", _U32),
        ("genesis", _HASH),
        ("listen_port", _UInt(U16_MAX)),
        ("height", _U32),
        ("chainwork", _HASH),
        ("tip", _HASH),
        ("user_agent", _Str(MAX_USER_AGENT)),
        ("timestamp", _U64),
    )

    version: int
    genesis: bytes
    listen_port: int  # 0 = not accepting connections
    height: int
    chainwork: bytes  # big-endian 256-bit integer
    tip: bytes
    user_agent: str
    timestamp: int  # unix seconds


@dataclass(frozen=True, slots=True)
class Ping(Message):
    TYPE: ClassVar[int] = 3
    NAME: ClassVar[str] = "ping"
    _SPEC: ClassVar[tuple[tuple[str, _Check], ...]] = (
        ("nonce", _U64),
        ("height", _U32),
        ("chainwork", _HASH),
        ("tip", _HASH),
    )

    nonce: int
    height: int
    chainwork: bytes
    tip: bytes


@dataclass(frozen=True, slots=True)
class Pong(Message):
    TYPE: ClassVar[int] = 4
    NAME: ClassVar[str] = "pong"
    _SPEC: ClassVar[tuple[tuple[str, _Check], ...]] = Ping._SPEC

    nonce: int  # echoes Ping.nonce
    height: int
    chainwork: bytes
    tip: bytes


@dataclass(frozen=True, slots=True)
class GetAddr(Message):
    TYPE: ClassVar[int] = 5
    NAME: ClassVar[str] = "getaddr"


@dataclass(frozen=True, slots=True)
class Addr(Message):
    TYPE: ClassVar[int] = 6
    NAME: ClassVar[str] = "addr"
    _SPEC: ClassVar[tuple[tuple[str, _Check], ...]] = (("addrs", _List(_ADDR_ENTRY, MAX_ADDR)),)

    addrs: tuple[AddrEntry, ...]


_INV_SPEC: tuple[tuple[str, _Check], ...] = (("items", _List(_INV_ITEM, MAX_INV)),)


@dataclass(frozen=True, slots=True)
class Inv(Message):
    TYPE: ClassVar[int] = 7
    NAME: ClassVar[str] = "inv"
    _SPEC: ClassVar[tuple[tuple[str, _Check], ...]] = _INV_SPEC

    items: tuple[InvItem, ...]


@dataclass(frozen=True, slots=True)
class GetData(Message):
    TYPE: ClassVar[int] = 8
    NAME: ClassVar[str] = "getdata"
    _SPEC: ClassVar[tuple[tuple[str, _Check], ...]] = _INV_SPEC

    items: tuple[InvItem, ...]


@dataclass(frozen=True, slots=True)
class NotFound(Message):
    TYPE: ClassVar[int] = 9
    NAME: ClassVar[str] = "notfound"
    _SPEC: ClassVar[tuple[tuple[str, _Check], ...]] = _INV_SPEC

    items: tuple[InvItem, ...]


@dataclass(frozen=True, slots=True)
class TxMsg(Message):
    TYPE: ClassVar[int] = 10
    NAME: ClassVar[str] = "tx"
    _SPEC: ClassVar[tuple[tuple[str, _Check], ...]] = (("tx", _TX),)

    tx: bytes  # encoded transaction, decoded by the node with consensus rules


@dataclass(frozen=True, slots=True)
class BlockMsg(Message):
    TYPE: ClassVar[int] = 11
    NAME: ClassVar[str] = "block"
    _SPEC: ClassVar[tuple[tuple[str, _Check], ...]] = (("block", _Bytes(max_len=MAX_BLOCK_BYTES)),)

    block: bytes  # encoded block


@dataclass(frozen=True, slots=True)
class GetHeaders(Message):
    TYPE: ClassVar[int] = 12
    NAME: ClassVar[str] = "getheaders"
    _SPEC: ClassVar[tuple[tuple[str, _Check], ...]] = (
        ("locator", _List(_HASH, MAX_LOCATOR)),
        ("stop", _HASH),
    )

    locator: tuple[bytes, ...]  # block hashes, newest first
    stop: bytes  # all zero = send as many as allowed


@dataclass(frozen=True, slots=True)
class Headers(Message):
    TYPE: ClassVar[int] = 13
    NAME: ClassVar[str] = "headers"
    _SPEC: ClassVar[tuple[tuple[str, _Check], ...]] = (
        ("headers", _List(_Bytes(HEADER_SIZE), MAX_HEADERS)),
    )

    headers: tuple[bytes, ...]  # 80-byte encoded headers, in chain order


@dataclass(frozen=True, slots=True)
class CompactBlock(Message):
    TYPE: ClassVar[int] = 14
    NAME: ClassVar[str] = "cmpctblock"
    _SPEC: ClassVar[tuple[tuple[str, _Check], ...]] = (
        ("header", _Bytes(HEADER_SIZE)),
        ("salt", _U64),
        ("short_ids", _List(_Bytes(SHORT_ID_SIZE), MAX_BLOCK_TXS)),
        ("prefilled", _List(_PREFILLED, MAX_BLOCK_TXS)),
        ("pipelined", _FLAG),
    )

    header: bytes
    salt: int  # keys short_tx_id for this block
    short_ids: tuple[bytes, ...]
    prefilled: tuple[PrefilledTx, ...]  # absolute indexes, strictly increasing
    # 1: pushed to a high-bandwidth peer before the sender had validated the block (BIP152's
    # relay ahead of validation); 0: the sender connected it, so it vouches for it.
    pipelined: int = 0

    def _check_extra(self) -> None:
        _strictly_increasing(f"{self.NAME}.prefilled", [p.index for p in self.prefilled])


@dataclass(frozen=True, slots=True)
class GetBlockTxn(Message):
    TYPE: ClassVar[int] = 15
    NAME: ClassVar[str] = "getblocktxn"
    _SPEC: ClassVar[tuple[tuple[str, _Check], ...]] = (
        ("block_hash", _HASH),
        ("indexes", _List(_TX_INDEX, MAX_BLOCK_TXS)),
    )

    block_hash: bytes
    indexes: tuple[int, ...]  # absolute, strictly increasing

    def _check_extra(self) -> None:
        _strictly_increasing(f"{self.NAME}.indexes", list(self.indexes))


@dataclass(frozen=True, slots=True)
class BlockTxn(Message):
    TYPE: ClassVar[int] = 16
    NAME: ClassVar[str] = "blocktxn"
    _SPEC: ClassVar[tuple[tuple[str, _Check], ...]] = (
        ("block_hash", _HASH),
        ("txs", _List(_TX, MAX_BLOCK_TXS)),
    )

    block_hash: bytes
    txs: tuple[bytes, ...]  # in the order of the GetBlockTxn indexes


@dataclass(frozen=True, slots=True)
class DoubleSpendAlert(Message):
    TYPE: ClassVar[int] = 18
    NAME: ClassVar[str] = "dsalert"
    _SPEC: ClassVar[tuple[tuple[str, _Check], ...]] = (("tx_a", _TX), ("tx_b", _TX))

    tx_a: bytes  # two signed transactions spending a common input: self-proving evidence
    tx_b: bytes


@dataclass(frozen=True, slots=True)
class Goodbye(Message):
    TYPE: ClassVar[int] = 19
    NAME: ClassVar[str] = "goodbye"
    _SPEC: ClassVar[tuple[tuple[str, _Check], ...]] = (("reason", _Str(MAX_GOODBYE_REASON)),)

    reason: str


@dataclass(frozen=True, slots=True)
class SendCmpct(Message):
    """BIP152's `sendcmpct`: `high_bandwidth` 1 asks the peer to push new blocks to us as
    compact blocks without announcing them first, 0 to announce them by their header."""

    TYPE: ClassVar[int] = 20
    NAME: ClassVar[str] = "sendcmpct"
    _SPEC: ClassVar[tuple[tuple[str, _Check], ...]] = (("high_bandwidth", _FLAG), ("version", _U32))

    high_bandwidth: int
    version: int


def _build_table(*classes: type[Message]) -> dict[int, type[Message]]:
    table: dict[int, type[Message]] = {}
    for cls in classes:
        # A _SPEC out of step with the dataclass fields would silently shift positional fields.
        if tuple(f.name for f in fields(cls)) != tuple(name for name, _ in cls._SPEC):
            raise TypeError(f"{cls.__name__}._SPEC does not match its fields")
        if cls.TYPE in table:
            raise TypeError(f"duplicate message type {cls.TYPE}")
        table[cls.TYPE] = cls
    return table


# The only way from a type number to a class: never look a class up by a name from the network.
MESSAGE_TYPES: dict[int, type[Message]] = _build_table(
    Hello, Ping, Pong, GetAddr, Addr, Inv, GetData, NotFound, TxMsg, BlockMsg,
    GetHeaders, Headers, CompactBlock, GetBlockTxn, BlockTxn, DoubleSpendAlert, Goodbye,
    SendCmpct,
)  # fmt: skip


def short_tx_id(salt: int, txid: bytes) -> bytes:
    """The 6-byte id a CompactBlock uses for a transaction the receiver probably already has.

    BIP152 uses SipHash-2-4 here because it is several times faster than SHA-256 over the
    thousands of mempool transactions a receiver must hash per block; hashlib has no SipHash, and
    at our block sizes one C-level sha256 per transaction is cheap enough. What matters is the
    per-block salt, not the hash function: an attacker cannot grind two transactions to the same
    48-bit id in advance because the salt is only chosen when the block is relayed, and a
    collision that happens anyway only costs a GetBlockTxn round trip, never correctness.
    """
    if not 0 <= salt <= U64_MAX:
        raise ValueError("salt must be a u64")
    return hashlib.sha256(salt.to_bytes(8, "big") + txid).digest()[:SHORT_ID_SIZE]
