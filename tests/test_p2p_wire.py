"""p2p codec: message round trips, every rejection reason, stream framing and fuzzing."""

from __future__ import annotations

import hashlib
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consensus.block import HEADER_SIZE
from consensus.hashing import sha256d
from p2p.errors import REASONS, ProtocolError
from p2p.messages import (
    INV_BLOCK,
    INV_TX,
    MAX_ADDR,
    MAX_BLOCK_BYTES,
    MAX_BLOCK_TXS,
    MAX_HEADERS,
    MAX_INV,
    MAX_LOCATOR,
    MAX_TX_BYTES,
    MAX_USER_AGENT,
    MESSAGE_TYPES,
    U32_MAX,
    U64_MAX,
    Addr,
    AddrEntry,
    BlockMsg,
    BlockTxn,
    CompactBlock,
    DoubleSpendAlert,
    GetAddr,
    GetBlockTxn,
    GetData,
    GetHeaders,
    Goodbye,
    Headers,
    Hello,
    Inv,
    InvItem,
    Message,
    NotFound,
    Ping,
    Pong,
    PrefilledTx,
    SendCmpct,
    TxMsg,
    short_tx_id,
)
from p2p.protocol import MAX_DATAGRAM_ENVELOPE
from p2p.wire import (
    MAX_DATAGRAM_SIZE,
    MAX_MESSAGE_SIZE,
    decode_message,
    encode_message,
)

