"""Hostile review of the wallet's fault tolerance and multisig RPCs (issue 16): each test pins a
bug that was found and fixed, or a suspicion that was checked and ruled out."""

from __future__ import annotations

import errno
from typing import Any

from consensus.tx import decode_transaction
from node.rpc.errors import RPC_VERIFY_REJECTED, RPC_WALLET_ERROR
from node.wallet import Wallet
from tests.test_multisig_wallet import PARAMS, Net, escrow, net, spend_raw

__all__ = ["net"]  # the fixture, used by name

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
