"""Hostile review of the wallet's fault tolerance and multisig RPCs (issue 16): each test pins a
bug that was found and fixed, or a suspicion that was checked and ruled out."""

from __future__ import annotations

import errno
import struct
import zlib
from pathlib import Path
from typing import Any

import msgpack
import pytest

from consensus.params import REGTEST
from consensus.tx import OutPoint, Transaction, TxIn, TxOut, decode_transaction
from node.daemon import Node
from node.rpc.errors import (
    RPC_INVALID_PARAMETER,
    RPC_VERIFY_REJECTED,
    RPC_WALLET_ERROR,
    RPC_WALLET_INSUFFICIENT_FUNDS,
)
from node.wallet import WALLET_FILE, Wallet
from node.wallet_errors import WalletError
from node.wallet_history import WalletTx
from node.wallet_journal import JOURNAL_FILE
from node.wallet_sync import resubmit
from tests.helpers import key
from tests.test_multisig_wallet import FUNDING, PARAMS, Net, escrow, net, spend_raw
from tests.test_wallet_safety import funded, inputs_of, lose_mempool, node

__all__ = ["net", "node"]  # the fixtures, used by name

FULL = OSError(errno.ENOSPC, "No space left on device")


def test_addmultisigaddress_on_a_full_disk_is_a_wallet_error_and_watches_nothing(
    net: Net, monkeypatch: Any
) -> None:
    keys = [net.pubkey(name) for name in ("a", "b", "c")]
    wallet = net.nodes["a"].wallet

    def full(*_: Any) -> None:
        raise FULL

    monkeypatch.setattr("node.wallet_file.write_atomic", full)
    error = net.error("a", "addmultisigaddress", 2, keys)
    assert error.code == RPC_WALLET_ERROR and "No space left" in error.message
    assert wallet.multisig == {}  # not watched in memory while a restart would forget it
    monkeypatch.undo()
    created = net.rpc("a", "addmultisigaddress", 2, keys)
    reopened = Wallet.open(wallet.path.parent, PARAMS)
    assert [s.encode().hex() for s in reopened.multisig.values()] == [created["redeemScript"]]


def test_a_foreign_signature_in_a_spare_slot_is_not_reported_complete(net: Net) -> None:
    """d does not watch the script, so it only checks the input: a slot holding c's signature
    of another message (or of the wrong slot) makes the input invalid, not complete."""
    created, keys = escrow(net)
    net.add("d")
    coin = net.fund("a", created["address"])
    by_a = net.rpc("a", "signrawtransactionwithwallet", spend_raw(net, coin))["hex"]
    done = net.rpc("b", "signrawtransactionwithwallet", by_a)["hex"]
    tx = decode_transaction(bytes.fromhex(done), PARAMS.max_block_size)
    c_key = next(k for k in net.nodes["c"].wallet.keys.values() if k.public_key.hex() in keys)
    slots = tx.inputs[0].signature_slots
    assert slots[2] == b""
    for hostile_slot in (c_key.sign(b"another message"), slots[0]):
        hostile_slots = (slots[0], slots[1], hostile_slot)
        hostile = tx.with_inputs([tx.inputs[0]._replace(signature_slots=hostile_slots)])
        hexed = hostile.encode().hex()
        assert net.error("d", "sendrawtransaction", hexed).code == RPC_VERIFY_REJECTED
        result = net.rpc("d", "signrawtransactionwithwallet", hexed)
        assert result["complete"] is False and "does not verify" in result["errors"][0]["error"]
        # A wallet that watches the script drops the bad slot and completes the input.
        fixed = net.rpc("c", "signrawtransactionwithwallet", hexed)
        assert fixed["complete"] is True and fixed["hex"] == done
    assert net.rpc("d", "sendrawtransaction", done) == tx.txid.hex()


def _frame(entry: object) -> bytes:
    payload = msgpack.packb(entry, use_bin_type=True)
    return struct.pack(">II", len(payload), zlib.crc32(payload)) + payload


