"""Hostile review of the wallet's fault tolerance and multisig RPCs (issue 16): each test pins a
bug that was found and fixed, or a suspicion that was checked and ruled out."""

from __future__ import annotations

import errno
from typing import Any

from node.rpc.errors import RPC_WALLET_ERROR
from node.wallet import Wallet
from tests.test_multisig_wallet import PARAMS, Net, net

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
