"""bumpfee between two real nodes: under full RBF (a payment that does not signal) and opt-in
(a replaceable one) the bump replaces the payment on both nodes; under first-seen the wallet
refuses to bump and both keep the payment; a full-RBF sender's bump stops at a first-seen
receiver, which keeps the payment, sees the double spend and does not blame the sender."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.client import RPCError
from node.rpc.errors import RPC_WALLET_ERROR
from tests.daemon_harness import wait_for
from tests.test_replacement_daemons import node_pair

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    ("policy", "receiver_policy", "replaceable"),
    [
        ("full", "full", False),
        ("opt-in", "opt-in", True),
        ("first-seen", "first-seen", True),
        ("full", "first-seen", True),
    ],
)
def test_bumpfee_across_two_nodes(
    tmp_path: Path, policy: str, receiver_policy: str, replaceable: bool
) -> None:
    receiver, sender = node_pair(tmp_path, policy, receiver_policy)
    try:
        receiver.start()
        sender.start()
        wait_for(lambda: receiver.rpc("getconnectioncount") == 1, 30, "peers")
        sender.rpc("generatetoaddress", 101, sender.rpc("getnewaddress"))
        wait_for(lambda: receiver.rpc("getblockcount") == 101, 30, "sync")
        payee = receiver.rpc("getnewaddress")
        paid = sender.rpc("sendtoaddress", payee, 10**8, "", "", False, replaceable)
        wait_for(lambda: paid in receiver.rpc("getrawmempool"), 30, "the payment")
        assert receiver.rpc("getmempoolentry", paid)["bip125-replaceable"] is replaceable

        if policy == "first-seen":
            with pytest.raises(RPCError) as info:
                sender.rpc("bumpfee", paid)
            assert info.value.code == RPC_WALLET_ERROR and "first-seen" in info.value.message
            assert sender.rpc("getrawmempool") == [paid]
            assert receiver.rpc("getrawmempool") == [paid]
            return

        bump = sender.rpc("bumpfee", paid)
        assert bump["fee"] > bump["origfee"] and bump["errors"] == []
        assert sender.rpc("getrawmempool") == [bump["txid"]]
        if receiver_policy == "first-seen":
            wait_for(
                lambda: bump["txid"] in receiver.rpc("gettransaction", paid)["seen_double_spends"],
                30,
                "the bump to reach the receiver",
            )
            assert receiver.rpc("getrawmempool") == [paid]
            assert receiver.rpc("gettransaction", paid)["status"] == "mempool"
            (peer,) = receiver.rpc("getpeerinfo")
            assert peer["misbehavior"] == 0
            return
        wait_for(lambda: receiver.rpc("getrawmempool") == [bump["txid"]], 30, "the bump")
        for node in (sender, receiver):
            status = node.rpc("gettransaction", paid)
            assert status["status"] == "replaced" and status["replaced_by_txid"] == bump["txid"]
        # The payee is paid the same by the bump, which confirms.
        receiver.rpc("generatetoaddress", 1, payee)
        wait_for(lambda: sender.rpc("getblockcount") == 102, 30, "the block")
        assert sender.rpc("gettransaction", bump["txid"])["confirmations"] == 1
        assert sender.rpc("gettransaction", paid)["status"] == "conflicted"
        paid_to_payee = [u for u in receiver.rpc("listunspent") if u["txid"] == bump["txid"]]
        assert [u["amount"] for u in paid_to_payee] == [10**8]
        (peer,) = receiver.rpc("getpeerinfo")
        assert peer["misbehavior"] == 0
    finally:
        receiver.ensure_dead()
        sender.ensure_dead()
