"""`powlab testnet` end to end: five real nodes in a line, a payment to finality, a partition
with a double spend on each side, heal, and a clean `down`.

The scenario tests share one testnet (starting it is the slow part) and run in file order;
the fixture always tears it down. Node addresses use a free 127.A.B range of this run
(tests/subnets.py), so a run never collides with a developer's ./testnet or another test's
nodes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab.client import RPCError
from lab.testnet.control import call, try_call
from lab.testnet.manifest import (
    Manifest,
    load_manifest,
    new_manifest,
    parse_groups,
    parse_shares,
    topology_links,
)
from lab.testnet.processes import process_alive, process_group
from tests import subnets
from tests.daemon_harness import REPO, wait_for

BLOCK_TIME = 2.0
FINALITY = 4
STATUS_KEYS = {"node", "role", "rpc", "height", "bestblockhash", "peers", "mempool", "hashrate",
               "up"}


def powlab(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lab", *args],
        capture_output=True, text=True, timeout=timeout, cwd=REPO,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


# --------------------------------------------------------------------------- fast unit tests


def test_topologies_connect_lists() -> None:
    assert topology_links(4, "line") == {0: [], 1: [0], 2: [1], 3: [2]}
    assert topology_links(4, "ring") == {0: [3], 1: [0], 2: [1], 3: [2]}
    assert topology_links(4, "mesh") == {0: [], 1: [0], 2: [0, 1], 3: [0, 1, 2]}
    assert topology_links(4, "star") == {0: [], 1: [0], 2: [0], 3: [0]}


def test_manifest_layout_and_groups(tmp_path: Path) -> None:
    shares = parse_shares("2,1,1", 3)
    assert shares == [0.5, 0.25, 0.25]
    m = new_manifest(tmp_path, 5, 3, shares, "line", "regtest", 10, None)
    assert [e.role for e in m.nodes] == ["miner", "miner", "miner", "node", "node"]
    assert m.nodes[0].p2p == "127.0.0.2:18444" and m.nodes[4].rpc == "127.0.0.6:18443"
    assert m.nodes[2].connect == ["127.0.0.3:18444"]
    assert m.nodes[1].datadir == str(tmp_path / "n2")
    assert parse_groups(m, ["n1,n2", "n4"]) == [["n1", "n2"], ["n4"], ["n3", "n5"]]
    with pytest.raises(Exception, match="more than one group"):
        parse_groups(m, ["n1,n2", "n2,n3"])
    with pytest.raises(Exception, match="no node 'n9'"):
        parse_groups(m, ["n9", "n1"])


# --------------------------------------------------------------------------- real testnet


@pytest.fixture(scope="module")
def testnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    directory = tmp_path_factory.mktemp("testnet") / "net"
    subnet = subnets.subnet(subnets.TESTNET_TESTS)
    try:
        started = time.monotonic()
        out = ok(powlab(
            "testnet", "up", "--dir", str(directory), "--nodes", "5", "--miners", "2",
            # One miner at each end, so each half of a partition of the line has one.
            "--miner-nodes", "n1,n5", "--topology", "line", "--block-time", str(BLOCK_TIME),
            "--finality-depth", str(FINALITY), "--subnet", subnet,
        ))
        print(f"testnet up in {time.monotonic() - started:.1f}s\n{out}")
        yield directory
    finally:
        powlab("testnet", "down", "--dir", str(directory), timeout=120)
        manifest_pids = _pids(directory)
        for pid in manifest_pids:
            if process_alive(pid):  # last resort: never leave processes behind
                subprocess.run(["kill", "-9", str(pid)], check=False)


def _pids(directory: Path) -> list[int]:
    try:
        data = json.loads((directory / "testnet.json").read_text())
    except FileNotFoundError:
        return []
    return [n["pid"] for n in data["nodes"] if n.get("pid")]


def converged(manifest: Manifest) -> str | None:
    tips = {try_call(e, "getbestblockhash") for e in manifest.nodes}
    return tips.pop() if len(tips) == 1 and None not in tips else None


@pytest.mark.slow
def test_up_starts_a_connected_funded_line(testnet: Path) -> None:
    manifest = load_manifest(testnet)
    assert [e.name for e in manifest.nodes] == ["n1", "n2", "n3", "n4", "n5"]
    assert [e.role for e in manifest.nodes] == ["miner", "node", "node", "node", "miner"]
    assert manifest.funded
    # Line topology: the ends have one peer, the middle two, nothing else.
    for entry, peers in zip(manifest.nodes, (1, 2, 2, 2, 1), strict=True):
        assert call(entry, "getconnectioncount") == peers, entry.name
        assert all(p["addr"].split(":")[0] != entry.host for p in call(entry, "getpeerinfo"))
    for entry in manifest.nodes:
        assert call(entry, "getbalance") > 0, f"{entry.name} was not funded"
    # 2**256 / (target + 1) is about 2 hashes per regtest block: total rate 1 H/s at 2 s.
    for entry in (manifest.node("n1"), manifest.node("n5")):
        assert entry.mining_rate == pytest.approx(0.5 * 2 / BLOCK_TIME, rel=1e-3)
        info = call(entry, "getmininginfo")
        assert info["mining"] and info["hashrate_limit"] == pytest.approx(entry.mining_rate)
    start = call(manifest.node("n3"), "getblockcount")
    wait_for(lambda: call(manifest.node("n3"), "getblockcount") >= start + 2, 60,
             "the miners to extend the chain")
    wait_for(lambda: converged(manifest), 60, "all nodes on one tip")
    # Idempotent: a second `up` leaves running nodes alone and does not fund again.
    height = call(manifest.node("n1"), "getblockcount")
    out = ok(powlab("testnet", "up", "--dir", str(testnet)))
    assert out.count("already running") == 5 and "funding" not in out
    assert call(manifest.node("n1"), "getblockcount") < height + 20
    assert [e.pid for e in load_manifest(testnet).nodes] == [e.pid for e in manifest.nodes]


@pytest.mark.slow
def test_status_json_has_the_contract_keys(testnet: Path) -> None:
    rows = json.loads(ok(powlab("testnet", "status", "--json", "--dir", str(testnet))))
    assert [r["node"] for r in rows] == ["n1", "n2", "n3", "n4", "n5"]
    for row in rows:
        assert set(row) >= STATUS_KEYS
        assert row["up"] is True and row["height"] > 100 and row["peers"] >= 1
        assert row["rpc"].startswith("http://127.")
    table = ok(powlab("testnet", "status", "--dir", str(testnet)))
    assert "n5" in table and "miner" in table
    # --node resolves URL and cookie from the manifest.
    info = json.loads(ok(powlab("rpc", "--node", "n2", "--dir", str(testnet),
                                "getblockchaininfo")))
    assert info["chain"] == "regtest" and info["finality_depth"] == FINALITY


@pytest.mark.slow
def test_payment_is_final_on_every_node_and_watch_follows_it(testnet: Path) -> None:
    manifest = load_manifest(testnet)
    txid = ok(powlab("testnet", "send", "--dir", str(testnet), "n1", "n3", "100000")).strip()
    assert len(txid) == 64
    # `watch` starts while the transaction is still in the mempool.
    watcher = subprocess.Popen(
        [sys.executable, "-m", "lab", "watch", txid, "--node", "n3", "--dir", str(testnet),
         "--timeout", "120"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
    )
    try:
        out, _ = watcher.communicate(timeout=150)
    finally:
        if watcher.poll() is None:
            watcher.kill()
    assert watcher.returncode == 0, out
    assert "final" in out
    for entry in manifest.nodes:
        status = wait_for(
            lambda e=entry: (s := call(e, "gettransaction", txid))["status"] == "final" and s,
            60, f"the payment to be final on {entry.name}",
        )
        assert status["confirmations"] >= FINALITY


def _double_spend_pair(manifest: Manifest) -> tuple[str, str, str, str]:
    """Two signed transactions spending the same coin of n4: A pays n1, B pays n4 back."""
    owner = manifest.node("n4")
    coins = [c for c in call(owner, "listunspent") if c["spendable"]]
    coin = max(coins, key=lambda c: c["amount"])
    txs = []
    for payee, fee in ((manifest.node("n1"), 10_000), (owner, 20_000)):
        raw = call(owner, "createrawtransaction", [{"txid": coin["txid"], "vout": coin["vout"]}],
                   {call(payee, "getnewaddress"): coin["amount"] - fee})
        signed = call(owner, "signrawtransactionwithwallet", raw)
        assert signed["complete"]
        txs.append(signed["hex"])
    hex_a, hex_b = txs
    txid_a = call(owner, "decoderawtransaction", hex_a)["txid"]
    txid_b = call(owner, "decoderawtransaction", hex_b)["txid"]
    assert txid_a != txid_b
    return hex_a, txid_a, hex_b, txid_b


def _send_raw(entry: Any, hexstring: str) -> None:
    try:
        call(entry, "sendrawtransaction", hexstring)
    except RPCError as exc:
        # It may already have arrived by relay from a neighbour.
        if "already" not in exc.message and "known" not in exc.message:
            raise


@pytest.mark.slow
def test_partition_double_spend_heal_converges_on_most_work(testnet: Path) -> None:
    manifest = load_manifest(testnet)
    n1, n2, n3, n4, n5 = manifest.nodes
    hex_a, txid_a, hex_b, txid_b = _double_spend_pair(manifest)

    ok(powlab("testnet", "partition", "--dir", str(testnet), "n1,n2", "n3,n4,n5"))
    assert load_manifest(testnet).partition == [["n1", "n2"], ["n3", "n4", "n5"]]
    wait_for(lambda: call(n2, "getconnectioncount") == 1 and call(n3, "getconnectioncount") == 1,
             30, "the link n2-n3 to drop")
    assert {b["address"] for b in call(n2, "listbanned")} >= {n3.host, n4.host, n5.host}

    # Side 2 (n3-n5) pauses its miner so that A, broadcast everywhere, cannot be mined there;
    # instead it mines B, the conflicting spend, on purpose.
    call(n5, "setmining", False)
    for entry in manifest.nodes:
        _send_raw(entry, hex_a)
    call(n5, "generateblock", call(n5, "getnewaddress"), [hex_b])
    for entry in (n3, n4, n5):
        wait_for(lambda e=entry: call(e, "gettransaction", txid_a)["status"] == "conflicted",
                 30, f"A to be conflicted on {entry.name}")
    # Side 1 (n1-n2) mines A with its own miner.
    for entry in (n1, n2):
        wait_for(lambda e=entry: call(e, "gettransaction", txid_a)["confirmations"] >= 1,
                 60, f"A to be mined on {entry.name}")
    assert call(n2, "gettransaction", txid_b)["status"] == "unknown"

    # Both sides mine; side 2 then gets a lead that side 1 cannot close before the heal.
    call(n5, "setmining", True, n5.mining_rate)
    lead = call(n1, "getblockcount") - call(n5, "getblockcount") + 6
    ok(powlab("testnet", "mine", "--dir", str(testnet), "n5", str(max(lead, 6))))
    assert call(n5, "getblockcount") > call(n1, "getblockcount")

    ok(powlab("testnet", "heal", "--dir", str(testnet)))
    assert load_manifest(testnet).partition is None
    wait_for(lambda: converged(manifest), 90, "all nodes to converge after the heal")
    for entry in manifest.nodes:
        status_a = wait_for(
            lambda e=entry: (s := call(e, "gettransaction", txid_a))["status"] == "conflicted"
            and s, 30, f"A conflicted on {entry.name}")
        assert status_a["confirmations"] < 0
        assert txid_b in status_a["conflicts"] or not status_a["conflicts"]
        status_b = call(entry, "gettransaction", txid_b)
        assert status_b["status"] in ("confirmed", "final") and status_b["confirmations"] > 0

    loser = powlab("watch", txid_a, "--node", "n2", "--dir", str(testnet), "--timeout", "60")
    assert loser.returncode == 2, loser.stdout + loser.stderr
    assert "CONFLICTED" in loser.stdout
    winner = powlab("watch", txid_b, "--node", "n1", "--dir", str(testnet), "--timeout", "120")
    assert winner.returncode == 0, winner.stdout + winner.stderr


@pytest.mark.slow
def test_down_leaves_no_process_behind(testnet: Path) -> None:
    pids = _pids(testnet)
    assert len(pids) == 5 and all(process_alive(p) for p in pids)
    # The miners' worker processes live in their node's process group.
    assert any(len(process_group(p)) > 1 for p in pids)
    ok(powlab("testnet", "down", "--dir", str(testnet), timeout=120))
    for pid in pids:
        assert not process_alive(pid), pid
        assert process_group(pid) == [], pid
    rows = json.loads(ok(powlab("testnet", "status", "--json", "--dir", str(testnet))))
    assert [r["up"] for r in rows] == [False] * 5
    ok(powlab("testnet", "down", "--purge", "--dir", str(testnet)))
    assert not testnet.exists()


def test_node_options_are_validated_with_the_node_rules() -> None:
    import argparse

    from lab.testnet.manifest import TestnetError
    from lab.testnet.nodeconfig import collect_node_options, parse_node_options

    args = argparse.Namespace(node_option=["listening_period=5", "assumed-attacker-share=0.2"],
                              double_spend_alerts=True, enforce_finality=False)
    options = collect_node_options(args)
    assert parse_node_options(options) == {
        "listening_period": 5.0, "assumed_attacker_share": 0.2, "double_spend_alerts": True,
    }
    for bad in ({"listening_period": "-1"}, {"datadir": "/x"}, {"no_such_option": "1"}):
        with pytest.raises(TestnetError):
            parse_node_options(bad)
    with pytest.raises(TestnetError):
        collect_node_options(argparse.Namespace(node_option=["oops"], double_spend_alerts=False,
                                                enforce_finality=False))
