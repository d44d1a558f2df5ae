"""m-of-n multisig consensus rules: exactly m valid signatures, each in its own key's slot; the
script must hash to the coin; malformed scripts refused at decode and at build; the sighash that
lets co-signers of different inputs sign in any order; blocks with multisig spends connect and
are undone by a reorganisation."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consensus.coins import Coin
from consensus.errors import ConsensusError, DecodeError
from consensus.keys import PUBKEY_SIZE, SIGNATURE_SIZE, PrivateKey
from consensus.multisig import (
    MAX_MULTISIG_KEYS,
    MultisigError,
    MultisigScript,
    decode_multisig_script,
)
from consensus.params import REGTEST
from consensus.tx import OutPoint, Transaction, TxIn, TxOut, decode_transaction, sign_transaction
from consensus.validation import check_transaction, check_tx_signatures
from tests.helpers import ChainBuilder, coinbase_outpoint, key, pkh, regtest

DETERMINISTIC = settings(
    derandomize=True,
    deadline=None,
    max_examples=40,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Deterministic keys: the 16 a script may hold plus outsiders.
MS_KEYS = tuple(
    PrivateKey(hashlib.sha256(b"powlab-multisig-test-%d" % i).digest()) for i in range(20)
)
OUTSIDER = MS_KEYS[19]
GENESIS = REGTEST.genesis_hash
PREV = OutPoint(hashlib.sha256(b"funding").digest(), 0)


def script_of(m: int, n: int) -> MultisigScript:
    return MultisigScript.build(m, [k.public_key for k in MS_KEYS[:n]])


def unsigned_spend(script: MultisigScript, sequence: int = 0xFFFFFFFF) -> Transaction:
    slots = (b"",) * script.size
    txin = TxIn(PREV.txid, PREV.index, b"", b"", sequence, script, slots)
    return Transaction([txin], [TxOut(900, pkh(1))])


def signed_by(
    tx: Transaction, signers: set[int], n_input: int = 0, genesis: bytes = GENESIS
) -> Transaction:
    """`tx` with input `n_input`'s slots filled by the keys at `signers` (indexes into the
    script's keys, which are MS_KEYS[:n])."""
    digest = tx.sighash(genesis)
    txin = tx.inputs[n_input]
    assert txin.multisig is not None
    slots = tuple(
        MS_KEYS[i].sign(digest) if i in signers else b"" for i in range(txin.multisig.size)
    )
    inputs = list(tx.inputs)
    inputs[n_input] = txin._replace(signature_slots=slots)
    return tx.with_inputs(inputs)


def verdict(tx: Transaction, coin: Coin) -> str | None:
    """None when `tx` passes every rule, else the failing rule's reason code."""
    try:
        wire = decode_transaction(tx.encode(), REGTEST.max_block_size)
        check_transaction(wire, REGTEST)
        check_tx_signatures(wire, [coin], GENESIS)
    except ConsensusError as exc:
        return exc.reason
    return None


def coin_for(script: MultisigScript) -> Coin:
    return Coin(1_000, script.script_hash, 1, False)


@st.composite
def scripts_and_signers(draw: st.DrawFn) -> tuple[MultisigScript, set[int]]:
    n = draw(st.integers(1, MAX_MULTISIG_KEYS))
    m = draw(st.integers(1, n))
    signers = draw(st.sets(st.integers(0, n - 1)))
    return script_of(m, n), signers


# ------------------------------------------------------------------ signatures per slot


@DETERMINISTIC
@given(scripts_and_signers())
def test_valid_iff_exactly_m_slots_signed_by_their_keys(
    case: tuple[MultisigScript, set[int]],
) -> None:
    script, signers = case
    tx = signed_by(unsigned_spend(script), signers)
    reason = verdict(tx, coin_for(script))
    if len(signers) == script.required:
        assert reason is None
    elif len(signers) < script.required:
        assert reason == "bad-multisig-too-few-signatures"
    else:
        assert reason == "bad-multisig-too-many-signatures"


