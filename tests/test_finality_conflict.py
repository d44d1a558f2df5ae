"""A reorganisation refused beyond finality, on three real nodes (issue 12, item 3).

n1 | n2,n3 are partitioned with `--enforce-finality --finality-depth 2`; n1 mines 3 blocks (and
a payment), n3 mines 5; after `heal`, n1 refuses the heavier branch (it would disconnect 3 ≥ 2
blocks) and says so in getblockchaininfo.warnings, a `reorg_refused` event, the metric,
gettransaction and `testnet status --json`; the attack tools refuse to start; `heal --resolve`
brings n1 onto the heavier branch.
"""

from __future__ import annotations

import base64
import json
import random
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab.scenario.engine import ScenarioError, load_nodes
from lab.testnet.control import call, endpoint, try_call
from lab.testnet.manifest import load_manifest
from tests.daemon_harness import wait_for
from tests.test_testnet import _pids, ok, powlab


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    directory = tmp_path_factory.mktemp("finality") / "net"
    subnet = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}"
    try:
        ok(powlab("testnet", "up", "--dir", str(directory), "--nodes", "3", "--miners", "1",
                  "--topology", "line", "--block-time", "2", "--finality-depth", "2",
                  "--enforce-finality", "--subnet", subnet))
        yield directory
    finally:
        powlab("testnet", "down", "--dir", str(directory), timeout=120)
        for pid in _pids(directory):
            import subprocess

            subprocess.run(["kill", "-9", str(pid)], check=False)


def _request(entry: Any, path: str) -> urllib.request.Request:
    ep = endpoint(entry)
    assert ep.auth is not None
    token = base64.b64encode(f"{ep.auth[0]}:{ep.auth[1]}".encode()).decode()
    request = urllib.request.Request(ep.url.rstrip("/") + "/" + path)
    request.add_header("Authorization", f"Basic {token}")
    return request


def _collect_events(entry: Any, into: list[dict[str, Any]], ready: threading.Event) -> None:
    try:
        with urllib.request.urlopen(_request(entry, "events?types=reorg_refused"),
                                    timeout=120) as stream:
            ready.set()
            while not into:
                line = stream.readline().decode()
                if line.startswith("data: "):
                    into.append(json.loads(line[6:]))
    except OSError:
        ready.set()


@pytest.mark.slow
def test_refused_reorg_is_visible_and_heal_resolve_converges(net: Path) -> None:
    manifest = load_manifest(net)
    n1, n2, n3 = manifest.nodes
    for entry in manifest.nodes:
        call(entry, "setmining", False)
    ok(powlab("testnet", "partition", "--dir", str(net), "n1", "n2,n3"))
    wait_for(lambda: call(n1, "getconnectioncount") == 0, 30, "n1 to be cut off")

    txid = call(n1, "sendtoaddress", call(n1, "getnewaddress"), 100_000)
    call(n1, "generatetoaddress", 3, call(n1, "getnewaddress"))
    other = call(n3, "sendtoaddress", call(n3, "getnewaddress"), 100_000)
    call(n3, "generatetoaddress", 5, call(n3, "getnewaddress"))
    heavier = call(n3, "getbestblockhash")
    assert call(n1, "gettransaction", txid)["status"] == "final"

    events: list[dict[str, Any]] = []
    ready = threading.Event()
    threading.Thread(target=_collect_events, args=(n1, events, ready), daemon=True).start()
    ready.wait(30)
    ok(powlab("testnet", "heal", "--dir", str(net)))
    info = wait_for(lambda: (i := call(n1, "getblockchaininfo"))["warnings"] and i, 60,
                    "n1 to warn about the refused branch")
    assert heavier in info["warnings"]
    [conflict] = info["finality_conflicts"]
    assert conflict["hash"] == heavier and conflict["depth"] == 3
    assert call(n3, "getblockchaininfo")["warnings"] == ""

    wait_for(lambda: events, 30, "the reorg_refused event")
    assert events[0]["type"] == "reorg_refused" and events[0]["finality_depth"] == 2
    with urllib.request.urlopen(_request(n1, "metrics"), timeout=30) as resp:
        text = resp.read().decode()
    assert "powlab_reorgs_refused_total 1.0" in text or "powlab_reorgs_refused_total 2.0" in text
    assert "powlab_finality_conflicts 1.0" in text

    tx = call(n1, "gettransaction", txid)
    assert tx["status"] == "final"  # n1's own view, but it is told:
    assert tx["finality_conflict"]["hash"] == heavier and heavier in tx["warnings"]
    assert tx["finality_conflict"]["branch"] == "active"
    on_refused = call(n1, "gettransaction", other)  # only in the branch n1 refused
    assert on_refused["finality_conflict"]["branch"] == "refused"
    assert heavier in on_refused["warnings"]

    rows = json.loads(ok(powlab("testnet", "status", "--dir", str(net), "--json")))
    by_name = {r["node"]: r for r in rows}
    assert by_name["n1"]["warnings"] and not by_name["n3"]["warnings"]
    with pytest.raises(ScenarioError,
                       match=r"n1 is on a branch refused beyond finality.*--resolve"):
        load_nodes(str(net))

    out = ok(powlab("testnet", "heal", "--dir", str(net), "--resolve"))
    assert "n1: invalidateblock" in out
    assert call(n1, "getbestblockhash") == heavier
    wait_for(lambda: len({try_call(e, "getbestblockhash") for e in (n1, n2, n3)}) == 1, 60,
             "all nodes on one tip")
    assert call(n1, "getblockchaininfo")["warnings"] == ""
    assert call(n1, "gettransaction", txid)["finality_conflict"] is None
    load_nodes(str(net))  # clean again


def test_status_table_marks_a_node_with_a_refused_branch() -> None:
    from rich.console import Console

    from lab.testnet.tables import status_table

    row = {"node": "n1", "role": "miner", "up": True, "height": 5, "bestblockhash": "ab" * 32,
           "peers": 1, "mempool": 0, "hashrate": None, "rpc": "http://x/",
           "warnings": "Refused reorganisation beyond finality: ..."}
    clean = {**row, "node": "n2", "bestblockhash": "cd" * 32, "warnings": ""}
    console = Console(width=200, record=True)
    console.print(status_table("t", None, [row, clean]))
    text = console.export_text()
    assert "abababababab !" in text and "cdcdcdcdcdcd !" not in text