MAGIC = b"PLRT"
# Fixed seeds keep the suite reproducible; no deadline since CI machines vary.
FAST = settings(derandomize=True, max_examples=40, deadline=None)
FUZZ = settings(
    derandomize=True, max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def envelope(type_num: Any, payload_obj: Any, magic: bytes = MAGIC) -> bytes:
    """A canonical envelope around an arbitrary payload, with a correct checksum."""
    payload = pack(payload_obj)
    return pack([magic, type_num, payload, sha256d(payload)[:4]])


def decode(data: bytes, max_size: int = MAX_MESSAGE_SIZE) -> Message:
    return decode_message(data, MAGIC, max_size)


def reason_of(data: bytes, max_size: int = MAX_MESSAGE_SIZE) -> str:
    with pytest.raises(ProtocolError) as info:
        decode(data, max_size)
    assert info.value.reason in REASONS
    return info.value.reason


# --- strategies -------------------------------------------------------------------------------


def blob(n: int) -> st.SearchStrategy[bytes]:
    return st.binary(min_size=n, max_size=n)


hashes = blob(32)
u32 = st.integers(0, U32_MAX)
u64 = st.integers(0, U64_MAX)
tx_bytes = st.binary(max_size=200)
inv_items = st.lists(st.builds(InvItem, st.sampled_from([INV_TX, INV_BLOCK]), hashes), max_size=5)
increasing = st.lists(st.integers(0, MAX_BLOCK_TXS - 1), max_size=6, unique=True).map(sorted)

STRATEGIES: dict[type[Message], st.SearchStrategy[Message]] = {
    Hello: st.builds(
        Hello,
        u32,
        hashes,
        st.integers(0, 65535),
        u32,
        hashes,
        hashes,
        st.text(max_size=MAX_USER_AGENT),
        u64,
    ),
    Ping: st.builds(Ping, u64, u32, hashes, hashes),
    Pong: st.builds(Pong, u64, u32, hashes, hashes),
    GetAddr: st.just(GetAddr()),
    Addr: st.builds(
        Addr,
        st.lists(
            st.builds(AddrEntry, st.text(max_size=64), st.integers(1, 65535), hashes, u64),
            max_size=5,
        ),
    ),
    Inv: st.builds(Inv, inv_items),
    GetData: st.builds(GetData, inv_items),
    NotFound: st.builds(NotFound, inv_items),
    TxMsg: st.builds(TxMsg, tx_bytes),
    BlockMsg: st.builds(BlockMsg, st.binary(max_size=1000)),
    GetHeaders: st.builds(GetHeaders, st.lists(hashes, max_size=5), hashes),
    Headers: st.builds(Headers, st.lists(blob(HEADER_SIZE), max_size=5)),
    CompactBlock: st.builds(
        CompactBlock,
        blob(HEADER_SIZE),
        u64,
        st.lists(blob(6), max_size=8),
        increasing.flatmap(
            lambda idx: st.tuples(*(st.builds(PrefilledTx, st.just(i), tx_bytes) for i in idx))
        ),
        st.sampled_from([0, 1]),
    ),
    GetBlockTxn: st.builds(GetBlockTxn, hashes, increasing),
    BlockTxn: st.builds(BlockTxn, hashes, st.lists(tx_bytes, max_size=5)),
    DoubleSpendAlert: st.builds(DoubleSpendAlert, tx_bytes, tx_bytes),
    Goodbye: st.builds(Goodbye, st.text(max_size=200)),
    SendCmpct: st.builds(SendCmpct, st.sampled_from([0, 1]), st.integers(0, 2**32 - 1)),
}
any_message = st.one_of(*STRATEGIES.values())


def sample_hello(**changes: Any) -> Hello:
    fields: dict[str, Any] = dict(
        version=1,
        genesis=b"\x11" * 32,
        listen_port=8333,
        height=1234,
        chainwork=(10**20).to_bytes(32, "big"),
        tip=b"\x44" * 32,
        user_agent="powlab/0.1.0",
        timestamp=1_700_000_000,
    )
    fields.update(changes)
    return Hello(**fields)


# --- the table and round trips ----------------------------------------------------------------


def test_message_table_is_fixed_and_complete() -> None:
    # 2 (verack) and 17 (streamhello) were retired with the clear-text handshake: the
    # session layer authenticates peers and streams now.
    assert sorted(MESSAGE_TYPES) == [n for n in range(1, 21) if n not in (2, 17)]
    for type_num, cls in MESSAGE_TYPES.items():
        assert type_num == cls.TYPE
    assert set(STRATEGIES) == set(MESSAGE_TYPES.values())
    assert len({cls.NAME for cls in MESSAGE_TYPES.values()}) == len(MESSAGE_TYPES)


@pytest.mark.parametrize("cls", list(MESSAGE_TYPES.values()), ids=lambda c: c.NAME)
@FAST
@given(data=st.data())
def test_round_trip(cls: type[Message], data: st.DataObject) -> None:
    msg = data.draw(STRATEGIES[cls])
    assert type(msg) is cls
    encoded = encode_message(MAGIC, msg)
    decoded = decode(encoded)
    assert decoded == msg
    assert type(decoded) is cls
    assert hash(decoded) == hash(msg)
    # One encoding per message: re-encoding the decoded object gives the same bytes.
    assert encode_message(MAGIC, decoded) == encoded
    assert cls.from_payload(msg.to_payload()) == msg


def test_constructors_normalise_lists_to_tuples() -> None:
    a = Addr([["h", 1, b"\x00" * 32, 5]])
    assert a.addrs == (AddrEntry("h", 1, b"\x00" * 32, 5),)
    assert Inv([(INV_TX, b"\x01" * 32)]) == Inv((InvItem(INV_TX, b"\x01" * 32),))
    assert GetHeaders([b"\x02" * 32], b"\x00" * 32).locator == (b"\x02" * 32,)


def test_small_messages_fit_a_datagram() -> None:
    # Worst case: a user agent of 64 four-byte UTF-8 characters and maximal integers.
    hello = sample_hello(user_agent="\U0001f600" * MAX_USER_AGENT, timestamp=U64_MAX)
    # (under the session's header and tag, which is what a datagram carries)
    assert len(encode_message(MAGIC, hello)) <= MAX_DATAGRAM_ENVELOPE < MAX_DATAGRAM_SIZE
    ping = Ping(U64_MAX, U32_MAX, b"\xff" * 32, b"\xff" * 32)
    assert len(encode_message(MAGIC, ping)) <= MAX_DATAGRAM_ENVELOPE


def test_largest_messages_fit_the_stream_limit() -> None:
    block = BlockMsg(b"\xab" * MAX_BLOCK_BYTES)
    encoded = encode_message(MAGIC, block)
    assert len(encoded) <= MAX_MESSAGE_SIZE
    assert decode(encoded) == block
    headers = Headers([b"\x01" * HEADER_SIZE] * MAX_HEADERS)
    assert decode(encode_message(MAGIC, headers)) == headers
    txn = GetBlockTxn(b"\x00" * 32, list(range(MAX_BLOCK_TXS)))
    assert decode(encode_message(MAGIC, txn)) == txn


def test_encode_rejects_bad_magic_length() -> None:
    with pytest.raises(ValueError):
        encode_message(b"abc", GetAddr())


# --- rejection reasons ------------------------------------------------------------------------


def test_bad_magic() -> None:
    data = encode_message(b"PLMN", sample_hello())
    assert reason_of(data) == "bad-magic"


def test_bad_checksum() -> None:
    payload = pack(Ping(1, 2, b"\x00" * 32, b"\x00" * 32).to_payload())
    bad = bytes(a ^ b for a, b in zip(sha256d(payload)[:4], b"\x00\x00\x00\x01", strict=True))
    assert reason_of(pack([MAGIC, Ping.TYPE, payload, bad])) == "bad-checksum"


def test_payload_bit_flip_is_caught_by_checksum() -> None:
    data = bytearray(encode_message(MAGIC, sample_hello()))
    data[-10] ^= 0x01  # inside the payload, before the 5-byte checksum bin
    assert reason_of(bytes(data)) == "bad-checksum"


@pytest.mark.parametrize(
    "msg", [sample_hello(), Addr([AddrEntry("10.0.0.1", 8333, b"\x01" * 32, 7)]), GetAddr()]
)
def test_truncated_at_every_position(msg: Message) -> None:
    data = encode_message(MAGIC, msg)
    for cut in range(len(data)):
        assert reason_of(data[:cut]) == "truncated", cut


def test_truncated_payload_with_valid_checksum() -> None:
    payload = pack(Ping(1, 2, b"\x00" * 32, b"\x00" * 32).to_payload())[:-3]
    assert reason_of(pack([MAGIC, Ping.TYPE, payload, sha256d(payload)[:4]])) == "truncated"


def test_oversize_is_checked_before_parsing() -> None:
    # Garbage that would be `malformed` if parsed: oversize must win.
    assert reason_of(b"\xc1" * 101, max_size=100) == "oversize"
    data = encode_message(MAGIC, BlockMsg(b"\x00" * 2000))
    assert reason_of(data, max_size=MAX_DATAGRAM_SIZE) == "oversize"
    assert decode(data, max_size=len(data)) == BlockMsg(b"\x00" * 2000)


@pytest.mark.parametrize("type_num", [0, 21, 255, 10**6, -1])
def test_unknown_type(type_num: int) -> None:
    assert reason_of(envelope(type_num, [])) == "unknown-type"


@pytest.mark.parametrize(
    "data",
    [
        b"\xc1",  # the one byte msgpack never uses
        pack({"a": 1}),  # maps are refused outright
        pack(5),
        pack([MAGIC, 1, b""]),  # three elements
        pack([MAGIC, 1, b"", b"\x00" * 4, 0]),  # five elements
        pack(["PLRT", 5, pack([]), sha256d(pack([]))[:4]]),  # magic as str
        pack([b"PLR", 5, pack([]), sha256d(pack([]))[:4]]),  # 3-byte magic
        pack([MAGIC, True, pack([]), sha256d(pack([]))[:4]]),  # bool type number
        pack([MAGIC, 1.0, pack([]), sha256d(pack([]))[:4]]),  # float type number
        pack([MAGIC, 5, [], sha256d(pack([]))[:4]]),  # payload not bytes
        pack([MAGIC, 5, pack([]), sha256d(pack([]))[:3]]),  # short checksum
        pack([MAGIC, 5, pack([]), msgpack.ExtType(1, b"x")]),  # extension type
        b"\x91" * 5000,  # deep nesting
        b"\xdd\xff\xff\xff\xff",  # hostile 4-billion-element array
    ],
)
def test_malformed_envelopes(data: bytes) -> None:
    assert reason_of(data) == "malformed"


def test_hostile_length_allocates_nothing() -> None:
    # A bin claiming 4 GiB inside a 14-byte message: the unpacker never reserves the space, it
    # just runs out of input.
    assert reason_of(b"\x94\xc4\x04PLRT\x05\xc6\xff\xff\xff\xff") == "truncated"


def test_trailing_bytes() -> None:
    data = encode_message(MAGIC, GetAddr())
    assert reason_of(data + b"\x00") == "malformed"
    # Trailing bytes inside a payload whose checksum is right.
    payload = pack([]) + b"\x00"
    assert reason_of(pack([MAGIC, GetAddr.TYPE, payload, sha256d(payload)[:4]])) == "malformed"


def test_non_canonical_envelope() -> None:
    payload = pack([])
    check = sha256d(payload)[:4]
    canonical = pack([MAGIC, GetAddr.TYPE, payload, check])
    assert decode(canonical) == GetAddr()
    # The type number 5 as a uint8 (0xcc 0x05) instead of a positive fixint.
    wide_int = b"\x94\xc4\x04" + MAGIC + b"\xcc\x05\xc4\x01\x90\xc4\x04" + check
    assert msgpack.unpackb(wide_int) == msgpack.unpackb(canonical)
    assert reason_of(wide_int) == "malformed"
    # The array header as array16.
    wide_array = b"\xdc\x00\x04" + canonical[1:]
    assert reason_of(wide_array) == "malformed"


def test_non_canonical_payload() -> None:
    # Ping nonce 5 as a uint64 instead of a fixint; same value, different bytes.
    fields = Ping(5, 0, b"\x00" * 32, b"\x00" * 32).to_payload()
    canonical = pack(fields)
    wide = b"\x94\xcf" + (5).to_bytes(8, "big") + canonical[2:]
    assert msgpack.unpackb(wide) == fields
    assert reason_of(pack([MAGIC, Ping.TYPE, wide, sha256d(wide)[:4]])) == "malformed"
    # bytes in the old raw (str8) form rather than bin.
    raw = msgpack.packb(TxMsg(b"abc").to_payload(), use_bin_type=False)
    assert reason_of(pack([MAGIC, TxMsg.TYPE, raw, sha256d(raw)[:4]])) == "bad-field"


H = b"\x00" * 32
HELLO_FIELDS = sample_hello().to_payload()


def with_field(fields: list[Any], index: int, value: Any) -> list[Any]:
    changed = list(fields)
    changed[index] = value
    return changed


BAD_FIELDS: list[tuple[type[Message], Any, str]] = [
    (Hello, HELLO_FIELDS[:-1], "hello"),  # too few fields
    (Hello, [*HELLO_FIELDS, 0], "hello"),  # too many fields
    (GetAddr, [0], "getaddr"),
    (Hello, with_field(HELLO_FIELDS, 0, -1), "hello.version"),
    (Hello, with_field(HELLO_FIELDS, 0, U32_MAX + 1), "hello.version"),
    (Hello, with_field(HELLO_FIELDS, 0, True), "hello.version"),
    (Hello, with_field(HELLO_FIELDS, 1, b"\x00" * 31), "hello.genesis"),
    (Hello, with_field(HELLO_FIELDS, 2, 65536), "hello.listen_port"),
    (Hello, with_field(HELLO_FIELDS, 4, None), "hello.chainwork"),
    (Hello, with_field(HELLO_FIELDS, 6, "x" * (MAX_USER_AGENT + 1)), "hello.user_agent"),
    (Hello, with_field(HELLO_FIELDS, 6, b"ua"), "hello.user_agent"),
    (Hello, with_field(HELLO_FIELDS, 7, 1.5), "hello.timestamp"),
    (Ping, [-1, 0, H, H], "ping.nonce"),
    (Pong, [0, 0, H, H[:-1]], "pong.tip"),
    (Addr, [[["h", 1, H, 0]] * (MAX_ADDR + 1)], "addr.addrs"),
    (Addr, [[["h", 0, H, 0]]], "addr.addrs[0].port"),
    (Addr, [[["h" * 65, 1, H, 0]]], "addr.addrs[0].host"),
    (Addr, [[["h", 1, H]]], "addr.addrs[0]"),
    (Addr, [["h"]], "addr.addrs[0]"),
    (Addr, [b"not a list"], "addr.addrs"),
    (Inv, [[[4, H]]], "inv.items[0].kind"),
    (GetData, [[[0, H]]], "getdata.items[0].kind"),
    (GetData, [[[INV_TX, H[:31]]]], "getdata.items[0].hash"),
    (NotFound, [[[INV_BLOCK, H]] * (MAX_INV + 1)], "notfound.items"),
    (TxMsg, [b"\x00" * (MAX_TX_BYTES + 1)], "tx.tx"),
    (BlockMsg, ["block"], "block.block"),
    (GetHeaders, [[H] * (MAX_LOCATOR + 1), H], "getheaders.locator"),
    (GetHeaders, [[H, H[:1]], H], "getheaders.locator[1]"),
    (Headers, [[b"\x00" * (HEADER_SIZE - 1)]], "headers.headers[0]"),
    (Headers, [[b"\x00" * HEADER_SIZE] * (MAX_HEADERS + 1)], "headers.headers"),
    (CompactBlock, [b"\x00" * HEADER_SIZE, 0, [b"\x00" * 5], [], 0], "cmpctblock.short_ids[0]"),
    (CompactBlock, [b"\x00" * HEADER_SIZE, 0, [], [[2, b""], [2, b""]], 0],
     "cmpctblock.prefilled"),
    (CompactBlock, [b"\x00" * HEADER_SIZE, 0, [], [[MAX_BLOCK_TXS, b""]], 0],
     "cmpctblock.prefilled"),
    (CompactBlock, [b"\x00" * 81, 0, [], [], 0], "cmpctblock.header"),
    (CompactBlock, [b"\x00" * HEADER_SIZE, 0, [], [], 2], "cmpctblock.pipelined"),
    (CompactBlock, [b"\x00" * HEADER_SIZE, 0, [], [], True], "cmpctblock.pipelined"),
    (CompactBlock, [b"\x00" * HEADER_SIZE, 0, [], [], b"\x01"], "cmpctblock.pipelined"),
    (CompactBlock, [b"\x00" * HEADER_SIZE, 0, [], []], "cmpctblock"),  # the old four fields
    (SendCmpct, [2, 1], "sendcmpct.high_bandwidth"),
    (SendCmpct, [-1, 1], "sendcmpct.high_bandwidth"),
    (SendCmpct, [False, 1], "sendcmpct.high_bandwidth"),
    (SendCmpct, [1, 2**32], "sendcmpct.version"),
    (SendCmpct, [1, "1"], "sendcmpct.version"),
    (SendCmpct, [1], "sendcmpct"),
    (SendCmpct, [1, 1, 1], "sendcmpct"),
    (GetBlockTxn, [H, [1, 3, 2]], "getblocktxn.indexes"),
    (GetBlockTxn, [H, [1, 1]], "getblocktxn.indexes"),
    (GetBlockTxn, [H, [-1]], "getblocktxn.indexes[0]"),
    (BlockTxn, [H, [b"", 5]], "blocktxn.txs[1]"),
    (DoubleSpendAlert, [b"", None], "dsalert.tx_b"),
    (Goodbye, ["x" * 201], "goodbye.reason"),
    (Goodbye, [7], "goodbye.reason"),
]


@pytest.mark.parametrize(("cls", "fields", "where"), BAD_FIELDS)
def test_bad_field(cls: type[Message], fields: Any, where: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode(envelope(cls.TYPE, fields))
    assert info.value.reason == "bad-field"
    assert info.value.detail.startswith(where), info.value.detail


def test_payload_not_an_array() -> None:
    with pytest.raises(ProtocolError) as info:
        decode(envelope(Goodbye.TYPE, b"bye"))
    assert info.value.reason == "bad-field"
    assert "goodbye" in info.value.detail


def test_local_construction_is_checked_too() -> None:
    with pytest.raises(ProtocolError, match=r"ping\.height"):
        Ping(0, U32_MAX + 1, H, H)
    with pytest.raises(ProtocolError, match=r"goodbye\.reason"):
        Goodbye("\ud800")  # a lone surrogate cannot be sent as UTF-8
    with pytest.raises(ProtocolError, match=r"getblocktxn\.indexes"):
        GetBlockTxn(H, [5, 4])


def test_unknown_reason_code_is_a_bug() -> None:
    with pytest.raises(ValueError):
        ProtocolError("made-up")


# --- short ids ------------------------------------------------------------------


def test_short_tx_id() -> None:
    txid = bytes(range(32))
    sid = short_tx_id(7, txid)
    assert len(sid) == 6
    assert sid == short_tx_id(7, txid)
    assert sid != short_tx_id(8, txid)
    assert sid == hashlib.sha256((7).to_bytes(8, "big") + txid).digest()[:6]


# --- fuzzing ----------------------------------------------------------------------------------


def decodes_or_protocol_error(data: bytes, max_size: int = MAX_MESSAGE_SIZE) -> None:
    try:
        msg = decode(data, max_size)
    except ProtocolError as exc:
        assert exc.reason in REASONS
    else:
        # Anything accepted must be the one canonical encoding of what it decoded to.
        assert encode_message(MAGIC, msg) == data


@FUZZ
@given(st.binary(max_size=500))
def test_fuzz_random_bytes(data: bytes) -> None:
    decodes_or_protocol_error(data, max_size=400)


@FUZZ
@given(msg=any_message, data=st.data())
def test_fuzz_mutated_messages(msg: Message, data: st.DataObject) -> None:
    encoded = bytearray(encode_message(MAGIC, msg))
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(encoded) - 1))
        encoded[pos] = data.draw(st.integers(0, 255))
    decodes_or_protocol_error(bytes(encoded))


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), U64_MAX)
    | st.floats(allow_nan=False)
    | st.text(max_size=10)
    | st.binary(max_size=90),
    lambda children: st.lists(children, max_size=5),
    max_leaves=20,
)


@FUZZ
@given(
    type_num=st.sampled_from(sorted(MESSAGE_TYPES)), fields=st.lists(msgpack_values, max_size=11)
)
def test_fuzz_payload_fields(type_num: int, fields: list[Any]) -> None:
    # Random field values behind a valid envelope reach from_payload: only ProtocolError may leave.
    decodes_or_protocol_error(envelope(type_num, fields))



