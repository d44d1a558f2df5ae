"""The address index on real daemons: payments between two nodes, a reorg, restarts without the
index and with --reindex-addresses, hostile RPC inputs, and `powlab address history --watch`
following a reorg."""

from __future__ import annotations

import json
import queue
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab.client import RPCError
from lab.testnet.processes import NodeProcess
from node.rpc.methods.addressindex import MAX_ADDRESSES_PER_REQUEST, NOT_ENABLED
from tests import subnets
from tests.daemon_harness import REPO, wait_for

pytestmark = pytest.mark.slow

MATURITY = 100
TIMEOUT = 60
METHODS = (
    "getaddresstxids",
    "getaddressdeltas",
    "getaddressbalance",
    "getaddressutxos",
    "getaddressmempool",
)


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[NodeProcess, NodeProcess]]:
    host_a, host_b = subnets.host(0, subnets.P2P_TESTS), subnets.host(1, subnets.P2P_TESTS)
    port = free_port(host_a)
    a = NodeProcess(tmp_path / "a", args=["--p2p-bind", f"{host_a}:{port}", "--addressindex"])
    b = NodeProcess(
        tmp_path / "b",
        args=["--p2p-bind", f"{host_b}:{port}", "--connect", f"{host_a}:{port}", "--addressindex"],
    )
    try:
        a.start()
        b.start()
        wait_for(lambda: a.rpc("getconnectioncount") == 1, TIMEOUT, "peers")
        yield a, b
    finally:
        a.ensure_dead()
        b.ensure_dead()


def synced(a: NodeProcess, b: NodeProcess) -> None:
    wait_for(
        lambda: a.rpc("getbestblockhash") == b.rpc("getbestblockhash"), TIMEOUT, "chains synced"
    )


def query(node: NodeProcess, address: str) -> dict[str, Any]:
    request = {"addresses": [address]}
    return {
        name: node.rpc(name, request)
        for name in ("getaddresstxids", "getaddressbalance", "getaddressutxos", "getaddressdeltas")
    }



def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_watch(address: str, *endpoint: str) -> tuple[subprocess.Popen[str], queue.Queue[str]]:
    """`powlab address history ADDRESS --watch --json` in the background, its lines queued."""
    watcher = subprocess.Popen(
        [sys.executable, "-m", "lab", "address", "history", address, "--watch", "--json",
         "--interval", "0.1", *endpoint],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        # Ctrl-C as a user's terminal delivers it, even when this suite was started in the
        # background of a non-interactive shell (which leaves SIGINT ignored, and an ignored
        # SIGINT is inherited: the watcher would never see the test's Ctrl-C).
        preexec_fn=_default_sigint,
    )
    lines: queue.Queue[str] = queue.Queue()
    assert watcher.stdout is not None
    stdout = watcher.stdout
    threading.Thread(target=lambda: [lines.put(x) for x in stdout], daemon=True).start()
    return watcher, lines

