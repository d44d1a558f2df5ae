"""Consensus primitives: compact targets, work, retargeting, merkle roots, addresses, encodings,
signatures bound to one network, and chain parameter overrides."""

from __future__ import annotations

import hashlib

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consensus.block import HEADER_SIZE, Block, BlockHeader, decode_block, decode_header
from consensus.coins import Coin
from consensus.errors import ConsensusError, DecodeError
from consensus.hashing import ZERO_HASH, merkle_root
from consensus.keys import (
    AddressError,
    decode_address,
    encode_address,
    is_weak_public_key,
    pubkey_hash,
    verify_signature,
)
from consensus.multisig import MAX_MULTISIG_KEYS, MultisigScript
from consensus.params import (
    ADDRESS_PREFIXES,
    REGTEST,
    TESTNET,
    ParamsError,
    network_params,
)
from consensus.pow import (
    bits_to_target,
    retarget,
    target_to_bits,
    work_from_target,
)
from consensus.tx import (
    COINBASE_INDEX,
    SEQUENCE_FINAL,
    U32_MAX,
    Transaction,
    TxIn,
    TxOut,
    decode_transaction,
    make_coinbase,
    sign_transaction,
)
from consensus.validation import check_block, check_block_merkle, check_tx_signatures
from tests.helpers import key, pkh