def test_a_corrupt_journal_frame_followed_by_others_is_refused_not_cut_off(
    tmp_path: Path,
) -> None:
    """A torn append leaves only the last frame short; a bad frame with entries after it is
    corruption, and cutting it off at the next append would lose the keys that follow."""
    wallet = Wallet.open(tmp_path, PARAMS)
    wallet.new_address()  # the first write makes wallet.dat
    keys = [wallet.decode(wallet.new_address()) for _ in range(3)]
    log = tmp_path / JOURNAL_FILE
    good = log.read_bytes()
    assert Wallet.open(tmp_path, PARAMS).keys.keys() >= set(keys)

    corrupt = bytearray(good)
    corrupt[12] ^= 0xFF  # inside the first frame's payload
    wrong_type = _frame([1, 2]) + good  # checksummed, but not an entry
    for hostile in (bytes(corrupt), wrong_type):
        log.write_bytes(hostile)
        with pytest.raises(WalletError, match="corrupt at byte 0"):
            Wallet.open(tmp_path, PARAMS)
        assert log.read_bytes() == hostile  # left as it is

    # A torn last frame (short, or a length running past the end) is still just ignored.
    for tail in (_frame({"drop": b"x" * 40})[:-3], struct.pack(">II", 0xFFFFFFFF, 0) + b"ab"):
        log.write_bytes(good + tail)
        reopened = Wallet.open(tmp_path, PARAMS)
        assert reopened.keys.keys() >= set(keys)
        reopened.new_address()
        assert log.read_bytes().startswith(good) and tail not in log.read_bytes()


async def test_a_crash_after_a_fold_does_not_replay_a_stale_drop_over_wallet_dat(
    node: Node, monkeypatch: Any
) -> None:
    """A payment refused (dropped) and then made again, identical (same coins, deterministic
    signatures), by the write that folds the journal into wallet.dat: a crash before the
    journal is emptied must not replay the old drop over the payment wallet.dat holds."""
    await funded(node)
    wallet, chain = node.wallet, node.chain
    payment = wallet.create_payment(chain, node.mempool, key(7).public_key[:20], 5000)
    wallet.record_payment(payment, 1, chain)
    wallet.forget_refused(payment.txid)  # as sendtoaddress does when the mempool refuses
    again = wallet.create_payment(chain, node.mempool, key(7).public_key[:20], 5000)
    assert again.txid == payment.txid
    monkeypatch.setattr("node.wallet.MAX_JOURNAL_BYTES", 0)  # this write folds
    monkeypatch.setattr(wallet.journal, "clear", lambda: None)  # killed before emptying
    wallet.record_payment(again, 2, chain)
    reopened = Wallet.open(node.datadir, node.params)
    assert payment.txid in reopened.history
    assert reopened.locked_outpoints(chain) == {i.outpoint for i in payment.inputs}


async def test_an_abandoned_payment_made_again_identical_is_pending_not_abandoned(
    node: Node,
) -> None:
    """Abandoning frees the inputs; the next payment of the same amount to the same payee
    picks the same coins and signs deterministically, so it has the abandoned one's txid. It
    went out, so it must be locked and resubmitted, in memory and after a restart."""
    rpc = await funded(node)
    payee = key(7).address(REGTEST.address_prefix)
    txid = await rpc("sendtoaddress", payee, 5000)
    lose_mempool(node)
    await rpc("abandontransaction", txid)
    assert node.wallet.locked_outpoints(node.chain) == set()
    assert await rpc("sendtoaddress", payee, 5000) == txid
    for wallet in (node.wallet, Wallet.open(node.datadir, REGTEST)):
        record = wallet.history.get(bytes.fromhex(txid))
        assert record is not None and not record.abandoned
        assert wallet.locked_outpoints(node.chain) == inputs_of(node, txid)
    assert not (await rpc("gettransaction", txid))["abandoned"]
    lose_mempool(node)
    # Not spent twice: the next payment picks other coins, and the first is offered again.
    other = await rpc("sendtoaddress", payee, 5000)
    assert not inputs_of(node, other) & inputs_of(node, txid)
    assert resubmit(node)["accepted"] == 1 and txid in await rpc("getrawmempool")