def test_payments_between_two_nodes_reorg_and_restarts(
    pair: tuple[NodeProcess, NodeProcess],
) -> None:
    a, b = pair
    miner = a.rpc("getnewaddress")
    a.rpc("generatetoaddress", MATURITY + 1, miner)
    payee = b.rpc("getnewaddress")
    synced(a, b)

    txid = a.rpc("sendtoaddress", payee, 7_000)
    wait_for(lambda: b.rpc("getaddressmempool", payee) != [], TIMEOUT, "payment relayed")
    [pending] = b.rpc("getaddressmempool", {"addresses": [payee]})
    assert pending["txid"] == txid and pending["satoshis"] == 7_000 and pending["index"] in (0, 1)
    spends = [e for e in a.rpc("getaddressmempool", miner) if e["satoshis"] < 0]
    assert spends and all(e["txid"] == txid and "prevtxid" in e for e in spends)

    a.rpc("generatetoaddress", 1, miner)
    synced(a, b)
    height = a.rpc("getblockcount")
    got = query(b, payee)
    assert got["getaddresstxids"] == [txid]
    assert got["getaddressbalance"] == {"balance": 7_000, "received": 7_000}
    [utxo] = got["getaddressutxos"]
    assert utxo["txid"] == txid and utxo["satoshis"] == 7_000 and utxo["height"] == height
    [delta] = got["getaddressdeltas"]
    assert delta == {
        "satoshis": 7_000,
        "txid": txid,
        "index": utxo["outputIndex"],
        "blockindex": 1,
        "height": height,
        "address": payee,
    }
    assert query(a, payee) == got  # both nodes index the same chain

    # The payee pays back part of it: a spend (negative delta) and the change.
    back = b.rpc("sendtoaddress", miner, 2_000)
    wait_for(lambda: back in a.rpc("getrawmempool"), TIMEOUT, "payment back relayed")
    a.rpc("generatetoaddress", 1, miner)
    synced(a, b)
    deltas = b.rpc("getaddressdeltas", {"addresses": [payee]})
    assert [d["txid"] for d in deltas] == [txid, back]
    assert deltas[1]["satoshis"] == -7_000
    assert b.rpc("getaddressbalance", payee) == {"balance": 0, "received": 7_000}
    assert b.rpc("getaddressutxos", payee) == []
    # start/end select heights, inclusive.
    only_first = b.rpc("getaddresstxids", {"addresses": [payee], "start": height, "end": height})
    assert only_first == [txid]

    # A reorg on B: the block holding `back` goes; its rows go with it, the payment returns to
    # the mempool, and the spent coin is unspent again.
    tip = b.rpc("getbestblockhash")
    b.rpc("invalidateblock", tip)
    assert b.rpc("getaddresstxids", payee) == [txid]
    assert b.rpc("getaddressbalance", payee) == {"balance": 7_000, "received": 7_000}
    assert [e["txid"] for e in b.rpc("getaddressmempool", payee)] == [back]
    b.rpc("reconsiderblock", tip)
    assert b.rpc("getaddresstxids", payee) == [txid, back]
    expected = query(b, payee)

    # B runs a while without the index while blocks pay the payee: the index goes stale.
    b.stop()
    b.args.remove("--addressindex")
    b.start()
    for method in METHODS:
        for request in (payee, {"addresses": ["garbage"]}):
            error = b.rpc_error(method, request)
            assert (error.code, error.message) == (-1, NOT_ENABLED)
    a.rpc("generatetoaddress", 2, payee)
    synced(a, b)
    b.stop()

    b.args.append("--addressindex")
    b.start()
    log = b.log_path.read_text()
    assert "address_index_catching_up" in log
    caught_up = query(b, payee)
    assert caught_up == query(a, payee)
    assert caught_up["getaddressbalance"]["balance"] == 2 * 50 * 10**8
    assert caught_up["getaddresstxids"][:2] == expected["getaddresstxids"]
    b.stop()

    b.args.append("--reindex-addresses")
    b.start()
    assert '"reason": "requested"' in b.log_path.read_text()
    assert query(b, payee) == caught_up


def test_hostile_inputs_get_clear_errors(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "n", args=["--addressindex"]).start()
    try:
        good = node.rpc("getnewaddress")
        bad_requests: list[Any] = [
            None,
            7,
            1.5,
            True,
            [],
            {},
            [good],
            {"addresses": good + "x"},
            {"addresses": []},
            {"addresses": [7]},
            {"addresses": [None]},
            {"addresses": ["pow1notanaddress"]},
            {"addresses": [good.upper()]},
            {"addresses": [good], "start": -1},
            {"addresses": [good], "start": "1"},
            {"addresses": [good], "end": True},
            {"addresses": [good], "start": 5, "end": 2},
            {"addresses": [good], "start": 1 << 70},
            {"addresses": [good], "bogus": 1},
            {"addresses": [good] * (MAX_ADDRESSES_PER_REQUEST + 1)},
            {"addresses": ["x" * 100_000]},
            {"addresses": {"a": 1}},
        ]
        for method in METHODS:
            for request in bad_requests:
                with pytest.raises(RPCError) as err:
                    node.rpc(method, request)
                assert err.value.code in (-32602, -5, -8, -3), (method, request, err.value)
                assert err.value.message
            with pytest.raises(RPCError):
                node.rpc(method)  # missing parameter
            with pytest.raises(RPCError):
                node.rpc(method, good, good)  # one too many
        too_many = node.rpc_error(
            "getaddressbalance", {"addresses": [good] * (MAX_ADDRESSES_PER_REQUEST + 1)}
        )
        assert "too many addresses" in too_many.message
        assert node.rpc("getaddressbalance", good) == {"balance": 0, "received": 0}
        assert node.alive()
    finally:
        node.ensure_dead()


