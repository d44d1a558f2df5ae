"""Double-spend alerts and the merchant listening period, on two real nodes."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from lab.client import RPCError
from lab.testnet.processes import NodeProcess
from tests import subnets
from tests.daemon_harness import wait_for

pytestmark = pytest.mark.slow


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def conflicting_pair(node: NodeProcess, payee: str, thief: str) -> tuple[str, str]:
    coin = next(u for u in node.rpc("listunspent") if u["spendable"] and u["coinbase"])
    spend = [{"txid": coin["txid"], "vout": coin["vout"]}]
    tx1 = node.rpc("createrawtransaction", spend, {payee: coin["amount"] - 1_000})
    tx2 = node.rpc("createrawtransaction", spend, {thief: coin["amount"] - 2_000})
    return (node.rpc("signrawtransactionwithwallet", tx1)["hex"],
            node.rpc("signrawtransactionwithwallet", tx2)["hex"])


@pytest.mark.parametrize("alerts", [True, False])
def test_alert_flags_the_victims_payment_before_any_block(tmp_path: Path, alerts: bool) -> None:
    host_a, host_b = subnets.host(0, subnets.P2P_TESTS), subnets.host(1, subnets.P2P_TESTS)
    port = free_port(host_a)
    extra = ["--double-spend-alerts"] if alerts else []
    victim = NodeProcess(tmp_path / "victim",
                         args=["--p2p-bind", f"{host_a}:{port}", "--listening-period", "3600",
                               *extra])
    other = NodeProcess(tmp_path / "other",
                        args=["--p2p-bind", f"{host_b}:{port}", "--connect",
                              f"{host_a}:{port}", *extra])
    try:
        victim.start()
        other.start()
        wait_for(lambda: victim.rpc("getconnectioncount") == 1, 30, "peers")
        funding = other.rpc("getnewaddress")
        other.rpc("generatetoaddress", 101, funding)
        wait_for(lambda: victim.rpc("getblockcount") == 101, 30, "sync")
        tx1, tx2 = conflicting_pair(other, victim.rpc("getnewaddress"), other.rpc("getnewaddress"))
        # The victim is paid directly; the attacker's own node gets the conflicting spend.
        txid1 = victim.rpc("sendrawtransaction", tx1)
        status = victim.rpc("gettransaction", txid1)
        assert status["status"] == "mempool" and status["accepted_zero_conf"] is False
        txid2 = other.rpc("decoderawtransaction", tx2)["txid"]
        # tx1 may already have reached the attacker's node (then tx2 is refused there, and
        # that refusal is the evidence) or not (then tx2 reaches the victim and is refused).
        try:
            other.rpc("sendrawtransaction", tx2)
        except RPCError as exc:
            assert "txn-mempool-conflict" in exc.message
        wait_for(lambda: txid1 in other.rpc("gettransaction", txid2)["seen_double_spends"]
                 or victim.rpc("gettransaction", txid1)["seen_double_spends"], 30,
                 "one side to notice the conflict")
        if alerts:
            wait_for(lambda: victim.rpc("gettransaction", txid1)["status"] == "conflicted", 30,
                     "the alert to reach the victim")
            status = victim.rpc("gettransaction", txid1)
            assert status["confirmations"] == 0 and status["conflicts"] == [txid2]
            assert status["double_spend_alert"] is True
            assert victim.rpc("getblockcount") == 101  # before any block
        else:
            status = victim.rpc("gettransaction", txid1)
            assert status["status"] == "mempool" and status["double_spend_alert"] is False
    finally:
        victim.ensure_dead()
        other.ensure_dead()


def test_listening_period_zero_accepts_at_once(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "n").start()
    try:
        node.rpc("generatetoaddress", 101, node.rpc("getnewaddress"))
        txid = node.rpc("sendtoaddress", node.rpc("getnewaddress"), 10_000)
        assert node.rpc("gettransaction", txid)["accepted_zero_conf"] is True
    finally:
        node.ensure_dead()