@DETERMINISTIC
@given(scripts_and_signers(), st.data())
def test_a_signature_by_a_key_outside_the_set_fails(
    case: tuple[MultisigScript, set[int]], data: st.DataObject
) -> None:
    script, _ = case
    signers = set(data.draw(st.permutations(range(script.size)))[: script.required])
    tx = signed_by(unsigned_spend(script), signers)
    slot = data.draw(st.sampled_from(sorted(signers)))
    slots = list(tx.inputs[0].signature_slots)
    slots[slot] = OUTSIDER.sign(tx.sighash(GENESIS))
    forged = tx.with_inputs([tx.inputs[0]._replace(signature_slots=tuple(slots))])
    assert verdict(forged, coin_for(script)) == "bad-txns-bad-signature"


@DETERMINISTIC
@given(st.integers(2, MAX_MULTISIG_KEYS), st.data())
def test_a_signature_in_another_keys_slot_fails(n: int, data: st.DataObject) -> None:
    """Key order is enforced by the slots: moving a valid signature to another slot breaks it."""
    m = data.draw(st.integers(1, n - 1))
    script = script_of(m, n)
    signers = set(range(m))
    tx = signed_by(unsigned_spend(script), signers)
    src = data.draw(st.sampled_from(sorted(signers)))
    dst = data.draw(st.sampled_from([i for i in range(n) if i not in signers]))
    slots = list(tx.inputs[0].signature_slots)
    slots[dst], slots[src] = slots[src], b""
    moved = tx.with_inputs([tx.inputs[0]._replace(signature_slots=tuple(slots))])
    assert verdict(moved, coin_for(script)) == "bad-txns-bad-signature"


@DETERMINISTIC
@given(scripts_and_signers())
def test_a_script_that_does_not_hash_to_the_coin_is_refused(
    case: tuple[MultisigScript, set[int]],
) -> None:
    script, _ = case
    signers = set(range(script.required))
    tx = signed_by(unsigned_spend(script), signers)
    # The coin is locked to another script over the same keys (other m), or to one key.
    other_m = script.required % script.size + 1
    for lock in (
        MultisigScript(other_m, script.pubkeys).script_hash if other_m != script.required else None,
        pkh(0),
    ):
        if lock is not None:
            assert verdict(tx, Coin(1_000, lock, 1, False)) == "bad-txns-pubkey-mismatch"


def test_a_one_key_coin_cannot_be_spent_by_a_script_of_just_that_key() -> None:
    """Key hashes and script hashes are domain-separated: a 1-of-1 over key 0 is another lock."""
    script = MultisigScript.build(1, [key(0).public_key])
    assert script.script_hash != pkh(0)
    digest = unsigned_spend(script).sighash(GENESIS)
    tx = unsigned_spend(script)
    tx = tx.with_inputs([tx.inputs[0]._replace(signature_slots=(key(0).sign(digest),))])
    assert verdict(tx, Coin(1_000, pkh(0), 1, False)) == "bad-txns-pubkey-mismatch"
    assert verdict(tx, Coin(1_000, script.script_hash, 1, False)) is None


# ------------------------------------------------------------------ malformed scripts


KEYS_32 = [k.public_key for k in MS_KEYS]


@pytest.mark.parametrize(
    ("m", "keys", "message"),
    [
        (3, KEYS_32[:2], "between 1 and"),  # m > n
        (0, KEYS_32[:2], "between 1 and"),  # m < 1
        (2, [KEYS_32[0], KEYS_32[1], KEYS_32[0]], "duplicate"),
        (1, KEYS_32[:17], "1 to 16 keys"),  # n > 16
        (1, [], "1 to 16 keys"),
        (1, [KEYS_32[0][:31]], "32 bytes"),  # a key of the wrong length
        (1, [KEYS_32[0] + b"\x00"], "32 bytes"),
    ],
)
def test_bad_scripts_are_refused_by_build_and_by_decode(
    m: int, keys: list[bytes], message: str
) -> None:
    with pytest.raises(MultisigError, match=message):
        MultisigScript.build(m, keys)
    raw = bytes((m, len(keys))) + b"".join(keys)
    with pytest.raises(DecodeError):
        decode_multisig_script(raw)


