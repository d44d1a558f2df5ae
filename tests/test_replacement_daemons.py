"""A replacement between two real nodes: relayed and taken under full RBF, refused (without
penalising the peer) by a first-seen node."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.testnet.processes import NodeProcess
from tests import subnets
from tests.daemon_harness import wait_for
from tests.test_double_spend_alerts import free_port

pytestmark = pytest.mark.slow


def node_pair(
    tmp_path: Path, sender_policy: str, receiver_policy: str
) -> tuple[NodeProcess, NodeProcess]:
    """(receiver, sender), not started: the sender connects to the receiver, each with its own
    replacement policy."""
    host_a, host_b = subnets.host(0, subnets.P2P_TESTS), subnets.host(1, subnets.P2P_TESTS)
    port = free_port(host_a)
    receiver = NodeProcess(
        tmp_path / "receiver",
        args=["--p2p-bind", f"{host_a}:{port}", "--mempool-replacement", receiver_policy],
    )
    sender = NodeProcess(
        tmp_path / "sender",
        args=["--p2p-bind", f"{host_b}:{port}", "--connect", f"{host_a}:{port}",
              "--mempool-replacement", sender_policy],
    )
    return receiver, sender


@pytest.mark.parametrize("receiver_policy", ["full", "first-seen"])
def test_a_replacement_crosses_two_nodes_under_full_rbf_only(
    tmp_path: Path, receiver_policy: str
) -> None:
    receiver, sender = node_pair(tmp_path, "full", receiver_policy)
    try:
        receiver.start()
        sender.start()
        wait_for(lambda: receiver.rpc("getconnectioncount") == 1, 30, "peers")
        sender.rpc("generatetoaddress", 101, sender.rpc("getnewaddress"))
        wait_for(lambda: receiver.rpc("getblockcount") == 101, 30, "sync")
        coin = next(u for u in sender.rpc("listunspent") if u["spendable"] and u["coinbase"])
        spend = [{"txid": coin["txid"], "vout": coin["vout"]}]
        payee, back = receiver.rpc("getnewaddress"), sender.rpc("getnewaddress")
        first_hex = sender.rpc("createrawtransaction", spend, {payee: coin["amount"] - 1_000})
        first = sender.rpc(
            "sendrawtransaction", sender.rpc("signrawtransactionwithwallet", first_hex)["hex"]
        )
        wait_for(lambda: first in receiver.rpc("getrawmempool"), 30, "the first payment")

        second_hex = sender.rpc("createrawtransaction", spend, {back: coin["amount"] - 50_000})
        second = sender.rpc(
            "sendrawtransaction", sender.rpc("signrawtransactionwithwallet", second_hex)["hex"]
        )
        assert sender.rpc("getrawmempool") == [second]
        status = sender.rpc("gettransaction", first)
        assert status["status"] == "replaced" and status["replaced_by_txid"] == second

        if receiver_policy == "full":
            wait_for(lambda: receiver.rpc("getrawmempool") == [second], 30, "the replacement")
            status = receiver.rpc("gettransaction", first)
            assert status["status"] == "replaced" and status["replaced_by_txid"] == second
            assert receiver.rpc("getmempoolinfo")["mempoolfullrbf"] is True
        else:
            # The refusal leaves its evidence: the receiver saw the double spend.
            wait_for(
                lambda: second in receiver.rpc("gettransaction", first)["seen_double_spends"],
                30,
                "the replacement to reach the receiver",
            )
            assert receiver.rpc("getrawmempool") == [first]
            assert receiver.rpc("gettransaction", first)["status"] == "mempool"
            info = receiver.rpc("getmempoolinfo")
            assert info["mempoolfullrbf"] is False and info["replacement_policy"] == "first-seen"
        (peer,) = receiver.rpc("getpeerinfo")
        assert peer["misbehavior"] == 0
    finally:
        receiver.ensure_dead()
        sender.ensure_dead()
