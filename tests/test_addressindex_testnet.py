"""Address history on the default testnet (the line of four nodes `scripts/run` starts), as the
README tells a user to turn it on for a testnet that is already up: `powlab testnet down`,
`powlab testnet up --node-option addressindex=1`, then `powlab address history ADDR --node n4`."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.testnet.control import call
from lab.testnet.manifest import load_manifest
from tests import subnets
from tests.daemon_harness import wait_for
from tests.test_testnet import _pids, ok, powlab

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    directory = tmp_path_factory.mktemp("addressnet") / "net"
    up = ("testnet", "up", "--dir", str(directory), "--no-hints")
    try:
        # A testnet already up without the index, as `scripts/run` leaves one.
        ok(powlab(*up, "--block-time", "2", "--subnet", subnets.subnet(subnets.ADDRESS_TESTNET)))
        said = ok(powlab(*up, "--node-option", "addressindex=1"))
        assert "already running" in said and "addressindex=1" in said
        ok(powlab("testnet", "down", "--dir", str(directory)))
        ok(powlab(*up))  # the option was kept: every node restarts with it
        yield directory
    finally:
        powlab("testnet", "down", "--dir", str(directory), timeout=120)
        for pid in _pids(directory):
            subprocess.run(["kill", "-9", str(pid)], check=False)


def _history(directory: Path, node: str, address: str) -> dict[str, object]:
    out = ok(powlab("address", "history", address, "--node", node, "--dir", str(directory),
                    "--json"))
    return json.loads(out)


def test_a_payment_shows_in_every_nodes_address_history(net: Path) -> None:
    nodes = {e.name: e for e in load_manifest(net).nodes}
    assert sorted(nodes) == ["n1", "n2", "n3", "n4"]
    address = call(nodes["n4"], "getnewaddress")
    txid = call(nodes["n1"], "sendtoaddress", address, 123_456)

    def confirmed_on(node: str) -> dict[str, object] | None:
        history = _history(net, node, address)
        entries = history["entries"]
        assert isinstance(entries, list)
        done = [e for e in entries if e["txid"] == txid and e["confirmations"] >= 1]
        return history if done else None

    # n4 is three hops from the miner n1 on the line; every node keeps its own index.
    for node in ("n4", "n1"):
        history = wait_for(lambda node=node: confirmed_on(node), 60, f"{txid} confirmed on {node}")
        (entry,) = history["entries"]
        assert entry["amount"] == 123_456
    text = ok(powlab("address", "history", address, "--node", "n2", "--dir", str(net)))
    assert "1 transaction at height" in text and txid in text and "+123456" in text
    balance = call(nodes["n3"], "getaddressbalance", {"addresses": [address]})
    assert balance == {"balance": 123_456, "received": 123_456}