@pytest.mark.parametrize("declared", [1, 2, 4, 17, 255])
def test_a_wrong_key_count_is_refused_at_decode(declared: int) -> None:
    raw = bytes((1, declared)) + b"".join(KEYS_32[:3])
    with pytest.raises(DecodeError, match="declares"):
        decode_multisig_script(raw)


def test_bad_slot_counts_and_sizes_are_refused() -> None:
    script = script_of(2, 3)
    tx = signed_by(unsigned_spend(script), {0, 1})
    txin = tx.inputs[0]
    # One slot fewer than keys: refused when decoded, and when built as objects.
    short = tx.with_inputs([txin._replace(signature_slots=txin.signature_slots[:2])])
    with pytest.raises(DecodeError, match="one signature slot per key"):
        decode_transaction(short.encode(), REGTEST.max_block_size)
    with pytest.raises(ConsensusError) as info:
        check_transaction(short, REGTEST)
    assert info.value.reason == "bad-multisig-slots"
    truncated = (txin.signature_slots[0][: SIGNATURE_SIZE - 1], *txin.signature_slots[1:])
    bad_size = tx.with_inputs([txin._replace(signature_slots=truncated)])
    with pytest.raises(DecodeError):
        decode_transaction(bad_size.encode(), REGTEST.max_block_size)
    with pytest.raises(ConsensusError) as info:
        check_transaction(bad_size, REGTEST)
    assert info.value.reason == "bad-multisig-slots"
    # A built (not decoded) script that breaks the rules is refused by the consensus check.
    dup = MultisigScript(1, (KEYS_32[0], KEYS_32[0]))
    bad = Transaction([TxIn(PREV.txid, 0, b"", b"", 0xFFFFFFFF, dup, (b"", b""))], tx.outputs)
    with pytest.raises(ConsensusError) as info:
        check_transaction(bad, REGTEST)
    assert info.value.reason == "bad-multisig-script"
    assert len(KEYS_32[0]) == PUBKEY_SIZE


# ------------------------------------------------------------------ the sighash


def test_sighash_ignores_every_inputs_unlocking_data_and_covers_the_rest() -> None:
    script = script_of(2, 3)
    one_key = TxIn(hashlib.sha256(b"other").digest(), 1, b"", b"")
    multi = TxIn(PREV.txid, PREV.index, b"", b"", 0xFFFFFFFF, script, (b"",) * 3)
    tx = Transaction([one_key, multi], [TxOut(900, pkh(1))], locktime=7)
    base = tx.sighash(GENESIS)
    filled = tx.with_inputs(
        [one_key._replace(pubkey=key(0).public_key, signature=b"\x01" * 64), multi]
    )
    assert filled.sighash(GENESIS) == base
    unscripted = tx.with_inputs([one_key, multi._replace(multisig=None, signature_slots=())])
    assert unscripted.sighash(GENESIS) == base
    changed = [
        Transaction([one_key._replace(prev_index=2), multi], tx.outputs, locktime=7),
        Transaction([one_key, multi._replace(sequence=5)], tx.outputs, locktime=7),
        Transaction([one_key, multi], [TxOut(901, pkh(1))], locktime=7),
        Transaction([one_key, multi], tx.outputs, locktime=8),
        Transaction([one_key, multi], tx.outputs, version=2, locktime=7),
        Transaction([multi, one_key], tx.outputs, locktime=7),
    ]
    for other in changed:
        assert other.sighash(GENESIS) != base
    assert tx.sighash(regtest(coinbase_maturity=5).genesis_hash) != base


