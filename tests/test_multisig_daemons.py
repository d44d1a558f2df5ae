"""A 2-of-3 escrow across three real nodes' wallets: each node contributes a key, one signs
(incomplete), another completes it; two sign in parallel and a third merges their signatures
with combinerawtransaction; the spends are relayed and mined, and the watch survives a restart.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from lab.client import RPCError
from lab.testnet.processes import NodeProcess
from tests import subnets
from tests.daemon_harness import wait_for

pytestmark = pytest.mark.slow

MATURITY = 100
ESCROWED = 5 * 10**8
FEE = 100_000


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def test_two_of_three_escrow_across_three_nodes(tmp_path: Path) -> None:
    hosts = [subnets.host(i, subnets.MULTISIG) for i in range(3)]
    port = free_port(hosts[0])
    a = NodeProcess(tmp_path / "a", args=["--p2p-bind", f"{hosts[0]}:{port}"])
    b, c = (
        NodeProcess(
            tmp_path / name,
            args=["--p2p-bind", f"{host}:{port}", "--connect", f"{hosts[0]}:{port}"],
        )
        for name, host in (("b", hosts[1]), ("c", hosts[2]))
    )
    nodes = [a, b, c]
    try:
        for node in nodes:
            node.start()
        wait_for(lambda: a.rpc("getconnectioncount") == 2, 30, "both peers")
        keys = []
        for node in nodes:
            info = node.rpc("getaddressinfo", node.rpc("getnewaddress"))
            keys.append(info["pubkey"])
        escrow = a.rpc("createmultisig", 2, keys)
        for node in nodes:
            assert node.rpc("addmultisigaddress", 2, keys) == escrow
            assert node.rpc("getaddressinfo", escrow["address"])["iswatchonly"] is True

        a.rpc("generatetoaddress", MATURITY + 1, a.rpc("getnewaddress"))
        funding = [a.rpc("sendtoaddress", escrow["address"], ESCROWED) for _ in range(2)]
        a.rpc("generatetoaddress", 1, a.rpc("getnewaddress"))
        height = MATURITY + 2
        wait_for(lambda: all(n.rpc("getblockcount") == height for n in nodes), 30, "sync")
        coins = [u for u in b.rpc("listunspent") if u["address"] == escrow["address"]]
        assert len(coins) == 2 and not any(u["spendable"] for u in coins)
        assert {u["txid"] for u in coins} == set(funding)

        def spend(coin: dict[str, object]) -> str:
            payee = c.rpc("getnewaddress")
            inputs = [{"txid": coin["txid"], "vout": coin["vout"]}]
            return str(a.rpc("createrawtransaction", inputs, {payee: ESCROWED - FEE}))

        # In turn: a signs, b completes, c broadcasts.
        raw = spend(coins[0])
        partial = a.rpc("signrawtransactionwithwallet", raw)
        assert partial["complete"] is False and partial["errors"]
        refused = c.rpc_error("sendrawtransaction", partial["hex"])
        assert "bad-multisig-too-few-signatures" in refused.message
        done = b.rpc("signrawtransactionwithwallet", partial["hex"])
        assert done["complete"] is True
        first = c.rpc("sendrawtransaction", done["hex"])

        # In parallel: a and c sign the same unsigned spend; b merges and broadcasts.
        raw = spend(coins[1])
        by_a = a.rpc("signrawtransactionwithwallet", raw)["hex"]
        by_c = c.rpc("signrawtransactionwithwallet", raw)["hex"]
        assert b.rpc("signrawtransactionwithwallet", by_a)["complete"]  # b could, too
        merged = b.rpc("combinerawtransaction", [by_a, by_c])
        assert b.rpc("decoderawtransaction", merged)["vin"][0]["signatures"] == 2
        second = b.rpc("sendrawtransaction", merged)

        wait_for(lambda: {first, second} <= set(a.rpc("getrawmempool")), 30, "relay to a")
        a.rpc("generatetoaddress", 1, a.rpc("getnewaddress"))
        for txid in (first, second):
            wait_for(lambda t=txid: c.rpc("gettransaction", t)["confirmations"] == 1, 30, "conf")
        wait_for(
            lambda: not any(u["address"] == escrow["address"] for u in b.rpc("listunspent")),
            30,
            "the escrow spent on b",
        )

        # The watch is in wallet.dat: b still knows the escrow after a restart.
        b.stop()
        b.start()
        info = b.rpc("getaddressinfo", escrow["address"])
        assert info["iswatchonly"] and info["pubkeys"] == keys and info["sigsrequired"] == 2
        with pytest.raises(RPCError):
            b.rpc("createmultisig", 3, keys[:2])
        assert b.rpc("getblockcount") >= height
    finally:
        for node in nodes:
            node.ensure_dead()