def test_cli_history_and_watch_through_a_reorg(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "n", args=["--addressindex"]).start()
    watcher: subprocess.Popen[str] | None = None
    try:
        miner = node.rpc("getnewaddress")
        node.rpc("generatetoaddress", MATURITY + 1, miner)
        payee = node.rpc("getnewaddress")
        first = node.rpc("sendtoaddress", payee, 3_000)
        node.rpc("generatetoaddress", 6, miner)  # final at regtest's depth of 6
        endpoint = ["--datadir", str(node.datadir)]
        done = subprocess.run(
            [sys.executable, "-m", "lab", "address", "history", payee, "--json", *endpoint],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            cwd=REPO,
        )
        assert done.returncode == 0, done.stderr
        shown = json.loads(done.stdout)
        bad = subprocess.run(
            [sys.executable, "-m", "lab", "address", "history", "rpow1nonsense", *endpoint],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            cwd=REPO,
        )
        assert bad.returncode == 1 and "Invalid address" in bad.stderr
        text = subprocess.run(
            [sys.executable, "-m", "lab", "address", "history", payee, *endpoint],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            cwd=REPO,
        )
        assert text.returncode == 0 and f"{first}  +3000  height {MATURITY + 2}" in text.stdout
        assert "6 conf  final" in text.stdout
        assert shown["address"] == payee and shown["finality_depth"] == 6
        [entry] = shown["entries"]
        assert entry == {
            "txid": first,
            "amount": 3_000,
            "height": MATURITY + 2,
            "confirmations": 6,
            "state": "final",
        }

        watcher, lines = start_watch(payee, *endpoint)

        def next_event() -> dict[str, Any]:
            return json.loads(lines.get(timeout=TIMEOUT))

        assert next_event()["entries"][0]["txid"] == first
        second = node.rpc("sendtoaddress", payee, 4_000)
        event = next_event()
        assert (event["event"], event["txid"], event["amount"]) == ("pending", second, 4_000)
        [block] = node.rpc("generatetoaddress", 1, miner)
        event = next_event()
        assert (event["event"], event["txid"], event["confirmations"]) == ("confirmed", second, 1)
        # Reorg: the block with `second` is invalidated; the payment goes back to the mempool.
        node.rpc("invalidateblock", block)
        event = next_event()
        assert (event["event"], event["txid"], event["state"]) == ("reorged", second, "pending")
        node.rpc("reconsiderblock", block)
        event = next_event()
        assert (event["event"], event["txid"]) == ("confirmed", second)
        # Then it is double-spent: invalidated again, and a block on the old parent mines a
        # conflicting spend of the same coins instead: `second` is conflicted.
        decoded = node.rpc("getrawtransaction", second, True)
        node.rpc("invalidateblock", block)
        event = next_event()
        assert (event["event"], event["txid"], event["state"]) == ("reorged", second, "pending")
        spend = [{"txid": i["txid"], "vout": i["vout"]} for i in decoded["vin"]]
        total = sum(o["value"] for o in decoded["vout"])
        conflict = node.rpc("createrawtransaction", spend, {miner: total - 1_000})
        signed = node.rpc("signrawtransactionwithwallet", conflict)["hex"]
        node.rpc("generateblock", miner, [signed])
        event = next_event()
        assert (event["event"], event["txid"], event["state"]) == ("dropped", second, "conflicted")
        watcher.send_signal(signal.SIGINT)
        assert watcher.wait(TIMEOUT) == 0
    finally:
        if watcher is not None and watcher.poll() is None:
            watcher.kill()
            watcher.wait()
        node.ensure_dead()
