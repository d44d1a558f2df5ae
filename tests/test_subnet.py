"""Address ranges: `testnet up --subnet`, loopback only, recorded in the manifest; two testnets
side by side on ranges of their own; and the small wording fixes that came with them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.testnet.manifest import TestnetError as SubnetRefused
from lab.testnet.manifest import check_subnet, load_manifest, new_manifest, parse_shares
from lab.text import confirmations, plural
from tests import subnets
from tests.daemon_harness import REPO, run_powlab, tear_down_testnet


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


# --------------------------------------------------------------------------- fast unit tests


def test_only_loopback_subnets_are_accepted() -> None:
    assert check_subnet("127.0.0") == "127.0.0"
    assert check_subnet(" 127.44.9 ") == "127.44.9"
    assert check_subnet("127.44.9.0/24") == "127.44.9"
    for bad in ("10.0.0", "192.168.1", "0.0.0", "128.0.0"):
        with pytest.raises(SubnetRefused, match="not loopback"):
            check_subnet(bad)
    for bad in ("127.0", "127.0.0.5", "127.0.256", "127.a.b", "", "127.00.1"):
        with pytest.raises(SubnetRefused, match=r"A\.B\.C"):
            check_subnet(bad)


def test_the_manifest_records_the_subnet(tmp_path: Path) -> None:
    m = new_manifest(tmp_path, 3, 1, [1.0], "line", "regtest", 10.0, None, "127.31.4")
    assert m.subnet == "127.31.4"
    assert [e.host for e in m.nodes] == ["127.31.4.2", "127.31.4.3", "127.31.4.4"]
    assert m.nodes[1].connect == ["127.31.4.2:18444"]
    m.save()
    assert json.loads(m.path.read_text())["subnet"] == "127.31.4"
    assert load_manifest(tmp_path).subnet == "127.31.4"
    # A manifest written before the field existed: the subnet comes from n1's address.
    data = json.loads(m.path.read_text())
    del data["subnet"]
    m.path.write_text(json.dumps(data))
    assert load_manifest(tmp_path).subnet == "127.31.4"
    assert parse_shares(None, 0) == []  # `--miners 0` is a testnet without miners
    with pytest.raises(SubnetRefused, match="not loopback"):
        new_manifest(tmp_path, 2, 1, [1.0], "line", "regtest", 10.0, None, "10.1.2")


def test_up_refuses_a_non_loopback_subnet_before_starting_anything(tmp_path: Path) -> None:
    directory = tmp_path / "net"
    result = run_powlab("testnet", "up", "--dir", str(directory), "--subnet", "192.168.7",
                        timeout=60)
    assert result.returncode != 0
    assert "not loopback" in result.stderr and "192.168.7" in result.stderr
    assert not directory.exists()


def test_confirmations_are_counted_in_good_english() -> None:
    assert confirmations(1) == "1 confirmation"
    assert confirmations(-1) == "-1 confirmation"
    assert confirmations(0) == "0 confirmations"
    assert confirmations(6) == "6 confirmations"
    assert confirmations(None) == "None confirmations"
    assert plural(1, "block") == "1 block" and plural(3, "reply", "replies") == "3 replies"


def test_the_subnet_is_documented() -> None:
    run = (REPO / "scripts" / "run").read_text()
    assert "POWLAB_RUN_SUBNET" in run and "--no-hints" in run
    testnet_md = (REPO / "docs" / "testnet.md").read_text()
    for flag in ("--enforce-finality", "--double-spend-alerts", "--node-option", "--subnet"):
        assert flag in testnet_md
    readme = (REPO / "README.md").read_text()
    assert "testnet/node1/" not in readme and "POWLAB_RUN_SUBNET" in readme


def test_the_tests_own_ranges_are_distinct_and_free() -> None:
    first, second = subnets.subnet(subnets.SIDE_BY_SIDE), subnets.subnet(subnets.SIDE_BY_SIDE + 1)
    assert first != second
    assert check_subnet(first) == first and first.startswith("127.")
    assert subnets.host(0, subnets.SIDE_BY_SIDE) == f"{first}.2"


# --------------------------------------------------------------------------- side by side


@pytest.fixture
def two_testnets(tmp_path: Path) -> Iterator[list[tuple[Path, str]]]:
    nets = [(tmp_path / "a", subnets.subnet(subnets.SIDE_BY_SIDE)),
            (tmp_path / "b", subnets.subnet(subnets.SIDE_BY_SIDE + 1))]
    try:
        yield nets
    finally:
        for directory, _ in nets:
            tear_down_testnet(directory)


@pytest.mark.slow
def test_two_testnets_run_side_by_side_on_their_own_subnets(
    two_testnets: list[tuple[Path, str]],
) -> None:
    # Both at once, on the same ports: only the address ranges keep them apart.
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "lab", "testnet", "up",
             "--dir", str(directory), "--nodes", "2", "--miners", "0", "--subnet", subnet,
             *(["--no-hints"] if k else [])],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for k, (directory, subnet) in enumerate(two_testnets)
    ]
    outs = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{out}\n{err}"
        outs.append(out)
    assert "powlab testnet send" in outs[0]
    assert "powlab testnet send" not in outs[1] and "Call a node by name" not in outs[1]

    tips = []
    for directory, subnet in two_testnets:
        manifest = load_manifest(directory)
        assert manifest.subnet == subnet
        rows = json.loads(ok(run_powlab("testnet", "status", "--dir", str(directory), "--json")))
        assert [r["rpc"] for r in rows] == [f"http://{subnet}.2:18443/", f"http://{subnet}.3:18443/"]
        assert all(r["up"] and r["peers"] == 1 for r in rows)  # each other, nobody else's
        info = json.loads(ok(run_powlab("rpc", "--node", "n2", "--dir", str(directory),
                                        "getblockchaininfo")))
        tips.append(info["bestblockhash"])
        peers = json.loads(ok(run_powlab("rpc", "--node", "n1", "--dir", str(directory),
                                         "getpeerinfo")))
        assert [p["addr"].rsplit(":", 1)[0] for p in peers] == [f"{subnet}.3"]
    assert tips[0] != tips[1]  # two separate chains (each funded its own wallets)

    # Piped, the status table is not cut at 80 columns: every RPC URL is there in full.
    directory, subnet = two_testnets[0]
    # (pytest exports COLUMNS=80, which rich, and so `status`, would honour.)
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    table = ok(subprocess.run([sys.executable, "-m", "lab", "testnet", "status", "--dir",
                               str(directory)], capture_output=True, text=True, cwd=REPO,
                              env=env, timeout=60))
    assert f"http://{subnet}.3:18443/" in table
    assert max(len(line) for line in table.splitlines()) > 80

    for directory, _ in two_testnets:
        ok(run_powlab("testnet", "down", "--dir", str(directory)))