def test_co_signers_of_different_inputs_sign_in_any_order() -> None:
    """A one-key input and a 2-of-3 input: each signer signs the sighash of the transaction as
    it finds it, whatever the others already filled in; every signature stays valid."""
    script = script_of(2, 3)
    one_key_coin = Coin(500, pkh(0), 1, False)
    multi_coin = coin_for(script)
    one_key = TxIn(hashlib.sha256(b"other").digest(), 1, b"", b"")
    multi = TxIn(PREV.txid, PREV.index, b"", b"", 0xFFFFFFFF, script, (b"",) * 3)
    tx = Transaction([one_key, multi], [TxOut(1_400, pkh(1))])
    first_multisig = signed_by(tx, {0, 2}, n_input=1)
    digest = first_multisig.sighash(GENESIS)
    done = first_multisig.with_inputs(
        [
            one_key._replace(pubkey=key(0).public_key, signature=key(0).sign(digest)),
            first_multisig.inputs[1],
        ]
    )
    check_transaction(done, REGTEST)
    check_tx_signatures(done, [one_key_coin, multi_coin], GENESIS)
    # The other order: the one-key input signed first with sign_transaction's digest.
    only_one = sign_transaction(Transaction([one_key], tx.outputs), [key(0)], GENESIS)
    assert only_one.sighash(GENESIS) != tx.sighash(GENESIS)  # another transaction, of course
    first_key = tx.with_inputs(
        [
            one_key._replace(pubkey=key(0).public_key, signature=key(0).sign(tx.sighash(GENESIS))),
            multi,
        ]
    )
    done2 = signed_by(first_key, {1, 2}, n_input=1)
    check_tx_signatures(done2, [one_key_coin, multi_coin], GENESIS)


# ------------------------------------------------------------------ blocks and reorgs


def test_blocks_with_multisig_spends_connect_and_reorg() -> None:
    b = ChainBuilder(regtest(coinbase_maturity=1))
    b.mine(2)
    script = script_of(2, 3)
    fund = b.spend([coinbase_outpoint(b.block_at(1))], fee=1_000, to=script.script_hash)
    fork_point = b.chain.tip.hash
    b.mine(1, txs=[fund])
    funded = OutPoint(fund.txid, 0)
    assert b.chain.coin(funded) is not None
    amount = fund.outputs[0].amount
    spend = signed_by(
        Transaction(
            [TxIn(funded.txid, 0, b"", b"", 0xFFFFFFFF, script, (b"",) * 3)],
            [TxOut(amount - 1_000, pkh(2))],
        ),
        {0, 2},
        genesis=b.params.genesis_hash,
    )
    [spent_in] = b.mine(1, txs=[spend])
    assert b.chain.coin(funded) is None
    assert b.chain.coin(OutPoint(spend.txid, 0)) == Coin(amount - 1_000, pkh(2), 4, False)
    # An invalid spend (one signature short) makes its block invalid.
    short = signed_by(spend, {0}, genesis=b.params.genesis_hash)
    bad = b.block(b.chain.tip.hash, txs=[short])
    result = b.accept(bad)
    assert result.status == "invalid" and "bad-multisig-too-few-signatures" in result.reason
    # A heavier branch from before the funding undoes both: the funding coin's input is back.
    b.mine(3, parent=fork_point)
    assert b.chain.tip.height == 5 and spent_in.hash not in b.active_hashes()
    assert b.chain.coin(funded) is None and b.chain.coin(OutPoint(spend.txid, 0)) is None
    assert b.chain.coin(coinbase_outpoint(b.block_at(1))) is not None
    # And back again: the first branch made heavier reconnects the multisig spend.
    b.mine(3, parent=spent_in.hash)
    assert spent_in.hash in b.active_hashes()
    assert b.chain.coin(OutPoint(spend.txid, 0)) is not None and b.chain.coin(funded) is None