DETERMINISTIC = settings(
    derandomize=True,
    deadline=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# ------------------------------------------------------------------ compact bits and targets

# Bitcoin Core's arith_uint256 SetCompact/GetCompact vectors (those where Core's result is not
# negative) plus mainnet's famous difficulty-1 and block-32256 targets.
COMPACT_VECTORS = [
    # (bits, target, the canonical bits of that target)
    (0x1D00FFFF, 0xFFFF << 208, 0x1D00FFFF),
    (0x1B0404CB, 0x0404CB << 192, 0x1B0404CB),
    (0x01123456, 0x12, 0x01120000),  # low exponents drop mantissa bytes
    (0x02123456, 0x1234, 0x02123400),
    (0x03123456, 0x123456, 0x03123456),
    (0x04123456, 0x12345600, 0x04123456),
    (0x05009234, 0x92340000, 0x05009234),
    (0x20123456, 0x123456 << 232, 0x20123456),
    (0x22000001, 1 << 248, 0x20010000),
    (0x2100FFFF, 0xFFFF << 240, 0x2100FFFF),
    (0x207FFFFF, 0x7FFFFF << 232, 0x207FFFFF),
]
ZERO_VECTORS = [0x00000000, 0x00123456, 0x01003456, 0x02000056, 0x03000000, 0x04000000]
# Core: the first two decode as negative; the others overflow 256 bits.
NEGATIVE_BITS = [0x04923456, 0x01FEDCBA, 0x1D80FFFF]
OVERFLOW_BITS = [0xFF123456, 0x23000001, 0x21010000]


@pytest.mark.parametrize(("bits", "target", "canonical"), COMPACT_VECTORS)
def test_compact_known_vectors(bits: int, target: int, canonical: int) -> None:
    assert bits_to_target(bits) == target
    assert target_to_bits(target) == canonical
    assert bits_to_target(canonical) == target


@pytest.mark.parametrize("bits", ZERO_VECTORS)
def test_compact_zero_targets(bits: int) -> None:
    assert bits_to_target(bits) == 0


@pytest.mark.parametrize(
    ("target", "bits"),
    [(0, 0), (0x80, 0x02008000), (0x12, 0x01120000), (0x1234, 0x02123400)],
)
def test_target_to_bits_sign_bit_and_small_targets(target: int, bits: int) -> None:
    # A mantissa with its top bit set would read back as negative: the exponent grows instead.
    assert target_to_bits(target) == bits


@pytest.mark.parametrize("bits", NEGATIVE_BITS + OVERFLOW_BITS)
def test_negative_and_overflowing_bits_rejected(bits: int) -> None:
    with pytest.raises(ConsensusError) as info:
        bits_to_target(bits)
    assert info.value.reason == "bad-diffbits"


@DETERMINISTIC
@given(st.integers(min_value=1, max_value=(1 << 256) - 1))
def test_target_round_trip_rounds_down_to_24_bits(target: int) -> None:
    bits = target_to_bits(target)
    back = bits_to_target(bits)
    assert back <= target
    # At least 16 significant bits survive (the mantissa is >= 0x008000).
    assert target - back < max(1, target >> 15)
    # Compact form is canonical: encoding what was decoded gives the same bits.
    assert target_to_bits(back) == bits
    assert not bits & 0x00800000


@DETERMINISTIC
@given(st.integers(min_value=0, max_value=0xFFFFFFFF))
def test_bits_round_trip_or_rejected(bits: int) -> None:
    try:
        target = bits_to_target(bits)
    except ConsensusError as exc:
        assert exc.reason == "bad-diffbits"
        return
    assert 0 <= target < 1 << 256
    if target:
        assert bits_to_target(target_to_bits(target)) == target


@pytest.mark.parametrize(
    "target", [0, 1, 0xFFFF << 208, bits_to_target(0x207FFFFF), (1 << 256) - 1, 12345]
)
def test_work_is_two_pow_256_over_target_plus_one(target: int) -> None:
    assert work_from_target(target) == 2**256 // (target + 1)


def test_work_grows_as_target_shrinks() -> None:
    easy, hard = bits_to_target(0x207FFFFF), bits_to_target(0x1D00FFFF)
    assert work_from_target(hard) > work_from_target(easy)
    assert work_from_target((1 << 256) - 1) == 1
    assert work_from_target(bits_to_target(0x207FFFFF)) == 2


# ------------------------------------------------------------------ retargeting

T = 1 << 200  # exactly representable in compact form, as are its 4x multiples and fractions
SPAN = 1000
LIMIT = 1 << 240


@pytest.mark.parametrize(
    ("actual", "expected"),
    [
        (SPAN, T),  # on schedule: unchanged
        (SPAN // 2, T // 2),  # twice as fast: twice as hard
        (SPAN * 2, T * 2),  # twice as slow: half as hard
        (SPAN // 4, T // 4),  # exactly at the clamp
        (SPAN * 4, T * 4),
        (SPAN // 100, T // 4),  # much faster: clamped at 4x harder
        (1, T // 4),
        (0, T // 4),
        (-SPAN, T // 4),  # timestamps may go backwards; still clamped
        (SPAN * 100, T * 4),  # much slower: clamped at 4x easier
    ],
)
def test_retarget_scales_and_clamps_four_times(actual: int, expected: int) -> None:
    assert retarget(T, actual, SPAN, 4, LIMIT) == expected


def test_retarget_is_capped_at_the_pow_limit() -> None:
    assert retarget(LIMIT, SPAN * 4, SPAN, 4, LIMIT) == LIMIT
    assert retarget(LIMIT // 2, SPAN * 4, SPAN, 4, LIMIT) == LIMIT
    assert retarget(LIMIT // 8, SPAN * 4, SPAN, 4, LIMIT) == LIMIT // 2


@pytest.mark.parametrize("limit_bits", [0x207FFFFF, 0x2100FFFF, 0x1F00FFFF])
def test_retarget_capped_even_when_four_times_the_limit_overflows(limit_bits: int) -> None:
    limit = bits_to_target(limit_bits)
    for last in (limit, limit // 2, limit // 3):
        assert retarget(last, SPAN * 100, SPAN, 4, limit) == limit
    fast = retarget(limit, SPAN // 100, SPAN, 4, limit)
    assert fast == bits_to_target(target_to_bits(limit // 4))


def test_retarget_rounds_to_compact_precision() -> None:
    last = bits_to_target(0x1D00FFFF)
    new = retarget(last, 1234, SPAN, 4, 1 << 255)
    assert new == bits_to_target(target_to_bits(last * 1234 // SPAN))
    assert bits_to_target(target_to_bits(new)) == new


# ------------------------------------------------------------------ merkle root

LEAVES = [hashlib.sha256(bytes([i])).digest() for i in range(8)]


def test_merkle_root_of_nothing_and_of_one() -> None:
    assert merkle_root([]) == ZERO_HASH
    assert merkle_root(LEAVES[:1]) != LEAVES[0]
    assert merkle_root(LEAVES[:1]) != merkle_root(LEAVES[1:2])


def test_merkle_root_order_matters() -> None:
    swapped = [LEAVES[1], LEAVES[0], *LEAVES[2:5]]
    assert merkle_root(LEAVES[:5]) != merkle_root(swapped)
    last_swapped = [*LEAVES[:3], LEAVES[4], LEAVES[3]]
    assert merkle_root(LEAVES[:5]) != merkle_root(last_swapped)


@pytest.mark.parametrize(("n", "repeat"), [(1, 1), (3, 1), (5, 1), (6, 2), (7, 1), (7, 3), (2, 1)])
def test_merkle_repeating_trailing_leaves_changes_root(n: int, repeat: int) -> None:
    """CVE-2012-2459: in Bitcoin [1..6] and [1..6, 5, 6] share a root; here they must not."""
    leaves = LEAVES[:n]
    mutated = leaves + leaves[-repeat:]
    assert merkle_root(mutated) != merkle_root(leaves)


@DETERMINISTIC
@given(st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=12), st.data())
def test_merkle_any_trailing_repeat_changes_root(leaves: list[bytes], data: st.DataObject) -> None:
    repeat = data.draw(st.integers(min_value=1, max_value=len(leaves)))
    assert merkle_root(leaves + leaves[-repeat:]) != merkle_root(leaves)


def test_merkle_leaf_is_not_an_inner_node() -> None:
    # Domain separation: a "transaction id" equal to an inner node's hash gives another root.
    a, b = LEAVES[0], LEAVES[1]
    inner = hashlib.sha256(
        b"\x01" + hashlib.sha256(b"\x00" + a).digest() + hashlib.sha256(b"\x00" + b).digest()
    ).digest()
    assert merkle_root([inner]) != merkle_root([a, b])


# ------------------------------------------------------------------ addresses

BASE32 = "abcdefghijklmnopqrstuvwxyz234567"


def test_address_round_trip() -> None:
    for n in range(4):
        address = key(n).address(REGTEST.address_prefix)
        assert address.startswith("rpow1")
        assert address == address.lower()
        assert decode_address(address, "rpow") == pkh(n)
        assert encode_address("rpow", pkh(n)) == address


def test_address_checksum_catches_every_single_character_typo() -> None:
    address = encode_address("rpow", pkh(0))
    body_start = len("rpow1")
    tried = 0
    for pos in range(body_start, len(address)):
        for char in BASE32:
            if char == address[pos]:
                continue
            typo = address[:pos] + char + address[pos + 1 :]
            with pytest.raises(AddressError):
                decode_address(typo, "rpow")
            tried += 1
    assert tried == (len(address) - body_start) * 31


def test_address_of_other_network_names_it() -> None:
    address = encode_address("tpow", pkh(0))
    with pytest.raises(AddressError, match="testnet"):
        decode_address(address, "rpow", ADDRESS_PREFIXES)
    with pytest.raises(AddressError, match="regtest"):
        decode_address(encode_address("rpow", pkh(0)), "tpow", ADDRESS_PREFIXES)
    with pytest.raises(AddressError, match="unknown prefix"):
        decode_address(encode_address("zzz", pkh(0)), "rpow", ADDRESS_PREFIXES)


def test_address_checksum_covers_the_prefix() -> None:
    # Same payload, other prefix spliced on: the checksum no longer matches.
    body = encode_address("tpow", pkh(0)).split("1", 1)[1]
    with pytest.raises(AddressError, match="checksum"):
        decode_address("rpow1" + body, "rpow")


@pytest.mark.parametrize(
    "mangle",
    [
        lambda a: a.upper(),
        lambda a: a[:5] + a[5:].upper(),
        lambda a: a[:-1] + a[-1].upper(),
        lambda a: a[:-1],
        lambda a: a[:-8],
        lambda a: a + "a",
        lambda a: a + "aaaaaaaa",
        lambda a: a[:5],
        lambda a: a.replace("rpow1", ""),
        lambda a: a[:10] + "1" + a[11:],  # not base32
        lambda a: a + "=",
        lambda a: "rpow" + a[5:],  # no separator
    ],
)
def test_address_bad_case_or_length_rejected(mangle: object) -> None:
    address = encode_address("rpow", pkh(0))
    assert callable(mangle)
    with pytest.raises(AddressError):
        decode_address(mangle(address), "rpow")


def test_address_must_be_a_string() -> None:
    with pytest.raises(AddressError):
        decode_address(b"rpow1abc", "rpow")  # type: ignore[arg-type]


# ------------------------------------------------------------------ encodings

hashes = st.binary(min_size=32, max_size=32)
u32 = st.integers(min_value=0, max_value=U32_MAX)
single_key_inputs = st.builds(
    TxIn,
    hashes.filter(lambda h: h != ZERO_HASH),
    u32,
    st.sampled_from([b"", bytes(range(32))]),
    st.one_of(st.just(b""), st.binary(min_size=64, max_size=64)),
    u32,
    st.none(),
    st.just(()),
)


@st.composite
def multisig_inputs(draw: st.DrawFn) -> TxIn:
    n = draw(st.integers(min_value=1, max_value=MAX_MULTISIG_KEYS))
    keys = draw(st.lists(hashes, min_size=n, max_size=n, unique=True))
    script = MultisigScript.build(draw(st.integers(min_value=1, max_value=n)), keys)
    slot = st.one_of(st.just(b""), st.binary(min_size=64, max_size=64))
    slots = tuple(draw(st.lists(slot, min_size=n, max_size=n)))
    txid = draw(hashes.filter(lambda h: h != ZERO_HASH))
    return TxIn(txid, draw(u32), b"", b"", draw(u32), script, slots)


tx_inputs = st.one_of(single_key_inputs, multisig_inputs())
tx_outputs = st.builds(
    TxOut, st.integers(min_value=0, max_value=(1 << 64) - 1), st.binary(min_size=20, max_size=20)
)
transactions = st.builds(
    Transaction,
    st.lists(tx_inputs, max_size=4),
    st.lists(tx_outputs, max_size=4),
    u32,
    u32,
)
coinbases = st.builds(
    lambda h, outs, extra: make_coinbase(h, outs, extra),
    u32,
    st.lists(tx_outputs, max_size=3),
    st.binary(max_size=96),
)
headers = st.builds(BlockHeader, u32, hashes, hashes, u32, u32, u32)
MAX = 1_000_000


@DETERMINISTIC
@given(st.one_of(transactions, coinbases))
def test_transaction_round_trip(tx: Transaction) -> None:
    data = tx.encode()
    back = decode_transaction(data, MAX)
    assert back == tx
    assert back.txid == tx.txid
    assert back.encode() == data
    assert back.is_coinbase == tx.is_coinbase


@DETERMINISTIC
@given(headers)
def test_header_round_trip(header: BlockHeader) -> None:
    data = header.encode()
    assert len(data) == HEADER_SIZE
    assert decode_header(data) == header
    assert decode_header(data).hash == header.hash


@DETERMINISTIC
@given(headers, coinbases, st.lists(transactions, max_size=3))
def test_block_round_trip(header: BlockHeader, cb: Transaction, txs: list[Transaction]) -> None:
    block = Block(header, [cb, *txs])
    data = block.encode()
    back = decode_block(data, MAX)
    assert back.hash == block.hash
    assert back.header == header
    assert back.txs == block.txs
    assert back.encode() == data


def _signed_tx() -> Transaction:
    unsigned = Transaction(
        [TxIn(hashlib.sha256(b"prev").digest(), 3, b"", b"")],
        [TxOut(5_000, pkh(1)), TxOut(123, pkh(2))],
    )
    return sign_transaction(unsigned, [key(0)], REGTEST.genesis_hash)


def _block() -> Block:
    cb = make_coinbase(7, [TxOut(50, pkh(0))], b"x")
    txs = [cb, _signed_tx()]
    header = BlockHeader(1, hashlib.sha256(b"p").digest(), merkle_root([t.txid for t in txs]),
                         REGTEST.genesis_timestamp + 70, REGTEST.pow_limit_bits, 0)
    return Block(header, txs)


def test_truncated_input_rejected() -> None:
    for data, decode in (
        (_signed_tx().encode(), lambda d: decode_transaction(d, MAX)),
        (_block().encode(), lambda d: decode_block(d, MAX)),
        (_block().header.encode(), decode_header),
    ):
        for cut in range(len(data)):
            with pytest.raises(DecodeError):
                decode(data[:cut])


def test_trailing_bytes_rejected() -> None:
    for suffix in (b"\x00", b"\xc0", _signed_tx().encode()):
        with pytest.raises(DecodeError):
            decode_transaction(_signed_tx().encode() + suffix, MAX)
        with pytest.raises(DecodeError):
            decode_block(_block().encode() + suffix, MAX)
    with pytest.raises(DecodeError):
        decode_header(_block().header.encode() + b"\x00")


def test_oversized_input_rejected() -> None:
    data = _signed_tx().encode()
    assert decode_transaction(data, len(data)).txid == _signed_tx().txid
    with pytest.raises(DecodeError) as info:
        decode_transaction(data, len(data) - 1)
    assert info.value.reason == "oversize"
    block = _block().encode()
    with pytest.raises(DecodeError):
        decode_block(block, len(block) - 1)


def _repack(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def test_non_canonical_integer_rejected() -> None:
    """The same transaction with its version as a 5-byte uint32 instead of a fixint."""
    data = _signed_tx().encode()
    assert data[0] == 0x94 and data[1] == 0x01  # fixarray(4), version 1 as positive fixint
    wide = data[:1] + b"\xce\x00\x00\x00\x01" + data[2:]
    assert msgpack.unpackb(wide) == msgpack.unpackb(data)  # same value, other bytes
    with pytest.raises(DecodeError) as info:
        decode_transaction(wide, MAX)
    assert info.value.reason == "non-canonical"


def test_non_canonical_bin_and_wrong_types_rejected() -> None:
    tx = _signed_tx()
    data = tx.encode()
    prev = tx.inputs[0].prev_txid
    bin8 = b"\xc4\x20" + prev
    bin16 = b"\xc5\x00\x20" + prev
    assert data.count(bin8) == 1
    with pytest.raises(DecodeError):
        decode_transaction(data.replace(bin8, bin16), MAX)
    lists = msgpack.unpackb(data)
    for mutate in (
        lambda o: o[1][0].__setitem__(0, prev.hex()[:32]),  # str where bytes belong
        lambda o: o.__setitem__(0, -1),  # negative version
        lambda o: o.__setitem__(3, 1 << 32),  # locktime beyond 32 bits
        lambda o: o[2][0].__setitem__(0, -5),  # negative amount
        lambda o: o[2][0].__setitem__(1, b"short"),  # pkh of the wrong size
        lambda o: o[1][0].__setitem__(3, b"\x00" * 63),  # signature of the wrong size
        lambda o: o.append(0),  # five fields
        lambda o: o[1][0].__setitem__(1, True),  # bool is not an int here
    ):
        obj = msgpack.unpackb(data)
        mutate(obj)
        with pytest.raises(DecodeError):
            decode_transaction(_repack(obj), MAX)
    with pytest.raises(DecodeError):
        decode_transaction(_repack({"version": 1}), MAX)
    assert lists == msgpack.unpackb(data)
    block_obj = msgpack.unpackb(_block().encode())
    with pytest.raises(DecodeError):  # header as bin16
        header = block_obj[0]
        decode_block(_block().encode().replace(b"\xc4\x50" + header, b"\xc5\x00\x50" + header), MAX)
    with pytest.raises(DecodeError):  # transactions nested as lists instead of bytes
        decode_block(_repack([block_obj[0], [msgpack.unpackb(t) for t in block_obj[1]]]), MAX)
    with pytest.raises(DecodeError):
        decode_block(_repack([block_obj[0][:79], block_obj[1]]), MAX)


def test_coinbase_decoding_limits() -> None:
    ok = make_coinbase(1, [TxOut(1, pkh(0))], b"\x00" * 96)
    assert decode_transaction(ok.encode(), MAX) == ok
    too_long = Transaction([TxIn(ZERO_HASH, COINBASE_INDEX, b"", b"\x00" * 101)], ok.outputs)
    with pytest.raises(DecodeError):
        decode_transaction(too_long.encode(), MAX)
    with_key = Transaction([TxIn(ZERO_HASH, COINBASE_INDEX, bytes(32), b"\x00" * 4)], ok.outputs)
    with pytest.raises(DecodeError):
        decode_transaction(with_key.encode(), MAX)


# ------------------------------------------------------------------ malleability


def _mutated(data: st.DataObject, raw: bytes) -> bytes:
    """`raw` with the byte at a drawn position changed to a drawn other value."""
    pos = data.draw(st.integers(min_value=0, max_value=len(raw) - 1), label="position")
    value = data.draw(st.integers(min_value=0, max_value=255).filter(lambda v: v != raw[pos]))
    return raw[:pos] + bytes([value]) + raw[pos + 1 :]


@DETERMINISTIC
@given(st.data())
def test_single_byte_mutation_of_signed_transaction(data: st.DataObject) -> None:
    tx = _signed_tx()
    raw = tx.encode()
    mutated = _mutated(data, raw)
    try:
        back = decode_transaction(mutated, MAX)
    except DecodeError:
        return
    assert back.txid != tx.txid
    # And whatever still decodes no longer carries a valid signature for the same coin.
    coin = Coin(10_000, pkh(0), 1, False)
    if back.inputs and back.inputs[0].pubkey == tx.inputs[0].pubkey and len(back.inputs) == 1:
        with pytest.raises(ConsensusError):
            check_tx_signatures(back, [coin], REGTEST.genesis_hash)


def test_every_single_byte_mutation_of_signed_transaction() -> None:
    """Exhaustive over positions, a few values each: never the same txid."""
    tx = _signed_tx()
    raw = tx.encode()
    for pos in range(len(raw)):
        for value in {0x00, 0xFF, raw[pos] ^ 0x01, raw[pos] ^ 0x80}:
            if value == raw[pos]:
                continue
            mutated = raw[:pos] + bytes([value]) + raw[pos + 1 :]
            try:
                back = decode_transaction(mutated, MAX)
            except DecodeError:
                continue
            assert back.txid != tx.txid


@DETERMINISTIC
@given(st.data())
def test_single_byte_mutation_of_block(data: st.DataObject) -> None:
    block = _block()
    raw = block.encode()
    mutated = _mutated(data, raw)
    try:
        back = decode_block(mutated, MAX)
    except DecodeError:
        return
    if back.hash != block.hash:
        return  # another block altogether (another header)
    # Same header, so the transactions changed: the merkle commitment gives it away.
    with pytest.raises(ConsensusError):
        check_block_merkle(back)
        check_block(back, REGTEST)


# ------------------------------------------------------------------ signatures bound to a network


def test_signature_replay_on_another_network_fails() -> None:
    tx = _signed_tx()
    coin = Coin(10_000, pkh(0), 1, False)
    check_tx_signatures(tx, [coin], REGTEST.genesis_hash)
    other_networks = [
        TESTNET.genesis_hash,
        REGTEST.with_overrides({"coinbase_maturity": 5}).genesis_hash,
    ]
    for genesis in other_networks:
        with pytest.raises(ConsensusError) as info:
            check_tx_signatures(tx, [coin], genesis)
        assert info.value.reason == "bad-txns-bad-signature"


def test_sighash_commits_to_everything_but_signatures() -> None:
    tx = _signed_tx()
    g = REGTEST.genesis_hash
    moved = Transaction(tx.inputs, [TxOut(5_001, pkh(1)), tx.outputs[1]])
    assert moved.sighash(g) != tx.sighash(g)
    unsigned = Transaction([tx.inputs[0]._replace(signature=b"")], tx.outputs)
    assert unsigned.sighash(g) == tx.sighash(g)
    coin = Coin(10_000, pkh(0), 1, False)
    with pytest.raises(ConsensusError) as info:
        check_tx_signatures(moved, [coin], g)
    assert info.value.reason == "bad-txns-bad-signature"
    assert pubkey_hash(tx.inputs[0].pubkey) == pkh(0)


# ------------------------------------------------------------------ chain parameters


@pytest.mark.parametrize(
    "overrides",
    [
        {"no_such_param": 1},
        {"name": "mainnet"},
        {"magic": b"XXXX"},
        {"coinbase_maturity": "5"},
        {"coinbase_maturity": 5.0},
        {"coinbase_maturity": True},  # bool is not an int here
        {"no_retarget": 1},
        {"finality_depth": "6"},
        {"retarget_window": 0},
        {"finality_depth": 0},
        {"initial_reward": -1},
        {"pow_limit_bits": 0x03000000},  # a zero target
        {"pow_limit_bits": 0x04923456},  # a negative compact target
        {"pow_limit_bits": 0xFF123456},  # overflows 256 bits
    ],
)
def test_bad_params_overrides_raise_params_error(overrides: dict[str, object]) -> None:
    with pytest.raises(ParamsError):
        REGTEST.with_overrides(overrides)


def test_network_params_unknown_network() -> None:
    with pytest.raises(ParamsError):
        network_params("mainnet")
    assert network_params("testnet") is TESTNET
    assert network_params("regtest", {"coinbase-maturity": 3}).coinbase_maturity == 3


@pytest.mark.parametrize(
    "overrides",
    [
        {"coinbase_maturity": 5},
        {"target_spacing": 11},
        {"no_retarget": False},
        {"max_block_size": 999_999},
        {"pow_limit_bits": 0x1F00FFFF},
        {"address_prefix": "xpow"},
    ],
)
def test_consensus_overrides_change_genesis(overrides: dict[str, object]) -> None:
    changed = REGTEST.with_overrides(overrides)
    assert changed.genesis_hash != REGTEST.genesis_hash
    assert changed.consensus_digest() != REGTEST.consensus_digest()


def test_policy_override_keeps_genesis() -> None:
    changed = REGTEST.with_overrides({"finality_depth": 3})
    assert changed.finality_depth == 3
    assert changed.genesis_hash == REGTEST.genesis_hash
    assert REGTEST.with_overrides({}).genesis_hash == REGTEST.genesis_hash


def test_networks_differ() -> None:
    assert REGTEST.genesis_hash != TESTNET.genesis_hash
    assert REGTEST.genesis_block.txs[0].is_coinbase
    assert REGTEST.pow_limit == bits_to_target(REGTEST.pow_limit_bits)


def test_block_reward_halves() -> None:
    p = REGTEST
    assert p.block_reward(0) == p.initial_reward
    assert p.block_reward(p.halving_interval - 1) == p.initial_reward
    assert p.block_reward(p.halving_interval) == p.initial_reward // 2
    assert p.block_reward(p.halving_interval * 64) == 0


# ------------------------------------------------------------------ input sequence numbers


def _one_input_tx(sequence: int) -> Transaction:
    return Transaction([TxIn(b"\x01" * 32, 0, b"", b"", sequence)], [TxOut(1, b"\x02" * 20)])


def test_a_final_sequence_keeps_the_four_field_encoding() -> None:
    """Transactions that never set a sequence encode (and hash) exactly as before it existed."""
    tx = _one_input_tx(SEQUENCE_FINAL)
    assert msgpack.unpackb(tx.encode())[1][0] == [b"\x01" * 32, 0, b"", b""]
    assert decode_transaction(tx.encode(), MAX).inputs[0].sequence == SEQUENCE_FINAL


def test_a_sequence_is_a_fifth_field_and_is_signed() -> None:
    tx = _one_input_tx(7)
    assert msgpack.unpackb(tx.encode())[1][0][4] == 7
    assert decode_transaction(tx.encode(), MAX) == tx
    assert tx.sighash(ZERO_HASH) != _one_input_tx(8).sighash(ZERO_HASH)
    signed = sign_transaction(tx, [key(1)], ZERO_HASH)
    assert signed.inputs[0].sequence == 7 and signed.locktime == tx.locktime


def test_a_spelled_out_final_sequence_is_not_canonical() -> None:
    """A fifth field holding SEQUENCE_FINAL would give the same payment a second txid."""
    obj = msgpack.unpackb(_one_input_tx(SEQUENCE_FINAL).encode())
    obj[1][0].append(SEQUENCE_FINAL)
    with pytest.raises(DecodeError, match="non-canonical"):
        decode_transaction(msgpack.packb(obj, use_bin_type=True), MAX)


@pytest.mark.parametrize("bad", [-1, 1 << 32, "7", None, 1.5])
def test_a_bad_sequence_is_refused(bad: object) -> None:
    obj = msgpack.unpackb(_one_input_tx(7).encode())
    obj[1][0][4] = bad
    with pytest.raises(DecodeError, match="sequence"):
        decode_transaction(msgpack.packb(obj, use_bin_type=True), MAX)


def test_weak_public_keys_are_recognised() -> None:
    """Small-order points verify one signature for many messages (checked here with the
    identity: the same signature verifies two different messages)."""
    identity = b"\x01" + b"\x00" * 31
    forged = (b"\x01" + b"\x00" * 31) + b"\x00" * 32  # R = identity, S = 0
    assert verify_signature(identity, forged, b"pay me") and verify_signature(
        identity, forged, b"pay you"
    )
    assert is_weak_public_key(identity)
    assert is_weak_public_key(b"\xee" + b"\xff" * 30 + b"\x7f")  # y = p + 1: non-canonical
    assert is_weak_public_key(b"\x00" * 31 + b"\x80")  # y = 0 with the sign bit: order 4
    assert not any(is_weak_public_key(key(n).public_key) for n in range(4))