class _Chain:
    """What settling looks at: which block holds a transaction, which spends an outpoint."""

    def __init__(self, blocks: dict[bytes, bytes], spends: dict[OutPoint, bytes]) -> None:
        self.blocks, self.spends = blocks, spends

    def tx_block(self, txid: bytes) -> bytes | None:
        return self.blocks.get(txid)

    def spender(self, outpoint: OutPoint) -> bytes | None:
        return self.spends.get(outpoint)


def test_a_payment_of_a_coin_whose_receipt_was_double_spent_away_settles(
    tmp_path: Path,
) -> None:
    """We received X, paid P1 out of it and P2 out of P1's change; a reorg confirmed X', a
    double spend of X's input, instead. P1 and P2 can never confirm: settled (conflicted), not
    locked nor resubmitted every interval for ever, nor holding MAX_WALLET_TXS slots."""
    wallet = Wallet.open(tmp_path, REGTEST)
    ours = wallet.decode(wallet.new_address())
    funding = OutPoint(b"\x01" * 32, 0)
    x = Transaction([TxIn(funding.txid, 0, b"", b"")], [TxOut(10_000, ours)])
    p1 = Transaction([TxIn(x.txid, 0, b"", b"")], [TxOut(4_000, b"\x07" * 20), TxOut(5_000, ours)])
    p2 = Transaction([TxIn(p1.txid, 1, b"", b"")], [TxOut(4_000, b"\x07" * 20)])
    x_block: Any = _Chain({x.txid: b"\xbb" * 32}, {funding: x.txid})
    wallet.note_tx(x, 1, x_block)
    for payment in (p1, p2):
        wallet.history.add(WalletTx(payment, 2, sent=True), wallet.settled_in(x_block))
    assert len(wallet.history.pending(wallet.settled_in(x_block))) == 2

    double_spent: Any = _Chain({}, {funding: b"\x0d" * 32})
    assert wallet.history.pending(wallet.settled_in(double_spent)) == []
    assert wallet.locked_outpoints(double_spent) == set()
    # Unconfirmed but unconflicted (the reorg only put X back in the mempool): still pending.
    back_in_mempool: Any = _Chain({}, {})
    assert len(wallet.history.pending(wallet.settled_in(back_in_mempool))) == 2


# ----------------------------------------------------------------------------- ruled out


def test_a_multisig_coin_the_wallet_could_spend_alone_is_not_in_its_balance(net: Net) -> None:
    keys = [net.pubkey("b"), net.pubkey("b"), net.pubkey("c")]
    created = net.rpc("b", "addmultisigaddress", 2, keys)
    assert net.rpc("b", "getaddressinfo", created["address"])["ismine"]
    net.fund("a", created["address"])
    [listed] = [u for u in net.rpc("b", "listunspent") if u["address"] == created["address"]]
    assert listed["spendable"] and listed["amount"] == FUNDING
    assert net.rpc("b", "getbalance") == 0 and net.rpc("b", "getbalance", 0) == 0
    error = net.error("b", "sendtoaddress", net.rpc("c", "getnewaddress"), 1000)
    assert error.code == RPC_WALLET_INSUFFICIENT_FUNDS


