"""A hostile review of the transaction format (sequence numbers, m-of-n multisig inputs) and its
consensus checks: multisig spends through the mempool and the chain state, the signature cache,
slot and type confusion, and that nothing but DecodeError / ConsensusError escapes decoding and
the context-free checks."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import msgpack
import pytest

from consensus.block import tx_space_in_block
from consensus.blockbuild import assemble_block, solve_block
from consensus.errors import ConsensusError, DecodeError
from consensus.keys import PrivateKey, pubkey_hash
from consensus.mempool import NON_FINAL
from consensus.multisig import MAX_MULTISIG_KEYS, MultisigScript
from consensus.tx import (
    SEQUENCE_FINAL,
    OutPoint,
    Transaction,
    TxIn,
    TxOut,
    decode_transaction,
    sign_transaction,
)
from consensus.validation import check_transaction
from node.miner.miner import COINBASE_RESERVE
from tests.test_locktime import locked
from tests.test_mempool import KEY, PARAMS, PKH, REWARD, Env, out, spend

KEYS = [PrivateKey(bytes([n]) * 32) for n in range(1, MAX_MULTISIG_KEYS + 2)]
FEE = 2_000
MAX = PARAMS.max_block_size


def script_of(m: int, n: int) -> MultisigScript:
    return MultisigScript.build(m, [k.public_key for k in KEYS[:n]])


def fund(env: Env, script: MultisigScript, height: int = 1) -> OutPoint:
    """A confirmed coin worth REWARD - FEE locked to `script`."""
    unsigned = Transaction(
        [TxIn(*env.coinbase(height), b"", b"")], [TxOut(REWARD - FEE, script.script_hash)]
    )
    tx = sign_transaction(unsigned, [KEY], PARAMS.genesis_hash)
    env.accept(tx)
    env.mine_and_update([tx])
    return OutPoint(tx.txid, 0)


def multisig_spend(
    coin: OutPoint,
    script: MultisigScript,
    signers: Sequence[int],
    *,
    value: int = REWARD - FEE,
    slot_keys: dict[int, PrivateKey] | None = None,
) -> Transaction:
    """Spend `coin` with the keys at `signers` (indexes into the script) filling their slots;
    `slot_keys` overrides which key signs a given slot."""
    blank = TxIn(coin.txid, coin.index, b"", b"", SEQUENCE_FINAL, script, (b"",) * script.size)
    unsigned = Transaction([blank], [TxOut(value - FEE, PKH)])
    digest = unsigned.sighash(PARAMS.genesis_hash)
    by_key = {k.public_key: k for k in [KEY, *KEYS]}
    slots = [b""] * script.size
    for i in signers:
        signer = (slot_keys or {}).get(i) or by_key[script.pubkeys[i]]
        slots[i] = signer.sign(digest)
    return unsigned.with_inputs([unsigned.inputs[0]._replace(signature_slots=tuple(slots))])


def reason_of(env: Env, tx: Transaction) -> str:
    with pytest.raises(ConsensusError) as info:
        env.accept(tx)
    return info.value.reason


def block_reason(env: Env, tx: Transaction) -> str | None:
    return env.chain.accept_block(env.make_block([tx]), env.now).reason


# ------------------------------------------------------------------ multisig spends, end to end


@pytest.mark.parametrize(("m", "n"), [(1, 1), (2, 3), (3, 3), (16, 16)])
def test_m_of_n_spend_is_accepted_and_mined(m: int, n: int) -> None:
    env = Env()
    script = script_of(m, n)
    coin = fund(env, script)
    tx = multisig_spend(coin, script, range(n - m, n))
    assert decode_transaction(tx.encode(), MAX) == tx
    env.accept(tx)
    update = env.mine_and_update([tx])
    assert update.included == [tx.txid] and env.chain.tx_block(tx.txid) is not None


def test_multisig_spend_with_a_bad_signature_is_refused_by_pool_and_chain() -> None:
    env = Env()
    script = script_of(2, 3)
    coin = fund(env, script)
    good = multisig_spend(coin, script, [0, 2])
    # Slot 2 signed by key 1: a real signature, from a key of the script, in the wrong slot.
    wrong_slot = multisig_spend(coin, script, [0, 2], slot_keys={2: KEYS[1]})
    # Slot 1 signed by a key outside the script.
    outsider = multisig_spend(coin, script, [0, 1], slot_keys={1: KEYS[10]})
    # The same signature twice: key 0's in slots 0 and 1.
    sig0 = good.inputs[0].signature_slots[0]
    twice = good.with_inputs([good.inputs[0]._replace(signature_slots=(sig0, sig0, b""))])
    for bad in (wrong_slot, outsider, twice):
        assert reason_of(env, bad) == "bad-txns-bad-signature"
        assert block_reason(env, bad) == "bad-txns-bad-signature"
    env.accept(good)


def test_signature_counts_other_than_m_are_refused() -> None:
    env = Env()
    script = script_of(2, 3)
    coin = fund(env, script)
    assert reason_of(env, multisig_spend(coin, script, [1])) == "bad-multisig-too-few-signatures"
    assert reason_of(env, multisig_spend(coin, script, [])) == "bad-multisig-too-few-signatures"
    assert (
        reason_of(env, multisig_spend(coin, script, [0, 1, 2]))
        == "bad-multisig-too-many-signatures"
    )


def test_a_script_or_key_other_than_the_coins_is_refused() -> None:
    env = Env()
    script = script_of(2, 3)
    coin = fund(env, script)
    # Another script over the same keys (1-of-3, or the keys reordered) owns another address.
    for other in (script_of(1, 3), MultisigScript.build(2, list(reversed(script.pubkeys)))):
        tx = multisig_spend(coin, other, [0, 1] if other.required == 2 else [0])
        assert reason_of(env, tx) == "bad-txns-pubkey-mismatch"
        assert block_reason(env, tx) == "bad-txns-pubkey-mismatch"
    # A one-key spend of the multisig coin, by one of its keys.
    one_key = sign_transaction(
        Transaction([TxIn(*coin, b"", b"")], [TxOut(REWARD - 2 * FEE, PKH)]),
        [KEYS[0]],
        PARAMS.genesis_hash,
    )
    assert reason_of(env, one_key) == "bad-txns-pubkey-mismatch"
    # A 1-of-1 multisig spend of a one-key coin, by its key.
    single = MultisigScript.build(1, [KEY.public_key])
    assert pubkey_hash(KEY.public_key) != single.script_hash
    tx = multisig_spend(env.coinbase(2), single, [0], value=REWARD)
    assert reason_of(env, tx) == "bad-txns-pubkey-mismatch"


def test_the_signature_cache_does_not_let_another_spend_through() -> None:
    """A spend verified into the cache, then a block holding a different spend of the same
    coin that reuses its signatures: a different txid, verified afresh."""
    env = Env()
    script = script_of(2, 3)
    coin = fund(env, script)
    good = multisig_spend(coin, script, [0, 1])
    env.accept(good)
    assert good.txid in env.chain.signature_cache
    other_outputs = Transaction(good.inputs, [TxOut(REWARD - 3 * FEE, PKH)])
    assert block_reason(env, other_outputs) == "bad-txns-bad-signature"
    env.mine_and_update([good])
    assert env.chain.tx_block(good.txid) is not None


# ------------------------------------------------------------------ encodings and confusion


def _input_fields(tx: Transaction) -> list[Any]:
    return list(msgpack.unpackb(tx.encode(), raw=False)[1][0])


def _with_input(tx: Transaction, fields: list[Any]) -> bytes:
    obj = msgpack.unpackb(tx.encode(), raw=False)
    obj[1][0] = fields
    return msgpack.packb(obj, use_bin_type=True)


def test_malformed_multisig_inputs_do_not_decode() -> None:
    script = script_of(2, 3)
    tx = multisig_spend(OutPoint(bytes([9]) * 32, 0), script, [0, 1])
    txid, index, raw_script, slots = _input_fields(tx)
    keys = [k.public_key for k in KEYS]
    bad_scripts = [
        b"",
        bytes([0, 0]),  # n = 0
        bytes([0, 1]) + keys[0],  # m = 0
        bytes([3, 2]) + keys[0] + keys[1],  # m > n
        bytes([1, 2]) + keys[0] + keys[0],  # duplicate keys
        bytes([1, 17]) + b"".join(keys[:17]),  # 17 keys
        bytes([1, 2]) + keys[0],  # declares more keys than it carries
        bytes([1, 1]) + keys[0] + keys[1],  # carries more keys than it declares
        keys[0],  # a one-key input's public key
    ]
    for bad in bad_scripts:
        with pytest.raises(DecodeError):
            decode_transaction(_with_input(tx, [txid, index, bad, slots[:1]]), MAX)
    for bad_slots in ([], slots[:2], [*slots, b""], [b"x" * 63, b"", b""], [[b""], b"", b""]):
        with pytest.raises(DecodeError):
            decode_transaction(_with_input(tx, [txid, index, raw_script, bad_slots]), MAX)
    # One-key fields with a multisig proof and the reverse.
    for fields in (
        [txid, index, keys[0], slots],
        [txid, index, raw_script, slots[0]],
        [txid, index, [keys[0]], slots[0]],
    ):
        with pytest.raises(DecodeError):
            decode_transaction(_with_input(tx, fields), MAX)


def test_multisig_input_as_coinbase_does_not_decode() -> None:
    script = script_of(1, 1)
    tx = multisig_spend(OutPoint(bytes(32), 0xFFFFFFFF), script, [0])
    with pytest.raises(DecodeError):
        decode_transaction(tx.encode(), MAX)


def _mutate(rng: random.Random, obj: Any) -> Any:
    if type(obj) is list and obj and rng.random() < 0.75:
        obj = list(obj)
        i = rng.randrange(len(obj))
        obj[i] = _mutate(rng, obj[i])
        if rng.random() < 0.1:
            obj.append(obj[i])
        elif rng.random() < 0.1:
            obj.pop(rng.randrange(len(obj)))
        return obj
    return rng.choice(
        [
            b"",
            0,
            -1,
            2**32,
            2**64 - 1,
            None,
            True,
            1.5,
            "s",
            [],
            [b""],
            bytes(32),
            bytes(64),
            bytes([1, 1]) + bytes(32),
            bytes([1, 2]) + bytes(64),
            [bytes(64)] * 16,
        ]
    )


def test_mutated_multisig_transactions_raise_only_decode_or_consensus_errors() -> None:
    """Nothing else may escape: a peer loop catches exactly these two."""
    rng = random.Random(16)
    seen_valid = 0
    for _ in range(3_000):
        n = rng.randint(1, MAX_MULTISIG_KEYS)
        script = script_of(rng.randint(1, n), n)
        tx = multisig_spend(OutPoint(bytes([7]) * 32, 0), script, range(script.required))
        tx = Transaction(
            [*tx.inputs, TxIn(bytes([8]) * 32, 1, KEYS[0].public_key, bytes(64), 5)],
            tx.outputs,
            locktime=rng.choice([0, 7]),
        )
        if rng.random() < 0.5:
            data = msgpack.packb(
                _mutate(rng, msgpack.unpackb(tx.encode(), raw=False)), use_bin_type=True
            )
        else:
            mangled = bytearray(tx.encode())
            for _ in range(rng.randint(1, 3)):
                mangled[rng.randrange(len(mangled))] = rng.randrange(256)
            data = bytes(mangled)
        try:
            decoded = decode_transaction(data, MAX)
        except DecodeError:
            continue
        assert decoded.encode() == data
        decoded.to_json()
        decoded.sighash(PARAMS.genesis_hash)
        try:
            check_transaction(decoded, PARAMS)
        except ConsensusError:
            continue
        seen_valid += 1
    assert seen_valid > 0  # the mutations are not all caught by decoding


# ------------------------------------------------------------------ time locks across a reorg


def test_reorg_to_a_longer_branch_with_an_earlier_clock_removes_time_locked_entries() -> None:
    """A longer branch whose median time past lags the old tip's: a time lock final on the old
    tip is not final on the new one, though the chain grew."""
    env = Env(blocks=12)
    fork = env.block_at(env.chain.height - 2)
    old_mtp = env.chain.median_time_past(env.chain.tip)
    by_time = locked([env.coinbase(1)], old_mtp - 1)
    env.accept(by_time)
    prev, result = fork, None
    for _ in range(3):
        block = env.make_block(prev=prev, timestamp=env.chain.median_time_past(prev) + 1)
        result = env.chain.accept_block(block, env.now)
        prev = env.chain.get(block.hash)
    assert result is not None and result.disconnected and env.chain.tip is prev
    new_height, new_mtp = env.chain.lock_time_clock()
    assert new_mtp <= by_time.locktime
    update = env.pool.update_for_chain(result, env.chain, env.now)
    assert update.removed == [by_time.txid]
    assert update.removed_reasons[by_time.txid] == NON_FINAL
    assert by_time.txid not in env.pool
    # And a template on the new tip cannot pick it up.
    taken, _ = env.pool.select_for_block(PARAMS.max_block_size, (new_height, new_mtp))
    assert by_time.txid not in {t.txid for t in taken}


# ------------------------------------------------------------------ block templates


def test_a_template_full_of_small_transactions_fits_in_a_block() -> None:
    """The miner's template counts each transaction's framing in the block's encoding (a bin
    header of 2 to 5 bytes): with ~200-byte transactions that is 1 % of the block, far more than
    the coinbase reserve, and the block the miner solved was refused (`bad-blk-length`)."""
    params = PARAMS.with_overrides({"max_block_size": 100_000})
    env = Env(params, blocks=4)
    n = 700
    each = (REWARD - 100_000) // n
    fan = spend([env.coinbase(1)], [each] * n, params=params)
    env.accept(fan)
    env.mine_and_update([fan])
    for i in range(n):
        env.accept(spend([out(fan, i)], [each - 1_000], params=params))
    assert env.pool.bytes > params.max_block_size
    txs, fees = env.pool.select_for_block(
        params.max_block_size - COINBASE_RESERVE, env.chain.lock_time_clock()
    )
    block = solve_block(assemble_block(env.chain, txs, fees, PKH, env.time + 20))
    assert block is not None
    assert block.size <= params.max_block_size
    result = env.chain.accept_block(block, env.now + 20)
    assert result.status == "connected", result.reason
    # And the budget is used: no further transaction would have fitted.
    left = [e for t in env.pool.txids() if (e := env.pool.get(t)) and e.tx not in txs]
    assert left
    assert block.size + min(e.size for e in left) + 2 > params.max_block_size - COINBASE_RESERVE


def test_tx_space_in_block_is_msgpacks_framing() -> None:
    for size in (0, 1, 170, 255, 256, 65_535, 65_536, 1_000_000):
        assert tx_space_in_block(size) == len(msgpack.packb(bytes(size), use_bin_type=True))