def test_combine_refuses_copies_differing_only_in_a_sequence_or_the_lock_time(net: Net) -> None:
    created, _ = escrow(net)
    coin = net.fund("a", created["address"])
    raw = spend_raw(net, coin)
    by_a = net.rpc("a", "signrawtransactionwithwallet", raw)["hex"]
    by_b = net.rpc("b", "signrawtransactionwithwallet", raw)["hex"]
    tx = decode_transaction(bytes.fromhex(by_b), PARAMS.max_block_size)
    variants = (
        tx.with_inputs([tx.inputs[0]._replace(sequence=7)]),
        Transaction(tx.inputs, tx.outputs, tx.version, locktime=1),
        Transaction(tx.inputs, tx.outputs, version=2, locktime=tx.locktime),
        Transaction(tx.inputs, [tx.outputs[0]._replace(amount=tx.outputs[0].amount - 1)]),
    )
    for variant in variants:
        error = net.error("a", "combinerawtransaction", [by_a, variant.encode().hex()])
        assert error.code == RPC_INVALID_PARAMETER and "not the same transaction" in error.message
        # b's signature does not carry over to the variant: not complete, refused on relay.
        combined = net.rpc("a", "combinerawtransaction", [variant.encode().hex()])
        signed = decode_transaction(bytes.fromhex(combined), PARAMS.max_block_size)
        assert sum(1 for slot in signed.inputs[0].signature_slots if slot) == 0


@pytest.mark.parametrize(
    "entry",
    [
        {"tx": 5},
        {"tx": {"raw": b"garbage", "time": 1}},
        {"tx": {"raw": None, "time": 1}},
        {"abandon": 5},
        {"key": b"short"},
        {"scanned": "ab"},
        {"scanned": [1]},
    ],
)
def test_hostile_journal_entries_refuse_the_wallet_with_a_clear_error(
    tmp_path: Path, entry: dict[str, Any]
) -> None:
    wallet = Wallet.open(tmp_path, PARAMS)
    wallet.new_address()
    with open(tmp_path / JOURNAL_FILE, "ab") as fh:
        fh.write(_frame(entry))
    before = (tmp_path / JOURNAL_FILE).read_bytes()
    with pytest.raises(WalletError, match="unreadable"):
        Wallet.open(tmp_path, PARAMS)
    assert (tmp_path / JOURNAL_FILE).read_bytes() == before


def test_a_journal_without_its_wallet_dat_is_refused_not_emptied(tmp_path: Path) -> None:
    """A user who removed or failed to restore wallet.dat: the first write of a new wallet
    would otherwise empty wallet.log and the keys in it."""
    wallet = Wallet.open(tmp_path, PARAMS)
    wallet.new_address()
    wallet.new_address()  # in the journal only
    (tmp_path / WALLET_FILE).unlink()
    before = (tmp_path / JOURNAL_FILE).read_bytes()
    with pytest.raises(WalletError, match="is missing"):
        Wallet.open(tmp_path, PARAMS)
    assert (tmp_path / JOURNAL_FILE).read_bytes() == before
    (tmp_path / JOURNAL_FILE).write_bytes(b"")  # an empty journal is nothing to lose
    assert Wallet.open(tmp_path, PARAMS).keys == {}


async def test_a_fold_that_fails_after_the_append_still_sends_and_keeps_the_payment(
    node: Node, monkeypatch: Any
) -> None:
    """The payment is durable once appended; a full disk during the fold that follows must
    not report "nothing was sent" for a payment a restart would resubmit."""
    rpc = await funded(node)
    payee = key(7).address(REGTEST.address_prefix)
    monkeypatch.setattr("node.wallet.MAX_JOURNAL_BYTES", 0)

    def full(*_: Any) -> None:
        raise FULL

    monkeypatch.setattr("node.wallet_file.write_atomic", full)
    txid = await rpc("sendtoaddress", payee, 5000)
    assert txid in await rpc("getrawmempool")
    assert node.wallet.journal.path.stat().st_size > 0  # not folded
    assert bytes.fromhex(txid) in Wallet.open(node.datadir, REGTEST).history
    monkeypatch.undo()
    monkeypatch.setattr("node.wallet.MAX_JOURNAL_BYTES", 0)
    await rpc("getnewaddress")  # the next write folds
    assert node.wallet.journal.path.stat().st_size == 0
    assert bytes.fromhex(txid) in Wallet.open(node.datadir, REGTEST).history
